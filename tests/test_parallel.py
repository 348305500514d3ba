"""The parallel modes agree: single device, mesh (jit), fsdp, pmap and tensor-parallel meshes on
4 virtual CPU devices give the same losses, and a checkpoint written in one mode resumes in
another."""

import re

import jax
import numpy as np
import pytest

from conftest import (REPO, SMALL_MODEL, load_config, load_config_file, read_events, run_worker,
                      set_keys, write_play)
from jaxdl import parallel, tasks, train, validate
from jaxdl.errors import UserError

# Tiny synthetic MNIST, 12 steps of batch 16 over 150 examples: 10 steps per epoch, whose last
# batch is padded (6 real rows: 4 on the first device, 2 on the second, none on the others), so
# the devices of that step see unequal example counts. Dropout and random shifts are off: pmap
# draws them per device (fold_in of the device index), not per global batch, so only
# deterministic steps can match step for step. The moving average of the params
# (train.ema_decay) is on: the final test loss is the average's, so every mode must keep it,
# shard it and checkpoint it like the params.
MNIST = {"model.name": SMALL_MODEL, "data.source": "synthetic", "data.synthetic_size": 150,
         "batch_size": 16, "eval_batch_size": 16, "num_train_steps": 12, "log_every": 1,
         "eval_every": 1000, "checkpoint_every": 8, "opt.warmup_steps": 4, "model.dropout": 0.0,
         "data.random_shift": 0, "train.ema_decay": 0.8}
MODES = {"mesh": {}, "fsdp": {"parallel.fsdp": True}, "pmap": {"parallel.mode": "pmap"}}
# The same runs with dropout and random shifts on: jit and fsdp draw them per global batch, as one
# device does (the README's claim), pmap per device.
NOISY = {"model.dropout": 0.3, "data.random_shift": 2}
# A one-block Transformer LM on a made-up play: 10 steps of 8 windows (2 per device on 4), no
# dropout, every step logged; 4 heads, an MLP of 128 and the 256 byte values, so a 'model' axis
# of 2 splits heads, MLP and vocabulary alike.
LM = {"data.vocab": "bytes", "model.num_layers": 1, "model.num_heads": 4, "model.width": 32,
      "model.block_size": 16, "model.dropout": 0.0, "batch_size": 8, "eval_batch_size": 16,
      "data.eval_windows": 32, "num_train_steps": 10, "log_every": 1, "eval_every": 1000,
      "checkpoint_every": 1000, "opt.warmup_steps": 4}
# Tensor parallelism: a (data, model) mesh of (2, 2), with the state replicated over 'data', and
# with fsdp over 'data' and scanned blocks (params stacked on a leading 'layers' axis, which
# stays whole). (Until 2026-12 this ran on 8 devices, (4, 2) and (2, 4), with and without fsdp:
# the same rules, in twice the time.)
TP_MODES = {"tp2x2": {"parallel.mesh_shape": [2, 2]},
            "tp2x2_fsdp_scan": {"parallel.mesh_shape": [2, 2], "parallel.fsdp": True,
                                "model.scan_layers": True}}
# float32 sums in another order (per-device partial sums, then an all-reduce) differ in the
# last bits (~1e-7 relative; measured: equal or 1 ulp); Adam's m/sqrt(v) can grow such
# differences a little over the steps. A real mistake (a gradient not averaged, or averaged
# without the row counts) moves the losses by 1e-3 or more.
RTOL = 1e-4


def _curve(workdir):
  return [(e["event"], e["step"], e.get("loss", e.get("test_loss", e.get("val_loss"))))
          for e in read_events(workdir)]


def _assert_same_curve(got, want, name):
  assert [x[:2] for x in got] == [x[:2] for x in want], name
  np.testing.assert_allclose([x[2] for x in got], [x[2] for x in want], rtol=RTOL, err_msg=name)


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
  """Every multi-device run of this module, in one process with 4 CPU devices (one start-up for
  all): the MNIST modes, fsdp's step-8 checkpoint (sharded over the devices) resumed under pmap
  (replicated), and the LM's tensor-parallel meshes. Returns (root, the process's stdout)."""
  root = tmp_path_factory.mktemp("four_devices")
  write_play(str(root / "play.txt"))
  lm = {**LM, "data.path": str(root / "play.txt")}
  runs = [["mnist", {**MNIST, **o}, str(root / m), None] for m, o in MODES.items()]
  runs.append(["mnist", {**MNIST, **MODES["pmap"]}, str(root / "fsdp_to_pmap"),
               [str(root / "fsdp"), 8]])
  runs += [["tiny_lm", {**lm, **o}, str(root / m), None] for m, o in TP_MODES.items()]
  runs += [["mnist", {**MNIST, **NOISY, **o}, str(root / f"{m}_noisy"), None]
           for m, o in MODES.items()]
  # A user's model (no logical axis names) on a 'model' axis of 2: its params whole on both.
  runs.append(["mnist", {**MNIST, "parallel.mesh_shape": [2, 2]}, str(root / "user_model_axis"),
               None])
  return root, run_worker(runs, {"JAX_NUM_CPU_DEVICES": "4"})


# Models with state (BatchNorm, linen and NNX) on 8 CPU devices: the worked examples of
# experiments/custom/ (a linen ResNet, an NNX CNN through nnx.bridge), narrowed. Under jit the
# batch statistics are the global batch's, so jit and jit+fsdp follow one device's curve; pmap
# normalises each device's 2 rows by their own statistics (steps.py), so it only has to run.
_SMALL = {k: v for k, v in MNIST.items() if k != "model.name"}
BATCHNORM = {"linen": ("experiments/custom/resnet_mnist.py", {**_SMALL, "model.widths": (8, 8)}),
             "nnx": ("experiments/custom/cnn_nnx_mnist.py",
                     {**_SMALL, "model.widths": (8, 8), "model.hidden": 16})}
BATCHNORM_MODES = {"mesh": {}, "fsdp": {"parallel.fsdp": True, "parallel.fsdp_min_size": 256}}


@pytest.fixture(scope="module")
def eight_devices_batchnorm(tmp_path_factory):
  """The BatchNorm runs on 8 CPU devices, in one process of their own (a device count is fixed
  per process). Returns (root, the process's stdout)."""
  root = tmp_path_factory.mktemp("eight_devices")
  runs = [[config, {**keys, **o}, str(root / f"{kind}_{m}"), None]
          for kind, (config, keys) in BATCHNORM.items() for m, o in BATCHNORM_MODES.items()]
  config, keys = BATCHNORM["linen"]
  runs.append([config, {**keys, "parallel.mode": "pmap"}, str(root / "pmap"), None])
  return root, run_worker(runs, {"JAX_NUM_CPU_DEVICES": "8"})


@pytest.mark.slow
@pytest.mark.parametrize("kind", BATCHNORM)
def test_batchnorm_on_8_devices_follows_one_device_under_jit_and_fsdp(
    eight_devices_batchnorm, tmp_path, monkeypatch, kind):
  root, out = eight_devices_batchnorm
  assert "8 cpu device(s), batch 16 (2 per device) | jit+fsdp, state" in out
  single = str(tmp_path / "single")
  config, keys = BATCHNORM[kind]
  monkeypatch.syspath_prepend(REPO)  # the examples' models import as experiments.custom.*
  train.train_and_evaluate(set_keys(load_config_file(f"{REPO}/{config}"), keys), single)
  want = _curve(single)
  for mode in BATCHNORM_MODES:
    _assert_same_curve(_curve(root / f"{kind}_{mode}"), want, f"{kind} {mode}")
  if kind == "linen":
    pmap = _curve(root / "pmap")
    assert [x[:2] for x in pmap] == [x[:2] for x in want]
    assert np.isfinite([x[2] for x in pmap]).all()


@pytest.mark.slow
def test_modes_match_a_single_device_and_resume_across_modes(four_devices, tmp_path):
  root, out = four_devices
  single = str(tmp_path / "single")
  train.train_and_evaluate(set_keys(load_config("mnist"), MNIST), single)  # 1 device
  want = _curve(single)
  assert len([e for e in want if e[0] == "train"]) == 12
  assert "4 cpu device(s), batch 16 (4 per device) | jit+fsdp, state" in out
  for mode in MODES:
    _assert_same_curve(_curve(root / mode), want, mode)
  assert "resumed from the checkpoint at step 8" in out
  _assert_same_curve(_curve(root / "fsdp_to_pmap"), want, "fsdp_to_pmap")
  # A user's model without logical axis names on a (2, 2) mesh trains with its params whole on
  # each 'model' device (the runner says so, once), as on 2 data devices.
  assert out.count("so its 2 devices each hold them whole and compute the same (no tensor "
                   "parallelism)") == 1
  _assert_same_curve(_curve(root / "user_model_axis"), want, "user_model_axis")


@pytest.mark.slow
def test_jit_and_fsdp_draw_dropout_and_shifts_as_one_device_does(four_devices, tmp_path):
  """With dropout and random shifts on, jit and fsdp on 4 devices follow the single device's
  curve to float32 rounding (the same masks and shifts); pmap, which draws per device, does
  not: the check can tell."""
  root, _ = four_devices
  single = str(tmp_path / "single")
  train.train_and_evaluate(set_keys(load_config("mnist"), {**MNIST, **NOISY}), single)
  want = _curve(single)
  for mode in ("mesh", "fsdp"):
    _assert_same_curve(_curve(root / f"{mode}_noisy"), want, mode)
  pmap = [x[2] for x in _curve(root / "pmap_noisy")]
  assert not np.allclose(pmap, [x[2] for x in want], rtol=RTOL)


@pytest.mark.slow
def test_lm_tensor_parallel_meshes_match_a_single_device(four_devices, tmp_path):
  root, out = four_devices
  for mode, overrides in TP_MODES.items():
    single = str(tmp_path / mode)  # scanned blocks draw their init from split keys
    train.train_and_evaluate(set_keys(load_config("tiny_lm"), {
        **LM, "data.path": str(root / "play.txt"),
        "model.scan_layers": overrides.get("model.scan_layers", False)}), single)
    assert len([e for e in _curve(single) if e[0] == "train"]) == 10
    _assert_same_curve(_curve(root / mode), _curve(single), f"lm {mode}")
  # The state per device, of the whole state, in the first four jit runs' start lines (MNIST
  # mesh, MNIST fsdp, then the two LM meshes; the noisy MNIST runs come after): whole; a quarter with fsdp over 4 devices (small arrays stay
  # whole); half with a 'model' axis of 2 (the LayerNorms and the step stay whole); and half of
  # that again with fsdp over 'data' as well.
  shares = [float(a) / float(b) for a, b in
            re.findall(r"\| jit(?:\+fsdp)?, state ([0-9.]+) of ([0-9.]+) MB per device", out)]
  shares = shares[:4]
  assert len(shares) == 4 and shares[0] == 1.0 and 0.25 < shares[1] < 0.3, (shares, out)
  assert 0.5 < shares[2] < 0.6 and 0.25 < shares[3] < 0.3, (shares, out)


def test_fsdp_shards_large_arrays_and_replicates_small_ones():
  mesh = jax.make_mesh((1,), ("data",))  # shapes only: the layout rule, not the devices
  abstract = {"kernel": jax.ShapeDtypeStruct((36, 128), np.float32),   # 128 % 8 == 0
              "odd": jax.ShapeDtypeStruct((37, 129), np.float32),      # nothing divides by 8
              "bias": jax.ShapeDtypeStruct((128,), np.float32),        # small
              "step": jax.ShapeDtypeStruct((), np.int32)}

  class EightWide:  # the rule only reads mesh.shape['data']
    shape = {"data": 8}

  specs = {}
  real_named = parallel.NamedSharding
  try:
    parallel.NamedSharding = lambda m, spec: spec
    specs = parallel.state_shardings(abstract, EightWide(), fsdp=True, min_size=1024)
  finally:
    parallel.NamedSharding = real_named
  assert specs == {"kernel": parallel.P(None, "data"), "odd": parallel.P(),
                   "bias": parallel.P(), "step": parallel.P()}
  del mesh


def test_tensor_parallel_specs_follow_the_logical_names_into_the_optimizer_state():
  """LOGICAL_RULES puts heads, mlp and vocab on 'model': a param and every state array that
  mirrors it (Adam's mu, the EMA) get the same split; a vocabulary of 65 rows, which 2 does
  not divide, stays whole; fsdp then takes the largest free dimension over 'data'."""
  P = parallel.P
  axes = {"embed": {"embedding": P("vocab", "embed")}, "odd": {"embedding": P("vocab", "embed")},
          "mlp_in": {"kernel": P("embed", "mlp"), "bias": P("mlp")}}
  shape = lambda *s: jax.ShapeDtypeStruct(s, np.float32)
  params = {"embed": {"embedding": shape(256, 64)}, "odd": {"embedding": shape(65, 64)},
            "mlp_in": {"kernel": shape(64, 256), "bias": shape(256)}}
  state = {"params": params, "opt_state": ({"mu": params}, {"count": shape()}), "ema": params}
  specs = parallel.state_specs(state, {"data": 4, "model": 2}, fsdp=False, min_size=1024,
                               param_axes=axes)
  for tree in (specs["params"], specs["opt_state"][0]["mu"], specs["ema"]):
    assert tree == {"embed": {"embedding": P("model")}, "odd": {"embedding": P()},
                    "mlp_in": {"kernel": P(None, "model"), "bias": P("model")}}
  assert specs["opt_state"][1]["count"] == P()
  fsdp = parallel.state_specs(state, {"data": 4, "model": 2}, fsdp=True, min_size=1024,
                              param_axes=axes)["params"]
  assert fsdp["embed"]["embedding"] == P("model", "data")  # 64 % 4 == 0: the free dimension
  assert fsdp["odd"]["embedding"] == P(None, "data")  # 65 % 4 != 0: the other one
  assert fsdp["mlp_in"] == {"kernel": P("data", "model"), "bias": P("model")}  # bias < 1024


def test_scanned_blocks_keep_the_batch_on_data_only_under_the_runners_context():
  """The transformer's scanned blocks constrain their carry's batch to 'data' (without it, fsdp
  replicated the activations in the loop: parallel.ACTIVATION_RULES). The constraint is in the
  traced step under activation_sharding, which Runner sets around its jit steps, and nowhere
  outside it (sample, predict)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxdl.models.transformer import TransformerLM  # pylint: disable=g-import-not-at-top
  model = TransformerLM(vocab_size=11, num_layers=2, num_heads=2, width=16, block_size=8,
                        scan_layers=True)
  tokens = jnp.zeros((2, 8), jnp.int32)
  params = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens,
                                                     train=False)))  # the state holds these
  forward = lambda p: model.apply(p, tokens, train=False)
  assert "sharding_constraint" not in str(jax.make_jaxpr(forward)(params))
  with parallel.activation_sharding(parallel.make_mesh((-1,))):
    jaxpr = str(jax.make_jaxpr(forward)(params))
  assert jaxpr.count("sharding_constraint") == 2, jaxpr  # the carry in and out of the body
  assert jaxpr.count("spec=P('data', None, None)") == 2, jaxpr


@pytest.mark.parametrize("key, value, needle", [
    ("parallel.mode", "shard_map", "parallel.mode"),
    ("parallel.fsdp", True, "needs parallel.mode='jit'"),
    ("parallel.mesh_shape", (2, 2, 2), r"must be \(data,\) or \(data, model\)"),
    ("parallel.mesh_shape", (-1, -1), r"one of them at most -1"),
])
def test_parallel_config_rules(tmp_path, key, value, needle):
  config = load_config("mnist")
  if key == "parallel.fsdp":
    config.parallel.mode = "pmap"
  *_, leaf = key.split(".")
  config.parallel[leaf] = value
  with pytest.raises(UserError, match=needle):
    validate.validate(config, tasks.get(config.task), str(tmp_path / "w"))


@pytest.mark.parametrize("count", [-1, 1.5, "2", True])
def test_bad_cpu_devices_is_one_line(count):
  # (A valid count is applied before JAX starts: tests/test_main.py::test_runs_on_two_devices.)
  with pytest.raises(UserError, match=r"config.parallel.cpu_devices=.*: must be an integer >= 0"):
    parallel.set_cpu_devices(count)


def test_a_mesh_shape_that_does_not_match_the_devices():
  with pytest.raises(UserError, match=r"mesh_shape=\(4,\) does not fit the job's 1 devices: "
                                      r"\(data, model\) must multiply to 1"):
    parallel.make_mesh((4,))
  assert parallel.mesh_dims((-1, 2), 8) == (4, 2) and parallel.mesh_dims((8,), 8) == (8, 1)
  with pytest.raises(UserError, match=r"mesh_shape=\(-1, 3\) does not fit the job's 8"):
    parallel.mesh_dims((-1, 3), 8)
  assert parallel.make_mesh((1,)).shape["data"] == parallel.make_mesh((-1,)).shape["data"] == 1
