"""jaxdl/validate.py: the shared config checks, and that it asks the optimizer, the model family
and the task for theirs.

(tests/test_main.py, test_parallel.py, test_profiler.py and the model tests hold other bad
values; these are the rules not checked there, the order, the workdir and the delegation.)
"""

import os
import types

import pytest

from conftest import load_config, set_keys
from jaxdl import tasks, validate
from jaxdl.errors import UserError

SHIPPED = [("mnist", None), ("mnist", "seed"), ("text_classifier", None), ("tiny_lm", None),
           ("tiny_lm", "nanogpt_cpu"), ("tiny_lm", "gpt2_small")]


def _refusal(config, workdir: str, task=None) -> str:
  """validate's one-line message for config (its own task unless `task` is given)."""
  with pytest.raises(UserError) as error:
    validate.validate(config, task or tasks.get(config.task), workdir)
  message = str(error.value)
  assert "\n" not in message, message
  return message


@pytest.mark.parametrize("name, preset", SHIPPED)
def test_every_shipped_config_and_preset_passes(tmp_path, name, preset):
  config = load_config(name, preset)
  assert validate.validate(config, tasks.get(config.task), str(tmp_path / "w")) is None


@pytest.mark.parametrize("key, value, message", [
    ("batch_size", 0, "config.batch_size=0: must be > 0"),
    ("checkpoint_every", 0, "config.checkpoint_every=0: must be > 0"),
    ("keep_checkpoints", -1, "config.keep_checkpoints=-1: must be > 0"),
    ("steps_per_dispatch", 0, "config.steps_per_dispatch=0: must be > 0"),
    ("num_epochs", 0, "config.num_epochs=0: must be > 0 (or set num_train_steps > 0)"),
    ("min_train_steps", -1, "config.min_train_steps=-1: must be >= 0 (0 = num_epochs alone)"),
    ("eval_every", -5, "config.eval_every=-5: must be >= 0 (0 evaluates once per epoch)"),
    ("train.grad_accum_steps", 0, "config.train.grad_accum_steps=0: must be >= 1 (1 = the whole "
                                  "batch at once)"),
    ("train.ema_decay", -0.5, "config.train.ema_decay=-0.5: must be in [0, 1) (0 = off)"),
    ("parallel.fsdp_min_size", -1, "config.parallel.fsdp_min_size=-1: must be >= 0"),
])
def test_a_bad_shared_value_is_one_line_naming_the_key_and_value(tmp_path, key, value, message):
  config = set_keys(load_config("mnist"), {key: value})
  assert _refusal(config, str(tmp_path / "w")) == message


@pytest.mark.parametrize("mesh_shape", [(0,), (True,), (2, 0), (2.0,)])
def test_a_mesh_shape_of_zero_or_non_integer_counts_is_refused(tmp_path, mesh_shape):
  config = set_keys(load_config("mnist"), {"parallel.mesh_shape": mesh_shape})
  assert _refusal(config, str(tmp_path / "w")).startswith(
      f"config.parallel.mesh_shape={mesh_shape!r}: must be (data,) or (data, model) device "
      f"counts, one of them at most -1")


def test_pmap_takes_a_data_axis_only(tmp_path):
  """(4, 1) is all data under pmap; (2, 2) asks for a 'model' axis, which needs jit."""
  config = set_keys(load_config("mnist"), {"parallel.mode": "pmap",
                                           "parallel.mesh_shape": (4, 1)})
  validate.validate(config, tasks.get(config.task), str(tmp_path / "w"))
  config.parallel.mesh_shape = (2, 2)
  assert _refusal(config, str(tmp_path / "w")) == (
      "config.parallel.mesh_shape=(2, 2): a 'model' axis needs parallel.mode='jit'")


def test_num_epochs_is_not_checked_when_num_train_steps_sets_the_length(tmp_path):
  config = set_keys(load_config("mnist"), {"num_epochs": 0, "num_train_steps": 10})
  validate.validate(config, tasks.get(config.task), str(tmp_path / "w"))
  config.num_train_steps = 0  # 0 means "use num_epochs" again
  assert _refusal(config, str(tmp_path / "w")).startswith("config.num_epochs=0: ")


def test_the_first_bad_key_is_named_in_a_fixed_order(tmp_path):
  """Shared keys first, then the optimizer, the model family, the task, the workdir: fixing
  each named value in turn names the next one."""
  (tmp_path / "file").write_text("")
  config = set_keys(load_config("tiny_lm"), {
      "batch_size": 0, "opt.decay_mask": "biases", "model.width": 130, "data.vocab": "words"})
  named = []
  for key, good in (("batch_size", 32), ("opt.decay_mask", "matrices"), ("model.width", 128),
                    ("data.vocab", "chars")):
    named.append(_refusal(config, str(tmp_path / "file")).split(":")[0])
    set_keys(config, {key: good})
  named.append(_refusal(config, str(tmp_path / "file")).split(":")[0])
  assert named == ["config.batch_size=0", "config.opt.decay_mask='biases'",
                   "config.model.width=130", "config.data.vocab='words'",
                   f"--workdir={tmp_path / 'file'}"]


@pytest.mark.parametrize("name, key, value, message", [
    ("tiny_lm", "opt.decay_mask", "biases", "config.opt.decay_mask='biases': must be one of all, "
                                            "matrices, no_bias_norm"),
    ("text_classifier", "opt.warmup_steps", -1, "config.opt.warmup_steps=-1: must be finite and "
                                                ">= 0"),
    ("text_classifier", "opt.grad_clip_norm", float("nan"), "config.opt.grad_clip_norm=nan: must "
                                                            "be finite and >= 0"),
])
def test_a_bad_optimizer_key_is_refused_through_optim_check(tmp_path, name, key, value, message):
  config = set_keys(load_config(name), {key: value})
  assert _refusal(config, str(tmp_path / "w")) == message


@pytest.mark.parametrize("name, key, value, message", [
    ("tiny_lm", "model.width", 130, "config.model.width=130: must be divisible by "
                                    "model.num_heads=4"),
    ("tiny_lm", "model.block_size", 0, "config.model.block_size=0: must be > 0"),
    ("text_classifier", "model.kernel_sizes", (3, 0), "config.model.kernel_sizes=(3, 0): must be "
                                                      "one or more widths > 0"),
    ("text_classifier", "model.word_dropout", 1.0, "config.model.word_dropout=1.0: must be in "
                                                   "[0, 1)"),
    ("mnist", "model.param_dtype", "float16", "config.model.param_dtype='float16': must be one "
                                              "of float32, bfloat16"),
    # model.dropout: one rule for every built-in family (models.check).
    ("mnist", "model.dropout", 1.0, "config.model.dropout=1.0: must be in [0, 1)"),
    ("text_classifier", "model.dropout", -0.1, "config.model.dropout=-0.1: must be in [0, 1)"),
    ("tiny_lm", "model.dropout", 1.5, "config.model.dropout=1.5: must be in [0, 1)"),
])
def test_a_bad_model_key_is_refused_through_the_familys_check(tmp_path, name, key, value,
                                                              message):
  config = set_keys(load_config(name), {key: value})
  assert _refusal(config, str(tmp_path / "w")) == message


def test_the_task_given_decides_the_model_families_and_its_own_checks(tmp_path):
  """validate asks the task module it is handed, not config.task: its MODELS bound
  model.name, and its check() runs on the config."""
  config = load_config("mnist")
  seen = []
  def check(c):
    seen.append(c)
    raise UserError("config.data.name='mnist': not this task's data")
  lm_like = types.SimpleNamespace(MODELS=("transformer",), check=check)
  assert _refusal(config, str(tmp_path / "w"), lm_like) == (
      "config.model.name='cnn': must be one of transformer (this task's models), or "
      "PACKAGE.MODULE:ATTR for your own")
  assert seen == []  # the model is checked before the task
  cnn_task = types.SimpleNamespace(MODELS=("cnn",), check=check)
  assert _refusal(config, str(tmp_path / "w"), cnn_task) == (
      "config.data.name='mnist': not this task's data")
  assert seen == [config]


@pytest.mark.parametrize("name, key, value, needle", [
    ("mnist", "model.num_classes", 1, "config.model.num_classes=1: must be > 1"),
    ("text_classifier", "data.max_len", 0, "config.data.max_len=0: must be > 0"),
    ("tiny_lm", "data.val_fraction", 1.0, "config.data.val_fraction=1.0: must be in (0, 1)"),
])
def test_each_built_in_tasks_own_keys_are_checked(tmp_path, name, key, value, needle):
  config = set_keys(load_config(name), {key: value})
  assert _refusal(config, str(tmp_path / "w")) == needle


def test_a_workdir_is_required():
  assert _refusal(load_config("mnist"), "") == "--workdir is required"


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
  (tmp_path / "run").write_text("not a directory")
  assert _refusal(load_config("mnist"), str(tmp_path / "run")) == (
      f"--workdir={tmp_path / 'run'}: exists and is not a directory")


def test_a_workdir_under_a_file_cannot_be_created(tmp_path):
  (tmp_path / "run").write_text("")
  assert _refusal(load_config("mnist"), str(tmp_path / "run" / "sub")) == (
      f"--workdir={tmp_path / 'run' / 'sub'}: cannot be created ({tmp_path / 'run'} is not a "
      f"writable directory)")


def test_validating_a_new_nested_workdir_creates_nothing(tmp_path):
  """A workdir that does not exist yet, several levels deep, passes and is not made."""
  workdir = tmp_path / "runs" / "mnist" / "seed0"
  config = load_config("mnist")
  validate.validate(config, tasks.get(config.task), str(workdir))
  assert os.listdir(tmp_path) == []


def test_a_model_axis_needs_a_family_with_tensor_parallel_names():
  """The CNN's params carry no logical axis names: a 'model' axis is refused with the config,
  before any work (a user's model shows its names only once traced: runner.Runner's note)."""
  config = load_config("mnist")
  config.parallel.mesh_shape = (1, 2)
  assert _refusal(config, "") == (
      "config.parallel.mesh_shape: a 'model' axis of 2 devices needs a model whose params carry "
      "logical axis names (the transformer's: heads, mlp, vocab); model.name='cnn' has none")
