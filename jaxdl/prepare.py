"""Entry point: python -m jaxdl.prepare --config=CONFIG [--config.data.*=...] --out=DIR.

Reads what the config's data block reads and writes it to DIR in a form that trains from disk:
`--config.data.path=DIR` then trains on it, with the same numbers as from the original data.

  - a language model's text corpus (data.path, a UTF-8 file or a directory of them): flat arrays
    of token ids, read by offset (jaxdl/data/tokens.py);
  - a task with `record_splits(config)`: each split as ArrayRecord shards, streamed through
    Grain when trained on (jaxdl/data/records.py, jaxdl/data/stream.py). Image classification
    (IDX files, image folders, a TFDS copy, a download, the offline sample) reads its source a
    chunk at a time; text classification (tables, a TFDS copy) encodes its texts as a run does,
    reading them a chunk at a time as it encodes them (data/tables.TextRows).
The writers write into DIR.tmp-<pid>, renamed to DIR at the end: a killed prepare leaves no
DIR. A task without record_splits is one line.
"""

from __future__ import annotations

import os

from absl import app, flags, logging

from jaxdl import errors
from jaxdl import main as cli  # the --config flag and its one-line parsing
from jaxdl.errors import UserError

_OUT = flags.DEFINE_string("out", None, "the directory to write (it must not exist)")


def parse_flags(argv: list[str]) -> list[str]:
  rest = cli.parse_config_flags(argv)
  if not _OUT.value:
    errors.fail("--out is required, e.g. --out=data/shakespeare-tokens")
  return rest


def prepare(config, out: str) -> str:
  """Writes config's data to `out`; returns the line that says what was written."""
  from jaxdl import initfrom, tasks  # pylint: disable=g-import-not-at-top  (after the flags)
  from jaxdl.data import prepared, records, tokens  # pylint: disable=g-import-not-at-top
  from jaxdl.data.vocab import VOCAB_FILE, CharVocab  # pylint: disable=g-import-not-at-top
  task = tasks.get(config.task)
  if config.task != "language_model":
    if not hasattr(task, "record_splits"):
      raise UserError(f"config.task={config.task!r} has no record_splits(config): jaxdl.prepare "
                      f"writes the data of tasks that have one (the image and text classifiers) "
                      f"and language-model corpora")
    task.check(config)
    prepared.check_out(out)
    splits, info, source = task.record_splits(config)
    meta = records.write(out, config.task, source, splits, info)
    counts = ", ".join(f"{split} {entry['count']:,}" for split, entry in meta["splits"].items())
    shards = sum(len(entry["shards"]) for entry in meta["splits"].values())
    return (f"wrote {out}: {counts} examples in {shards} shards, from {source}; train on it "
            f"with --config.data.path={out}")
  task.check(config)
  path = os.path.expanduser(config.data.path)
  if not path:
    raise UserError("config.data.path is required: the text file or directory to prepare")
  if tokens.is_prepared(path):
    raise UserError(f"config.data.path={path!r} is a prepared corpus already")
  initial = initfrom.task_file(config, VOCAB_FILE)  # encode with init_from's vocabulary
  vocab = None if initial is None else CharVocab.from_json(initial, config.init_from)
  meta = tokens.prepare(path, out, config.data.vocab, config.data.val_fraction, vocab)
  split = meta["splits"]
  return (f"wrote {out}: train {split['train']['tokens']:,} and val {split['val']['tokens']:,} "
          f"tokens ({split['train']['dtype']}), vocabulary {len(meta['vocab']['chars']) or 256}; "
          f"train on it with --config.data.path={out}")


def main(argv: list[str]) -> None:
  with errors.reported():
    if len(argv) > 1:
      raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    print(prepare(cli.config(), _OUT.value))


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  app.run(main, flags_parser=parse_flags)
