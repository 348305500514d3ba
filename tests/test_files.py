"""The workdir's files (jaxdl/files.py): atomic writes. Its gs:// side: test_gcs_workdir.py."""

import json
import os

from jaxdl import files


def test_write_json_leaves_no_temp_files(tmp_path):
  path = str(tmp_path / "config.json")
  files.write_json(path, {"b": 1, "a": [1, 2]})
  files.write_json(path, {"b": 2})
  assert json.load(open(path)) == {"b": 2}
  assert os.listdir(tmp_path) == ["config.json"]
