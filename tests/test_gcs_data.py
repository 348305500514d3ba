"""data.path on gs://, against the GCS JSON-API server on loopback (tests/gcs_server.py): each
reader gives what it gives on the local copy of the same files, and a run on the gs:// copy logs
the local run's metrics.jsonl events."""

import contextlib
import io
import json
import os
import pathlib

import fsspec
import numpy as np
from PIL import Image
import pytest

import gcs_server
from conftest import (load_config, read_events, short_schedule, tiny_lm_config, tiny_mnist_config,
                      write_mnist_dir)
from jaxdl import prepare, tasks, train
from jaxdl.data import corpus, idx, imagefolder, records, sources, stream, tables, tokens
from jaxdl.errors import UserError

BUCKET = "jaxdl-data-test"


def _clear_gcsfs():
  """fsspec keeps one gcsfs instance per argument set, endpoint not among them: one made for
  another module's server would still talk to that (stopped) server. Called with the server's
  environment set: gcsfs reads GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT when first imported, and its
  experimental class asks for the bucket's type, without credentials here, at each read (1 s
  for a batch's cat_ranges)."""
  import gcsfs  # pylint: disable=g-import-not-at-top
  gcsfs.GCSFileSystem.clear_instance_cache()


def _upload(local: str, url: str) -> str:
  """Copies a local file or directory tree to gs:// (hidden files too); returns url."""
  import gcsfs  # pylint: disable=g-import-not-at-top
  fs = gcsfs.GCSFileSystem()
  key = url.split("://", 1)[1]
  if os.path.isfile(local):
    fs.pipe_file(key, pathlib.Path(local).read_bytes())
    return url
  for root, _, names in os.walk(local):
    for name in names:
      path = os.path.join(root, name)
      fs.pipe_file(f"{key}/{os.path.relpath(path, local)}", pathlib.Path(path).read_bytes())
  return url


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """{name: (local path, its gs:// copy)} of small data of every reader, on a server of its own."""
  root = tmp_path_factory.mktemp("gcsdata")
  write_mnist_dir(str(root / "mnist"), n_train=40, n_test=16, gz=True)
  write_mnist_dir(str(root / "mnist_raw"), n_train=3, n_test=2, gz=False)
  os.makedirs(root / "sst")
  rng = np.random.default_rng(0)
  words = ["good", "bad", "film", "plot", "the", "dull", "fun"]
  for split, n in (("train", 64), ("dev", 16)):
    rows = [(" ".join(rng.choice(words, 4)), int(rng.integers(0, 2))) for _ in range(n)]
    (root / "sst" / f"{split}.tsv").write_text(
        "sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
  (root / "sst" / "test.jsonl").write_text(
      "".join(json.dumps({"text": "good fun", "label": 1}) + "\n" for _ in range(4)))
  play = str(root / "play.txt")
  tiny_lm_config(play)  # writes the play
  os.makedirs(root / "plays" / "act2")
  (root / "plays" / "act1.txt").write_text(open(play).read()[:3000])
  (root / "plays" / "act2" / "scene1.txt").write_text(open(play).read()[3000:])
  (root / "plays" / ".hidden.txt").write_text("never read")
  for split, n in (("train", 10), ("test", 3)):
    for name, value in (("cat", 40), ("dog", 200)):
      os.makedirs(root / "pets" / split / name)
      for i in range(n):
        pixels = np.full((6, 6), value + 5 * i, np.uint8)
        Image.fromarray(pixels).save(root / "pets" / split / name / f"{i}.png")
  tokens.prepare(play, str(root / "prepared"), "chars", 0.1)
  mnist = tiny_mnist_config()
  mnist.data.source, mnist.data.path = "files", str(root / "mnist")
  prepare.prepare(mnist, str(root / "records"))
  _tfds_text_copy(str(root / "tfds"), root / "sst")
  # The emulator is one thread whose socket's backlog is 5: more connections at once than that
  # (a batch's windows, by cat_ranges) wait out a SYN retry, 1 s. Real GCS takes them all.
  conf = fsspec.config.conf
  saved = conf.get("nofiles_gather_batch_size")
  conf["nofiles_gather_batch_size"] = 4
  with gcs_server.running(BUCKET):
    _clear_gcsfs()
    out = {name: (str(root / local), _upload(str(root / local), f"gs://{BUCKET}/{name}"))
           for name, local in (("mnist", "mnist"), ("mnist_raw", "mnist_raw"), ("sst", "sst"),
                               ("play", "play.txt"), ("plays", "plays"), ("pets", "pets"),
                               ("prepared", "prepared"), ("records", "records"),
                               ("tfds", "tfds"))}
    yield out
    _clear_gcsfs()
  if saved is None:
    conf.pop("nofiles_gather_batch_size")
  else:
    conf["nofiles_gather_batch_size"] = saved


def _same(got, want):
  """Nested dicts, tuples, dataclasses of arrays: equal leaf for leaf."""
  if isinstance(want, dict):
    assert sorted(got) == sorted(want)
    for k in want:
      _same(got[k], want[k])
  elif hasattr(want, "__dataclass_fields__"):
    _same(vars(got), vars(want))
  elif isinstance(want, tuple):
    assert len(got) == len(want)
    for g, w in zip(got, want):
      _same(g, w)
  elif isinstance(want, (np.ndarray, list)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  else:
    assert got == want


def test_every_reader_reads_gs_as_it_reads_the_local_copy(data, tmp_path):
  for name in ("mnist", "mnist_raw"):
    _same(idx.load_idx_dir(data[name][1]), idx.load_idx_dir(data[name][0]))
  _same(tables.load_dir(data["sst"][1]), tables.load_dir(data["sst"][0]))
  for name in ("play", "plays"):
    assert corpus.read_text(data[name][1]) == corpus.read_text(data[name][0])
  assert "never read" not in corpus.read_text(data["plays"][1])
  assert corpus.read_text(data["plays"][1] + "/") == corpus.read_text(data["plays"][0])
  cfg = load_config("tiny_lm").data
  cfg.path = data["plays"][1] + "/"
  sources.check(cfg, ("pydoc",))
  assert imagefolder.is_image_folder(data["pets"][1])
  _same(imagefolder.load_image_folder(data["pets"][1], 4),
        imagefolder.load_image_folder(data["pets"][0], 4))
  assert tokens.is_prepared(data["prepared"][1]) and not tokens.is_prepared(data["plays"][1])
  meta, vocab, ids = tokens.read(data["prepared"][1], "chars")
  local_meta, local_vocab, local_ids = tokens.read(data["prepared"][0], "chars")
  assert meta == local_meta and vocab.to_json() == local_vocab.to_json()
  starts = np.array([0, 7, len(ids["train"]) - 16])
  for split in tokens.SPLITS:
    np.testing.assert_array_equal(ids[split].windows(starts[:2], 16),
                                  local_ids[split].windows(starts[:2], 16))
    np.testing.assert_array_equal(np.asarray(ids[split]), np.asarray(local_ids[split]))
  np.testing.assert_array_equal(ids["train"].windows(starts, 16),
                                local_ids["train"].windows(starts, 16))
  # prepare reads a gs:// corpus (and writes locally): the same files.
  out = str(tmp_path / "from_gs")
  tokens.prepare(data["plays"][1], out, "chars", 0.1)
  tokens.prepare(data["plays"][0], str(tmp_path / "from_local"), "chars", 0.1)
  for name in ("train.bin", "val.bin"):
    assert open(f"{out}/{name}", "rb").read() == open(tmp_path / "from_local" / name, "rb").read()


def test_gs_errors_are_one_line_naming_the_path(data, tmp_path):
  missing = f"gs://{BUCKET}/nothing-here"
  cfg = load_config("mnist").data
  cfg.path = missing
  with pytest.raises(UserError, match=f"^config.data.path='{missing}': does not exist$"):
    sources.check(cfg, ("download",), path_kind="dir")
  cfg.path = data["play"][1]
  with pytest.raises(UserError, match="is not a directory$"):
    sources.check(cfg, ("download",), path_kind="dir")
  cfg.path, cfg.tfds_dir = "", f"{missing}/tfds"
  with pytest.raises(UserError, match=f"^config.data.tfds_dir='{missing}/tfds': does not exist$"):
    sources.check(cfg, ("download",))
  with pytest.raises(UserError, match=f"^{missing}/a.txt: cannot read \\(does not exist\\)$"):
    sources.read_utf8(f"{missing}/a.txt")
  with pytest.raises(UserError, match=f"^{data['sst'][1]}: no train-images-idx3-ubyte"):
    idx.load_idx_dir(data["sst"][1])
  with pytest.raises(UserError, match="prepare writes a local directory"):
    tokens.prepare(data["play"][0], f"gs://{BUCKET}/out", "chars", 0.1)


TFDS_TEXT = "jaxdl_gcs_text"  # the TFDS builder below: a labelled-text dataset


def _tfds_text_copy(data_dir: str, tables_dir) -> None:
  """A real TFDS copy (ArrayRecord files, dataset_info.json) of the sst tables' train and dev
  rows, prepared by TFDS itself without TensorFlow, as `tfds build` would write it."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  def rows(split):
    return [line.split("\t") for line in (tables_dir / f"{split}.tsv").read_text().split("\n")[1:]
            if line]

  class JaxdlGcsText(tfds.core.GeneratorBasedBuilder):  # registered as TFDS_TEXT
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"sentence": tfds.features.Text(), "label": tfds.features.ClassLabel(num_classes=2)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples("train"),
              "validation": self._generate_examples("dev")}

    def _generate_examples(self, split):
      for i, (sentence, label) in enumerate(rows(split)):
        yield i, {"sentence": sentence, "label": int(label)}

  with contextlib.redirect_stderr(io.StringIO()):  # its progress bars
    JaxdlGcsText(data_dir=data_dir, file_format="array_record").download_and_prepare()


def _events_of(config, workdir):
  with contextlib.redirect_stdout(io.StringIO()):
    train.train_and_evaluate(config, workdir)
  return read_events(workdir)


def _runs_match(config, local, url, tmp_path):
  """The run on the gs:// copy logs the local run's events."""
  config.data.path = local
  want = _events_of(config, str(tmp_path / "local"))
  assert [e["step"] for e in want if e["event"] == "eval"] == [10, 20], want
  config.data.path = url
  assert _events_of(config, str(tmp_path / "gs")) == want


@pytest.mark.slow
def test_an_mnist_run_on_gs_idx_files_logs_the_local_runs_events(data, tmp_path):
  config = tiny_mnist_config()
  config.data.source = "auto"
  _runs_match(config, *data["mnist"], tmp_path)


@pytest.mark.slow
def test_an_image_folder_run_on_gs_logs_the_local_runs_events(data, tmp_path):
  config = tiny_mnist_config()
  config.data.source, config.data.image_size, config.model.num_classes = "auto", 8, 2
  config.batch_size, config.eval_batch_size = 8, 8
  _runs_match(config, *data["pets"], tmp_path)


@pytest.mark.slow
def test_a_text_run_on_gs_tables_logs_the_local_runs_events(data, tmp_path):
  c = load_config("text_classifier")  # test_text_train's _tiny_config
  c.data.max_len, c.data.bucket = 16, 0
  c.model.name, c.model.embed_dim, c.model.hidden_dim = "text_cnn", 8, 8
  c.model.kernel_sizes = (2, 3)
  c.batch_size, c.eval_batch_size = 16, 32
  short_schedule(c)
  _runs_match(c, *data["sst"], tmp_path)


def test_a_text_run_on_a_gs_tfds_copy_logs_the_local_copys_events(data, tmp_path):
  """data.tfds_dir on gs://: TFDS reads the copy's metadata through etils.epath and its
  ArrayRecord files through ArrayRecord's GCS client; the run streams the copy (rows encoded as
  a batch reads them) and logs what the run on the local copy logs."""
  c = load_config("text_classifier")  # as the tables' test above
  c.data.max_len, c.data.bucket, c.data.source, c.data.name = 16, 0, "tfds", TFDS_TEXT
  c.model.name, c.model.embed_dim, c.model.hidden_dim = "text_cnn", 8, 8
  c.model.kernel_sizes = (2, 3)
  c.batch_size, c.eval_batch_size = 16, 32
  short_schedule(c)
  local, url = data["tfds"]
  c.data.tfds_dir = local
  want = _events_of(c, str(tmp_path / "local"))
  assert [e["step"] for e in want if e["event"] == "eval"] == [10, 20], want
  c.data.tfds_dir = url
  assert _events_of(c, str(tmp_path / "gs")) == want
  dataset = tasks.get(c.task).load(c, None)
  assert dataset.source == f"TFDS {TFDS_TEXT} ({url})"
  assert isinstance(dataset.train, stream.StreamingBatches)
  dataset.train.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["plays", "prepared"])
def test_an_lm_run_on_gs_text_or_prepared_ids_logs_the_local_runs_events(data, tmp_path, name):
  _runs_match(tiny_lm_config(data["play"][0]), *data[name], tmp_path)


def test_a_run_on_gs_records_logs_the_local_runs_events(data, tmp_path, monkeypatch):
  """Record shards on gs:// are read from checked local copies (data/records.py's cache, named
  by sha256): the run streams them as it streams the local directory. A shard changed on the
  server (its size kept) is one line naming it, and leaves no copy behind."""
  monkeypatch.setenv("JAXDL_CACHE", str(tmp_path / "cache"))
  config = tiny_mnist_config()
  config.data.source = "files"
  _runs_match(config, *data["records"], tmp_path)
  copies = os.listdir(tmp_path / "cache" / "records")
  assert len(copies) == 2 and all(c.endswith(".array_record") for c in copies)  # train, test
  local, url = data["records"]
  shard = os.path.join(local, "test-00000.array_record")
  damaged = bytearray(pathlib.Path(shard).read_bytes())
  damaged[-100] ^= 0xFF
  changed = f"gs://{BUCKET}/records-changed"
  _upload(local, changed)
  fsspec.filesystem("gs").pipe_file(f"{changed[5:]}/test-00000.array_record", bytes(damaged))
  monkeypatch.setenv("JAXDL_CACHE", str(tmp_path / "cache2"))
  config.data.path = changed
  with pytest.raises(UserError, match=r"records-changed/test-00000.array_record: its sha256 "
                     r"differs from the one in jaxdl-records.json"):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  left = os.listdir(records.cache_dir())  # the train shard's copy, none of the test shard's
  assert len(left) == 1 and ".tmp-" not in left[0] and not os.path.exists(tmp_path / "w")
