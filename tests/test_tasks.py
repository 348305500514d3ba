"""jaxdl/tasks: the name -> module lookup, and each built-in task module's contract."""

import json
import math
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config, set_keys, tiny_lm_config, tiny_mnist_config
from jaxdl import models, tasks
from jaxdl.errors import UserError
from jaxdl.tasks import image_classification, language_model, text_classification

BUILT_IN = ", ".join(tasks.TASKS)  # 'image_classification, text_classification, language_model'

# What each built-in task declares (tasks/__init__.py's list of names).
DECLARED = {
    "image_classification": ("image", "examples", ("accuracy",), ("loss", "accuracy"),
                             ("cnn",)),
    "text_classification": ("tokens", "examples", ("accuracy",), ("loss", "accuracy"),
                            ("text_lstm", "text_cnn", "text_transformer")),
    "language_model": ("inputs", "tokens", (), ("loss", "perplexity"), ("transformer",)),
}

# The shipped config of each task.
SHIPPED = {"image_classification": "mnist", "text_classification": "text_classifier",
           "language_model": "tiny_lm"}

FULL_TASK = """
INPUT, UNIT, TRAIN_METRICS, PLOT_METRICS, MODELS = "image", "examples", (), ("loss",), ()
def check(config): pass
def load(config, workdir): pass
def objective(config, model): pass
def summarise(sums): pass
def brief(split, m): pass
"""


def _user_package(tmp_path, monkeypatch, **modules: str) -> str:
  """A package `usertasks` in tmp_path with the given modules (name -> source), importable;
  returns the package's directory."""
  package = tmp_path / "usertasks"
  package.mkdir()
  (package / "__init__.py").write_text("")
  for name, source in modules.items():
    (package / f"{name}.py").write_text(source)
  monkeypatch.syspath_prepend(str(tmp_path))
  for name in [m for m in sys.modules if m == "usertasks" or m.startswith("usertasks.")]:
    monkeypatch.delitem(sys.modules, name)
  return str(package)


# ---- tasks.get: the one place a name resolves ----


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_a_built_in_name_resolves_to_its_own_module(name):
  """Each built-in name is its module in jaxdl/tasks, and the module has every required name."""
  module = tasks.get(name)
  assert module.__name__ == f"jaxdl.tasks.{name}"
  assert [attr for attr in tasks.REQUIRED if not hasattr(module, attr)] == []


def test_a_user_module_path_resolves_to_that_module(tmp_path, monkeypatch):
  """'pkg.module' with every required name is imported and returned as the task, unchanged."""
  _user_package(tmp_path, monkeypatch, denoise=FULL_TASK)
  module = tasks.get("usertasks.denoise")
  assert module is sys.modules["usertasks.denoise"]
  assert module.INPUT == "image" and module.PLOT_METRICS == ("loss",)


@pytest.mark.parametrize("name", ["", "bad-name", "image classification", "3d"])
def test_a_name_that_is_neither_built_in_nor_a_module_path_is_refused(name):
  """A name that cannot be a module is refused without an import, listing the built-in ones."""
  with pytest.raises(UserError) as error:
    tasks.get(name)
  assert str(error.value) == (f"config.task={name!r}: not one of {BUILT_IN}, nor a module path")


def test_a_module_lacking_task_names_is_refused_listing_exactly_those(tmp_path, monkeypatch):
  """The error names the module's file and, in REQUIRED's order, only the names it lacks."""
  package = _user_package(tmp_path, monkeypatch, half=(
      "INPUT, UNIT, MODELS = 'image', 'examples', ()\n"
      "def load(config, workdir): pass\ndef check(config): pass\n"))
  with pytest.raises(UserError) as error:
    tasks.get("usertasks.half")
  message = str(error.value)
  assert message.startswith(f"config.task='usertasks.half': the module {package}/half.py lacks "
                            f"TRAIN_METRICS, PLOT_METRICS, objective, summarise, brief (a task "
                            f"module provides INPUT, UNIT, TRAIN_METRICS, ")
  assert message.endswith("see jaxdl/tasks/__init__.py)") and "\n" not in message


def test_a_user_module_that_raises_on_import_is_one_user_error(tmp_path, monkeypatch):
  """Whatever the user's code raises while importing becomes one line naming config.task."""
  _user_package(tmp_path, monkeypatch, broken="raise RuntimeError('no GPU here\\nsecond line')\n")
  with pytest.raises(UserError) as error:
    tasks.get("usertasks.broken")
  assert str(error.value) == (
      f"config.task='usertasks.broken' (not one of {BUILT_IN}): cannot import "
      f"'usertasks.broken' (RuntimeError: no GPU here; is it on PYTHONPATH or in the current "
      f"directory?)")


def test_a_module_path_in_a_package_that_does_not_exist_names_the_missing_package():
  with pytest.raises(UserError, match=r"^config.task='nosuchpkg_jaxdl.task' \(not one of "
                                      r"image_classification, .*\): cannot import "
                                      r"'nosuchpkg_jaxdl.task' \(ModuleNotFoundError: No module "
                                      r"named 'nosuchpkg_jaxdl'"):
    tasks.get("nosuchpkg_jaxdl.task")


# ---- tasks.of_run: a tool's (config, task) of a workdir ----


def test_of_run_returns_the_runs_config_and_task(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"task": "text_classification",
                                                    "data": {"max_len": 7}}))
  config, task = tasks.of_run(str(tmp_path), "predictor", "labels sentences")
  assert task is text_classification and config.data.max_len == 7


def test_of_run_refuses_a_task_without_what_the_tool_needs(tmp_path):
  """A language model has no predictor: the tool's purpose is in the one line."""
  (tmp_path / "config.json").write_text(json.dumps({"task": "language_model"}))
  with pytest.raises(UserError) as error:
    tasks.of_run(str(tmp_path), "predictor", "jaxdl.predict labels with a classifier's run")
  assert str(error.value) == (f"--workdir={tmp_path}: the run's task 'language_model' has no "
                              f"predictor (jaxdl.predict labels with a classifier's run)")


@pytest.mark.parametrize("content, needle", [
    (b'{"task": "language', r"not a jaxdl run's config.json \(Unterminated string"),  # cut short
    (b"\xff\xfe{}", r"not a jaxdl run's config.json \('utf-8' codec"),  # not UTF-8
    (b'["language_model"]', r"not a jaxdl run's config.json \(no 'task' name in it\)"),
    (b'{"data": {}}', r"not a jaxdl run's config.json \(no 'task' name in it\)"),
])
def test_of_run_refuses_a_damaged_or_foreign_config_json_in_one_line(tmp_path, content, needle):
  (tmp_path / "config.json").write_bytes(content)
  with pytest.raises(UserError, match=needle):
    tasks.of_run(str(tmp_path), "predictor", "labels sentences")


# ---- each built-in task module's contract ----


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_each_task_declares_its_names_with_the_right_types(name):
  """INPUT/UNIT are strings, the metric lists tuples of strings, MODELS built-in families, the
  rest callables; and the values are the ones documented for the task."""
  task = tasks.get(name)
  for attr in ("INPUT", "UNIT"):
    assert isinstance(getattr(task, attr), str), attr
  for attr in ("TRAIN_METRICS", "PLOT_METRICS", "MODELS"):
    value = getattr(task, attr)
    assert isinstance(value, tuple) and all(isinstance(v, str) for v in value), attr
  assert set(task.MODELS) <= set(models.FAMILIES)
  assert task.PLOT_METRICS[0] == "loss"
  for attr in ("check", "load", "objective", "summarise", "brief"):
    assert callable(getattr(task, attr)), attr
  assert (task.INPUT, task.UNIT, task.TRAIN_METRICS, task.PLOT_METRICS,
          task.MODELS) == DECLARED[name]


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_each_shipped_config_names_its_task_and_one_of_its_models(name):
  config = load_config(SHIPPED[name])
  assert config.task == name
  assert config.model.name in tasks.get(name).MODELS


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_each_task_accepts_its_shipped_config(name):
  """check() passes the shipped config as it is (so the refusals below are the key's)."""
  assert tasks.get(name).check(load_config(SHIPPED[name])) is None


def test_the_image_task_summarises_and_briefs_hand_made_sums():
  m = image_classification.summarise({"loss_sum": 25.0, "correct": 982.0, "count": 1000.0})
  assert m == {"loss": 0.025, "count": 1000, "accuracy": 0.982}
  assert image_classification.brief("test", m) == "test accuracy 98.20% (982/1000) | test loss 0.0250"


def test_a_summary_of_no_examples_is_zero_not_a_division_error():
  """An empty split (count 0) summarises to zeros, and its brief still prints."""
  m = image_classification.summarise({"loss_sum": 0.0, "correct": 0.0, "count": 0.0})
  assert m == {"loss": 0.0, "count": 0, "accuracy": 0.0}
  assert image_classification.brief("val", m) == "val accuracy 0.00% (0/0) | val loss 0.0000"


def test_the_text_task_briefs_accuracy_loss_and_macro_f1():
  """Class 0: 3 right, 1 called 1; class 1: 1 right, 3 called 0. F1 = 0.6 and 1/3."""
  m = text_classification.summarise({"loss_sum": jnp.float32(4.0), "count": jnp.float32(8.0),
                                     "correct": jnp.float32(4.0),
                                     "confusion": jnp.array([[3, 1], [3, 1]], jnp.float32)})
  assert m["macro_f1"] == pytest.approx((0.6 + 1 / 3) / 2)
  assert text_classification.brief("dev", m) == (
      "dev accuracy 50.00% (4/8) | dev loss 0.5000 | dev macro-F1 46.67%")


def test_the_language_model_briefs_loss_perplexity_and_bits():
  m = language_model.summarise({"loss_sum": math.log(2.0) * 100, "count": 100.0})
  assert m["count"] == 100
  assert language_model.brief("val", m) == "val loss 0.6931 | val ppl 2.00 | 1.000 bits/token"


def test_a_diverged_language_models_perplexity_is_capped_not_an_overflow():
  """exp(loss) overflows past ~709: the perplexity is exp(700) there, the bits stay exact."""
  m = language_model.summarise({"loss_sum": 2000.0, "count": 2.0})
  assert m["loss"] == 1000.0 and m["perplexity"] == math.exp(700.0)
  assert m["bits_per_token"] == pytest.approx(1000.0 / math.log(2))
  assert language_model.brief("val", m).startswith("val loss 1000.0000 | val ppl 1014")


class _ZeroLogits(nn.Module):
  """Logits of zeros (a zero-initialised Dense): every class equally likely, argmax class 0."""
  num_outputs: int
  flatten: bool = True

  @nn.compact
  def __call__(self, x, *, train):
    del train
    x = x.reshape(x.shape[0], -1) if self.flatten else x[..., None]
    return nn.Dense(self.num_outputs, kernel_init=nn.initializers.zeros)(x.astype(jnp.float32))


def _sums_through_objective(task, config, model, batch):
  """The task's own objective(config, model) on one eval batch, then its summarise."""
  fn = task.objective(config, model)
  variables = model.init(jax.random.PRNGKey(0), batch[task.INPUT], train=False)
  loss, sums, _ = fn(variables, batch, jax.random.PRNGKey(1), False)
  return float(loss), task.summarise(sums)


def test_the_image_objective_binds_the_configs_options_and_sums_what_summarise_reads():
  """objective(config, model) takes label smoothing and the shift from config; on 3 unmasked
  examples of 3 classes with uniform logits the loss is log 3 and 2 (the label-0 ones) are
  right; the padded 4th example counts nowhere."""
  config = set_keys(load_config("mnist"), {"loss.label_smoothing": 0.1, "data.random_shift": 3})
  model = _ZeroLogits(3)
  keywords = image_classification.objective(config, model).keywords
  assert keywords["label_smoothing"] == 0.1 and keywords["augment"].keywords == {"max_shift": 3}
  batch = {"image": jnp.ones((4, 2, 2, 1), jnp.uint8), "label": jnp.array([0, 1, 0, 2]),
           "mask": jnp.array([1.0, 1.0, 1.0, 0.0])}
  loss, m = _sums_through_objective(image_classification, config, model, batch)
  assert loss == pytest.approx(math.log(3), rel=1e-6)
  assert m["count"] == 3 and m["accuracy"] == pytest.approx(2 / 3)
  assert set(image_classification.TRAIN_METRICS) <= set(m)


def test_the_text_objective_adds_the_confusion_matrix_summarise_reads():
  config = load_config("text_classifier")
  batch = {"tokens": jnp.arange(20).reshape(4, 5), "label": jnp.array([0, 1, 1, 0]),
           "mask": jnp.ones(4)}
  loss, m = _sums_through_objective(text_classification, config, _ZeroLogits(2), batch)
  assert loss == pytest.approx(math.log(2), rel=1e-6)
  assert m["confusion"] == [[2, 0], [2, 0]] and m["accuracy"] == 0.5
  assert m["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)
  assert set(text_classification.TRAIN_METRICS) <= set(m)


def test_the_language_model_objective_counts_tokens_of_unmasked_windows():
  """Two windows of 4 tokens, the second padding: 4 tokens count; a uniform 4-way guess is
  perplexity 4, 2 bits per token."""
  config = load_config("tiny_lm")
  batch = {"inputs": jnp.array([[1, 2, 3, 0], [0, 0, 0, 0]]),
           "targets": jnp.array([[2, 3, 0, 1], [0, 0, 0, 0]]), "mask": jnp.array([1.0, 0.0])}
  loss, m = _sums_through_objective(language_model, config, _ZeroLogits(4, flatten=False), batch)
  assert loss == pytest.approx(math.log(4), rel=1e-6)
  assert m["count"] == 4
  np.testing.assert_allclose([m["perplexity"], m["bits_per_token"]], [4.0, 2.0], rtol=1e-6)


# ---- each task's check refuses a bad value of its own keys, naming the key ----


@pytest.mark.parametrize("key, value, message", [
    ("model.num_classes", 1, "config.model.num_classes=1: must be > 1"),
    ("data.random_shift", -1, "config.data.random_shift=-1: must be >= 0"),
    ("data.image_size", -8, "config.data.image_size=-8: must be >= 0 (0 keeps the files' sizes)"),
    ("loss.label_smoothing", 1.0, "config.loss.label_smoothing=1.0: must be in [0, 1)"),
    ("data.validation_size", 1.5, "config.data.validation_size=1.5: must be 0 (off), a fraction "
                                  "of the training split in (0, 1), or a whole number of "
                                  "examples >= 1"),
    ("data.source", "pydoc", "config.data.source='pydoc': must be one of auto, files, tfds, "
                             "download, synthetic, sample"),
])
def test_the_image_task_refuses_a_bad_value_of_its_keys(key, value, message):
  config = set_keys(load_config("mnist"), {key: value})
  with pytest.raises(UserError) as error:
    image_classification.check(config)
  assert str(error.value) == message


def test_the_image_task_wants_a_directory_as_data_path(tmp_path):
  """IDX files or ImageFolders live in a directory: a file path is refused by name."""
  (tmp_path / "train.csv").write_text("x\n")
  config = set_keys(load_config("mnist"), {"data.path": str(tmp_path / "train.csv")})
  with pytest.raises(UserError) as error:
    image_classification.check(config)
  assert str(error.value) == f"config.data.path={str(tmp_path / 'train.csv')!r}: is not a directory"


@pytest.mark.parametrize("key, value, message", [
    ("data.max_len", 0, "config.data.max_len=0: must be > 0"),
    ("data.min_count", 0, "config.data.min_count=0: must be >= 1"),
    ("data.max_vocab", 2, "config.data.max_vocab=2: must be 0 (no cap) or >= 3 (<pad>, <oov> and "
                          "a word)"),
    ("data.prefix_backoff", -1, "config.data.prefix_backoff=-1: must be >= 0 (0 = off)"),
    ("data.bucket", -8, "config.data.bucket=-8: must be >= 0 (0 = off)"),
    ("data.sort_pool", -1, "config.data.sort_pool=-1: must be >= 0 (0 = off)"),
    ("data.train_size", 2.5, "config.data.train_size=2.5: must be 0 (off), a fraction of the "
                             "training split in (0, 1), or a whole number of examples >= 1"),
    ("loss.label_smoothing", -0.1, "config.loss.label_smoothing=-0.1: must be in [0, 1)"),
    ("data.source", "download", "config.data.source='download': must be one of auto, files, tfds"),
])
def test_the_text_task_refuses_a_bad_value_of_its_keys(key, value, message):
  config = set_keys(load_config("text_classifier"), {key: value})
  with pytest.raises(UserError) as error:
    text_classification.check(config)
  assert str(error.value) == message


def test_the_text_task_takes_a_data_path_file_or_directory_but_not_a_missing_one(tmp_path):
  config = set_keys(load_config("text_classifier"), {"data.path": str(tmp_path)})
  text_classification.check(config)
  config.data.path = str(tmp_path / "sst2")
  with pytest.raises(UserError) as error:
    text_classification.check(config)
  assert str(error.value) == f"config.data.path={str(tmp_path / 'sst2')!r}: does not exist"


@pytest.mark.parametrize("key, value, message", [
    ("data.vocab", "words", "config.data.vocab='words': must be one of chars, bytes"),
    ("data.val_fraction", 0.0, "config.data.val_fraction=0.0: must be in (0, 1)"),
    ("data.val_fraction", 1.0, "config.data.val_fraction=1.0: must be in (0, 1)"),
    ("data.eval_windows", -1, "config.data.eval_windows=-1: must be >= 0 (0 evaluates every "
                              "validation window)"),
    ("data.source", "sample", "config.data.source='sample': must be one of auto, files, tfds, "
                              "pydoc"),
])
def test_the_language_model_refuses_a_bad_value_of_its_keys(key, value, message):
  config = set_keys(load_config("tiny_lm"), {key: value})
  with pytest.raises(UserError) as error:
    language_model.check(config)
  assert str(error.value) == message


def _small_run_config(name, tmp_path):
  """Each shipped config with small data of its task: synthetic images, a made-up play, a TSV."""
  if name == "image_classification":
    return tiny_mnist_config()
  if name == "language_model":
    return tiny_lm_config(str(tmp_path / "play.txt"))
  rng = np.random.default_rng(0)
  for split, n in (("train", 64), ("dev", 8)):
    rows = [(" ".join(rng.choice(["good", "bad", "film", "a", "plot"], rng.integers(1, 9))),
             int(rng.integers(0, 2))) for _ in range(n)]
    (tmp_path / f"{split}.tsv").write_text(
        "sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
  return set_keys(load_config("text_classifier"), {"data.path": str(tmp_path),
                                                   "batch_size": 16})


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_each_task_gives_each_process_its_rows_of_the_global_batch(name, tmp_path, monkeypatch):
  """On a job of 2 processes, each task's train iterator hands each process its half of global
  batch `step` (jax.make_array_from_process_local_data then assembles it): process 0's rows and
  process 1's, in order, are the one-process batch. (Real processes: test_multihost.py.)"""
  config = _small_run_config(name, tmp_path)
  task = tasks.get(config.task)
  whole = task.load(config, None).train.batch(3)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  parts = []
  for index in (0, 1):
    monkeypatch.setattr(jax, "process_index", lambda index=index: index)
    parts.append(task.load(config, None).train.batch(3))
  assert len(parts[0]["mask"]) == len(whole["mask"]) // 2
  for key, value in whole.items():
    np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), value, key)


def test_summarise_three_classes_with_an_unpredicted_class():
  # Class 2 is never predicted (column of zeros) and class 1 never predicted correctly.
  confusion = np.array([[3, 1, 0], [2, 0, 0], [1, 1, 0]], np.float32)
  report = text_classification.summarise({"loss_sum": 1.0, "count": 8.0, "correct": 3.0,
                                           "confusion": confusion})
  assert report["precision"] == pytest.approx([3 / 6, 0.0, 0.0])
  assert report["recall"] == pytest.approx([3 / 4, 0.0, 0.0])
  assert report["f1"] == pytest.approx([2 * 0.5 * 0.75 / 1.25, 0.0, 0.0])
  assert report["macro_recall"] == pytest.approx(0.75 / 3)
  assert report["confusion"] == [[3, 1, 0], [2, 0, 0], [1, 1, 0]]


def test_summarise_a_classifier_with_a_confusion_matrix():
  # rows = true, cols = predicted: class 0: 3 right, 1 called 1; class 1: 2 right, 2 called 0.
  sums = {"loss_sum": 4.0, "count": 8.0, "correct": 5.0,
          "confusion": np.array([[3, 1], [2, 2]], np.float32)}
  m = text_classification.summarise(sums)
  assert m["loss"] == 0.5 and m["accuracy"] == 5 / 8 and m["count"] == 8
  np.testing.assert_allclose(m["precision"], [3 / 5, 2 / 3])
  np.testing.assert_allclose(m["recall"], [3 / 4, 2 / 4])
  f1 = [2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4), 2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2)]
  np.testing.assert_allclose(m["f1"], f1)
  np.testing.assert_allclose(m["macro_f1"], sum(f1) / 2)
  assert m["confusion"] == [[3, 1], [2, 2]]


def test_summarise_a_class_never_predicted_scores_zero_not_nan():
  m = text_classification.summarise({"loss_sum": 1.0, "count": 2.0, "correct": 1.0,
                                     "confusion": np.array([[1, 0], [1, 0]], np.float32)})
  assert m["precision"] == [0.5, 0.0] and m["f1"][1] == 0.0


def test_summarise_a_language_model():
  m = language_model.summarise({"loss_sum": np.log(4.0) * 10, "count": 10.0})
  assert "accuracy" not in m
  np.testing.assert_allclose([m["perplexity"], m["bits_per_token"]], [4.0, 2.0])
