"""Prepared TFDS copies read with tfds.data_source (ArrayRecord files; no TensorFlow needed):
image splits (loaded whole, or read by row as they stream: ImageSplit), labelled-text splits,
and the text of a corpus."""

from __future__ import annotations

import functools
import hashlib
from typing import Iterator

import numpy as np

from jaxdl.data.tables import CHUNK, TEXT_COLUMNS, TextRows
from jaxdl.errors import UserError, first_line

# The split names a text classifier uses → TFDS's split names.
TEXT_SPLITS = {"train": "train", "dev": "validation", "test": "test"}


def _source(name: str, split: str, data_dir: str | None):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import)
  return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)


def _decode(value) -> str:
  return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def read_images(name: str, data_dir: str | None) -> dict[str, dict[str, np.ndarray]]:
  """The 'train' and 'test' splits of an image dataset: uint8 [N,H,W,C] images, int32 labels."""
  return {split: next(rows) for split, rows in image_chunks(name, data_dir, None).items()}


def image_chunks(name: str, data_dir: str | None, chunk: int | None = 4096) -> dict:
  """read_images' splits as iterators of `chunk` examples at a time (None: one chunk of all),
  decoded as they are asked for (jaxdl.prepare's streaming writer)."""
  sources = {}
  for split in ("train", "test"):
    try:
      sources[split] = _source(name, split, data_dir)
    except Exception as e:  # pylint: disable=broad-except  (TFDS raises many types)
      raise UserError(f"TFDS dataset {name!r} split {split!r}: {first_line(e)}") from None

  def rows(split, source):
    for examples in _examples(name, split, source, chunk or max(len(source), 1)):
      images = np.stack([np.asarray(ex["image"], np.uint8) for ex in examples])
      yield {"image": images[..., None] if images.ndim == 3 else images,
             "label": np.asarray([ex["label"] for ex in examples], np.int32)}

  return {split: rows(split, source) for split, source in sources.items()}


def text_rows(name: str, data_dir: str | None) -> tuple[dict[str, TextRows], list[str]]:
  """The train/validation/test splits a labelled-text dataset has, as TextRows (their labels
  read in one pass, their texts again when asked for, a chunk at a time); its label names."""
  splits, label_names = {}, []
  for split, tfds_split in TEXT_SPLITS.items():
    try:
      source = _source(name, tfds_split, data_dir)
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
    read = functools.partial(_text_chunks, name, tfds_split, source, text_col)
    labels = [np.asarray([int(ex["label"]) for ex in examples], np.int32)
              for examples in _examples(name, tfds_split, source)]
    splits[split] = TextRows(len(source), np.concatenate(labels) if labels else
                             np.zeros(0, np.int32), read,
                             tokens=functools.partial(TextTokens, name, tfds_split, data_dir))
  return splits, label_names


def _examples(name: str, split: str, source, size: int = CHUNK) -> Iterator[list]:
  """A TFDS split's examples, `size` at a time, in order."""
  for start in range(0, len(source), size):
    try:
      yield [source[i] for i in range(start, min(start + size, len(source)))]
    except Exception as e:  # pylint: disable=broad-except  (TFDS raises many types)
      raise UserError(f"TFDS dataset {name!r} split {split!r}: {first_line(e)}") from None


def _text_chunks(name: str, split: str, source, text_col: str) -> Iterator[list[str]]:
  for examples in _examples(name, split, source):
    yield [_decode(ex[text_col]) for ex in examples]


def read_corpus(name: str, data_dir: str | None) -> str:
  """All splits of a text corpus (one 'text' example each), joined in order."""
  parts = []
  for split in ("train", "validation", "test"):
    try:
      source = _source(name, split, data_dir)
      texts = [source[i]["text"] for i in range(len(source))]
    except Exception as e:  # pylint: disable=broad-except  (TFDS raises many types)
      raise UserError(f"TFDS dataset {name!r} split {split!r}: {first_line(e)}") from None
    parts += [_decode(t) for t in texts]
  return "".join(parts)


class _Rows:
  """One split of a prepared TFDS copy, read by row index without loading it: what
  data/records.RecordRows reads (len(), `layout`, read(indices), `sha256`, `info`), so a TFDS
  copy streams as a record directory does (data/stream.py). Each example is decoded by TFDS
  when read; a subclass makes the rows' arrays of the examples (`_arrays`)."""

  def __init__(self, name: str, split: str, data_dir: str | None):
    self.name, self.split = name, split
    try:
      self._source = _source(name, split, data_dir)
      self._first = self._source[0]
      self._info = self._source.dataset_info
    except Exception as e:  # pylint: disable=broad-except  (TFDS raises many types)
      raise UserError(f"TFDS dataset {name!r} split {split!r}: {first_line(e)}") from None
    self.info = {}
    self._reads = [0]

  def _identity(self, *more: str) -> str:
    """What a resume checks: the same dataset, version and split size (and `more`)."""
    text = " ".join([self.name, str(self._info.version), self.split, str(len(self)), *more])
    return hashlib.sha256(text.encode()).hexdigest()

  @property
  def reads(self) -> int:
    return self._reads[0]

  def __len__(self) -> int:
    return len(self._source)

  def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    try:
      examples = [self._source[int(i)] for i in np.asarray(indices).reshape(-1)]
    except Exception as e:  # pylint: disable=broad-except  (TFDS raises many types)
      raise UserError(f"TFDS dataset {self.name!r} split {self.split!r}: cannot read "
                      f"({first_line(e)})") from None
    self._reads[0] += len(examples)
    return self._arrays(examples)

  def _arrays(self, examples: list) -> dict[str, np.ndarray]:
    raise NotImplementedError


class ImageSplit(_Rows):
  """An image dataset's split: uint8 [H, W, C] images and int32 labels."""

  def __init__(self, name: str, split: str, data_dir: str | None):
    super().__init__(name, split, data_dir)
    image = np.asarray(self._first["image"], np.uint8)
    shape = image.shape + (1,) * (image.ndim == 2)
    self.layout = [("image", np.dtype(np.uint8), shape, int(np.prod(shape))),
                   ("label", np.dtype(np.int32), (), 4)]
    self.sha256 = self._identity()
    self.info = {"labels": int(getattr(self._info.features["label"], "num_classes", 0) or 0)}

  def _arrays(self, examples: list) -> dict[str, np.ndarray]:
    shape = self.layout[0][2]
    images = np.empty((len(examples), *shape), np.uint8)
    for row, ex in enumerate(examples):
      images[row] = np.asarray(ex["image"], np.uint8).reshape(shape)
    return {"image": images, "label": np.asarray([ex["label"] for ex in examples], np.int32)}


class TextTokens(_Rows):
  """A labelled-text dataset's split, its texts encoded as they are read: int32 word ids
  [max_len] by `vocab` (data/vocab.WordVocab) and int32 labels, as a text classifier's arrays
  in memory hold them (the same ids: WordVocab.encode)."""

  def __init__(self, name: str, split: str, data_dir: str | None, vocab, max_len: int):
    super().__init__(name, split, data_dir)
    self.text_col = next(c for c in TEXT_COLUMNS if c in self._info.features)
    self.vocab, self.max_len = vocab, max_len
    self.layout = [("tokens", np.dtype(np.int32), (max_len,), 4 * max_len),
                   ("label", np.dtype(np.int32), (), 4)]
    self.sha256 = self._identity(str(max_len), vocab.to_json())  # the ids depend on them too

  def _arrays(self, examples: list) -> dict[str, np.ndarray]:
    tokens, _ = self.vocab.encode([_decode(ex[self.text_col]) for ex in examples], self.max_len)
    return {"tokens": tokens, "label": np.asarray([int(ex["label"]) for ex in examples],
                                                  np.int32)}
