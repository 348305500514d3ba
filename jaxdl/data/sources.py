"""The one source chain every task loads its data through, and the checks on its keys.

`data.source='auto'` takes the first of these that works:
  1. `data.path` (the task's reader decides what a path holds: files or a directory);
  2. a prepared TFDS copy of `data.name` under `data.tfds_dir`, read with tfds.data_source
     (ArrayRecord files, no TensorFlow needed);
  3. the task's fallbacks, in order (a download, an offline sample or corpus), each when its
     `auto` test passes;
  4. otherwise one error, the task's own list of the ways to provide the data.
A source can also be named (`files`, `tfds`, or a fallback's name); a named fallback is always
tried, so its own error says why it cannot load.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Any, Callable, Generic, TypeVar

from jaxdl import files
from jaxdl.errors import UserError, require

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Fallback(Generic[T]):
  """A source after data.path and TFDS: `load()` → (data, description)."""
  name: str                                  # its data.source name: 'download', 'sample', ...
  load: Callable[[], tuple[T, str]]
  auto: Callable[[], bool] = lambda: True    # whether data.source='auto' takes it


def names(fallbacks: tuple[str, ...]) -> tuple[str, ...]:
  """The data.source values a task accepts: auto, files, tfds and its fallbacks' names."""
  return ("auto", "files", "tfds", *fallbacks)


def tfds_prepared(name: str, data_dir: str | None) -> bool:
  """Whether TFDS has a copy of `name` that tfds.data_source can read (ArrayRecord files).

  A glob rather than tfds.builder(...).is_prepared(): no slow import and no TFDS log chatter
  on the common path where no copy exists, and a TFRecord-only copy (random access is not
  supported for it) does not count. Names without a config (imdb_reviews) have one more dir.
  """
  root = os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")
  if files.is_url(root):  # a bucket: listed through etils.epath (gcsfs)
    return any(next(iter(files.Path(root).glob(f"{name}/{'*/' * depth}*.array_record*")), None)
               for depth in (1, 2))
  return any(glob.glob(os.path.join(root, name, *["*"] * depth, "*.array_record*"))
             for depth in (1, 2))


def load(data_cfg: Any, *, read_path: Callable[[str], tuple[T, str]],
         read_tfds: Callable[[str, str | None], T], fallbacks: tuple[Fallback[T], ...] = (),
         ways: str) -> tuple[T, str]:
  """The data data_cfg selects and a one-line description of where it came from."""
  source, name, path = data_cfg.source, data_cfg.name, os.path.expanduser(data_cfg.path)
  if source == "files" or (source == "auto" and path):
    if not path:
      raise UserError("data.source='files' needs data.path")
    return read_path(path)
  if source in ("tfds", "auto") and tfds_prepared(name, data_cfg.tfds_dir):
    return (read_tfds(name, data_cfg.tfds_dir),
            f"TFDS {name} ({data_cfg.tfds_dir or 'default dir'})")
  if source == "tfds":
    raise UserError(f"data.source='tfds': no copy of {name!r} in ArrayRecord format under "
                    f"data.tfds_dir={data_cfg.tfds_dir or '~/tensorflow_datasets'!r}")
  for fallback in fallbacks:
    if source == fallback.name or (source == "auto" and fallback.auto()):
      return fallback.load()
  if source == "auto":
    raise UserError(ways)
  raise UserError(f"data.source={source!r} is not one of "
                  f"{', '.join(names(tuple(f.name for f in fallbacks)))}")


def check(data_cfg: Any, fallbacks: tuple[str, ...], path_kind: str = "any") -> None:
  """data.source is one the task has; data.path and data.tfds_dir exist. path_kind: 'dir'
  (a directory), or 'any' (a file or a directory). Either may be gs:// (files.py reads
  data.path; TFDS reads data.tfds_dir, its ArrayRecord files through ArrayRecord's own GCS
  client)."""
  valid = names(fallbacks)
  require(data_cfg.source in valid, "data.source", data_cfg.source,
          f"must be one of {', '.join(valid)}")
  for key in ("path", "tfds_dir"):
    if data_cfg.get(key):
      path = os.path.expanduser(data_cfg[key])
      if files.is_url(path):
        require(files.exists(path), f"data.{key}", data_cfg[key], "does not exist")
      else:
        require(os.path.exists(path), f"data.{key}", data_cfg[key], "does not exist")
      require(files.is_dir(path) or (key != "tfds_dir" and path_kind != "dir"), f"data.{key}",
              data_cfg[key], "is not a directory")


def read_error(e: OSError) -> str:
  """Why a file could not be read (gcsfs's FileNotFoundError has no strerror, only the object's
  name)."""
  return e.strerror or ("does not exist" if isinstance(e, FileNotFoundError) else str(e))


def read_utf8(path: str, encoding: str = "utf-8") -> str:
  """A file's text (local or gs://); unreadable or non-UTF-8 bytes are a one-line error naming
  the file. `encoding='utf-8-sig'` drops a byte-order mark."""
  try:
    raw = files.read_bytes(path)
  except OSError as e:
    raise UserError(f"{path}: cannot read ({read_error(e)})") from None
  try:
    return raw.decode(encoding)
  except UnicodeDecodeError as e:
    raise UserError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})"
                    ) from None
