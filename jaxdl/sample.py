"""Samples text from a trained language model: a checkpoint of a workdir (the newest by default).

  python -m jaxdl.sample --workdir=runs/tiny_lm --prompt="ROMEO:" --num_chars=500 \
      --temperature=0.8 --top_k=40 --seed=0 [--which=latest|best|STEP]

Any language-model run samples: a task with a `tokenizer` whose model maps int tokens [B, L]
to logits [B, L, V]; the run is read by jaxdl.load (jaxdl/runs.py). Decoding is one
jit-compiled function, in one of two ways:
  - the built-in transformer, with its key/value cache (models/transformer.py: `decode=True`,
    the only cache protocol jaxdl drives; `has_cache`): the prompt fills the cache in one pass,
    then a lax.fori_loop samples one character per iteration, running the model on that
    character alone. When the cache (block_size positions) is full, the context restarts from
    the newest block_size/2 characters, re-encoded in one pass, so every character is sampled
    from exactly the logits a full forward pass over its (at most block_size) context would
    give (`generate`);
  - any other model: each character from a full pass over the newest model.block_size
    characters (the window it trained on), or over all of them when the config has no
    block_size (`generate_windowed`). The window is read left-aligned, zeros after the text,
    which a causal model's logits at the text's last position do not see.
The output is a pure function of (checkpoint, prompt, flags, seed).
"""

from __future__ import annotations

import functools

from absl import app, flags, logging
import jax
import jax.numpy as jnp

from jaxdl import errors, models, runs, tasks
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
  _WHICH = flags.DEFINE_string("which", "latest", "the checkpoint: latest (the newest intact), "
                               "best (checkpoint.keep_best's) or a step number")


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
  """The prompt followed by `num_new` sampled token ids (int32[P + num_new]), for a model with
  the transformer's key/value cache (module docstring)."""
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


def generate_windowed(model, variables, prompt_P: jax.Array, key: jax.Array, *, num_new: int,
                      temperature: float, top_k: int, window: int | None) -> jax.Array:
  """The prompt followed by `num_new` sampled token ids (int32[P + num_new]), each from a full
  pass over the newest `window` tokens (all of them when None), for a model without a cache.
  Token i draws from fold_in(key, i), as in `generate`. Compiled with the model closed over,
  not as a static argument: a user's linen module need not be hashable (a field holding its
  config is not)."""
  how = dict(num_new=num_new, temperature=temperature, top_k=top_k, window=window)
  return jax.jit(functools.partial(_windowed, model, **how))(variables, prompt_P, key)


def _windowed(model, variables, prompt_P, key, *, num_new, temperature, top_k, window):
  p = prompt_P.shape[0]
  window = window or p + num_new
  # At least `window` long, so that every window's slice fits; zeros after the text so far.
  seq = jnp.zeros(max(p + num_new, window), jnp.int32).at[:p].set(prompt_P)

  def body(i, seq):
    n = p + i  # tokens so far
    start = jnp.maximum(n - window, 0)
    context_W = jax.lax.dynamic_slice(seq, (start,), (window,))
    logits_1xWxV = models.apply(model, variables, context_W[None], train=False)[0]
    token = _sample_token(logits_1xWxV[0, n - start - 1], jax.random.fold_in(key, i),
                          temperature, top_k)
    return seq.at[n].set(token)

  return jax.lax.fori_loop(0, num_new, body, seq)[:p + num_new]


def has_cache(model) -> bool:
  """Whether the model decodes with a key/value cache jaxdl knows how to drive: the built-in
  transformer's (`decode=True`, a 'cache' collection of model.block_size positions). Any other
  model, a user's whose call happens to take `decode` included, is run on full windows."""
  return isinstance(model, transformer.TransformerLM)


def sample(workdir: str, prompt: str, num_chars: int, temperature: float, top_k: int,
           seed: int, which: str | int = "latest") -> str:
  """The prompt and its continuation, from a checkpoint of the run in workdir (runs.load's
  `which`: the newest by default)."""
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
  block = config.model.get("block_size")  # the language model task's; None: no limit
  if block is not None and len(prompt_ids) > block:
    raise UserError(f"--prompt is {len(prompt_ids)} tokens long; the model's context "
                    f"(model.block_size) is {block}")
  run = runs.load(workdir, which)
  how = dict(num_new=num_chars, temperature=temperature, top_k=top_k)
  prompt_P, key = jnp.asarray(prompt_ids), jax.random.PRNGKey(seed)
  if has_cache(run.model):
    ids = generate(run.model, run.variables, prompt_P, key, **how)
  else:
    ids = generate_windowed(run.model, run.variables, prompt_P, key, window=block, **how)
  return vocab.decode(jax.device_get(ids))


def main(argv: list[str]) -> None:
  with errors.reported():
    if len(argv) > 1:
      raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _WORKDIR.value:
      raise UserError("--workdir is required")
    print(sample(_WORKDIR.value, _PROMPT.value, _NUM_CHARS.value, _TEMPERATURE.value,
                 _TOP_K.value, _SEED.value, _WHICH.value))


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  app.run(main, flags_parser=errors.parse_absl_flags)
