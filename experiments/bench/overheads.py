"""Loop overheads, measured in-process with jaxdl's own pieces: device step time, host time per
step, FLOP rate against the machine's f32 matmul peak, the step-time cost of an asynchronous
checkpoint, eval speed. `--model=cnn` is the seed CNN (MNIST `:seed` preset), `--model=lm` the
tiny LM's `:nanogpt_cpu` preset (on the config's `parallel.cpu_devices`: 2 for that preset).

  python experiments/bench/overheads.py --data=../shared/data/mnist-10k
  python experiments/bench/overheads.py --model=lm --data=../shared/data/tiny_shakespeare/input.txt
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import jax  # pylint: disable=g-import-not-at-top

from jaxdl import checkpoint, models, optim, parallel, runner as runners, steps, tasks


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", choices=("cnn", "lm"), default="cnn")
  parser.add_argument("--data", required=True)
  parser.add_argument("--steps", type=int, default=100)
  args = parser.parse_args()
  file, preset = ("mnist", "seed") if args.model == "cnn" else ("tiny_lm", "nanogpt_cpu")
  spec = importlib.util.spec_from_file_location("config", f"{REPO}/configs/{file}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(preset)
  config.data.path = os.path.abspath(args.data)
  unit = "images" if args.model == "cnn" else "tokens"

  parallel.set_cpu_devices(config.parallel.cpu_devices)  # the :nanogpt_cpu preset's 2
  mesh = parallel.make_mesh()
  task = tasks.get(config.task)
  dataset = task.load(config, "/nonexistent")
  batches = dataset.train
  model = models.get(config.model, **dataset.model_info)
  tx = optim.make(config.opt, 1000)
  objective = task.objective(config, model)
  replicated = parallel.replicated(mesh)
  sample = parallel.global_batch(batches.batch(0), mesh)[task.INPUT]
  state = jax.jit(functools.partial(steps.create_state, model, tx, seed=0),
                  out_shardings=replicated)(sample)
  train_step = jax.jit(functools.partial(steps.train_step, objective=objective, tx=tx),
                       donate_argnums=0)
  n = args.steps

  # Step time with the batch already on the device, each step waited for.
  batch = parallel.global_batch(batches.batch(0), mesh)
  state, _ = train_step(state, batch)
  jax.block_until_ready(state)
  step_s = []
  for _ in range(n):
    t = time.perf_counter()
    state, _ = train_step(state, batch)
    jax.block_until_ready(state)
    step_s.append(time.perf_counter() - t)
  # Host work per step in the loop: build the batch and make it a device array. (Timing the
  # dispatch call itself is not meaningful here: on CPU it waits while the previous step still
  # holds the donated state, so it reads as the step time.)
  host_s = []
  for s in range(n):
    t = time.perf_counter()
    jax.block_until_ready(parallel.global_batch(batches.batch(s), mesh))
    host_s.append(time.perf_counter() - t)
  t_loop = time.perf_counter()
  for s in range(n):
    state, _ = train_step(state, parallel.global_batch(batches.batch(s), mesh))
  jax.block_until_ready(state)
  loop_s = (time.perf_counter() - t_loop) / n
  step, host = statistics.median(step_s), statistics.median(host_s)
  print(f"device step (batch resident, waited): {1e3 * step:.2f} ms median")
  print(f"host per step (batch build + transfer): {1e3 * host:.3f} ms median = "
        f"{100 * host / step:.1f}% of the step; the loop's pattern (build, dispatch, no wait) "
        f"{1e3 * loop_s:.2f} ms/step")

  # Achieved FLOP/s against this machine's f32 matmul peak (a big jnp.dot, best of 5).
  # XLA counts one device's program; the devices split the batch (the replicated optimizer
  # update is then counted once per device: 0.5% more than one device's count for the tiny LM).
  flops = train_step.lower(state, batch).compile().cost_analysis()["flops"] * mesh.size
  a = jax.numpy.ones((2048, 2048), jax.numpy.float32)
  dot = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(dot(a, a))
  best = float("inf")
  for _ in range(5):
    t = time.perf_counter()
    jax.block_until_ready(dot(a, a))
    best = min(best, time.perf_counter() - t)
  peak = 2 * 2048**3 / best
  print(f"FLOPs per train step (XLA cost analysis, {mesh.size} device(s)): {flops / 1e6:.1f} M; "
        f"achieved {flops / step / 1e9:.1f} GFLOP/s = {100 * flops / step / peak:.1f}% of the "
        f"measured f32 matmul peak {peak / 1e9:.0f} GFLOP/s (2048x2048 jnp.dot, best of 5)")

  # Asynchronous checkpoints: the same steps with a save every 25.
  with tempfile.TemporaryDirectory() as workdir:
    with checkpoint.Checkpoints(workdir, keep=2) as ckpts:
      timings = {}
      for every in (0, 25, 0, 25):
        t = time.perf_counter()
        for s in range(n):
          state, _ = train_step(state, batch)
          if every and (s + 1) % every == 0:
            ckpts.save(int(state.step), state, {"data": batches.position(s)})
        jax.block_until_ready(state)
        timings.setdefault(every, []).append((time.perf_counter() - t) / n)
      ckpts.manager.wait_until_finished()
  plain, saving = min(timings[0]), min(timings[25])
  per_save = (saving - plain) * 25
  print(f"async checkpoint: {1e3 * per_save:.1f} ms of step time per save "
        f"({1e3 * plain:.2f} -> {1e3 * saving:.2f} ms/step saving every 25 steps; at the "
        f"config's checkpoint_every={config.checkpoint_every}: "
        f"{100 * per_save / config.checkpoint_every / plain:.2f}% of step time)")

  # Eval throughput over the whole test split (batch 512, last batch padded), as the loop runs
  # it: runner.Runner.evaluate's sums, then the task's summarise (which waits for them).
  split = dataset.evals[dataset.eval_split]
  runner = runners.Runner(config, model, objective, tx, batches, mesh, task.INPUT,
                          config.eval_every or batches.steps_per_epoch)
  evaluate = lambda: task.summarise(runner.evaluate(state, split, config.eval_batch_size))
  evaluate()
  eval_s = []
  for _ in range(5):
    t = time.perf_counter()
    result = evaluate()
    eval_s.append(time.perf_counter() - t)
  count = int(result["count"])  # images, or tokens for the LM
  print(f"eval: {count / statistics.median(eval_s):,.0f} {unit}/s "
        f"({count} {unit} in {statistics.median(eval_s):.3f} s, batch "
        f"{config.eval_batch_size})")


if __name__ == "__main__":
  main()
