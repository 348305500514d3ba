"""The command line: overrides, and every bad input ending as one line, exit 1, nothing written."""

import os

import jax
import pytest

from conftest import (DEFAULT_XLA_LEVEL, SMALL_MODEL, declared_fields, flat_keys,
                      load_config, run_main)
from jaxdl import runs, tasks, validate
from jaxdl.errors import UserError


def _assert_one_line_error(result, workdir, *needles):
  assert result.returncode == 1, result.stderr
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith("jaxdl: error: "), lines[0]
  assert "Traceback" not in result.stderr
  for needle in needles:
    assert needle in lines[0], lines[0]
  assert not os.path.exists(workdir), "a failed start must write nothing"


# Each layer of checks once from the command line (flag parsing, validate, the data source); the
# other rules of validate run in this process (test_validate_rules): a process that reaches
# validate has imported jax, flax and orbax first (~4 CPU-s each).
@pytest.mark.parametrize("override, needles", [
    ("--config.opt.lr=abc", ["--config.opt.lr=abc"]),
    ("--config.no_such_key=1", ["no_such_key", "valid keys"]),
    ("--config.opt.no_such_key=1", ["opt.no_such_key"]),
    ("--config.batch_size=1.5", ["--config.batch_size=1.5"]),
    ("--config.batch_size=0", ["config.batch_size=0", "> 0"]),
    ("--config.data.path=/nonexistent", ["config.data.path='/nonexistent'", "does not exist"]),
])
def test_bad_override_is_one_line(tmp_path, override, needles):
  workdir = str(tmp_path / "w")
  result = run_main("--config=configs/mnist.py", f"--workdir={workdir}", override)
  _assert_one_line_error(result, workdir, *needles)


def test_bad_config_file_and_preset(tmp_path):
  workdir = str(tmp_path / "w")
  _assert_one_line_error(run_main("--config=configs/nope.py", f"--workdir={workdir}"),
                         workdir, "configs/nope.py")
  _assert_one_line_error(run_main("--config", "configs/nope.py", f"--workdir={workdir}"),
                         workdir, "configs/nope.py")
  _assert_one_line_error(run_main("--config=README.md", f"--workdir={workdir}"),
                         workdir, "README.md")
  _assert_one_line_error(run_main("--config=configs/mnist.py:nope", f"--workdir={workdir}"),
                         workdir, "error: unknown preset 'nope'")
  _assert_one_line_error(run_main("--config", "configs/mnist.py", "--config.opt.zzz=1",
                                  f"--workdir={workdir}"), workdir, "'opt.zzz'")
  (tmp_path / "no_get_config.py").write_text("SEED = 1\n")
  _assert_one_line_error(run_main(f"--config={tmp_path}/no_get_config.py", f"--workdir={workdir}"),
                         workdir, "no_get_config.py: the file defines no get_config()")
  (tmp_path / "returns_a_dict.py").write_text("def get_config():\n  return {'seed': 1}\n")
  _assert_one_line_error(run_main(f"--config={tmp_path}/returns_a_dict.py",
                                  f"--workdir={workdir}"), workdir,
                         "returns_a_dict.py: get_config() returned a dict, not an "
                         "ml_collections.ConfigDict")


def test_batch_not_divisible_by_devices(tmp_path):
  workdir = str(tmp_path / "w")
  result = run_main("--config=configs/mnist.py", f"--workdir={workdir}", "--config.batch_size=63",
                    "--config.data.source=synthetic",
                    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  _assert_one_line_error(result, workdir, "batch_size=63", "2 devices")


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  result = run_main("--config=configs/mnist.py", f"--workdir={blocker}/w")
  _assert_one_line_error(result, f"{blocker}/w", f"--workdir={blocker}/w: cannot be created "
                         f"({blocker} is not a writable directory)")


def test_overrides_apply_and_presets_differ():
  seed = load_config("mnist", "seed")
  assert (seed.opt.name, seed.opt.lr, seed.opt.momentum, seed.batch_size, seed.num_epochs) == (
      "sgd", 0.01, 0.0, 64, 10)
  assert seed.model.init == "torch" and seed.opt.schedule == "constant"
  default = load_config("mnist")
  assert default.opt.name != "sgd"
  with pytest.raises(AttributeError):  # locked: unknown keys are errors in code too
    default.no_such_key = 1
  with pytest.raises(TypeError):
    default.batch_size = "64"


@pytest.mark.parametrize("key, value, needle", [
    ("eval_batch_size", 0, "eval_batch_size"),
    ("log_every", -1, "log_every"),
    ("opt.name", "lion2", "opt.name"),  # lion is an optax optimizer, and valid
    ("opt.schedule", "step", "opt.schedule"),
    ("model.dropout", 1.0, "model.dropout"),
    ("model.init", "he", "model.init"),
    ("data.source", "web", "data.source"),
    ("opt.lr", float("inf"), "opt.lr=inf: must be finite"),
    ("opt.b2", 1.0, "opt.b2"),
    ("opt.nesterov", True, "needs opt.momentum > 0"),
    ("seed", -1, "seed=-1"),
    ("seed", 2**32, r"seed=4294967296: must be in \[0, 2\*\*32\)"),  # PRNGKey(2**32) = seed 0
    ("data.synthetic_size", 0, "data.synthetic_size"),
    ("data.tfds_dir", "/nonexistent", "data.tfds_dir"),
    ("train.ema_decay", 1.0, "train.ema_decay"),
    ("opt.lr", -0.1, r"config.opt.lr=-0.1: .*>= 0"),
    ("model.name", "resnet", r"config.model.name='resnet': must be one of cnn"),
])
def test_validate_rules(tmp_path, key, value, needle):
  config = load_config("mnist")
  node = config
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(UserError, match=needle):
    validate.validate(config, tasks.get(config.task), str(tmp_path / "w"))


def test_every_config_field_has_a_comment():
  """Each key is commented where it is declared: the shared keys once in configs/common.py,
  the experiment's own blocks in configs/mnist.py (its overrides of shared keys need none)."""
  declared = declared_fields("mnist")
  assert declared and all("#" in line for line in declared.values()), [
      line for line in declared.values() if "#" not in line]
  # Every key of the resolved config is declared (and so commented) in one of the two files.
  assert flat_keys(load_config("mnist").to_dict()) == set(declared)


@pytest.mark.slow
def test_runs_on_two_devices(tmp_path):
  """The mesh path with the batch split over 2 CPU devices (made by config.parallel.cpu_devices),
  end to end from the command line; its compiled steps land in the persistent compilation cache
  (CPU executables are cached). The suite's one run compiled at XLA's default optimization
  level, as users run jaxdl (the others: O0, conftest.py)."""
  workdir, cache = str(tmp_path / "w"), tmp_path / "xla"
  result = run_main("--config=configs/mnist.py", f"--workdir={workdir}",
                    f"--config.model.name={SMALL_MODEL}",
                    "--config.data.source=synthetic", "--config.data.synthetic_size=64",
                    "--config.batch_size=16", "--config.eval_batch_size=16",
                    "--config.num_train_steps=6", "--config.log_every=3",
                    "--config.parallel.cpu_devices=2",
                    env={"JAXDL_XLA_CACHE": str(cache), "XLA_FLAGS": DEFAULT_XLA_LEVEL})
  assert result.returncode == 0, result.stderr
  assert "2 cpu device(s), batch 16 (8 per device)" in result.stdout
  assert "final: val accuracy" in result.stdout and "| test accuracy" in result.stdout
  assert len(list(cache.iterdir())) >= 3  # at least init, train step and eval step
  # Sampling and prediction read it on one device (Orbax would keep the 2 devices' topology).
  params = runs.read_variables(workdir)[1]
  assert sum(x.size for x in jax.tree.leaves(params)) == 25_450  # small_models.mlp's
