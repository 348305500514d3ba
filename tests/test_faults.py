"""Fault tolerance: kills, preemption, damaged checkpoints, divergence, wrong workdirs, bad input.

Each row of README.md's "What happens when..." table names its test here (or in test_main.py /
test_data.py).
"""

import copy
import glob
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import (REPO, SMALL_MODEL, SUBPROCESS_CACHE, assert_same_params, file_bytes,
                      load_config, read_events, run_main, state_like, tiny_mnist_config,
                      write_mnist_dir)
from jaxdl import (checkpoint, data, digests, lease, metrics, models, optim, resume, runs,
                   stopping, tasks, train)
from jaxdl.data import idx
from jaxdl.errors import UserError


def _kill_and_resume():
  spec = importlib.util.spec_from_file_location(
      "kill_and_resume", os.path.join(REPO, "experiments", "mnist", "kill_and_resume.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _snapshot(root):
  """{relative path: (size, mtime)} of every file and directory under root but the lease, which
  each start takes (and a refused one leaves as it found it: empty)."""
  out = {}
  for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames + filenames:
      if name == lease.LEASE and dirpath == root:
        continue
      path = os.path.join(dirpath, name)
      st = os.stat(path)
      out[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
  return out


def _like(config):
  model = models.get(config.model, num_classes=config.model.num_classes)
  tx = optim.make(config.opt, config.num_train_steps)
  return state_like(model, tx, np.zeros((1, 28, 28, 1), np.uint8))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A finished tiny run (checkpoints 8, 16, 24) that tests copy and then damage."""
  config = tiny_mnist_config()
  workdir = str(tmp_path_factory.mktemp("finished") / "w")
  final = train.train_and_evaluate(config, workdir)
  return config, workdir, final


# ---------------------------------------------------------------------------------------------
# Exact resume under SIGKILL, SIGTERM and SIGINT, from the command line.

_CHAOS_FLAGS = ("--config=configs/mnist.py", f"--config.model.name={SMALL_MODEL}",
                "--config.data.source=synthetic",
                "--config.data.synthetic_size=200", "--config.batch_size=16",
                "--config.eval_batch_size=50", "--config.num_train_steps=60",
                "--config.log_every=3", "--config.eval_every=10",
                "--config.checkpoint_every=4", "--config.opt.warmup_steps=4",
                "--config.data.validation_size=0")  # as tiny_mnist


@pytest.mark.slow
def test_killed_at_random_moments_resumes_bitwise(tmp_path, tiny_mnist):
  """A SIGKILL mid-save, a SIGTERM and a SIGINT, in a seeded random order at seeded random
  moments, each followed by the same command; the result equals an uninterrupted run bit for
  bit. (5 kills, at random moments too, are the real-data experiment's,
  experiments/mnist/kill_and_resume.py; a whole job SIGKILLed at a random moment is
  test_multihost.py's.)"""
  kr = _kill_and_resume()
  workdir = str(tmp_path / "killed")
  cmd = [kr.sys.executable, "-m", "jaxdl.main", f"--workdir={workdir}", *_CHAOS_FLAGS]
  # The session's persistent compilation cache spares the restarted processes XLA's compile
  # time; a cached executable is the program the compiler would produce again, so results stay
  # bitwise equal.
  record = kr.interrupt_until_done(cmd, workdir, seed=0, kills=1, log=print,
                                   env={"JAXDL_XLA_CACHE": SUBPROCESS_CACHE})
  assert sum(line.startswith("kill") for line in record) >= 1, record
  assert any("unfinished save left" in line for line in record), record

  # The reference: the same config, uninterrupted, in this process.
  tiny_mnist.num_train_steps, tiny_mnist.log_every, tiny_mnist.eval_every = 60, 3, 10
  tiny_mnist.checkpoint_every, tiny_mnist.eval_batch_size = 4, 50
  reference = str(tmp_path / "reference")
  train.train_and_evaluate(tiny_mnist, reference)
  got, want = read_events(workdir), read_events(reference)
  assert got == want
  train_steps = [e["step"] for e in got if e["event"] == "train"]
  assert train_steps == sorted(set(train_steps)) == [*range(3, 61, 3)]  # none twice/missing
  assert_same_params(runs.read_variables(workdir)[1],
                     runs.read_variables(reference)[1])  # bitwise


def test_sigterm_saves_the_current_step(finished_run, tiny_mnist, tmp_path, monkeypatch,
                                        capsys):
  """SIGTERM between checkpoints: step 6 is saved (not just 0), then resumed exactly."""
  config, full, expected = finished_run
  assert config.to_dict() == tiny_mnist.to_dict()
  workdir = str(tmp_path / "w")
  real_batch = data.TrainBatches.batch
  def signalling_batch(self, step):
    if step == 5:  # arrives while step 5 (the 6th update) runs
      os.kill(os.getpid(), __import__("signal").SIGTERM)
    return real_batch(self, step)
  with monkeypatch.context() as patch:
    patch.setattr(data.TrainBatches, "batch", signalling_batch)
    with pytest.raises(stopping.Stopped) as stopped:
      train.train_and_evaluate(tiny_mnist, workdir)
  assert stopped.value.step == 6
  assert "SIGTERM: saved the checkpoint at step 6" in capsys.readouterr().out
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["6"]
  assert train.train_and_evaluate(tiny_mnist, workdir) == expected
  assert "resumed from the checkpoint at step 6" in capsys.readouterr().out
  assert read_events(workdir) == read_events(full)


# ---------------------------------------------------------------------------------------------
# Damaged checkpoints: fall back to the newest intact one, move the bad one aside.


def _largest_file(root):
  paths = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
  return max(paths, key=os.path.getsize)


def _truncate(step_dir):
  path = _largest_file(os.path.join(step_dir, "state"))
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _empty(step_dir):  # a half-copied directory: the step is there, its contents are not
  shutil.rmtree(step_dir)
  os.mkdir(step_dir)


def _flip(step_dir):  # 64 bytes of the array data, each xor 0xFF: a disk's silent corruption
  path = _largest_file(os.path.join(step_dir, "state"))
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    data = f.read(64)
    f.seek(os.path.getsize(path) // 2)
    f.write(bytes(b ^ 0xFF for b in data))


def _write(*parts, content=b""):  # a file left empty (a power cut) or garbled
  def damage(step_dir):
    with open(os.path.join(step_dir, *parts), "wb") as f:
      f.write(content)
  return damage


DAMAGE = {
    "truncated array data": _truncate,
    "flipped bits in array data": _flip,
    "state metadata missing": lambda d: os.remove(os.path.join(d, "state", "_METADATA")),
    "state manifest missing": lambda d: os.remove(os.path.join(d, "state", "manifest.ocdbt")),
    "array data missing": lambda d: shutil.rmtree(os.path.join(d, "state", "ocdbt.process_0")),
    "loop state missing": lambda d: os.remove(os.path.join(d, "loop", "metadata")),
    "loop folder missing": lambda d: shutil.rmtree(os.path.join(d, "loop")),
    "state folder missing": lambda d: shutil.rmtree(os.path.join(d, "state")),
    "empty step directory": _empty,
    **{f"{name} {how}": _write(*parts, content=content)
       for name, parts in (("state metadata", ("state", "_METADATA")),
                           ("array metadata", ("state", "array_metadatas", "process_0")),
                           ("loop metadata", ("loop", "metadata")),
                           ("checkpoint metadata", ("_CHECKPOINT_METADATA",)))
       for how, content in (("empty", b""), ("garbled", b'{"tree_metadata": {"(\x00\xff'))},
}


# Without a digest, flipped bits cannot be told from data: what the digest is for.
@pytest.mark.parametrize("damage, digest", [
    (damage, digest) for damage in sorted(DAMAGE)
    for digest in ("with its digest", "saved without a digest")
    if (damage, digest) != ("flipped bits in array data", "saved without a digest")])
def test_damaged_newest_checkpoint_falls_back(finished_run, tmp_path, damage, digest, caplog):
  """Real damage to real files of the newest step: moved aside, the next one restored. With the
  digest recorded at the save, every byte counts; a step without one (an older jaxdl's, or one
  killed between its commit and its digest) is judged from its files' shapes and Orbax's
  errors, which cannot see flipped bits."""
  config, source, _ = finished_run
  workdir = str(tmp_path / "w")
  shutil.copytree(source, workdir)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if digest == "saved without a digest":
    os.remove(os.path.join(ckpt_dir, "24", digests.DIGEST))
  DAMAGE[damage](os.path.join(ckpt_dir, "24"))
  caplog.set_level(logging.WARNING)
  with checkpoint.Checkpoints(workdir, keep=3) as ckpts:
    state, loop = ckpts.restore_latest(_like(config))
  assert int(state.step) == 16 and loop["data"]["batch_in_epoch"] == 3
  assert sorted(os.listdir(ckpt_dir)) == ["16", "8", "damaged-24"]  # moved aside, not deleted
  warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any(f"{ckpt_dir}/24 is damaged" in w and "damaged-24" in w for w in warning), warning


@pytest.mark.parametrize("damage", ["truncated array data", "flipped bits in array data",
                                    "state metadata empty", "loop folder missing"])
def test_damaged_checkpoint_run_ends_as_if_nothing_happened(finished_run, tmp_path, damage):
  """End to end: the rerun resumes from step 16 and reproduces the finished run's results."""
  config, source, final = finished_run
  workdir = str(tmp_path / "w")
  shutil.copytree(source, workdir)
  DAMAGE[damage](os.path.join(workdir, "checkpoints", "24"))
  assert train.train_and_evaluate(config, workdir) == final
  assert read_events(workdir) == read_events(source)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [
      "16", "24", "8", "damaged-24"]


def test_every_checkpoint_damaged_keeps_the_record(finished_run, tmp_path):
  """Every step is moved aside; the run's history is not emptied by a fresh start: the run is
  refused (as for deleted checkpoints, test_lease.py), and so is every re-run, until --restart
  keeps the record aside."""
  config, source, final = finished_run
  workdir = str(tmp_path / "w")
  shutil.copytree(source, workdir)
  for step in ("8", "16", "24"):
    _truncate(os.path.join(workdir, "checkpoints", step))
  record = file_bytes(workdir)
  record = {k: v for k, v in record.items() if not k.startswith("checkpoints")}
  for _ in range(2):
    with pytest.raises(UserError, match=r"holds the record of a run \(metrics.jsonl: .*; "
                       r"checkpoints moved aside as damaged: damaged-16, damaged-24, damaged-8\)"):
      train.train_and_evaluate(config, workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [
        "damaged-16", "damaged-24", "damaged-8"]
    assert {k: v for k, v in file_bytes(workdir).items()
            if not k.startswith("checkpoints")} == record
  assert train.train_and_evaluate(config, workdir, restart=True) == final


@pytest.mark.parametrize("damage", ["truncated array data", "flipped bits in array data"])
def test_readers_pass_over_a_damaged_newest_checkpoint(finished_run, tmp_path, caplog, damage):
  """predict and sample read params through runs.read_variables: a damaged newest step (cut
  short, or failing its checksum) is passed over with a WARNING for the next older one, and
  left where it is (a reader changes nothing); with every step damaged, one line."""
  _, source, _ = finished_run
  workdir, older = str(tmp_path / "w"), str(tmp_path / "older")
  shutil.copytree(source, workdir)
  shutil.copytree(source, older)
  shutil.rmtree(os.path.join(older, "checkpoints", "24"))  # what the reader should fall back to
  ckpt_dir = os.path.join(workdir, "checkpoints")
  DAMAGE[damage](os.path.join(ckpt_dir, "24"))
  caplog.set_level(logging.WARNING)
  assert_same_params(runs.read_variables(workdir)[1], runs.read_variables(older)[1])
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any(f"the checkpoint at step 24 in {ckpt_dir} cannot be read" in w and
             "trying an older one" in w for w in warnings), warnings
  assert sorted(os.listdir(ckpt_dir)) == ["16", "24", "8"]
  for step in ("8", "16"):
    _truncate(os.path.join(ckpt_dir, step))
  with pytest.raises(UserError, match=r"the checkpoint at step 24 in .* cannot be read \(.*\), "
                                      r"nor can any older one"):
    runs.read_variables(workdir)[1]


def test_checkpoint_of_another_model_is_refused_untouched(finished_run, tmp_path):
  """Arrays that do not fit the config (here: SGD's optimizer state) are refused, not moved."""
  config, source, _ = finished_run
  workdir = str(tmp_path / "w")
  shutil.copytree(source, workdir)
  os.remove(os.path.join(workdir, "config.json"))  # so that only the arrays can tell
  before = _snapshot(workdir)
  other = config.copy_and_resolve_references()
  other.opt.name = "sgd"
  with pytest.raises(UserError, match=r"checkpoint at step 24 .* does not fit .* arrays differ"):
    train.train_and_evaluate(other, workdir)
  assert _snapshot(workdir) == before


# ---------------------------------------------------------------------------------------------
# Divergence: stop with the step named, or skip and count.


def _poison(monkeypatch, at_step):
  """Batch `at_step` gets a NaN mask: its loss and gradients are NaN (a corrupt batch)."""
  real_batch = data.TrainBatches.batch
  def poisoned(self, step):
    batch = real_batch(self, step)
    if step == at_step:
      batch["mask"] = batch["mask"] * np.float32("nan")
    return batch
  monkeypatch.setattr(data.TrainBatches, "batch", poisoned)


def test_nonfinite_loss_stops_naming_the_step(tiny_mnist, tmp_path, monkeypatch):
  workdir = str(tmp_path / "w")
  _poison(monkeypatch, at_step=12)  # the 13th update; checkpoints every 8
  with pytest.raises(UserError, match=r"non-finite loss or gradient at step 13 \(the last good "
                                      r"checkpoint is step 8, left intact\)"):
    train.train_and_evaluate(tiny_mnist, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["8"]
  # run.json records the stop and its reason: not a killed process (end_time null).
  with open(os.path.join(workdir, "run.json")) as f:
    segment = json.load(f)["segments"][-1]
  assert segment["end_time"] and segment["end_step"] == 15 and segment["final"] is None
  assert segment["error"].startswith("training diverged: non-finite loss or gradient at step 13")
  # The TensorBoard writer was closed on the way out: the events logged before the divergence
  # are in its file now, not waiting on a flush timer (tensorboardX's thread is stopped).
  logged = {step for tag, step, _, _ in metrics.read_tensorboard(workdir) if tag == "train/loss"}
  assert logged == {5, 10}
  monkeypatch.undo()
  with checkpoint.Checkpoints(workdir, keep=3) as ckpts:
    state, _ = ckpts.restore_latest(_like(tiny_mnist))
  assert int(state.step) == 8
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def test_skip_nonfinite_skips_and_counts(tiny_mnist, tmp_path, monkeypatch):
  tiny_mnist.train.skip_nonfinite = True
  workdir = str(tmp_path / "w")
  _poison(monkeypatch, at_step=12)
  final = train.train_and_evaluate(tiny_mnist, workdir)
  assert np.isfinite(final["test_loss"])
  events = [e for e in read_events(workdir) if e["event"] == "train"]
  assert [e["skipped_nonfinite"] for e in events] == [0, 0, 1, 0, 0]  # steps 5 .. 24
  assert all(np.isfinite(e["loss"]) for e in events)
  # The logged lr is the one optax applied last: after the skipped update the schedule counts
  # one update fewer than the step (lr_at(t) = the lr of update t, 0-based).
  lr_at = optim.schedule(tiny_mnist.opt, tiny_mnist.num_train_steps)
  want = [float(lr_at(step - 1 - (step > 12))) for step in (5, 10, 15, 20, 24)]
  assert [e["lr"] for e in events] == want


# ---------------------------------------------------------------------------------------------
# Wrong workdir: refused when the checkpoint would mean something else; harmless keys logged.


@pytest.mark.parametrize("changes, listed", [
    ({"model.dropout": 0.5}, ["model.dropout: 0.25 -> 0.5"]),
    ({"opt.name": "sgd", "data.synthetic_size": 300},
     ["data.synthetic_size: 200 -> 300", "opt.name: 'adamw' -> 'sgd'"]),
    ({"seed": 1}, ["seed: 0 -> 1"]),
])
def test_resuming_another_experiment_is_refused(finished_run, changes, listed):
  config, workdir, _ = finished_run
  before = _snapshot(workdir)
  other = config.copy_and_resolve_references()
  for key, value in changes.items():
    node = other
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  with pytest.raises(UserError) as error:
    train.train_and_evaluate(other, workdir)
  message = str(error.value)
  assert "holds checkpoints of another experiment" in message and "\n" not in message
  for item in listed:
    assert item in message, message
  assert _snapshot(workdir) == before


def test_harmless_changes_resume_and_are_logged(finished_run, tmp_path, capsys):
  config, source, final = finished_run
  workdir = str(tmp_path / "w")
  shutil.copytree(source, workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "24"))  # stopped after step 16: 8 to go
  other = config.copy_and_resolve_references()
  other.log_every, other.checkpoint_every, other.keep_checkpoints = 4, 6, 5
  other.profile_steps = "18:20"  # a resumed run can be profiled
  assert train.train_and_evaluate(other, workdir) == final  # the steps after the change train
  out = capsys.readouterr().out
  assert "resumed from the checkpoint at step 16" in out
  for line in ("log_every: 5 -> 4", "checkpoint_every: 8 -> 6", "keep_checkpoints: 3 -> 5",
               "profile_steps: '' -> '18:20'"):
    assert f"resuming with a changed config: {line}" in out
  assert os.listdir(os.path.join(workdir, "profile", "plugins", "profile"))
  train_steps = [e["step"] for e in read_events(workdir) if e["event"] == "train"]
  assert train_steps == [5, 10, 15, 20, 24]  # the old cadence to 16, then every 4 steps


# ---------------------------------------------------------------------------------------------
# Bad input: one UserError line naming the file or key, and no workdir.


def _mnist_dir(path):
  write_mnist_dir(path, n_train=40, n_test=10, gz=False)
  return path


def _bad_magic(d):
  with open(f"{d}/train-images-idx3-ubyte", "r+b") as f:
    f.write(b"\x12\x34")
  return "train-images-idx3-ubyte: not an IDX file (bad magic number 12340803)"


def _truncated(d):
  path = f"{d}/t10k-images-idx3-ubyte"
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 100)
  return "t10k-images-idx3-ubyte: header says (10, 28, 28)"


def _count_mismatch(d):
  idx.write_idx(f"{d}/train-labels-idx1-ubyte", np.zeros(39, np.uint8))
  return "has 40 images but"


def _empty_dir(d):
  for name in os.listdir(d):
    os.remove(os.path.join(d, name))
  return "no train-images-idx3-ubyte[.gz] file"


def _missing_dir(d):
  shutil.rmtree(d)
  return "does not exist"


BAD_DATA = {"missing data path": _missing_dir, "empty data path": _empty_dir,
            "IDX wrong magic": _bad_magic, "IDX truncated": _truncated,
            "image/label count mismatch": _count_mismatch}


def _assert_one_error_and_no_workdir(config, tmp_path, needle):
  """Training fails with one line containing `needle`, before the workdir is created."""
  workdir = str(tmp_path / "w")
  with pytest.raises(UserError) as error:
    train.train_and_evaluate(config, workdir)
  assert needle in str(error.value) and "\n" not in str(error.value), str(error.value)
  assert not os.path.exists(workdir)


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_is_one_error_and_writes_nothing(tiny_mnist, tmp_path, case):
  directory = _mnist_dir(str(tmp_path / "data"))
  needle = BAD_DATA[case](directory)
  tiny_mnist.data.source, tiny_mnist.data.path = "files", directory
  _assert_one_error_and_no_workdir(tiny_mnist, tmp_path, needle)


def test_batch_larger_than_the_dataset(tiny_mnist, tmp_path):
  tiny_mnist.data.source, tiny_mnist.data.path = "files", _mnist_dir(str(tmp_path / "data"))
  tiny_mnist.batch_size = 64
  workdir = str(tmp_path / "w")
  with pytest.raises(UserError, match=r"batch_size=64 is larger than the training split \(40"):
    train.train_and_evaluate(tiny_mnist, workdir)
  assert not os.path.exists(workdir)


def test_unwritable_workdir_is_refused(tiny_mnist, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("a file where a directory should be")
  with pytest.raises(UserError, match=r"--workdir=.*file/w: cannot be created"):
    train.train_and_evaluate(tiny_mnist, str(blocker / "w"))
  with pytest.raises(UserError, match=r"--workdir=.*file: exists and is not a directory"):
    train.train_and_evaluate(tiny_mnist, str(blocker))
  assert blocker.read_text() == "a file where a directory should be"


def test_a_directory_without_write_permission_is_refused(tiny_mnist, tmp_path, monkeypatch):
  """The suite runs as root, for whom every directory is writable (and a subprocess as another
  user cannot run this venv's Python under /root): the permission check is made to answer as
  it would for a user without write permission, and the refusal then comes before any write."""
  workdir, missing = tmp_path / "ro", tmp_path / "ro" / "sub"
  workdir.mkdir()
  real_access = os.access
  monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(workdir)
                      else real_access(p, mode))
  with pytest.raises(UserError, match=r"--workdir=.*ro: directory is not writable"):
    train.train_and_evaluate(tiny_mnist, str(workdir))
  with pytest.raises(UserError, match=r"--workdir=.*sub: cannot be created \(.*ro is not a "
                                      r"writable directory\)"):
    train.train_and_evaluate(tiny_mnist, str(missing))
  assert list(workdir.iterdir()) == []


def _mount(*args):
  """Runs mount(8) as root; skips the test (saying why) where that is not possible."""
  if os.geteuid() != 0:
    pytest.skip("a real full or read-only disk needs mount(8), which needs root")
  result = subprocess.run(["mount", *args], capture_output=True, text=True)
  if result.returncode:
    pytest.skip(f"mount {' '.join(args)} failed here: {result.stderr.strip()}")


def test_an_unwritable_checkpoints_folder_is_refused_before_the_first_step(tiny_mnist, tmp_path):
  """checkpoints/ on a read-only mount (root) or without write permission (another user): one
  line at start-up, not a failed save after training up to it."""
  workdir = tmp_path / "w"
  (workdir / "checkpoints" / "8").mkdir(parents=True)
  # checkpoints/ itself; then one step folder, which keep_checkpoints would delete in time.
  for folder, name in ((workdir / "checkpoints", "checkpoints"),
                       (workdir / "checkpoints" / "8", "checkpoints/8")):
    if os.geteuid() == 0:
      _mount("--bind", str(folder), str(folder))
      try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True)
        with pytest.raises(UserError, match=rf"--workdir=.*w: {name} is not writable$"):
          train.train_and_evaluate(tiny_mnist, str(workdir))
      finally:
        subprocess.run(["umount", str(folder)], check=True)
    else:
      os.chmod(folder, 0o555)
      with pytest.raises(UserError, match=rf"--workdir=.*w: {name} is not writable$"):
        train.train_and_evaluate(tiny_mnist, str(workdir))
      os.chmod(folder, 0o755)
  assert os.listdir(workdir) == ["checkpoints"]


@pytest.mark.slow
def test_a_full_disk_stops_the_run_in_one_line_within_60_s(tmp_path):
  """A workdir on a 1.5 MB tmpfs fills up mid-run: the run stops within seconds with one line
  naming the step and the cause, exit 1, and the last good checkpoint is whole (no Orbax
  timeout is waited out: the process leaves its threads behind)."""
  disk = tmp_path / "disk"
  disk.mkdir()
  _mount("-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(disk))
  try:
    workdir = str(disk / "w")
    start = time.time()
    result = run_main("--config=configs/mnist.py", f"--workdir={workdir}",
                      f"--config.model.name={SMALL_MODEL}", "--config.data.source=synthetic",
                      "--config.data.synthetic_size=200", "--config.batch_size=16",
                      "--config.num_train_steps=400", "--config.checkpoint_every=4",
                      "--config.keep_checkpoints=100", "--config.log_every=4",
                      timeout=120)
    elapsed = time.time() - start
    lines = result.stderr.splitlines()  # nothing but the one line: no library's traceback
    assert result.returncode == 1 and len(lines) == 1, result.stderr[-3000:]
    saved = re.fullmatch(r"jaxdl: error: (?:(?:saving|recording the checksums of) the "
                         r"checkpoint at step \d+ in \S+|recording the checkpoint at step \d+ "
                         r"in the run's record \(run\.json\)) failed \(No space left on "
                         r"device\); the run stopped there; the last good checkpoint: step "
                         r"(\d+), left intact", lines[0])
    written = re.fullmatch(r"jaxdl: error: cannot write \S+: No space left on device", lines[0])
    assert saved or written, lines[0]
    assert elapsed < 60, elapsed
    ckpt_dir = os.path.join(workdir, "checkpoints")
    steps = sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())
    if saved:
      assert steps[-1] == int(saved.group(1))
    assert digests.check(os.path.join(ckpt_dir, str(steps[-1]))) is None  # whole
    assert runs.read_variables(workdir)[1]  # and readable
  finally:
    subprocess.run(["umount", str(disk)], check=True)


def test_a_save_the_disk_refuses_stops_the_run(tiny_mnist, tmp_path, monkeypatch):
  """checkpoints/ turns read-only mid-run (a remount; a permission or quota error takes the
  same path): the next save stops the run with one line naming the step, the cause and the
  last good checkpoint, which stays whole."""
  workdir = tmp_path / "w"
  ckpts = str(workdir / "checkpoints")
  (workdir / "checkpoints").mkdir(parents=True)
  _mount("--bind", ckpts, ckpts)
  write = digests.write

  def read_only_once_step_8_is_whole(step_dir):
    write(step_dir)
    if step_dir.endswith(f"{os.sep}8"):
      subprocess.run(["mount", "-o", "remount,ro,bind", ckpts], check=True)

  monkeypatch.setattr(digests, "write", read_only_once_step_8_is_whole)
  try:
    with pytest.raises(checkpoint.SaveError, match=r"^saving the checkpoint at step 16 in .* "
                       r"failed \(Read-only file system\); the run stopped there; the last good "
                       r"checkpoint: step 8, left intact$"):
      train.train_and_evaluate(tiny_mnist, str(workdir))
  finally:
    subprocess.run(["umount", ckpts], check=True)
  assert digests.check(os.path.join(ckpts, "8")) is None


def test_bad_idx_from_the_command_line_is_one_line(tmp_path):
  """The whole path once from the shell: one line, exit 1, no traceback, no workdir."""
  directory = _mnist_dir(str(tmp_path / "data"))
  needle = _bad_magic(directory)
  workdir = str(tmp_path / "w")
  result = run_main("--config=configs/mnist.py", f"--workdir={workdir}",
                    f"--config.data.path={directory}")
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("jaxdl: error: ") and needle in lines[0], lines
  assert not os.path.exists(workdir)


def test_a_config_section_added_since_is_a_harmless_change():
  """A workdir written before `train.skip_nonfinite` existed still resumes."""
  old = {"seed": 0, "model": {"name": "cnn"}}
  new = {"seed": 0, "model": {"name": "cnn"}, "train": {"skip_nonfinite": False}}
  assert resume.config_changes(old, new) == {"train.skip_nonfinite": (None, False)}
  assert resume.config_changes(new, old) == {"train.skip_nonfinite": (False, None)}


def _text_keys() -> resume.Keys:
  """What the text classifier's rooms declare (data.prefix_backoff, data.validation_size, ...),
  for the config dicts below, which hold a few of its keys."""
  return resume.declared(tasks.get("text_classification"),
                         ml_collections.ConfigDict({"name": "text_lstm"}))


def test_a_key_added_since_resumes_at_the_value_the_old_run_had(tmp_path):
  """A workdir from before train.ema_decay and data.prefix_backoff existed resumes with both at
  their old behaviour (0); the default 4 is refused, naming the value to pass."""
  workdir = tmp_path / "w"
  (workdir / "checkpoints" / "10").mkdir(parents=True)
  (workdir / "config.json").write_text(json.dumps({"seed": 0, "data": {"max_len": 64}}))
  old_ways = {"seed": 0, "data": {"max_len": 64, "prefix_backoff": 0},
              "train": {"ema_decay": 0.0}}
  saved = resume.saved_config(str(workdir))
  assert resume.check_resume_config(str(workdir), saved, old_ways, _text_keys()) == {}
  with pytest.raises(UserError, match=r"data.prefix_backoff: absent \(so 0, from before the key "
                                      r"existed\) -> 4\. Use a new"):
    resume.check_resume_config(str(workdir), saved, {**old_ways, "data": {
        "max_len": 64, "prefix_backoff": 4}}, _text_keys())


def test_a_key_added_since_is_adopted_at_the_old_runs_value(tmp_path):
  """Resuming a workdir from before train.ema_warmup, data.validation_size and
  data.train_size existed sets them to what its run did (no warm-up, no carving), and says
  so; check_resume_config then passes. A workdir with the key keeps the config's value."""
  workdir = tmp_path / "w"
  (workdir / "checkpoints" / "10").mkdir(parents=True)
  (workdir / "config.json").write_text(json.dumps({"seed": 0, "train": {"ema_decay": 0.999},
                                                   "data": {"max_len": 64}}))
  config = ml_collections.ConfigDict({"seed": 0, "train": {"ema_decay": 0.999,
                                                          "ema_warmup": True},
                                      "data": {"max_len": 64, "validation_size": 0.1}})
  saved = resume.saved_config(str(workdir))
  with pytest.raises(UserError, match=r"data.validation_size: absent \(so 0, from before the "
                                      r"key existed\) -> 0.1; train.ema_warmup: absent \(so "
                                      r"False, from before the key existed\) -> True\. Use"):
    resume.check_resume_config(str(workdir), saved, config.to_dict(), _text_keys())
  assert resume.adopt_added_keys(config, saved, _text_keys()) == {
      "train.ema_warmup": (True, False), "data.validation_size": (0.1, 0)}
  assert not config.train.ema_warmup and config.data.validation_size == 0
  assert resume.check_resume_config(str(workdir), saved, config.to_dict(), _text_keys()) == {}
  config.train.ema_warmup, config.data.validation_size = True, 0.1
  with_warmup = {**saved, "train": {"ema_decay": 0.999, "ema_warmup": True}}
  assert resume.adopt_added_keys(config, with_warmup, _text_keys()) == {
      "data.validation_size": (0.1, 0)}
  assert config.train.ema_warmup  # the saved run had the key: its value is the config's own
  assert resume.adopt_added_keys(config, None, _text_keys()) == {}  # no checkpoints: fresh


TEXT_BAD = {  # file content → the message's needle
    "TSV missing sentence column": ("words\tlabel\na fine film\t1\n",
                                    "train.tsv:1: no 'sentence' or 'text' column"),
    "TSV missing label column": ("sentence\na fine film\n", "data has no labels"),
    "TSV row missing a field": ("sentence\tlabel\ngood\t1\nno tab here\n", "train.tsv:3: 1 fields"),
    "TSV non-integer label": ("sentence\tlabel\na fine film\tpositive\n",
                              "train.tsv:2: label 'positive' is not an integer"),
    "TSV stray label": ("sentence\tlabel\na fine film\t1\nbad\t0\ngood\t7\n",
                        "the train split's labels leave 5 of the classes 0..7 without an "
                        "example (e.g. 2; label 7 is in 1 row(s)): a stray label? If those "
                        "classes are real, set --config.data.num_classes=8"),
    "TSV huge label": ("sentence\tlabel\na fine film\t1\nbad\t99999999\n",
                       "leave 99,999,998 of the classes 0..99999999 without an example"),
    "TSV label past int32": ("sentence\tlabel\na fine film\t1\nbad\t4294967296\n",
                             "train.tsv:3: label 4294967296 is too large"),
    "text empty": ("", "the file is empty"),
    "text not UTF-8": (b"sentence\tlabel\ncr\xe8me\t1\n", "not UTF-8"),
}


@pytest.mark.parametrize("case", list(TEXT_BAD))
def test_bad_text_data_is_one_error_and_writes_nothing(tmp_path, case):
  content, needle = TEXT_BAD[case]
  data = tmp_path / "data"
  data.mkdir()
  (data / "dev.tsv").write_text("sentence\tlabel\ngood\t1\n")
  if isinstance(content, bytes):
    (data / "train.tsv").write_bytes(content)
  else:
    (data / "train.tsv").write_text(content)
  config = load_config("text_classifier")
  config.data.path = str(data)
  _assert_one_error_and_no_workdir(config, tmp_path, needle)


@pytest.mark.parametrize("content, needle", [(b"", "empty"), (b"caf\xe9\n", "not UTF-8")])
def test_bad_lm_text_is_one_error_and_writes_nothing(tmp_path, content, needle):
  path = tmp_path / "corpus.txt"
  path.write_bytes(content)
  config = load_config("tiny_lm")
  config.data.path = str(path)
  _assert_one_error_and_no_workdir(config, tmp_path, needle)


@pytest.mark.parametrize("where", ["restore", "item_metadata"])
@pytest.mark.parametrize("error", [
    MemoryError("host out of memory"),
    PermissionError(13, "Permission denied"),
    OSError(5, "Input/output error"),
    ValueError("UNAVAILABLE: connection reset by peer"),
    RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4.0GiB")],
    ids=["MemoryError", "PermissionError", "EIO", "UNAVAILABLE", "device-OOM"])
def test_a_restore_error_that_is_not_damage_changes_nothing(finished_run, tmp_path, monkeypatch,
                                                            where, error):
  """An error raised from inside the restore that is no evidence of damage: one line naming the
  checkpoint and the cause; no checkpoint moved, metrics.jsonl and the event files intact."""
  config, source, _ = finished_run
  workdir = str(tmp_path / "w")
  shutil.copytree(source, workdir)
  config = copy.deepcopy(config)
  config.num_train_steps = 32  # a resume with steps to go (a harmless change)
  before = file_bytes(workdir)
  def failing(self, *args, **kwargs):
    raise error
  monkeypatch.setattr(ocp.CheckpointManager, where, failing)
  with pytest.raises(checkpoint.RestoreError) as raised:
    train.train_and_evaluate(config, workdir)
  message = str(raised.value)
  assert message.startswith("cannot restore the checkpoint at step 24 in ") and "\n" not in message
  assert type(error).__name__ in message and str(error.args[-1])[:20] in message
  assert file_bytes(workdir) == before


def test_a_restore_error_of_unknown_kind_is_reported_as_such(finished_run, tmp_path, monkeypatch):
  """Neither damage (the files are whole) nor the environment's: reported with its first line
  as a likely bug, nothing moved, never taken for damage or for something harmless."""
  config, source, _ = finished_run
  workdir = str(tmp_path / "w")
  shutil.copytree(source, workdir)
  before = file_bytes(workdir)
  def failing(self, *args, **kwargs):
    raise ValueError("unexpected tree structure\nsecond line")
  monkeypatch.setattr(ocp.CheckpointManager, "restore", failing)
  with pytest.raises(checkpoint.RestoreError, match=r"^cannot restore the checkpoint at step 24 "
                     r".*\(ValueError: unexpected tree structure\); its files look whole and "
                     r"this is no error of the environment, .*please report it with this line$"):
    train.train_and_evaluate(config, workdir)
  assert file_bytes(workdir) == before


def test_a_damaged_run_json_is_kept_aside_and_the_run_goes_on(finished_run, tmp_path, caplog):
  config, source, _ = finished_run
  workdir = str(tmp_path / "w")
  shutil.copytree(source, workdir)
  garbage = b'{"segments": [{"command": "python -m \xff\xfe'
  with open(os.path.join(workdir, "run.json"), "wb") as f:
    f.write(garbage)
  config = copy.deepcopy(config)
  config.num_train_steps = 32  # a resume with steps to go (a harmless change)
  caplog.set_level(logging.WARNING)
  train.train_and_evaluate(config, workdir)
  (kept,) = glob.glob(os.path.join(workdir, "run.json.damaged-*"))
  assert open(kept, "rb").read() == garbage  # every byte kept
  record = json.load(open(os.path.join(workdir, "run.json")))
  assert [s["start_step"] for s in record["segments"]] == [24]
  assert any("run.json is damaged" in r.getMessage() and kept in r.getMessage()
             for r in caplog.records)


def test_damage_inside_metrics_jsonl_is_one_line_and_loses_nothing(finished_run, tmp_path):
  """Bytes that are not UTF-8 in a line with lines after it: damage, not a kill's cut line.
  Resuming (which rewrites metrics.jsonl from its events) is refused in one line naming the
  line, the file untouched; the readers stop there. At the end, such a line is a cut line."""
  config, source, _ = finished_run
  workdir = str(tmp_path / "w")
  shutil.copytree(source, workdir)
  path = os.path.join(workdir, "metrics.jsonl")
  lines = open(path, "rb").read().splitlines(keepends=True)
  assert lines[2].startswith(b'{"event": "')
  lines[2] = lines[2][:11] + b"\xff" + lines[2][11:]  # in the event's name
  damaged = b"".join(lines)
  with open(path, "wb") as f:
    f.write(damaged)
  config = copy.deepcopy(config)
  config.num_train_steps = 32
  with pytest.raises(UserError, match=rf"^{re.escape(path)}:3: not an event \(ValueError: "
                     r"bytes that are not UTF-8\), and lines follow it, .* would lose them; "
                     r"repair that line or move the file away$"):
    train.train_and_evaluate(config, workdir)
  assert open(path, "rb").read() == damaged
  assert len(metrics.read_events(path)) == 2  # a reader stops at the damage
  with open(path, "wb") as f:  # the same bytes in the last line: a kill's cut, dropped
    f.write(b"".join(lines[:2] + lines[3:] + [lines[2]]))
  train.train_and_evaluate(config, workdir)
  assert read_events(workdir)[-1]["step"] == 32


def test_damage_evidence_reads_the_whole_chain():
  try:
    try:
      raise ValueError("OUT_OF_RANGE: Requested byte range [3, 9) is not valid for value of size 4")
    except ValueError as inner:
      raise Exception("Encountered error while reading array index") from inner
  except Exception as outer:  # pylint: disable=broad-except
    assert digests.damage_evidence(outer).startswith("OUT_OF_RANGE")
  assert digests.damage_evidence(FileNotFoundError("File .../loop/metadata not found."))
  assert digests.damage_evidence(MemoryError()) is None
  assert digests.damage_evidence(ValueError("UNAVAILABLE: try again")) is None


def test_every_test_the_fault_table_names_exists():
  """The README's "What happens when..." table names a test for each row: each named test is a
  test function of tests/ (a renamed or merged test must take its rows along)."""
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  table = readme[readme.index("## What happens when"):]
  table = table[:table.index("\n## ", 1)]
  named = set(re.findall(r"\b(test_[a-z0-9_]+)\b(?!\.py)", table))  # not the module names
  defined = set()
  for path in glob.glob(os.path.join(REPO, "tests", "test_*.py")):
    with open(path, encoding="utf-8") as f:
      defined |= set(re.findall(r"^def (test_[a-z0-9_]+)", f.read(), re.M))
  assert named and named <= defined, sorted(named - defined)
