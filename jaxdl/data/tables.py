"""Tables of labelled texts: TSV (GLUE), CSV and JSONL split files, and a directory of them.

  .tsv    GLUE: a header row, a `sentence` column, an integer `label` column, no quoting
  .csv    a header with `text` or `sentence` and `label` (standard quoting)
  .jsonl  one object per line with "text" or "sentence", and "label"
Every bad row is a UserError naming the file and line. A directory holds train / dev (or
validation) / optional test files. A file is read as a stream, CHUNK rows at a time
(read_chunks), so one larger than memory is read in constant memory; TextRows is a split as
the text classifier encodes it, its texts read again from the file each time they are needed.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Any, Callable, Iterator

import numpy as np

from jaxdl import files
from jaxdl.data.sources import read_error
from jaxdl.errors import UserError, first_line

TEXT_COLUMNS = ("sentence", "text")  # the first one a file has is its text column
EXTENSIONS = (".tsv", ".csv", ".jsonl")
# Split name → the file stems in a data.path directory that provide it.
SPLIT_FILES = {"train": ("train",), "dev": ("dev", "validation", "valid", "val"),
               "test": ("test",)}



@dataclasses.dataclass
class TextSplit:
  """One split as read: texts, and int labels (None when the split has no labels)."""
  texts: list[str]
  labels: np.ndarray | None


CHUNK = 8192  # rows a chunk as a split file streams (jaxdl.prepare: files larger than memory)
_BLANK = b" \t\r\n\x0b\x0c"
_BOM = b"\xef\xbb\xbf"


@dataclasses.dataclass
class TextRows:
  """One split as a text classifier reads it: its row count and labels (int32 [count], or None
  where it has none), read once, and its texts, read again from the source at each `texts()`, a
  chunk at a time: a split larger than memory is encoded without holding its texts (its labels
  hold 4 bytes a row, `rows` 4 more). `rows` (sorted) are the rows kept of the source's, None:
  all."""
  count: int
  labels: np.ndarray | None
  read: Callable[[], Iterator[list[str]]]  # every row's text in the source's order, in chunks
  rows: np.ndarray | None = None
  # A source read by row index (a TFDS copy): tokens(vocab, max_len) is the whole split as
  # rows encoded when read (tfds.TextTokens), which a run streams; None for a file.
  tokens: Callable[..., Any] | None = None

  def __len__(self) -> int:
    return self.count

  def take(self, rows: np.ndarray) -> "TextRows":
    """The split's rows `rows` (sorted indices into this split), still read from the source."""
    rows = np.asarray(rows)
    return TextRows(len(rows), None if self.labels is None else self.labels[rows], self.read,
                    rows if self.rows is None else self.rows[rows], self.tokens)

  def texts(self) -> Iterator[list[str]]:
    """The kept rows' texts, in order, a chunk at a time."""
    if self.rows is None:
      yield from self.read()
      return
    start = kept = 0
    for chunk in self.read():
      end = int(np.searchsorted(self.rows, start + len(chunk)))
      if end > kept:
        yield [chunk[i - start] for i in self.rows[kept:end].tolist()]
      start, kept = start + len(chunk), end


def stream_file(path: str) -> TextRows:
  """A split file as TextRows: one pass for its count and labels; its texts read again when
  asked for."""
  count, labels = 0, []
  for chunk in read_chunks(path):
    count += len(chunk.texts)
    labels.append(chunk.labels)
  unlabelled = not labels or labels[0] is None
  return TextRows(count, None if unlabelled else np.concatenate(labels),
                  lambda: (chunk.texts for chunk in read_chunks(path)))


def _check_not_empty(path: str) -> None:
  """A file of nothing but whitespace (or a byte-order mark) is one line; read only up to the
  first byte of text."""
  with _opened(path) as f:
    try:
      head = f.read(3)
      block = head[3:] if head == _BOM else head
      while not block.strip(_BLANK):
        block = f.read(1 << 16)
        if not block:
          raise UserError(f"{path}: the file is empty")
    except OSError as e:
      raise UserError(f"{path}: cannot read ({read_error(e)})") from None


def _opened(path: str):
  try:
    return files.open_binary(path)
  except OSError as e:  # gcsfs's FileNotFoundError has no strerror, only the object's name
    raise UserError(f"{path}: cannot read ({read_error(e)})") from None


def _lines(path: str) -> Iterator[tuple[int, str]]:
  """(line number, text) of each line of a file, split on '\n' alone and decoded as it is read
  (a byte-order mark dropped): non-UTF-8 bytes are one line naming the file and offset. Split on
  '\n' alone: SST-2's train.tsv has a bare '\r' before every tab, which universal newlines would
  take for a line end."""
  _check_not_empty(path)
  offset = 0
  with _opened(path) as f:
    try:
      for number, raw in enumerate(f, 1):
        try:
          line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as e:
          raise UserError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                          f"{offset + e.start})") from None
        offset += len(raw)
        yield number, line
    except OSError as e:  # a read that fails half way (a file system, a bucket)
      raise UserError(f"{path}: cannot read ({read_error(e)})") from None


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
  if label >= 2**31:
    raise UserError(f"{path}:{line}: label {label} is too large to be a class index")
  return label


def _text_column(columns: list[str], path: str) -> str:
  for name in TEXT_COLUMNS:
    if name in columns:
      return name
  raise UserError(f"{path}:1: no 'sentence' or 'text' column (header: {', '.join(columns)})")


def _fields(rows, columns: list[str], path: str) -> Iterator[tuple[str, int | None]]:
  """(text, label or None) of rows (line number, list of fields) under a header `columns`."""
  text_i = columns.index(_text_column(columns, path))
  label_i = columns.index("label") if "label" in columns else None
  for line, fields in rows:
    if len(fields) != len(columns):
      raise UserError(f"{path}:{line}: {len(fields)} fields, the header has {len(columns)} "
                      f"({', '.join(columns)})")
    # .strip(): SST-2's train.tsv ends every sentence with '\r'
    yield fields[text_i].strip(), None if label_i is None else _label(fields[label_i], path, line)


def _tsv_rows(path: str) -> Iterator[tuple[str, int | None]]:
  """A GLUE-style TSV: a header row, tab-separated fields, no quoting."""
  lines = _lines(path)
  _, header = next(lines)
  columns = [c.strip() for c in header.rstrip("\n").split("\t")]
  yield from _fields(((i, line.rstrip("\n").rstrip("\r").split("\t")) for i, line in lines
                      if line.strip()), columns, path)


def _csv_rows(path: str) -> Iterator[tuple[str, int | None]]:
  """A CSV file with a header row (standard quoting; a quoted field may span lines)."""
  reader = csv.reader(line for _, line in _lines(path))
  try:
    columns = [c.strip() for c in next(reader)]
    rows = ((reader.line_num, fields) for fields in reader if any(f.strip() for f in fields))
    yield from _fields(rows, columns, path)
  except csv.Error as e:
    raise UserError(f"{path}:{reader.line_num}: {first_line(e)}") from None


def _jsonl_rows(path: str) -> Iterator[tuple[str, int | None]]:
  """One JSON object per line with "text" or "sentence", and "label" (absent in every row, or
  in none)."""
  labelled = None
  for i, line in _lines(path):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except ValueError as e:
      raise UserError(f"{path}:{i}: not a JSON object ({first_line(e)})") from None
    if not isinstance(record, dict):
      raise UserError(f"{path}:{i}: not a JSON object")
    text_col = next((c for c in TEXT_COLUMNS if c in record), None)
    if text_col is None or not isinstance(record[text_col], str):
      raise UserError(f"{path}:{i}: no string 'sentence' or 'text' field")
    if labelled is None:
      labelled = "label" in record
    if labelled != ("label" in record):
      raise UserError(f"{path}:{i}: no 'label' field" if labelled else
                      f"{path}:{i}: a 'label' field, which earlier rows do not have")
    yield record[text_col].strip(), _label(record["label"], path, i) if labelled else None


_ROWS = {".tsv": _tsv_rows, ".csv": _csv_rows, ".jsonl": _jsonl_rows}


def read_chunks(path: str, size: int | None = CHUNK) -> Iterator[TextSplit]:
  """A .tsv, .csv or .jsonl split file, read as a stream `size` rows at a time (None: one
  chunk of all): a file larger than memory is read in constant memory. Labels are None where
  the file has none. A file of a header alone gives no chunk."""
  rows = next((read for ext, read in _ROWS.items() if path.endswith(ext)), None)
  if rows is None:
    raise UserError(f"{path}: unknown format (expected {', '.join(EXTENSIONS)})")
  texts, labels = [], []
  for text, label in rows(path):
    texts.append(text)
    labels.append(label)
    if len(texts) == size:
      yield _split(texts, labels)
      texts, labels = [], []
  if texts:
    yield _split(texts, labels)


def _split(texts: list[str], labels: list[int | None]) -> TextSplit:
  return TextSplit(texts, None if labels[0] is None else np.asarray(labels, np.int32))


def read_file(path: str) -> TextSplit:
  """Reads a .tsv, .csv or .jsonl split file whole."""
  return next(read_chunks(path, None), TextSplit([], None))


def _find_split_file(directory: str, split: str) -> str | None:
  found = [os.path.join(directory, stem + ext) for stem in SPLIT_FILES[split]
           for ext in EXTENSIONS if files.is_file(os.path.join(directory, stem + ext))]
  if len(found) > 1:
    raise UserError(f"data.path={directory!r}: several {split} files ({', '.join(found)}); "
                    f"keep one")
  return found[0] if found else None


def load_dir(directory: str, read: Callable[[str], Any] = read_file) -> dict[str, Any]:
  """train (required), dev and test (optional) from a directory of split files, each read by
  `read` (read_file: TextSplit; stream_file: TextRows)."""
  if not files.is_dir(directory):  # local or gs://
    raise UserError(f"data.path={directory!r} is not a directory")
  splits = {}
  for split in SPLIT_FILES:
    path = _find_split_file(directory, split)
    if path is None and split == "train":
      raise UserError(f"data.path={directory!r}: no train.tsv, train.csv or train.jsonl")
    if path is not None:
      splits[split] = read(path)
  return splits

