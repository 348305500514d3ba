"""Char-level Transformer LM on Tiny Shakespeare (decoder-only, pre-LayerNorm), with sampling.

  python -m jaxdl.main --config=configs/tiny_lm.py --workdir=runs/tiny_lm \
      --config.data.path=../shared/data/tiny_shakespeare/input.txt
  python -m jaxdl.sample --workdir=runs/tiny_lm --prompt="ROMEO:" --num_chars=500

Presets (`--config=configs/tiny_lm.py:NAME`; results: experiments/tiny_lm/README.md):
  (default)    the best model found that trains in 3 minutes of wall time on a 2-core CPU,
               compilation and evaluation included.
  nanogpt_cpu  nanoGPT's CPU configuration (4 layers, 4 heads, width 128, block 64, batch 12,
               2,000 iterations, AdamW), with one departure: rotary positions, not a learned
               table (`--config.model.positions=learned` is nanoGPT's model exactly). On a CPU
               it splits the batch over 2 CPU devices (parallel.cpu_devices=2).
  gpt2_small   GPT-2 small's body over UTF-8 bytes (data.vocab=bytes) for one GPU or TPU host:
               12 layers, 12 heads, width 768, block 1024, the blocks scanned. Timed by
               experiments/bench/accelerator.py; too slow to train on a CPU.

With no data.path and no prepared TFDS copy it trains, offline, on CPython's English reference
docs (pydoc_data.topics) and says so in a WARNING.
"""

import ml_collections

from jaxdl.configs import common

PRESETS = ("", "nanogpt_cpu", "gpt2_small")


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  """The Tiny Shakespeare LM experiment; `preset` is the text after ':' in --config."""
  preset = common.check_preset(preset, PRESETS, "configs/tiny_lm.py")
  c = common.get_config()     # seed, cadence, opt, train, parallel: configs/common.py
  c.task = "language_model"   # jaxdl/tasks/language_model.py
  c.batch_size = 32           # training windows
  c.eval_batch_size = 128     # validation windows
  c.num_epochs = 1            # (one = as many tokens as the training text has)
  c.num_train_steps = 1_150
  c.log_every = 100
  c.eval_every = 400          # 0 = once per epoch
  c.checkpoint_every = 1_000
  c.keep_checkpoints = 2

  c.model = ml_collections.ConfigDict()
  c.model.name = "transformer"  # jaxdl/models/transformer.py, or PACKAGE.MODULE:ATTR
  c.model.num_layers = 4      # Transformer blocks
  c.model.num_heads = 4       # attention heads; width must divide by it
  c.model.width = 128         # model (residual stream) width
  c.model.mlp_ratio = 4       # MLP hidden width = mlp_ratio * width
  c.model.block_size = 64     # context length: train/eval window, position table, decode cache
  c.model.positions = "rope"  # learned | rope (rotary, in queries and keys)
  c.model.dropout = 0.0       # attention-weight and residual dropout during training
  c.model.tie_embeddings = True  # output layer = transposed token embedding (GPT-2, nanoGPT)
  c.model.use_bias = True     # biases in dense layers and LayerNorms (nanoGPT: none)
  c.model.dtype = "auto"      # compute dtype: float32 | bfloat16 | auto = bfloat16 on GPU and
                              # TPU, float32 on CPU (logits, softmax and losses stay float32)
  c.model.param_dtype = "float32"  # params' (and optimizer state's) dtype: float32 | bfloat16
  c.model.impl = "auto"       # dense layers: flax | cpu (same params, a kernel gradient that
                              # XLA:CPU runs faster); auto = cpu on the CPU backend, else flax
  c.model.attention = "auto"  # xla (materialised scores) | cudnn (fused flash attention, GPU,
                              # bfloat16, no dropout) | auto = cudnn where it runs, else xla
  c.model.remat = "none"      # none | block (recompute each block's activations in the backward
                              # pass: less memory, ~1/3 more compute) | a jax.checkpoint_policies
                              # name, e.g. dots_saveable (keep the matmul outputs)
  c.model.scan_layers = False  # the blocks as one lax.scan over stacked params (params['blocks'],
                              # not block_0..): compiled once; remat then frees memory on CPU too

  c.data = ml_collections.ConfigDict()
  c.data.source = "auto"      # auto | files | tfds | pydoc (offline corpus); tasks/language_model.py
  c.data.name = "tiny_shakespeare"  # TFDS name of a prepared copy
  c.data.path = ""            # a UTF-8 text file, or a directory of them; used when set
  c.data.tfds_dir = ""        # TFDS data_dir holding a prepared copy; '' = TFDS's default
  c.data.vocab = "chars"      # chars (distinct characters of the text) | bytes (UTF-8, 256)
  c.data.val_fraction = 0.1   # the last fraction of the text validates (nanoGPT: 0.1)
  c.data.eval_windows = 0     # validation windows evaluated, evenly spaced; 0 = all of them

  c.opt.lr = 3e-3
  c.opt.warmup_steps = 100
  c.opt.end_lr_factor = 0.1
  c.opt.b2 = 0.99
  c.opt.weight_decay = 0.1
  c.opt.decay_mask = "matrices"
  c.opt.grad_clip_norm = 1.0

  if preset == "nanogpt_cpu":
    c.batch_size = 12
    c.num_train_steps = 2_000
    c.eval_every = 500
    c.model.use_bias = False  # nanoGPT's default
    # nanoGPT learns a position table; rotary positions need no training, which at 2,000 steps
    # of batch 12 is worth ~0.1 nats (README). Learned positions remain a command-line choice.
    c.model.positions = "rope"
    c.opt.lr = 1e-3
    c.opt.end_lr_factor = 0.1
    # At batch 12 XLA:CPU keeps about one core busy; two CPU devices (6 windows each) train
    # 1.2-1.4x faster on 2 cores, with the same losses (experiments/bench/README.md section 7).
    # Only the CPU backend is split; 0 gives back one device.
    c.parallel.cpu_devices = 2

  if preset == "gpt2_small":
    c.batch_size = 32          # 32 windows of 1,024 bytes: 32,768 tokens per step
    c.eval_batch_size = 32
    c.num_train_steps = 5_000
    c.eval_every = 1_000
    c.log_every = 50
    c.model.num_layers = 12
    c.model.num_heads = 12
    c.model.width = 768
    c.model.block_size = 1024
    c.model.positions = "learned"  # GPT-2's
    c.model.scan_layers = True  # one compiled block; with model.remat=block, 8x less memory
    c.data.vocab = "bytes"
    c.data.eval_windows = 64   # of the ~108 in Tiny Shakespeare's validation tenth
    c.opt.lr = 6e-4            # GPT-2 small's (nanoGPT's train_gpt2 config)
    c.opt.warmup_steps = 500
    c.opt.b2 = 0.95

  c.lock()  # unknown keys are errors, from the command line and from code alike
  return c
