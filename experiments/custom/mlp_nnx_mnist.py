"""MNIST with a user's Flax NNX MLP (experiments/custom/nnx_mlp.py): the shipped MNIST config
with its model block replaced. Results: experiments/custom/README.md.

  python -m jaxdl.main --config=experiments/custom/mlp_nnx_mnist.py --workdir=runs/mlp_nnx \
      --config.data.path=../shared/data/mnist-10k
"""

import ml_collections

from jaxdl.configs import mnist


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  c = mnist.get_config(preset)  # task, data, opt, train, parallel: as the MNIST experiment
  c.unlock()
  c.model = ml_collections.ConfigDict()
  c.model.name = "experiments.custom.nnx_mlp:MLP"  # an NNX class: it takes rngs
  c.model.num_classes = 10    # the image task checks its data's labels against it
  c.model.channels = 1        # input channels (MNIST: grey)
  c.model.hidden = (512, 256)  # hidden layer widths
  c.model.dropout = 0.2
  c.data.random_shift = 1
  c.lock()
  return c
