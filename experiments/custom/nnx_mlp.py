"""An MLP in Flax NNX, trained on MNIST by jaxdl's shipped image task.

  python -m jaxdl.main --config=experiments/custom/mlp_nnx_mnist.py --workdir=runs/mlp_nnx \
      --config.data.path=../shared/data/mnist-10k

An NNX model is a class (or function) that takes `rngs`, as NNX constructors do: jaxdl builds
it with rngs drawn from config.seed (through flax.nnx.bridge), keeps its params in the same
train state and Orbax checkpoints as a linen model's, and runs the same pure jitted train step.
Dropout draws from the 'dropout' stream jaxdl gives every step.
"""

from flax import nnx
import jax.numpy as jnp


class MLP(nnx.Module):
  """Flattened pixels → hidden layers (ReLU, dropout) → logits."""

  def __init__(self, model_config, *, num_classes: int, rngs: nnx.Rngs):
    sizes = (28 * 28 * model_config.channels, *model_config.hidden)
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes, sizes[1:])])
    self.dropout = nnx.Dropout(model_config.dropout, rngs=rngs)
    self.out = nnx.Linear(sizes[-1], num_classes, rngs=rngs)

  def __call__(self, images_BxHxWxC, *, train: bool):
    x = images_BxHxWxC.reshape(images_BxHxWxC.shape[0], -1).astype(jnp.float32) / 255.0
    for layer in self.layers:
      x = self.dropout(nnx.relu(layer(x)), deterministic=not train)
    return self.out(x)
