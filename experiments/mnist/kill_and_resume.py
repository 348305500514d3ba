"""Interrupts a real run at random moments, re-runs the same command each time, and compares.

  python experiments/mnist/kill_and_resume.py --data=../shared/data/mnist-10k

The run is stopped 7 times at seeded random moments: 5 SIGKILLs (at least one while Orbax is
writing a checkpoint: the kill lands as soon as its temporary directory appears), one SIGTERM
(must save the current step and exit 0) and one SIGINT (must save it and exit 130). After each,
the same command is started again. The uninterrupted reference is a second workdir trained with
the same command. metrics.jsonl (throughput aside) and the final parameters must be equal, bit
for bit. tests/test_faults.py runs `interrupt_until_done` on a tiny synthetic config.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TMP_MARK = ".orbax-checkpoint-tmp"


def events(workdir: str) -> list[dict]:
  """metrics.jsonl without the throughput, which differs from run to run."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if not k.endswith("_per_s")}
            for line in f]


class _Run:
  """One `python -m jaxdl.main` process whose stdout lines are collected as they come."""

  def __init__(self, cmd: list[str], env: dict | None):
    # The run gets SIGINT's default even if this script was started with it ignored (nohup,
    # `cmd &` in a script), which jaxdl would keep: the SIGINT interruption must reach it. A
    # handled signal is reset to the default in a child, so handling it here does that (a
    # preexec_fn would too, but it makes Python fork, and JAX warns that forking its threads
    # may deadlock).
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
      signal.signal(signal.SIGINT, signal.default_int_handler)
    self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env={**os.environ, **(env or {})})
    self.out: list[str] = []
    self.err: list[str] = []
    self.threads = [threading.Thread(target=self._read, args=(s, l), daemon=True)
                    for s, l in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
    for t in self.threads:
      t.start()

  @staticmethod
  def _read(stream, lines):
    for line in iter(stream.readline, ""):
      lines.append(line)

  def logged_lines(self) -> int:
    return sum(1 for line in list(self.out) if line.startswith("step "))

  def wait(self, timeout: float = 300) -> int:
    rc = self.proc.wait(timeout)
    for t in self.threads:
      t.join(10)
    return rc

  def text(self) -> str:
    return "".join(self.out) + "".join(self.err)


def interrupt_until_done(cmd: list[str], workdir: str, seed: int, kills: int = 5,
                         log=print, env: dict | None = None) -> list[str]:
  """Runs `cmd` again and again until it finishes, interrupting the first runs at random.

  `env` is added to each process's environment. Returns one line per interruption. Raises AssertionError when a run misbehaves: a SIGTERM or
  SIGINT that does not save its step or exits with the wrong status, a resume from another step
  than the one saved, a damaged checkpoint, or no kill landing while a checkpoint was written.
  """
  rng = random.Random(seed)
  plan = ["kill mid-save"] + ["kill"] * (kills - 1) + ["SIGTERM", "SIGINT"]
  rng.shuffle(plan)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  record, expect_resume, mid_save_landed, tries = [], None, False, 0
  expect_cleanup = False  # the run after a mid-save kill must warn that it removes the leftover
  names = lambda: os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []
  def saves_in_progress():  # (name, inode): a new save of the same step reuses the name
    found = set()
    for n in names():
      if TMP_MARK in n:
        try:
          found.add((n, os.stat(os.path.join(ckpt_dir, n)).st_ino))
        except FileNotFoundError:  # renamed into place meanwhile
          pass
    return found
  while plan:
    kind = plan.pop(0)
    old_leftovers = saves_in_progress()  # removed when the run starts
    run, started = _Run(cmd, env), time.time()
    if kind == "kill mid-save":  # kill as soon as Orbax starts writing a new checkpoint
      while run.proc.poll() is None:
        if saves_in_progress() - old_leftovers:
          break
        time.sleep(0.001)
    else:  # kill after a random number of logged steps and a random fraction of a second
      lines = rng.randint(1, 4)
      while run.proc.poll() is None and run.logged_lines() < lines:
        time.sleep(0.005)
      time.sleep(rng.uniform(0.0, 0.2))
    signum = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}.get(kind, signal.SIGKILL)
    finished_first = run.proc.poll() is not None
    if not finished_first:
      run.proc.send_signal(signum)
    rc = run.wait()
    text = run.text()
    assert not finished_first, f"the run finished before the {kind}; use more steps:\n{text}"
    if expect_resume is not None:
      assert f"resumed from the checkpoint at step {expect_resume} " in text, text
    expect_resume = None
    if expect_cleanup:
      assert "removing unfinished save(s) of a killed run" in text, text
    expect_cleanup = False
    leftovers = sorted(n for n, _ in saves_in_progress() - old_leftovers)
    assert not any(n.startswith("damaged-") for n in names()), "a kill damaged a checkpoint"
    if kind in ("SIGTERM", "SIGINT"):
      assert rc == (0 if kind == "SIGTERM" else 130), (rc, text)
      saved = re.search(rf"{kind}: saved the checkpoint at step (\d+)", text)
      assert saved, text
      expect_resume = int(saved.group(1))
      assert os.path.isdir(os.path.join(ckpt_dir, str(expect_resume))), expect_resume
      line = f"{kind}: exit {rc}, saved step {expect_resume}"
    else:
      assert rc == -signal.SIGKILL, (rc, text)
      steps = re.findall(r"^step +(\d+)/", "".join(run.out), re.M)
      line = (f"{kind}: after logged step {steps[-1] if steps else 'none'}, "
              f"checkpoints {sorted(int(n) for n in names() if n.isdigit())}")
      if kind == "kill mid-save":
        if leftovers:
          mid_save_landed = expect_cleanup = True
          line += f", unfinished save left: {leftovers}"
        elif tries < 3:  # the save finished before the kill: try again in the next run
          tries += 1
          plan.insert(0, kind)
          line += " (the save finished first; trying again)"
    line += f" ({time.time() - started:.1f}s)"
    record.append(line)
    log(line)
  assert mid_save_landed, "no kill landed while a checkpoint was being written"
  final = _Run(cmd, env)
  rc = final.wait()
  assert rc == 0, final.text()
  assert not expect_cleanup or "removing unfinished save(s)" in final.text()
  if expect_resume is not None:
    assert f"resumed from the checkpoint at step {expect_resume} " in final.text()
  return record


def command(workdir: str, args) -> list[str]:
  return [sys.executable, "-m", "jaxdl.main", f"--config={args.config}", f"--workdir={workdir}",
          f"--config.data.path={args.data}", f"--config.checkpoint_every={args.every}",
          f"--config.num_train_steps={args.steps}"]


def final_params(workdir: str) -> list:
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  directory = os.path.join(workdir, "checkpoints")
  step = max(int(n) for n in os.listdir(directory) if n.isdigit())
  return jax.tree.leaves(ocp.StandardCheckpointer().restore(
      os.path.join(directory, str(step), "state"))["params"])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", default="../shared/data/mnist-10k")
  parser.add_argument("--config", default="configs/mnist.py:seed")
  parser.add_argument("--every", type=int, default=50, help="checkpoint_every")
  parser.add_argument("--steps", type=int, default=1250, help="num_train_steps")
  parser.add_argument("--seed", type=int, default=0, help="seeds the interruption moments")
  parser.add_argument("--root", default="runs/experiments/mnist-kill")
  args = parser.parse_args()
  root = os.path.join(REPO, args.root)
  shutil.rmtree(root, ignore_errors=True)
  killed, reference = os.path.join(root, "killed"), os.path.join(root, "reference")
  start = time.time()
  interrupt_until_done(command(killed, args), killed, args.seed)
  print(f"interrupted runs + final run: {time.time() - start:.0f}s")
  subprocess.run(command(reference, args), cwd=REPO, check=True, stdout=subprocess.DEVNULL)

  a, b = events(killed), events(reference)
  print(f"metrics.jsonl equal: {a == b} ({len(a)} events); final: {a[-1]}")
  same = all((x == y).all() for x, y in zip(final_params(killed), final_params(reference)))
  print(f"final params bitwise equal: {same}")
  sys.exit(0 if a == b and same else 1)


if __name__ == "__main__":
  main()
