"""Text encoders: padding never changes a prediction; dropout comes only from the given rng."""

import jax
import numpy as np
import pytest

from conftest import load_config
from jaxdl import models, tasks, validate
from jaxdl.errors import UserError
from jaxdl.models.text import TextClassifier

ENCODERS = ("lstm", "cnn", "transformer")


def _model(encoder, **kw):
  """A tiny classifier; encoder 'lstm_attention' is the LSTM with pool='attention'."""
  if encoder == "lstm_attention":
    encoder, kw = "lstm", {**kw, "pool": "attention"}
  return TextClassifier(encoder=encoder, vocab_size=50, num_classes=3, embed_dim=8,
                        hidden_dim=8, num_layers=2, num_heads=2, max_len=16, head_dim=8, **kw)


def _init(model, tokens):
  return jax.jit(lambda t: model.init(jax.random.PRNGKey(1), t, train=False))(tokens)["params"]


def _apply(model):
  """model.apply, compiled (eager op-by-op dispatch is what makes these tests slow)."""
  return jax.jit(lambda p, t, train=False, rng=jax.random.PRNGKey(0): model.apply(
      {"params": p}, t, train=train, rngs={"dropout": rng}), static_argnames="train")


def _batches():
  """Four sentences of 1, 3, 5 and 6 tokens, padded to 6 and to 10."""
  rng = np.random.default_rng(0)
  short_BxL = np.zeros((4, 6), np.int32)
  for i, n in enumerate([1, 3, 5, 6]):
    short_BxL[i, :n] = rng.integers(2, 50, n)
  return short_BxL, np.pad(short_BxL, ((0, 0), (0, 4)))  # the same sentences, 4 more pads each


@pytest.fixture(scope="module", params=ENCODERS + ("lstm_attention",))
def compiled(request):
  """(params, the short batch's logits, compiled apply) per encoder, shared by this module's
  tests: each program compiles once (2-4 CPU-s each for these tiny encoders). The model has
  every dropout on (train=False ignores them); the params and the short batch's logits come
  from one program."""
  model = _model(request.param, dropout=0.5, embed_dropout=0.3, word_dropout=0.3)

  @jax.jit
  def init_and_apply(tokens):
    params = model.init(jax.random.PRNGKey(1), tokens, train=False)["params"]
    # Non-zero params everywhere (zero-init biases would hide a pad leaking in through them).
    params = jax.tree.map(
        lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(2), p.shape), params)
    return params, model.apply({"params": params}, tokens, train=False)

  params, short = init_and_apply(_batches()[0])
  return params, short, _apply(model)


@pytest.mark.slow
def test_padding_never_changes_the_prediction(compiled):
  params, short, apply = compiled
  long_BxL = _batches()[1]
  long = apply(params, long_BxL)
  np.testing.assert_allclose(short, long, rtol=1e-5, atol=1e-5)
  # Changing a pad's position changes nothing; changing a real token does (the test can fail).
  moved = long_BxL.copy()
  moved[0, 1] = 7  # row 0 had one token: now it has two
  assert not np.allclose(apply(params, moved)[0], long[0])


@pytest.mark.slow
def test_dropout_comes_from_the_rng(compiled):
  params, _, apply = compiled
  tokens = _batches()[1]  # the padding test's batch: its eval program is compiled already
  run = lambda seed: apply(params, tokens, True, jax.random.PRNGKey(seed))
  np.testing.assert_array_equal(run(3), run(3))
  assert not np.allclose(run(3), run(4))
  # Without train, the rng is ignored: no dropout.
  np.testing.assert_array_equal(apply(params, tokens, False, jax.random.PRNGKey(3)),
                                apply(params, tokens, False, jax.random.PRNGKey(4)))


def test_jit_matches_no_jit():
  model = _model("cnn")
  tokens = np.array([[5, 6, 7, 0, 0], [9, 0, 0, 0, 0]], np.int32)
  params = _init(model, tokens)
  eager = model.apply({"params": params}, tokens, train=False)
  np.testing.assert_allclose(_apply(model)(params, tokens), eager, rtol=1e-5, atol=1e-6)
  assert eager.shape == (2, 3)


def test_an_unknown_pool_is_one_error(tmp_path):
  config = load_config("text_classifier")
  config.model.pool = "last"
  task = tasks.get(config.task)
  with pytest.raises(UserError, match=r"model.pool='last': must be one of max_mean, attention"):
    models.check(config.model, task.MODELS)
  with pytest.raises(UserError, match=r"model.pool='last': must be one of max_mean, attention"):
    validate.validate(config, task, str(tmp_path / "w"))
