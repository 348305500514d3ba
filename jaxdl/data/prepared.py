"""What jaxdl.prepare's two formats share: a new directory written whole or not at all, the
sha256 of each file, and the JSON that describes the directory.

  records.py  any task's splits as ArrayRecord shards of fixed-size examples
  tokens.py   a language model's corpus as flat arrays of token ids
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from typing import Iterator

from jaxdl import files
from jaxdl.errors import UserError, first_line


def sha256(path: str) -> str:
  """The file's sha256 (local or gs://), read in 16 MB blocks."""
  digest = hashlib.sha256()
  with files.open_binary(path) as f:
    while block := f.read(1 << 24):
      digest.update(block)
  return digest.hexdigest()


def check_out(out: str) -> None:
  """`out` can be written by new_directory: new and local (checked before a long read too)."""
  if files.is_url(out):
    raise UserError(f"--out={out}: prepare writes a local directory; copy it to gs:// after "
                    f"(data.path reads it there)")
  if os.path.exists(out):
    raise UserError(f"--out={out}: already exists (prepare writes a new directory)")


@contextlib.contextmanager
def new_directory(out: str) -> Iterator[str]:
  """Yields DIR.tmp-<pid> to write into and renames it to `out` when the block ends: a killed
  or failed prepare leaves no directory named `out` (a DIR.tmp-<pid> of a killed one is left for
  the user to delete; a failed one removes its own). `out` must be new and local."""
  check_out(out)
  partial = f"{out.rstrip(os.sep)}.tmp-{os.getpid()}"
  shutil.rmtree(partial, ignore_errors=True)
  os.makedirs(partial)
  try:
    yield partial
    os.rename(partial, out)
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)
    raise


def write_json(directory: str, name: str, meta: dict) -> None:
  """The directory's description, written last: a directory with it is whole."""
  with open(os.path.join(directory, name), "w") as f:
    json.dump(meta, f, indent=1)


def read_json(directory: str, name: str, format_: str, what: str) -> dict:
  """DIR/NAME of a prepared directory, checked to be `format_`: a UserError naming it if not."""
  path = os.path.join(directory, name)
  try:
    with files.open_binary(path) as f:
      meta = json.load(f)
    if not isinstance(meta, dict) or meta.get("format") != format_:
      raise ValueError(f"format {meta.get('format') if isinstance(meta, dict) else meta!r:.40}, "
                       f"not {format_!r}")
    return meta
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: not {what} of jaxdl.prepare ({first_line(e)})") from None


def check_file(path: str, nbytes: int, digest: str | None, listed_in: str) -> None:
  """A prepared file is there with the size (and, given `digest`, the sha256) the directory's
  JSON records: a UserError naming it otherwise."""
  if not files.is_file(path):
    raise UserError(f"{path}: missing ({listed_in} lists it); prepare the data again")
  size = files.size(path)
  if size != nbytes:
    raise UserError(f"{path}: {size:,} bytes, but {listed_in} says {nbytes:,}: truncated or "
                    f"changed; prepare the data again")
  if digest is not None and sha256(path) != digest:
    raise UserError(f"{path}: its sha256 differs from the one in {listed_in}: changed since "
                    f"jaxdl.prepare wrote it; prepare the data again")
