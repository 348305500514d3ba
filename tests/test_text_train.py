"""The text classifier end to end on tiny made-up data: outputs, exact resume, the saved
vocabulary, TFDS and offline sources, the confusion sums, and the predict CLI."""

import contextlib
import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import (REPO, assert_same_params, declared_fields, flat_keys, interrupt_at,
                      load_config, read_events, short_schedule, state_like)
import jaxdl
from jaxdl import checkpoint, losses, models, optim, predict, tasks, train
from jaxdl.data.vocab import WordVocab
from jaxdl.tasks import text_classification
from jaxdl.errors import UserError

POS = ["good", "great", "lovely", "superb", "fun", "moving"]
NEG = ["bad", "awful", "dull", "boring", "poor", "mess"]
FILLER = ["the", "film", "is", "a", "very", "movie", "plot", "and", "it", "was"]


def _sentences(n, seed):
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    label = int(rng.integers(0, 2))
    words = list(rng.choice(FILLER, int(rng.integers(1, 9))))
    words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(POS if label else NEG)))
    rows.append((" ".join(words), label))
  return rows


@pytest.fixture(scope="module")
def sst_dir(tmp_path_factory):
  """A GLUE-style directory: train.tsv and dev.tsv, and a labelled test.jsonl."""
  directory = tmp_path_factory.mktemp("sst")
  for split, n, seed in (("train", 320, 0), ("dev", 40, 1)):
    with open(directory / f"{split}.tsv", "w") as f:
      f.write("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in _sentences(n, seed)))
  with open(directory / "test.jsonl", "w") as f:
    f.writelines(json.dumps({"text": s, "label": y}) + "\n" for s, y in _sentences(30, 2))
  return str(directory)


def _tiny_config(sst_dir):
  """configs/text_classifier.py shrunk to seconds: a CNN, a few steps, frequent events."""
  c = load_config("text_classifier")
  c.data.path = sst_dir
  c.data.max_len = 16
  c.data.bucket = 0  # one train shape: one compilation (bucketing has its own test)
  c.model.name = "text_cnn"
  c.model.embed_dim = c.model.hidden_dim = 8
  c.model.kernel_sizes = (2, 3)
  c.batch_size = 16
  c.eval_batch_size = 32
  short_schedule(c)
  c.opt.lr = 0.3  # the default SGD recipe, at a rate that learns in a few dozen steps
  c.train.ema_decay = 0.5  # the default's 0.999 averages ~1,000 steps; these runs take 24-60
  return c


@pytest.fixture
def tiny_text(sst_dir):
  return _tiny_config(sst_dir)


@pytest.fixture(scope="module")
def trained(sst_dir, tmp_path_factory):
  """One tiny run shared by the output and predict tests: (workdir, final metrics, console)."""
  config = _tiny_config(sst_dir)
  config.num_train_steps = 60  # long enough to learn that the sentiment word decides
  config.model.dropout = config.model.embed_dropout = config.model.word_dropout = 0.0
  workdir = str(tmp_path_factory.mktemp("trained") / "w")
  with contextlib.redirect_stdout(io.StringIO()) as out:
    final = train.train_and_evaluate(config, workdir)
  return workdir, final, out.getvalue()


def test_tiny_run_reports_classification_metrics_and_saves_the_vocab(trained):
  workdir, final, out = trained
  assert "data: text files in " in out and "train 320 | dev 40 | test 30 | 2 classes" in out
  assert "max_len 16 truncated 0 train, 0 dev, 0 test" in out
  assert final["dev_count"] == 40 and final["test_count"] == 30
  assert final["dev_accuracy"] == 1.0  # the label word alone decides: an easy task
  assert final["dev_confusion"] == [[final["dev_confusion"][0][0], 0],
                                    [0, final["dev_confusion"][1][1]]]
  assert np.sum(final["dev_confusion"]) == 40 and len(final["test_f1"]) == 2
  assert final["dev_macro_f1"] == 1.0 and "test_macro_precision" in final
  evals = [e for e in read_events(workdir) if e["event"] == "eval"]
  assert [e["step"] for e in evals] == [10, 20, 30, 40, 50] and "dev_confusion" in evals[0]
  vocab = WordVocab.from_json(open(os.path.join(workdir, "vocab.json")).read(), "vocab.json")
  assert vocab.words[:2] == ["<pad>", "<oov>"] and set(POS + NEG) <= set(vocab.words)


@pytest.mark.slow
def test_resume_is_exact_and_reuses_the_saved_vocab(tiny_text, tmp_path, monkeypatch):
  tiny_text.model.word_dropout = 0.2  # exercise the step rng
  tiny_text.train.ema_decay = 0.9  # and the moving average of the params, saved and restored;
  assert tiny_text.train.ema_warmup  # its warm-up decay is a function of the restored step
  full = str(tmp_path / "full")
  expected = train.train_and_evaluate(tiny_text, full)

  resumed = str(tmp_path / "resumed")
  interrupt_at(tiny_text, resumed, monkeypatch, at_step=19)
  assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == ["16", "8"]
  assert train.train_and_evaluate(tiny_text, resumed) == expected
  assert read_events(resumed) == read_events(full)

  dataset = text_classification.load(tiny_text, full)
  like = state_like(models.get(tiny_text.model, **dataset.model_info),
                    optim.make(tiny_text.opt, 24), np.zeros((1, 16), np.int32), ema=True)
  params = []
  for workdir in (full, resumed):
    with checkpoint.Checkpoints(workdir, keep=3) as ckpts:
      state = ckpts.restore_latest(like)[0]
      params.append(jax.tree.leaves((state.params, state.ema_params)))
  for a, b in zip(*params):
    np.testing.assert_array_equal(a, b)  # bitwise


def test_a_saved_vocab_wins_over_rebuilding(tiny_text, tmp_path):
  workdir = tmp_path / "w"
  workdir.mkdir()
  saved = WordVocab(["<pad>", "<oov>", "good"], ["neg", "pos"], min_count=5)
  (workdir / "vocab.json").write_text(saved.to_json())
  dataset = text_classification.load(tiny_text, str(workdir))
  assert dataset.model_info == {"vocab_size": 3, "num_classes": 2, "max_len": 16}
  assert set(np.unique(dataset.evals["dev"]["tokens"])) <= {0, 1, 2}
  (workdir / "vocab.json").write_text(
      WordVocab(["<pad>", "<oov>"], ["only"], min_count=1).to_json())
  with pytest.raises(UserError, match="train split has label 1, but the classes are 0..0"):
    text_classification.load(tiny_text, str(workdir))


def test_length_grouped_batches_cover_each_example_once(tiny_text):
  tiny_text.data.bucket = 8
  dataset = text_classification.load(tiny_text, "/nonexistent")
  train_batches = dataset.train
  widths, rows = set(), []
  for step in range(train_batches.steps_per_epoch):
    batch = train_batches.batch(step)
    widths.add(batch["tokens"].shape[1])
    longest = (batch["tokens"] != 0).sum(1).max()
    assert batch["tokens"].shape[1] == min(16, -(-longest // 8) * 8)
    rows += [tuple(r) for r, m in zip(batch["tokens"], batch["mask"]) if m]
  every = dataset.train.grouped.arrays["tokens"]  # the uncut rows under the cut batches
  assert len(rows) == len(every) == 320 and widths <= {8, 16}
  padded = [r + (0,) * (16 - len(r)) for r in rows]  # each row back at max_len
  assert sorted(padded) == sorted(tuple(r) for r in every)  # every example exactly once


def test_offline_without_data_is_one_line_listing_the_ways(tiny_text, tmp_path):
  tiny_text.data.path = ""
  tiny_text.data.tfds_dir = str(tmp_path)  # an empty TFDS dir: no prepared copy
  workdir = tmp_path / "w"
  with pytest.raises(UserError, match=r"no data for 'glue/sst2': set --config.data.path=DIR .*"
                                      r"prepare 'glue/sst2' with TFDS") as info:
    train.train_and_evaluate(tiny_text, str(workdir))
  assert "\n" not in str(info.value) and not workdir.exists()  # nothing written


@pytest.mark.parametrize("name,config_dir", [("glue/sst2", "glue/sst2/2.0.0"),
                                             ("imdb_reviews", "imdb_reviews/plain_text/1.0.0")])
def test_tfds_text_datasets_without_tensorflow(tiny_text, tmp_path, name, config_dir):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  # mock_data makes examples from the builder's code; glue's is a legacy module TFDS imports
  # lazily. (A real prepared copy needs no code: TFDS reads its dataset_info.json.)
  import tensorflow_datasets.text.glue  # pylint: disable=g-import-not-at-top,unused-import
  tiny_text.data.path, tiny_text.data.name = "", name
  tiny_text.data.tfds_dir = str(tmp_path)
  os.makedirs(tmp_path / config_dir)
  (tmp_path / config_dir / "x.tfrecord-00000-of-00001").write_text("")
  with pytest.raises(UserError, match="no data for"):  # a TFRecord-only copy does not count
    text_classification.load(tiny_text, str(tmp_path / "w"))
  (tmp_path / config_dir / "x.array_record-00000-of-00001").write_text("")
  with tfds.testing.mock_data(num_examples=20):
    dataset = text_classification.load(tiny_text, str(tmp_path / "w"))
  assert dataset.source.startswith(f"TFDS {name}") and dataset.train.size == 20
  assert dataset.eval_split == "dev"  # mock_data makes every split, imdb's 'validation' too
  assert dataset.model_info["num_classes"] == 2


def test_confusion_sums_match_a_hand_computed_matrix():
  logits = np.array([[2., 0, 0], [0, 3, 0], [0, 3, 0], [1, 0, 2], [5, 0, 0]], np.float32)
  labels = np.array([0, 1, 0, 2, 2])
  mask = np.array([1, 1, 1, 1, 0], np.float32)  # the last row is padding
  # predicted 0, 1, 1, 2, (0): rows are true classes, columns predictions.
  expected = [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
  np.testing.assert_array_equal(losses.confusion_matrix(logits, labels, mask), expected)


def test_model_and_task_must_agree(tiny_text, tmp_path):
  from jaxdl import validate  # pylint: disable=g-import-not-at-top
  tiny_text.model.name = "cnn"
  with pytest.raises(UserError, match=r"model.name='cnn': must be one of text_lstm, text_cnn, "
                                      r"text_transformer \(this task's models\)"):
    validate.validate(tiny_text, tasks.get(tiny_text.task), str(tmp_path / "w"))


@pytest.mark.slow
def test_predict_cli_from_arguments_and_stdin(trained, tmp_path):
  workdir = trained[0]
  run = lambda *args, stdin=None: subprocess.run(
      [sys.executable, "-m", "jaxdl.predict", f"--workdir={workdir}", *args], cwd=REPO,
      input=stdin, capture_output=True, text=True, timeout=120)
  result = run("--which=60", "a great and lovely film", "a dull , boring mess")  # the newest
  assert result.returncode == 0, result.stderr
  lines = [line.split("\t") for line in result.stdout.splitlines()]
  assert [(l[0], l[2]) for l in lines] == [("1", "a great and lovely film"),
                                           ("0", "a dull , boring mess")]
  assert all(0.5 < float(l[1]) <= 1 for l in lines)
  result = run(stdin="superb fun\n\nawful plot\n")
  assert [l.split("\t")[0] for l in result.stdout.splitlines()] == ["1", "0"], result.stderr
  result = subprocess.run(
      [sys.executable, "-m", "jaxdl.predict", f"--workdir={tmp_path / 'none'}", "x"], cwd=REPO,
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 1 and result.stderr.count("\n") == 1
  assert result.stderr.startswith("jaxdl: error: ") and "config.json: not found" in result.stderr


def test_load_predicts_with_the_ema_params_as_predict_does(trained):
  """jaxdl.load of a text run: its params are the checkpoint's moving average (the fixture's
  train.ema_decay=0.5), and its predictions are the model's softmax on them, as jaxdl.predict's."""
  workdir = trained[0]
  run = jaxdl.load(workdir)
  assert run.step == 60 and run.model_info == {"vocab_size": run.model_info["vocab_size"],
                                               "num_classes": 2, "max_len": 16}
  like = state_like(run.model, optim.make(run.config.opt, 60), np.zeros((1, 16), np.int32),
                    ema=True)
  with checkpoint.Checkpoints(workdir, keep=3) as ckpts:
    state, _ = ckpts.restore_latest(like)
  assert_same_params(run.variables["params"], state.ema_params)
  sentences = ["a great and lovely film", "a dull , boring mess", "the plot"]
  predicted = run.predict(sentences)
  assert predict.predictor(workdir)(sentences) == predicted
  with open(os.path.join(workdir, "vocab.json")) as f:
    vocab = WordVocab.from_json(f.read(), "vocab.json")
  probs = jax.nn.softmax(run.apply(vocab.encode(sentences, 16)[0]))
  assert [label for label, _ in predicted] == [vocab.label_names[c] for c in probs.argmax(-1)]
  # The predictor runs batches padded to 256 rows, run.apply these 3: rounding may differ.
  np.testing.assert_allclose([p for _, p in predicted], probs.max(-1), rtol=1e-5)


def test_predict_cli_without_a_workdir_or_with_a_bad_flag_is_one_line():
  for args, line in ((["x"], "--workdir is required, e.g. --workdir=runs/sst2"),
                     (["--nosuch", "x"], "Unknown command line flag 'nosuch'")):
    result = subprocess.run([sys.executable, "-m", "jaxdl.predict", *args], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (1, f"jaxdl: error: {line}\n")


def test_every_text_config_field_has_a_comment():
  """Commented where declared: the shared keys in configs/common.py, the rest in the file."""
  fields = declared_fields("text_classifier")
  assert len(fields) > 30 and all("#" in line for line in fields.values()), [
      line for line in fields.values() if "#" not in line]
  assert flat_keys(load_config("text_classifier").to_dict()) == set(fields)


def test_resuming_with_another_length_grouping_is_refused(tiny_text):
  dataset = text_classification.load(tiny_text, "/nonexistent")
  saved = dataset.train.position(7)
  tiny_text.data.sort_pool = 3
  with pytest.raises(UserError, match="data position"):
    text_classification.load(tiny_text, "/nonexistent").train.check_position(7, saved)


@pytest.mark.slow
def test_fused_steps_over_cut_batches_run_one_step_per_call(tiny_text, tmp_path, capsys):
  """Length-cut batches differ in width, and fused steps stack batches of one: the runner runs
  one step per call, says so once, and the run is the unfused run's, bit for bit."""
  tiny_text.data.bucket, tiny_text.num_train_steps = 8, 8
  tiny_text.log_every = tiny_text.eval_every = tiny_text.checkpoint_every = 4
  one = train.train_and_evaluate(tiny_text, str(tmp_path / "one"))
  tiny_text.steps_per_dispatch = 4
  capsys.readouterr()
  assert train.train_and_evaluate(tiny_text, str(tmp_path / "fused")) == one
  assert capsys.readouterr().out.count("differ in shape from step to step") == 1
  assert read_events(str(tmp_path / "fused")) == read_events(str(tmp_path / "one"))


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_starts_afresh_on_new_data(
    tiny_text, sst_dir, tmp_path, monkeypatch):
  """No checkpoint to resume: the vocab.json it left is not reused (the re-run may point at other
  data); the new run builds its own from today's data and replaces the stale file."""
  workdir = str(tmp_path / "w")
  interrupt_at(tiny_text, workdir, monkeypatch, at_step=3)  # before the first checkpoint (8)
  assert not os.path.exists(os.path.join(workdir, "checkpoints", "8"))
  stale = open(os.path.join(workdir, "vocab.json")).read()
  other = tmp_path / "other"
  other.mkdir()
  for split, n, seed in (("train", 320, 5), ("dev", 40, 6)):
    rows = [(s.replace("film", "movie"), 1 - y) for s, y in _sentences(n, seed)]  # other words
    (other / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n"
                                                                     for s, y in rows))
  tiny_text.data.path = str(other)
  train.train_and_evaluate(tiny_text, workdir)
  fresh = str(tmp_path / "fresh")
  train.train_and_evaluate(tiny_text, fresh)
  vocab = open(os.path.join(workdir, "vocab.json")).read()
  assert vocab != stale and vocab == open(os.path.join(fresh, "vocab.json")).read()
  assert read_events(workdir)[-1] == read_events(fresh)[-1]  # the same final metrics as a fresh run


def test_train_size_and_validation_size_carve_the_training_split(tiny_text):
  tiny_text.data.train_size = 0.25  # of the 320 training sentences, by a fixed seed
  dataset = text_classification.load(tiny_text, None)
  assert dataset.describe.startswith("train 80 of 320 | dev 40 | test 30 | 2 classes")
  assert dataset.train.size == 80 and dataset.eval_split == "dev"
  again = text_classification.load(tiny_text, None)  # the same rows every time
  np.testing.assert_array_equal(again.train.rows()["tokens"], dataset.train.rows()["tokens"])
  tiny_text.data.validation_size = 20  # carved first; train_size then keeps 25% of the rest
  dataset = text_classification.load(tiny_text, None)
  assert dataset.describe.startswith("train 75 of 320 | val 20 carved from train | dev 40")
  assert dataset.eval_split == "val" and dataset.final_splits == ("val", "dev", "test")
  assert len(dataset.evals["val"]["label"]) == 20


def test_init_from_encodes_with_the_sources_words_and_this_datas_classes(trained, tmp_path):
  """A new head on a 3-class set: the fine-tuned run encodes with the source run's vocabulary
  (its embeddings are rows of those ids), even for words only the new data has, and takes its
  classes from the new data; the head's weights, of another shape, keep their fresh init."""
  workdir, _, _ = trained
  directory = tmp_path / "three"
  directory.mkdir()
  rows = [(f"{text} {extra}", label + (extra == "meh")) for i, (text, label)
          in enumerate(_sentences(60, 3)) for extra in ["meh" if i % 3 == 0 else "ok"]]
  for split in ("train", "dev"):
    with open(directory / f"{split}.tsv", "w") as f:
      f.write("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
  config = _tiny_config(str(directory))
  config.num_train_steps = 2
  config.init_from, config.init_from_keys = workdir, r"^(?!params\._Head_0\.)"
  new = str(tmp_path / "new")
  with contextlib.redirect_stdout(io.StringIO()) as out:
    train.train_and_evaluate(config, new)
  source = WordVocab.from_json(open(os.path.join(workdir, "vocab.json")).read(), "source")
  vocab = WordVocab.from_json(open(os.path.join(new, "vocab.json")).read(), "new")
  assert vocab.words == source.words and "meh" not in vocab.words
  assert vocab.num_classes == 3 and source.num_classes == 2
  assert f"3 classes | vocab {len(source.words)} (from config.init_from={workdir!r}'s " \
         f"vocab.json)" in out.getvalue()
  assert "init_from: " in out.getvalue() and "kept their fresh init (params._Head_0." in \
      out.getvalue()
