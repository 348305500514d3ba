"""A denoising autoencoder on MNIST: a user's task (experiments/custom/denoise.py) and model,
on jaxdl's shared blocks (configs/common.py). Results: experiments/custom/README.md.

  python -m jaxdl.main --config=experiments/custom/denoise_mnist.py --workdir=runs/denoise \
      --config.data.path=../shared/data/mnist-10k
"""

import ml_collections

from jaxdl.configs import common


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  common.check_preset(preset, ("",), "experiments/custom/denoise_mnist.py")
  c = common.get_config()     # seed, cadence, opt, train, parallel
  c.task = "experiments.custom.denoise"  # a user's task module, by its import path
  c.num_epochs = 5
  c.opt.lr = 2e-3
  c.opt.decay_mask = "all"   # as measured (README): the default before no_bias_norm

  c.model = ml_collections.ConfigDict()
  c.model.name = "experiments.custom.denoise:ConvAutoencoder"
  c.model.width = 32          # channels of the first convolution (the second has twice)

  c.data = ml_collections.ConfigDict()
  c.data.source = "auto"      # auto | files | tfds | sample
  c.data.name = "mnist"       # TFDS name of a prepared copy
  c.data.path = ""            # the four MNIST IDX files
  c.data.tfds_dir = ""
  c.data.noise_std = 0.5      # std of the Gaussian noise added to [0, 1] pixels
  c.lock()
  return c
