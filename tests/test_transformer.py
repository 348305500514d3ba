"""The Transformer LM: shapes, causality, and the key/value cache agreeing with the full pass."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from jaxdl import models, tasks, validate
from jaxdl.errors import UserError
from jaxdl.models import transformer
from jaxdl.models.transformer import TransformerLM, init_cache

VOCAB = 11


def _model(positions="learned", **kw):
  kw = {"num_layers": 2, "num_heads": 2, "width": 16, "block_size": 12, **kw}
  model = TransformerLM(vocab_size=VOCAB, positions=positions, **kw)
  # jit: one compile costs less than running the init op by op (~4 s for 2 blocks on CPU).
  # The small init scaled up, so that the logits depend visibly on every input.
  params = jax.jit(lambda x: jax.tree.map(lambda p: p * 8 if p.ndim >= 2 else p, model.init(
      jax.random.PRNGKey(0), x, train=False)["params"]))(jnp.zeros((1, 12), jnp.int32))
  return model, params


def _tokens(shape, seed=1):
  return jax.random.randint(jax.random.PRNGKey(seed), shape, 0, VOCAB)


def test_output_shape_and_get_model(tmp_path):
  config = load_config("tiny_lm", "nanogpt_cpu")
  assert (config.model.positions, config.model.use_bias) == ("rope", False)
  config.model.positions, config.model.use_bias = "learned", True  # GPT-2's layers
  model = models.get(config.model, vocab_size=65)
  assert isinstance(model, TransformerLM) and model.block_size == 64 and model.num_layers == 4
  # Shapes only (eval_shape): the counts need no values, and running them op by op took ~5 s.
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, 64), jnp.int32),
                                             train=False)["params"])
  assert jax.eval_shape(lambda p: model.apply({"params": p}, jnp.zeros((2, 64), jnp.int32),
                                              train=False), params).shape == (2, 64, 65)
  # Per block: qkv 128*384+384, out 128*128+128, MLP 128*512+512 and 512*128+128, 2 LayerNorms
  # 2*256; then token 65*128 and position 64*128 embeddings (the output layer is tied), the final
  # LayerNorm 256.
  per_block = 128 * 384 + 384 + 128 * 128 + 128 + 128 * 512 + 512 + 512 * 128 + 128 + 512
  expected = 4 * per_block + 65 * 128 + 64 * 128 + 256
  assert sum(x.size for x in jax.tree.leaves(params)) == expected == 809_856
  # Without biases (nanoGPT's bias=False) the LayerNorms keep only their scales.
  config.model.use_bias = False
  params = jax.eval_shape(lambda: models.get(config.model, vocab_size=65).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 64), jnp.int32), train=False)["params"])
  biases = 4 * (384 + 128 + 512 + 128 + 2 * 128) + 128
  assert sum(x.size for x in jax.tree.leaves(params)) == expected - biases == 804_096
  task = tasks.get(config.task)
  config.model.positions = "alibi"
  with pytest.raises(UserError, match="model.positions='alibi': must be one of learned, rope"):
    models.check(config.model, task.MODELS)
  with pytest.raises(UserError, match="model.positions='alibi': must be one of learned, rope"):
    validate.validate(config, task, str(tmp_path / "w"))
  config.model.positions, config.model.impl = "rope", "gpu"
  with pytest.raises(UserError, match="model.impl='gpu': must be one of auto, flax, cpu"):
    models.check(config.model, task.MODELS)
  with pytest.raises(UserError, match="model.impl='gpu': must be one of auto, flax, cpu"):
    validate.validate(config, task, str(tmp_path / "w"))


@pytest.mark.slow
@pytest.mark.parametrize("positions,use_bias", [("learned", True), ("rope", False)])
def test_cpu_dense_layers_match_flax_layers(positions, use_bias):
  """impl='cpu' (CpuDense, a hand-written kernel gradient) against nn.Dense/DenseGeneral: the
  same parameter tree and init, the same logits and gradients to float rounding."""
  flax_model = TransformerLM(vocab_size=VOCAB, positions=positions, use_bias=use_bias,
                             impl="flax", num_layers=1, num_heads=2, width=16, block_size=12)
  cpu_model = flax_model.clone(impl="cpu")
  tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 12), 0, VOCAB)
  init = lambda m: jax.jit(lambda x: m.init(jax.random.PRNGKey(0), x, train=False))(
      tokens)["params"]
  params = init(flax_model)
  jax.tree.map(np.testing.assert_array_equal, init(cpu_model), params)  # also the tree's keys
  loss = lambda m: lambda p: jnp.mean(m.apply({"params": p}, tokens, train=True) ** 2)
  (loss_flax, grads_flax), (loss_cpu, grads_cpu) = (
      jax.jit(jax.value_and_grad(loss(m)))(params) for m in (flax_model, cpu_model))
  np.testing.assert_allclose(loss_cpu, loss_flax, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
               grads_cpu, grads_flax)


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_causality_by_perturbation(positions):
  model, params = _model(positions)
  tokens = _tokens((2, 12))
  forward = jax.jit(lambda x: model.apply({"params": params}, x, train=False))
  logits = forward(tokens)
  for t in (0, 5, 11):
    changed = tokens.at[:, t].set((tokens[:, t] + 1) % VOCAB)
    other = forward(changed)
    np.testing.assert_array_equal(other[:, :t], logits[:, :t])  # the past is untouched
    assert np.abs(other[:, t] - logits[:, t]).max() > 1e-3  # position t sees its own token


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_causality_by_gradient(positions):
  model, params = _model(positions)
  tokens = _tokens((1, 12))
  # flax's perturb() hook: a zero added to the input embeddings, differentiable per position.
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), tokens, train=False)["perturbations"]))

  def logit_sums_L(perturbations):
    logits = model.apply({"params": params, "perturbations": perturbations}, tokens, train=False)
    return logits[0].sum(-1)

  # jac[t, s] = d(sum of position t's logits) / d(position s's embedding), all t and s at once.
  jac_LxLxD = jax.jit(jax.jacrev(logit_sums_L))(zeros)["embedded"][:, 0]
  influence_LxL = np.abs(np.asarray(jac_LxLxD)).sum(-1)
  assert np.all(np.triu(influence_LxL, k=1) == 0)  # nothing from the future
  assert np.all(influence_LxL[np.tril_indices(12)] > 0)  # every past position and itself


@pytest.mark.slow
@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_cached_decoding_matches_the_full_pass(positions):
  model, params = _model(positions)
  tokens = _tokens((3, 12), seed=2)
  full = jax.jit(lambda x: model.apply({"params": params}, x, train=False))(tokens)
  cache = init_cache(model, 3)
  decode = jax.jit(lambda c, x: model.apply({"params": params, "cache": c}, x, train=False,
                                            decode=True, mutable=["cache"]))
  steps = [(0, 5)] + [(t, t + 1) for t in range(5, 12)]  # a 5-token prompt, then one at a time
  for start, end in steps:
    logits, variables = decode(cache, tokens[:, start:end])
    cache = variables["cache"]
    np.testing.assert_allclose(logits, full[:, start:end], atol=2e-5, rtol=2e-5)
  assert int(cache["index"]) == 12


def test_rope_rotates_each_pair_by_its_position_angle():
  """The precomputed sin/cos tables: pair i of position p turns by p / 10000^(i / (K/2)), so
  q·k depends on the distance only; the decode path (a gather at the cache position) agrees."""
  x_1xLx2xK = jax.random.normal(jax.random.PRNGKey(0), (1, 12, 2, 8))
  out = transformer._rope(x_1xLx2xK, jnp.arange(12), block_size=12, decode=False)
  angles_LxF = np.arange(12)[:, None] / 10_000 ** (np.arange(4) / 4)
  x1, x2 = np.split(np.asarray(x_1xLx2xK, np.float64), 2, axis=-1)
  cos, sin = np.cos(angles_LxF)[None, :, None], np.sin(angles_LxF)[None, :, None]
  np.testing.assert_allclose(out, np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1),
                             atol=1e-5)
  decoded = transformer._rope(x_1xLx2xK[:, 5:7], jnp.array([5, 6]), block_size=12, decode=True)
  np.testing.assert_allclose(decoded, out[:, 5:7], atol=1e-6)
  longer = transformer._rope(x_1xLx2xK, jnp.arange(12), block_size=8, decode=False)
  np.testing.assert_array_equal(longer, out)  # the table covers inputs past block_size too
  same_vector = transformer._rope(jnp.broadcast_to(x_1xLx2xK[:, :1], x_1xLx2xK.shape),
                                  jnp.arange(12), block_size=12, decode=False)
  dots_H = jnp.einsum("bhk,bhk->h", same_vector[:, 3], same_vector[:, 7])
  np.testing.assert_allclose(dots_H, jnp.einsum("bhk,bhk->h", same_vector[:, 0], same_vector[:, 4]),
                             atol=1e-5)


@pytest.mark.slow
def test_dropout_only_in_training():
  model, params = _model(dropout=0.5)
  tokens = _tokens((2, 12))
  forward = jax.jit(lambda x, train, rng: model.apply({"params": params}, x, train=train,
                                                      rngs={"dropout": rng}),
                    static_argnames="train")
  a = forward(tokens, False, jax.random.PRNGKey(3))
  b = forward(tokens, True, jax.random.PRNGKey(3))
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(a, forward(tokens, False, jax.random.PRNGKey(4)))


@pytest.mark.slow
def test_remat_gives_the_same_loss_and_gradients():
  """model.remat recomputes activations in the backward pass: the params (names included), the
  loss and its gradients are those without it; and the decode path still runs. (A
  jax.checkpoint_policies name: the scanned-blocks test below.)"""
  model, params = _model("rope", dropout=0.1, num_layers=1)  # remat wraps each block alike
  remat_model = model.clone(remat="block")
  assert jax.tree.structure(jax.eval_shape(lambda: remat_model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, 12), jnp.int32), train=False))["params"]) == \
      jax.tree.structure(params)
  tokens = _tokens((3, 12))

  def loss(m, p):
    logits = m.apply({"params": p}, tokens, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
        logits, tokens[..., None], -1)[..., 0])

  (want, want_g), (got, got_g) = (jax.jit(jax.value_and_grad(lambda p, m=m: loss(m, p)))(params)
                                  for m in (model, remat_model))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  cache = init_cache(remat_model, 3)
  out, _ = jax.jit(lambda p, c: remat_model.apply({"params": p, "cache": c}, tokens[:, :4],
                                                  train=False, decode=True, mutable=["cache"]))(
                                                      params, cache)
  full = jax.jit(lambda p: model.apply({"params": p}, tokens[:, :4], train=False))(params)
  np.testing.assert_allclose(out, full, rtol=1e-5, atol=1e-5)


def _stacked(params, num_layers):
  """An unrolled model's params in the scanned layout: block_0.. stacked into 'blocks'."""
  rest = {k: v for k, v in params.items() if not k.startswith("block_")}
  return {**rest, "blocks": jax.tree.map(lambda *x: jnp.stack(x),
                                          *(params[f"block_{i}"] for i in range(num_layers)))}


@pytest.mark.slow
def test_scanned_blocks_are_the_same_function_over_stacked_params():
  """model.scan_layers runs the blocks as one lax.scan: its params are the unrolled model's
  stacked on a leading axis (with 'layers' as that axis's logical name), and with them the
  logits, the gradients and the decode cache's logits are the unrolled model's, with remat by a
  jax.checkpoint_policies policy (the scanned form without remat runs in test_parallel's
  tensor-parallel test)."""
  model, params = _model("rope", num_layers=2)
  params = nn.unbox(params)
  scanned = model.clone(scan_layers=True, remat="dots_saveable")
  boxed = jax.eval_shape(lambda: scanned.init(jax.random.PRNGKey(0), jnp.zeros((1, 12), jnp.int32),
                                              train=False))
  qkv = boxed["params"]["blocks"]["attn"]["qkv"]["kernel"]
  assert qkv.names == ("layers", "embed", None, "heads", "kv") and qkv.value.shape[0] == 2
  stacked = _stacked(params, 2)
  assert jax.tree.structure(stacked) == jax.tree.structure(nn.unbox(boxed["params"]))
  tokens = _tokens((2, 12))
  loss = lambda m, p: jnp.sum(m.apply({"params": p}, tokens, train=False) ** 2)
  want, want_g = jax.jit(jax.value_and_grad(lambda p: loss(model, p)))(params)
  got, got_g = jax.jit(jax.value_and_grad(lambda p: loss(scanned, p)))(stacked)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(got_g), jax.tree.leaves(_stacked(want_g, 2))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
  cache = init_cache(scanned, 2)
  assert cache["blocks"]["attn"]["key"].shape == (2, 2, 12, 2, 8)
  decode = jax.jit(lambda c, x: scanned.apply({"params": stacked, "cache": c}, x, train=False,
                                              decode=True, mutable=["cache"]))
  out, state = decode(cache, tokens[:, :5])
  out2, _ = decode(state["cache"], tokens[:, 5:])
  full = jax.jit(lambda p: model.apply({"params": p}, tokens, train=False))(params)
  np.testing.assert_allclose(jnp.concatenate([out, out2], 1), full, rtol=1e-5, atol=1e-4)


def test_an_unknown_remat_policy_is_one_line():
  config = load_config("tiny_lm")
  config.model.remat = "save_only_these_names"  # a policy factory, not a policy
  with pytest.raises(UserError, match=r"config.model.remat='save_only_these_names': must be one "
                                      r"of none, block, dots_saveable"):
    models.check(config.model, ("transformer",))


@pytest.mark.slow
def test_the_bfloat16_policy_keeps_float32_params_and_logits_close():
  """model.dtype=bfloat16 computes in bfloat16: the params stay float32, the logits are float32,
  and the loss at init is within 0.02 of float32's."""
  model, params = _model("rope")
  tokens = _tokens((4, 12))

  def loss(m):
    logits = jax.jit(lambda p: m.apply({"params": p}, tokens, train=False))(params)
    assert logits.dtype == jnp.float32
    return float(jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
        logits, tokens[..., None], -1)[..., 0]))

  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype("float32")}
  assert abs(loss(model.clone(dtype=jnp.bfloat16)) - loss(model)) < 0.02
