"""Language-model data: one text, a char (or byte) vocabulary, random train windows, fixed val ones.

The text comes from the first of these that works (`data.source='auto'`):
  1. `data.path`: a UTF-8 text file, or a directory whose files (all of them, sorted by relative
     path, hidden ones skipped) are read and joined;
  2. a prepared TFDS copy of `data.name` (tiny_shakespeare: train + validation + test joined,
     which is exactly char-rnn's input.txt), read with tfds.data_source, no TensorFlow needed;
  3. offline: the English reference documentation that every CPython ships in
     `pydoc_data.topics` (~465k characters), announced by a WARNING.

Split: the first (1 - val_fraction) of the characters train, the rest validate (nanoGPT's split;
with val_fraction 0.1 it equals TFDS tiny_shakespeare's validation + test).

Vocabulary ('chars'): the sorted distinct characters of the whole text, as nanoGPT's prepare.py
builds it, so every validation character has an id (for Tiny Shakespeare and the pydoc corpus
these are exactly the training text's characters). 'bytes': the 256 byte values of UTF-8. It is
written to WORKDIR/vocab.json and a run that finds that file uses it, so a resume or a sampler
always maps ids to the same characters.

Training windows are a pure function of (seed, step): batch `step` takes `batch_size` windows of
`block_size + 1` characters starting at offsets drawn from default_rng([seed, step]), so a
resumed run reads exactly what the uninterrupted one would. Evaluation uses a fixed set: the
non-overlapping windows at offsets 0, L, 2L, ... of the validation text (L = block_size; the
last partial window is left out), or `eval_windows` of them evenly spaced; each window predicts
its L next characters, with the context available since the window start.
"""

from __future__ import annotations

import json
import math
import os

from absl import logging
import jax
import numpy as np

from jaxdl.data import images
from jaxdl.data import text as text_files
from jaxdl.data.dataset import Dataset
from jaxdl.errors import UserError, first_line

SOURCES = ("auto", "files", "tfds", "pydoc")  # config.data.source
VOCABS = ("chars", "bytes")                    # config.data.vocab
VOCAB_FILE = "vocab.json"

Batch = dict[str, np.ndarray]


# ---------------------------------------------------------------------------------------------
# Reading text.


def read_text(path: str) -> str:
  """A UTF-8 file's text, or a directory's files' texts joined in sorted order."""
  if os.path.isfile(path):
    text = text_files.read_utf8(path)
  elif os.path.isdir(path):
    files = []
    for root, dirs, names in os.walk(path):
      dirs[:] = sorted(d for d in dirs if not d.startswith("."))
      files += [os.path.join(root, n) for n in names if not n.startswith(".")]
    if not files:
      raise UserError(f"data.path={path!r}: the directory has no files")
    text = "".join(text_files.read_utf8(f) for f in sorted(files))
  else:
    raise UserError(f"data.path={path!r} does not exist")
  if not text:
    raise UserError(f"data.path={path!r}: no text (empty)")
  return text


def read_tfds(name: str, data_dir: str | None) -> str:
  """All splits of a prepared TFDS text dataset (one 'text' example each), joined in order."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  parts = []
  for split in ("train", "validation", "test"):
    try:
      source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
      texts = [source[i]["text"] for i in range(len(source))]
    except Exception as e:  # pylint: disable=broad-except  (TFDS raises many types)
      raise UserError(f"TFDS dataset {name!r} split {split!r}: {first_line(e)}") from None
    parts += [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in texts]
  return "".join(parts)


def read_pydoc() -> str:
  """CPython's English reference documentation (pydoc_data.topics), topics in sorted order."""
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top
  return "".join(topics.topics[k] for k in sorted(topics.topics))


def load_text(data_cfg) -> tuple[str, str]:
  """The text data_cfg selects and a one-line description of where it came from."""
  source, name, path = data_cfg.source, data_cfg.name, os.path.expanduser(data_cfg.path)
  if source == "files" or (source == "auto" and path):
    if not path:
      raise UserError("data.source='files' needs data.path")
    return read_text(path), f"text from {path}"
  if source in ("tfds", "auto") and images._tfds_prepared(name, data_cfg.tfds_dir):  # pylint: disable=protected-access
    return read_tfds(name, data_cfg.tfds_dir), f"TFDS {name} ({data_cfg.tfds_dir or 'default dir'})"
  if source == "tfds":
    raise UserError(f"data.source='tfds': no copy of {name!r} in ArrayRecord format under "
                    f"data.tfds_dir={data_cfg.tfds_dir or '~/tensorflow_datasets'!r}")
  if source in ("pydoc", "auto"):
    if source == "auto":
      logging.warning(
          "OFFLINE CORPUS: no data.path and no prepared TFDS copy of %r, so training on CPython's "
          "English reference documentation (pydoc_data.topics, ~465k characters), not Tiny "
          "Shakespeare. For Tiny Shakespeare pass --config.data.path=FILE with char-rnn's "
          "input.txt (https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
          "tinyshakespeare/input.txt), or prepare TFDS tiny_shakespeare in ArrayRecord format "
          "(data.tfds_dir).", name)
    return read_pydoc(), "OFFLINE CORPUS: CPython's pydoc_data.topics English docs"
  raise UserError(f"data.source={source!r} is not one of {', '.join(SOURCES)}")


# ---------------------------------------------------------------------------------------------
# Vocabulary.


class Vocab:
  """Characters (or UTF-8 bytes) ↔ int32 ids; id i is the i-th sorted character."""

  def __init__(self, kind: str, chars: str = ""):
    if kind not in VOCABS:
      raise UserError(f"data.vocab={kind!r} is not one of {', '.join(VOCABS)}")
    self.kind, self.chars = kind, chars if kind == "chars" else ""
    self.size = len(self.chars) if kind == "chars" else 256
    self._codepoints = np.array([ord(c) for c in self.chars], np.uint32)  # sorted

  @classmethod
  def build(cls, kind: str, text: str) -> "Vocab":
    return cls(kind, "".join(sorted(set(text))) if kind == "chars" else "")

  def to_json(self) -> str:
    return json.dumps({"kind": self.kind, "chars": self.chars}, ensure_ascii=False) + "\n"

  @classmethod
  def from_file(cls, path: str) -> "Vocab":
    try:
      with open(path, encoding="utf-8") as f:
        obj = json.load(f)
      return cls(obj["kind"], obj["chars"])
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise UserError(f"{path}: not a jaxdl vocabulary file ({first_line(e)})") from None

  def encode(self, text: str, what: str = "the text") -> np.ndarray:
    """int32 ids of `text`; UserError naming the characters the vocabulary lacks."""
    if self.kind == "bytes":
      return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)
    codepoints = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    ids = np.searchsorted(self._codepoints, codepoints)
    known = (ids < self.size) & (self._codepoints[np.minimum(ids, self.size - 1)] == codepoints)
    if not known.all():
      missing = sorted(set(chr(c) for c in codepoints[~known]))
      shown = ", ".join(repr(c) for c in missing[:10]) + (" ..." if len(missing) > 10 else "")
      raise UserError(f"{what} has {len(missing)} character(s) not in the vocabulary: {shown}")
    return ids.astype(np.int32)

  def decode(self, ids) -> str:
    ids = np.asarray(ids)
    if self.kind == "bytes":
      return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")
    return "".join(self.chars[i] for i in ids)


# ---------------------------------------------------------------------------------------------
# Windows.


class TrainWindows:
  """Global batch `step` = `batch_size` random windows drawn from (seed, step); the data
  iterator the loop uses (batch / position / check_position / size / steps_per_epoch)."""

  def __init__(self, ids: np.ndarray, block_size: int, batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    if len(ids) <= block_size:
      raise UserError(f"the training text has {len(ids):,} tokens; model.block_size="
                      f"{block_size} needs at least {block_size + 1}")
    self.ids, self.block_size, self.batch_size, self.seed = ids, block_size, batch_size, seed
    self.size = len(ids) - block_size  # distinct windows (each predicts block_size tokens)
    # An "epoch" is as many tokens as the training text has: num_epochs and eval_every=0 use it.
    self.steps_per_epoch = max(1, math.ceil(len(ids) / (batch_size * block_size)))
    per_process = batch_size // process_count
    self._local = slice(process_index * per_process, (process_index + 1) * per_process)

  def position(self, step: int) -> dict[str, int]:
    """What step `step` depends on besides the seed: saved with every checkpoint."""
    return {"step": step, "batch_size": self.batch_size, "block_size": self.block_size,
            "train_tokens": len(self.ids)}

  def check_position(self, step: int, saved: dict[str, int]) -> None:
    if saved != self.position(step):
      raise UserError(f"the checkpoint's data position {saved} does not match this config's "
                      f"{self.position(step)} (batch_size, block_size or text changed?)")

  def batch(self, step: int) -> Batch:
    """This process's rows of global batch `step`: inputs, targets (shifted by one), mask."""
    starts_B = np.random.default_rng([self.seed, step]).integers(
        0, self.size, self.batch_size)[self._local]
    idx_BxL1 = starts_B[:, None] + np.arange(self.block_size + 1)[None, :]
    windows = self.ids[idx_BxL1]
    return {"inputs": windows[:, :-1], "targets": windows[:, 1:],
            "mask": np.ones(len(starts_B), np.float32)}


def eval_windows(ids: np.ndarray, block_size: int, max_windows: int = 0) -> Batch:
  """The fixed validation set: non-overlapping windows from offset 0 (partial tail left out),
  or `max_windows` of them evenly spaced when 0 < max_windows < their number."""
  n = (len(ids) - 1) // block_size
  if n == 0:
    raise UserError(f"the validation text has {len(ids):,} tokens; model.block_size={block_size} "
                    f"needs at least {block_size + 1} (lower data.val_fraction or block_size)")
  starts = np.arange(n) * block_size
  if 0 < max_windows < n:
    starts = starts[np.round(np.linspace(0, n - 1, max_windows)).astype(np.int64)]
  idx_NxL = starts[:, None] + np.arange(block_size)[None, :]
  return {"inputs": ids[idx_NxL], "targets": ids[idx_NxL + 1]}


# ---------------------------------------------------------------------------------------------
# The whole dataset.


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
  """nanoGPT's split: the first int(n * (1 - val_fraction)) characters train."""
  cut = int(len(text) * (1 - val_fraction))
  return text[:cut], text[cut:]


def load_vocab(config, workdir: str, text: str) -> tuple[Vocab, str]:
  """WORKDIR/vocab.json if a run already wrote one (checked against data.vocab), else a new one
  built from the text. Returns it with the JSON text to write."""
  path = os.path.join(workdir, VOCAB_FILE)
  if os.path.exists(path):
    vocab = Vocab.from_file(path)
    if vocab.kind != config.data.vocab:
      raise UserError(f"config.data.vocab={config.data.vocab!r} but {path} is a {vocab.kind!r} "
                      f"vocabulary; use a new --workdir")
  else:
    vocab = Vocab.build(config.data.vocab, text)
  return vocab, vocab.to_json()


def load_dataset(config, workdir: str) -> Dataset:
  """The language-model Dataset: random train windows, fixed 'val' windows, the vocabulary."""
  text, source = load_text(config.data)
  train_text, val_text = split_text(text, config.data.val_fraction)
  vocab, vocab_json = load_vocab(config, workdir, text)
  what = f"the text ({source})"
  train_ids, val_ids = vocab.encode(train_text, what), vocab.encode(val_text, what)
  block = config.model.block_size
  train = TrainWindows(train_ids, block, config.batch_size, config.seed, jax.process_index(),
                       jax.process_count())
  val = eval_windows(val_ids, block, config.data.eval_windows)
  unit = "chars" if vocab.kind == "chars" else "bytes"
  return Dataset(
      train=train, evals={"val": val}, eval_split="val", final_splits=("val",), source=source,
      describe=(f"train {len(train_ids):,} {unit} | val {len(val_ids):,} {unit}, evaluated as "
                f"{len(val['inputs']):,} windows of {block} | vocabulary {vocab.size} {unit}"),
      model_info={"vocab_size": vocab.size}, files={VOCAB_FILE: vocab_json})
