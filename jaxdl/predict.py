"""Label inputs with a trained classifier: a checkpoint of a workdir (the newest by default).

  python -m jaxdl.predict --workdir=runs/sst2 "a gorgeous , witty film" "a dull mess"
  cat reviews.txt | python -m jaxdl.predict --workdir=runs/sst2
  python -m jaxdl.predict --workdir=runs/mnist digit.png cat.jpg     # an image run: file paths
  python -m jaxdl.predict --workdir=runs/mnist --which=best digit.png  # checkpoint.keep_best's

Prints one line per input: the label, its probability and the input, tab-separated. The run's
task says what an input is (its `predictor`: sentences for the text classifier, image files
for the image classifier). This is `jaxdl.load(workdir).predict(inputs)` (jaxdl/runs.py): the
model is rebuilt from the workdir's files, so nothing but the workdir is needed, and a run with
train.ema_decay > 0 predicts with its moving average of the params, as its evaluations did.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from jaxdl import errors

# The flags exist only when this file runs as a program, so that `predictor` can be imported
# beside jaxdl.sample (each defining --workdir would be absl's DuplicateFlagError).
if __name__ == "__main__":
  _WORKDIR = flags.DEFINE_string("workdir", None, "the training run's directory")
  _WHICH = flags.DEFINE_string("which", "latest", "the checkpoint: latest (the newest intact), "
                               "best (checkpoint.keep_best's) or a step number")


def predictor(workdir: str, which: str | int = "latest"):
  """The run's task.predictor over its model and a checkpoint's (averaged) params."""
  # Imported here so that `--help` and flag errors do not wait for jax and orbax.
  from jaxdl import runs, tasks  # pylint: disable=g-import-not-at-top

  # The task is asked first: a run without a predictor is one line before any checkpoint read.
  tasks.of_run(workdir, "predictor",
               "jaxdl.predict labels images or sentences with a classifier's run")
  return runs.load(workdir, which).predict


def main(argv: list[str]) -> None:
  with errors.reported():
    if not _WORKDIR.value:
      raise errors.UserError("--workdir is required, e.g. --workdir=runs/sst2")
    logging.set_verbosity(logging.WARNING)
    texts = argv[1:] or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
      raise errors.UserError("no input: give inputs (sentences, image files) as arguments or one "
                             "per line on stdin")
    predict = predictor(_WORKDIR.value, _WHICH.value)
    for text, (label, prob) in zip(texts, predict(texts)):
      print(f"{label}\t{prob:.4f}\t{text}")


if __name__ == "__main__":
  app.run(main, flags_parser=errors.parse_absl_flags)
