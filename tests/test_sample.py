"""Sampling: cached generation equals full-pass generation, determinism, and the CLI end to end."""

import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from jaxdl import sample
from jaxdl.errors import UserError
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
  out = sample.generate(model, {"params": params}, jnp.asarray(prompt), jax.random.PRNGKey(0), num_new=14,
                        temperature=0.0, top_k=0)  # the context restarts after 6 new tokens
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
  cli = _sample_cli(f"--workdir={workdir}", "--prompt=ROMEO:", "--num_chars=40", "--seed=3")
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
