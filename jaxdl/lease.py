"""One run per workdir: the lease a run holds on its workdir for its whole life.

One run per workdir. A run holds WORKDIR/lease.json for its whole life (process 0 holds it for
a multi-process job, and every process acts on its outcome):
  - on a local or network file system, an exclusive `flock` on the file. The OS drops it when
    the process ends, however it ends (kill -9, a crash, a lost host's NFS lease), so a lease
    whose holder is gone is free without any clean-up. The file names the holder (host, pid,
    start time) for the refusal line, and is emptied when the run ends: a file that still names
    a holder while the lock is free was left by a run that died, and is taken over with a
    WARNING.
  - on gs://: an object created only if absent (a generation precondition), renewed while the
    run lives; see `_ObjectLease`.
A second run on a held workdir is refused in one line naming the holder, before it touches
anything. Tools that only read (predict, sample, plot, report) take no lease.

Every process of a multi-process job must see process 0's lease file and run the same config
and code (`held._same_job`). Under the lease, `--restart` keeps the workdir's record aside
(history.keep_aside), and the workdir is read again (`held._unchanged`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import socket
import threading
import time
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from jaxdl import checkpoint, files, history, parallel, runrecord
from jaxdl.errors import UserError, first_line

LEASE = "lease.json"


def _holder() -> dict[str, Any]:
  """Who holds the lease; `nonce` lets the other processes of a job check that they see the
  very file process 0 wrote (a shared workdir)."""
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "start_time": runrecord.now(),
          "command": runrecord.command_line(), "nonce": secrets.token_hex(8)}


def _describe(holder: dict[str, Any] | None) -> str:
  if not holder:
    return "holder unknown"
  return (f"pid {holder.get('pid')} on {holder.get('host')}, since "
          f"{holder.get('start_time')}: {holder.get('command')}")


def _gone(holder: dict[str, Any] | None) -> bool:
  """Whether the lease's holder was a process of this host that has ended."""
  if not holder or holder.get("host") != socket.gethostname():
    return False
  try:
    os.kill(int(holder.get("pid")), 0)
  except ProcessLookupError:
    return True
  except (OSError, TypeError, ValueError):  # alive under another user, or no pid
    return False
  return False


def _digest(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()[:16]


def _code_digest() -> str:
  """A digest of jaxdl's own source files: the code version, with or without git."""
  root = os.path.dirname(os.path.abspath(__file__))
  h = hashlib.sha256()
  for directory, _, names in sorted(os.walk(root)):
    for name in sorted(n for n in names if n.endswith(".py")):
      with open(os.path.join(directory, name), "rb") as f:
        h.update(name.encode() + b"\0" + f.read())
  return h.hexdigest()[:16]


def _parse(text: str) -> dict[str, Any] | None:
  try:
    holder = json.loads(text)
  except ValueError:
    return None
  return holder if isinstance(holder, dict) else None


class _FileLease:
  """An exclusive flock on WORKDIR/lease.json (see the module docstring)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LEASE)
    self.fd: int | None = None
    self.holder: dict[str, Any] = {}

  def acquire(self) -> None:
    for _ in range(3):  # the file replaced between open and lock (a workdir moved): again
      try:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # close-on-exec: not inherited
      except OSError as e:
        raise UserError(f"cannot write {self.path} ({first_line(e)})") from None
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        # Locked but still empty: the holder writes itself right after its flock, so two runs
        # started at once can meet in between (seen in CI); look again for up to a second.
        for _ in range(20):
          holder = _parse(os.pread(fd, 65536, 0).decode("utf-8", "replace"))
          if holder:
            break
          time.sleep(0.05)
        os.close(fd)
        raise UserError(f"{os.path.dirname(self.path)} is in use by another run "
                        f"({_describe(holder)}); one run per workdir: wait for it to end, "
                        f"stop it, or use another --workdir") from None
      except OSError as e:  # ENOLCK, EOPNOTSUPP: a file system without locks (some FUSE mounts)
        os.close(fd)
        raise UserError(f"cannot lock {self.path} ({first_line(e)}): without a lock two runs "
                        f"could share the workdir; use a workdir on a local or NFS disk") from None
      if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(fd).st_ino:
        break
      os.close(fd)
    else:
      raise UserError(f"{self.path} keeps being replaced by another process; is another run "
                      f"moving the workdir?")
    left = os.pread(fd, 65536, 0).decode("utf-8", "replace")
    if left.strip():
      logging.warning("took over the lease of a run that ended without releasing it (%s): its "
                      "process is gone", _describe(_parse(left)))
    self.holder = _holder()
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(self.holder) + "\n").encode(), 0)
    os.fsync(fd)
    self.fd = fd

  def release(self) -> None:
    if self.fd is not None:
      os.ftruncate(self.fd, 0)  # an empty file: released, not left by a dead run
      fcntl.flock(self.fd, fcntl.LOCK_UN)
      os.close(self.fd)
      self.fd = None


class _ObjectLease:
  """A lease object on gs:// (see the module docstring): created only if absent
  (ifGenerationMatch=0), rewritten every TTL/4 seconds by a thread while the run lives, deleted
  when it ends. One whose `expires` has passed (its holder died, or lost its network for a
  whole TTL) is deleted at the generation that was read, so of two runs that find it expired
  at once only one deletes it and only one creates the next."""

  TTL = 60.0  # seconds a lease lives without renewal

  def __init__(self, workdir: str):
    # etils.epath's spelling, as every other file of the run has it: gs://b//runs/r1/ and
    # gs://b/runs/r1 are one workdir, and hold one lease.
    self.path = os.fspath(files.Path(workdir) / LEASE)
    self.fs, key = files.object_store(self.path)
    self.bucket, self.key = key.split("/", 1)
    self.holder: dict[str, Any] = {}
    self.generation: str | None = None
    self.done = threading.Event()
    self.thread: threading.Thread | None = None

  def _data(self) -> bytes:
    return (json.dumps({**self.holder, "expires": time.time() + self.TTL}) + "\n").encode()

  def _read(self) -> tuple[dict[str, Any] | None, str | None]:
    """(holder, generation) of the lease object now; (None, None) if there is none."""
    self.fs.invalidate_cache(self.path)
    try:
      info = self.fs.info(self.path)
      return _parse(self.fs.cat_file(self.path).decode("utf-8", "replace")), info["generation"]
    except FileNotFoundError:
      return None, None

  def acquire(self) -> None:
    self.holder = _holder()
    for _ in range(3):
      try:
        self.fs.pipe_file(self.path, self._data(), mode="create")  # ifGenerationMatch=0
        break
      except FileExistsError:
        holder, generation = self._read()
        if generation is None:  # released between the two calls
          continue
        expires = float((holder or {}).get("expires", 0))
        if expires > time.time() and not _gone(holder):
          raise UserError(f"{self.path.rsplit('/', 1)[0]} is in use by another run "
                          f"({_describe(holder)}); one run per workdir: wait for it to end, "
                          f"stop it, or use another --workdir (a run that died without "
                          f"releasing it holds it until "
                          f"{time.strftime('%H:%M:%S', time.localtime(expires))})") from None
        logging.warning("took over the lease of a run that is gone (%s): %s", _describe(holder),
                        "its process has ended" if _gone(holder) else "its lease expired")
        try:  # only the generation that was read: another run may have taken it since
          self.fs.call("DELETE", "b/{}/o/{}", self.bucket, self.key, ifGenerationMatch=generation)
        except (FileExistsError, FileNotFoundError):
          pass  # another run got there first: the next create decides
    else:
      raise UserError(f"{self.path}: could not take the lease in 3 tries (another run is "
                      f"starting on this workdir?)")
    self.generation = self._read()[1]
    self.thread = threading.Thread(target=self._renew, daemon=True, name="jaxdl-lease")
    self.thread.start()

  def _renew(self) -> None:
    while not self.done.wait(self.TTL / 4):
      try:
        holder, generation = self._read()
        if generation != self.generation:
          logging.error("lost the lease %s to another run (%s)", self.path, _describe(holder))
          return
        self.fs.pipe_file(self.path, self._data())
        self.generation = self._read()[1]
      except Exception as e:  # pylint: disable=broad-except  (a network error: try again)
        logging.warning("could not renew the lease %s (%s); trying again", self.path,
                        first_line(e))

  def release(self) -> None:
    if self.thread is None:
      return
    self.done.set()
    self.thread.join()
    self.thread = None
    try:
      self.fs.call("DELETE", "b/{}/o/{}", self.bucket, self.key,
                   ifGenerationMatch=self.generation)
    except (FileExistsError, FileNotFoundError):
      logging.warning("the lease %s had been taken over by another run", self.path)
    self.fs.invalidate_cache(self.path)


class held:  # pylint: disable=invalid-name  (used as a context manager, like open)
  """`with lease.held(WORKDIR, restart, resuming, config) as held:` the run's lease; a
  UserError on every process if another run holds it. Entered after every check has passed,
  before the first write. The checks read the workdir before the lease was taken, so it is
  read again under the lease: a run that finished meanwhile (two fresh starts at once, the
  second slower) turns `resuming` (whether there were checkpoints) stale, and is refused, not
  overwritten. With `restart`, what the workdir held is then kept aside: `held.kept` names
  where."""

  def __init__(self, workdir: str, restart: bool = False, resuming: bool = False,
               config: dict | None = None):
    self.workdir, self.restart, self.resuming = workdir, restart, resuming
    self.config = config or {}  # the resolved config, which every process must share
    self.lease = _ObjectLease(workdir) if files.is_url(workdir) else _FileLease(workdir)
    self.kept: str | None = None

  def __enter__(self) -> "held":
    refused = ""
    if jax.process_index() == 0:
      try:
        self.lease.acquire()
        try:
          self._unchanged()
        except UserError:
          self.lease.release()
          raise
      except UserError as e:
        refused = str(e) or "refused"
    refused = parallel.broadcast_text(refused)  # every process stops, or none
    if refused:
      raise UserError(refused if jax.process_index() == 0 else f"process 0: {refused}")
    if jax.process_count() > 1:
      try:
        self._same_job()
      except UserError:
        self.lease.release()
        raise
    if self.restart:
      self.kept = history.keep_aside(self.workdir, keep=(LEASE,))
    return self

  def __exit__(self, exc_type, *exc) -> None:
    if exc_type is None:
      self.lease.release()
      return
    try:  # the run is failing: its own error says why, not a second one from here
      self.lease.release()
    except Exception as e:  # pylint: disable=broad-except  (a gs:// lease left expires in 60 s)
      logging.info("releasing the lease %s after the run's error failed too: %s",
                   self.lease.path, first_line(e))

  def _same_job(self) -> None:
    """Every process of the job sees process 0's lease file in its workdir (the workdir is
    shared: not a node-local disk), and runs the same config and the same jaxdl code;
    otherwise each stops here with one line, not in a hang at the first save."""
    mine = {"config": _digest(json.dumps(self.config, sort_keys=True, default=str).encode()),
            "code": _code_digest()}
    theirs = json.loads(parallel.broadcast_text(json.dumps(
        {**mine, "nonce": self.lease.holder.get("nonce", "")})))
    try:
      seen = _parse(files.read_text(self.lease.path)) or {}
    except (OSError, ValueError):
      seen = {}
    differs = [seen.get("nonce") != theirs["nonce"], mine["config"] != theirs["config"],
               mine["code"] != theirs["code"]]
    masks = np.asarray(multihost_utils.process_allgather(
        np.int32(sum(bit << i for i, bit in enumerate(differs)))))
    what = ("the workdir's files (not shared with process 0: a node-local disk? use gs:// or a "
            "shared file system)", "the config", "the jaxdl code")
    problems = [f"process {p} differs from process 0 in "
                f"{' and '.join(w for i, w in enumerate(what) if int(m) >> i & 1)}"
                for p, m in enumerate(masks) if m]
    if problems:
      raise UserError(f"the processes of this job disagree: {'; '.join(problems)}; run the "
                      f"same command, with the same jaxdl, on every process, with one shared "
                      f"--workdir={self.workdir}")

  def _unchanged(self) -> None:
    if self.restart:
      return
    now = checkpoint.has_checkpoints(self.workdir)
    if now != self.resuming or (not now and history.record_evidence(self.workdir)):
      raise UserError(f"{self.workdir} changed while this run was starting (another run "
                      f"{'saved checkpoints' if now else 'wrote its record'} there); nothing "
                      f"was changed: re-run the command")
