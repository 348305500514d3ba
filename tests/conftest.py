"""Shared fixtures: tiny configs derived from the real config files."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile

# XLA:CPU compiles the suite's programs without LLVM's optimization passes (O0), unless XLA_FLAGS
# already names a level (XLA_FLAGS=--xla_backend_optimization_level=3, XLA's default, runs the
# suite as users run jaxdl). Compiling was ~70% of the suite's CPU time, for tiny programs that then run for
# milliseconds: at O0 the whole suite took 307 s instead of 536 s on 2 cores (2026-12-04, AMD
# EPYC, jax 0.10.2). The programs compute the same operations; rounding differs from the default
# level's in the last bits, and no test compares numbers across levels: the runs that resume the
# old workdirs (made at the default level) train at the default level (test_old_workdirs.py), as
# does test_main.py's two-device run from the command line. Set before jax is imported: XLA
# reads XLA_FLAGS once, when its CPU client starts; every process the tests start inherits it.
# XLA's default level, named: a process that imports this file (tests/parallel_worker.py) gets
# O0 unless XLA_FLAGS names a level; level 3 gives the same results as no flag (measured).
DEFAULT_XLA_LEVEL = "--xla_backend_optimization_level=3"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = " ".join(
      [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The loop's tests train a small MLP (tests/small_models.py), named as a user names a model of
# their own: importable from tests/, here and in every process the tests start.
SMALL_MODEL = "small_models:mlp"
_TESTS = os.path.join(REPO, "tests")
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_TESTS, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]])
if _TESTS not in sys.path:
  sys.path.insert(0, _TESTS)

# Ctrl-C as a terminal sends it, whatever this session was started with. A session started with
# SIGINT ignored (nohup, or `cmd &` in a shell script) passes the ignoring on to every process it
# starts, and jaxdl leaves an ignored signal ignored (stopping.StopSignals), so the tests that
# send SIGINT would see runs that never stop. A handled signal is reset to the default in a
# child, so the processes the tests start get Python's own KeyboardInterrupt handler.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
  signal.signal(signal.SIGINT, signal.default_int_handler)


# One persistent compilation cache for this pytest process, in a temporary directory (never
# the user's ~/.cache): many tests train the same tiny programs, which then compile once (the
# suite ran ~35% faster). Set at import, before any test module: JAX decides at its first
# compilation whether it uses the cache. JAXDL_TEST_NO_CACHE=1 turns it off. Subprocesses
# (run_main, the multi-process and gs:// tests) share it through SUBPROCESS_CACHE: a cached
# executable is the program XLA would compile again, so their numbers do not change. This is what
# main.enable_compilation_cache does; importing jaxdl.main here would define its absl flags a
# second time beside jaxdl.sample's.
# pytest-xdist's workers share it too: the controller imports this file before it starts them,
# and they inherit the directory's name through the environment (the same tiny programs compile
# in modules on both workers). The controller's TemporaryDirectory removes it at the end.
_XLA_CACHE_DIR = os.environ.get("JAXDL_TEST_XLA_CACHE_DIR")
if not _XLA_CACHE_DIR:
  _XLA_CACHE = tempfile.TemporaryDirectory(prefix="jaxdl-tests-xla-")
  _XLA_CACHE_DIR = os.environ["JAXDL_TEST_XLA_CACHE_DIR"] = _XLA_CACHE.name
if not os.environ.get("JAXDL_TEST_NO_CACHE"):
  jax.config.update("jax_compilation_cache_dir", _XLA_CACHE_DIR)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  # Every process the tests start shares it as well: jaxdl.main through JAXDL_XLA_CACHE (never
  # the user's ~/.cache), jaxdl.sample and .predict through JAX's own variables.
  os.environ.update({"JAXDL_XLA_CACHE": _XLA_CACHE_DIR,
                     "JAX_COMPILATION_CACHE_DIR": _XLA_CACHE_DIR,
                     "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                     "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"})
SUBPROCESS_CACHE = "" if os.environ.get("JAXDL_TEST_NO_CACHE") else _XLA_CACHE_DIR


# The processes that tests start (python -m jaxdl.main, .predict, .sample, the multi-process
# jobs) fail on a DeprecationWarning or FutureWarning as the tests themselves do (pyproject.toml's
# filterwarnings), through the environment they inherit. Allowed, with the reason:
# - ml_collections' config_flags loads the --config file with importlib's deprecated
#   load_module() (Python 3.12 warns); jaxdl cannot choose how absl flags import a file.
os.environ["PYTHONWARNINGS"] = ",".join([
    "error::DeprecationWarning", "error::FutureWarning",
    "ignore:the load_module() method is deprecated:DeprecationWarning"])


# The modules that cost the most CPU-seconds, heaviest first (measured 2026-12-04: 25-75 s each,
# tests/README.md); the others follow in their usual order. Under `-n 2 --dist loadscope` a free
# worker takes the next whole module (pyproject.toml turns xdist's reordering by test count
# off), so the heavy ones start early and the light ones fill in at the end: sorted by test
# count, a 50-second module of 3 tests started last and ran alone for its last 20 s.
HEAVY_MODULES = ("test_multihost.py", "test_custom.py", "test_old_workdirs.py", "test_train.py",
                 "test_transformer.py", "test_faults.py", "test_gcs_workdir.py",
                 "test_parallel.py", "test_main.py", "test_text_train.py", "test_lease.py",
                 "test_lm.py", "test_runs.py", "test_export.py",
                 "test_text_models.py", "test_sample.py", "test_sweep.py", "test_initfrom.py",
                 "test_tokens.py", "test_gcs_data.py",
                 "test_optim.py", "test_steps.py", "test_models.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(HEAVY_MODULES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within kept


def load_config_file(path: str, preset: str | None = None):
  """A config file's get_config(preset), imported by its path as config_flags does."""
  name = "config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset)


def load_config(name: str, preset: str | None = None):
  """configs/<name>.py's get_config(preset)."""
  return load_config_file(f"{REPO}/configs/{name}.py", preset)


def _assigned_fields(lines):
  """{'opt.lr': line} of the `c.KEY = VALUE` lines (blocks left out); the first one wins."""
  fields = {}
  for line in lines:
    if line.strip().startswith("c.") and " = " in line and "ConfigDict()" not in line:
      fields.setdefault(line.strip()[2:].split(" = ")[0], line)
  return fields


def declared_fields(name: str) -> dict:
  """{key: the line declaring it} for configs/<name>.py: the shared keys' lines in
  configs/common.py, the experiment's own keys' lines in its file (a preset's body, after
  'if preset ==', and overrides of shared keys left out)."""
  with open(f"{REPO}/configs/common.py") as f:
    shared = _assigned_fields(f.read().splitlines())
  with open(f"{REPO}/configs/{name}.py") as f:
    lines = f.read().splitlines()
  body = next((i for i, line in enumerate(lines) if "if preset ==" in line), len(lines))
  own = {k: line for k, line in _assigned_fields(lines[:body]).items() if k not in shared}
  return {**shared, **own}


def flat_keys(d: dict, prefix: str = "") -> set:
  """The dotted keys of a nested dict's leaves ('opt.lr')."""
  return {k for key, v in d.items()
          for k in (flat_keys(v, f"{prefix}{key}.") if isinstance(v, dict) else [prefix + key])}


def set_keys(config, values: dict):
  """Sets dotted keys ('opt.lr': 0.1) in order, as --config.KEY=VALUE overrides do. A list (as
  JSON gives it) is set as a tuple, the configs' type for sequences (parallel.mesh_shape)."""
  for key, value in values.items():
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = getattr(node, part)
    setattr(node, leaf, tuple(value) if isinstance(value, list) else value)
  return config


def flag_values(args) -> dict:
  """{dotted key: value} of the `--config.KEY=VALUE` flags among `args`, each value parsed as
  config_flags parses it (a Python literal: 16, 1e-3, True, (2, 4); anything else a string)."""
  import ast  # pylint: disable=g-import-not-at-top
  values = {}
  for arg in args:
    if arg.startswith("--config."):
      key, text = arg[len("--config."):].split("=", 1)
      try:
        values[key] = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        values[key] = text
  return values


def file_bytes(root: str) -> dict[str, bytes]:
  """{relative path: content} of every file under root, but the lease that each start takes
  (jaxdl/lease.py): 'byte for byte as it was'."""
  from jaxdl.lease import LEASE  # pylint: disable=g-import-not-at-top
  out = {}
  for dirpath, _, names in os.walk(root):
    for name in names:
      path = os.path.join(dirpath, name)
      if os.path.relpath(path, root) != LEASE:
        with open(path, "rb") as f:
          out[os.path.relpath(path, root)] = f.read()
  return out


def read_events(workdir: str, wall_clock: bool = False) -> list[dict]:
  """WORKDIR/metrics.jsonl's events (local or gs://), each line parsed; without the wall-clock
  throughput fields (`*_per_s`), which differ from run to run, unless `wall_clock`."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  text = epath.Path(workdir, "metrics.jsonl").read_text()
  events = [json.loads(line) for line in text.splitlines() if line.strip()]
  return events if wall_clock else [
      {k: v for k, v in e.items() if not k.endswith("_per_s")} for e in events]


def assert_close_events(got: list[dict], want: list[dict], rtol: float, atol: float = 0.0):
  """Events (or final-metric dicts) equal key for key: floats, and lists of numbers (per-class
  scores, a confusion matrix), to rtol/atol; everything else (event names, steps, counts)
  exactly. Callers say why their tolerance is not 0."""
  assert [sorted(e) for e in got] == [sorted(e) for e in want], (got, want)
  for g, w in zip(got, want):
    for key, value in w.items():
      if isinstance(value, (float, list)):
        np.testing.assert_allclose(g[key], value, rtol=rtol, atol=atol, err_msg=f"{key}: {g}")
      else:
        assert g[key] == value, (key, g, w)


def assert_same_params(got, want, rtol: float | None = None, atol: float = 0.0):
  """Two pytrees of arrays (e.g. runs.read_variables of two workdirs): the same structure,
  shapes and dtypes, and the same values: bit for bit, or to rtol/atol where given."""
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, a.shape, b.dtype, b.shape)
    if rtol is None:
      np.testing.assert_array_equal(a, b)
    else:
      np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def state_like(model, tx, sample_inputs, ema: bool = False):
  """steps.create_state's arrays as shapes and dtypes on this process's first device, traced
  without computing anything: the target Checkpoints.restore_latest takes. (Running the init
  op by op, as the tests once did, compiled each of its ~80 ops: ~5 CPU-s for the tiny LM.)"""
  from jaxdl import steps  # pylint: disable=g-import-not-at-top
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  shapes = jax.eval_shape(lambda: steps.create_state(model, tx, sample_inputs, 0, ema=ema))
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), shapes)


def short_schedule(c):
  """The tiny runs' shared schedule: 24 steps; logs, evals and checkpoints falling apart."""
  c.num_train_steps = 24
  c.log_every = 5
  c.eval_every = 10
  c.checkpoint_every = 8
  c.opt.warmup_steps = 4
  return c


@pytest.fixture
def tiny_mnist():
  return tiny_mnist_config()


def tiny_mnist_config():
  """The real MNIST config shrunk to seconds: synthetic data, a few steps, frequent events, and
  the small MLP of tests/small_models.py in place of the seed CNN."""
  c = load_config("mnist")
  c.model.name = SMALL_MODEL
  c.data.source = "synthetic"
  c.data.synthetic_size = 200
  c.data.validation_size = 0  # evals on the synthetic test split (test_data tests the carving)
  c.batch_size = 16
  c.eval_batch_size = 32
  short_schedule(c)
  return c


def interrupt_at(config, workdir: str, monkeypatch, at_step: int, where=None) -> None:
  """Runs train_and_evaluate(config, workdir) until Ctrl-C arrives as step `at_step`'s input is
  fetched. `where` is the (class, method) the loop calls per step, by default
  (data.TrainBatches, 'batch'; the text task's LengthGroupedBatches.batch calls it too); fused
  steps fetch through TrainBatches.indices, the LM through windows.TrainWindows.batch."""
  from jaxdl import data, train  # pylint: disable=g-import-not-at-top
  cls, name = where or (data.TrainBatches, "batch")
  real = getattr(cls, name)
  def interrupting(self, step):
    if step == at_step:
      raise KeyboardInterrupt
    return real(self, step)
  with monkeypatch.context() as patch:
    patch.setattr(cls, name, interrupting)
    with pytest.raises(KeyboardInterrupt):
      train.train_and_evaluate(config, workdir)


def run_main(*args: str, env: dict | None = None, timeout: float = 300):
  """Runs `python -m jaxdl.main ARGS` from the repo root; returns the CompletedProcess.

  The persistent compilation cache is the test session's (SUBPROCESS_CACHE) unless `env` sets
  JAXDL_XLA_CACHE: tests never write to the user's ~/.cache."""
  return subprocess.run([sys.executable, "-m", "jaxdl.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, "JAXDL_XLA_CACHE": SUBPROCESS_CACHE, **(env or {})})


def run_worker(runs: list, env: dict) -> str:
  """Trains `runs` one after another in a process of their own (tests/parallel_worker.py: its
  RUNS_JSON), with `env` added to this one's (a device count, an XLA level); its stdout. A
  failed process fails the test with the end of its stderr."""
  result = subprocess.run([sys.executable, os.path.join(REPO, "tests", "parallel_worker.py"),
                           json.dumps(runs)], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **env})
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


# The tiny MNIST settings as sweep overrides, plus a profile of two steps.
TINY_OVERRIDES = (f"model.name={SMALL_MODEL}", "data.source=synthetic", "data.synthetic_size=200",
                  "batch_size=16", "eval_batch_size=32", "num_train_steps=8", "log_every=2",
                  "eval_every=4", "checkpoint_every=4", "opt.warmup_steps=2", "profile_steps=2:4")


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory):
  """Two tiny runs that differ only in opt.lr, run once per session by jaxdl.sweep (2 at a time).

  Returns (root, axes, {workdir: result}, printed output).
  """
  import io  # pylint: disable=g-import-not-at-top
  from jaxdl import sweep  # pylint: disable=g-import-not-at-top
  root = str(tmp_path_factory.mktemp("sweep"))
  axes = sweep.parse_axes(["opt.lr=0.01,0.003", *TINY_OVERRIDES])
  out = io.StringIO()
  cwd = os.getcwd()
  os.chdir(REPO)  # the runs are `python -m jaxdl.main` from the repo root, as experiments/sweep.sh
  try:
    results = sweep.sweep("configs/mnist.py", axes, root, jobs=2, out=out)
  finally:
    os.chdir(cwd)
  return root, axes, results, out.getvalue()


def write_mnist_dir(directory, n_train: int = 30, n_test: int = 11, gz: bool = True,
                    learnable: bool = False, seed: int = 0) -> dict:
  """The four MNIST IDX files (.gz unless gz=False) of seeded random images and labels in
  `directory`; returns {'train': (images, labels), 'test': (images, labels)}. The images are
  uniform noise, or with `learnable` a dim background with a bright square where the label says
  (an easy task a small model learns in a hundred steps)."""
  from jaxdl.data import idx  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  ext = ".gz" if gz else ""
  arrays = {}
  for split, n, prefix in (("train", n_train, "train"), ("test", n_test, "t10k")):
    if learnable:
      labels = rng.integers(0, 10, n).astype(np.uint8)
      images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
      for i, label in enumerate(labels):
        images[i, 2 * label:2 * label + 8, 4:12] = 250
    else:
      images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
      labels = rng.integers(0, 10, (n,), dtype=np.uint8)
    idx.write_idx(f"{directory}/{prefix}-images-idx3-ubyte{ext}", images)
    idx.write_idx(f"{directory}/{prefix}-labels-idx1-ubyte{ext}", labels)
    arrays[split] = (images, labels)
  return arrays


def write_play(path, num_lines: int = 400, seed: int = 0) -> str:
  """A small made-up play (speaker lines and verse), written as UTF-8; returns its text."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  speakers = ["ROMEO", "JULIET", "NURSE", "FRIAR"]
  words = ["love", "night", "thee", "sweet", "death", "fair", "the", "my", "and", "is", "o"]
  lines = []
  for _ in range(num_lines):
    lines.append(f"{rng.choice(speakers)}:\n" + " ".join(rng.choice(words, 6)).capitalize() + ".\n")
  text = "\n".join(lines)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return text


def tiny_lm_config(text_path: str):
  """The real LM config shrunk to seconds: a tiny Transformer on a small made-up play."""
  c = load_config("tiny_lm")
  c.data.path = text_path
  if not os.path.exists(text_path):
    write_play(text_path)
  c.model.num_layers = 2
  c.model.num_heads = 2
  c.model.width = 32
  c.model.block_size = 16
  c.model.dropout = 0.1  # exercises the step rng in resume tests
  c.batch_size = 8
  c.eval_batch_size = 16
  c.data.eval_windows = 40
  short_schedule(c)
  return c


@pytest.fixture
def tiny_lm(tmp_path):
  return tiny_lm_config(str(tmp_path / "play.txt"))


@pytest.fixture(scope="session")
def trained_tiny_lm(tmp_path_factory):
  """(config, workdir, final metrics) of one uninterrupted tiny LM run, shared by the tests."""
  from jaxdl import train  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("tiny_lm")
  config = tiny_lm_config(str(root / "play.txt"))
  workdir = str(root / "run")
  return config, workdir, train.train_and_evaluate(config, workdir)

