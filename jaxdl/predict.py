"""Label sentences with a trained text classifier: the newest checkpoint in a workdir.

  python -m jaxdl.predict --workdir=runs/sst2 "a gorgeous , witty film" "a dull mess"
  cat reviews.txt | python -m jaxdl.predict --workdir=runs/sst2

Prints one line per input: the label, its probability and the text, tab-separated. The model is
rebuilt from the workdir's config.json and vocab.json (the vocabulary the run trained with), so
nothing but the workdir is needed. A run with train.ema_decay > 0 predicts with its moving
average of the params, as its evaluations did.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("workdir", None, "the training run's directory")
_BATCH = 256  # sentences per forward pass


def _fail(message: str) -> None:
  print(f"jaxdl.predict: error: {message}", file=sys.stderr)
  sys.exit(1)


class Predictor:
  """The newest checkpoint's params with the run's model and vocabulary."""

  def __init__(self, workdir: str):
    # Imported here so that `--help` and flag errors do not wait for jax and orbax.
    import jax  # pylint: disable=g-import-not-at-top
    import ml_collections  # pylint: disable=g-import-not-at-top
    from jaxdl import checkpoint, metrics, models  # pylint: disable=g-import-not-at-top
    from jaxdl.data import text  # pylint: disable=g-import-not-at-top
    from jaxdl.errors import UserError  # pylint: disable=g-import-not-at-top

    paths = {name: os.path.join(workdir, name) for name in ("config.json", text.VOCAB_FILE)}
    for path in paths.values():
      if not os.path.isfile(path):
        raise UserError(f"{path}: not found (is --workdir a text classifier's run?)")
    config = ml_collections.ConfigDict(metrics.read_json(paths["config.json"]))
    if config.get("task") != "text_classification":
      raise UserError(f"{paths['config.json']}: task {config.get('task')!r} is not "
                      f"'text_classification'")
    with open(paths[text.VOCAB_FILE], encoding="utf-8") as f:
      self.vocab = text.Vocab.from_json(f.read(), paths[text.VOCAB_FILE])
    self.max_len = config.data.max_len
    model = models.get_model(config, vocab_size=len(self.vocab.words),
                             num_classes=self.vocab.num_classes)

    # The saved arrays as they are (no target): only the (averaged) params are used.
    params = checkpoint.latest_params(workdir, "configs/text_classifier.py")
    self._probs = jax.jit(lambda tokens: jax.nn.softmax(
        model.apply({"params": params}, tokens, train=False), -1))

  def __call__(self, texts: list[str]) -> list[tuple[str, float]]:
    """(label name, probability) of the most likely class for each text."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    out = []
    for start in range(0, len(texts), _BATCH):
      chunk = texts[start:start + _BATCH]
      tokens, _ = self.vocab.encode(chunk, self.max_len)
      tokens = np.pad(tokens, ((0, _BATCH - len(chunk)), (0, 0)))  # one compiled shape
      probs = np.asarray(self._probs(tokens))[:len(chunk)]
      out += [(self.vocab.label_names[c], float(p[c])) for c, p in zip(probs.argmax(-1), probs)]
    return out


def main(argv: list[str]) -> None:
  if not _WORKDIR.value:
    _fail("--workdir is required, e.g. --workdir=runs/sst2")
  logging.set_verbosity(logging.WARNING)
  from jaxdl.errors import UserError  # pylint: disable=g-import-not-at-top
  texts = argv[1:] or [line.rstrip("\n") for line in sys.stdin if line.strip()]
  if not texts:
    _fail("no input: give sentences as arguments or one per line on stdin")
  try:
    predictor = Predictor(_WORKDIR.value)
    for text, (label, prob) in zip(texts, predictor(texts)):
      print(f"{label}\t{prob:.4f}\t{text}")
  except UserError as e:
    _fail(str(e))


if __name__ == "__main__":
  app.run(main)
