"""python -m jaxdl.export (jaxdl/export.py) and the weights file it writes (jaxdl/weights.py):
what the file holds, jaxdl.load of the file alone, stacked and unstacked layers, dtypes,
NumPy/PyTorch readers, safetensors' contiguity trap, atomic writes, one-line errors, a gs://
workdir and a 2-process job.

Each trained run is a few steps of a tiny config, made once per module: a scanned tiny LM with
a moving average of its params, a linen BatchNorm MLP and an NNX one (a list of layers) on
synthetic digits, and a text CNN on a few made-up sentences.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import safetensors.numpy

from conftest import (REPO, SUBPROCESS_CACHE, assert_same_params, load_config, tiny_lm_config,
                      tiny_mnist_config)
import jaxdl
from jaxdl import export, runs, train, weights
from jaxdl.data.vocab import VOCAB_FILE
from jaxdl.data.imagefolder import CLASSES_FILE
from jaxdl.errors import UserError


def _short(c, steps=4):
  """A run of `steps` steps, checkpointed and evaluated at its end only."""
  c.num_train_steps = c.checkpoint_every = c.eval_every = steps
  c.log_every = steps
  c.opt.warmup_steps = 1
  return c


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
  """(config, workdir): the tiny LM, its 2 blocks scanned (params['blocks'], [2, ...]), with a
  moving average of its params (which the file must hold, as jaxdl.load's)."""
  root = tmp_path_factory.mktemp("lm")
  c = _short(tiny_lm_config(str(root / "play.txt")))
  c.model.scan_layers = True
  c.train.ema_decay = 0.5
  workdir = str(root / "run")
  train.train_and_evaluate(c, workdir)
  return c, workdir


def _mnist_run(root, model_name, **keys):
  c = _short(tiny_mnist_config())
  c.model.name = model_name
  for key, value in keys.items():
    section, name = key.split(".")
    c[section][name] = value
  workdir = str(root / "run")
  train.train_and_evaluate(c, workdir)
  return c, workdir


@pytest.fixture(scope="module")
def bn_run(tmp_path_factory):
  """A linen MLP with BatchNorm ('batch_stats') and a moving average of its params."""
  return _mnist_run(tmp_path_factory.mktemp("bn"), "small_models:bn_mlp",
                    **{"train.ema_decay": 0.5})


@pytest.fixture(scope="module")
def nnx_run(tmp_path_factory):
  return _mnist_run(tmp_path_factory.mktemp("nnx"), "small_models:NnxListMLP")


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
  """A text CNN on 40 made-up sentences (vocab.json beside its checkpoints)."""
  root = tmp_path_factory.mktemp("text")
  rng = np.random.default_rng(0)
  words = ["good", "bad", "the", "film", "is", "a", "dull", "fine", "plot"]
  for split, n in (("train", 40), ("dev", 8)):
    rows = [(" ".join(rng.choice(words, 5)), int(rng.integers(0, 2))) for _ in range(n)]
    (root / f"{split}.tsv").write_text(
        "sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
  c = _short(load_config("text_classifier"))
  c.data.path = str(root)
  c.data.max_len = 8
  c.data.bucket = 0
  c.model.name = "text_cnn"
  c.model.embed_dim = c.model.hidden_dim = 8
  c.model.kernel_sizes = (2,)
  c.batch_size = c.eval_batch_size = 8
  workdir = str(root / "run")
  train.train_and_evaluate(c, workdir)
  return c, workdir


@pytest.fixture(scope="module")
def lm_file(lm_run, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("lm_file") / "lm.safetensors")
  export.export(lm_run[1], out)
  return out


def _tokens(config):
  return np.random.default_rng(0).integers(0, 10, (2, config.model.block_size)).astype(np.int32)


def _digits(directory, n=3):
  """n PNG files of seeded random 28x28 grey digits."""
  pixels = np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)
  paths = [str(directory / f"digit{i}.png") for i in range(n)]
  for path, image in zip(paths, pixels):
    Image.fromarray(image).save(path)
  return paths


@pytest.mark.slow
def test_an_lm_file_holds_the_runs_weights_and_rebuilds_it_alone(lm_run, lm_file, tmp_path):
  config, workdir = lm_run
  arrays = safetensors.numpy.load_file(lm_file)
  run = jaxdl.load(workdir)
  flat = weights.flatten(run.variables)
  assert sorted(arrays) == sorted(flat) and "params.blocks.ln_attn.scale" in arrays
  assert arrays["params.blocks.ln_attn.scale"].shape == (2, config.model.width)  # stacked
  for name, x in flat.items():  # the moving average, bit for bit
    np.testing.assert_array_equal(arrays[name], np.asarray(x), err_msg=name)
  _, saved = runs.read_variables(workdir)
  assert_same_params(run.variables, saved)  # which is the EMA jaxdl.load picks

  # The file alone, moved away from the workdir: the same model, the same logits.
  os.rename(lm_file, tmp_path / "moved.safetensors")
  from_file = jaxdl.load(str(tmp_path / "moved.safetensors"))
  os.rename(tmp_path / "moved.safetensors", lm_file)
  assert from_file.step == run.step == 4 and from_file.model_info == run.model_info
  assert from_file.config.to_dict() == run.config.to_dict()
  with open(os.path.join(workdir, VOCAB_FILE), encoding="utf-8") as f:
    assert from_file.files == {VOCAB_FILE: f.read()}
  tokens = _tokens(config)
  want, got = run.apply(tokens), from_file.apply(tokens)
  print(f"max |logits(file) - logits(workdir)| = {float(np.abs(got - want).max()):.3g}")
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)

  meta = weights.read_file(lm_file)[1]
  assert weights.read_metadata(lm_file) == meta  # the header alone
  assert meta["version"] == jaxdl.__version__ and meta["step"] == 4 and meta["which"] == "latest"
  assert meta["config"] == json.loads(json.dumps(run.config.to_dict()))
  assert meta["model_info"] == run.model_info and meta["stacked"] == {"params.blocks": 2}


@pytest.mark.slow
def test_the_readme_example_runs(lm_run, lm_file, tmp_path, monkeypatch, capsys):
  """The README's block after the line naming this test, where tiny_lm.safetensors is the LM's."""
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    text = f.read()
  marker = "<!-- tests/test_export.py::test_the_readme_example_runs runs the next block -->"
  block = text.split(marker, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
  os.symlink(lm_file, tmp_path / "tiny_lm.safetensors")
  monkeypatch.chdir(tmp_path)
  scope = {}
  exec(compile(block, "README.md", "exec"), scope)  # pylint: disable=exec-used
  run = jaxdl.load(lm_run[1])
  assert capsys.readouterr().out == f"({run.model_info['vocab_size']}, 32)\n"
  assert scope["config"] == json.loads(json.dumps(run.config.to_dict()))
  assert scope["run"].step == run.step


@pytest.mark.slow
def test_an_lm_file_loads_in_pytorch(lm_run, lm_file):
  torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")
  import safetensors.torch  # pylint: disable=g-import-not-at-top
  tensors = safetensors.torch.load_file(lm_file)
  for name, x in weights.flatten(jaxdl.load(lm_run[1]).variables).items():
    assert isinstance(tensors[name], torch.Tensor)
    np.testing.assert_array_equal(tensors[name].numpy(), np.asarray(x), err_msg=name)


@pytest.mark.slow
def test_unstack_writes_one_tensor_per_layer_and_load_stacks_them_again(lm_run, lm_file,
                                                                         tmp_path):
  config, workdir = lm_run
  out = str(tmp_path / "unstacked.safetensors")
  export.export(workdir, out, unstack=True)
  arrays = safetensors.numpy.load_file(out)
  stacked = safetensors.numpy.load_file(lm_file)
  assert not any(name.startswith("params.blocks.ln_attn") for name in arrays)
  for i in range(2):
    np.testing.assert_array_equal(arrays[f"params.blocks.{i}.ln_attn.scale"],
                                  stacked["params.blocks.ln_attn.scale"][i])
  assert len(arrays) == len(stacked) + sum(n.startswith("params.blocks.") for n in stacked)
  variables, meta = weights.read_file(out)
  assert meta["metadata"][weights.META_UNSTACKED] == "true"
  assert_same_params(variables, weights.read_file(lm_file)[0])  # restacked
  tokens = _tokens(config)
  np.testing.assert_array_equal(jaxdl.load(out).apply(tokens), jaxdl.load(lm_file).apply(tokens))

  # A layer missing from the file is one line.
  del arrays["params.blocks.1.ln_attn.scale"]
  broken = str(tmp_path / "broken.safetensors")
  weights.write_file(broken, arrays, meta["metadata"])
  with pytest.raises(UserError, match=r"broken.safetensors: 'params.blocks.ln_attn.scale' has "
                                      r"layers \[0\], not 0..1$"):
    weights.read_file(broken)


@pytest.mark.slow
def test_a_bfloat16_file_holds_bfloat16_arrays_and_loads(lm_run, tmp_path):
  config, workdir = lm_run
  out = str(tmp_path / "bf16.safetensors")
  export.export(workdir, out, dtype="bfloat16")
  arrays = safetensors.numpy.load_file(out)  # NumPy's bfloat16 is ml_dtypes' (jax imports it)
  assert {x.dtype.name for x in arrays.values()} == {"bfloat16"}
  run = jaxdl.load(out)
  assert run.apply(_tokens(config)).shape == (2, config.model.block_size, run.model_info[
      "vocab_size"])


def test_cast_leaves_integer_arrays_as_they_are():
  flat = {"w": np.ones((2, 2), np.float32), "n": np.arange(3, dtype=np.int32)}
  cast = export.cast(flat, "float16")
  assert cast["w"].dtype == np.float16 and cast["n"].dtype == np.int32
  np.testing.assert_array_equal(cast["n"], flat["n"])
  assert export.cast(flat, "") == flat


def test_a_non_contiguous_array_is_written_with_its_values(tmp_path):
  """safetensors.numpy writes the buffer of a transposed or strided view as it lies in memory,
  without an error (safetensors issue 825): write_file makes every array contiguous first."""
  a = np.arange(24, dtype=np.float32).reshape(4, 6)
  views = {"transposed": a.T, "strided": a[:, ::2], "reversed": a[::-1]}
  assert not any(v.flags.c_contiguous for v in views.values())
  path = str(tmp_path / "views.safetensors")
  weights.write_file(path, views, {})
  back = safetensors.numpy.load_file(path)
  for name, view in views.items():
    np.testing.assert_array_equal(back[name], view, err_msg=name)


def test_a_failed_write_leaves_no_file_and_the_old_one_whole(tmp_path, monkeypatch):
  path = tmp_path / "w.safetensors"
  weights.write_file(str(path), {"a": np.ones(3, np.float32)}, {})
  before = path.read_bytes()

  def half_written(tensors, filename, metadata=None):
    with open(filename, "wb") as f:
      f.write(b"\0" * 10)
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(safetensors.numpy, "save_file", half_written)
  with pytest.raises(OSError, match="No space left"):
    weights.write_file(str(path), {"a": np.zeros(3, np.float32)}, {})
  assert path.read_bytes() == before and os.listdir(tmp_path) == ["w.safetensors"]


@pytest.mark.slow
def test_a_batchnorm_file_predicts_as_its_workdir(bn_run, tmp_path):
  _, workdir = bn_run
  out = str(tmp_path / "bn.safetensors")
  line = export.export(workdir, out, which="4")
  assert line.startswith(f"wrote {out}: 7 arrays, ") and line.endswith(
      f"the checkpoint at step 4 (4) of {workdir}")
  arrays = safetensors.numpy.load_file(out)
  assert sorted(arrays) == ["batch_stats.BatchNorm_0.mean", "batch_stats.BatchNorm_0.var",
                            "params.BatchNorm_0.bias", "params.BatchNorm_0.scale",
                            "params.Dense_0.kernel", "params.Dense_1.bias",
                            "params.Dense_1.kernel"]
  assert not np.allclose(arrays["batch_stats.BatchNorm_0.mean"], 0)  # trained statistics
  run, from_file = jaxdl.load(workdir), jaxdl.load(out)
  with open(os.path.join(workdir, CLASSES_FILE), encoding="utf-8") as f:
    assert from_file.files == {CLASSES_FILE: f.read()}
  paths = _digits(tmp_path)
  assert from_file.predict(paths) == run.predict(paths)
  with pytest.raises(UserError, match=r"^which='best': .*bn.safetensors holds the weights of "
                                      r"one checkpoint"):
    jaxdl.load(out, "best")


@pytest.mark.slow
def test_an_nnx_file_comes_back_with_its_list_and_batch_stats(nnx_run, tmp_path):
  _, workdir = nnx_run
  out = str(tmp_path / "nnx.safetensors")
  export.export(workdir, out)
  assert "params.layers.1.kernel" in safetensors.numpy.load_file(out)
  run, from_file = jaxdl.load(workdir), jaxdl.load(out)
  assert_same_params(from_file.variables, run.variables)  # int keys as NNX's, as load's
  module = from_file.nnx_model()
  np.testing.assert_array_equal(module.layers[1].kernel[...],
                                run.variables["params"]["layers"][1]["kernel"])
  paths = _digits(tmp_path)
  assert from_file.predict(paths) == run.predict(paths)


@pytest.mark.slow
def test_a_text_classifier_file_predicts_with_its_vocabulary(text_run, tmp_path):
  _, workdir = text_run
  out = str(tmp_path / "text.safetensors")
  export.export(workdir, out)
  run, from_file = jaxdl.load(workdir), jaxdl.load(out)
  assert set(from_file.files) == {VOCAB_FILE}
  sentences = ["the film is good", "a dull plot", "unseen words here"]
  assert from_file.predict(sentences) == run.predict(sentences)


def test_what_cannot_be_exported_is_one_line(tmp_path):
  """A run without checkpoints (--out and --dtype are checked before any checkpoint is read)."""
  out = str(tmp_path / "x.safetensors")
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "config.json").write_text(json.dumps({"task": "image_classification",
                                                 "model": {"name": "small_models:bn_mlp"}}))
  (empty / "model_info.json").write_text('{"num_classes": 10}')
  workdir = str(empty)
  with pytest.raises(UserError, match=r"^no checkpoint in .*empty/checkpoints; train first"):
    export.export(workdir, out)
  (tmp_path / "a_file").write_text("")
  for bad, why in ((str(tmp_path / "no_dir" / "x.safetensors"), "the directory .*no_dir does "
                    "not exist"),
                   (str(tmp_path / "a_file" / "x.safetensors"), ".*a_file is not a directory"),
                   (str(tmp_path / "x.npz"), "must end in .safetensors")):
    with pytest.raises(UserError, match=f"^--out={bad}: {why}$"):
      export.export(workdir, bad)
  (tmp_path / "d.safetensors").mkdir()
  with pytest.raises(UserError, match=r"^--out=.*d.safetensors: is a directory$"):
    export.export(workdir, str(tmp_path / "d.safetensors"))
  with pytest.raises(UserError, match=r"^--dtype=int8: must be one of bfloat16, float16, "
                                      r"float32"):
    export.export(workdir, out, dtype="int8")
  with pytest.raises(UserError, match=r"^--workdir=.*x.safetensors: a weights file, not a "):
    export.export(str(tmp_path / "x.safetensors"), str(tmp_path / "y.safetensors"))
  assert sorted(os.listdir(tmp_path)) == ["a_file", "d.safetensors", "empty"]  # nothing written

  # Reading: a missing file, a file that is not safetensors, one jaxdl did not write.
  with pytest.raises(UserError, match=r"^.*nothing.safetensors: not found$"):
    jaxdl.load(str(tmp_path / "nothing.safetensors"))
  (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
  for read in (weights.read_file, weights.read_metadata):
    with pytest.raises(UserError, match=r"^.*junk.safetensors: not a safetensors file \("):
      read(str(tmp_path / "junk.safetensors"))
  safetensors.numpy.save_file({"w": np.ones(2, np.float32)}, str(tmp_path / "foreign.safetensors"))
  variables, meta = weights.read_file(str(tmp_path / "foreign.safetensors"))
  assert set(variables) == {"w"} and meta["config"] is None and meta["files"] == {}
  assert weights.read_metadata(str(tmp_path / "foreign.safetensors")) == meta
  with pytest.raises(UserError, match=r"foreign.safetensors: no jaxdl config and model_info in "
                                      r"its metadata \(not written by python -m jaxdl.export\)"):
    jaxdl.load(str(tmp_path / "foreign.safetensors"))


def _cli(*args, env=None):
  return subprocess.run([sys.executable, "-m", "jaxdl.export", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_the_cli_reports_a_mistake_in_one_line(tmp_path):
  result = _cli(f"--workdir={tmp_path}", f"--out={tmp_path}/x.safetensors", "--dtype=fp8")
  assert result.returncode == 1
  assert result.stderr == ("jaxdl: error: --dtype=fp8: must be one of bfloat16, float16, "
                           "float32 (or unset: each array's saved dtype)\n"), result.stderr


@pytest.fixture
def gcs():
  import gcs_server  # pylint: disable=g-import-not-at-top
  with gcs_server.running("jaxdl-export") as env:
    yield env


@pytest.mark.slow
def test_a_gs_workdir_exports_to_a_local_and_a_gs_file(bn_run, gcs, tmp_path):
  """The BatchNorm run copied onto the loopback GCS server (tests/gcs_server.py), read from
  there; the file written to the server and read back from it."""
  import gcsfs  # pylint: disable=g-import-not-at-top
  _, workdir = bn_run
  gcsfs.GCSFileSystem().put(workdir, "jaxdl-export/run", recursive=True)
  local = str(tmp_path / "local.safetensors")
  export.export(workdir, local)
  export.export("gs://jaxdl-export/run", str(tmp_path / "from_gs.safetensors"))
  export.export("gs://jaxdl-export/run", "gs://jaxdl-export/out.safetensors")
  for path in (str(tmp_path / "from_gs.safetensors"), "gs://jaxdl-export/out.safetensors"):
    variables, meta = weights.read_file(path)
    assert_same_params(variables, weights.read_file(local)[0])
    assert meta["files"] == weights.read_file(local)[1]["files"]
    assert weights.read_metadata(path) == meta
  paths = _digits(tmp_path)
  assert (jaxdl.load("gs://jaxdl-export/out.safetensors").predict(paths)
          == jaxdl.load(workdir).predict(paths))


# Each of 2 processes runs `python -m jaxdl.export` as a user's job would (runpy: the module as
# __main__); then, in the job that started, two exports that fail (on both processes before the
# checkpoint is read; on process 0 alone as it writes) and a gather of an array sharded over
# both processes (export._host), which no checkpoint read gives today (runs.read_variables
# restores arrays whole on every process).
_PROCESS = """
import os, runpy, sys
import numpy as np
sys.argv = ["jaxdl.export", *sys.argv[1:]]
try:
  runpy.run_module("jaxdl.export", run_name="__main__", alter_sys=True)
except SystemExit as e:
  assert not e.code, e.code
import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, PartitionSpec
from jaxdl import export, weights
from jaxdl.errors import UserError
flags = dict(arg[2:].split("=", 1) for arg in sys.argv[1:])
directory = os.path.dirname(flags["out"])
def full_disk(path, *args):
  raise OSError(28, "No space left on device", path)
for out, fails in ((f"{directory}/missing/x.safetensors", False),
                   (f"{directory}/failed.safetensors", True)):
  if fails and jax.process_index() == 0:
    weights.write_file = full_disk
  try:
    export.export(flags["workdir"], out)
  except (UserError, OSError) as e:
    print(type(e).__name__, e, flush=True)
mesh = Mesh(np.array(jax.devices()), ("p",))
local = np.full((1, 3), jax.process_index(), np.float32)
sharded = multihost_utils.host_local_array_to_global_array(local, mesh, PartitionSpec("p"))
assert not sharded.is_fully_addressable
print("gathered", export._host(sharded).tolist(), flush=True)
"""


@pytest.mark.slow
def test_two_processes_export_one_file_written_by_process_0(bn_run, tmp_path):
  """A 2-process job on 127.0.0.1 (one CPU device each, gloo): both read the checkpoint,
  process 0 writes the file, process 1 waits and writes nothing; the file is the one a lone
  process writes. A failure on process 0 is one line on process 1 too (no process waits
  forever)."""
  _, workdir = bn_run
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  (tmp_path / "job").mkdir()
  out = str(tmp_path / "job" / "bn.safetensors")
  procs = [subprocess.Popen(
      [sys.executable, "-c", _PROCESS, f"--workdir={workdir}", f"--out={out}",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env={**os.environ, "JAX_NUM_CPU_DEVICES": "1", "JAX_COMPILATION_CACHE_DIR":
           os.path.join(SUBPROCESS_CACHE, f"process-{i}") if SUBPROCESS_CACHE else ""})
           for i in range(2)]
  try:
    outputs = [p.communicate(timeout=240) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  job = tmp_path / "job"
  missing = f"UserError --out={job}/missing/x.safetensors: the directory {job}/missing does not exist"
  full = f"{job}/failed.safetensors: No space left on device"
  for i, (p, (stdout, stderr)) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, stderr[-3000:]
    assert stdout.splitlines()[-3:] == [
        missing, f"OSError [Errno 28] No space left on device: '{full.split(':')[0]}'"
        if i == 0 else f"UserError cannot write {full}",
        "gathered [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]"], stdout
  wrote = [[line for line in stdout.splitlines() if line.startswith("wrote")]
           for stdout, _ in outputs]  # (gloo prints a line of its own)
  assert wrote[0][0].startswith(f"wrote {out}: 7 arrays, ") and wrote[1] == [], wrote
  assert os.listdir(tmp_path / "job") == ["bn.safetensors"]  # no temporary file left
  alone = str(tmp_path / "alone.safetensors")
  export.export(workdir, alone)
  # Compared as arrays and metadata, not bytes: safetensors writes the metadata's keys in an
  # order that differs from process to process (a Rust HashMap's).
  (job_variables, job_meta), (variables, meta) = weights.read_file(out), weights.read_file(alone)
  assert_same_params(job_variables, variables)
  assert job_meta == meta
