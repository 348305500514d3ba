"""MNIST with a user's linen ResNet (experiments/custom/linen_resnet.py): the shipped MNIST
config with its model block replaced. Results: experiments/custom/README.md.

  python -m jaxdl.main --config=experiments/custom/resnet_mnist.py --workdir=runs/resnet \
      --config.data.path=../shared/data/mnist-10k
"""

import ml_collections

from jaxdl.configs import mnist


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  c = mnist.get_config(preset)  # task, data, opt, train, parallel: as the MNIST experiment
  c.unlock()
  c.model = ml_collections.ConfigDict()
  c.model.name = "experiments.custom.linen_resnet:ResNet"  # PACKAGE.MODULE:ATTR
  c.model.num_classes = 10    # the image task checks its data's labels against it
  c.model.widths = (32, 64, 128)  # channels of each stage; each stage halves the resolution
                              # (28 -> 14 -> 7 -> 4 pixels)
  c.model.blocks = 1          # residual blocks per stage
  c.model.bn_momentum = 0.9   # BatchNorm: running average = m * average + (1 - m) * batch's
  c.model.dropout = 0.1       # before the classifier
  c.num_epochs = 15
  c.lock()
  return c
