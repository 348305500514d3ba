"""gs:// workdirs: accepted by the checks, kept as URLs, and metrics/config written through
etils.epath. GCS itself is stood in for by fsspec's in-memory filesystem (no network here);
Orbax's own gs:// writes (tensorstore) cannot be exercised without GCS."""

from fsspec.implementations.memory import MemoryFileSystem
import pytest

from conftest import load_config
from jaxdl import checkpoint, metrics, tasks, validate
from jaxdl.errors import UserError


@pytest.fixture
def fake_gcs(monkeypatch):
  """epath's gs:// backend asks fsspec for 'gcs': hand it an in-memory filesystem."""
  from etils.epath import backend
  fs = MemoryFileSystem()
  fs.store.clear()
  monkeypatch.setattr(backend.fsspec_backend, "fs", lambda path: fs)
  yield fs
  fs.store.clear()


def test_validate_accepts_a_gs_workdir():
  config = load_config("mnist")
  validate.validate(config, tasks.get(config.task), "gs://bucket/runs/r1")  # no local checks


def test_checkpoint_directory_stays_a_url(monkeypatch, fake_gcs):
  created = {}
  monkeypatch.setattr(checkpoint.ocp, "CheckpointManager",
                      lambda directory, **kwargs: created.setdefault("dir", directory))
  assert checkpoint.Checkpoints("gs://bucket/runs/r1", 2).directory == (
      "gs://bucket/runs/r1/checkpoints")
  assert created["dir"] == "gs://bucket/runs/r1/checkpoints"


def test_metrics_and_config_go_to_gs(fake_gcs):
  workdir = "gs://bucket/runs/r1"
  metrics.write_json(f"{workdir}/config.json", {"seed": 0})
  assert metrics.exists(f"{workdir}/config.json")
  assert metrics.read_json(f"{workdir}/config.json") == {"seed": 0}
  writer = metrics.Writer(workdir)
  for step in (5, 10, 15):
    writer.write("train", step, {"loss": 1.0 / step})
  writer.write("final", 15, {"test_loss": 0.5})
  writer.drop_after(10)  # as a resume from step 10 does
  lines = metrics.epath.Path(f"{workdir}/metrics.jsonl").read_text().splitlines()
  assert [metrics.json.loads(l)["step"] for l in lines] == [5, 10]


def test_resuming_a_gs_workdir_with_another_seed_is_refused(fake_gcs):
  """The resume guard reads gs:// through etils.epath (it used os.path, and so never refused)."""
  config = load_config("mnist")
  workdir = "gs://bucket/runs/r1"
  metrics.write_json(f"{workdir}/config.json", config.to_dict())
  metrics.write_text(f"{workdir}/checkpoints/8/_CHECKPOINT_METADATA", "{}")
  assert checkpoint.has_checkpoints(workdir)
  assert checkpoint.check_resume_config(workdir, config.to_dict()) == {}
  other = config.to_dict()
  other["seed"] = 1
  with pytest.raises(UserError, match=r"holds checkpoints of another experiment; .*seed: 0 -> 1"):
    checkpoint.check_resume_config(workdir, other)
