"""Char-level Transformer LM on Tiny Shakespeare (decoder-only, pre-LayerNorm), with sampling.

  python -m jaxdl.main --config=configs/tiny_lm.py --workdir=runs/tiny_lm \
      --config.data.path=../shared/data/tiny_shakespeare/input.txt
  python -m jaxdl.sample --workdir=runs/tiny_lm --prompt="ROMEO:" --num_chars=500

Presets (`--config=configs/tiny_lm.py:NAME`):
  (default)    the best model found that trains in 3 minutes of wall time on a 2-core CPU,
               compilation and evaluation included (experiments/tiny_lm/README.md has the
               measured loss, time and a sample).
  nanogpt_cpu  nanoGPT's CPU configuration: 4 layers, 4 heads, width 128, block 64, batch 12,
               2,000 iterations, no dropout, bias-free layers, AdamW lr 1e-3 cosine to 1e-4
               after 100 warmup steps, b2 0.99, weight decay 0.1 on matrices, clip 1.0
               (nanoGPT: val 1.886). One departure: rotary positions, not a learned table:
               val 1.798, against 1.912 with `--config.model.positions=learned` (nanoGPT's
               model exactly; a PyTorch copy of nanoGPT gets 1.896 on the same validation set).
               On a CPU it splits the batch over 2 CPU devices (parallel.cpu_devices=2).
               See experiments/tiny_lm/README.md.

With no data.path and no prepared TFDS copy it trains, offline, on CPython's English reference
docs (pydoc_data.topics) and says so in a WARNING.
"""

import ml_collections

PRESETS = ("", "nanogpt_cpu")


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  """The Tiny Shakespeare LM experiment; `preset` is the text after ':' in --config."""
  preset = preset or ""
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r} for configs/tiny_lm.py; valid: "
                     f"{', '.join(repr(p) for p in PRESETS)}")
  c = ml_collections.ConfigDict()
  c.task = "language_model"   # data.load / steps.make_objective pick the loader and loss
  c.seed = 0                  # init, window sampling and dropout all derive from it
  c.batch_size = 32           # global batch of training windows, split over all devices
  c.eval_batch_size = 128     # global batch of validation windows
  c.num_epochs = 1            # epochs (one = as many tokens as the training text has)
  c.num_train_steps = 1_150   # if > 0, the run length in steps, overriding num_epochs
  c.log_every = 100           # steps between train lines on the console and in metrics.jsonl
  c.eval_every = 400          # steps between validation evals; 0 = once per epoch
  c.checkpoint_every = 1_000  # steps between checkpoints; one is always written at the end
  c.keep_checkpoints = 2      # how many of the newest checkpoints to keep
  c.steps_per_dispatch = 1    # train steps fused into one compiled call (lax.scan), at most;
                              # see configs/mnist.py (1 is fastest on CPU)
  c.profile_steps = ""        # 'START:STOP' traces train steps START..STOP-1 into WORKDIR/profile
                              # (jax.profiler; README "Profiling"); '' = no trace

  c.model = ml_collections.ConfigDict()
  c.model.name = "transformer"  # models.get_model: 'transformer' (jaxdl/models/transformer.py)
  c.model.num_layers = 4      # Transformer blocks
  c.model.num_heads = 4       # attention heads; width must divide by it
  c.model.width = 128         # model (residual stream) width
  c.model.mlp_ratio = 4       # MLP hidden width = mlp_ratio * width
  c.model.block_size = 64     # context length: train/eval window, position table, decode cache
  c.model.positions = "rope"  # learned | rope (rotary, in queries and keys)
  c.model.dropout = 0.0       # attention-weight and residual dropout during training
  c.model.tie_embeddings = True  # output layer = transposed token embedding (GPT-2, nanoGPT)
  c.model.use_bias = True     # biases in dense layers and LayerNorms (nanoGPT: none)
  c.model.dtype = "float32"   # matmul dtype: float32 | bfloat16 (params stay float32)
  c.model.impl = "auto"       # dense layers: flax | cpu (same params, a kernel gradient that
                              # XLA:CPU runs faster); auto = cpu on the CPU backend, else flax

  c.data = ml_collections.ConfigDict()
  c.data.source = "auto"      # auto | files | tfds | pydoc (offline corpus); see data/lm.py
  c.data.name = "tiny_shakespeare"  # TFDS name of a prepared copy
  c.data.path = ""            # a UTF-8 text file, or a directory of them; used when set
  c.data.tfds_dir = ""        # TFDS data_dir holding a prepared copy; '' = TFDS's default
  c.data.vocab = "chars"      # chars (distinct characters of the text) | bytes (UTF-8, 256)
  c.data.val_fraction = 0.1   # the last fraction of the text validates (nanoGPT: 0.1)
  c.data.eval_windows = 0     # validation windows evaluated, evenly spaced; 0 = all of them

  c.opt = ml_collections.ConfigDict()
  c.opt.name = "adamw"        # sgd | adam | adamw (optax names)
  c.opt.lr = 3e-3             # peak learning rate
  c.opt.schedule = "cosine"   # constant | cosine (linear warmup, cosine decay)
  c.opt.warmup_steps = 100    # steps of linear warmup from 0 (cosine schedule only)
  c.opt.end_lr_factor = 0.1   # final lr = lr * end_lr_factor (cosine schedule only)
  c.opt.momentum = 0.0        # sgd momentum; 0 = plain SGD
  c.opt.nesterov = False      # sgd: Nesterov momentum
  c.opt.b1 = 0.9              # adam/adamw first-moment decay
  c.opt.b2 = 0.99             # adam/adamw second-moment decay
  c.opt.weight_decay = 0.1    # adamw: decoupled decay; sgd: L2 added to the gradient
  c.opt.decay_mask = "matrices"  # params decayed: all | matrices (>= 2 dims: not biases/norms)
  c.opt.grad_clip_norm = 1.0  # clip gradients to this global norm; 0 = off

  c.loss = ml_collections.ConfigDict()
  c.loss.label_smoothing = 0.0  # shared key; the language-model objective does not use it

  c.train = ml_collections.ConfigDict()
  c.train.skip_nonfinite = False  # True: skip (and count) updates with a non-finite loss or
                                  # gradient; False: stop the run with an error naming the step
  c.train.ema_decay = 0.0  # > 0: keep ema = d * ema + (1 - d) * params after every step and
                          # evaluate, checkpoint and predict with it (Polyak averaging); 0 = off

  c.parallel = ml_collections.ConfigDict()
  c.parallel.mode = "jit"       # jit: one program on a device Mesh | pmap: jax.pmap + lax.pmean
  c.parallel.fsdp = False       # jit: shard params + optimizer state over 'data' (ZeRO-3)
  c.parallel.fsdp_min_size = 1024  # fsdp: arrays with fewer elements stay replicated
  c.parallel.mesh_shape = (-1,)  # devices per mesh axis ('data',); -1 = all the job's devices
  c.parallel.cpu_devices = 0   # CPU backend: split this process into N CPU devices, so the batch
                                # runs data-parallel over the cores (XLA:CPU runs one op at a time
                                # on small models); 0 = JAX's default (one device)

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

  c.lock()  # unknown keys are errors, from the command line and from code alike
  return c
