"""metrics.jsonl and JSON files: appends, resume trimming, atomic writes."""

import json
import os

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
