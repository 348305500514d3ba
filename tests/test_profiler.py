"""config.profile_steps: parsing, and a trace of the chosen steps in WORKDIR/profile."""

import glob
import os

import pytest

from conftest import load_config
from jaxdl import profiler, tasks, validate
from jaxdl.errors import UserError


def test_parse():
  assert profiler.parse("") is None
  assert profiler.parse("10:15") == (10, 15)
  for bad in ("10", "a:b", "5:5", "-1:3", "3:2"):
    with pytest.raises(UserError, match="config.profile_steps="):
      profiler.parse(bad)


def test_validate_checks_it(tmp_path):
  config = load_config("mnist")
  config.profile_steps = "3"
  with pytest.raises(UserError, match="config.profile_steps='3': expected 'START:STOP'"):
    validate.validate(config, tasks.get(config.task), str(tmp_path / "w"))


@pytest.mark.slow
def test_a_run_with_profile_steps_writes_a_trace(tiny_sweep):
  _, _, results, _ = tiny_sweep  # the sweep's runs have profile_steps=2:4
  for workdir in results:
    traces = glob.glob(os.path.join(workdir, "profile/plugins/profile/*/"))
    assert len(traces) == 1, traces
    names = os.listdir(traces[0])
    assert "perfetto_trace.json.gz" in names
    assert any(n.endswith(".xplane.pb") for n in names)
    assert os.path.getsize(os.path.join(traces[0], "perfetto_trace.json.gz")) > 1000
