"""The workdir's files, local or on an object store (gs://), all through etils.epath.

Every jaxdl file outside the checkpoints' arrays (Orbax writes those) is read and written here:
metrics.jsonl, config.json, run.json, a task's vocab.json or classes.json, the checksums, the
lease, the TensorBoard event files, a sweep's logs. A path with '://' (gs://bucket/run) goes
through epath's fsspec backend (gcsfs); any other is a local path. Writes replace a file whole
and atomically, so a reader or a kill never sees half a file.

On this floor too, each with a job of its own: lease.py (one run per workdir), history.py (a
run's record and --restart), digests.py (a committed checkpoint's checksums).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Any

from etils import epath

Path = epath.Path  # a local or gs:// path: exists(), is_dir(), iterdir(), glob(), rename(), ...
TMP_PREFIX = ".tmp-"  # write_text's temporary files (a kill may leave one)


def is_url(path: str) -> bool:
  """A workdir such as gs://bucket/run: files go through etils.epath (fsspec, gcsfs for GCS)."""
  return "://" in path


def absolute(path: str) -> str:
  """A local path made absolute; a URL as it is (os.path.abspath would make gs:// 'gs:/')."""
  return path if is_url(path) else os.path.abspath(path)


def make_dirs(path: str) -> None:
  """Creates a local directory and its parents; an object store has no directories to make."""
  if not is_url(path):
    os.makedirs(path, exist_ok=True)


def exists(path: str) -> bool:
  return epath.Path(path).exists()


def read_text(path: str) -> str:
  """A local or gs:// file's text."""
  return epath.Path(path).read_text()


def read_json(path: str) -> Any:
  return json.loads(read_text(path))


def write_text(path: str, text: str) -> None:
  """Writes text atomically (a temporary file renamed over the old one; a GCS object write is
  atomic by itself)."""
  if is_url(path):
    epath.Path(path).write_text(text)
    return
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=TMP_PREFIX)
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would hide the file from other users
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):  # a full disk: no empty temporary file left behind
      os.remove(tmp)
    raise


def write_json(path: str, obj: Any) -> None:
  """Writes JSON atomically, like write_text."""
  write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def object_store(path: str):
  """(fsspec filesystem, path without its scheme) of a URL such as gs://bucket/run: the one
  gcsfs instance under etils.epath, for what epath has no call for (compose, preconditions)."""
  import fsspec  # pylint: disable=g-import-not-at-top  (gcsfs, only for gs:// workdirs)
  scheme, key = path.split("://", 1)
  return fsspec.filesystem(scheme), key


_COMPACT_EVERY = 1000  # composed appends before an object is rewritten whole (see below)


def append_object(path: str, text: str, appends: int) -> int:
  """Appends `text` to an object-store file (gs://) and returns the new count of appends since
  it was last rewritten whole.

  An object cannot be appended to, and rewriting the whole file at each event made a long
  run's log quadratic. On GCS the line is uploaded as an object of its own and composed onto
  the file (a server-side concatenation: one small upload, one compose, one delete). Every
  _COMPACT_EVERY appends the file is rewritten as one plain object, so that its composite
  never grows without bound. A store without compose (fsspec's `merge`) is rewritten whole."""
  fs, key = object_store(path)
  fs.invalidate_cache(key)
  if not hasattr(fs, "merge") or appends >= _COMPACT_EVERY or not fs.exists(key):
    old = read_text(path) if exists(path) else ""
    write_text(path, old + text)
    return 0
  part = f"{key}.append"
  fs.pipe_file(part, text.encode("utf-8"))
  fs.merge(key, [key, part])
  fs.rm_file(part)
  fs.invalidate_cache(key)
  return appends + 1


def append_line(path: str, line: str, appends: int) -> int:
  """Appends a line to a local file, or to an object (append_object); returns the new count of
  composed appends (always 0 locally)."""
  if is_url(path):
    return append_object(path, line, appends)
  with open(path, "a") as f:
    f.write(line)
  return 0


class ObjectFile:
  """An event file on an object store (gs://), through etils.epath, for tensorboardX.

  An object cannot be appended to, so each flush (every few seconds, and on close) rewrites
  the whole file from the bytes written so far; event files are small (one float per scalar).
  tensorboardX's own gs:// writer would need google-cloud-storage and its credentials, another
  file-system layer besides the one every other workdir file goes through.
  """

  def __init__(self, path: str):
    self.path, self.buffer, self.flushed = epath.Path(path), io.BytesIO(), -1
    self.error: Exception | None = None  # of the last flush, for close() to raise
    self.closed = False

  def write(self, data: bytes) -> None:
    self.buffer.write(data)

  def flush(self) -> None:
    """Writes the object; a failure is kept for close(), not raised here: tensorboardX flushes
    from a thread of its own, which an error would end, and the bytes stay for the next try."""
    if self.closed or self.buffer.tell() == self.flushed:
      return
    try:
      self.path.write_bytes(self.buffer.getvalue())
    except Exception as e:  # pylint: disable=broad-except  (gcsfs: OSError, or its HttpError)
      self.error = e
      return
    self.flushed, self.error = self.buffer.tell(), None

  def close(self) -> None:
    """The last flush; its failure raises, once (tensorboardX closes again at exit)."""
    self.flush()
    self.closed = True
    error, self.error = self.error, None
    if error is not None:
      raise error


class ObjectFiles:
  """tensorboardX's writer factory for one URL scheme (its directories need no making)."""

  def open(self, path: str) -> ObjectFile:
    return ObjectFile(path)

  def directory_check(self, path: str) -> None:
    del path


# data.path's readers (jaxdl/data): a local path goes through os exactly as it always did (its
# errors are the ones users and tests know); a URL through the fsspec filesystem under epath,
# whose calls say file or directory in one listing.


def is_dir(path: str) -> bool:
  """A local directory, or a gs:// prefix with objects under it."""
  if not is_url(path):
    return os.path.isdir(path)
  fs, key = object_store(path)
  return fs.isdir(key)


def is_file(path: str) -> bool:
  if not is_url(path):
    return os.path.isfile(path)
  fs, key = object_store(path)
  return fs.isfile(key)


def list_dir(path: str) -> list[tuple[str, str]]:
  """(name, 'dir' | 'file' | 'other') of a directory's entries, unsorted; OSError if it cannot
  be listed. 'other': a broken link, a socket (local only)."""
  if not is_url(path):
    kinds = ((n, os.path.join(path, n)) for n in os.listdir(path))
    return [(n, "dir" if os.path.isdir(p) else "file" if os.path.isfile(p) else "other")
            for n, p in kinds]
  fs, key = object_store(path)
  key = key.rstrip("/")
  # A console-made 'folder' is an empty object named 'key/': it lists as an entry of its own.
  return [(entry["name"].rstrip("/").rsplit("/", 1)[-1],
           "dir" if entry["type"] == "directory" else "file")
          for entry in fs.ls(key, detail=True) if entry["name"].rstrip("/") != key]


def files_under(path: str) -> list[str]:
  """Every file under a directory, sorted, hidden files and folders (a leading '.') left out."""
  if not is_url(path):
    found = []
    for root, dirs, names in os.walk(path):
      dirs[:] = sorted(d for d in dirs if not d.startswith("."))
      found += [os.path.join(root, n) for n in names if not n.startswith(".")]
    return sorted(found)
  fs, key = object_store(path)
  scheme, key = path.split("://", 1)[0], key.rstrip("/")
  found = []
  for name in fs.find(key):
    parts = name[len(key) + 1:].split("/")
    if name.startswith(key + "/") and not any(p.startswith(".") for p in parts):
      found.append(f"{scheme}://{name}")
  return sorted(found)


def open_binary(path: str):
  """A local or gs:// file opened for reading bytes (a gs:// one reads in blocks, seekable)."""
  if not is_url(path):
    return open(path, "rb")
  fs, key = object_store(path)
  return fs.open(key, "rb")


def read_bytes(path: str) -> bytes:
  """A local or gs:// file's bytes (a gs:// object in one GET)."""
  if not is_url(path):
    with open(path, "rb") as f:
      return f.read()
  fs, key = object_store(path)
  return fs.cat_file(key)


def size(path: str) -> int:
  """A file's size in bytes."""
  if not is_url(path):
    return os.path.getsize(path)
  fs, key = object_store(path)
  return fs.size(key)
