"""Losses against values computed by hand."""

import math

import jax.numpy as jnp
import numpy as np

from jaxdl import losses


def test_cross_entropy_by_hand():
  logits = jnp.array([[0.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
  labels = jnp.array([0, 0, 0])
  mask = jnp.array([1.0, 1.0, 0.0])  # the third example is padding
  loss, aux = losses.softmax_cross_entropy(logits, labels, mask)
  # example 1: -log(1/2); example 2: -log(e^2 / (e^2 + 1)); example 3 masked out.
  expected = [math.log(2), math.log1p(math.exp(-2))]
  np.testing.assert_allclose(loss, sum(expected) / 2, rtol=1e-6)
  np.testing.assert_allclose(aux["loss_sum"], sum(expected), rtol=1e-6)
  assert float(aux["count"]) == 2
  assert float(aux["correct"]) == 2  # argmax breaks example 1's tie towards class 0


def test_accuracy_counts_only_unmasked():
  logits = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
  labels = jnp.array([0, 0, 1, 0])
  mask = jnp.array([1.0, 1.0, 1.0, 0.0])
  _, aux = losses.softmax_cross_entropy(logits, labels, mask)
  assert float(aux["correct"]) == 1 and float(aux["count"]) == 3


def test_label_smoothing_by_hand():
  logits = jnp.array([[math.log(3.0), 0.0]])  # probabilities 3/4, 1/4
  loss, _ = losses.softmax_cross_entropy(logits, jnp.array([0]), jnp.array([1.0]),
                                         label_smoothing=0.2)
  # targets (0.9, 0.1): -(0.9 log 3/4 + 0.1 log 1/4)
  np.testing.assert_allclose(loss, -(0.9 * math.log(0.75) + 0.1 * math.log(0.25)), rtol=1e-6)


def test_all_masked_batch_is_zero_not_nan():
  loss, aux = losses.softmax_cross_entropy(jnp.ones((2, 3)), jnp.array([0, 1]), jnp.zeros(2))
  assert float(loss) == 0.0 and float(aux["count"]) == 0
