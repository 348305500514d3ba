"""Downloads of a dataset's canonical files, checked against the sha256 sums TFDS records.

TFDS ships url_checksums/<name>.txt (url, size, sha256, file name) in its package, so jaxdl
can fetch and verify the files without TFDS's download machinery or TensorFlow.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib.resources
import os
import shutil
import socket
import tempfile
import urllib.parse
import urllib.request

from absl import logging

from jaxdl.errors import UserError

_REACHABILITY_TIMEOUT_S = 3.0


def url_checksums(name: str) -> list[tuple[str, int, str, str]]:
  """(url, size, sha256, filename) rows from the TFDS package's url_checksums/<name>.txt."""
  try:
    text = (importlib.resources.files("tensorflow_datasets") / "url_checksums" /
            f"{name}.txt").read_text()
  except (FileNotFoundError, ModuleNotFoundError):
    return []
  rows = []
  for line in text.splitlines():
    if line.strip() and not line.startswith("#"):
      url, size, sha256, filename = line.split("\t")
      rows.append((url, int(size), sha256, filename))
  return rows


def reachable(url: str, timeout_s: float = _REACHABILITY_TIMEOUT_S) -> bool:
  """Whether the URL's host accepts a TCP connection within a few seconds (no retries)."""
  parsed = urllib.parse.urlparse(url)
  port = parsed.port or (443 if parsed.scheme == "https" else 80)
  # getaddrinfo has no timeout of its own, so the whole probe runs in a thread we stop waiting for.
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
  try:
    pool.submit(lambda: socket.create_connection((parsed.hostname, port), timeout_s).close()
                ).result(timeout=timeout_s)
    return True
  except (OSError, concurrent.futures.TimeoutError):
    return False
  finally:
    pool.shutdown(wait=False)


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def download(name: str, cache_dir: str) -> str:
  """Downloads `name`'s IDX files into cache_dir/name (verified, atomic); returns that dir."""
  rows = url_checksums(name)
  if not rows:
    raise UserError(f"data.name={name!r}: no canonical download is known for it")
  target = os.path.join(os.path.expanduser(cache_dir), name)
  try:
    os.makedirs(target, exist_ok=True)
  except OSError as e:
    raise UserError(f"data.download_dir={cache_dir!r}: cannot create {target} ({e})") from None
  for url, size, sha256, filename in rows:
    path = os.path.join(target, filename)
    if os.path.isfile(path) and os.path.getsize(path) == size and _sha256(path) == sha256:
      continue  # cached and intact
    logging.info("downloading %s", url)
    # Write to a temp file in the same dir and rename, so a killed download leaves no bad file.
    fd, tmp = tempfile.mkstemp(dir=target, prefix=f".{filename}.")
    try:
      with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
        shutil.copyfileobj(response, out)
      if os.path.getsize(tmp) != size or _sha256(tmp) != sha256:
        raise UserError(f"{url}: download does not match its recorded size/sha256")
      os.replace(tmp, path)
    except OSError as e:
      raise UserError(f"{url}: download failed ({e})") from None
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
  return target

