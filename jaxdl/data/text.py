"""Text-classification sources, the word vocabulary, and token arrays for the loop.

Sources (config.data.source='auto' tries them in this order):
  files  data.path: a directory of train / dev (or validation) / optional test files, each
         .tsv (GLUE: a header row, a `sentence` column, an integer `label` column), .csv
         (header with `text` or `sentence` and `label`) or .jsonl (one object per line with
         "text" or "sentence" and "label").
  tfds   a prepared TFDS copy (glue/sst2, imdb_reviews, ...) read with tfds.data_source from
         its ArrayRecord files, so TensorFlow is not needed.
Otherwise the run stops with one line listing the ways to provide the data.

A split whose labels are all missing or -1 (GLUE's and TFDS's unlabelled test sets) is kept
out of evaluation. The number of classes is 1 + the largest training label.

Tokenization is word-level: lower-cased words and single punctuation marks, a vocabulary of
the training split's words seen at least data.min_count times, and one OOV id for the rest.
With data.prefix_backoff = N > 0 an unseen word first takes the id of its longest prefix of at
least N characters that the vocabulary has ("wretchedness" → "wretched", "dizzying" → "dizzy"):
English inflects at the end of words, and SST-2's dev set has 4.7% unseen tokens, about 2 in 5
of which find such a prefix; on the trained models that moved dev accuracy up 0.2-0.9 points and
test 0.6 (experiments/text_classifier/README.md).
Why word-level: SST-2's sentences are already tokenised English, short (19 words in dev), and
word models from scratch are what reach the ~85% the Flax example reports; byte-level inputs
are 5x longer, which a 2-core CPU pays for in every LSTM step. The vocabulary (with the label
names, the class count and the tokenizer's name) is vocab.json in the workdir: a resumed run
and jaxdl.predict read it back instead of rebuilding it.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import json
import os
import re
from typing import Any

import jax
import numpy as np

from jaxdl.data import images
from jaxdl.data.dataset import Dataset
from jaxdl.data.iterator import TrainBatches
from jaxdl.errors import UserError, first_line

VOCAB_FILE = "vocab.json"
TOKENIZER = "lower-words-v1"  # the name saved in vocab.json; change it if tokenize() changes
PAD, OOV = "<pad>", "<oov>"   # ids 0 and 1 (models/text.py relies on these ids)
SOURCES = ("auto", "files", "tfds")  # config.data.source for text classification
TEXT_COLUMNS = ("sentence", "text")  # the first one a file has is its text column
EXTENSIONS = (".tsv", ".csv", ".jsonl")
# Split name → the file stems (data.path) and TFDS split names that provide it.
SPLIT_FILES = {"train": ("train",), "dev": ("dev", "validation", "valid", "val"),
               "test": ("test",)}
TFDS_SPLITS = {"train": "train", "dev": "validation", "test": "test"}

_WORD_RE = re.compile(r"[\w'’]+|[^\w\s]")  # a word (inner apostrophes kept) or a punctuation mark
# Penn Treebank escapes, as SST-2's dev and test sets write brackets, slashes and asterisks
# (its train set has "(", "/" and "*").
_PTB_ESCAPES = {"-lrb-": "(", "-rrb-": ")", "-lsb-": "[", "-rsb-": "]", "-lcb-": "{",
                "-rcb-": "}", "\\/": "/", "\\*": "*"}
_PTB_RE = re.compile("|".join(map(re.escape, _PTB_ESCAPES)))


@dataclasses.dataclass
class TextSplit:
  """One split as read: texts, and int labels (None when the split has no labels)."""
  texts: list[str]
  labels: np.ndarray | None


# ---------------------------------------------------------------------------------------------
# Readers: one function per format; every bad row is a UserError naming the file and line.


def read_utf8(path: str, encoding: str = "utf-8") -> str:
  """A file's text; unreadable or non-UTF-8 bytes are a one-line error naming the file.

  Also the language model's reader (data/lm.py). `encoding='utf-8-sig'` drops a byte-order mark.
  """
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except OSError as e:
    raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
  try:
    return raw.decode(encoding)
  except UnicodeDecodeError as e:
    raise UserError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})"
                    ) from None


def _read_text(path: str) -> str:
  text = read_utf8(path, "utf-8-sig")  # tolerates a byte-order mark
  if not text.strip():
    raise UserError(f"{path}: the file is empty")
  return text


def _label(value: Any, path: str, line: int) -> int:
  """An integer label (a JSON int or the text of one); anything else is a one-line error."""
  if isinstance(value, bool) or not isinstance(value, (int, str)):
    raise UserError(f"{path}:{line}: label {value!r} is not an integer")
  try:
    label = int(value.strip()) if isinstance(value, str) else value
  except ValueError:
    raise UserError(f"{path}:{line}: label {value!r} is not an integer") from None
  if label < -1:
    raise UserError(f"{path}:{line}: label {label} is negative (-1 marks an unlabelled row)")
  return label


def _text_column(columns: list[str], path: str) -> str:
  for name in TEXT_COLUMNS:
    if name in columns:
      return name
  raise UserError(f"{path}:1: no 'sentence' or 'text' column (header: {', '.join(columns)})")


def _from_rows(rows, columns: list[str], path: str) -> TextSplit:
  """rows: (line number, list of fields) under a header `columns`."""
  text_col = _text_column(columns, path)
  text_i = columns.index(text_col)
  label_i = columns.index("label") if "label" in columns else None
  texts, labels = [], []
  for line, fields in rows:
    if len(fields) != len(columns):
      raise UserError(f"{path}:{line}: {len(fields)} fields, the header has {len(columns)} "
                      f"({', '.join(columns)})")
    texts.append(fields[text_i].strip())  # SST-2's train.tsv ends every sentence with '\r'
    if label_i is not None:
      labels.append(_label(fields[label_i], path, line))
  return TextSplit(texts, None if label_i is None else np.asarray(labels, np.int32))


def read_tsv(path: str) -> TextSplit:
  """A GLUE-style TSV: a header row, tab-separated fields, no quoting."""
  # Split on '\n' alone: csv and universal newlines would also end a line at the bare '\r'
  # that SST-2's train.tsv has before every tab.
  lines = _read_text(path).split("\n")
  columns = [c.strip() for c in lines[0].split("\t")]
  rows = ((i + 1, line.rstrip("\r").split("\t")) for i, line in enumerate(lines)
          if i > 0 and line.strip())
  return _from_rows(rows, columns, path)


def read_csv(path: str) -> TextSplit:
  """A CSV file with a header row (standard quoting)."""
  reader = csv.reader(io.StringIO(_read_text(path), newline=""))
  try:
    columns = [c.strip() for c in next(reader)]
    rows = [(reader.line_num, fields) for fields in reader if any(f.strip() for f in fields)]
  except csv.Error as e:
    raise UserError(f"{path}:{reader.line_num}: {first_line(e)}") from None
  return _from_rows(rows, columns, path)


def read_jsonl(path: str) -> TextSplit:
  """One JSON object per line with "text" or "sentence", and "label" (absent in every row, or
  in none)."""
  texts, labels = [], []
  labelled = None
  for i, line in enumerate(_read_text(path).split("\n")):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except ValueError as e:
      raise UserError(f"{path}:{i + 1}: not a JSON object ({first_line(e)})") from None
    if not isinstance(record, dict):
      raise UserError(f"{path}:{i + 1}: not a JSON object")
    text_col = next((c for c in TEXT_COLUMNS if c in record), None)
    if text_col is None or not isinstance(record[text_col], str):
      raise UserError(f"{path}:{i + 1}: no string 'sentence' or 'text' field")
    if labelled is None:
      labelled = "label" in record
    if labelled != ("label" in record):
      raise UserError(f"{path}:{i + 1}: no 'label' field" if labelled else
                      f"{path}:{i + 1}: a 'label' field, which earlier rows do not have")
    texts.append(record[text_col].strip())
    if labelled:
      labels.append(_label(record["label"], path, i + 1))
  return TextSplit(texts, np.asarray(labels, np.int32) if labelled else None)


def read_file(path: str) -> TextSplit:
  """Reads a .tsv, .csv or .jsonl split file."""
  if path.endswith(".tsv"):
    return read_tsv(path)
  if path.endswith(".csv"):
    return read_csv(path)
  if path.endswith(".jsonl"):
    return read_jsonl(path)
  raise UserError(f"{path}: unknown format (expected {', '.join(EXTENSIONS)})")


def _find_split_file(directory: str, split: str) -> str | None:
  found = [os.path.join(directory, stem + ext) for stem in SPLIT_FILES[split]
           for ext in EXTENSIONS if os.path.isfile(os.path.join(directory, stem + ext))]
  if len(found) > 1:
    raise UserError(f"data.path={directory!r}: several {split} files ({', '.join(found)}); "
                    f"keep one")
  return found[0] if found else None


def load_dir(directory: str) -> dict[str, TextSplit]:
  """train (required), dev and test (optional) from a directory of split files."""
  if not os.path.isdir(directory):
    raise UserError(f"data.path={directory!r} is not a directory")
  splits = {}
  for split in SPLIT_FILES:
    path = _find_split_file(directory, split)
    if path is None and split == "train":
      raise UserError(f"data.path={directory!r}: no train.tsv, train.csv or train.jsonl")
    if path is not None:
      splits[split] = read_file(path)
  return splits


# ---------------------------------------------------------------------------------------------
# TFDS: a prepared copy read with tfds.data_source (ArrayRecord; no TensorFlow needed).


def tfds_prepared(name: str, data_dir: str | None) -> bool:
  """Whether a readable copy exists; names without a config (imdb_reviews) have one more dir."""
  prepared = images._tfds_prepared  # pylint: disable=protected-access  (shared, not copied)
  return prepared(name, data_dir) or prepared(name + "/*", data_dir)


def load_tfds(name: str, data_dir: str | None) -> tuple[dict[str, TextSplit], list[str]]:
  """The train/validation/test splits a prepared TFDS text dataset has; also its label names."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  splits, label_names = {}, []
  for split, tfds_split in TFDS_SPLITS.items():
    try:
      source = tfds.data_source(name, split=tfds_split, data_dir=data_dir or None,
                                download=False)
    except Exception as e:  # pylint: disable=broad-except  (TFDS raises many types)
      if split != "train" and "split" in str(e).lower():
        continue  # the dataset has no such split (imdb_reviews has no validation)
      raise UserError(f"TFDS dataset {name!r} split {tfds_split!r}: {first_line(e)}") from None
    features = source.dataset_info.features
    text_col = next((c for c in TEXT_COLUMNS if c in features), None)
    if text_col is None or "label" not in features:
      raise UserError(f"TFDS dataset {name!r} has no 'sentence'/'text' and 'label' features "
                      f"(it has {', '.join(features)})")
    label_names = list(getattr(features["label"], "names", None) or [])
    examples = [source[i] for i in range(len(source))]
    texts = [_decode(ex[text_col]) for ex in examples]
    labels = np.asarray([int(ex["label"]) for ex in examples], np.int32)
    splits[split] = TextSplit(texts, labels)
  return splits, label_names


def _decode(value) -> str:
  return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def ways_to_get(name: str) -> str:
  return (f"no data for {name!r}: set --config.data.path=DIR (train.tsv and dev.tsv in GLUE "
          f"format, or .csv/.jsonl files with text or sentence and label; SST-2 is "
          f"https://dl.fbaipublicfiles.com/glue/data/SST-2.zip), or prepare {name!r} with TFDS "
          f"in ArrayRecord format (tfds build {name} --file_format=array_record) and set "
          f"data.tfds_dir if it is not in ~/tensorflow_datasets")


def load_splits(data_cfg) -> tuple[dict[str, TextSplit], list[str], str]:
  """The splits data_cfg selects, their label names ([] if unknown), and a source line."""
  source, name, path = data_cfg.source, data_cfg.name, os.path.expanduser(data_cfg.path)
  if source == "files" or (source == "auto" and path):
    if not path:
      raise UserError("data.source='files' needs data.path")
    return load_dir(path), [], f"text files in {path}"
  if source in ("tfds", "auto") and tfds_prepared(name, data_cfg.tfds_dir):
    splits, label_names = load_tfds(name, data_cfg.tfds_dir)
    return splits, label_names, f"TFDS {name} ({data_cfg.tfds_dir or 'default dir'})"
  if source == "tfds":
    raise UserError(f"data.source='tfds': no copy of {name!r} in ArrayRecord format under "
                    f"data.tfds_dir={data_cfg.tfds_dir or '~/tensorflow_datasets'!r}")
  if source == "auto":
    raise UserError(ways_to_get(name))
  raise UserError(f"data.source={source!r} is not one of {', '.join(SOURCES)} (text)")


# ---------------------------------------------------------------------------------------------
# Vocabulary and encoding.


def tokenize(text: str) -> list[str]:
  """Lower-cased words (keeping inner apostrophes: "n't", "'s") and single punctuation marks;
  Penn Treebank bracket escapes (-LRB-) become the brackets."""
  return _WORD_RE.findall(_PTB_RE.sub(lambda m: _PTB_ESCAPES[m.group()], text.lower()))


@dataclasses.dataclass
class Vocab:
  """Words by id (0 = padding, 1 = OOV), and what the classifier's outputs mean."""
  words: list[str]
  label_names: list[str]
  min_count: int
  tokenizer: str = TOKENIZER
  prefix_backoff: int = 0  # > 0: an unseen word takes the id of its longest known prefix this long

  def __post_init__(self):
    self.index = {w: i for i, w in enumerate(self.words)}

  def id(self, word: str) -> int:
    """The word's id; an unseen one gets its longest known prefix's (see prefix_backoff), else
    the OOV id."""
    i = self.index.get(word)
    if i is not None:
      return i
    if self.prefix_backoff:
      for end in range(len(word) - 1, self.prefix_backoff - 1, -1):
        i = self.index.get(word[:end])
        if i is not None:
          return i
    return 1

  @property
  def num_classes(self) -> int:
    return len(self.label_names)

  def to_json(self) -> str:
    return json.dumps({"tokenizer": self.tokenizer, "min_count": self.min_count,
                       "prefix_backoff": self.prefix_backoff,
                       "label_names": self.label_names, "words": self.words},
                      ensure_ascii=False, indent=0) + "\n"

  @classmethod
  def from_json(cls, text: str, path: str) -> "Vocab":
    try:
      d = json.loads(text)
      vocab = cls(words=list(d["words"]), label_names=[str(n) for n in d["label_names"]],
                  min_count=int(d["min_count"]), tokenizer=str(d["tokenizer"]),
                  # Files from before prefix_backoff existed: their runs mapped unseen words to OOV.
                  prefix_backoff=int(d.get("prefix_backoff", 0)))
    except (ValueError, KeyError, TypeError) as e:
      raise UserError(f"{path}: not a jaxdl vocabulary ({first_line(e)})") from None
    if vocab.tokenizer != TOKENIZER:
      raise UserError(f"{path}: made by tokenizer {vocab.tokenizer!r}, this jaxdl has "
                      f"{TOKENIZER!r}; use a new --workdir")
    if vocab.words[:2] != [PAD, OOV]:
      raise UserError(f"{path}: the first two words must be {PAD!r} and {OOV!r}")
    return vocab

  def encode(self, texts: list[str], max_len: int) -> tuple[np.ndarray, dict[str, int]]:
    """int32 ids [N, max_len], right-padded with 0; and counts: 'truncated' texts, 'tokens',
    'unseen' tokens (not in the vocabulary) and 'backed_off' ones (given a known prefix)."""
    tokens_NxL = np.zeros((len(texts), max_len), np.int32)
    counts = dict.fromkeys(("truncated", "tokens", "unseen", "backed_off"), 0)
    for i, text in enumerate(texts):
      words = tokenize(text)
      ids = [self.id(w) for w in words]
      unseen = sum(w not in self.index for w in words)
      counts["truncated"] += len(ids) > max_len
      counts["tokens"] += len(ids)
      counts["unseen"] += unseen
      counts["backed_off"] += unseen - ids.count(1)
      ids = ids[:max_len]
      tokens_NxL[i, :len(ids)] = ids
    return tokens_NxL, counts


def build_vocab(texts: list[str], labels: np.ndarray, min_count: int, max_size: int,
                label_names: list[str], prefix_backoff: int = 0) -> Vocab:
  """The training split's words seen >= min_count times, most frequent first (ties by word),
  at most max_size words in all (0 = no limit); classes = 1 + the largest label."""
  counts = collections.Counter(w for text in texts for w in tokenize(text))
  words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
  if max_size:
    words = words[:max(0, max_size - 2)]
  num_classes = int(labels.max()) + 1
  if len(label_names) != num_classes:
    label_names = [str(c) for c in range(num_classes)]
  return Vocab([PAD, OOV] + words, label_names, min_count, prefix_backoff=prefix_backoff)


# ---------------------------------------------------------------------------------------------
# The Dataset the loop trains on.


class TextBatches(TrainBatches):
  """TrainBatches of sentences of similar length, cut to the batch's longest one.

  Within each pool of `sort_pool` batches of an epoch's permutation, examples are sorted by
  length, cut into batches, and the batches shuffled (all from (seed, epoch), so still a pure
  function of the step). A batch's token array is then cut to its longest sentence rounded up to
  a multiple of `bucket`. SST-2's training phrases average 9 words against a 64-token max_len,
  so the LSTM runs ~4x fewer steps. Each distinct width compiles once (<= max_len / bucket).
  """

  def __init__(self, arrays, batch_size, seed, bucket, sort_pool, process_index=0,
               process_count=1):
    super().__init__(arrays, batch_size, seed, process_index, process_count)
    self.bucket, self.sort_pool = bucket, sort_pool
    self.lengths = (arrays["tokens"] != 0).sum(1)

  def position(self, step: int) -> dict[str, int]:
    # The length grouping decides which examples a step reads: a resume must keep it.
    return {**super().position(step), "sort_pool": self.sort_pool}

  def _epoch_order(self, epoch: int) -> np.ndarray:
    if epoch == self._order_epoch or not self.sort_pool:
      return super()._epoch_order(epoch)
    order = super()._epoch_order(epoch).copy()
    rng = np.random.default_rng([self.seed, epoch, 1])
    pool = self.sort_pool * self.batch_size
    full = (self.size // self.batch_size) * self.batch_size  # a ragged last batch stays last
    for start in range(0, full, pool):
      idx = order[start:min(start + pool, full)]
      idx = idx[np.argsort(self.lengths[idx], kind="stable")].reshape(-1, self.batch_size)
      order[start:start + idx.size] = idx[rng.permutation(len(idx))].reshape(-1)
    self._order = order
    return order

  def batch(self, step: int) -> dict[str, np.ndarray]:
    out = super().batch(step)
    if self.bucket:
      # The width comes from the whole global batch, so every process cuts the same.
      epoch, i = divmod(step, self.steps_per_epoch)
      idx = self._epoch_order(epoch)[i * self.batch_size:(i + 1) * self.batch_size]
      longest = max(1, int(self.lengths[idx].max()))
      out["tokens"] = out["tokens"][:, :min(out["tokens"].shape[1],
                                            -(-longest // self.bucket) * self.bucket)]
    return out


def _check_labels(split: str, labels: np.ndarray, num_classes: int) -> None:
  if (labels < 0).any():
    raise UserError(f"the {split} split has {int((labels < 0).sum())} unlabelled rows (-1) "
                    f"among labelled ones")
  if labels.max() >= num_classes:
    raise UserError(f"the {split} split has label {int(labels.max())}, but the classes are "
                    f"0..{num_classes - 1} (from the training split or the saved vocab.json)")


def load_dataset(config, workdir: str) -> Dataset:
  """Splits, vocabulary (vocab.json in workdir if a previous run saved one), token arrays."""
  data_cfg = config.data
  splits, label_names, source = load_splits(data_cfg)
  # Unlabelled splits (all labels missing or -1, like GLUE's test set) are not evaluated.
  labelled = {k: v for k, v in splits.items()
              if v.labels is not None and len(v.labels) and not (v.labels == -1).all()}
  if "train" not in labelled:
    raise UserError(f"the train split of {source} has no labels")
  vocab_path = os.path.join(workdir, VOCAB_FILE)
  if os.path.isfile(vocab_path):  # resume: the exact vocabulary the checkpoints were made with
    with open(vocab_path, encoding="utf-8") as f:
      vocab = Vocab.from_json(f.read(), vocab_path)
    vocab_note = f"vocab {len(vocab.words):,} (from {vocab_path})"
  else:
    train = labelled["train"]
    vocab = build_vocab(train.texts, train.labels, data_cfg.min_count, data_cfg.max_vocab,
                        label_names, data_cfg.prefix_backoff)
    vocab_note = f"vocab {len(vocab.words):,} (words seen >= {data_cfg.min_count}x in train)"
  for split, s in labelled.items():
    _check_labels(split, s.labels, vocab.num_classes)
  if vocab.num_classes < 2:
    raise UserError(f"the train split of {source} has only one class")

  arrays, counts = {}, {}
  for split, s in labelled.items():
    tokens, counts[split] = vocab.encode(s.texts, data_cfg.max_len)
    arrays[split] = {"tokens": tokens, "label": s.labels}
  eval_split = "dev" if "dev" in arrays else "test" if "test" in arrays else None
  if eval_split is None:
    raise UserError(f"{source} has no labelled dev or test split to evaluate on")
  final_splits = tuple(s for s in ("dev", "test") if s in arrays)

  train = TextBatches(arrays["train"], config.batch_size, config.seed, data_cfg.bucket,
                      data_cfg.sort_pool, jax.process_index(), jax.process_count())
  sizes = " | ".join(f"{split} {len(splits[split].texts):,}" +
                     ("" if split in arrays else " (unlabelled: not evaluated)")
                     for split in splits)
  cut = ", ".join(f"{c['truncated']:,} {split}" for split, c in counts.items())

  def share(key):  # e.g. '4.7% dev, 4.9% test': counts[split][key] per token of the eval splits
    return ", ".join(f"{100 * c[key] / max(c['tokens'], 1):.1f}% {split}"
                     for split, c in counts.items() if split != "train")

  describe = (f"{sizes} | {vocab.num_classes} classes | {vocab_note} | max_len "
              f"{data_cfg.max_len} truncated {cut} | unseen tokens {share('unseen')}"
              + (f" ({share('backed_off')} given a known prefix of >= {vocab.prefix_backoff} "
                 f"chars)" if vocab.prefix_backoff else ""))
  return Dataset(train=train, evals={k: v for k, v in arrays.items() if k != "train"},
                 eval_split=eval_split, final_splits=final_splits, source=source,
                 describe=describe,
                 model_info={"vocab_size": len(vocab.words), "num_classes": vocab.num_classes},
                 files={VOCAB_FILE: vocab.to_json()})
