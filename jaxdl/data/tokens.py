"""A language model's corpus prepared as token ids on disk, read by offset.

`python -m jaxdl.prepare` writes DIR/train.bin and DIR/val.bin, each one flat array of token ids
(uint16 when the vocabulary fits, else uint32: nanoGPT's train.bin), and DIR/jaxdl-tokens.json
with the vocabulary and, per split, its file, dtype, token count and sha256. The ids are what
the in-memory path encodes from the same text (language_model.split_text's cut, then the
vocabulary), so a run on the directory trains on the same windows, bit for bit.

The writer streams: two passes over the text in chunks (the first counts the characters and
builds the vocabulary, the second encodes and writes), so a corpus larger than memory converts.
It writes into DIR.tmp-<pid> and renames that to DIR at the end, the JSON last inside it: a
killed prepare leaves no directory that looks complete.

The reader checks each file's size and sha256 against the JSON, and reads windows by their
offset (TokenFile: one os.pread per window). Not a np.memmap: its pages stay mapped once a
window touches them, and the kernel maps the cached pages around each one too, so a run's
resident memory grew with the corpus (measured: +0.56 GB of peak RSS for +0.4 GB of text in
200 steps of the :nanogpt_cpu preset; experiments/data/README.md).

The directory may be on gs:// (read through files.py; a window is one ranged GET, a batch's
sent together); prepare writes a local one, to be copied there.
"""

from __future__ import annotations

import io
import json
import os
from typing import Iterator

import numpy as np

from jaxdl import files
from jaxdl.data import corpus, prepared
from jaxdl.data.sources import read_utf8
from jaxdl.data.vocab import CharVocab
from jaxdl.errors import UserError, first_line

TOKENS_FILE = "jaxdl-tokens.json"
FORMAT = "jaxdl-tokens-v1"
SPLITS = ("train", "val")
CHUNK_CHARS = 1 << 24  # characters per read: 16M, ~64 MB of codepoints while encoding


class TokenFile:
  """A file of token ids read by offset: len(), and windows(starts, length) -> int32 rows. It
  holds no data and no open file when pickled (a data-loading worker opens its own)."""

  def __init__(self, path: str, dtype: np.dtype, size: int):
    self.path, self.dtype, self.size = path, np.dtype(dtype), size
    self._fd = None

  def __len__(self) -> int:
    return self.size

  def __getstate__(self):
    return {**self.__dict__, "_fd": None}

  def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
    """[len(starts), length] int32: the ids from each start on."""
    starts = np.asarray(starts, np.int64)
    for start in starts:
      if not 0 <= start <= self.size - length:
        raise IndexError(f"{self.path}: window {start}..{start + length} outside 0..{self.size}")
    item = self.dtype.itemsize
    if files.is_url(self.path):
      blobs = self._ranges(starts * item, length * item)
    else:
      if self._fd is None:
        self._fd = os.open(self.path, os.O_RDONLY)
      blobs = (os.pread(self._fd, length * item, int(start) * item) for start in starts)
    out = np.empty((len(starts), length), np.int32)
    for row, (start, data) in enumerate(zip(starts, blobs)):
      if len(data) != length * item:
        raise UserError(f"{self.path}: ends before token {start + length:,} (it was "
                        f"{self.size:,} tokens when the run started): changed while training")
      out[row] = np.frombuffer(data, self.dtype)
    return out

  def _ranges(self, offsets: np.ndarray, nbytes: int) -> list[bytes]:
    """The bytes at each offset of a gs:// file: ranged GETs, sent together (fsspec's
    cat_ranges; on_error='raise', as its default puts an error in the list in place of bytes)."""
    fs, key = files.object_store(self.path)
    offsets = [int(o) for o in offsets]
    try:
      return fs.cat_ranges([key] * len(offsets), offsets, [o + nbytes for o in offsets],
                           on_error="raise")
    except OSError as e:
      raise UserError(f"{self.path}: cannot read ({first_line(e)})") from None

  def __array__(self, dtype=None, copy=None):  # the whole file, for tests and small corpora
    del copy
    ids = self.windows(np.zeros(1, np.int64), self.size)[0] if self.size else np.zeros(0, np.int32)
    return ids if dtype is None else ids.astype(dtype)

  def __del__(self):
    if getattr(self, "_fd", None) is not None:
      os.close(self._fd)


def is_prepared(path: str) -> bool:
  """A directory (local or gs://) that jaxdl.prepare wrote for a language model."""
  return files.is_dir(path) and files.is_file(os.path.join(path, TOKENS_FILE))


def _chunks(paths: list[str]) -> Iterator[str]:
  """The corpus's text, CHUNK_CHARS characters at a time, file after file."""
  for path in paths:
    try:
      # newline='': no newline translation, as sources.read_utf8 decodes the bytes as they are
      with io.TextIOWrapper(files.open_binary(path), encoding="utf-8", newline="") as f:
        while chunk := f.read(CHUNK_CHARS):
          yield chunk
    except (OSError, UnicodeDecodeError):
      read_utf8(path)  # raises the one-line error that names the file (and the byte)
      raise


def _dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def prepare(path: str, out: str, kind: str, val_fraction: float,
            vocab: CharVocab | None = None) -> dict:
  """Writes the corpus at `path` (a file or a directory of files) to the directory `out`;
  returns the JSON it wrote. `vocab`: the one to encode with (init_from's), else one is built."""
  prepared.check_out(out)
  paths = corpus.text_files(path)
  seen, count = np.zeros(0x110000, bool), 0  # every Unicode codepoint
  for chunk in _chunks(paths):  # pass 1: the length (for the split's cut) and the characters
    count += len(chunk)
    if kind == "chars" and vocab is None:  # a bincount: 10x faster than a set of the chunk
      seen |= np.bincount(np.frombuffer(chunk.encode("utf-32-le"), np.uint32),
                          minlength=len(seen)).astype(bool)
  if count == 0:
    raise UserError(f"data.path={path!r}: no text (empty)")
  vocab = vocab or CharVocab(kind, "".join(map(chr, np.flatnonzero(seen))))
  cut = int(count * (1 - val_fraction))  # language_model.split_text's
  dtype = _dtype(vocab.size)
  with prepared.new_directory(out) as partial:
    counts = dict.fromkeys(SPLITS, 0)
    with open(os.path.join(partial, "train.bin"), "wb") as train, \
         open(os.path.join(partial, "val.bin"), "wb") as val:
      done = 0
      for chunk in _chunks(paths):  # pass 2: encode and write, the cut between the files
        head = chunk[:max(cut - done, 0)]
        for split, text, f in (("train", head, train), ("val", chunk[len(head):], val)):
          if text:
            ids = vocab.encode(text, f"the text of data.path={path!r}").astype(dtype)
            f.write(ids.tobytes())
            counts[split] += len(ids)
        done += len(chunk)
    meta = {"format": FORMAT, "source": files.absolute(path), "vocab": json.loads(
        vocab.to_json()), "val_fraction": val_fraction, "characters": count, "splits": {
            split: {"file": f"{split}.bin", "dtype": dtype.name, "tokens": counts[split],
                    "sha256": prepared.sha256(os.path.join(partial, f"{split}.bin"))}
            for split in SPLITS}}
    prepared.write_json(partial, TOKENS_FILE, meta)
  return meta


def read(directory: str, kind: str, verify: bool = True) -> tuple[dict, CharVocab, dict]:
  """(the JSON, its vocabulary, {split: TokenFile of its ids}) of a prepared directory; each
  file's size, and with `verify` its sha256, checked against the JSON: a UserError naming the
  file otherwise."""
  meta = prepared.read_json(directory, TOKENS_FILE, FORMAT, "a prepared corpus")
  try:
    vocab = CharVocab(meta["vocab"]["kind"], meta["vocab"]["chars"])
    splits = {split: meta["splits"][split] for split in SPLITS}
  except (ValueError, KeyError, TypeError) as e:
    raise UserError(f"{os.path.join(directory, TOKENS_FILE)}: not a prepared corpus of "
                    f"jaxdl.prepare ({first_line(e)})") from None
  if vocab.kind != kind:
    raise UserError(f"config.data.vocab={kind!r} but {directory} was prepared with "
                    f"{vocab.kind!r}; prepare it again with --config.data.vocab={kind}")
  arrays = {}
  for split, entry in splits.items():
    path = os.path.join(directory, entry["file"])
    dtype = np.dtype(entry["dtype"])
    prepared.check_file(path, entry["tokens"] * dtype.itemsize,
                        entry["sha256"] if verify else None, TOKENS_FILE)
    arrays[split] = TokenFile(path, dtype, entry["tokens"])
  return meta, vocab, arrays
