"""Tables of labelled texts: TSV (GLUE), CSV and JSONL split files, and a directory of them.

  .tsv    GLUE: a header row, a `sentence` column, an integer `label` column, no quoting
  .csv    a header with `text` or `sentence` and `label` (standard quoting)
  .jsonl  one object per line with "text" or "sentence", and "label"
Every bad row is a UserError naming the file and line. A directory holds train / dev (or
validation) / optional test files.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from typing import Any

import numpy as np

from jaxdl import files
from jaxdl.data.sources import read_utf8
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
  if label >= 2**31:
    raise UserError(f"{path}:{line}: label {label} is too large to be a class index")
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
           for ext in EXTENSIONS if files.is_file(os.path.join(directory, stem + ext))]
  if len(found) > 1:
    raise UserError(f"data.path={directory!r}: several {split} files ({', '.join(found)}); "
                    f"keep one")
  return found[0] if found else None


def load_dir(directory: str) -> dict[str, TextSplit]:
  """train (required), dev and test (optional) from a directory of split files."""
  if not files.is_dir(directory):  # local or gs://
    raise UserError(f"data.path={directory!r} is not a directory")
  splits = {}
  for split in SPLIT_FILES:
    path = _find_split_file(directory, split)
    if path is None and split == "train":
      raise UserError(f"data.path={directory!r}: no train.tsv, train.csv or train.jsonl")
    if path is not None:
      splits[split] = read_file(path)
  return splits

