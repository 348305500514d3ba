"""Step-time benchmark of the LM train and eval steps for config variants (synthetic windows).

  python experiments/tiny_lm/bench.py --config=configs/tiny_lm.py:nanogpt_cpu \
      --variants='model.dtype=bfloat16;model.positions=rope'

Each variant (';'-separated, ','-joined key=value overrides) is compiled and timed in turn:
compile time, ms per train step (median of --steps after 3 warm-up steps), tokens/s, and the
time of one eval batch. It uses the real model, optimizer and jitted train_step of the loop,
on one device: `parallel.*` (the `:nanogpt_cpu` preset's 2 CPU devices) is not applied, so this
compares model variants; experiments/bench/ times the whole loop.
"""

import functools
import os
import statistics
import sys
import time

from absl import app, flags
import jax
import numpy as np
from ml_collections import config_flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
# This checkout's jaxdl:
from jaxdl import models, optim, steps, tasks  # pylint: disable=g-import-not-at-top

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny_lm.py", "base config")
_VARIANTS = flags.DEFINE_string("variants", "", "';'-separated variants of 'k=v,k=v' overrides")
_STEPS = flags.DEFINE_integer("steps", 20, "timed train steps per variant")


def _parse(value: str, like):
  if isinstance(like, bool):
    return value.lower() in ("1", "true")
  return type(like)(value)


def bench(config, label: str) -> None:
  b, l, vocab = config.batch_size, config.model.block_size, 65
  rng = np.random.default_rng(0)
  batch = {"inputs": rng.integers(0, vocab, (b, l)).astype(np.int32),
           "targets": rng.integers(0, vocab, (b, l)).astype(np.int32),
           "mask": np.ones(b, np.float32)}
  model = models.get(config.model, vocab_size=vocab)
  tx = optim.make(config.opt, 1000)
  objective = tasks.get(config.task).objective(config, model)
  state = steps.create_state(model, tx, batch["inputs"], config.seed)
  train_step = jax.jit(functools.partial(steps.train_step, objective=objective, tx=tx),
                       donate_argnums=0)
  eval_step = jax.jit(functools.partial(steps.eval_step, objective=objective))
  start = time.time()
  state, out = train_step(state, batch)
  jax.block_until_ready(out)
  compile_s = time.time() - start
  times = []
  for i in range(3 + _STEPS.value):
    start = time.time()
    state, out = train_step(state, batch)
    jax.block_until_ready(out)
    if i >= 3:
      times.append(time.time() - start)
  ms = 1e3 * statistics.median(times)
  eb = config.eval_batch_size
  ebatch = {"inputs": np.resize(batch["inputs"], (eb, l)),
            "targets": np.resize(batch["targets"], (eb, l)), "mask": np.ones(eb, np.float32)}
  jax.block_until_ready(eval_step(state, ebatch))
  start = time.time()
  for _ in range(3):
    jax.block_until_ready(eval_step(state, ebatch))
  eval_ms = 1e3 * (time.time() - start) / 3
  params = sum(x.size for x in jax.tree.leaves(state.params))
  print(f"{label:60s} {params / 1e6:5.2f}M params | compile {compile_s:4.1f}s | "
        f"{ms:7.1f} ms/step | {b * l / ms * 1e3:8,.0f} train tok/s | eval {eval_ms:6.1f} ms/"
        f"{eb} windows = {eb * l / eval_ms * 1e3:8,.0f} tok/s", flush=True)


def main(argv):
  del argv
  for variant in [""] + [v for v in _VARIANTS.value.split(";") if v]:
    config = _CONFIG.value.copy_and_resolve_references()
    config.unlock()
    for item in filter(None, variant.split(",")):
      key, value = item.split("=")
      node = config
      *path, leaf = key.split(".")
      for p in path:
        node = node[p]
      node[leaf] = _parse(value, node[leaf])
    bench(config, variant or "(base)")


if __name__ == "__main__":
  app.run(main)
