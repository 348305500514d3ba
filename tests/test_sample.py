"""Sampling: cached generation equals full-pass generation, determinism, the CLI end to end, and
a user's language model without a cache."""

import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import REPO
import jaxdl
from jaxdl import sample, train
from jaxdl.errors import UserError
from jaxdl.tasks import language_model
from jaxdl.models.transformer import TransformerLM


def _reference(model, params, prompt, num_new):
  """Greedy decoding by a full forward pass over the context for every token, with the same
  context rule as sample.generate: when the context would pass block_size, it restarts from
  the newest block_size // 2 tokens."""
  seq, start, keep = list(prompt), 0, model.block_size // 2
  # One compiled pass over block_size positions: the context, then zeros after it, which a
  # causal model's logits at the context's last position do not see (test_transformer.py's
  # causality tests); one shape, so one compilation for every context length.
  forward = jax.jit(lambda x: model.apply({"params": params}, x, train=False))
  for _ in range(num_new):
    context = seq[start:]
    logits = forward(jnp.asarray([context + [0] * (model.block_size - len(context))]))
    seq.append(int(jnp.argmax(logits[0, len(context) - 1])))
    if len(seq) - start > model.block_size:
      start = len(seq) - keep
  return seq


def _params(model, scale=1.0):
  """model's init, the matrices scaled by `scale`: one compiled program (op by op, the init and
  the scaling compiled each of their ~70 ops: ~5 CPU-s)."""
  return jax.jit(lambda x: jax.tree.map(lambda p: p * scale if p.ndim >= 2 else p, model.init(
      jax.random.PRNGKey(0), x, train=False)["params"]))(jnp.zeros((1, 8), jnp.int32))


@pytest.mark.slow
@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_cached_generation_matches_full_passes(positions):
  model = TransformerLM(vocab_size=13, num_layers=1, num_heads=2, width=16, block_size=8,
                        positions=positions)
  params = _params(model, scale=10.0)  # decisive logits
  prompt = [3, 1, 4]
  out = sample.generate(model, {"params": params}, jnp.asarray(prompt), jax.random.PRNGKey(0),
                        num_new=14, temperature=0.0, top_k=0)  # the context restarts after 6 new tokens
  assert out.tolist() == _reference(model, params, prompt, 14)


@pytest.mark.slow
def test_every_length_from_no_new_token_to_past_the_block():
  """Around each edge of the block of 8: shorter than the 4 tokens a restart keeps (once a
  TypeError: the restart's slice was traced longer than the text), the block filled exactly, one
  past it (the first restart), and three restarts; from a 1-token prompt and a full-block one."""
  model = TransformerLM(vocab_size=13, num_layers=1, num_heads=2, width=16, block_size=8)
  params = _params(model, scale=10.0)
  for prompt, num_new in (([3], 0), ([3], 1), ([3], 2), ([3], 3), ([3], 7), ([3], 8),
                          ([3], 20), ([3, 1, 4, 1, 5, 9, 2, 6], 1)):
    out = sample.generate(model, {"params": params}, jnp.asarray(prompt), jax.random.PRNGKey(0),
                          num_new=num_new, temperature=0.0, top_k=0)
    assert out.tolist() == _reference(model, params, prompt, num_new), (prompt, num_new)


@pytest.mark.slow
def test_sampling_is_deterministic_per_seed_and_respects_top_k():
  model = TransformerLM(vocab_size=13, num_layers=1, num_heads=2, width=16, block_size=8)
  params = _params(model)
  run = lambda seed, **kw: sample.generate(model, {"params": params}, jnp.asarray([1, 2]),
                                           jax.random.PRNGKey(seed), num_new=30, **kw).tolist()
  a = run(0, temperature=1.0, top_k=0)
  assert a == run(0, temperature=1.0, top_k=0) and a != run(1, temperature=1.0, top_k=0)
  assert len(set(run(0, temperature=5.0, top_k=1)[2:])) <= 2  # top-1 is greedy: few tokens
  assert run(0, temperature=5.0, top_k=1) == run(0, temperature=0.0, top_k=0)


def _sample_cli(*args):
  return subprocess.run([sys.executable, "-m", "jaxdl.sample", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_sample_cli_on_a_tiny_trained_run(trained_tiny_lm):
  _, workdir, _ = trained_tiny_lm
  # In this process first: the command line then finds its compiled program in the session's
  # persistent cache (conftest.py).
  text = sample.sample(workdir, "ROMEO:", 40, 0.8, 40, 3)  # the CLI's defaults
  cli = _sample_cli(f"--workdir={workdir}", "--prompt=ROMEO:", "--num_chars=40", "--seed=3",
                    "--which=24")  # the newest checkpoint, named
  assert cli.returncode == 0, cli.stderr
  assert cli.stdout.startswith("ROMEO:") and len(cli.stdout) == len("ROMEO:") + 40 + 1  # + \n
  assert cli.stdout == text + "\n"  # deterministic per seed, across processes
  assert sample.sample(workdir, "ROMEO:", 40, 0.8, 40, 4) != text

  for args, message in ((("ROMEO:~",), "--prompt has 1 character(s) not in the vocabulary: '~'"),
                        (("a" * 17,), "--prompt is 17 tokens long; the model's context "
                                      "(model.block_size) is 16"),
                        (("a", 5, -1.0), "--temperature=-1.0: must be >= 0 (0 = greedy)"),
                        (("a", -5), "--num_chars=-5: must be >= 0"),
                        (("",), "--prompt is empty")):
    args = args + (40, 0.8, 40, 0)[len(args) - 1:]
    with pytest.raises(UserError, match=re.escape(message)):
      sample.sample(workdir, *args)
  bad = _sample_cli(f"--workdir={workdir}", "--prompt=~")
  assert bad.returncode == 1 and bad.stdout == ""
  assert bad.stderr == ("jaxdl: error: --prompt has 1 character(s) not in the "
                        "vocabulary: '~'\n")


def test_sample_errors_before_any_work(tiny_lm, tmp_path):
  with pytest.raises(UserError, match=r"config.json: not found \(is --workdir a jaxdl run"):
    sample.sample(str(tmp_path), "a", 5, 1.0, 0, 0)
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps(tiny_lm.to_dict()))
  with pytest.raises(UserError, match="no vocab.json"):
    sample.sample(str(workdir), "a", 5, 1.0, 0, 0)
  (workdir / "vocab.json").write_text('{"kind": "chars", "chars": "ab"}')
  with pytest.raises(UserError, match=r"no checkpoint in .*checkpoints; train first"):
    sample.sample(str(workdir), "a", 5, 1.0, 0, 0)


@pytest.mark.slow
def test_sample_is_load_and_generate_and_the_window_path_agrees_with_the_cache(trained_tiny_lm):
  """jaxdl.sample draws from jaxdl.load's model and variables; and the path of a model without
  a cache (a full pass over the window per token) gives the cached path's tokens while the text
  fits the block (past it the two keep different contexts: a restart, a sliding window)."""
  config, workdir, _ = trained_tiny_lm
  run = jaxdl.load(workdir)
  vocab = language_model.tokenizer(config, workdir)
  prompt, key = jnp.asarray(vocab.encode("ROMEO:", "prompt")), jax.random.PRNGKey(0)
  greedy = dict(num_new=10, temperature=0.0, top_k=0)  # 6 + 10 tokens: the block of 16
  cached = sample.generate(run.model, run.variables, prompt, key, **greedy)
  assert sample.sample(workdir, "ROMEO:", 10, 0.0, 0, 0) == vocab.decode(jax.device_get(cached))
  windowed = sample.generate_windowed(run.model, run.variables, prompt, key, window=16, **greedy)
  assert windowed.tolist() == cached.tolist()
  assert sample.has_cache(run.model)


LM_MODEL = """
import flax.linen as nn
import jax.numpy as jnp

class _Pairs(nn.Module):  # each position sees its token and the one before: causal, no cache
  vocab_size: int
  width: int

  @nn.compact
  def __call__(self, tokens_BxL, *, train):
    x_BxLxD = nn.Embed(self.vocab_size, self.width)(tokens_BxL)
    before_BxLxD = jnp.pad(x_BxLxD, ((0, 0), (1, 0), (0, 0)))[:, :-1]
    return nn.Dense(self.vocab_size)(nn.relu(nn.Dense(self.width)(x_BxLxD + before_BxLxD)))

def build(model_config, *, vocab_size):
  return _Pairs(vocab_size, model_config.width)
"""


@pytest.mark.slow
def test_a_users_lm_without_a_cache_samples_from_full_windows(tmp_path, monkeypatch, tiny_lm):
  """A user's linen LM (tokens [B, L] -> logits [B, L, V], no `decode`) trained with the
  language_model task samples: each token from a pass over the newest model.block_size tokens,
  as a loop of full passes computes it."""
  (tmp_path / "load_user_lm.py").write_text(LM_MODEL)
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.delitem(sys.modules, "load_user_lm", raising=False)
  tiny_lm.unlock()
  tiny_lm.model = ml_collections.ConfigDict(dict(name="load_user_lm:build", block_size=16,
                                                 width=16))
  tiny_lm.lock()
  tiny_lm.num_train_steps = tiny_lm.checkpoint_every = tiny_lm.eval_every = 8
  workdir = str(tmp_path / "w")
  train.train_and_evaluate(tiny_lm, workdir)
  run = jaxdl.load(workdir)
  assert not sample.has_cache(run.model)
  text = sample.sample(workdir, "ROMEO:", 30, 0.0, 0, 0)  # 36 tokens: the window slides
  vocab = language_model.tokenizer(run.config, workdir)
  ids = [int(i) for i in vocab.encode("ROMEO:", "prompt")]
  for _ in range(30):
    context = ids[-16:]
    logits = run.apply(np.asarray([context + [0] * (16 - len(context))], np.int32))
    ids.append(int(np.argmax(logits[0, len(context) - 1])))
  assert text == vocab.decode(ids) and text.startswith("ROMEO:")
  sampled = sample.sample(workdir, "ROMEO:", 30, 0.8, 5, 1)
  assert sampled == sample.sample(workdir, "ROMEO:", 30, 0.8, 5, 1, which=8)
