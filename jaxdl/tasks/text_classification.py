"""Text classification: sentences → word ids [N, max_len] → a class; softmax cross-entropy
plus a confusion matrix (per-class and macro precision/recall/F1).

Data (data.source='auto' takes the first that works; data/sources.py):
  1. data.path: a directory of train / dev (or validation) / optional test files, each .tsv
     (GLUE), .csv or .jsonl (data/tables.py);
  2. a prepared TFDS copy of data.name (glue/sst2, imdb_reviews, ...);
  or a record directory that `python -m jaxdl.prepare` encoded from either (data/records.py),
  streamed from disk (data/stream.py; data.streaming);
otherwise the run stops with one line listing the ways to provide the data.

A split whose labels are all missing or -1 (GLUE's and TFDS's unlabelled test sets) is kept
out of evaluation. The number of classes is 1 + the largest training label.

Why word-level (data/vocab.py): SST-2's sentences are already tokenised English, short (19
words in dev), and word models from scratch are what reach the ~85% the Flax example reports;
byte-level inputs are 5x longer, which a 2-core CPU pays for in every LSTM step. The vocabulary
(with the label names) is WORKDIR/vocab.json: a resumed run and jaxdl.predict read it back
instead of rebuilding it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Callable

import jax
import numpy as np

from jaxdl import files, initfrom
from jaxdl.data import records, sources, stream, subsets, tables, tfds
from jaxdl.data.dataset import Dataset
from jaxdl.data.iterator import CutBatches, LengthGroupedBatches
from jaxdl.data.vocab import VOCAB_FILE, WordVocab, build_vocab
from jaxdl.errors import UserError, require
from jaxdl.tasks import classifier

INPUT = "tokens"
UNIT = "examples"
TRAIN_METRICS = ("accuracy",)
PLOT_METRICS = ("loss", "accuracy")
MODELS = ("text_lstm", "text_cnn", "text_transformer")
FORMATS = classifier.FORMATS
FILES = (VOCAB_FILE,)  # the files it writes beside the checkpoints (jaxdl.export)
FALLBACKS = ()
# Resume declarations (jaxdl/resume.py): keys that may change on resume, and keys added since
# older workdirs were made, each with the value that reproduces them. A data key that several
# tasks read through the data floor (data.validation_size: data/subsets.py) is declared by each
# task whose config has it: resume.py merges only the run's task and model rooms, as it cannot
# know which floor helpers a task calls.
# The same batches in memory or streamed, read ahead by a thread or workers (data/stream.py).
RESUME_HARMLESS = ("data.streaming", "data.memory_budget_gb", "data.workers", "data.prefetch")
RESUME_ADDED = {"data.validation_size": 0, "data.train_size": 0,  # no carving, all of train
                "data.prefix_backoff": 0,  # unseen words are <oov>
                "data.num_classes": 0,     # 1 + the largest train label
                "loss.label_smoothing": 0.0}


def check(config) -> None:
  """The text task's own keys (data.*, loss.*)."""
  data = config.data
  sources.check(data, FALLBACKS)
  stream.check(data)
  subsets.check(data, "train_size")
  subsets.check(data, "validation_size")
  require(data.max_len > 0, "data.max_len", data.max_len, "must be > 0")
  require(data.min_count >= 1, "data.min_count", data.min_count, "must be >= 1")
  require(data.max_vocab == 0 or data.max_vocab >= 3, "data.max_vocab", data.max_vocab,
          "must be 0 (no cap) or >= 3 (<pad>, <oov> and a word)")
  for key in ("prefix_backoff", "bucket", "sort_pool"):
    require(data[key] >= 0, f"data.{key}", data[key], "must be >= 0 (0 = off)")
  num_classes = data.get("num_classes", 0)
  require(num_classes == 0 or num_classes >= 2, "data.num_classes", num_classes,
          "must be 0 (from the labels) or >= 2")
  require(0 <= config.loss.label_smoothing < 1, "loss.label_smoothing",
          config.loss.label_smoothing, "must be in [0, 1)")


def _ways(name: str) -> str:
  return (f"no data for {name!r}: set --config.data.path=DIR (train.tsv and dev.tsv in GLUE "
          f"format, or .csv/.jsonl files with text or sentence and label; SST-2 is "
          f"https://dl.fbaipublicfiles.com/glue/data/SST-2.zip), or prepare {name!r} with TFDS "
          f"in ArrayRecord format (tfds build {name} --file_format=array_record) and set "
          f"data.tfds_dir if it is not in ~/tensorflow_datasets")


def read_vocab(workdir: str | None) -> WordVocab | None:
  """WORKDIR/vocab.json when a run saved one (local or gs://), else None."""
  if workdir is None:
    return None
  path = os.path.join(workdir, VOCAB_FILE)
  return WordVocab.from_json(files.read_text(path), path) if files.exists(path) else None


def _check_labels(split: str, labels: np.ndarray, num_classes: int) -> None:
  if (labels < 0).any():
    raise UserError(f"the {split} split has {int((labels < 0).sum())} unlabelled rows (-1) "
                    f"among labelled ones")
  if labels.max() >= num_classes:
    raise UserError(f"the {split} split has label {int(labels.max())}, but the classes are "
                    f"0..{num_classes - 1} (from the training split or the saved vocab.json)")



def load(config, workdir: str | None) -> Dataset:
  """Splits, vocabulary (vocab.json in workdir if a previous run saved one), token arrays: from
  the texts, or from records that jaxdl.prepare encoded (streamed, data.streaming)."""
  data_cfg = config.data
  path = os.path.expanduser(data_cfg.path) if data_cfg.source in ("auto", "files") else ""
  lengths = None  # the training rows' (the batches' length groups): read at start when on disk
  if path and records.is_records(path):
    arrays, vocab, describe, source = _from_records(config, workdir, path)
  else:
    if path:
      stream.check_in_memory(data_cfg, path)
    arrays, vocab, describe, source, lengths = _encode(config, workdir)
    stream.check_streamed(arrays, data_cfg, source)
  eval_split = next((s for s in ("val", "dev", "test") if s in arrays), None)
  if eval_split is None:
    raise UserError(f"{source} has no labelled dev or test split to evaluate on (set "
                    f"data.validation_size to carve one out of train)")
  final_splits = tuple(s for s in ("val", "dev", "test") if s in arrays)

  arrays, identity = stream.in_memory(arrays, data_cfg)  # records: on disk, or loaded ('off')
  if isinstance(arrays["train"], records.RecordRows) and lengths is None:
    lengths = np.concatenate([(block["tokens"] != 0).sum(1)
                              for _, block in arrays["train"].blocks()])
  train = stream.streamed(LengthGroupedBatches(
      arrays["train"], config.batch_size, config.seed, data_cfg.sort_pool, jax.process_index(),
      jax.process_count(), identity, lengths), data_cfg)
  if data_cfg.bucket:
    train = CutBatches(train, data_cfg.bucket)
  return Dataset(train=train, evals={k: v for k, v in arrays.items() if k != "train"},
                 eval_split=eval_split, final_splits=final_splits, source=source,
                 describe=describe,
                 model_info=_model_info(vocab, config),
                 files={VOCAB_FILE: vocab.to_json()})


def _encode(config, workdir: str | None):
  """(arrays {split: {'tokens', 'label'}}, vocabulary, the start-up line's data text, source,
  the training rows' lengths or None) of the texts the config reads, labelled splits only,
  'val' carved when asked. The texts are read as they are encoded, a chunk at a time
  (data/tables.TextRows), and the arrays held; a TFDS copy streams unless data.streaming='off':
  its splits are rows encoded when a batch reads them (tfds.TextTokens, as RecordRows), and
  this pass keeps only the counts and the training rows' lengths."""
  splits, vocab, encoded, describe, source = _encoder(config, workdir)
  max_len = config.data.max_len
  if stream.settings(config.data)[0] != "off" and all(s.tokens for s in splits.values()):
    arrays, lengths = {}, None
    for split, rows in splits.items():
      lengths_of = [(chunk["tokens"] != 0).sum(1) for chunk in encoded(split)]
      if split == "train":
        lengths = np.concatenate(lengths_of)
      on_disk = records.RecordRows(rows.tokens(vocab, max_len))
      arrays[split] = on_disk if rows.rows is None else on_disk.take(rows.rows)
    return arrays, vocab, describe(), source, lengths
  arrays = {}
  for split, rows in splits.items():
    tokens = np.zeros((len(rows), max_len), np.int32)
    start = 0
    for chunk in encoded(split):
      tokens[start:start + len(chunk["label"])] = chunk["tokens"]
      start += len(chunk["label"])
    arrays[split] = {"tokens": tokens, "label": rows.labels}
  return arrays, vocab, describe(), source, None


def _encoder(config, workdir: str | None):
  """What _encode and record_splits share: (the labelled splits as TextRows, the vocabulary,
  encoded(split) → the split's {'tokens', 'label'} chunks as it encodes them, describe() → the
  start-up line's data text once every split is encoded (its truncation and unseen-token
  counts), source). Three reads of the training texts: their labels and count, the
  vocabulary's words (of the carved training rows), and the encoding."""
  data_cfg = config.data
  (splits, label_names), source = sources.load(
      data_cfg, read_path=lambda path: ((tables.load_dir(path, tables.stream_file), []),
                                        f"text files in {path}"),
      read_tfds=tfds.text_rows, ways=_ways(data_cfg.name))
  # Unlabelled splits (all labels missing or -1, like GLUE's test set) are not evaluated.
  labelled = {k: v for k, v in splits.items()
              if v.labels is not None and len(v.labels) and not (v.labels == -1).all()}
  if "train" not in labelled:
    raise UserError(f"the train split of {source} has no labels")
  # data.validation_size carves a 'val' split out of train (for data without a dev split), and
  # data.train_size keeps a subset of the rest; both by a fixed seed (data/subsets.py).
  labelled, carved = subsets.with_validation(labelled, data_cfg, take=lambda s, rows: s.take(rows),
                                             size=len)
  sizes = " | ".join(  # the start-up line's; then the whole training split's labels are let go
      [carved] + [f"{split} {len(splits[split]):,}" +
                  ("" if split in labelled else " (unlabelled: not evaluated)")
                  for split in splits if split not in ("train", "val")])
  del splits
  vocab = read_vocab(workdir)  # resume: the exact vocabulary the checkpoints were made with
  if vocab is not None:
    vocab_note = f"vocab {len(vocab.words):,} (from {os.path.join(workdir, VOCAB_FILE)})"
  else:
    train = labelled["train"]
    vocab = build_vocab((text for chunk in train.texts() for text in chunk), train.labels,
                        data_cfg.min_count, data_cfg.max_vocab, label_names,
                        data_cfg.prefix_backoff, data_cfg.get("num_classes", 0))
    vocab_note = f"vocab {len(vocab.words):,} (words seen >= {data_cfg.min_count}x in train)"
    initial = initfrom.task_file(config, VOCAB_FILE)
    if initial is not None:  # init_from: the source's words, whose ids its embeddings are rows
      # of, and this data's classes (a new head may have another number)
      where = f"config.init_from={config.init_from!r}'s {VOCAB_FILE}"
      vocab = dataclasses.replace(WordVocab.from_json(initial, where),
                                  label_names=vocab.label_names)
      vocab_note = f"vocab {len(vocab.words):,} (from {where})"
  for split, s in labelled.items():
    _check_labels(split, s.labels, vocab.num_classes)
  if vocab.num_classes < 2:
    raise UserError(f"the train split of {source} has only one class")

  counts = {}  # per split, of its last encoding

  def encoded(split):
    rows, start = labelled[split], 0
    counts[split] = dict.fromkeys(("truncated", "tokens", "unseen", "backed_off"), 0)
    for texts in rows.texts():
      tokens, chunk_counts = vocab.encode(texts, data_cfg.max_len)
      for key, n in chunk_counts.items():
        counts[split][key] += n
      yield {"tokens": tokens, "label": rows.labels[start:start + len(texts)]}
      start += len(texts)

  def describe():
    cut = ", ".join(f"{c['truncated']:,} {split}" for split, c in counts.items())

    def share(key):  # e.g. '4.7% dev, 4.9% test': counts[split][key] per token of eval splits
      return ", ".join(f"{100 * c[key] / max(c['tokens'], 1):.1f}% {split}"
                       for split, c in counts.items() if split != "train")

    return (f"{sizes} | {vocab.num_classes} classes | {vocab_note} | max_len "
            f"{data_cfg.max_len} truncated {cut} | unseen tokens {share('unseen')}"
            + (f" ({share('backed_off')} given a known prefix of >= {vocab.prefix_backoff} "
               f"chars)" if vocab.prefix_backoff else ""))

  return labelled, vocab, encoded, describe, source


# What a record directory's examples hold, and the data keys that fixed them when prepared
# (the splits carved, the vocabulary, the width): a run with others is refused in one line.
RECORD_FEATURES = {"tokens": {"dtype": "int32", "rank": 1}, "label": {"dtype": "int32", "rank": 0}}
PREPARED_KEYS = {"max_len": 64, "min_count": 1, "max_vocab": 0, "prefix_backoff": 0,
                 "num_classes": 0, "validation_size": 0.0, "train_size": 0.0}


def _prepared_keys(data_cfg) -> dict:
  return {key: data_cfg[key] if key in data_cfg else default
          for key, default in PREPARED_KEYS.items()}


def record_splits(config) -> tuple[dict, Callable[[], dict], str]:
  """What jaxdl.prepare writes of this task's data: ({split: iterator of row chunks}, the JSON's
  'info' once they are written, where it came from). The texts are encoded as a run encodes
  them (the vocabulary of the carved training split, or init_from's), read as they are encoded:
  a source larger than memory converts (what is held grows with the rows, not their bytes:
  the labels and the carved rows' indices, experiments/data/README.md)."""
  splits, vocab, encoded, describe, source = _encoder(config, None)

  def info():
    return {"vocab": json.loads(vocab.to_json()), "describe": describe(), "source": source,
            "data": _prepared_keys(config.data)}

  return {split: encoded(split) for split in splits}, info, source


def _from_records(config, workdir: str | None, path: str):
  """_encode's (arrays, vocabulary, text, source) of a record directory: its splits as
  RecordRows (on disk), its vocabulary, checked against the config, a resume's vocab.json and
  init_from's."""
  meta = records.read_meta(path)
  records.check_features(meta, path, "text_classification", RECORD_FEATURES)
  info = meta["info"]
  for key, value in _prepared_keys(config.data).items():
    if info["data"].get(key) != value:
      raise UserError(f"config.data.{key}={value!r} but {path} was prepared with "
                      f"{info['data'].get(key)!r}; prepare it again with "
                      f"--config.data.{key}={value!r}")
  where = os.path.join(path, records.RECORDS_FILE)
  vocab = WordVocab.from_json(json.dumps(info["vocab"]), where)
  saved = read_vocab(workdir)
  if saved is not None and saved != vocab:
    raise UserError(f"{os.path.join(workdir, VOCAB_FILE)}: the run's vocabulary is not the one "
                    f"{path} was prepared with; train on the data the run started with")
  initial = initfrom.task_file(config, VOCAB_FILE) if workdir is None else None
  if initial is not None and WordVocab.from_json(initial, "").words != vocab.words:
    raise UserError(f"config.init_from={config.init_from!r}: its vocabulary is not the one "
                    f"{path} was prepared with; prepare it again with this init_from")
  arrays = {split: records.RecordRows(records.Records(path, split, meta))
            for split in meta["splits"]}
  return arrays, vocab, info["describe"], f"records in {path}"


def objective(config, model):
  """(params, batch, rng, train) -> (loss, sums): softmax cross-entropy, with the confusion
  counts (per-class and macro precision, recall and F1)."""
  return functools.partial(classifier.classify, model=model, input_key=INPUT,
                           label_smoothing=config.loss.label_smoothing, confusion=True)


summarise = classifier.summarise  # mean loss, accuracy, the confusion's scores
brief = classifier.brief


def _saved_vocab(workdir: str) -> WordVocab:
  vocab = read_vocab(workdir)
  if vocab is None:
    raise UserError(f"{os.path.join(workdir, VOCAB_FILE)}: not found (is --workdir a text "
                    f"classifier's run?)")
  return vocab


def _model_info(vocab: WordVocab, config) -> dict:
  return {"vocab_size": len(vocab.words), "num_classes": vocab.num_classes,
          "max_len": config.data.max_len}


def model_info(config, workdir: str) -> dict:
  """The model_info of a run made before training saved it (jaxdl.load), from its vocab.json."""
  return _model_info(_saved_vocab(workdir), config)


def predictor(config, workdir: str, build_model, variables):
  """(sentences) -> [(label name, probability)], with the vocabulary the run trained with;
  build_model(**model_info) is the run's model."""
  vocab = _saved_vocab(workdir)
  model = build_model(**_model_info(vocab, config))
  return classifier.predictor(model, variables, vocab.label_names,
                              lambda texts: vocab.encode(texts, config.data.max_len)[0])
