"""The blocks every experiment shares, each key commented once here.

An experiment file (configs/mnist.py, ...) starts from `get_config()`, sets its task, model, data
and (for classifiers) loss blocks, and overrides the values it needs. A config file of your own,
anywhere, can do the same, or start from a shipped experiment (README "Your own model, task or
data"):

  from jaxdl.configs import common
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Cadence, optimizer, train and parallel blocks, unlocked: the caller adds its own and locks."""
  c = ml_collections.ConfigDict()
  c.task = ""                 # a built-in task name (jaxdl/tasks) or a user's 'pkg.module'
  c.seed = 0                  # init, shuffling, dropout and augmentation all derive from it
  c.batch_size = 64           # global batch, split evenly over all devices
  c.eval_batch_size = 512     # global eval batch; the last one is padded and masked
  c.num_epochs = 10           # passes over the training split
  c.num_train_steps = -1      # if > 0, the run length in steps, overriding num_epochs
  c.min_train_steps = 0       # num_epochs runs at least this many steps: a small training split
                              # gets more epochs, so a recipe tuned in steps still has them
  c.log_every = 50            # steps between train lines on the console and in metrics.jsonl
  c.eval_every = 0            # steps between evals of the eval split; 0 = at every epoch's end
  c.checkpoint_every = 500    # steps between checkpoints; one is always written at the end
  c.keep_checkpoints = 3      # how many of the newest checkpoints to keep
  c.steps_per_dispatch = 1    # train steps fused into one compiled call (lax.scan), at most;
                              # the loop uses the largest k <= this dividing log_every, the eval
                              # interval and checkpoint_every. 1 (one step per call) is fastest
                              # on CPU, where a fused call compiles k unrolled copies of the step
  c.init_from = ""            # start a fresh run from earlier weights: a workdir (its newest
                              # checkpoint), 'WORKDIR:best', 'WORKDIR:STEP' or an exported
                              # FILE.safetensors; optimizer, step and data start fresh, and a
                              # resumed run ignores it (README "Start from earlier weights")
  c.init_from_keys = ""       # a regex: only the weights whose name ('params.Dense_0.kernel')
                              # it matches load, the rest keep their fresh init; '' = all
  c.profile_steps = ""        # 'START:STOP' traces train steps START..STOP-1 into WORKDIR/profile
                              # (jax.profiler; README "Profiling"); '' = no trace

  c.opt = ml_collections.ConfigDict()
  c.opt.name = "adamw"        # any optax optimizer by its name (sgd, adam, adamw, lion, lamb,
                              # adafactor, contrib.muon ...), or PACKAGE.MODULE:ATTR, a factory
                              # of yours called as optax's: ATTR(learning_rate=schedule, **kw)
  c.opt.kwargs = ml_collections.ConfigDict()  # the optimizer's other keywords, replaced whole:
                              # --config.opt.kwargs="{'b2': 0.98}"; others take optax's defaults
  c.opt.lr = 1e-3             # peak learning rate
  c.opt.schedule = "cosine"   # constant | cosine | linear | wsd (warmup-stable-decay) | rsqrt
                              # (lr * sqrt(warmup_steps / step)); jaxdl/optim.py's schedule()
  c.opt.warmup_steps = 200    # steps of linear warmup from 0 (every schedule but constant)
  c.opt.end_lr_factor = 0.0   # final lr = lr * end_lr_factor (cosine, linear and wsd)
  c.opt.cooldown_fraction = 0.2  # wsd: the last fraction of the run's steps decays the lr
  c.opt.cooldown_shape = "linear"  # wsd's decay: linear | cosine | 1-sqrt (lr falls as the
                              # square root of the cooldown's elapsed fraction)
  c.opt.momentum = 0.0        # sgd momentum; 0 = plain SGD (other optimizers: opt.kwargs)
  c.opt.nesterov = False      # sgd: Nesterov momentum
  c.opt.b1 = 0.9              # adam/adamw first-moment decay (other optimizers: opt.kwargs)
  c.opt.b2 = 0.999            # adam/adamw second-moment decay
  c.opt.weight_decay = 1e-4   # the optimizer's own decay (adamw, lion, lamb: decoupled); one
                              # without (sgd, rmsprop...): L2 added to the gradient; adam: none
  c.opt.decay_mask = "no_bias_norm"  # params decayed: all | matrices (>= 2 dims) | no_bias_norm
                              # (matrices, and none named bias or scale: biases, norms)
  c.opt.grad_clip_norm = 0.0  # clip gradients to this global norm; 0 = off

  c.train = ml_collections.ConfigDict()
  c.train.skip_nonfinite = False  # True: skip (and count) updates with a non-finite loss or
                                  # gradient; False: stop the run with an error naming the step
  c.train.grad_accum_steps = 1  # k > 1: each step's batch runs as k microbatches (lax.scan),
                                # gradients summed, one update: the same step in 1/k of the
                                # activation memory; batch_size / devices must divide by k
  c.train.ema_decay = 0.0  # > 0: keep ema = d * ema + (1 - d) * params after every step and
                          # evaluate, checkpoint and predict with it (Polyak averaging); 0 = off
  c.train.ema_warmup = True  # d = min(ema_decay, (1 + step) / (10 + step)) (TensorFlow's
                             # num_updates): a short run's average is not its first, untrained
                             # params; False = ema_decay from step 0 (runs before this key)

  c.checkpoint = ml_collections.ConfigDict()  # (checkpoint_every, keep_checkpoints: above)
  c.checkpoint.keep_best = ""  # an eval metric as metrics.jsonl names it ('val_loss',
                               # 'test_accuracy'): each eval, the last step's too, is saved,
                               # and the best one's checkpoint kept beside the newest; '' = off
  c.checkpoint.best_mode = "min"  # min | max: whether a lower or a higher keep_best is better

  c.early_stopping = ml_collections.ConfigDict()
  c.early_stopping.patience = 0  # > 0: stop when checkpoint.keep_best's metric has not improved
                                 # for this many evals, and finish on the best checkpoint (needs
                                 # keep_best); 0 = off

  c.parallel = ml_collections.ConfigDict()
  c.parallel.mode = "jit"       # jit: one program on a device Mesh | pmap: jax.pmap + lax.pmean
  c.parallel.fsdp = False       # jit: shard params + optimizer state over 'data' (ZeRO-3)
  c.parallel.fsdp_min_size = 1024  # fsdp: arrays with fewer elements stay replicated
  c.parallel.mesh_shape = (-1,)  # devices per mesh axis (data, model): (-1,) = all on 'data';
                                 # (4, 2): batches split 4 ways, the transformer's heads, MLP and
                                 # vocabulary 2 ways (tensor parallelism); -1 = the rest
  c.parallel.cpu_devices = 0   # CPU backend: split this process into N CPU devices, so the batch
                                # runs data-parallel over the cores (XLA:CPU runs one op at a time
                                # on small models); 0 = JAX's default (one device)
  return c


def check_preset(preset: str | None, presets: tuple[str, ...], config_file: str) -> str:
  """The preset named after ':' in --config ('' = the default), or a ValueError listing them."""
  preset = preset or ""
  if preset not in presets:
    raise ValueError(f"unknown preset {preset!r} for {config_file}; valid: "
                     f"{', '.join(repr(p) for p in presets)}")
  return preset
