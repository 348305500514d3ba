"""Data: the shared floor that every task's loader stands on.

  sources.py   the one source chain (data.path → prepared TFDS → fallbacks → one error)
  idx.py, tables.py, corpus.py, imagefolder.py, tfds.py, offline.py, download.py
               readers, one per format or place the data comes from
  vocab.py     word and character vocabularies (vocab.json)
  subsets.py   rows carved out of train by a fixed seed: a validation split, a smaller train set
  iterator.py  deterministic, resumable batches over in-memory arrays; evaluation batches
  windows.py   a language model's windows
  records.py, tokens.py, prepared.py
               what python -m jaxdl.prepare writes: any split as ArrayRecord shards; a language
               model's corpus as token ids; what the two share
  stream.py    record splits streamed through Grain: the same batches as iterator.py's
  augment.py   on-device augmentation
  dataset.py   `Dataset`, what a task's load() hands the loop

No file here knows a task: tasks/ choose and combine these.
"""

from jaxdl.data.dataset import Dataset, TrainIterator
from jaxdl.data.iterator import TrainBatches, eval_batches

__all__ = ["Dataset", "TrainBatches", "TrainIterator", "eval_batches"]
