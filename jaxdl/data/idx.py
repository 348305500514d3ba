"""The IDX format of MNIST and its siblings (Fashion-MNIST, KMNIST): read, write, a directory.

IDX: magic = 0, 0, dtype code, ndim; then ndim big-endian uint32 dims; then the bytes.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from typing import Any

import numpy as np

from jaxdl import files
from jaxdl.errors import UserError

Splits = dict[str, dict[str, np.ndarray]]

# File stems of the four IDX files, as MNIST, Fashion-MNIST and KMNIST all name them.
_IDX_STEMS = {
    ("train", "image"): ["train-images-idx3-ubyte"],
    ("train", "label"): ["train-labels-idx1-ubyte"],
    ("test", "image"): ["t10k-images-idx3-ubyte", "test-images-idx3-ubyte"],
    ("test", "label"): ["t10k-labels-idx1-ubyte", "test-labels-idx1-ubyte"],
}
_IDX_UBYTE = 0x08  # the only element type the MNIST family uses.

def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (raw or .gz, local or gs://) into a uint8 array, checking the header
  against the size."""
  try:
    # gs://: the object in one GET, not a ranged request per read of the gzip stream.
    with io.BytesIO(files.read_bytes(path)) if files.is_url(path) else open(path, "rb") as f:
      raw = gzip.GzipFile(fileobj=f).read() if path.endswith(".gz") else f.read()
  except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
    raise UserError(f"{path}: cannot read IDX file ({e})") from None
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
    raise UserError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
  if raw[2] != _IDX_UBYTE:
    raise UserError(f"{path}: IDX element type 0x{raw[2]:02x} is not unsigned byte (0x08)")
  ndim = raw[3]
  header = 4 + 4 * ndim
  if ndim == 0 or len(raw) < header:
    raise UserError(f"{path}: truncated IDX header")
  dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  expected = int(np.prod(dims))
  if len(raw) - header != expected:
    raise UserError(f"{path}: header says {dims} = {expected} bytes of data, file has "
                    f"{len(raw) - header} (truncated or corrupt)")
  return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def write_idx(path: str, array: np.ndarray) -> None:
  """Writes a uint8 array as an IDX file (gzipped when the name ends in .gz); used by tests."""
  array = np.asarray(array, np.uint8)
  header = bytes([0, 0, _IDX_UBYTE, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(header + array.tobytes())


def _find_idx(directory: str, stems: list[str]) -> str:
  for stem in stems:
    for name in (stem, stem + ".gz"):
      if files.is_file(os.path.join(directory, name)):
        return os.path.join(directory, name)
  raise UserError(f"{directory}: no {stems[0]}[.gz] file (expected the four MNIST-format IDX files)")


def load_idx_dir(directory: str) -> Splits:
  """Loads the four MNIST-format IDX files of a directory; images get a trailing channel axis."""
  if not files.is_dir(directory):
    raise UserError(f"data.path={directory!r} is not a directory")
  splits: Splits = {}
  for split in ("train", "test"):
    image_path = _find_idx(directory, _IDX_STEMS[(split, "image")])
    label_path = _find_idx(directory, _IDX_STEMS[(split, "label")])
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1:
      raise UserError(f"{image_path}: expected images [N,H,W] and labels [N], got "
                      f"{images.shape} and {labels.shape}")
    if len(images) != len(labels):
      raise UserError(f"{image_path} has {len(images)} images but {label_path} has "
                      f"{len(labels)} labels")
    if len(images) == 0:
      raise UserError(f"{image_path}: no examples")
    splits[split] = {"image": images[..., None], "label": labels.astype(np.int32)}
  return splits



def _stream(path: str):
  """An open binary stream of an IDX file's bytes (gunzipped for .gz)."""
  raw = io.BytesIO(files.read_bytes(path)) if files.is_url(path) else open(path, "rb")
  return gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw


def _header(f, path: str) -> tuple[int, ...]:
  """An IDX stream's dims, read from its header (the same checks as read_idx)."""
  head = f.read(4)
  if len(head) < 4 or head[0] != 0 or head[1] != 0:
    raise UserError(f"{path}: not an IDX file (bad magic number {head.hex() or 'empty'})")
  if head[2] != _IDX_UBYTE:
    raise UserError(f"{path}: IDX element type 0x{head[2]:02x} is not unsigned byte (0x08)")
  dims = f.read(4 * head[3])
  if head[3] == 0 or len(dims) < 4 * head[3]:
    raise UserError(f"{path}: truncated IDX header")
  return tuple(int.from_bytes(dims[4 * i:4 * i + 4], "big") for i in range(head[3]))


def idx_dir_chunks(directory: str, chunk: int = 8192) -> dict[str, Any]:
  """load_idx_dir's splits as iterators of `chunk` rows at a time, read as they are asked for
  (jaxdl.prepare's streaming writer): a file larger than memory converts."""
  if not files.is_dir(directory):
    raise UserError(f"data.path={directory!r} is not a directory")
  paths = {split: (_find_idx(directory, _IDX_STEMS[(split, "image")]),
                   _find_idx(directory, _IDX_STEMS[(split, "label")]))
           for split in ("train", "test")}

  def rows(image_path: str, label_path: str):
    try:
      with _stream(image_path) as images, _stream(label_path) as labels:
        shape, count = _header(images, image_path), _header(labels, label_path)
        if len(shape) != 3 or len(count) != 1:
          raise UserError(f"{image_path}: expected images [N,H,W] and labels [N], got {shape} "
                          f"and {count}")
        if shape[0] != count[0]:
          raise UserError(f"{image_path} has {shape[0]} images but {label_path} has "
                          f"{count[0]} labels")
        if shape[0] == 0:
          raise UserError(f"{image_path}: no examples")
        size = shape[1] * shape[2]
        for start in range(0, shape[0], chunk):
          n = min(chunk, shape[0] - start)
          pixels, label = images.read(n * size), labels.read(n)
          if len(pixels) != n * size or len(label) != n:
            raise UserError(f"{image_path}: header says {shape[0]} examples, the files end "
                            f"before example {start + n} (truncated or corrupt)")
          yield {"image": np.frombuffer(pixels, np.uint8).reshape(n, *shape[1:], 1),
                 "label": np.frombuffer(label, np.uint8).astype(np.int32)}
        if images.read(1) or labels.read(1):
          raise UserError(f"{image_path}: more bytes than its header's {shape} (corrupt)")
    except (OSError, EOFError, zlib.error) as e:
      raise UserError(f"{image_path}: cannot read IDX file ({e})") from None

  return {split: rows(*pair) for split, pair in paths.items()}
