"""Text encoders: padding never changes a prediction; dropout comes only from the given rng."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.models.text import TextClassifier

ENCODERS = ("lstm", "cnn", "transformer")


def _model(encoder, **kw):
  return TextClassifier(encoder=encoder, vocab_size=50, num_classes=3, embed_dim=8,
                        hidden_dim=8, num_layers=2, num_heads=2, max_len=16, head_dim=8, **kw)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_padding_never_changes_the_prediction(encoder):
  model = _model(encoder)
  rng = np.random.default_rng(0)
  lengths = [1, 3, 5, 6]
  short_BxL = np.zeros((4, 6), np.int32)
  for i, n in enumerate(lengths):
    short_BxL[i, :n] = rng.integers(2, 50, n)
  long_BxL = np.pad(short_BxL, ((0, 0), (0, 10)))  # the same sentences, 10 more pads each
  params = model.init(jax.random.PRNGKey(1), long_BxL, train=False)["params"]
  # Non-zero params everywhere (zero-init biases would hide a pad leaking in through them).
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(2), p.shape),
                        params)
  short = model.apply({"params": params}, short_BxL, train=False)
  long = model.apply({"params": params}, long_BxL, train=False)
  np.testing.assert_allclose(short, long, rtol=1e-5, atol=1e-5)
  # Changing a pad's position changes nothing; changing a real token does (the test can fail).
  moved = long_BxL.copy()
  moved[0, 1] = 7  # row 0 had one token: now it has two
  assert not np.allclose(model.apply({"params": params}, moved, train=False)[0], long[0])


@pytest.mark.parametrize("encoder", ENCODERS)
def test_dropout_comes_from_the_rng(encoder):
  model = _model(encoder, dropout=0.5, embed_dropout=0.3, word_dropout=0.3)
  tokens = np.arange(2, 26, dtype=np.int32).reshape(3, 8)
  params = model.init(jax.random.PRNGKey(0), tokens, train=False)["params"]
  def run(seed):
    return model.apply({"params": params}, tokens, train=True,
                       rngs={"dropout": jax.random.PRNGKey(seed)})
  np.testing.assert_array_equal(run(3), run(3))
  assert not np.allclose(run(3), run(4))
  a = model.apply({"params": params}, tokens, train=False)
  np.testing.assert_array_equal(a, model.apply({"params": params}, tokens, train=False))


def test_jit_matches_no_jit():
  model = _model("lstm")
  tokens = np.array([[5, 6, 7, 0, 0], [9, 0, 0, 0, 0]], np.int32)
  params = model.init(jax.random.PRNGKey(0), tokens, train=False)["params"]
  f = lambda p, t: model.apply({"params": p}, t, train=False)
  np.testing.assert_allclose(jax.jit(f)(params, tokens), f(params, tokens), rtol=1e-5, atol=1e-6)
  assert f(params, tokens).shape == (2, 3)
