"""errors.py: the one way every tool fails (a line, exit 1; a bug with its traceback), and the
one classification of an environment's failure."""

import errno

import pytest

from jaxdl import errors, report


def _failed(capsys, main, *args) -> tuple[int, str]:
  """A tool's main() run in this process: its exit status and stderr."""
  with pytest.raises(SystemExit) as raised:
    main(*args)
  return raised.value.code, capsys.readouterr().err


def test_an_error_it_cannot_classify_is_reported_as_a_bug(tmp_path, monkeypatch, capsys):
  def broken(workdir):
    raise RuntimeError("tree mismatch\nsecond line")
  monkeypatch.setattr(report, "load_run", broken)
  code, err = _failed(capsys, report.main, [str(tmp_path)])
  lines = err.strip().splitlines()
  assert code == 1 and lines[0] == "Traceback (most recent call last):", err
  assert lines[-1] == ("jaxdl: error: a bug of jaxdl, not a mistake in your input (RuntimeError: "
                       "tree mismatch); please report it with the traceback above"), err


def test_user_errors_environment_failures_and_ctrl_c(capsys):
  def raising(error):
    with errors.reported("re-run to resume"):
      raise error
  assert _failed(capsys, raising, errors.UserError("config.x=1: must be > 1")) == (
      1, "jaxdl: error: config.x=1: must be > 1\n")
  full = OSError(errno.ENOSPC, "No space left on device", "/w/metrics.jsonl")
  assert _failed(capsys, raising, full) == (
      1, "jaxdl: error: cannot write /w/metrics.jsonl: No space left on device\n")
  assert _failed(capsys, raising, KeyboardInterrupt()) == (
      130, "jaxdl: interrupted; re-run to resume\n")


def test_one_classification_of_the_environment():
  try:  # Orbax wraps TensorStore's status in a plain Exception
    try:
      raise ValueError("UNAVAILABLE: connection reset by peer [os_error_code='104']")
    except ValueError as e:
      raise Exception("restore failed") from e  # pylint: disable=broad-exception-raised
  except Exception as e:  # pylint: disable=broad-except
    wrapped = e
  assert errors.environment_failure(wrapped) == (
      "UNAVAILABLE: connection reset by peer [os_error_code='104']")
  assert errors.os_cause(wrapped) == "Connection reset by peer"
  assert errors.environment_failure(MemoryError()) == "MemoryError"
  assert errors.environment_failure(OSError("Forbidden: https://x/o\nno access")) == (
      "the gs:// server refused a request: Forbidden: https://x/o no access")
  for not_the_environment in (FileNotFoundError(2, "No such file"), ValueError("bad"),
                              RuntimeError("NOT_FOUND: chunk")):
    assert errors.environment_failure(not_the_environment) is None
