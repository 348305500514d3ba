"""Any task's splits on disk as ArrayRecord shards of fixed-size examples, read by global index.

`python -m jaxdl.prepare` writes DIR/<split>-NNNNN.array_record and DIR/jaxdl-records.json:

  {"format": "jaxdl-records-v1", "task": "image_classification", "source": "IDX files in ...",
   "examples_per_record": 5,
   "features": {"image": {"dtype": "uint8", "shape": [28, 28, 1]},
                "label": {"dtype": "int32", "shape": []}},
   "splits": {"train": {"count": 60000, "shards": [{"file": "train-00000.array_record",
                                                    "count": 60000, "bytes": ..., "sha256": ...}]},
              ...},
   "info": {...}}   # the task's own: class names, vocabulary

An example is its features' bytes in the JSON's order (C order, little-endian), so a batch
decodes with one np.frombuffer. A record holds `examples_per_record` examples one after the
other (the shard's last record may hold fewer): as many as fill PACKED_BYTES, at least one.
Shards hold up to SHARD_BYTES of examples, written with group_size:1 (one record per chunk:
random access reads only its own, and Grain logs an error for any other). Why pack: an
ArrayRecord reader holds an index entry of 12-15 bytes per chunk of every shard it opens, which
for MNIST's 788-byte digits, one a record, was the largest part of a streamed run's memory that
grew with the data (45 MB for 3.8M digits); 5 a record cut it fivefold, for 3.6 ms instead of
2.9 ms per 512 random digits read (experiments/data/README.md). The writer streams: it takes a
split in chunks of rows and never holds more than one chunk and one record's bytes, so a source
larger than memory converts. A JSON without `examples_per_record` has one a record.

The reader (Records) checks every shard's size and sha256 against the JSON when it opens the
split, opens the shards lazily in each process (a pickled Records, as a data-loading worker gets
it, holds no open file), and reads rows by their global index, shard by shard. A directory on
gs:// is read the same way from local copies of its shards (ArrayRecord's reader opens local
files): each is copied once per host into cache_dir(), named by its sha256, checked as it comes.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from jaxdl import files
from jaxdl.data import prepared
from jaxdl.errors import UserError, first_line

RECORDS_FILE = "jaxdl-records.json"
FORMAT = "jaxdl-records-v1"
SHARD_BYTES = 1 << 28  # 256 MB of records per shard: ~12 shards for 3 GB, opened lazily
PACKED_BYTES = 4096    # the examples a record holds fill up to this many bytes (at least one)
WRITE_OPTIONS = "group_size:1"  # ArrayRecord's default compression (brotli), one record a chunk


def is_records(path: str) -> bool:
  """A directory (local or gs://) that jaxdl.prepare wrote as record shards."""
  return files.is_dir(path) and files.is_file(os.path.join(path, RECORDS_FILE))


def features_of(chunk: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
  """The JSON's 'features' of rows like `chunk`'s: each one's dtype and per-example shape."""
  return {key: {"dtype": np.dtype(v.dtype).name, "shape": list(v.shape[1:])}
          for key, v in chunk.items()}


def _layout(features: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, np.dtype, tuple, int]]:
  """(name, little-endian dtype, shape, bytes) of each feature, in record order."""
  out = []
  for key, f in features.items():
    dtype, shape = np.dtype(f["dtype"]).newbyteorder("<"), tuple(f["shape"])
    out.append((key, dtype, shape, dtype.itemsize * int(np.prod(shape, dtype=np.int64))))
  return out


def examples_per_record(features: dict) -> int:
  """How many examples of these features a record holds (PACKED_BYTES' worth, at least one)."""
  return max(1, PACKED_BYTES // max(sum(n for *_, n in _layout(features)), 1))


def write_split(directory: str, split: str, features: dict, chunks: Iterable[Mapping]) -> dict:
  """Writes a split's rows (chunks of {feature: [n, ...] array}) as shards in `directory`,
  examples_per_record(features) to a record; returns its JSON entry ({count, shards}). Every
  chunk must have `features`' dtypes and shapes."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  layout = _layout(features)
  example_bytes, k = sum(n for *_, n in layout), examples_per_record(features)
  per_shard = max(1, SHARD_BYTES // max(example_bytes, 1) // k) * k  # whole records
  shards, writer, in_shard, pending = [], None, 0, []

  def flush():  # the examples waiting for their record, as one
    if pending:
      writer.write(b"".join(pending))
      pending.clear()

  def close():
    flush()
    writer.close()
    path = os.path.join(directory, shards[-1]["file"])
    shards[-1].update(bytes=os.path.getsize(path), sha256=prepared.sha256(path))

  for chunk in chunks:
    n = len(next(iter(chunk.values())))
    columns = []
    for key, dtype, shape, _ in layout:
      column = np.asarray(chunk[key])
      if column.shape[1:] != shape or column.dtype != dtype:
        raise UserError(f"prepare: the {split} split's {key!r} has shape {column.shape[1:]} "
                        f"{column.dtype}, where its first rows had {shape} {dtype.name}")
      columns.append(np.ascontiguousarray(column, dtype).reshape(n, -1).view(np.uint8))
    rows = np.concatenate(columns, axis=1) if columns else np.zeros((n, 0), np.uint8)
    for row in rows:
      if writer is None or in_shard == per_shard:
        if writer is not None:
          close()
        shards.append({"file": f"{split}-{len(shards):05d}.array_record", "count": 0})
        writer = array_record_module.ArrayRecordWriter(
            os.path.join(directory, shards[-1]["file"]), WRITE_OPTIONS)
        in_shard = 0
      pending.append(row.tobytes())
      if len(pending) == k:
        flush()
      in_shard += 1
      shards[-1]["count"] += 1
  if writer is None:
    raise UserError(f"prepare: the {split} split has no examples")
  close()
  return {"count": sum(s["count"] for s in shards), "shards": shards}


def write(out: str, task: str, source: str, splits: Mapping[str, Iterable[Mapping]],
          info: dict | Callable[[], dict]) -> dict:
  """Writes every split (an iterable of row chunks each) to the new directory `out`, and the
  JSON last; returns the JSON. The features are the first chunk's. `info` may be a function,
  called once every split is written (a text task's counts come from encoding them)."""
  with prepared.new_directory(out) as partial:
    features, entries = None, {}
    for split, chunks in splits.items():
      chunks = iter(chunks)
      first = next(chunks, None)
      if first is None:
        raise UserError(f"prepare: the {split} split has no examples")
      features = features or features_of(first)
      entries[split] = write_split(partial, split, features, itertools.chain([first], chunks))
    meta = {"format": FORMAT, "task": task, "source": source,
            "examples_per_record": examples_per_record(features), "features": features,
            "splits": entries, "info": info() if callable(info) else info}
    prepared.write_json(partial, RECORDS_FILE, meta)
  return meta


def read_meta(directory: str) -> dict:
  """The directory's JSON, checked for the keys the readers use."""
  meta = prepared.read_json(directory, RECORDS_FILE, FORMAT, "a record directory")
  try:
    _layout(meta["features"])
    if int(meta.get("examples_per_record", 1)) < 1:
      raise ValueError(f"examples_per_record {meta['examples_per_record']!r} < 1")
    for entry in meta["splits"].values():
      for shard in entry["shards"]:  # each key there, the counts numbers
        _ = (shard["file"], int(shard["count"]), int(shard["bytes"]), shard["sha256"])
  except (KeyError, TypeError, ValueError) as e:
    raise UserError(f"{os.path.join(directory, RECORDS_FILE)}: not a record directory of "
                    f"jaxdl.prepare ({first_line(e)})") from None
  return meta


def cache_dir() -> str:
  """Where gs:// shards are copied to be read: $JAXDL_CACHE (default ~/.cache/jaxdl)/records,
  each file named by its sha256 (shared by every run and process of this host)."""
  return os.path.join(os.path.expanduser(os.environ.get("JAXDL_CACHE", "~/.cache/jaxdl")),
                      "records")


def _staged(url: str, shard: dict) -> str:
  """The local copy of a gs:// shard: copied once (in 16 MB blocks, its sha256 checked as it
  comes, into a temporary file renamed when whole), then reused while its size is the JSON's."""
  local = os.path.join(cache_dir(), f"{shard['sha256']}.array_record")
  if os.path.exists(local) and os.path.getsize(local) == shard["bytes"]:
    return local
  prepared.check_file(url, shard["bytes"], None, RECORDS_FILE)
  os.makedirs(cache_dir(), exist_ok=True)
  partial, digest = f"{local}.tmp-{os.getpid()}", hashlib.sha256()
  try:
    with files.open_binary(url) as f, open(partial, "wb") as out:
      while block := f.read(1 << 24):
        digest.update(block)
        out.write(block)
    if digest.hexdigest() != shard["sha256"]:
      raise UserError(f"{url}: its sha256 differs from the one in {RECORDS_FILE}: changed since "
                      f"jaxdl.prepare wrote it; prepare the data again")
    os.replace(partial, local)
  except OSError as e:
    raise UserError(f"{url}: cannot copy it to {cache_dir()} to read it ({first_line(e)})"
                    ) from None
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  return local


def check_features(meta: dict, directory: str, task: str, expected: dict) -> None:
  """The records were prepared for `task`, with its features ({name: {'dtype', 'rank'}}): a
  UserError naming the JSON otherwise (a directory prepared by another config)."""
  path = os.path.join(directory, RECORDS_FILE)
  if meta.get("task") != task:
    raise UserError(f"{path}: prepared for config.task={meta.get('task')!r}, not {task!r}")
  have = {k: {"dtype": f["dtype"], "rank": len(f["shape"])} for k, f in meta["features"].items()}
  if have != expected:
    raise UserError(f"{path}: features {have} do not match what {task} reads ({expected}); "
                    f"prepare the data again with this config")


class Records:
  """One split's shards read by global row index: len(), read(indices) -> {feature: array}.

  Every shard's size and sha256 are checked against the JSON here, once per process; the
  shards are opened on their first read. `reads` counts the records this
  process has read (the tests' evidence that a process reads only its own rows)."""

  def __init__(self, directory: str, split: str, meta: dict):
    if split not in meta["splits"]:
      raise UserError(f"{directory}: no {split!r} split (it has "
                      f"{', '.join(meta['splits'])}); prepare the data again")
    self.directory, self.split = directory, split
    self.info = meta.get("info", {})  # the task's: class names, label count
    self.layout = _layout(meta["features"])
    self.example_bytes = sum(n for *_, n in self.layout)
    self.per_record = int(meta.get("examples_per_record", 1))
    shards = meta["splits"][split]["shards"]
    self.paths = [os.path.join(directory, s["file"]) for s in shards]
    for i, (path, shard) in enumerate(zip(self.paths, shards)):
      if files.is_url(path):  # ArrayRecord's reader opens local files: a checked local copy
        self.paths[i] = _staged(path, shard)
      else:
        prepared.check_file(path, shard["bytes"], shard["sha256"], RECORDS_FILE)
    self.starts = np.cumsum([0] + [s["count"] for s in shards])
    # What a resume checks: the same rows in the same order (each shard's hash, in order).
    self.sha256 = hashlib.sha256("".join(s["sha256"] for s in shards).encode()).hexdigest()
    self._reads = [0]  # shared with its copies (one per reading thread)
    self._readers: dict[int, Any] = {}

  @property
  def reads(self) -> int:
    """Examples read by this process (by it and its copies)."""
    return self._reads[0]

  def __len__(self) -> int:
    return int(self.starts[-1])

  def __getstate__(self):
    """No open readers: in a pickle (a worker's copy) or a copy.copy (a reading thread's, as an
    ArrayRecordReader is not to be read from two threads at once)."""
    return {**self.__dict__, "_readers": {}}

  def close(self) -> None:
    """Drops its open readers (reopened on the next read): each holds its shard's chunk index,
    12 bytes a record, which a thread reading through a copy holds too."""
    self._readers = {}

  def _reader(self, shard: int):
    if shard not in self._readers:
      from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
      try:
        self._readers[shard] = array_record_module.ArrayRecordReader(
            self.paths[shard], "readahead_buffer_size:0")  # random access: no read-ahead
      except Exception as e:  # pylint: disable=broad-except  (riegeli's status errors)
        raise UserError(f"{self.paths[shard]}: cannot read ({first_line(e)}); prepare the data "
                        f"again") from None
    return self._readers[shard]

  def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Rows `indices` (global, in any order), decoded: {feature: [len(indices), ...]}."""
    indices = np.asarray(indices, np.int64).reshape(-1)
    if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
      raise IndexError(f"{self.directory} {self.split}: rows {indices.min()}..{indices.max()} "
                       f"outside 0..{len(self) - 1}")
    k, size = self.per_record, self.example_bytes
    shard_of = np.searchsorted(self.starts, indices, side="right") - 1
    blobs: list[bytes] = [b""] * len(indices)
    for shard in np.unique(shard_of):
      where = np.flatnonzero(shard_of == shard)
      local = indices[where] - self.starts[shard]
      wanted, slot = np.unique(local // k, return_inverse=True)  # each record read once
      count = int(self.starts[shard + 1] - self.starts[shard])
      reader = self._reader(int(shard))
      try:
        got = reader.read(wanted.tolist())
      except Exception as e:  # pylint: disable=broad-except  (riegeli's status errors)
        raise UserError(f"{self.paths[shard]}: cannot read records ({first_line(e)}); prepare "
                        f"the data again") from None
      for record, blob in zip(wanted.tolist(), got):
        expected = min(k, count - record * k) * size
        if len(blob) != expected:
          raise UserError(f"{self.paths[shard]}: record {record} has {len(blob)} bytes, "
                          f"{expected} expected (truncated or damaged); prepare the data again")
      for i, j, row in zip(where, slot.reshape(-1).tolist(), (local % k).tolist()):
        blobs[i] = got[j][row * size:(row + 1) * size]
    self._reads[0] += len(indices)
    raw = np.frombuffer(b"".join(blobs), np.uint8).reshape(len(indices), size)
    out, offset = {}, 0
    for key, dtype, shape, nbytes in self.layout:
      column = raw[:, offset:offset + nbytes].copy().view(dtype).reshape(len(indices), *shape)
      out[key] = column.astype(dtype.newbyteorder("="), copy=False)
      offset += nbytes
    return out


class RecordRows(Mapping):
  """A split's rows (all of Records', or those at `index`) as a mapping of lazy columns: what
  data.iterator's take() and eval_batches() and subsets' carving read of a split's arrays, read
  from disk when indexed. The columns of one batch come from one read (the last is kept)."""

  def __init__(self, records: Records, index: np.ndarray | None = None):
    self.records = records
    # None: every row, in order (no index array: 8 bytes an example, 30 MB for 3.8M digits)
    self.index = None if index is None else np.asarray(index, np.int64)
    self._last: tuple[bytes, dict] | None = None

  def __getstate__(self):
    return {**self.__dict__, "_last": None}

  def __len__(self) -> int:
    return len(self.records.layout)

  def __iter__(self):
    return iter(key for key, *_ in self.records.layout)

  def __getitem__(self, key: str) -> "Column":
    if key not in list(self):
      raise KeyError(key)
    return Column(self, key)

  @property
  def rows(self) -> int:
    return len(self.records) if self.index is None else len(self.index)

  def _global(self, rows: np.ndarray) -> np.ndarray:
    return rows if self.index is None else self.index[rows]

  def close(self) -> None:
    """Drops what its source holds open (a Records' readers), if anything."""
    getattr(self.records, "close", lambda: None)()

  def fresh(self) -> "RecordRows":
    """These rows through readers of their own (data/stream.py's reading thread)."""
    other = copy.copy(self)  # without _last (__getstate__)
    other.records = copy.copy(self.records)
    return other

  def take(self, rows: np.ndarray) -> "RecordRows":
    return RecordRows(self.records, self._global(np.asarray(rows, np.int64)))

  def read(self, rows, keep: bool = True) -> dict[str, np.ndarray]:
    """Rows `rows` of this view, decoded; with `keep`, kept until other rows are read (the
    columns of one batch are indexed one after the other)."""
    rows = np.asarray(rows, np.int64)
    if not keep:
      return self.records.read(self._global(rows))
    key = rows.tobytes()
    if self._last is None or self._last[0] != key:
      self._last = (key, self.records.read(self._global(rows)))
    return self._last[1]

  def blocks(self, size: int = 8192):
    """(start, {feature: rows start..start+size-1}) over every row, in order."""
    for start in range(0, self.rows, size):
      yield start, self.read(np.arange(start, min(start + size, self.rows)), keep=False)

  def load(self) -> dict[str, np.ndarray]:
    """Every row in memory (data.streaming='off'), read in blocks into arrays made once (the
    split's size, not twice that)."""
    out = {key: np.empty((self.rows, *shape), dtype.newbyteorder("="))
           for key, dtype, shape, _ in self.records.layout}
    for start, block in self.blocks():
      for key, column in block.items():
        out[key][start:start + len(column)] = column
    return out


class Column:
  """One feature of RecordRows: len(), shape, and rows by an index array (read when indexed)."""

  def __init__(self, rows: RecordRows, key: str):
    self.rows, self.key = rows, key
    _, self.dtype, shape, _ = next(f for f in rows.records.layout if f[0] == key)
    self.shape = (rows.rows, *shape)

  def __len__(self) -> int:
    return self.rows.rows

  def __getitem__(self, index) -> np.ndarray:
    scalar = np.ndim(index) == 0
    out = self.rows.read(np.atleast_1d(index))[self.key]
    return out[0] if scalar else out

  def __array__(self, dtype=None, copy=None):  # every row: for tests and tools
    del copy
    out = self[np.arange(len(self))]
    return out if dtype is None else out.astype(dtype)
