"""Record directories (jaxdl.prepare → data/records.py) and the streaming train iterator on
Grain (data/stream.py): the round trip, the same batches as in memory, each process's own rows,
one-line errors, and a worker process that dies."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import (REPO, assert_same_params, read_events, tiny_mnist_config,
                      write_mnist_dir)
from jaxdl import prepare, train
from jaxdl.data import imagefolder, records, stream
from jaxdl.data import tfds as tfds_module
from jaxdl.data.iterator import TrainBatches
from jaxdl.errors import UserError


def _config(path, **data):
  c = tiny_mnist_config()
  c.data.source, c.data.path = "files", path
  for key, value in data.items():
    c.data[key] = value
  return c


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
  """(IDX dir, its arrays, the record directory prepared from it in 3-shard splits)."""
  root = tmp_path_factory.mktemp("records")
  arrays = write_mnist_dir(str(root / "idx"), n_train=100, n_test=23, learnable=True)
  saved = records.SHARD_BYTES
  records.SHARD_BYTES = 40 * (28 * 28 + 4)  # 40 examples a shard: 3 for train, 1 for test
  try:
    prepare.prepare(_config(str(root / "idx")), str(root / "rec"))
  finally:
    records.SHARD_BYTES = saved
  return str(root / "idx"), arrays, str(root / "rec")


def test_idx_files_round_trip_through_records(mnist):
  _, arrays, rec = mnist
  meta = records.read_meta(rec)
  assert meta["features"] == {"image": {"dtype": "uint8", "shape": [28, 28, 1]},
                              "label": {"dtype": "int32", "shape": []}}
  assert [s["count"] for s in meta["splits"]["train"]["shards"]] == [40, 40, 20]
  assert meta["examples_per_record"] == 5  # 4096 // 788 bytes: test's 23 end in a record of 3
  assert meta["info"] == {"classes": None, "labels": 10}
  for split, (images, labels) in arrays.items():
    rows = records.RecordRows(records.Records(rec, split, meta)).load()
    np.testing.assert_array_equal(rows["image"][..., 0], images)
    np.testing.assert_array_equal(rows["label"], labels)
    picked = np.random.default_rng(0).permutation(len(labels))[:17]  # any order, any record
    got = records.Records(rec, split, meta).read(np.concatenate([picked, picked[:2]]))
    np.testing.assert_array_equal(got["image"][..., 0], images[np.r_[picked, picked[:2]]])
  assert not any(name.startswith("rec.tmp") for name in os.listdir(os.path.dirname(rec)))


def test_image_folders_round_trip_with_their_class_names(tmp_path):
  rng = np.random.default_rng(0)
  for split, n in (("train", 5), ("test", 3)):
    for name in ("cat", "dog"):
      os.makedirs(tmp_path / "pets" / split / name)
      for i in range(n):
        Image.fromarray(rng.integers(0, 255, (6, 5, 3), np.uint8)).save(
            tmp_path / "pets" / split / name / f"{i}.png")
  c = _config(str(tmp_path / "pets"))
  c.model.num_classes = 2
  prepare.prepare(c, str(tmp_path / "rec"))
  want, classes = imagefolder.load_image_folder(str(tmp_path / "pets"))
  meta = records.read_meta(str(tmp_path / "rec"))
  assert meta["info"]["classes"] == classes == ["cat", "dog"]
  for split in ("train", "test"):
    got = records.RecordRows(records.Records(str(tmp_path / "rec"), split, meta)).load()
    for key in ("image", "label"):
      np.testing.assert_array_equal(got[key], want[split][key])


def test_a_prepare_that_fails_leaves_no_directory(mnist, tmp_path, monkeypatch):
  idx_dir, _, _ = mnist
  write = records.write_split
  calls = []
  def failing(directory, split, *args):
    calls.append(split)
    if split == "test":
      raise OSError(28, "No space left on device")
    return write(directory, split, *args)
  monkeypatch.setattr(records, "write_split", failing)
  with pytest.raises(OSError, match="No space left"):
    prepare.prepare(_config(idx_dir), str(tmp_path / "out"))
  assert calls == ["train", "test"] and os.listdir(tmp_path) == []


def test_streamed_batches_are_the_in_memory_ones_from_any_step(mnist):
  """StreamingBatches (Grain, blocks of steps read ahead) gives TrainBatches' batch for every
  step, asked in order, from a resume's step, and out of order; the global batch split over 2
  processes is the halves, each read only by its process."""
  _, _, rec = mnist
  meta = records.read_meta(rec)
  memory = TrainBatches(records.RecordRows(records.Records(rec, "train", meta)).load(), 16, 3)
  streamed = stream.StreamingBatches(
      TrainBatches(records.RecordRows(records.Records(rec, "train", meta)), 16, 3), prefetch=2)
  for step in [0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 30, 31, 32, 2, 3, 4]:
    want, got = memory.batch(step), streamed.batch(step)
    assert want.keys() == got.keys()
    for key in want:
      np.testing.assert_array_equal(got[key], want[key], err_msg=f"step {step} {key}")
  streamed.close()
  halves = []
  for process in (0, 1):
    rows = records.RecordRows(records.Records(rec, "train", meta))
    part = stream.StreamingBatches(TrainBatches(rows, 16, 3, process, 2))
    halves.append([part.batch(step) for step in range(20)])
    part.close()
    # Its own 8 rows of each of 20 steps (the blocks read ahead: up to 8 steps x 2 blocks more).
    assert 20 * 8 <= rows.records.reads <= 20 * 8 + 2 * 8 * 8 * 2
  for step in range(20):
    for key in ("image", "label", "mask"):
      np.testing.assert_array_equal(
          np.concatenate([halves[0][step][key], halves[1][step][key]]),
          memory.batch(step)[key])


def test_a_streaming_run_logs_what_the_in_memory_run_logs(mnist, tmp_path):
  """The same seed on the IDX files (in memory), on their records streamed, and on the records
  loaded whole (data.streaming='off'): the same metrics.jsonl, loss for loss."""
  idx_dir, _, rec = mnist
  c = _config(idx_dir, validation_size=20)
  train.train_and_evaluate(c, str(tmp_path / "idx"))
  train.train_and_evaluate(_config(rec, validation_size=20), str(tmp_path / "on"))
  train.train_and_evaluate(_config(rec, validation_size=20, streaming="off"),
                           str(tmp_path / "off"))
  want = read_events(str(tmp_path / "idx"))
  assert read_events(str(tmp_path / "on")) == want == read_events(str(tmp_path / "off"))


@pytest.mark.parametrize("damage, message", [
    (lambda d: os.remove(f"{d}/train-00001.array_record"),
     r"train-00001.array_record: missing \(jaxdl-records.json lists it\)"),
    (lambda d: open(f"{d}/train-00002.array_record", "r+b").truncate(100),
     r"train-00002.array_record: 100 bytes, but jaxdl-records.json says [\d,]+: truncated"),
    (lambda d: open(f"{d}/test-00000.array_record", "r+b").write(b"\xff\xff"),
     r"test-00000.array_record: its sha256 differs from the one in jaxdl-records.json"),
    (lambda d: open(f"{d}/jaxdl-records.json", "w").write("{"),
     r"jaxdl-records.json: not a record directory of jaxdl.prepare"),
    (lambda d: _edit_meta(d, lambda m: m["features"]["image"].update(dtype="float32")),
     r"jaxdl-records.json: features .* do not match what image_classification reads"),
    (lambda d: _edit_meta(d, lambda m: m.update(task="language_model")),
     r"jaxdl-records.json: prepared for config.task='language_model', not "
     r"'image_classification'"),
])
def test_damaged_records_are_one_line_naming_the_file(mnist, tmp_path, damage, message):
  rec = str(tmp_path / "rec")
  shutil.copytree(mnist[2], rec)
  damage(rec)
  with pytest.raises(UserError, match=message) as error:
    train.train_and_evaluate(_config(rec), str(tmp_path / "w"))
  assert "\n" not in str(error.value) and not os.path.exists(tmp_path / "w")


def _edit_meta(directory, change):
  path = os.path.join(directory, records.RECORDS_FILE)
  with open(path) as f:
    meta = json.load(f)
  change(meta)
  with open(path, "w") as f:
    json.dump(meta, f)


def test_a_record_damaged_after_the_start_is_one_line(mnist, tmp_path):
  """A shard that changes under a running job (its size kept) fails the read that meets it."""
  rec = str(tmp_path / "rec")
  shutil.copytree(mnist[2], rec)
  meta = records.read_meta(rec)
  rows = records.Records(rec, "train", meta)
  with open(f"{rec}/train-00000.array_record", "r+b") as f:
    f.write(b"\0" * 4096)
  with pytest.raises(UserError, match=r"train-00000.array_record: cannot read"):
    rows.read(np.arange(40))


def test_streaming_keys_are_checked_in_one_line(mnist, tmp_path):
  idx_dir, _, rec = mnist
  with pytest.raises(UserError, match=r"config.data.streaming='on' streams a record directory "
                     r"or a prepared TFDS copy, and data.path='.*idx' is neither: write it as "
                     r"records with python -m jaxdl.prepare"):
    train.train_and_evaluate(_config(idx_dir, streaming="on"), str(tmp_path / "w"))
  with pytest.raises(UserError, match=r"data.path='.*idx' holds 0.0 GB, more than "
                     r"config.data.memory_budget_gb=1e-06"):
    train.train_and_evaluate(_config(idx_dir, memory_budget_gb=1e-6), str(tmp_path / "w"))
  with pytest.raises(UserError, match=r"data.streaming='always'.*must be one of auto, on, off"):
    train.train_and_evaluate(_config(rec, streaming="always"), str(tmp_path / "w"))
  with pytest.raises(UserError, match=r"data.image_size=8: resizes ImageFolder images; .*rec "
                     r"holds records"):
    train.train_and_evaluate(_config(rec, image_size=8), str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


def test_resuming_on_other_records_is_one_line(mnist, tmp_path):
  """The data position holds the records' hash: other examples prepared into the same directory
  are refused, not trained on as if they were the run's."""
  rec = str(tmp_path / "rec")
  shutil.copytree(mnist[2], rec)
  c = _config(rec)
  c.num_train_steps = 8
  train.train_and_evaluate(c, str(tmp_path / "w"))
  shutil.rmtree(rec)
  write_mnist_dir(str(tmp_path / "idx2"), n_train=100, n_test=23, seed=5)
  prepare.prepare(_config(str(tmp_path / "idx2")), rec)
  c.num_train_steps = 16
  with pytest.raises(UserError, match=r"the checkpoint's data position .*'records_sha256'"):
    train.train_and_evaluate(c, str(tmp_path / "w"))


# A worker process that dies: it SIGKILLs itself as it reads row 50 (in epoch 0, or in epoch 1
# if step 0, which the main process reads, has it). Imported in the worker as a user's class
# would be (tests/ on its sys.path).
class DyingRows(records.RecordRows):
  def read(self, rows, keep=True):
    if os.environ.get("JAXDL_TEST_DIE") and 50 in np.asarray(rows):
      os.kill(os.getpid(), signal.SIGKILL)
    return super().read(rows, keep)


_DEAD_WORKER = """
import os, sys
sys.path.insert(0, {tests!r})
from test_records import DyingRows
from jaxdl.data import records, stream
from jaxdl.data.iterator import TrainBatches
from jaxdl.errors import UserError
if __name__ == "__main__":
  rows = DyingRows(records.Records({rec!r}, "train", records.read_meta({rec!r})))
  batches = stream.StreamingBatches(TrainBatches(rows, 8, 0), workers=1, prefetch=1)
  batches.batch(0)
  os.environ["JAXDL_TEST_DIE"] = "1"  # the worker starts after this, and inherits it
  try:
    for step in range(1, 100):
      batches.batch(step)
  except UserError as e:
    print(e)
    sys.exit(1)
"""


@pytest.mark.slow
def test_a_worker_that_dies_stops_the_run_in_one_line(mnist, tmp_path):
  """data.workers=1 and the worker is SIGKILLed mid-run: the batch it owed is one line naming
  the worker processes, within the timeout, not a hang."""
  script = tmp_path / "dead_worker.py"
  script.write_text(_DEAD_WORKER.format(tests=os.path.join(REPO, "tests"), rec=mnist[2]))
  done = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert done.returncode == 1, done.stdout + done.stderr[-3000:]
  assert done.stdout.startswith("data: reading batch ") and "worker processes" in done.stdout
  assert done.stdout.count("\n") == 1, done.stdout


@pytest.mark.slow
def test_a_streaming_run_killed_at_random_moments_resumes_bitwise(mnist, tmp_path):
  """tests/test_faults.py's chaos run (a SIGKILL mid-save, a SIGTERM, a SIGINT, at seeded random
  moments, each followed by the same command) on records streamed through Grain: the result
  equals the in-memory run on the IDX files, bit for bit. (7 interruptions on MNIST's 10k
  records: experiments/data/README.md.)"""
  import importlib.util  # pylint: disable=g-import-not-at-top
  from conftest import SMALL_MODEL, SUBPROCESS_CACHE  # pylint: disable=g-import-not-at-top
  from jaxdl import runs  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "kill_and_resume", os.path.join(REPO, "experiments", "mnist", "kill_and_resume.py"))
  kr = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(kr)
  idx_dir, _, rec = mnist
  workdir = str(tmp_path / "killed")
  cmd = [sys.executable, "-m", "jaxdl.main", f"--workdir={workdir}", "--config=configs/mnist.py",
         f"--config.model.name={SMALL_MODEL}", "--config.data.source=files",
         f"--config.data.path={rec}", "--config.data.streaming=on", "--config.batch_size=16",
         "--config.eval_batch_size=50", "--config.num_train_steps=48", "--config.log_every=3",
         "--config.eval_every=12", "--config.checkpoint_every=4", "--config.opt.warmup_steps=4",
         "--config.data.validation_size=0"]
  record = kr.interrupt_until_done(cmd, workdir, seed=1, kills=1, log=print,
                                   env={"JAXDL_XLA_CACHE": SUBPROCESS_CACHE})
  assert sum(line.startswith("kill") for line in record) >= 1, record
  c = _config(idx_dir)
  c.num_train_steps, c.log_every, c.eval_every, c.eval_batch_size = 48, 3, 12, 50
  c.checkpoint_every = 4
  reference = str(tmp_path / "reference")
  train.train_and_evaluate(c, reference)
  assert read_events(workdir) == read_events(reference)
  assert_same_params(runs.read_variables(workdir)[1], runs.read_variables(reference)[1])


# ---------------------------------------------------------------------------------------------
# The text classifier's records: tables encoded as a run encodes them.


@pytest.fixture(scope="module")
def text(tmp_path_factory):
  """(tables dir, a tiny text config on it with bucketing and a carved val split, its records)."""
  sys.path.insert(0, os.path.join(REPO, "tests"))
  from test_text_train import _tiny_config, _sentences  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("text")
  for split, n, seed in (("train", 200, 0), ("dev", 40, 1)):
    (root / f"{split}.tsv").write_text(
        "sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in _sentences(n, seed)))
  c = _tiny_config(str(root))
  c.data.bucket, c.data.validation_size, c.data.sort_pool = 4, 30, 2
  prepare.prepare(c, str(root / "rec"))
  return str(root), c, str(root / "rec")


def test_a_streamed_text_run_logs_what_the_tables_run_logs(text, tmp_path, capsys):
  """Length-grouped, bucketed batches (data.iterator.CutBatches) over records streamed through
  Grain, and loaded whole: the same metrics.jsonl as the run on the TSV files, and the same
  start-up description of the data."""
  _, c, rec = text
  train.train_and_evaluate(c, str(tmp_path / "tables"))
  tables_out = capsys.readouterr().out
  for mode in ("on", "off"):
    r = c.copy_and_resolve_references()
    r.data.path, r.data.streaming = rec, mode
    train.train_and_evaluate(r, str(tmp_path / mode))
    assert read_events(str(tmp_path / mode)) == read_events(str(tmp_path / "tables")), mode
  out = capsys.readouterr().out
  describe = tables_out.split(" | ", 1)[1].split(" | model:")[0]
  assert describe in out and f"data: records in {rec}" in out
  with open(tmp_path / "tables" / "vocab.json") as f, open(tmp_path / "on" / "vocab.json") as g:
    assert f.read() == g.read()


def test_a_tfds_text_copy_streams_encoded_as_read_and_prepares_as_streamed(text, tmp_path,
                                                                            monkeypatch):
  """A TFDS text copy (tfds.data_source) trains streamed, its rows read and encoded when a batch
  asks for them (tfds.TextTokens), with the metrics of the copy encoded whole; jaxdl.prepare
  reads it a chunk at a time, and a run on those records logs the same again."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets.text.glue  # pylint: disable=g-import-not-at-top,unused-import
  from jaxdl.data import sources, vocab  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(sources, "tfds_prepared", lambda name, data_dir: True)  # the mock's copy
  _, c, _ = text
  c = c.copy_and_resolve_references()
  c.data.path, c.data.source, c.data.name, c.num_train_steps = "", "tfds", "glue/sst2", 12
  with tfds.testing.mock_data(num_examples=64):
    for mode in ("on", "off"):
      c.data.streaming = mode
      train.train_and_evaluate(c, str(tmp_path / mode))
    prepare.prepare(c, str(tmp_path / "rec"))
    words = vocab.WordVocab.from_json((tmp_path / "on" / "vocab.json").read_text(), "")
    split = tfds_module.TextTokens("glue/sst2", "train", None, words, c.data.max_len)
    rows = records.RecordRows(split)
    assert rows["tokens"].shape == (64, c.data.max_len) and split.reads == 0
    assert rows["tokens"][np.array([5])].shape == (1, c.data.max_len) and split.reads == 1
  assert read_events(str(tmp_path / "on")) == read_events(str(tmp_path / "off"))
  c.data.source, c.data.path, c.data.streaming = "auto", str(tmp_path / "rec"), "auto"
  train.train_and_evaluate(c, str(tmp_path / "records"))
  assert read_events(str(tmp_path / "records")) == read_events(str(tmp_path / "off"))


def test_text_records_refuse_a_config_they_were_not_prepared_with(text, tmp_path):
  _, c, rec = text
  for key, value in (("max_len", 8), ("validation_size", 0.0), ("min_count", 2)):
    r = c.copy_and_resolve_references()
    r.data.path, r.data[key] = rec, value
    with pytest.raises(UserError, match=rf"config.data.{key}={value!r} but .*rec was prepared "
                       rf"with .*; prepare it again with --config.data.{key}={value!r}"):
      train.train_and_evaluate(r, str(tmp_path / "w"))
  with pytest.raises(UserError, match=r"jaxdl-records.json: prepared for "
                     r"config.task='text_classification', not 'image_classification'"):
    train.train_and_evaluate(_config(rec), str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


def test_a_prepared_tfds_copy_streams_without_loading(tmp_path, monkeypatch):
  """A TFDS copy (its ArrayRecord files random-access: tfds.data_source) read by row as it
  streams, as records are: the same metrics as the copy loaded whole, and its rows read only
  when a batch asks for them."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from jaxdl.data import sources  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(sources, "tfds_prepared", lambda name, data_dir: True)  # the mock's copy
  c = tiny_mnist_config()
  c.data.source, c.num_train_steps = "tfds", 8
  with tfds.testing.mock_data(num_examples=64):
    train.train_and_evaluate(c, str(tmp_path / "on"))
    c.data.streaming = "off"
    train.train_and_evaluate(c, str(tmp_path / "off"))
    split = tfds_module.ImageSplit("mnist", "train", None)
    rows = records.RecordRows(split)
    assert rows["image"].shape == (64, 28, 28, 1) and split.reads == 0
    np.testing.assert_array_equal(rows["label"][np.array([3, 1])],
                                  [split.read([3])["label"][0], split.read([1])["label"][0]])
  assert read_events(str(tmp_path / "on")) == read_events(str(tmp_path / "off"))
