"""--config.init_from (jaxdl/initfrom.py): a fresh run starts from a finished run's weights
(model state included), all or those init_from_keys picks; a mismatch is one line before any
write; a resumed run ignores it; the run record names the source. The source is one tiny MNIST
run (synthetic digits) of the BatchNorm MLP of tests/small_models.py, shared by the module."""

import json
import os
import re

import jax
import numpy as np
import pytest

from conftest import read_events, tiny_mnist_config
from jaxdl import models, runs, steps, tasks, train, weights
from jaxdl.errors import UserError


def _config(**keys):
  config = tiny_mnist_config()
  config.model.name = "small_models:bn_mlp"
  config.data.random_shift = 0  # no augmentation draws: a step's loss is its batch's alone
  for key, value in keys.items():
    node = config
    *parents, name = key.split(".")
    for part in parents:
      node = node[part]
    node[name] = value
  return config


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """(config, workdir) of a finished 24-step run, keeping its best checkpoint too."""
  workdir = str(tmp_path_factory.mktemp("source") / "w")
  config = _config(**{"checkpoint.keep_best": "test_loss"})
  train.train_and_evaluate(config, workdir)
  return config, workdir


def test_a_run_from_a_finished_one_starts_at_its_loss(source, tmp_path):
  """The same config, init_from the source: the first step's loss on its batch is the source
  model's loss on that batch (params and BatchNorm's statistics loaded; the step, optimizer
  and data start fresh). The run record names the source and the hash of what loaded."""
  config, workdir = source
  new = str(tmp_path / "new")
  config = _config(init_from=workdir, num_train_steps=1, log_every=1)
  train.train_and_evaluate(config, new)
  got = next(e for e in read_events(new) if e["event"] == "train" and e["step"] == 1)["loss"]

  task = tasks.get(config.task)
  dataset = task.load(config, None)
  model = models.get(config.model, **dataset.model_info)
  step, variables = runs.read_variables(workdir)
  assert step == 24
  params = variables.pop("params")
  loss, sums, _ = steps.call(task.objective(config, model), params, variables,
                             dataset.train.batch(0), jax.random.PRNGKey(0), train=True)
  assert got == pytest.approx(task.summarise(sums)["loss"], rel=1e-6)
  with open(os.path.join(new, "run.json")) as f:
    record = json.load(f)["segments"][0]["init_from"]
  assert record["source"] == workdir and record["step"] == 24 and record["kept_fresh"] == []
  names = weights.flatten(runs.read_variables(workdir)[1])
  assert record["loaded"] == len(names) == 7  # 2 kernels, a bias, BatchNorm's 2 params + 2 stats
  assert re.fullmatch(r"[0-9a-f]{64}", record["sha256"])


def test_a_new_head_loads_the_rest_and_a_resume_ignores_init_from(source, tmp_path, capsys):
  """A head of another shape: without init_from_keys, one line names each misfit and nothing is
  written; with a regex leaving the head out, the rest loads (lr 0: one step changes no
  param) and the head keeps its fresh init. Re-run to more steps, the run resumes from its own
  checkpoint, says that init_from is ignored, and does not read it (the source is gone)."""
  _, workdir = source
  new = str(tmp_path / "new")
  keys = {"model.name": "small_models:bn_mlp_wide_head", "init_from": workdir,
          "num_train_steps": 1, "opt.lr": 0.0, "opt.schedule": "constant"}
  with pytest.raises(UserError) as error:
    train.train_and_evaluate(_config(**keys), new)
  message = str(error.value)
  assert "\n" not in message and not os.path.exists(new)
  assert ("2 weights do not fit this model: params.Dense_1.bias: (10,) float32 in the source, "
          "(11,) float32 here; params.Dense_1.kernel: (32, 10) float32 in the source, (32, 11) "
          "float32 here (config.init_from_keys") in message

  train.train_and_evaluate(_config(**keys, init_from_keys=r"^(?!params\.Dense_1\.)"), new)
  assert "init_from: 5 weights from" in capsys.readouterr().out
  got = weights.flatten(runs.read_variables(new)[1])
  want = weights.flatten(runs.read_variables(workdir)[1])
  for name in ("params.Dense_0.kernel", "params.BatchNorm_0.scale"):
    np.testing.assert_array_equal(got[name], want[name])
  assert got["params.Dense_1.kernel"].shape == (32, 11)
  with open(os.path.join(new, "run.json")) as f:
    record = json.load(f)["segments"][0]["init_from"]
  assert record["kept_fresh"] == ["params.Dense_1.bias", "params.Dense_1.kernel"]

  train.train_and_evaluate(_config(**{**keys, "num_train_steps": 2,
                                      "init_from": str(tmp_path / "gone")},
                                   init_from_keys="Dense_0"), new)
  out = capsys.readouterr().out
  assert "resumed from the checkpoint at step 1" in out
  assert f"config.init_from={str(tmp_path / 'gone')!r} ignored: the run resumes from its own " \
         f"checkpoint" in out


@pytest.mark.parametrize("keys, error", [
    ({"init_from": "{tmp}/none"}, r"config.init_from='{tmp}/none': {tmp}/none: no such workdir"),
    ({"init_from": "{tmp}/none.safetensors"},
     r"config.init_from='{tmp}/none.safetensors': {tmp}/none.safetensors: no such weights file"),
    ({"init_from": "{src}:7"}, r"no checkpoint at step 7 in .*/checkpoints \(there: .*24\)"),
    ({"init_from": "{src}", "init_from_keys": "("}, r"config.init_from_keys='\(': not a regular "
                                                     r"expression"),
    ({"init_from_keys": "Dense"}, r"config.init_from_keys='Dense' needs config.init_from=SOURCE"),
    ({"init_from": "{src}", "init_from_keys": "^nothing"},
     r"config.init_from_keys='\^nothing' picks none of its 7 weights"),
    ({"init_from": "{src}", "model.name": "small_models:mlp"},
     r"5 weights do not fit this model: params.Dense_0.bias \(32,\) float32: not in the source; "
     r"batch_stats.BatchNorm_0.mean \(32,\) float32: not in this model; "),
])
def test_init_from_errors_are_one_line_and_write_nothing(source, tmp_path, keys, error):
  _, workdir = source
  fill = lambda text: text.replace("{tmp}", str(tmp_path)).replace("{src}", workdir)
  new = str(tmp_path / "new")
  with pytest.raises(UserError, match=fill(error)) as raised:
    train.train_and_evaluate(_config(**{k: fill(v) for k, v in keys.items()}), new)
  assert "\n" not in str(raised.value) and not os.path.exists(new)


def test_init_from_best_loads_the_best_checkpoint(source, tmp_path):
  """WORKDIR:best is the keep_best checkpoint (not the newest here); WORKDIR:STEP a step's."""
  _, workdir = source
  best = runs.best_step(workdir, _config(**{"checkpoint.keep_best": "test_loss"}))
  assert best != 24
  new = str(tmp_path / "new")
  train.train_and_evaluate(_config(init_from=f"{workdir}:best", num_train_steps=1), new)
  with open(os.path.join(new, "run.json")) as f:
    record = json.load(f)["segments"][0]["init_from"]
  assert record["step"] == best
  # WORKDIR:STEP names a step: that step's checkpoint, the same weights as :best here.
  at_step = str(tmp_path / "at_step")
  train.train_and_evaluate(_config(init_from=f"{workdir}:{best}", num_train_steps=1), at_step)
  with open(os.path.join(at_step, "run.json")) as f:
    assert json.load(f)["segments"][0]["init_from"]["sha256"] == record["sha256"]


def test_init_from_an_exported_file_loads_what_the_workdir_would(source, tmp_path):
  """The source exported (jaxdl.export) and given as FILE.safetensors: the same arrays load as
  from its workdir (the same hash in run.json), and the file's step is named."""
  from jaxdl import export  # pylint: disable=g-import-not-at-top
  _, workdir = source
  path = str(tmp_path / "source.safetensors")
  export.export(workdir, path)
  hashes = []
  for name, spec in (("from_file", path), ("from_workdir", workdir)):
    new = str(tmp_path / name)
    train.train_and_evaluate(_config(init_from=spec, num_train_steps=1), new)
    with open(os.path.join(new, "run.json")) as f:
      record = json.load(f)["segments"][0]["init_from"]
    assert record["step"] == 24 and record["loaded"] == 7
    hashes.append(record["sha256"])
  assert hashes[0] == hashes[1]
  # Exported as bfloat16, the same weights are another dtype: each is named, nothing written.
  export.export(workdir, str(tmp_path / "bf16.safetensors"), dtype="bfloat16")
  with pytest.raises(UserError, match=r"7 weights do not fit this model: batch_stats.BatchNorm_0"
                                      r".mean: \(32,\) bfloat16 in the source, \(32,\) float32 "
                                      r"here; ") as raised:
    train.train_and_evaluate(_config(init_from=str(tmp_path / "bf16.safetensors")),
                             str(tmp_path / "bf16"))
  assert "\n" not in str(raised.value) and not os.path.exists(tmp_path / "bf16")
