"""A CNN with BatchNorm and dropout in Flax NNX, trained on MNIST by jaxdl's shipped image task.

  python -m jaxdl.main --config=experiments/custom/cnn_nnx_mnist.py --workdir=runs/cnn_nnx \
      --config.data.path=../shared/data/mnist-10k

An NNX model is a class (or function) that takes `rngs`, as NNX constructors do: jaxdl builds
it with rngs drawn from config.seed through flax.nnx.bridge.ToLinen, keeps its params in the
same train state and Orbax checkpoints as a linen model's, and runs the same pure jitted train
step. nnx.Dropout draws from the 'dropout' stream jaxdl gives every step.

nnx.BatchNorm's running averages (its nnx.BatchStat variables) reach jaxdl through the bridge
as the collection 'batch_stats', the model's state: kept in the train state and checkpoints,
updated by each train step (normalising by the batch's statistics), read by evaluation and
prediction (normalising by the averages). `train` picks which, as in linen; the module's own
mode (nnx.Module.train()/eval()) is not used, since jaxdl, not the model, knows which step runs.
"""

from flax import nnx
import jax.numpy as jnp

from jaxdl.errors import UserError


class CNN(nnx.Module):
  """3x3 convolutions, each batch-normalised with a ReLU and a 2x2 max pool; the flattened
  maps through a hidden dense layer (ReLU, dropout) to the logits."""

  def __init__(self, model_config, *, num_classes: int, rngs: nnx.Rngs):
    sizes = (model_config.channels, *model_config.widths)
    self.convs = nnx.List([nnx.Conv(a, b, (3, 3), use_bias=False, rngs=rngs)
                           for a, b in zip(sizes, sizes[1:])])
    self.norms = nnx.List([nnx.BatchNorm(b, momentum=model_config.bn_momentum, rngs=rngs)
                           for b in sizes[1:]])
    side = model_config.image_size // 2 ** len(model_config.widths)  # after the pools
    self.image_size = model_config.image_size
    self.hidden = nnx.Linear(side * side * sizes[-1], model_config.hidden, rngs=rngs)
    self.dropout = nnx.Dropout(model_config.dropout, rngs=rngs)
    self.out = nnx.Linear(model_config.hidden, num_classes, rngs=rngs)

  def __call__(self, images_BxHxWxC, *, train: bool):
    if images_BxHxWxC.shape[1:3] != (self.image_size,) * 2:  # seen once, when jit traces
      raise UserError(f"config.model.image_size={self.image_size}, but the images are "
                      f"{images_BxHxWxC.shape[1]}x{images_BxHxWxC.shape[2]}")
    x = images_BxHxWxC.astype(jnp.float32) / 255.0
    for conv, norm in zip(self.convs, self.norms):
      x = nnx.relu(norm(conv(x), use_running_average=not train))
      x = nnx.max_pool(x, (2, 2), (2, 2))  # 28 -> 14 -> 7 -> 3 on MNIST (3 widths)
    x = nnx.relu(self.hidden(x.reshape(x.shape[0], -1)))
    return self.out(self.dropout(x, deterministic=not train))
