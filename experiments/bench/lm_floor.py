"""The products-only floor of the tiny LM's train step at nanoGPT's sizes.

Times each matrix product of one `:nanogpt_cpu` train step (batch 12 x 64 = 768 tokens, width
128, 4 layers, 4 heads, vocabulary 65) alone, as a jitted product on all of this machine's
cores, and sums them: no train step can be faster than this at these rates, before any
LayerNorm, softmax, GELU, optimizer or all-reduce work (experiments/bench/README.md section 7).

  python experiments/bench/lm_floor.py
"""

import time

import jax
import jax.numpy as jnp

BATCH, BLOCK, WIDTH, LAYERS, HEADS, VOCAB = 12, 64, 128, 4, 4, 65
TOKENS = BATCH * BLOCK


def seconds(f, *args, reps: int = 200) -> float:
  """Best of 5 means of `reps` calls."""
  for _ in range(20):
    out = f(*args)
  out.block_until_ready()
  best = float("inf")
  for _ in range(5):
    start = time.perf_counter()
    for _ in range(reps):
      out = f(*args)
    out.block_until_ready()
    best = min(best, (time.perf_counter() - start) / reps)
  return best


def product(m: int, k: int, n: int) -> float:
  """Seconds for one (m x k) @ (k x n) f32 product."""
  return seconds(jax.jit(jnp.dot), jnp.ones((m, k)), jnp.ones((k, n)))


def main():
  total, flops = 0.0, 0
  dense = {"qkv": (WIDTH, 3 * WIDTH), "attention out": (WIDTH, WIDTH),
           "mlp_in": (WIDTH, 4 * WIDTH), "mlp_out": (4 * WIDTH, WIDTH)}
  for name, (k, n) in dense.items():
    # forward x @ w, input gradient g @ w.T, kernel gradient x.T @ g
    fwd, dx, dw = product(TOKENS, k, n), product(TOKENS, n, k), product(k, TOKENS, n)
    total += LAYERS * (fwd + dx + dw)
    flops += LAYERS * 3 * 2 * TOKENS * k * n
    print(f"{name} {TOKENS}x{k} by {k}x{n}: forward {fwd * 1e6:.0f} us, input gradient "
          f"{dx * 1e6:.0f} us, kernel gradient {dw * 1e6:.0f} us")
  head = (product(TOKENS, WIDTH, VOCAB) + product(TOKENS, VOCAB, WIDTH)
          + product(VOCAB, TOKENS, WIDTH))
  total += head
  flops += 3 * 2 * TOKENS * WIDTH * VOCAB
  # Attention per layer: scores q @ k.T and weights @ v, one per (sequence, head); the backward
  # has two products of the same size for each.
  batched = jax.jit(lambda a, b: jnp.einsum("bij,bjk->bik", a, b))
  pairs, head_dim = BATCH * HEADS, WIDTH // HEADS
  scores = seconds(batched, jnp.ones((pairs, BLOCK, head_dim)),
                   jnp.ones((pairs, head_dim, BLOCK)), reps=500)
  mix = seconds(batched, jnp.ones((pairs, BLOCK, BLOCK)), jnp.ones((pairs, BLOCK, head_dim)),
                reps=500)
  total += LAYERS * 3 * (scores + mix)
  flops += LAYERS * 3 * 2 * 2 * pairs * BLOCK * BLOCK * head_dim
  print(f"tied output layer (3 products) {head * 1e3:.2f} ms; attention products per layer, "
        f"forward {(scores + mix) * 1e3:.2f} ms")
  print(f"products only: {total * 1e3:.1f} ms per train step, {flops / 1e6:,.0f} MFLOP at "
        f"{flops / total / 1e9:.0f} GFLOP/s ({jax.device_count()} device(s), "
        f"jax {jax.__version__})")


if __name__ == "__main__":
  main()
