"""Samples text from a trained language model: the latest checkpoint of a workdir.

  python -m jaxdl.sample --workdir=runs/tiny_lm --prompt="ROMEO:" --num_chars=500 \
      --temperature=0.8 --top_k=40 --seed=0

Decoding is one jit-compiled function: the prompt fills the key/value cache in one pass, then a
lax.fori_loop samples one character per iteration, running the model on that character alone.
When the cache (block_size positions) is full, the context restarts from the newest
block_size/2 characters, re-encoded in one pass, so every character is sampled from exactly the
logits a full forward pass over its (at most block_size) context would give. The output is a
pure function of (checkpoint, prompt, flags, seed).
"""

from __future__ import annotations

import functools

from absl import app, flags, logging
import jax
import jax.numpy as jnp

from jaxdl import checkpoint, errors, models, tasks
from jaxdl.errors import UserError
from jaxdl.models import transformer

# The flags exist only when this file runs as a program, so that `sample` and `generate` can be
# imported beside jaxdl.predict (each defining --workdir would be absl's DuplicateFlagError).
if __name__ == "__main__":
  _WORKDIR = flags.DEFINE_string("workdir", None, "a language-model run's workdir")
  _PROMPT = flags.DEFINE_string("prompt", "\n", "text the sample continues (default: a newline)")
  _NUM_CHARS = flags.DEFINE_integer("num_chars", 500, "characters (tokens) to generate")
  _TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "softmax temperature; 0 = greedy")
  _TOP_K = flags.DEFINE_integer("top_k", 40, "sample among the k likeliest tokens; 0 = all")
  _SEED = flags.DEFINE_integer("seed", 0, "sampling seed")


def _sample_token(logits_V: jax.Array, key: jax.Array, temperature: float,
                  top_k: int) -> jax.Array:
  if temperature == 0:
    return jnp.argmax(logits_V).astype(jnp.int32)
  if 0 < top_k < logits_V.shape[-1]:
    kth_largest = jax.lax.top_k(logits_V, top_k)[0][-1]
    logits_V = jnp.where(logits_V < kth_largest, -jnp.inf, logits_V)
  return jax.random.categorical(key, logits_V / temperature).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "num_new", "temperature", "top_k"))
def generate(model: transformer.TransformerLM, variables, prompt_P: jax.Array, key: jax.Array, *,
             num_new: int, temperature: float, top_k: int) -> jax.Array:
  """The prompt followed by `num_new` sampled token ids (int32[P + num_new])."""
  block, p = model.block_size, prompt_P.shape[0]
  keep = max(1, block // 2)  # context kept when the cache is full

  def run(cache, chunk_T):  # the model on a chunk that continues the cache: last logits
    logits_1xTxV, out = model.apply({**variables, "cache": cache}, chunk_T[None],
                                    train=False, decode=True, mutable=["cache"])
    return logits_1xTxV[0, -1], out["cache"]

  logits_V, cache = run(transformer.init_cache(model, 1), prompt_P)
  # At least `keep` long: restart's slice of `keep` tokens is traced (lax.cond traces both
  # branches) even when the text is too short to fill the cache, and a slice longer than its
  # array is a TypeError (the default one-character prompt and --num_chars=30 on a block of 64).
  seq = jnp.zeros(max(p + num_new, keep), jnp.int32).at[:p].set(prompt_P)

  def body(i, carry):
    seq, cache, logits_V = carry
    token = _sample_token(logits_V, jax.random.fold_in(key, i), temperature, top_k)
    seq = seq.at[p + i].set(token)

    def restart(cache):  # re-encode the newest `keep` tokens from position 0
      window = jax.lax.dynamic_slice(seq, (p + i + 1 - keep,), (keep,))
      return run({**cache, "index": jnp.zeros_like(cache["index"])}, window)

    logits_V, cache = jax.lax.cond(cache["index"] == block, restart,
                                   lambda cache: run(cache, token[None]), cache)
    return seq, cache, logits_V

  seq, _, _ = jax.lax.fori_loop(0, num_new, body, (seq, cache, logits_V))
  return seq[:p + num_new]


def sample(workdir: str, prompt: str, num_chars: int, temperature: float, top_k: int,
           seed: int) -> str:
  """The prompt and its continuation, from the latest checkpoint in workdir."""
  if num_chars < 0:
    raise UserError(f"--num_chars={num_chars}: must be >= 0")
  if not temperature >= 0:
    raise UserError(f"--temperature={temperature}: must be >= 0 (0 = greedy)")
  if top_k < 0:
    raise UserError(f"--top_k={top_k}: must be >= 0 (0 = no top-k cut)")
  config, task = tasks.of_run(workdir, "tokenizer",
                              "jaxdl.sample samples text from a language model's run")
  vocab = task.tokenizer(config, workdir)
  if not prompt:
    raise UserError("--prompt is empty; give at least one character (default: a newline)")
  prompt_ids = vocab.encode(prompt, "--prompt")
  block = config.model.block_size
  if len(prompt_ids) > block:
    raise UserError(f"--prompt is {len(prompt_ids)} tokens long; the model's context "
                    f"(model.block_size) is {block}")
  model = models.get(config.model, vocab_size=vocab.size)
  variables = checkpoint.latest_params(workdir, "configs/tiny_lm.py")
  ids = generate(model, variables, jnp.asarray(prompt_ids), jax.random.PRNGKey(seed),
                 num_new=num_chars, temperature=temperature, top_k=top_k)
  return vocab.decode(jax.device_get(ids))


def main(argv: list[str]) -> None:
  with errors.reported():
    if len(argv) > 1:
      raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _WORKDIR.value:
      raise UserError("--workdir is required")
    print(sample(_WORKDIR.value, _PROMPT.value, _NUM_CHARS.value, _TEMPERATURE.value,
                 _TOP_K.value, _SEED.value))


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  app.run(main, flags_parser=errors.parse_absl_flags)
