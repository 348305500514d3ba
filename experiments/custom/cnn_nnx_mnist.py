"""MNIST with a user's Flax NNX CNN with BatchNorm (experiments/custom/nnx_cnn.py): the shipped
MNIST config with its model block replaced. Results: experiments/custom/README.md.

  python -m jaxdl.main --config=experiments/custom/cnn_nnx_mnist.py --workdir=runs/cnn_nnx \
      --config.data.path=../shared/data/mnist-10k
"""

import ml_collections

from jaxdl.configs import mnist


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  c = mnist.get_config(preset)  # task, data, opt, train, parallel: as the MNIST experiment
  c.unlock()
  c.model = ml_collections.ConfigDict()
  c.model.name = "experiments.custom.nnx_cnn:CNN"  # an NNX class: it takes rngs
  c.model.num_classes = 10    # the image task checks its data's labels against it
  c.model.channels = 1        # input channels (MNIST: grey)
  c.model.image_size = 28     # input height and width: they set the hidden layer's input size
  c.model.widths = (32, 64, 128)  # channels of each 3x3 convolution, each followed by a 2x2
                              # max pool (28 -> 14 -> 7 -> 3 pixels)
  c.model.hidden = 256        # the dense layer between the convolutions and the logits
  c.model.bn_momentum = 0.9   # BatchNorm: running average = m * average + (1 - m) * batch's
  c.model.dropout = 0.25      # after the hidden layer
  c.num_epochs = 15
  c.lock()
  return c
