"""The LM train step on an accelerator: step time, MFU and XLA's memory analysis, in minutes.

  python experiments/bench/accelerator.py --config=configs/tiny_lm.py:gpt2_small \
      [--set=model.remat=block --set=train.grad_accum_steps=4 ...] [--steps=20] [--compile_only]
  python experiments/bench/accelerator.py --cpu_devices=8 --set=parallel.mesh_shape=4,2 \
      --compile_only      # CPU: the memory analysis of a sharded step, without running it

It builds jaxdl's own pieces (models.get, optim.make, the task's objective, runner.Runner's
layout on the mesh, steps.train_step), jit-compiles one train step for the config's global
batch on random tokens (a throughput benchmark: the data never reaches the numbers), and prints
one JSON line:
  - flops_analytic: model FLOPs per step, 6 x (params outside the embeddings) x tokens for the
    matmuls' forward and backward, plus 12 x layers x width x block x tokens for attention's
    scores and weighted values (the PaLM paper's count; remat's recomputation not counted);
  - flops_xla: XLA's own count, compiled.cost_analysis()['flops'] (per device); it counts a
    loop's body once, so with model.scan_layers (a loop over the blocks) or
    train.grad_accum_steps > 1 (over the microbatches) it is a fraction of the step's;
  - step_s: the median of --steps timed steps after 3 warm-up steps (not with --compile_only);
  - mfu: flops_analytic / (step_s x devices x the device's peak), with the peak and its source
    from PEAKS (bf16 dense for accelerators), or --peak_tflops;
  - memory: compiled.memory_analysis() per device: temp (activations and scratch), argument
    and output bytes, and the train state's bytes per device from its layout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

# Dense bf16 peaks per device, TFLOP/s, from the vendors' datasheets.
PEAKS = {
    "NVIDIA H200": (989.0, "NVIDIA H200 datasheet: 989 TFLOPS BF16 Tensor Core, dense (1,979 "
                           "with sparsity)"),
    "NVIDIA H100 80GB HBM3": (989.0, "NVIDIA H100 SXM datasheet: 989 TFLOPS BF16, dense"),
    "NVIDIA A100-SXM4-80GB": (312.0, "NVIDIA A100 datasheet: 312 TFLOPS BF16, dense"),
    "TPU v4": (275.0, "Google Cloud TPU v4 docs: 275 TFLOPS bf16 per chip"),
    "TPU v5 lite": (197.0, "Google Cloud TPU v5e docs: 197 TFLOPS bf16 per chip"),
}


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/tiny_lm.py:gpt2_small")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a config override, as --config.KEY=VALUE would be (repeatable)")
  parser.add_argument("--steps", type=int, default=20, help="timed steps")
  parser.add_argument("--compile_only", action="store_true", help="memory and FLOPs only")
  parser.add_argument("--cpu_devices", type=int, default=0,
                      help="CPU: split into this many devices (before JAX starts)")
  parser.add_argument("--peak_tflops", type=float, default=0.0,
                      help="the device's peak, when PEAKS does not know it")
  return parser.parse_args()


def _config(arg: str, overrides: list[str]):
  """get_config(preset) of the config file, with KEY=VALUE overrides (Python literals, else
  strings; '4,2' is a tuple), set through the locked ConfigDict, which checks keys and types."""
  import ast  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, _, preset = arg.partition(":")
  spec = importlib.util.spec_from_file_location("bench_config", os.path.join(REPO, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(preset or None)
  for item in overrides:
    key, _, text = item.partition("=")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def _analytic_flops(config, n_params: int, embed_params: int, tokens: int) -> float:
  m = config.model
  return (6.0 * (n_params - embed_params) * tokens
          + 12.0 * m.num_layers * m.width * m.block_size * tokens)


def main() -> None:
  args = _parse_args()
  if args.cpu_devices:
    os.environ["JAX_NUM_CPU_DEVICES"] = str(args.cpu_devices)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from jaxdl import models, optim, parallel, runner as runners, tasks

  config = _config(args.config, args.set)
  task = tasks.get(config.task)
  mesh = parallel.make_mesh(config.parallel.mesh_shape)
  parallel.check_batch("batch_size", config.batch_size, mesh)
  parallel.check_microbatch(config.batch_size, config.train.grad_accum_steps, mesh)
  models.check(config.model, task.MODELS, mesh.shape["model"])
  vocab = 256  # data.vocab=bytes; the benchmark's tokens are random bytes
  model = models.get(config.model, vocab_size=vocab)
  tx = optim.make(config.opt, config.num_train_steps)
  b, t = config.batch_size, config.model.block_size
  rng = np.random.default_rng(0)

  class RandomWindows:  # the TrainIterator protocol, on random tokens
    size, steps_per_epoch = b * t, 1

    def batch(self, step):
      ids = rng.integers(0, vocab, (b, t + 1), dtype=np.int32)
      return {"inputs": ids[:, :-1], "targets": ids[:, 1:], "mask": np.ones(b, np.float32)}

  runner = runners.Runner(config, model, task.objective(config, model), tx, RandomWindows(),
                          mesh, task.INPUT, eval_every=10**9)
  batch = parallel.global_batch(RandomWindows().batch(0), mesh)
  start = time.time()
  compiled = runner.compile_step(batch)
  compile_s = time.time() - start
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  params = runner.abstract_state.params
  n_params = sum(x.size for x in jax.tree.leaves(params))
  embed = sum(x.size for k, v in params.items() if k in ("embed", "pos_embed")
              for x in jax.tree.leaves(v))
  tokens = b * t
  state_bytes = {}
  for x in jax.tree.leaves(runner.abstract_state):
    shard = x.sharding.shard_shape(x.shape)
    state_bytes[x.dtype.name] = state_bytes.get(x.dtype.name, 0) + int(
        np.prod(shard)) * x.dtype.itemsize
  device = jax.devices()[0]
  out = {
      "config": args.config, "overrides": args.set, "devices": jax.device_count(),
      "device_kind": device.device_kind, "platform": device.platform,
      "mesh": dict(mesh.shape), "params": n_params, "tokens_per_step": tokens,
      "flops_analytic": _analytic_flops(config, n_params, embed, tokens),
      "flops_xla_per_device": float(cost.get("flops", float("nan"))),
      "compile_s": round(compile_s, 1),
      "memory_per_device": {
          "temp_bytes": mem.temp_size_in_bytes, "argument_bytes": mem.argument_size_in_bytes,
          "output_bytes": mem.output_size_in_bytes,
          "state_bytes_by_dtype": state_bytes},
  }
  if not args.compile_only:
    state = runner.init_state()
    times = []
    for i in range(3 + args.steps):
      batch = parallel.global_batch(RandomWindows().batch(i), mesh)
      t0 = time.perf_counter()
      state, sums = compiled(state, batch)  # the program analysed above
      jax.block_until_ready((state, sums))
      if i >= 3:
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    peak, source = PEAKS.get(device.device_kind, (args.peak_tflops, "--peak_tflops"))
    out.update({"step_s": step_s, "tokens_per_s": tokens / step_s,
                "loss_last": float(sums["loss_sum"] / sums["count"]),
                "peak_tflops_per_device": peak or None, "peak_source": source if peak else None,
                "mfu": (out["flops_analytic"] / (step_s * jax.device_count() * peak * 1e12)
                        if peak else None)})
  print(json.dumps(out))


if __name__ == "__main__":
  main()
