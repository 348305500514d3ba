"""Text corpora for language models: a UTF-8 file, or a directory of them joined in order."""

from __future__ import annotations

from jaxdl import files
from jaxdl.data.sources import read_utf8
from jaxdl.errors import UserError


def text_files(path: str) -> list[str]:
  """The corpus's files in order: the file, or a directory's files sorted (hidden ones left
  out); local or gs://."""
  if files.is_file(path):
    return [path]
  if not files.is_dir(path):
    raise UserError(f"data.path={path!r} does not exist")
  paths = files.files_under(path)
  if not paths:
    raise UserError(f"data.path={path!r}: the directory has no files")
  return paths


def read_text(path: str) -> str:
  """A UTF-8 file's text, or a directory's files' texts joined in sorted order (hidden ones left
  out); local or gs://."""
  text = "".join(read_utf8(f) for f in text_files(path))
  if not text:
    raise UserError(f"data.path={path!r}: no text (empty)")
  return text
