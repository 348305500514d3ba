"""jaxdl.load (jaxdl/runs.py): a trained run read back for Python: its variables (EMA params,
BatchNorm's statistics), its predictions, 'best' and step checkpoints, an NNX model as itself,
the README's example, and one-line errors.

The runs here are tiny MNIST runs (synthetic digits) of a user's own models, written into a
module directory the way tests/test_custom.py writes them: a linen MLP with BatchNorm (with
train.ema_decay and checkpoint.keep_best) and an NNX MLP whose layers are a list.
"""

import json
import os
import re
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from conftest import REPO, assert_same_params, state_like, tiny_mnist_config
from jaxdl import checkpoint, models, optim, predict, runs, train
from jaxdl.errors import UserError
import jaxdl

BN_MODEL = """
import flax.linen as nn
import jax.numpy as jnp

class _Net(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x, *, train):
    x = nn.Dense(16)(x.reshape(x.shape[0], -1).astype(jnp.float32) / 255.0)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
    return nn.Dense(self.num_classes)(nn.relu(x))

def build(model_config, *, num_classes):
  return _Net(num_classes)
"""

# Its layers are a list: NNX's state names them 0 and 1 (ints), which a checkpoint read
# without a target names '0' and '1'.
NNX_MODEL = """
from flax import nnx
import jax.numpy as jnp

class MLP(nnx.Module):
  def __init__(self, model_config, *, num_classes, rngs):
    self.layers = nnx.List([nnx.Linear(28 * 28, 16, rngs=rngs), nnx.Linear(16, 16, rngs=rngs)])
    self.norm = nnx.BatchNorm(16, momentum=0.5, rngs=rngs)
    self.out = nnx.Linear(16, num_classes, rngs=rngs)

  def __call__(self, x, *, train):
    x = x.reshape(x.shape[0], -1).astype(jnp.float32) / 255.0
    for layer in self.layers:
      x = nnx.relu(layer(x))
    return self.out(self.norm(x, use_running_average=not train))
"""

# A user's task module with the names a task needs, and no model_info.
PLAIN_TASK = """
INPUT, UNIT, TRAIN_METRICS, PLOT_METRICS, MODELS = "x", "examples", (), ("loss",), ()
check = load = objective = summarise = brief = None
"""


@pytest.fixture(scope="module")
def user_modules(tmp_path_factory):
  """A directory of the user's modules, importable while this module's tests run."""
  root = tmp_path_factory.mktemp("user_modules")
  for name, source in (("load_bn_model", BN_MODEL), ("load_nnx_model", NNX_MODEL),
                       ("load_plain_task", PLAIN_TASK)):
    (root / f"{name}.py").write_text(source)
  sys.path.insert(0, str(root))
  yield root
  sys.path.remove(str(root))


def _trained(root, model_name, **keys):
  config = tiny_mnist_config()
  config.model.name = model_name
  for key, value in keys.items():
    section, name = key.split(".")
    config[section][name] = value
  workdir = str(root / "w")
  return config, workdir, train.train_and_evaluate(config, workdir)


@pytest.fixture(scope="module")
def bn_run(user_modules, tmp_path_factory):
  """(config, workdir, final): 24 steps; evals at 10, 20 and 24; checkpoints at 8, 16 and every
  eval, the newest 3 and the best (test_loss) kept."""
  return _trained(tmp_path_factory.mktemp("bn"), "load_bn_model:build", **{
      "train.ema_decay": 0.5, "checkpoint.keep_best": "test_loss"})


@pytest.fixture(scope="module")
def nnx_run(user_modules, tmp_path_factory):
  return _trained(tmp_path_factory.mktemp("nnx"), "load_nnx_model:MLP")


def _digits(directory, n=3):
  """n PNG files of seeded random 28x28 grey digits, and their pixels [n, 28, 28, 1]."""
  pixels = np.random.default_rng(0).integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
  paths = [str(directory / f"digit{i}.png") for i in range(n)]
  for path, image in zip(paths, pixels):
    Image.fromarray(image[..., 0]).save(path)
  return paths, pixels


@pytest.mark.slow
def test_load_has_the_checkpoints_ema_params_and_batch_stats_and_predicts_with_them(
    bn_run, tmp_path):
  config, workdir, _ = bn_run
  run = jaxdl.load(workdir)
  assert run.step == 24 and run.config.to_dict() == json.loads(json.dumps(config.to_dict()))
  assert run.model_info == {"num_classes": 10}
  with open(os.path.join(workdir, runs.MODEL_INFO)) as f:
    assert json.load(f) == {"num_classes": 10}  # written by train beside config.json
  # What a resume restores: the state's moving average and BatchNorm's running statistics.
  like = state_like(run.model, optim.make(config.opt, 24), np.zeros((1, 28, 28, 1), np.uint8),
                    ema=True)
  with checkpoint.Checkpoints(workdir, keep=3) as ckpts:
    state, _ = ckpts.restore_latest(like)
  assert_same_params(run.variables, {"params": state.ema_params, **state.model_state})
  assert not np.allclose(run.variables["batch_stats"]["BatchNorm_0"]["mean"], 0)  # trained

  paths, pixels = _digits(tmp_path)
  predicted = run.predict(paths)
  assert predict.predictor(workdir)(paths) == predicted  # the tool is this
  probs = jax.nn.softmax(models.apply(run.model, run.variables, pixels, train=False)[0])
  np.testing.assert_allclose([p for _, p in predicted], probs.max(-1), rtol=1e-5)  # as below
  assert [label for label, _ in predicted] == [str(c) for c in probs.argmax(-1)]
  # run.apply is compiled, models.apply here runs op by op: XLA fuses and rounds otherwise.
  np.testing.assert_allclose(run.apply(pixels), models.apply(run.model, run.variables, pixels,
                                                             train=False)[0], rtol=1e-5, atol=1e-6)
  fresh = {"mean": np.zeros(16, np.float32), "var": np.ones(16, np.float32)}
  assert not np.allclose(run.apply(pixels), models.apply(
      run.model, {**run.variables, "batch_stats": {"BatchNorm_0": fresh}}, pixels,
      train=False)[0])  # the statistics matter, and those are the run's


@pytest.mark.slow
def test_which_picks_the_best_or_a_step_and_a_missing_one_is_one_line(bn_run, nnx_run):
  _, workdir, final = bn_run
  best = jaxdl.load(workdir, "best")
  assert best.step == final["best_step"]
  assert_same_params(best.variables, runs.read_variables(workdir, final["best_step"])[1])
  assert jaxdl.load(workdir, 16).step == jaxdl.load(workdir, "16").step == 16
  assert not np.array_equal(jaxdl.load(workdir, 16).variables["params"]["Dense_0"]["kernel"],
                            jaxdl.load(workdir).variables["params"]["Dense_0"]["kernel"])
  there = ", ".join(sorted((n for n in os.listdir(os.path.join(workdir, "checkpoints"))
                            if n.isdigit()), key=int))
  with pytest.raises(UserError, match=re.escape(f"no checkpoint at step 7 in {workdir}/"
                                                f"checkpoints (there: {there})")):
    jaxdl.load(workdir, 7)
  with pytest.raises(UserError, match=r"^which='newest': must be 'latest', 'best' or a "):
    jaxdl.load(workdir, "newest")
  with pytest.raises(UserError, match=r"^which='best': the run in .* kept no best checkpoint "
                                      r"\(it was trained without --config.checkpoint.keep_best"):
    jaxdl.load(nnx_run[1], "best")


@pytest.mark.slow
def test_an_nnx_model_comes_back_as_itself_with_the_runs_weights(nnx_run, bn_run, tmp_path):
  """run.nnx_model() is the user's NNX class with the checkpoint's params and batch stats: the
  same outputs as the linen apply (nnx.bridge) that trained it; its list's weights included."""
  _, workdir, _ = nnx_run
  run = jaxdl.load(workdir)
  module = run.nnx_model()
  assert type(module).__name__ == "MLP" and set(run.variables) == {"params", "batch_stats"}
  np.testing.assert_array_equal(module.layers[1].kernel[...],
                                run.variables["params"]["layers"][1]["kernel"])
  paths, pixels = _digits(tmp_path)
  # The module runs op by op, run.apply compiled: XLA fuses and rounds otherwise (1e-6 seen).
  np.testing.assert_allclose(module(pixels, train=False), run.apply(pixels), rtol=1e-5,
                             atol=1e-5)
  (label, prob), *_ = run.predict(paths)
  assert label in [str(c) for c in range(10)] and 0 < prob <= 1
  with pytest.raises(UserError, match=r"^model.name='load_bn_model:build' is a linen model, "
                                      r"not an NNX one"):
    jaxdl.load(bn_run[1]).nnx_model()


def _readme_example() -> str:
  """The README block that follows the line naming this test."""
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    text = f.read()
  marker = "<!-- tests/test_runs.py::test_the_readme_example_runs runs the next block -->"
  return text.split(marker, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_the_readme_example_runs(bn_run, tmp_path, monkeypatch, capsys):
  """The example as the README shows it, in a directory where runs/mnist is a trained run."""
  _, workdir, _ = bn_run
  (tmp_path / "runs").mkdir()
  os.symlink(workdir, tmp_path / "runs" / "mnist")
  Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "digit.png")
  monkeypatch.chdir(tmp_path)
  exec(compile(_readme_example(), "README.md", "exec"), {})  # pylint: disable=exec-used
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == "24 {'num_classes': 10}"
  assert re.fullmatch(r"\[\('\d', 0\.\d+\)\]", lines[1]), lines[1]
  assert lines[2] == "['batch_stats', 'params']"


def test_a_workdir_load_cannot_read_is_one_line(user_modules, tmp_path):
  workdir = tmp_path / "w"
  with pytest.raises(UserError, match=r"config.json: not found \(is --workdir a jaxdl run"):
    jaxdl.load(str(workdir))
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps(
      {"task": "load_plain_task", "model": {"name": "load_bn_model:build"}}))
  with pytest.raises(UserError, match=r"model_info.json: not found \(runs before jaxdl wrote "
                                      r"it\), and the run's task 'load_plain_task' has no "
                                      r"model_info\(config, workdir\)"):
    jaxdl.load(str(workdir))
  (workdir / "model_info.json").write_text('{"num_classes": 3}')
  with pytest.raises(UserError, match=r"^no checkpoint in .*checkpoints; train first"):
    jaxdl.load(str(workdir))
  with pytest.raises(UserError, match=r"^which=-1: must be 'latest', 'best' or"):
    jaxdl.load(str(workdir), -1)
