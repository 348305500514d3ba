"""metrics.jsonl and JSON files: appends, resume trimming, atomic writes; summarise."""

import json
import os

import numpy as np

from jaxdl import metrics


def test_drop_after_trims_redone_steps_and_a_cut_line(tmp_path):
  writer = metrics.Writer(str(tmp_path))
  for step in (10, 20, 30):
    writer.write("train", step, {"loss": 1.0 / step})
  writer.write("final", 30, {"test_accuracy": 0.5})
  with open(writer.path, "a") as f:
    f.write('{"event": "train", "st')  # a line cut short by a kill
  writer.drop_after(20)
  events = [json.loads(line) for line in open(writer.path)]
  assert [(e["event"], e["step"]) for e in events] == [("train", 10), ("train", 20)]


def test_write_json_leaves_no_temp_files(tmp_path):
  path = str(tmp_path / "config.json")
  metrics.write_json(path, {"b": 1, "a": [1, 2]})
  metrics.write_json(path, {"b": 2})
  assert json.load(open(path)) == {"b": 2}
  assert os.listdir(tmp_path) == ["config.json"]


def test_summarise_a_classifier_with_a_confusion_matrix():
  # rows = true, cols = predicted: class 0: 3 right, 1 called 1; class 1: 2 right, 2 called 0.
  sums = {"loss_sum": 4.0, "count": 8.0, "correct": 5.0,
          "confusion": np.array([[3, 1], [2, 2]], np.float32)}
  m = metrics.summarise(sums)
  assert m["loss"] == 0.5 and m["accuracy"] == 5 / 8 and m["count"] == 8
  np.testing.assert_allclose(m["precision"], [3 / 5, 2 / 3])
  np.testing.assert_allclose(m["recall"], [3 / 4, 2 / 4])
  f1 = [2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4), 2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2)]
  np.testing.assert_allclose(m["f1"], f1)
  np.testing.assert_allclose(m["macro_f1"], sum(f1) / 2)
  assert m["confusion"] == [[3, 1], [2, 2]]


def test_summarise_a_class_never_predicted_scores_zero_not_nan():
  m = metrics.summarise({"loss_sum": 1.0, "count": 2.0, "correct": 1.0,
                         "confusion": np.array([[1, 0], [1, 0]], np.float32)})
  assert m["precision"] == [0.5, 0.0] and m["f1"][1] == 0.0


def test_summarise_a_language_model():
  m = metrics.summarise({"loss_sum": np.log(4.0) * 10, "count": 10.0})
  assert "accuracy" not in m
  np.testing.assert_allclose([m["perplexity"], m["bits_per_token"]], [4.0, 2.0])
