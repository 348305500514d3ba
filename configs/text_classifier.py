"""Sentence classification from scratch (SST-2 by default), trained by jaxdl's shared loop.

  python -m jaxdl.main --config=configs/text_classifier.py --workdir=runs/sst2 \
      --config.data.path=../shared/data/sst2
  python -m jaxdl.predict --workdir=runs/sst2 "a gorgeous , witty , seductive movie ."

One preset (the default): a bi-LSTM over word embeddings, attention pooling, an MLP head, SGD
with momentum and a weight average (train.ema_decay). The recipe, its results and what was
tried: experiments/text_classifier/README.md.

Data: data.path (a directory of train/dev[/test] .tsv, .csv or .jsonl files), else a prepared
TFDS copy of data.name (glue/sst2, imdb_reviews, ...); offline with neither, it stops with the
list of ways to provide the data. Words: lower-cased words and punctuation marks, the
vocabulary from the training split (unseen words take their longest known prefix,
data.prefix_backoff), saved as WORKDIR/vocab.json and reused on resume and by jaxdl.predict.
"""

import ml_collections

from jaxdl.configs import common

PRESETS = ("",)


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  """The SST-2 text-classification experiment; `preset` is the text after ':' in --config."""
  common.check_preset(preset, PRESETS, "configs/text_classifier.py")
  c = common.get_config()     # seed, cadence, opt, train, parallel: configs/common.py
  c.task = "text_classification"  # jaxdl/tasks/text_classification.py
  c.eval_batch_size = 256
  c.num_epochs = 12           # (8: -0.3 dev, -0.7 test; README)
  c.min_train_steps = 4000    # a small training split gets more epochs: SGD here needs ~500
                              # steps to leave chance and a few thousand to learn (README's
                              # learning curve); full SST-2's 12 epochs are 12,636 steps
  c.log_every = 200

  c.model = ml_collections.ConfigDict()
  c.model.name = "text_lstm"  # text_lstm (bi-LSTM) | text_cnn (1-D CNN) | text_transformer
                              # (jaxdl/models/text.py), or PACKAGE.MODULE:ATTR for your own
  c.model.embed_dim = 128     # word embedding width
  c.model.hidden_dim = 128    # LSTM units per direction | CNN filters per width | model width
  c.model.num_layers = 2      # text_transformer: encoder blocks (the others have one layer)
  c.model.num_heads = 4       # text_transformer: attention heads
  c.model.kernel_sizes = (3, 4, 5)  # text_cnn: filter widths (one bank of hidden_dim each)
  c.model.pool = "attention"  # text_lstm: max_mean (masked max and mean of the outputs) |
                              # attention (a learned weighted average of them)
  c.model.head_dim = 128      # hidden layer width of the classifier head; 0 = linear head
  c.model.dropout = 0.5       # dropout on the pooled sentence vector (and in transformer blocks)
  c.model.embed_dropout = 0.5  # dropout on embedding units
  c.model.word_dropout = 0.1  # probability a training token is replaced by the OOV id
  c.model.dtype = "auto"      # compute dtype: float32 | bfloat16 | auto = bfloat16 on GPU and
                              # TPU, float32 on CPU (logits, softmax and losses stay float32)
  c.model.param_dtype = "float32"  # params' (and optimizer state's) dtype: float32 | bfloat16

  c.data = ml_collections.ConfigDict()
  c.data.source = "auto"      # auto (data.path if set, else TFDS) | files | tfds
  c.data.name = "glue/sst2"   # TFDS name when data.path is empty (imdb_reviews works too)
  c.data.path = ""            # directory of train/dev[/test] .tsv | .csv | .jsonl files
  c.data.tfds_dir = ""        # TFDS data_dir holding a prepared copy; '' = TFDS's default
  c.data.train_size = 0.0     # train on a random subset of the training split (by a fixed
                              # seed): a fraction in (0, 1) or a count >= 1; 0 = all of it
  c.data.validation_size = 0.0  # > 0: 'val' carved out of train likewise, evaluated during
                              # training instead of dev (for data with no dev split)
  c.data.num_classes = 0      # classes; 0 = 1 + the largest train label (every class below it
                              # must then have a train example: a stray label is an error)
  c.data.max_len = 64         # tokens kept per text; longer ones are truncated (and counted)
  c.data.min_count = 1        # train-split count a word needs to get its own id (else OOV)
  c.data.max_vocab = 0        # cap on vocabulary size incl. <pad>/<oov>; 0 = no cap
  c.data.prefix_backoff = 4   # an unseen word takes the id of its longest known prefix of >= this
                              # many characters ("dizzying" → "dizzy"); 0 = unseen words are OOV
  c.data.bucket = 8           # train batches are cut to a multiple of this; 0 = always max_len
  c.data.sort_pool = 50       # batches per pool sorted by length (similar lengths batch together)
  c.data.streaming = "auto"   # auto | on | off: a record directory (python -m jaxdl.prepare)
                              # is read from disk as training goes (auto, on) or loaded whole
                              # (off); other sources are loaded whole ('on' refuses them), and
                              # under auto a data.path over memory_budget_gb is refused
  c.data.memory_budget_gb = 8.0  # auto: the largest data.path loaded whole into memory
  c.data.workers = 0          # streaming: Grain worker processes reading ahead; 0 = a thread
  c.data.prefetch = 4         # streaming: blocks of 8 steps read ahead (per worker)

  c.opt.name = "sgd"          # SGD beat AdamW here (README)
  c.opt.lr = 0.1
  c.opt.momentum = 0.9
  c.opt.weight_decay = 3e-6
  c.opt.grad_clip_norm = 1.0
  c.opt.decay_mask = "all"   # as measured (README): the default before no_bias_norm

  c.loss = ml_collections.ConfigDict()
  c.loss.label_smoothing = 0.0  # cross-entropy label smoothing

  c.train.ema_decay = 0.999   # about the last 1,000 steps (~1 epoch) count

  c.lock()  # unknown keys are errors, from the command line and from code alike
  return c
