"""Text corpora for language models: a UTF-8 file, or a directory of them joined in order."""

from __future__ import annotations

import os

from jaxdl.data.sources import read_utf8
from jaxdl.errors import UserError


def read_text(path: str) -> str:
  """A UTF-8 file's text, or a directory's files' texts joined in sorted order."""
  if os.path.isfile(path):
    text = read_utf8(path)
  elif os.path.isdir(path):
    files = []
    for root, dirs, names in os.walk(path):
      dirs[:] = sorted(d for d in dirs if not d.startswith("."))
      files += [os.path.join(root, n) for n in names if not n.startswith(".")]
    if not files:
      raise UserError(f"data.path={path!r}: the directory has no files")
    text = "".join(read_utf8(f) for f in sorted(files))
  else:
    raise UserError(f"data.path={path!r} does not exist")
  if not text:
    raise UserError(f"data.path={path!r}: no text (empty)")
  return text

