"""The seed CNN: parameter count, shapes, init schemes, and the explicit model choice."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config, set_keys
from jaxdl import models, tasks, validate
from jaxdl.errors import UserError
from jaxdl.models.cnn import CNN


def _params(init_scheme="flax", shapes_only=False):
  """The CNN's params, or only their shapes (traced, nothing computed). The init runs op by op:
  its ops are compiled one at a time and cached, which here costs a third of compiling the
  whole init as one program."""
  images = jnp.zeros((2, 28, 28, 1), jnp.uint8)
  init = lambda: CNN(init_scheme=init_scheme).init(jax.random.PRNGKey(0), images,
                                                   train=False)["params"]
  return jax.eval_shape(init) if shapes_only else init()


def test_parameter_count_is_the_seed_models():
  for scheme in ("flax", "torch"):
    assert sum(x.size for x in jax.tree.leaves(_params(scheme, shapes_only=True))) == 843_658


def test_output_shape_and_layer_shapes():
  params = _params(shapes_only=True)
  logits = jax.eval_shape(lambda p: CNN().apply({"params": p}, jnp.zeros((3, 28, 28, 1),
                                                                         jnp.uint8),
                                                train=False), params)
  assert logits.shape == (3, 10)
  shapes = {k: v["kernel"].shape for k, v in params.items()}
  assert shapes == {"Conv_0": (3, 3, 1, 32), "Conv_1": (3, 3, 32, 64),
                    "Dense_0": (1600, 512), "Dense_1": (512, 10)}


@pytest.mark.slow
def test_torch_init_matches_pytorch_default_bounds():
  params = _params("torch")
  for name, fan_in in (("Conv_0", 9), ("Conv_1", 288), ("Dense_0", 1600), ("Dense_1", 512)):
    bound = 1 / np.sqrt(fan_in)
    for leaf in ("kernel", "bias"):
      x = np.asarray(params[name][leaf])
      assert np.abs(x).max() <= bound + 1e-7
      assert np.abs(x).max() > 0.9 * bound  # uniform over the whole range, not shrunk
  assert np.all(np.asarray(_params("flax")["Dense_0"]["bias"]) == 0)


@pytest.mark.slow
def test_dropout_only_in_training():
  model = CNN(dropout=0.5)
  images = jax.random.randint(jax.random.PRNGKey(1), (4, 28, 28, 1), 0, 255).astype(jnp.uint8)
  params = model.init(jax.random.PRNGKey(0), images, train=False)["params"]
  a = model.apply({"params": params}, images, train=False)
  b = model.apply({"params": params}, images, train=False)
  c = model.apply({"params": params}, images, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_get_model_is_explicit(tmp_path):
  config = load_config("mnist")
  assert isinstance(models.get(config.model, num_classes=config.model.num_classes), CNN)
  config.model.name = "mlp"
  task = tasks.get(config.task)
  with pytest.raises(UserError, match=r"model.name='mlp': must be one of cnn \(this task's"):
    models.check(config.model, task.MODELS)
  with pytest.raises(UserError, match=r"model.name='mlp': must be one of cnn \(this task's"):
    validate.validate(config, task, str(tmp_path / "w"))
  with pytest.raises(UserError, match="model.name='mlp'"):  # not a family: not built either
    models.get(config.model, num_classes=config.model.num_classes)


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["cpu", "cpu_im2col"])
@pytest.mark.parametrize("size", [28, 29])  # 29: conv1's output is odd too, so both crop
def test_cpu_impls_match_flax_layers(impl, size):
  """Same param tree and init; logits and gradients equal to float rounding."""
  images = jax.random.randint(jax.random.PRNGKey(1), (8, size, size, 1), 0, 255).astype(jnp.uint8)
  labels = jnp.arange(8) % 10
  ref, fast = CNN(init_scheme="torch", impl="flax"), CNN(init_scheme="torch", impl=impl)
  params = ref.init(jax.random.PRNGKey(0), images, train=False)["params"]
  structure = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t)
  fast_params = fast.init(jax.random.PRNGKey(0), images, train=False)["params"]
  assert structure(fast_params) == structure(params)
  jax.tree.map(np.testing.assert_array_equal, fast_params, params)

  def loss(model, p):
    logits = model.apply({"params": p}, images, train=True)
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1).mean(), logits

  (l_ref, logits_ref), g_ref = jax.value_and_grad(lambda p: loss(ref, p), has_aux=True)(params)
  (l_fast, logits_fast), g_fast = jax.value_and_grad(lambda p: loss(fast, p), has_aux=True)(params)
  np.testing.assert_allclose(logits_fast, logits_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(l_fast, l_ref, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g_fast, g_ref)


def test_auto_impl_is_cpu_on_cpu_and_bad_impl_fails(tmp_path):
  from jaxdl.models.cnn import resolve_impl
  assert resolve_impl("auto") == ("cpu_im2col" if jax.default_backend() == "cpu" else "flax")
  config = load_config("mnist")
  config.model.impl = "fast"
  task = tasks.get(config.task)
  with pytest.raises(UserError, match="model.impl='fast': must be one of auto, flax, cpu"):
    models.check(config.model, task.MODELS)
  with pytest.raises(UserError, match="model.impl='fast': must be one of auto, flax, cpu"):
    validate.validate(config, task, str(tmp_path / "w"))


def test_max_pool_2x2_matches_nn_max_pool_on_odd_sizes():
  import flax.linen as nn
  from jaxdl.models.cnn import max_pool_2x2
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 11, 11, 3))
  np.testing.assert_array_equal(max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))


def test_max_pool_2x2_gradient_is_autodiffs_with_ties_split():
  from jaxdl.models.cnn import max_pool_2x2
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 6, 3))
  x = x.at[0, 0:2, 0:2, 0].set(1.0).at[1, 2, 2:4, 1].set(0.5)  # a 4-way and a 2-way tie
  plain = lambda x: x[:, :6, :6].reshape(2, 3, 2, 3, 2, 3).max(axis=(2, 4))
  loss = lambda pool: lambda x: jnp.sum(jnp.sin(pool(x)))  # a non-uniform output gradient
  np.testing.assert_allclose(jax.grad(loss(max_pool_2x2))(x), jax.grad(loss(plain))(x),
                             rtol=1e-6, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("channels", [1, 3])  # 1: the multiply-add forward; 3: im2col
def test_conv_cpu_matches_xla_convolution_and_its_gradients(channels):
  from jaxdl.models.cnn import conv_cpu
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 6, channels))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, channels, 5))
  xla = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "VALID",
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(conv_cpu(x, kernel), xla(x, kernel), rtol=1e-5, atol=1e-5)
  loss = lambda conv: lambda x, k: jnp.sum(jnp.sin(conv(x, k)))  # a non-uniform output gradient
  grads = jax.grad(loss(conv_cpu), argnums=(0, 1))(x, kernel)
  ref = jax.grad(loss(xla), argnums=(0, 1))(x, kernel)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grads, ref)


def test_a_users_builder_taking_dtype_gets_the_policy_and_unread_keys_are_named():
  """The MNIST config's model block on a user's builder that takes dtype and param_dtype:
  it gets them resolved ('auto' is float32 on CPU); it reads model.dropout; the task reads
  model.num_classes; init and impl (the CNN's) are read by no one."""
  block = set_keys(load_config("mnist"), {"model.name": "small_models:mlp_with_policy",
                                          "model.param_dtype": "bfloat16"}).model
  reads = set()
  model = models.get(block, reads=reads, num_classes=10)
  assert model.dtype == jnp.float32 and model.param_dtype == jnp.bfloat16
  assert models.unread_keys(block, reads, ("num_classes",)) == ["impl", "init"]
  assert models.unread_keys(load_config("mnist").model, set()) == []  # a family checks its own
