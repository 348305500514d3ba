"""Data: the IDX reader, the sources, and the batch iterators (every example exactly once)."""

import functools
import gzip
import hashlib
import http.server
import os
import threading
import time

import ml_collections
import numpy as np
import pytest

from conftest import load_config, write_mnist_dir
from jaxdl.data import download, idx, iterator, sources, subsets
from jaxdl.tasks import image_classification
from jaxdl.errors import UserError


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
  arrays = write_mnist_dir(str(tmp_path), gz=gz)
  splits = idx.load_idx_dir(str(tmp_path))
  for split, (x, y) in arrays.items():
    np.testing.assert_array_equal(splits[split]["image"][..., 0], x)
    np.testing.assert_array_equal(splits[split]["label"], y)
    assert splits[split]["image"].shape[-1] == 1 and splits[split]["label"].dtype == np.int32


def test_idx_bad_magic_and_truncation(tmp_path):
  path = str(tmp_path / "x-idx3-ubyte")
  with open(path, "wb") as f:
    f.write(b"\x12\x34\x08\x03" + bytes(20))
  with pytest.raises(UserError, match="bad magic number 12340803"):
    idx.read_idx(path)
  idx.write_idx(path, np.zeros((4, 28, 28), np.uint8))
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[:-100])
  with pytest.raises(UserError, match=r"x-idx3-ubyte: header says \(4, 28, 28\).*truncated"):
    idx.read_idx(path)
  with open(path + ".gz", "wb") as f:
    f.write(gzip.compress(data + os.urandom(4000))[:-20])  # a cut-off gzip stream
  with pytest.raises(UserError, match="cannot read IDX file"):
    idx.read_idx(path + ".gz")
  blob = bytearray(gzip.compress(data + os.urandom(4000)))
  blob[40:60] = bytes(20)  # corrupt deflate data inside a complete stream
  with open(path + ".gz", "wb") as f:
    f.write(blob)
  with pytest.raises(UserError, match="cannot read IDX file"):
    idx.read_idx(path + ".gz")


def test_idx_count_mismatch_and_missing_file(tmp_path):
  write_mnist_dir(str(tmp_path))
  idx.write_idx(str(tmp_path / "t10k-labels-idx1-ubyte.gz"), np.zeros(5, np.uint8))
  with pytest.raises(UserError, match="has 11 images but .* has 5 labels"):
    idx.load_idx_dir(str(tmp_path))
  os.remove(tmp_path / "train-images-idx3-ubyte.gz")
  with pytest.raises(UserError, match="no train-images-idx3-ubyte"):
    idx.load_idx_dir(str(tmp_path))


def _load(**data):
  """(splits, source) that the image task loads with the MNIST config's data block set to
  `data` (a batch small enough for the tiny splits here)."""
  config = load_config("mnist")
  config.batch_size = 4
  config.data.validation_size = 0  # whole splits as read (the carving has its own test)
  for k, v in data.items():
    config.data[k] = v
  dataset = image_classification.load(config, "/nonexistent")
  train = getattr(dataset.train, "order", dataset.train)  # a streamed TFDS copy's: its rows
  return {"train": train.arrays, **dataset.evals}, dataset.source


def test_auto_prefers_the_path(tmp_path):
  write_mnist_dir(str(tmp_path))
  splits, source = _load(path=str(tmp_path))
  assert len(splits["train"]["label"]) == 30 and str(tmp_path) in source


def test_tfds_source_without_tensorflow(monkeypatch):
  import tensorflow_datasets as tfds
  monkeypatch.setattr(sources, "tfds_prepared", lambda name, data_dir: True)  # the mock's copy
  with tfds.testing.mock_data(num_examples=7):
    splits, source = _load(source="tfds")
  assert splits["train"]["image"].shape == (7, 28, 28, 1) and "TFDS mnist" in source


def test_auto_offline_falls_back_to_the_sample_with_a_warning(monkeypatch, caplog):
  monkeypatch.setattr(sources, "tfds_prepared", lambda name, data_dir: False)
  monkeypatch.setattr(download, "reachable", lambda url: False)
  splits, source = _load()
  assert "OFFLINE SAMPLE" in source
  assert "OFFLINE SAMPLE" in caplog.text
  assert len(splits["train"]["label"]) == 4000 and len(splits["test"]["label"]) == 1000
  assert np.bincount(splits["test"]["label"]).tolist() == [100] * 10


def test_auto_with_nothing_fails_fast_listing_the_ways(monkeypatch):
  monkeypatch.setattr(sources, "tfds_prepared", lambda name, data_dir: False)
  monkeypatch.setattr(download, "reachable", lambda url: False)
  start = time.time()
  with pytest.raises(UserError) as e:
    _load(name="fashion_mnist", download_dir="/nonexistent-cache")
  assert time.time() - start < 5
  for way in ("data.path", "TFDS", "network", "offline"):
    assert way in str(e.value)


def test_download_verifies_and_caches(tmp_path, monkeypatch):
  served = tmp_path / "served"
  write_mnist_dir(str(served))
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
  handler.log_message = lambda *a: None
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    rows = []
    for name in sorted(os.listdir(served)):
      blob = (served / name).read_bytes()
      rows.append((f"http://127.0.0.1:{server.server_port}/{name}", len(blob),
                   hashlib.sha256(blob).hexdigest(), name))
    monkeypatch.setattr(download, "url_checksums", lambda name: rows)
    monkeypatch.setattr(sources, "tfds_prepared", lambda name, data_dir: False)
    cache = tmp_path / "cache"
    splits, source = _load(download_dir=str(cache))  # auto: reachable → download
    assert "downloaded" in source and len(splits["test"]["label"]) == 11
    assert sorted(os.listdir(cache / "mnist")) == sorted(os.listdir(served))
    rows[0] = rows[0][:2] + ("0" * 64,) + rows[0][3:]  # a wrong checksum is refused
    os.remove(cache / "mnist" / rows[0][3])
    with pytest.raises(UserError, match="does not match its recorded size/sha256"):
      _load(source="download", download_dir=str(cache))
    assert not [f for f in os.listdir(cache / "mnist") if f.startswith(".")]  # no temp left
  finally:
    server.shutdown()


def test_train_batches_see_every_example_once_per_epoch():
  arrays = {"x": np.arange(10), "label": np.arange(10)}
  batches = iterator.TrainBatches(arrays, batch_size=4, seed=3)
  assert batches.steps_per_epoch == 3
  for epoch in range(2):
    seen = []
    for i in range(3):
      b = batches.batch(epoch * 3 + i)
      seen += b["x"][b["mask"] == 1].tolist()
    assert sorted(seen) == list(range(10))
  again = iterator.TrainBatches(arrays, batch_size=4, seed=3)
  np.testing.assert_array_equal(again.batch(4)["x"], batches.batch(4)["x"])  # a pure function
  assert not np.array_equal(batches.batch(0)["x"], batches.batch(3)["x"])  # epochs reshuffle


def test_train_batches_split_over_processes():
  arrays = {"x": np.arange(20)}
  whole = iterator.TrainBatches(arrays, batch_size=8, seed=0).batch(1)
  parts = [iterator.TrainBatches(arrays, 8, 0, process_index=p, process_count=2).batch(1)
           for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([p["x"] for p in parts]), whole["x"])


def test_batch_larger_than_dataset_is_refused():
  with pytest.raises(UserError, match="batch_size=64 is larger than the training split"):
    iterator.TrainBatches({"x": np.arange(10)}, batch_size=64, seed=0)


def test_eval_batches_cover_a_ragged_split_exactly_once():
  arrays = {"x": np.arange(10)}
  batches = list(iterator.eval_batches(arrays, batch_size=4))
  assert [len(b["x"]) for b in batches] == [4, 4, 4]
  real = np.concatenate([b["x"][b["mask"] == 1] for b in batches])
  np.testing.assert_array_equal(real, np.arange(10))


def test_tfds_prepared_copy_is_found_by_auto(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds
  assert not sources.tfds_prepared("mnist", str(tmp_path))
  os.makedirs(tmp_path / "mnist" / "3.0.1")
  (tmp_path / "mnist" / "3.0.1" / "dataset_info.json").write_text("{}")
  (tmp_path / "mnist" / "3.0.1" / "mnist-train.tfrecord-00000-of-00001").write_text("")
  assert not sources.tfds_prepared("mnist", str(tmp_path))  # TFRecord: no random access
  with pytest.raises(UserError, match="no copy of 'mnist' in ArrayRecord format"):
    _load(source="tfds", tfds_dir=str(tmp_path))
  (tmp_path / "mnist" / "3.0.1" / "mnist-train.array_record-00000-of-00001").write_text("")
  assert sources.tfds_prepared("mnist", str(tmp_path))
  with tfds.testing.mock_data(num_examples=5):
    splits, source = _load(tfds_dir=str(tmp_path))
  assert "TFDS mnist" in source and len(splits["test"]["label"]) == 5


def test_carved_rows_are_fixed_disjoint_and_sized_by_count_or_fraction():
  val, rest = subsets.carve(100, 0.1, "validation_size")
  assert len(val) == 10 and len(rest) == 90 and not set(val) & set(rest)
  assert sorted(set(val) | set(rest)) == list(range(100)) and list(rest) == sorted(rest)
  again, _ = subsets.carve(100, 10, "validation_size")  # a count: the same rows as 10%
  np.testing.assert_array_equal(again, val)
  assert not np.array_equal(subsets.carve(100, 10, "k", salt=1)[0], val)
  train, val2 = subsets.carve_train(100, 0.1, 0.5)  # val first, then half of the other 90
  np.testing.assert_array_equal(val2, val)
  assert len(train) == 45 and set(train) <= set(rest)
  train, none = subsets.carve_train(100, 0, 0)
  assert none is None and list(train) == list(range(100))
  assert subsets.describe(100, train[:45], val) == "train 45 of 100 | val 10 carved from train"
  with pytest.raises(UserError, match=r"config.data.train_size=100 is 100 of the training "
                                      r"split's 100 examples; it must be fewer"):
    subsets.carve_train(100, 0, 100)


def test_with_validation_carves_the_rows_of_carve_train_and_keeps_a_val_of_the_datas_own():
  """The one-line helper of a task's load(): the rows carve_train picks (val first, then
  train_size of the rest where the config has that key), the other splits as they were; data
  with a val split of its own keeps it; nothing to carve leaves train's arrays uncopied."""
  full = {"x": np.arange(100) * 10, "label": np.arange(100) % 3}
  test = {"x": np.arange(7), "label": np.zeros(7, int)}
  cfg = ml_collections.ConfigDict({"validation_size": 0.1, "train_size": 0.5})
  splits, sizes = subsets.with_validation({"train": full, "test": test}, cfg)
  kept, val = subsets.carve_train(100, 0.1, 0.5)
  assert list(splits) == ["train", "test", "val"] and splits["test"] is test
  np.testing.assert_array_equal(splits["train"]["x"], full["x"][kept])
  np.testing.assert_array_equal(splits["val"]["label"], full["label"][val])
  assert sizes == "train 45 of 100 | val 10 carved from train"
  own = {"x": np.arange(4), "label": np.ones(4, int)}
  splits, sizes = subsets.with_validation({"train": full, "val": own},
                                          ml_collections.ConfigDict({"validation_size": 0.1}))
  assert splits["train"] is full and splits["val"] is own and sizes == "train 100 | val 4"
@pytest.mark.parametrize("value", [-1, 1.5, float("nan")])
def test_a_bad_carve_size_is_one_line(value):
  with pytest.raises(UserError, match=r"config.data.validation_size=.*: must be 0 \(off\), a "
                                      r"fraction of the training split in \(0, 1\), or a whole"):
    subsets.check({"validation_size": value}, "validation_size")


def test_the_image_task_validates_on_rows_carved_from_train(tmp_path, tiny_mnist):
  arrays = write_mnist_dir(tmp_path / "mnist", n_train=40, n_test=11)
  tiny_mnist.data.source, tiny_mnist.data.path = "files", str(tmp_path / "mnist")
  tiny_mnist.data.validation_size = 0.25
  dataset = image_classification.load(tiny_mnist, None)
  assert dataset.eval_split == "val" and dataset.final_splits == ("val", "test")
  assert dataset.describe == "train 30 | val 10 carved from train | test 11"
  val, rest = subsets.carve(40, 0.25, "validation_size")
  np.testing.assert_array_equal(dataset.evals["val"]["image"], arrays["train"][0][val, ..., None])
  assert dataset.train.size == 30 and dataset.evals["test"]["label"].shape == (11,)
  tiny_mnist.data.validation_size = 0  # off: the test split is evaluated during training
  dataset = image_classification.load(tiny_mnist, None)
  assert dataset.eval_split == "test" and dataset.final_splits == ("test",)
