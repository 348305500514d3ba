"""A user's own model (linen and NNX), task and images, with nothing in jaxdl/ changed.

Each test writes the user's files (a module and a config file) into tmp_path, trains through
`python -m jaxdl.main`, stops the run with SIGTERM and re-runs the same command, and checks that
the result equals an uninterrupted run (train.train_and_evaluate, in this process) bitwise; the models also predict through
`python -m jaxdl.predict`. The shipped examples in experiments/custom/ get a short run each.
"""

import functools
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image
import pytest

from conftest import REPO, run_main, set_keys
from jaxdl import checkpoint, train
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
from jaxdl import metrics
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

def _loss(params, batch, rng, train, *, model):
  clean = batch["image"].astype(jnp.float32) / 255.0
  noisy = clean + 0.3 * jax.random.normal(rng, clean.shape)
  out = model.apply({"params": params}, noisy, train=train)
  mse = ((out - clean) ** 2).mean(axis=(1, 2, 3))
  m = batch["mask"]
  sums = {"loss_sum": (mse * m).sum(), "psnr_sum": (-10 * jnp.log10(mse) * m).sum(),
          "count": m.sum()}
  return sums["loss_sum"] / jnp.maximum(sums["count"], 1.0), sums

def objective(config, model):
  return functools.partial(_loss, model=model)

def summarise(sums):
  sums = metrics.to_host(sums)
  out = metrics.loss_and_count(sums)
  out["psnr"] = float(sums["psnr_sum"]) / max(out["count"], 1)
  return out

def brief(split, m):
  return f"{split} mse {m['loss']:.4f} | {split} PSNR {m['psnr']:.2f} dB"
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
  """A user's config file: a shipped config (or configs/common.py) with their own blocks."""
  path.write_text(textwrap.dedent(f"""
      import sys
      import ml_collections
      sys.path.insert(0, {REPO!r})
      from configs import {base}

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


def _digits(directory, n_train=64, n_test=32, seed=0):
  """Small MNIST-format IDX files of seeded random 'digits' (a bright square per class)."""
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
      images[i, 2 * label:2 * label + 8, 4:12] = 250
    idx.write_idx(f"{directory}/{prefix}-images-idx3-ubyte.gz", images)
    idx.write_idx(f"{directory}/{prefix}-labels-idx1-ubyte.gz", labels)
  return str(directory)


_SCHEDULE = ("--config.batch_size=16", "--config.eval_batch_size=32",
             "--config.num_train_steps=400", "--config.log_every=5", "--config.eval_every=100",
             "--config.checkpoint_every=50", "--config.opt.warmup_steps=4")


def _events(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if not k.endswith("_per_s")}
            for line in f]


def _sigterm_then_resume(args, env):
  """Runs jaxdl.main with `args`, SIGTERMs it after its first train line, then re-runs it."""
  cmd = [sys.executable, "-m", "jaxdl.main", *args]
  # One compilation cache for both processes: the resumed one reuses the first one's programs
  # (a cached executable is what the compiler would build again: results stay bitwise).
  env = {**os.environ, "JAXDL_XLA_CACHE": env["PYTHONPATH"] + "/xla-cache", **env}
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
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
  resumed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr
  assert "resumed from the checkpoint at step" in resumed.stdout, resumed.stdout
  return text


def _train_interrupted_and_whole(tmp_path, monkeypatch, config, extra_args, env):
  """Trains twice: stopped + resumed through the command line, and whole in this process (the
  function jaxdl.main calls, which saves the suite a process start); asserts bitwise."""
  whole, stopped = str(tmp_path / "whole"), str(tmp_path / "stopped")
  args = [f"--config={config}", *extra_args, *_SCHEDULE]
  _sigterm_then_resume([*args, f"--workdir={stopped}"], env)
  monkeypatch.syspath_prepend(env["PYTHONPATH"])
  for name in ("mymodels_linen", "mymodels_nnx", "mytask", "mytask_model"):
    monkeypatch.delitem(sys.modules, name, raising=False)  # the module of this test's tmp_path
  spec = importlib.util.spec_from_file_location("user_config", config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  for arg in [*extra_args, *_SCHEDULE]:  # --config.a.b=v, as config_flags would set them
    key, value = arg[len("--config."):].split("=", 1)
    *parents, leaf = key.split(".")
    old = getattr(functools.reduce(getattr, parents, c), leaf)
    set_keys(c, {key: type(old)(value)})
  train.train_and_evaluate(c, whole)
  assert _events(stopped) == _events(whole)
  got = checkpoint.latest_params(stopped, config)
  want = checkpoint.latest_params(whole, config)
  assert sorted(got) == sorted(want)
  import jax  # pylint: disable=g-import-not-at-top
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bitwise
  return whole


@pytest.mark.parametrize("kind,source,name", [
    ("linen", LINEN_MODEL, "mymodels_linen:build"),
    ("nnx", NNX_MODEL, "mymodels_nnx:MLP")])
def test_a_users_model_trains_resumes_bitwise_and_predicts(tmp_path, monkeypatch, kind, source,
                                                           name):
  module = name.split(":")[0]
  (tmp_path / f"{module}.py").write_text(source)
  config = _config_file(tmp_path / f"{kind}_config.py", "mnist",
                        f"dict(name={name!r}, num_classes=10, hidden=32)")
  data = _digits(tmp_path / "digits")
  env = {"PYTHONPATH": str(tmp_path)}
  whole = _train_interrupted_and_whole(tmp_path, monkeypatch, config,
                                       [f"--config.data.path={data}"], env)
  final = [e for e in _events(whole) if e["event"] == "final"][0]
  assert final["test_accuracy"] > 0.5  # the squares are easy: it learnt

  digit = idx.read_idx(f"{data}/t10k-images-idx3-ubyte.gz")[0]
  Image.fromarray(digit).save(tmp_path / "digit.png")
  predicted = subprocess.run(
      [sys.executable, "-m", "jaxdl.predict", f"--workdir={whole}", str(tmp_path / "digit.png")],
      cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
  assert predicted.returncode == 0, predicted.stderr
  label, prob, path = predicted.stdout.strip().split("\t")
  assert label in [str(c) for c in range(10)] and 0 < float(prob) <= 1 and path.endswith(".png")


def test_a_users_task_trains_and_resumes_bitwise(tmp_path, monkeypatch):
  (tmp_path / "mytask.py").write_text(USER_TASK)
  (tmp_path / "mytask_model.py").write_text(USER_TASK_MODEL)
  config = _config_file(tmp_path / "task_config.py", "common",
                        "dict(name='mytask_model:autoencoder')", task="mytask")
  data = _digits(tmp_path / "digits")
  whole = _train_interrupted_and_whole(tmp_path, monkeypatch, config,
                                       [f"--config.data.path={data}"],
                                       {"PYTHONPATH": str(tmp_path)})
  events = _events(whole)
  assert {"loss", "lr", "psnr"} <= set(events[0])  # the task's TRAIN_METRICS
  final = [e for e in events if e["event"] == "final"][0]
  assert set(final) == {"event", "step", "test_loss", "test_count", "test_psnr"}
  assert final["test_psnr"] > 10  # a learnt reconstruction (the noisy input alone: ~10 dB)


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


def test_image_folders_train_and_predict_with_their_class_names(tmp_path):
  data = _image_folders(tmp_path / "pictures")
  workdir = tmp_path / "w"
  result = run_main("--config=configs/mnist.py", f"--workdir={workdir}",
                    f"--config.data.path={data}", "--config.model.num_classes=2",
                    "--config.batch_size=8", "--config.eval_batch_size=8",
                    "--config.num_train_steps=40", "--config.log_every=10",
                    "--config.opt.warmup_steps=5",
                    "--config.data.random_shift=1")
  assert result.returncode == 0, result.stderr
  assert "image folders in" in result.stdout
  saved = json.loads((workdir / "classes.json").read_text())
  assert saved == {"classes": ["circle", "square"], "image_shape": [12, 16, 3]}
  final = [e for e in _events(workdir) if e["event"] == "final"][0]
  assert final["test_accuracy"] == 1.0  # grey against bright
  # A picture of another size is resized to the training size.
  Image.fromarray(np.full((20, 16, 3), 230, np.uint8)).save(tmp_path / "bright.png")
  predicted = subprocess.run(
      [sys.executable, "-m", "jaxdl.predict", f"--workdir={workdir}", str(tmp_path / "bright.png")],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert predicted.returncode == 0, predicted.stderr
  assert predicted.stdout.startswith("square\t")


def test_image_folders_with_the_wrong_class_count_or_sizes_are_one_line(tmp_path, tiny_mnist):
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


@pytest.mark.parametrize("config", ["resnet_mnist", "mlp_nnx_mnist", "denoise_mnist"])
def test_the_shipped_custom_examples_run(tmp_path, config):
  data = _digits(tmp_path / "digits")
  result = run_main(f"--config=experiments/custom/{config}.py", f"--workdir={tmp_path / 'w'}",
                    f"--config.data.path={data}", "--config.num_train_steps=6",
                    "--config.batch_size=16", "--config.eval_batch_size=32",
                    "--config.log_every=3")
  assert result.returncode == 0, result.stderr
  assert "final:" in result.stdout
