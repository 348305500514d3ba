"""What every classifier task shares: its objective, its scores and their console text, and
its predictions. image_classification and text_classification differ only in their inputs.

  objective    softmax cross-entropy of integer labels (losses.py); `augment` transforms the
               training inputs first, and `confusion` adds the confusion counts to the sums
  summarise    mean loss and accuracy; with the confusion counts, per-class and macro
               precision, recall and F1 and the matrix itself
  predictor    (inputs) -> [(label, probability)] of each input's likeliest class
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from jaxdl import losses, models

# The console text of the keys a classifier logs (see metrics.Progress).
FORMATS = {"accuracy": "acc {:.2%}", "examples_per_s": "{:,.0f} ex/s"}


def classify(variables, batch, rng, train, *, model, input_key: str, label_smoothing: float,
             augment: Callable | None = None, confusion: bool = False):
  """(loss, sums, model state) of one batch: the mean cross-entropy of its unmasked examples,
  smoothed in training; `augment(inputs, rng)` transforms the training inputs with a key of its
  own."""
  inputs = batch[input_key]
  if train and augment is not None:
    augment_rng, rng = jax.random.split(rng)
    inputs = augment(inputs, augment_rng)
  logits_BxC, model_state = models.apply(model, variables, inputs, train=train, rng=rng)
  loss, aux = losses.softmax_cross_entropy(logits_BxC, batch["label"], batch["mask"],
                                           label_smoothing if train else 0.0)
  if confusion:
    aux["confusion"] = losses.confusion_matrix(logits_BxC, batch["label"], batch["mask"])
  return loss, aux, model_state


def confusion_scores(confusion: np.ndarray) -> dict[str, Any]:
  """Per-class and macro precision/recall/F1 of a confusion matrix (rows: true class, columns:
  predicted class), and the matrix itself as integers."""
  tp = np.diag(confusion)
  # An empty denominator (no predictions or no examples of a class) scores 0, as sklearn does.
  precision = np.divide(tp, confusion.sum(0), out=np.zeros_like(tp), where=confusion.sum(0) > 0)
  recall = np.divide(tp, confusion.sum(1), out=np.zeros_like(tp), where=confusion.sum(1) > 0)
  pr = precision + recall
  f1 = np.divide(2 * precision * recall, pr, out=np.zeros_like(tp), where=pr > 0)
  return dict(precision=precision.tolist(), recall=recall.tolist(), f1=f1.tolist(),
              macro_precision=float(precision.mean()), macro_recall=float(recall.mean()),
              macro_f1=float(f1.mean()), confusion=confusion.astype(int).tolist())


def summarise(sums) -> dict[str, Any]:
  """Mean loss and accuracy over the counted examples, and the confusion's scores when the
  sums hold the confusion counts."""
  sums = losses.to_host(sums)
  out = {**losses.loss_and_count(sums),
         "accuracy": float(sums["correct"]) / max(float(sums["count"]), 1.0)}
  if "confusion" in sums:
    out.update(confusion_scores(sums["confusion"]))
  return out


def brief(split: str, m: dict[str, Any]) -> str:
  """'test accuracy 98.20% (982/1000) | test loss 0.0500', and the macro-F1 when scored."""
  text = (f"{split} accuracy {100 * m['accuracy']:.2f}% ({round(m['accuracy'] * m['count'])}/"
          f"{m['count']}) | {split} loss {m['loss']:.4f}")
  return text + (f" | {split} macro-F1 {100 * m['macro_f1']:.2f}%" if "macro_f1" in m else "")


PREDICT_BATCH = 256  # inputs per forward pass of a classifier's predictions (jaxdl.predict)


def predictor(model, variables, label_names: list[str], encode: Callable[[list], np.ndarray],
              batch_size: int = PREDICT_BATCH):
  """(inputs) -> [(label name, probability)] of each input's likeliest class: `encode` turns a
  list of inputs (sentences, image paths) into the model's array, batch_size at a time, the last
  batch padded so that every call runs one compiled shape. `variables`: {'params', **state}."""
  probs = jax.jit(lambda x: jax.nn.softmax(
      models.apply(model, variables, x, train=False)[0], -1))

  def predict(inputs: list) -> list[tuple[str, float]]:
    out = []
    for start in range(0, len(inputs), batch_size):
      chunk = inputs[start:start + batch_size]
      x = encode(chunk)
      x = np.pad(x, [(0, batch_size - len(chunk))] + [(0, 0)] * (x.ndim - 1))
      p_NxC = np.asarray(probs(x))[:len(chunk)]
      out += [(label_names[c], float(p[c])) for c, p in zip(p_NxC.argmax(-1), p_NxC)]
    return out

  return predict
