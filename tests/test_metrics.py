"""metrics.jsonl and JSON files: appends, resume trimming, atomic writes."""

import json
import os

import numpy as np
import pytest

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


def test_summarise_matches_a_hand_computed_binary_confusion():
  # rows = true, cols = predicted: 5 TN, 2 FP, 1 FN, 4 TP.
  report = metrics.summarise({"loss_sum": 6.0, "count": 12.0, "correct": 9.0,
                               "confusion": np.array([[5, 2], [1, 4]], np.float32)})
  # class 0: precision 5/6, recall 5/7; class 1: precision 4/6, recall 4/5.
  assert report["precision"] == pytest.approx([5 / 6, 4 / 6])
  assert report["recall"] == pytest.approx([5 / 7, 4 / 5])
  f1 = [2 * (5 / 6) * (5 / 7) / (5 / 6 + 5 / 7), 2 * (4 / 6) * (4 / 5) / (4 / 6 + 4 / 5)]
  assert report["f1"] == pytest.approx(f1)
  assert report["macro_f1"] == pytest.approx(sum(f1) / 2)
  assert report["macro_precision"] == pytest.approx((5 / 6 + 4 / 6) / 2)
  assert report["confusion"] == [[5, 2], [1, 4]] and report["accuracy"] == 9 / 12


def test_summarise_three_classes_with_an_unpredicted_class():
  # Class 2 is never predicted (column of zeros) and class 1 never predicted correctly.
  confusion = np.array([[3, 1, 0], [2, 0, 0], [1, 1, 0]], np.float32)
  report = metrics.summarise({"loss_sum": 1.0, "count": 8.0, "correct": 3.0,
                               "confusion": confusion})
  assert report["precision"] == pytest.approx([3 / 6, 0.0, 0.0])
  assert report["recall"] == pytest.approx([3 / 4, 0.0, 0.0])
  assert report["f1"] == pytest.approx([2 * 0.5 * 0.75 / 1.25, 0.0, 0.0])
  assert report["macro_recall"] == pytest.approx(0.75 / 3)
  assert report["confusion"] == [[3, 1, 0], [2, 0, 0], [1, 1, 0]]
