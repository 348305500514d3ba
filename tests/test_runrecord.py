"""run.json: the run's record, one segment per start."""

import json
import os

import pytest

from conftest import REPO
from jaxdl import runrecord


def test_segments_are_appended_and_closed(tmp_path):
  workdir = str(tmp_path)
  runrecord.begin(workdir, {"seed": 0}, start_step=0, num_steps=10)  # killed: never ended
  runrecord.begin(workdir, {"seed": 0, "log_every": 2}, start_step=8, num_steps=10)
  runrecord.end(workdir, 10, {"test_accuracy": 0.5})
  record = json.load(open(os.path.join(workdir, "run.json")))
  first, second = record["segments"]
  assert first["end_time"] is None and first["final"] is None
  assert second["start_step"] == 8 and second["end_step"] == 10
  assert second["end_time"] >= second["start_time"]
  assert record["config"] == second["config"] == {"seed": 0, "log_every": 2}
  assert record["final"] == second["final"] == {"test_accuracy": 0.5}
  assert set(second["versions"]) == {"python", *runrecord.PACKAGES}
  assert all(second["versions"].values())
  assert second["devices"]["count"] >= 1 and second["devices"]["kind"]
  assert second["process_count"] == 1 and second["host"]


def test_a_stopped_segment_has_an_end_but_keeps_the_last_final(tmp_path):
  workdir = str(tmp_path)
  runrecord.begin(workdir, {}, start_step=0, num_steps=10)
  runrecord.end(workdir, 10, {"test_accuracy": 0.5})
  runrecord.begin(workdir, {}, start_step=10, num_steps=20)  # num_train_steps raised
  runrecord.end(workdir, 14, None)  # SIGTERM at step 14, after saving it
  record = json.load(open(os.path.join(workdir, "run.json")))
  assert record["segments"][1]["end_step"] == 14 and record["segments"][1]["final"] is None
  assert record["segments"][1]["end_time"] is not None
  assert record["final"] == {"test_accuracy": 0.5}


def test_git_state_outside_a_checkout_is_null(tmp_path):
  assert runrecord.git_state(str(tmp_path)) == {"commit": None, "dirty": None}


@pytest.mark.skipif(not os.path.exists(os.path.join(REPO, ".git")), reason="not a git checkout")
def test_git_state_of_this_checkout():
  state = runrecord.git_state()
  assert len(state["commit"]) == 40 and isinstance(state["dirty"], bool)


def test_command_line_is_the_module_form():
  argv = ["/x/jaxdl/main.py", "--config=configs/mnist.py", "--config.opt.lr=1e-3", "--workdir=a b"]
  assert runrecord.command_line(argv) == (
      "python -m jaxdl.main --config=configs/mnist.py --config.opt.lr=1e-3 '--workdir=a b'")
