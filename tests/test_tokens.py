"""A language model's corpus prepared as token ids on disk (jaxdl/data/tokens.py, python -m
jaxdl.prepare): the ids are the in-memory path's, a run on them logs the same numbers, a failed
prepare leaves nothing that looks complete, and a changed, truncated or mismatched corpus is
one line naming the file."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, interrupt_at, read_events, tiny_lm_config
from jaxdl import train
from jaxdl.data import tokens
from jaxdl.data.vocab import CharVocab
from jaxdl.data.windows import TrainWindows
from jaxdl.errors import UserError
from jaxdl.tasks import language_model

TEXT = "ROMEO:\r\nBut soft, what light — through yonder window breaks?\n\nJULIET: Ay me. é\n" * 40


def _corpus(tmp_path, text=TEXT):
  path = tmp_path / "corpus.txt"
  path.write_bytes(text.encode("utf-8"))
  return str(path)


@pytest.mark.parametrize("kind", ["chars", "bytes"])
def test_prepared_ids_are_the_in_memory_ones(tmp_path, monkeypatch, kind):
  """Read in chunks smaller than the text (the writer streams), the ids and the split's cut are
  what language_model.load encodes from the whole text; \\r\\n kept as it is."""
  monkeypatch.setattr(tokens, "CHUNK_CHARS", 37)
  path = _corpus(tmp_path)
  meta = tokens.prepare(path, str(tmp_path / "out"), kind, 0.1)
  _, vocab, ids = tokens.read(str(tmp_path / "out"), kind)
  train_text, val_text = language_model.split_text(TEXT, 0.1)
  want = CharVocab.build(kind, TEXT)
  assert vocab.to_json() == want.to_json()
  np.testing.assert_array_equal(np.asarray(ids["train"]), want.encode(train_text))
  np.testing.assert_array_equal(np.asarray(ids["val"]), want.encode(val_text))
  assert ids["train"].dtype == np.uint16 and isinstance(ids["train"], tokens.TokenFile)
  np.testing.assert_array_equal(ids["train"].windows(np.array([5, 0]), 3),
                                want.encode(train_text[5:8] + train_text[:3]).reshape(2, 3))
  assert meta["characters"] == len(TEXT) and "\r" in vocab.chars or kind == "bytes"


def test_a_run_on_the_prepared_corpus_logs_what_the_text_run_logs(trained_tiny_lm, tmp_path,
                                                                   monkeypatch):
  """Interrupted at step 19 and resumed, too: the events of the uninterrupted text run."""
  config, workdir, _ = trained_tiny_lm
  prepared = str(tmp_path / "prepared")
  tokens.prepare(config.data.path, prepared, config.data.vocab, config.data.val_fraction)
  config = config.copy_and_resolve_references()
  config.data.path = prepared
  run = str(tmp_path / "run")
  interrupt_at(config, run, monkeypatch, at_step=19, where=(TrainWindows, "batch"))
  train.train_and_evaluate(config, run)
  assert read_events(run) == read_events(workdir)


def test_a_failed_prepare_leaves_no_directory(tmp_path, monkeypatch):
  """An error mid-write (here the second chunk's encoding) removes the partial directory; a
  kill leaves only DIR.tmp-<pid>, with no jaxdl-tokens.json, never DIR."""
  monkeypatch.setattr(tokens, "CHUNK_CHARS", 100)
  calls = []
  encode = CharVocab.encode

  def failing(self, text, what="the text"):
    calls.append(1)
    if len(calls) == 2:
      raise OSError(28, "No space left on device")
    return encode(self, text, what)

  monkeypatch.setattr(CharVocab, "encode", failing)
  with pytest.raises(OSError, match="No space left"):
    tokens.prepare(_corpus(tmp_path), str(tmp_path / "out"), "chars", 0.1)
  assert sorted(os.listdir(tmp_path)) == ["corpus.txt"]


@pytest.fixture
def prepared(tmp_path):
  out = str(tmp_path / "out")
  tokens.prepare(_corpus(tmp_path), out, "chars", 0.1)
  return out


@pytest.mark.parametrize("damage, message", [
    (lambda d: os.remove(f"{d}/val.bin"), r"val.bin: missing \(jaxdl-tokens.json lists it\)"),
    (lambda d: open(f"{d}/train.bin", "r+b").truncate(100),
     r"train.bin: 100 bytes, but jaxdl-tokens.json says [\d,]+: truncated"),
    (lambda d: open(f"{d}/train.bin", "r+b").write(b"\xff\xff"),
     r"train.bin: its sha256 differs from the one in jaxdl-tokens.json"),
    (lambda d: open(f"{d}/jaxdl-tokens.json", "w").write("{"),
     r"jaxdl-tokens.json: not a prepared corpus of jaxdl.prepare"),
])
def test_a_damaged_prepared_corpus_is_one_line_naming_the_file(prepared, damage, message):
  damage(prepared)
  with pytest.raises(UserError, match=message) as error:
    tokens.read(prepared, "chars")
  assert "\n" not in str(error.value)


def test_a_config_that_does_not_fit_the_prepared_corpus_is_one_line(prepared, tmp_path):
  config = tiny_lm_config(str(tmp_path / "play.txt"))
  config.data.path = prepared
  for key, value, message in (
      ("val_fraction", 0.2, r"config.data.val_fraction=0.2 but .* was prepared with 0.1"),
      ("vocab", "bytes", r"config.data.vocab='bytes' but .* was prepared with 'chars'")):
    changed = config.copy_and_resolve_references()
    changed.data[key] = value
    with pytest.raises(UserError, match=message):
      train.train_and_evaluate(changed, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")


def test_resuming_on_a_corpus_prepared_again_from_other_text_is_one_line(tmp_path):
  """The checkpoint's data position holds the train file's sha256: the same token count from
  another text is refused, not trained on at a silently shifted position."""
  config = tiny_lm_config(str(tmp_path / "play.txt"))
  out = str(tmp_path / "prepared")
  tokens.prepare(config.data.path, out, "chars", config.data.val_fraction)
  config.data.path, config.num_train_steps = out, 8
  train.train_and_evaluate(config, str(tmp_path / "w"))
  text = open(tmp_path / "play.txt").read()
  os.rename(out, str(tmp_path / "old"))
  tokens.prepare(_corpus(tmp_path, text[::-1]), out, "chars", config.data.val_fraction)
  config.num_train_steps = 16
  with pytest.raises(UserError, match=r"the checkpoint's data position .*'train_sha256'"):
    train.train_and_evaluate(config, str(tmp_path / "w"))


@pytest.mark.slow
def test_prepare_on_the_command_line(tmp_path):
  out = str(tmp_path / "out")
  cmd = [sys.executable, "-m", "jaxdl.prepare", f"--config={REPO}/configs/tiny_lm.py",
         f"--config.data.path={_corpus(tmp_path)}", f"--out={out}"]
  done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  assert done.stdout.startswith(f"wrote {out}: train ") and tokens.is_prepared(out)
  with open(os.path.join(out, tokens.TOKENS_FILE)) as f:
    assert json.load(f)["splits"]["train"]["dtype"] == "uint16"
  again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert again.returncode == 1 and again.stderr == \
      f"jaxdl: error: --out={out}: already exists (prepare writes a new directory)\n"
  other = subprocess.run([*cmd[:3], f"--config={REPO}/experiments/custom/diabetes.py",
                          f"--out={out}2"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert other.returncode == 1 and "has no record_splits(config)" in other.stderr


def test_each_process_reads_only_its_rows_of_a_global_batch(prepared):
  """Windows read by 2 processes (process_index 0 and 1 of 2) are the halves of what one
  process reads, and each process reads only its half: one pread per window of its own."""
  _, _, ids = tokens.read(prepared, "chars")
  reads = []

  class Counting(tokens.TokenFile):
    def windows(self, starts, length):
      reads.append(len(starts))
      return super().windows(starts, length)

  counting = Counting(ids["train"].path, ids["train"].dtype, len(ids["train"]))
  whole = TrainWindows(counting, 16, 8, seed=3).batch(5)
  halves = [TrainWindows(counting, 16, 8, seed=3, process_index=i, process_count=2).batch(5)
            for i in range(2)]
  assert reads == [8, 4, 4]
  for key in ("inputs", "targets"):
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])
