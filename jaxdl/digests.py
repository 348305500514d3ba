"""Whether a checkpoint step's files are whole, judged from the files themselves.

Damage is what the files show: an item folder missing, a file that is empty (what a power cut
leaves), an Orbax metadata file that is not JSON, or, for a step saved with a digest, any file
that differs from it. Errors of the environment (permission, network) are not damage: they
propagate from `check` as the OSErrors they are.

Neither Orbax nor TensorStore keeps a checksum of the array data, so a flipped bit in a step's
files restores silently (an audit saw Adam's second moment go to 4.7e35). Once a save has
committed, `write` records the size and CRC-32 (zlib's: 3 GB/s here, and no dependency) of
every file in the step directory in DIGEST, beside them; `check` reads them all back and names
the first file that differs. A step without DIGEST (saved by an older jaxdl, or killed between
its commit and its digest) is judged by the shapes of its files alone (`_judge`), which cannot
see flipped bits.

`damage_evidence` reads damage from a restore's error instead (a missing or truncated file
surfacing from Orbax or TensorStore), and `unreadable_metrics` finds the steps whose keep_best
metrics file is not JSON (Orbax reads them all when a manager opens).

Reads and writes go through etils.epath: a local directory or gs://, the same calls.
"""

from __future__ import annotations

import json
import os
import zlib


from jaxdl import files
from jaxdl.errors import chain, first_line

DIGEST = "jaxdl-digest.json"
_CHUNK = 1 << 24  # bytes read at a time: a large array file is never held whole


def _crc(path: files.Path) -> tuple[int, int]:
  """(size, CRC-32) of a file, read in chunks."""
  crc, size = 0, 0
  with path.open("rb") as f:
    while chunk := f.read(_CHUNK):
      crc, size = zlib.crc32(chunk, crc), size + len(chunk)
  return size, crc


def _files(step_dir: files.Path) -> list[tuple[str, files.Path]]:
  """(name relative to step_dir, path) of every file under it but the digest (and a temporary
  file that a kill left while writing it), sorted. Names are built here: epath's walk on gs://
  yields paths without their gs:// prefix."""
  out = []
  def visit(directory: files.Path, prefix: str) -> None:
    for path in directory.iterdir():
      if path.is_dir():
        visit(path, f"{prefix}{path.name}/")
      elif f"{prefix}{path.name}" != DIGEST and not path.name.startswith(files.TMP_PREFIX):
        out.append((f"{prefix}{path.name}", path))  # (a killed digest write's temporary: not)
  visit(step_dir, "")
  return sorted(out)


def write(step_dir: str) -> None:
  """Records every file of a committed step in STEP_DIR/DIGEST (written atomically)."""
  root = files.Path(step_dir)
  listed = {name: list(_crc(path)) for name, path in _files(root)}
  files.write_json(str(root / DIGEST), {"algorithm": "crc32", "files": listed})


def has_digest(step_dir: str) -> bool:
  return (files.Path(step_dir) / DIGEST).exists()


# Orbax's own small JSON files in a step (any folder): each must parse.
_JSON = ("_CHECKPOINT_METADATA", "_METADATA", "metadata", "_sharding")


def check(step_dir: str, items: tuple[str, ...] = ("state", "loop")) -> str | None:
  """What shows STEP_DIR damaged, or None: a missing item folder; then, with a digest, a file
  missing, cut short or with other bytes than when saved (an unparsable digest is damage
  too); without one, an empty file or an Orbax metadata file that is not JSON."""
  root = files.Path(step_dir)
  for item in items:
    if not (root / item).is_dir():
      return f"the item folder {item}/ is missing"
  try:
    text = (root / DIGEST).read_text()
  except FileNotFoundError:
    text = None
  if text is None:  # judged outside the handler: an error there is not "file not found"
    return _judge(root)
  try:
    recorded = json.loads(text)["files"]
    recorded = {str(k): (int(v[0]), int(v[1])) for k, v in recorded.items()}
  except (ValueError, KeyError, TypeError, IndexError):
    return f"{DIGEST} is unreadable ({len(text)} bytes)"
  for name, (size, crc) in sorted(recorded.items()):
    path = root / name
    if not path.exists():
      return f"{name} is missing"
    got_size, got_crc = _crc(path)
    if got_size != size:
      return f"{name} has {got_size} bytes, {size} when saved"
    if got_crc != crc:
      return f"{name} fails its checksum (CRC-32 {got_crc:08x}, {crc:08x} when saved)"
  return None


def _judge(root: files.Path) -> str | None:
  """Damage that shows without a digest: empty files, and metadata that does not parse."""
  for name, path in _files(root):
    if path.name in _JSON or path.parent.name == "array_metadatas":
      text = path.read_bytes()
      try:
        json.loads(text)
      except ValueError:
        return (f"{name} is empty" if not text else
                f"{name} is not the JSON Orbax wrote ({len(text)} bytes)")
    elif path.stat().length == 0:
      return f"{name} is empty"
  return None


class DamagedFiles(Exception):
  """A step's files differ from the digest recorded when it was saved (digests.py)."""


_DAMAGE_STATUSES = ("NOT_FOUND", "DATA_LOSS", "OUT_OF_RANGE", "FAILED_PRECONDITION")


def damage_evidence(error: BaseException) -> str | None:
  """What in `error` (or the errors it was raised from) shows missing or truncated checkpoint
  files; None when nothing does. Orbax wraps TensorStore's errors in plain Exceptions, so the
  whole chain is read."""
  for e in chain(error):
    if isinstance(e, (FileNotFoundError, DamagedFiles)):
      return first_line(e)
    if isinstance(e, (MemoryError, PermissionError)):
      return None  # not about the files' contents, whatever wraps it
    if str(e).startswith(_DAMAGE_STATUSES):
      return first_line(e)
  return None


def unreadable_metrics(directory: str) -> list[int]:
  """The steps whose keep_best metrics file (`<step>/metrics/metrics`, JSON) does not parse: a
  manager that tracks the best reads every step's when it opens, and would fail on one."""
  bad = []
  for name in step_names(directory):
    path = os.path.join(directory, name, "metrics", "metrics")
    try:
      json.loads(files.read_text(path))
    except FileNotFoundError:
      continue  # a step saved without metrics (keep_best off when it was written)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError: cut short or garbled
      bad.append(int(name))
  return sorted(bad)


def step_names(directory: str) -> list[str]:
  """The step folders in `directory`, local or gs:// (the same epath calls). Fails closed: an
  error of the listing (a network error) is raised, never read as 'no checkpoints'."""
  try:
    return [p.name for p in files.Path(directory).iterdir() if p.name.isdigit()]
  except FileNotFoundError:
    return []
