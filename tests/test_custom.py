"""A user's own model (linen and NNX), task and images, with nothing in jaxdl/ changed.

Each test writes the user's files (a module and a config file) into tmp_path, trains through
`python -m jaxdl.main`, stops the run with SIGTERM and re-runs the same command, and checks that
the result equals an uninterrupted run (train.train_and_evaluate, in this process) bitwise; the models also predict through
`python -m jaxdl.predict`. The shipped examples in experiments/custom/ get a short run each.
"""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
from PIL import Image
import pytest

from conftest import (REPO, SUBPROCESS_CACHE, assert_same_params, flag_values, interrupt_at,
                      load_config, load_config_file, read_events, run_main, set_keys,
                      write_mnist_dir)
import jaxdl
from jaxdl import models, predict, runs, tasks, train
from jaxdl.data import idx
from jaxdl.errors import UserError

LINEN_MODEL = """
import flax.linen as nn
import jax.numpy as jnp

class _MLP(nn.Module):
  hidden: int
  num_classes: int

  @nn.compact
  def __call__(self, x, *, train):
    x = x.reshape(x.shape[0], -1).astype(jnp.float32) / 255.0
    x = nn.Dropout(0.3, deterministic=not train)(nn.relu(nn.Dense(self.hidden)(x)))
    return nn.Dense(self.num_classes)(x)

def build(model_config, *, num_classes):
  return _MLP(model_config.hidden, num_classes)
"""

NNX_MODEL = """
from flax import nnx
import jax.numpy as jnp

class MLP(nnx.Module):
  def __init__(self, model_config, *, num_classes, rngs):
    self.hidden = nnx.Linear(28 * 28, model_config.hidden, rngs=rngs)
    self.dropout = nnx.Dropout(0.3, rngs=rngs)
    self.out = nnx.Linear(model_config.hidden, num_classes, rngs=rngs)

  def __call__(self, x, *, train):
    x = x.reshape(x.shape[0], -1).astype(jnp.float32) / 255.0
    return self.out(self.dropout(nnx.relu(self.hidden(x)), deterministic=not train))
"""

# A user task: reconstruct the image from a noisy copy; metrics MSE and PSNR.
USER_TASK = """
import functools
import jax, jax.numpy as jnp
from jaxdl import losses, models
from jaxdl.data import Dataset, TrainBatches, idx, sources, tfds

INPUT, UNIT, TRAIN_METRICS, PLOT_METRICS, MODELS = "image", "examples", ("psnr",), ("loss", "psnr"), ()

def check(config):
  sources.check(config.data, (), path_kind="dir")

def load(config, workdir):
  splits, source = sources.load(
      config.data, read_path=lambda p: (idx.load_idx_dir(p), "IDX"), read_tfds=tfds.read_images,
      ways="no data")
  arrays = {k: {"image": v["image"]} for k, v in splits.items()}
  return Dataset(train=TrainBatches(arrays["train"], config.batch_size, config.seed),
                 evals={"test": arrays["test"]}, eval_split="test", final_splits=("test",),
                 source=source, describe="images")

def _loss(variables, batch, rng, train, *, model):
  clean = batch["image"].astype(jnp.float32) / 255.0
  noisy = clean + 0.3 * jax.random.normal(rng, clean.shape)
  out, model_state = models.apply(model, variables, noisy, train=train)
  mse = ((out - clean) ** 2).mean(axis=(1, 2, 3))
  m = batch["mask"]
  sums = {"loss_sum": (mse * m).sum(), "psnr_sum": (-10 * jnp.log10(mse) * m).sum(),
          "count": m.sum()}
  return sums["loss_sum"] / jnp.maximum(sums["count"], 1.0), sums, model_state

def objective(config, model):
  return functools.partial(_loss, model=model)

def summarise(sums):
  sums = losses.to_host(sums)
  out = losses.loss_and_count(sums)
  out["psnr"] = float(sums["psnr_sum"]) / max(out["count"], 1)
  return out

def brief(split, m):
  return f"{split} mse {m['loss']:.4f} | {split} PSNR {m['psnr']:.2f} dB"
"""

# The user task a version later: it carves a validation split out of train (jaxdl's helper, one
# line), so its config gained data.validation_size; its older runs carved none, which
# RESUME_ADDED declares. (Later definitions of check and load replace the first ones.)
USER_TASK_WITH_VALIDATION = USER_TASK + """
from jaxdl.data import subsets

RESUME_ADDED = {"data.validation_size": 0}  # the value that reproduces runs from before the key

def check(config):
  sources.check(config.data, (), path_kind="dir")
  subsets.check(config.data, "validation_size")

def load(config, workdir):
  splits, source = sources.load(
      config.data, read_path=lambda p: (idx.load_idx_dir(p), "IDX"), read_tfds=tfds.read_images,
      ways="no data")
  images = {k: {"image": v["image"]} for k, v in splits.items()}
  images, sizes = subsets.with_validation(images, config.data)
  evals = {k: v for k, v in images.items() if k != "train"}
  return Dataset(train=TrainBatches(images["train"], config.batch_size, config.seed),
                 evals=evals, eval_split="val" if "val" in evals else "test",
                 final_splits=tuple(evals), source=source, describe=sizes)
"""

USER_TASK_MODEL = """
import flax.linen as nn

class _AE(nn.Module):
  @nn.compact
  def __call__(self, x, *, train):
    h = nn.relu(nn.Conv(8, (3, 3), (2, 2))(x))
    return nn.sigmoid(nn.ConvTranspose(x.shape[-1], (3, 3), (2, 2))(h))

def autoencoder(model_config):
  return _AE()
"""


def _config_file(path, base: str, model_block: str, task: str = "") -> str:
  """A user's config file: a shipped config (or configs/common.py) with their own blocks,
  imported from the installed jaxdl as a config file anywhere imports it."""
  path.write_text(textwrap.dedent(f"""
      import ml_collections
      from jaxdl.configs import {base}

      def get_config(preset=None):
        c = {base}.get_config()
        c.unlock()
        {f"c.task = {task!r}" if task else ""}
        c.model = ml_collections.ConfigDict({model_block})
        {"c.data = ml_collections.ConfigDict(dict(source='auto', name='mnist', path='', tfds_dir=''))" if task else ""}
        c.lock()
        return c
      """))
  return str(path)


_SCHEDULE = ("--config.batch_size=16", "--config.eval_batch_size=32",
             "--config.num_train_steps=400", "--config.log_every=5", "--config.eval_every=100",
             "--config.checkpoint_every=50", "--config.opt.warmup_steps=4")


def _digits(tmp_path):
  """Small MNIST-format IDX files of easy 'digits' (a bright square per class)."""
  data = str(tmp_path / "digits")
  write_mnist_dir(data, n_train=64, n_test=32, learnable=True)
  return data


def _user_config(monkeypatch, user_dir, config_file, args):
  """The user's config file, loaded in this process as jaxdl.main loads it, with their modules
  (in user_dir) importable and the --config.KEY=VALUE flags `args` set."""
  monkeypatch.syspath_prepend(str(user_dir))
  for name in ("mymodels_linen", "mymodels_nnx", "mytask", "mytask_model"):
    monkeypatch.delitem(sys.modules, name, raising=False)  # another test's tmp_path copy
  return set_keys(load_config_file(config_file), flag_values(args))


def _sigterm_then_resume(args, env, cwd):
  """Runs jaxdl.main with `args` in `cwd`, SIGTERMs it after its first train line, then re-runs
  it."""
  cmd = [sys.executable, "-m", "jaxdl.main", *args]
  env = {**os.environ, "JAXDL_XLA_CACHE": SUBPROCESS_CACHE, **env}
  proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  out = []
  for line in proc.stdout:
    out.append(line)
    if line.startswith("step "):
      proc.send_signal(signal.SIGTERM)
      break
  out.append(proc.communicate(timeout=300)[0])
  text = "".join(out)
  assert proc.returncode == 0 and "SIGTERM: saved the checkpoint at step" in text, text
  resumed = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr
  assert "resumed from the checkpoint at step" in resumed.stdout, resumed.stdout
  return text


def _model_config(tmp_path, kind, source, name):
  """The user's model module and config file (the MNIST config with their model block)."""
  (tmp_path / f"{name.split(':')[0]}.py").write_text(source)
  return _config_file(tmp_path / f"{kind}_config.py", "mnist",
                      f"dict(name={name!r}, num_classes=10, hidden=32)")


def _predicts_a_digit(predictions, image):
  (label, prob), = predictions
  assert label in [str(c) for c in range(10)] and 0 < float(prob) <= 1, (label, prob, image)


@pytest.mark.slow
def test_a_users_linen_model_trains_resumes_bitwise_and_predicts_from_the_command_line(
    tmp_path, monkeypatch):
  """The user's module on PYTHONPATH and their config file (`from jaxdl.configs import mnist`),
  through the commands a user types in their own directory, outside the repository: trained,
  stopped by SIGTERM and resumed; equal bit for bit to an uninterrupted run (in this process:
  the function jaxdl.main calls); then jaxdl.predict labels a picture."""
  config = _model_config(tmp_path, "linen", LINEN_MODEL, "mymodels_linen:build")
  args = [f"--config.data.path={_digits(tmp_path)}", *_SCHEDULE]
  stopped, whole = str(tmp_path / "stopped"), str(tmp_path / "whole")
  _sigterm_then_resume([f"--config={config}", *args, f"--workdir={stopped}"],
                       {"PYTHONPATH": str(tmp_path)}, cwd=tmp_path)
  train.train_and_evaluate(_user_config(monkeypatch, tmp_path, config, args), whole)
  assert read_events(stopped) == read_events(whole)
  assert_same_params(runs.read_variables(stopped)[1],
                     runs.read_variables(whole)[1])  # bitwise
  final = [e for e in read_events(whole) if e["event"] == "final"][0]
  assert final["test_accuracy"] > 0.5  # the squares are easy: it learnt

  digit = idx.read_idx(f"{tmp_path}/digits/t10k-images-idx3-ubyte.gz")[0]
  Image.fromarray(digit).save(tmp_path / "digit.png")
  predicted = subprocess.run(
      [sys.executable, "-m", "jaxdl.predict", f"--workdir={whole}", str(tmp_path / "digit.png")],
      cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True,
      text=True, timeout=300)
  assert predicted.returncode == 0, predicted.stderr
  label, prob, path = predicted.stdout.strip().split("\t")
  assert path.endswith("digit.png")
  _predicts_a_digit([(label, prob)], path)


@pytest.mark.slow
def test_a_users_nnx_model_trains_resumes_bitwise_and_predicts(tmp_path, monkeypatch):
  """An NNX module (wrapped by nnx.bridge) in the same state, checkpoints and step as linen's:
  interrupted and resumed, it ends bit for bit as an uninterrupted run, and predicts. (The
  command-line path of a user's module is the linen test's.)"""
  config = _model_config(tmp_path, "nnx", NNX_MODEL, "mymodels_nnx:MLP")
  c = _user_config(monkeypatch, tmp_path, config,
                   [f"--config.data.path={_digits(tmp_path)}", *_SCHEDULE])
  stopped, whole = str(tmp_path / "stopped"), str(tmp_path / "whole")
  interrupt_at(c, stopped, monkeypatch, at_step=77)  # dropout: the step rng resumes too
  train.train_and_evaluate(c, stopped)
  train.train_and_evaluate(c, whole)
  assert read_events(stopped) == read_events(whole)
  assert_same_params(runs.read_variables(stopped)[1],
                     runs.read_variables(whole)[1])  # bitwise
  final = [e for e in read_events(whole) if e["event"] == "final"][0]
  assert final["test_accuracy"] > 0.5  # the squares are easy: it learnt
  digit = idx.read_idx(f"{tmp_path}/digits/t10k-images-idx3-ubyte.gz")[0]
  Image.fromarray(digit).save(tmp_path / "digit.png")
  _predicts_a_digit(predict.predictor(whole)([str(tmp_path / "digit.png")]), "digit.png")


@pytest.mark.slow
def test_a_users_task_trains_and_resumes_bitwise(tmp_path, monkeypatch):
  """A task module of the user's own (its data, loss, metrics), with their model: interrupted
  and resumed, it ends bit for bit as an uninterrupted run, and logs the task's metrics."""
  (tmp_path / "mytask.py").write_text(USER_TASK)
  (tmp_path / "mytask_model.py").write_text(USER_TASK_MODEL)
  config = _config_file(tmp_path / "task_config.py", "common",
                        "dict(name='mytask_model:autoencoder')", task="mytask")
  c = _user_config(monkeypatch, tmp_path, config,
                   [f"--config.data.path={_digits(tmp_path)}", *_SCHEDULE])
  stopped, whole = str(tmp_path / "stopped"), str(tmp_path / "whole")
  interrupt_at(c, stopped, monkeypatch, at_step=77)  # the noise comes from the step rng
  train.train_and_evaluate(c, stopped)
  train.train_and_evaluate(c, whole)
  assert read_events(stopped) == read_events(whole)
  assert_same_params(runs.read_variables(stopped)[1],
                     runs.read_variables(whole)[1])  # bitwise
  events = read_events(whole)
  assert {"loss", "lr", "psnr"} <= set(events[0])  # the task's TRAIN_METRICS
  final = [e for e in events if e["event"] == "final"][0]
  assert set(final) == {"event", "step", "test_loss", "test_count", "test_psnr"}
  assert final["test_psnr"] > 10  # a learnt reconstruction (the noisy input alone: ~10 dB)


def test_a_users_task_that_adds_a_key_resumes_its_older_workdirs_at_the_declared_value(
    tmp_path, monkeypatch, capsys):
  """A workdir of the user's task, trained before its config had data.validation_size, resumes
  under the task's next version (which carves a val split, default 0.25) at the value that its
  RESUME_ADDED declares (0: no carving, the same training rows), and the run says so. Without
  the declaration the same resume is refused."""
  monkeypatch.setattr(sys, "dont_write_bytecode", True)  # the module is rewritten in place
  monkeypatch.delitem(sys.modules, "mytask_versions", raising=False)
  (tmp_path / "mytask_versions.py").write_text(USER_TASK)
  (tmp_path / "mytask_model.py").write_text(USER_TASK_MODEL)
  config = _config_file(tmp_path / "task_config.py", "common",
                        "dict(name='mytask_model:autoencoder')", task="mytask_versions")
  args = [f"--config.data.path={_digits(tmp_path)}", "--config.batch_size=16",
          "--config.eval_batch_size=32", "--config.num_train_steps=4", "--config.log_every=2",
          "--config.checkpoint_every=4"]
  workdir = str(tmp_path / "w")
  train.train_and_evaluate(_user_config(monkeypatch, tmp_path, config, args), workdir)

  (tmp_path / "mytask_versions.py").write_text(USER_TASK_WITH_VALIDATION)  # the next version
  monkeypatch.delitem(sys.modules, "mytask_versions")
  c = _user_config(monkeypatch, tmp_path, config, [*args, "--config.num_train_steps=8"])
  c.unlock()
  c.data.validation_size = 0.25  # the key's default in the task's config, from now on
  c.lock()
  task = tasks.get(c.task)
  with monkeypatch.context() as patch:
    patch.delattr(task, "RESUME_ADDED")
    with pytest.raises(UserError, match=r"these keys differ from its config.json: "
                                        r"data.validation_size: None -> 0.25\. Use a new"):
      train.train_and_evaluate(c, workdir)
  capsys.readouterr()
  final = train.train_and_evaluate(c, workdir)
  out = capsys.readouterr().out
  assert "resumed from the checkpoint at step 4" in out
  assert ("resuming with data.validation_size=0, not 0.25: this workdir's run was made before "
          "the key existed") in out
  assert json.loads((tmp_path / "w" / "config.json").read_text())["data"]["validation_size"] == 0
  assert set(final) == {"test_loss", "test_count", "test_psnr"}  # no val carved: test only
  assert c.data.validation_size == 0.25  # the caller's config is left as it was given


@pytest.mark.parametrize("value,needle", [
    ("nosuchmodule:build", "cannot import 'nosuchmodule'"),
    ("mymodels_linen:nothere", "has no 'nothere'"),
    ("mymodels_linen:NOT_CALLABLE", "is a int, not a callable"),
    ("mymodels_linen:not_a_module", "returned a dict, not a Flax module"),
    ("mymodels_linen", "must be one of cnn (this task's models), or PACKAGE.MODULE:ATTR")])
def test_a_bad_user_model_is_one_line_and_writes_nothing(tmp_path, monkeypatch, tiny_mnist,
                                                         value, needle):
  (tmp_path / "mymodels_linen.py").write_text(
      LINEN_MODEL + "\nNOT_CALLABLE = 3\ndef not_a_module(model_config, **info):\n  return {}\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.delitem(sys.modules, "mymodels_linen", raising=False)  # another test's copy
  tiny_mnist.model.name = value
  with pytest.raises(UserError) as error:
    train.train_and_evaluate(tiny_mnist, str(tmp_path / "w"))
  message = str(error.value)
  assert message.startswith("config.model.name=") and needle in message and "\n" not in message
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_a_bad_user_model_or_task_on_the_command_line_is_one_line(tmp_path, monkeypatch,
                                                                  tiny_mnist):
  (tmp_path / "halftask.py").write_text("INPUT = 'image'\ndef load(config, workdir): pass\n")
  result = run_main("--config=configs/mnist.py", f"--workdir={tmp_path / 'w'}",
                    "--config.model.name=nosuchmodule:build")
  assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
  assert result.stderr.startswith("jaxdl: error: config.model.name='nosuchmodule:build': cannot "
                                  "import 'nosuchmodule'")
  result = run_main("--config=configs/mnist.py", f"--workdir={tmp_path / 'w'}",
                    "--config.task=halftask", env={"PYTHONPATH": str(tmp_path)})
  assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
  assert "config.task='halftask': the module" in result.stderr and "lacks UNIT" in result.stderr
  monkeypatch.syspath_prepend(str(tmp_path))
  tiny_mnist.task = "nosuch.task"
  with pytest.raises(UserError, match=r"config.task='nosuch.task' \(not one of .*\): cannot "
                                      r"import 'nosuch.task' \(ModuleNotFoundError"):
    train.train_and_evaluate(tiny_mnist, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def _image_folders(root, sizes=((16, 12), (16, 12))):
  """ImageFolder layout: train/ and test/, classes 'circle' (grey) and 'square' (bright)."""
  rng = np.random.default_rng(0)
  for split, n in (("train", 12), ("test", 4)):
    for c, name in enumerate(("circle", "square")):
      os.makedirs(root / split / name, exist_ok=True)
      for i in range(n):
        pixels = rng.integers(0, 40, (*sizes[c][::-1], 3)).astype(np.uint8) + 200 * c
        Image.fromarray(pixels, "RGB").save(root / split / name / f"{i}.png")
  return str(root)


@pytest.mark.slow
def test_image_folders_train_and_predict_with_their_class_names(tmp_path, capsys):
  """Pictures in class folders train the shipped image task; jaxdl.predict names the class."""
  config = set_keys(load_config("mnist"), {
      "data.path": _image_folders(tmp_path / "pictures"), "model.num_classes": 2,
      "batch_size": 8, "eval_batch_size": 8, "num_train_steps": 40, "log_every": 10,
      "opt.warmup_steps": 5, "data.random_shift": 1})
  workdir = tmp_path / "w"
  train.train_and_evaluate(config, str(workdir))
  assert "image folders in" in capsys.readouterr().out
  saved = json.loads((workdir / "classes.json").read_text())
  assert saved == {"classes": ["circle", "square"], "image_shape": [12, 16, 3]}
  final = [e for e in read_events(str(workdir)) if e["event"] == "final"][0]
  assert final["test_accuracy"] == 1.0  # grey against bright
  # A picture of another size is resized to the training size.
  Image.fromarray(np.full((20, 16, 3), 230, np.uint8)).save(tmp_path / "bright.png")
  predicted = subprocess.run(
      [sys.executable, "-m", "jaxdl.predict", f"--workdir={workdir}", str(tmp_path / "bright.png")],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert predicted.returncode == 0, predicted.stderr
  assert predicted.stdout.startswith("square\t")


def test_image_folders_with_the_wrong_class_count_or_sizes_are_one_line(tmp_path, tiny_mnist):
  tiny_mnist.model.name = "cnn"  # the size rule is the seed CNN's
  tiny_mnist.data.source, tiny_mnist.data.path = "auto", _image_folders(tmp_path / "pictures")
  with pytest.raises(UserError, match="has 2 class folders but config.model.num_classes=10; "
                                      "set --config.model.num_classes=2"):
    train.train_and_evaluate(tiny_mnist, str(tmp_path / "w"))
  tiny_mnist.model.num_classes = 2
  tiny_mnist.data.path = _image_folders(tmp_path / "mixed", sizes=((16, 12), (18, 12)))
  with pytest.raises(UserError, match=r"18x12 pixels, but .* is 16x12; set data.image_size"):
    train.train_and_evaluate(tiny_mnist, str(tmp_path / "w"))
  tiny_mnist.data.path = _image_folders(tmp_path / "tiny", sizes=((8, 8), (8, 8)))
  with pytest.raises(UserError, match=r"the cnn model needs images of at least 10x10 pixels, "
                                      r"these are 8x8 \(set data.image_size >= 10\)"):
    train.train_and_evaluate(tiny_mnist, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
@pytest.mark.parametrize("config", ["denoise_mnist", "diabetes"])
def test_the_shipped_custom_examples_run(tmp_path, monkeypatch, config):
  """Each example of experiments/custom/ (its config file, model and task modules, imported by
  their paths from the repository root, as jaxdl.main there imports them) trains a few steps;
  the regression keeps its best checkpoint. (The BatchNorm examples train in
  test_a_batchnorm_example_killed_mid_run_resumes_bitwise.)"""
  monkeypatch.syspath_prepend(REPO)
  c = load_config_file(f"{REPO}/experiments/custom/{config}.py")
  keys = {"num_train_steps": 6, "batch_size": 16, "eval_batch_size": 32, "log_every": 3}
  if config == "diabetes":  # scikit-learn's table (442 rows): no data to write
    keys["eval_every"] = 3   # two evals, each saved for checkpoint.keep_best
  else:
    keys["data.path"] = _digits(tmp_path)
  final = train.train_and_evaluate(set_keys(c, keys), str(tmp_path / "w"))
  assert final["test_count"] == (88 if config == "diabetes" else 32)
  assert np.isfinite(final["test_loss"])
  if config == "diabetes":
    assert final["best_step"] in (3, 6) and np.isfinite(final["test_r2"])
  # jaxdl.load of a user's task and model: the checkpoint's variables, whose outputs give the
  # run's own final test figures (diabetes: its RMSE from the table's test rows).
  workdir = str(tmp_path / "w")
  run = jaxdl.load(workdir)
  assert run.step == 6
  assert_same_params(run.variables, runs.read_variables(workdir)[1])
  if config == "diabetes":
    regression = _regression(monkeypatch)
    test = regression.splits(c.data)[0]["test"]
    pred = run.apply(test["features"])
    m = regression.summarise(regression.sums_of(pred, test["target"], np.ones_like(pred)))
    assert m["count"] == final["test_count"]
    np.testing.assert_allclose(m["rmse"], final["test_rmse"], rtol=1e-5)
  else:
    x = np.random.default_rng(0).random((2, 28, 28, 1), np.float32)
    np.testing.assert_allclose(run.apply(x), models.apply(run.model, run.variables, x,
                                                          train=False)[0], rtol=1e-5, atol=1e-6)
  with pytest.raises(UserError, match=r"has no predictor \(run.apply gives the model's"):
    run.predict(["anything"])


def _regression(monkeypatch):
  """experiments/custom/regression.py, imported as its config names it (from the repo root)."""
  monkeypatch.syspath_prepend(REPO)
  import importlib  # pylint: disable=g-import-not-at-top
  return importlib.import_module("experiments.custom.regression")


def test_the_regression_example_scores_rmse_and_r2_from_sums(monkeypatch):
  """The regression example's summarise, on sums added over two batches (a masked padding row
  in the second): RMSE and R² as computed by hand. Targets 1, 2, 3, 4 (mean 2.5, SST 5),
  predictions 1, 2, 3, 5: SSE 1, RMSE sqrt(1/4) = 0.5, R² = 1 - 1/5 = 0.8."""
  regression = _regression(monkeypatch)
  first = regression.sums_of(np.float32([1, 2]), np.float32([1, 2]), np.float32([1, 1]))
  second = regression.sums_of(np.float32([3, 5, 99]), np.float32([3, 4, 0]),
                              np.float32([1, 1, 0]))
  m = regression.summarise({k: first[k] + second[k] for k in first})
  assert m["count"] == 4 and m["loss"] == 0.25 and m["rmse"] == 0.5
  assert abs(m["r2"] - 0.8) < 1e-12
  # The split's mean predicted for every row: R² 0; a split without spread has no R².
  flat = regression.summarise(regression.sums_of(np.float32([2.5] * 4), np.float32([1, 2, 3, 4]),
                                                 np.ones(4, np.float32)))
  assert flat["r2"] == 0.0 and flat["rmse"] == np.sqrt(1.25)
  assert np.isnan(regression.summarise(regression.sums_of(
      np.float32([1, 2]), np.float32([3, 3]), np.ones(2, np.float32)))["r2"])


def test_the_regression_example_without_scikit_learn_is_one_line(monkeypatch):
  """The task's check names the missing package and how to install it, in one line."""
  regression = _regression(monkeypatch)
  find_spec = regression.importlib.util.find_spec
  monkeypatch.setattr(regression.importlib.util, "find_spec",
                      lambda name, *a: None if name == "sklearn" else find_spec(name, *a))
  config = load_config_file(f"{REPO}/experiments/custom/diabetes.py")
  with pytest.raises(UserError, match=r"scikit-learn is not installed: pip install -e "
                                      r"'\.\[examples\]'") as error:
    regression.check(config)
  assert "\n" not in str(error.value)


def test_the_package_list_has_every_package_and_the_configs():
  """pyproject.toml lists the packages an install holds (no package finder: jaxdl.configs is
  the top-level configs/ directory): every package under jaxdl/ must be in the list, or a
  regular install lacks it while an editable one, which maps jaxdl/ whole, still has it."""
  import tomllib  # pylint: disable=g-import-not-at-top
  with open(f"{REPO}/pyproject.toml", "rb") as f:
    setuptools = tomllib.load(f)["tool"]["setuptools"]
  found = {os.path.relpath(d, REPO).replace(os.sep, ".")
           for d, _, names in os.walk(f"{REPO}/jaxdl") if "__init__.py" in names}
  assert sorted(setuptools["packages"]) == sorted(found | {"jaxdl.configs"})
  assert setuptools["package-dir"] == {"jaxdl.configs": "configs"}
  import jaxdl.configs  # pylint: disable=g-import-not-at-top
  assert os.path.samefile(os.path.dirname(jaxdl.configs.__file__), f"{REPO}/configs")


# The BatchNorm examples at a smaller size, and the steps of their killed runs: a checkpoint
# every 4 steps, the kill after the train line of step 10, 12 steps in all. The line of step 8
# comes before its save, and checkpoint 4's async save may still be writing then (a loaded CI
# machine showed it); the save of step 8 waits for it, so at step 10 checkpoint 4 is on disk
# and 8 may be.
BATCHNORM_EXAMPLES = {"resnet_mnist": ["--config.model.widths=(8, 8)"],
                      "cnn_nnx_mnist": ["--config.model.widths=(8, 8)", "--config.model.hidden=16"]}
_KILLED = ("--config.batch_size=16", "--config.eval_batch_size=32",
           "--config.num_train_steps=12", "--config.log_every=2", "--config.eval_every=6",
           "--config.checkpoint_every=4", "--config.opt.warmup_steps=4",
           "--config.data.validation_size=0")


@pytest.mark.slow
@pytest.mark.parametrize("name", BATCHNORM_EXAMPLES)
def test_a_batchnorm_example_killed_mid_run_resumes_bitwise(tmp_path, monkeypatch, name):
  """A shipped model with state (BatchNorm's statistics in the checkpoints): its run SIGKILLed
  mid-run (no save of the step at hand) and re-run with the same command ends bit for bit as an
  uninterrupted run, statistics included; training moved them, and the run predicts."""
  config = f"{REPO}/experiments/custom/{name}.py"
  args = [f"--config.data.path={_digits(tmp_path)}", *_KILLED, *BATCHNORM_EXAMPLES[name]]
  killed, whole = str(tmp_path / "killed"), str(tmp_path / "whole")
  cmd = [sys.executable, "-m", "jaxdl.main", f"--config={config}", *args, f"--workdir={killed}"]
  env = {**os.environ, "JAXDL_XLA_CACHE": SUBPROCESS_CACHE}
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  seen = []
  for line in proc.stdout:
    seen.append(line)
    if line.split("/")[0].split() == ["step", "10"]:  # the line "step 10/12 | ..."
      proc.kill()
      break
  proc.communicate(timeout=300)
  assert proc.returncode == -signal.SIGKILL, "".join(seen)
  resumed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr
  assert re.search(r"resumed from the checkpoint at step (4|8) ", resumed.stdout), resumed.stdout
  monkeypatch.syspath_prepend(REPO)
  train.train_and_evaluate(set_keys(load_config_file(config), flag_values(args)), whole)
  assert read_events(killed) == read_events(whole)
  got, want = runs.read_variables(killed)[1], runs.read_variables(whole)[1]
  assert set(want) == {"params", "batch_stats"}
  assert_same_params(got, want)  # bitwise, the statistics too
  means = [v for path, v in jax.tree_util.tree_leaves_with_path(want["batch_stats"])
           if "mean" in jax.tree_util.keystr(path)]
  assert means and all(np.any(m != 0) for m in means)  # updated by training (init: zeros)
  # jaxdl.load gives the checkpoint's variables, and its predictions (the tool's, which is
  # run.predict) are the model's own softmax on the picture's pixels.
  digits = idx.read_idx(f"{tmp_path}/digits/t10k-images-idx3-ubyte.gz")[:3]
  paths = [str(tmp_path / f"digit{i}.png") for i in range(len(digits))]
  for path, digit in zip(paths, digits):
    Image.fromarray(digit).save(path)
  run = jaxdl.load(whole)
  assert run.step == 12  # its variables are the checkpoint's (NNX's list indices as ints)
  assert_same_params(jax.tree.leaves(run.variables), jax.tree.leaves(want))
  predicted = predict.predictor(whole)(paths)
  probs = jax.nn.softmax(models.apply(run.model, run.variables, digits[..., None], train=False)[0])
  assert [label for label, _ in predicted] == [str(c) for c in probs.argmax(-1)]
  np.testing.assert_allclose([p for _, p in predicted], probs.max(-1), rtol=1e-5)
  if name == "cnn_nnx_mnist":  # the user's NNX class itself, with the run's weights
    np.testing.assert_allclose(run.nnx_model()(digits[..., None], train=False),
                               run.apply(digits[..., None]), rtol=1e-5, atol=1e-5)
