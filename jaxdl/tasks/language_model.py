"""Language modelling: one text, a char (or byte) vocabulary, next-token cross-entropy.

The text comes from the first of these that works (data.source='auto'; data/sources.py):
  1. data.path: a UTF-8 text file, or a directory whose files (all of them, sorted by relative
     path, hidden ones skipped) are read and joined (data/corpus.py);
  2. a prepared TFDS copy of data.name (tiny_shakespeare: train + validation + test joined,
     which is exactly char-rnn's input.txt);
  3. offline: the English reference documentation that every CPython ships in
     pydoc_data.topics (~465k characters), announced by a WARNING.

Split: the first (1 - val_fraction) of the characters train, the rest validate (nanoGPT's split;
with val_fraction 0.1 it equals TFDS tiny_shakespeare's validation + test).

Vocabulary ('chars'): the sorted distinct characters of the whole text, as nanoGPT's prepare.py
builds it, so every validation character has an id. 'bytes': the 256 byte values of UTF-8. It
is written to WORKDIR/vocab.json, and a run that finds that file uses it, so a resume or the
sampler (jaxdl.sample) always maps ids to the same characters. Windows: data/windows.py.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

from absl import logging
import jax

from jaxdl import files, initfrom, losses, models
from jaxdl.data import corpus, offline, sources, tfds, tokens
from jaxdl.data.dataset import Dataset
from jaxdl.data.vocab import CHAR_KINDS, VOCAB_FILE, CharVocab
from jaxdl.data.windows import TrainWindows, eval_windows
from jaxdl.errors import UserError, require

INPUT = "inputs"
UNIT = "tokens"
TRAIN_METRICS = ()
PLOT_METRICS = ("loss", "perplexity")
LOG_SCALE = ("perplexity",)  # plotted on a log axis, as the loss is
FORMATS = {"tokens_per_s": "{:,.0f} tok/s"}
FILES = (VOCAB_FILE,)  # the files it writes beside the checkpoints (jaxdl.export)
MODELS = ("transformer",)
MODEL_KEYS = ("block_size",)  # model-block keys the task reads itself (windows are cut to it)
FALLBACKS = ("pydoc",)
# Resume declarations (jaxdl/resume.py). loss.label_smoothing left this task's config, which
# never read it: a config.json that has it at 0.0 resumes.
RESUME_ADDED = {"loss.label_smoothing": 0.0}


def check(config) -> None:
  """The language model's own keys (data.*)."""
  data = config.data
  sources.check(data, FALLBACKS)
  require(data.vocab in CHAR_KINDS, "data.vocab", data.vocab,
          f"must be one of {', '.join(CHAR_KINDS)}")
  require(0 < data.val_fraction < 1, "data.val_fraction", data.val_fraction, "must be in (0, 1)")
  require(data.eval_windows >= 0, "data.eval_windows", data.eval_windows,
          "must be >= 0 (0 evaluates every validation window)")


def _pydoc(data_cfg):
  if data_cfg.source == "auto":
    logging.warning(
        "OFFLINE CORPUS: no data.path and no prepared TFDS copy of %r, so training on CPython's "
        "English reference documentation (pydoc_data.topics, ~465k characters), not Tiny "
        "Shakespeare. For Tiny Shakespeare pass --config.data.path=FILE with char-rnn's "
        "input.txt (https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
        "tinyshakespeare/input.txt), or prepare TFDS tiny_shakespeare in ArrayRecord format "
        "(data.tfds_dir).", data_cfg.name)
  return offline.read_pydoc(), "OFFLINE CORPUS: CPython's pydoc_data.topics English docs"


def load_text(data_cfg) -> tuple[str, str]:
  """The text data_cfg selects and a one-line description of where it came from."""
  return sources.load(
      data_cfg, read_path=lambda path: (corpus.read_text(path), f"text from {path}"),
      read_tfds=tfds.read_corpus,
      fallbacks=(sources.Fallback("pydoc", lambda: _pydoc(data_cfg)),),
      ways="unreachable: the pydoc corpus is always there")


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
  """nanoGPT's split: the first int(n * (1 - val_fraction)) characters train."""
  cut = int(len(text) * (1 - val_fraction))
  return text[:cut], text[cut:]


def tokenizer(config, workdir: str | None, text: str | None = None) -> CharVocab:
  """WORKDIR/vocab.json if a run already wrote one (checked against data.vocab), else a new one
  built from `text` (None: the workdir must have one, as jaxdl.sample needs); a fresh run with
  config.init_from takes its source's, whose ids the loaded embeddings are rows of."""
  saved = _saved_vocab(config, workdir)
  if saved is not None:
    return saved
  if text is None:
    raise UserError(f"--workdir={workdir}: no {VOCAB_FILE}")
  return _initial_vocab(config) or CharVocab.build(config.data.vocab, text)


def _saved_vocab(config, workdir: str | None) -> CharVocab | None:
  """WORKDIR/vocab.json, the vocabulary of the run's checkpoints, if there is one."""
  path = os.path.join(workdir, VOCAB_FILE) if workdir is not None else None
  if path is None or not files.exists(path):
    return None
  return _read_vocab(config, files.read_text(path), path)


def _initial_vocab(config) -> CharVocab | None:
  """config.init_from's vocab.json (its source's), if it has one."""
  initial = initfrom.task_file(config, VOCAB_FILE)
  if initial is None:
    return None
  return _read_vocab(config, initial, f"config.init_from={config.init_from!r}'s {VOCAB_FILE}")


def _read_vocab(config, text: str, where: str) -> CharVocab:
  vocab = CharVocab.from_json(text, where)
  if vocab.kind != config.data.vocab:
    raise UserError(f"config.data.vocab={config.data.vocab!r} but {where} is a {vocab.kind!r} "
                    f"vocabulary; use a new --workdir")
  return vocab


def model_info(config, workdir: str) -> dict:
  """The model_info of a run made before training saved it (jaxdl.load), from its vocab.json."""
  return {"vocab_size": tokenizer(config, workdir).size}


def load(config, workdir: str | None) -> Dataset:
  """Random train windows, fixed 'val' windows, the vocabulary; from the text, or from a
  directory that jaxdl.prepare wrote (token ids read by offset: data/tokens.py)."""
  path = os.path.expanduser(config.data.path)
  if path and tokens.is_prepared(path):
    return _load_prepared(config, workdir, path)
  text, source = load_text(config.data)
  train_text, val_text = split_text(text, config.data.val_fraction)
  vocab = tokenizer(config, workdir, text)
  what = f"the text ({source})"
  return _dataset(config, vocab, vocab.encode(train_text, what), vocab.encode(val_text, what),
                  source)


def _load_prepared(config, workdir: str | None, path: str) -> Dataset:
  """load() of a prepared corpus: its ids stay on disk (read by offset), its vocabulary is the
  one it was encoded with (a resume's vocab.json or init_from's must be the same)."""
  meta, vocab, ids = tokens.read(path, config.data.vocab)
  if meta["val_fraction"] != config.data.val_fraction:
    raise UserError(f"config.data.val_fraction={config.data.val_fraction} but {path} was "
                    f"prepared with {meta['val_fraction']} (its split is on disk); prepare it "
                    f"again with --config.data.val_fraction={config.data.val_fraction}")
  wanted, whose = _saved_vocab(config, workdir), "the run's"
  if wanted is None:
    wanted, whose = _initial_vocab(config), f"config.init_from={config.init_from!r}'s"
  if wanted is not None and wanted.to_json() != vocab.to_json():
    raise UserError(f"{path} was prepared with another vocabulary than {whose} vocab.json "
                    f"({vocab.size} against {wanted.size} {vocab.kind}); prepare it with the "
                    f"same --config.init_from, or use a new --workdir")
  return _dataset(config, vocab, ids["train"], ids["val"],
                  f"prepared token ids in {path} (of {meta['source']})",
                  sha256=meta["splits"]["train"]["sha256"], note=" | read from disk by offset")


def _dataset(config, vocab: CharVocab, train_ids, val_ids, source: str, sha256: str = "",
             note: str = "") -> Dataset:
  """Random train windows and fixed 'val' windows of the ids (arrays, or a prepared corpus's
  tokens.TokenFile), the vocabulary beside the checkpoints."""
  block = config.model.block_size
  train = TrainWindows(train_ids, block, config.batch_size, config.seed, jax.process_index(),
                       jax.process_count(), sha256=sha256)
  val = eval_windows(val_ids, block, config.data.eval_windows)
  unit = "chars" if vocab.kind == "chars" else "bytes"
  return Dataset(
      train=train, evals={"val": val}, eval_split="val", final_splits=("val",), source=source,
      describe=(f"train {len(train_ids):,} {unit} | val {len(val_ids):,} {unit}, evaluated as "
                f"{len(val['inputs']):,} windows of {block} | vocabulary {vocab.size} {unit}"
                f"{note}"),
      model_info={"vocab_size": vocab.size}, files={VOCAB_FILE: vocab.to_json()})


def next_token(variables, batch, rng, train, *, model):
  """Next-token cross-entropy of a language model over whole windows."""
  logits_BxLxV, model_state = models.apply(model, variables, batch["inputs"], train=train,
                                           rng=rng)
  return (*losses.next_token_cross_entropy(logits_BxLxV, batch["targets"], batch["mask"]),
          model_state)


def objective(config, model):
  del config  # no loss options
  return functools.partial(next_token, model=model)


def summarise(sums) -> dict[str, Any]:
  """Mean loss per token, perplexity and bits per token."""
  out = losses.loss_and_count(losses.to_host(sums))
  out["perplexity"] = math.exp(min(out["loss"], 700.0))  # capped: exp overflows past ~709
  out["bits_per_token"] = out["loss"] / math.log(2)
  return out


def brief(split: str, m: dict[str, Any]) -> str:
  return (f"{split} loss {m['loss']:.4f} | {split} ppl {m['perplexity']:.2f} | "
          f"{m['bits_per_token']:.3f} bits/token")
