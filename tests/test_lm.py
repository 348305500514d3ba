"""Language-model data: text sources, vocabulary, train windows, the fixed validation windows,
and the loop on a tiny LM (exact resume, vocab.json reuse)."""

import json
import os

import jax
import numpy as np
import pytest

from conftest import interrupt_at, load_config, state_like
from jaxdl import checkpoint, models, optim, train
from jaxdl.data import corpus, sources
from jaxdl.data.vocab import CharVocab
from jaxdl.data.windows import TrainWindows, eval_windows
from jaxdl.tasks import language_model
from jaxdl.errors import UserError


def _data_cfg(**kw):
  cfg = load_config("tiny_lm").data
  for k, v in kw.items():
    cfg[k] = v
  return cfg


# --- text sources ------------------------------------------------------------------------------


def test_file_and_directory_sources(tmp_path):
  (tmp_path / "d" / "sub").mkdir(parents=True)
  (tmp_path / "d" / "b.txt").write_text("béta\n", encoding="utf-8")
  (tmp_path / "d" / "sub" / "a.txt").write_text("alpha\n", encoding="utf-8")
  (tmp_path / "d" / ".hidden").write_text("skipped", encoding="utf-8")
  text, source = language_model.load_text(_data_cfg(path=str(tmp_path / "d" / "b.txt")))
  assert text == "béta\n" and "b.txt" in source
  text, _ = language_model.load_text(_data_cfg(path=str(tmp_path / "d")))
  assert text == "béta\nalpha\n"  # sorted by relative path: 'b.txt' < 'sub/a.txt'


def test_empty_or_non_utf8_file_is_a_one_line_error(tmp_path):
  empty, binary = tmp_path / "empty.txt", tmp_path / "bin.txt"
  empty.write_bytes(b"")
  binary.write_bytes(b"ok \xff\xfe")
  with pytest.raises(UserError, match=r"empty.txt'?: no text \(empty\)"):
    corpus.read_text(str(empty))
  with pytest.raises(UserError, match=r"bin.txt: not UTF-8 text \(byte 0xff at offset 3\)"):
    corpus.read_text(str(binary))
  with pytest.raises(UserError, match="bin.txt: not UTF-8"):  # inside a directory too
    corpus.read_text(str(tmp_path))


def test_offline_fallback_is_pydoc_with_a_warning(monkeypatch):
  monkeypatch.setattr(sources, "tfds_prepared", lambda name, data_dir: False)
  warnings = []
  monkeypatch.setattr(language_model.logging, "warning", lambda msg, *a: warnings.append(msg % a))
  text, source = language_model.load_text(_data_cfg())
  assert len(text) > 100_000 and "assert" in text and "pydoc_data.topics" in source
  assert len(warnings) == 1 and "pydoc_data.topics" in warnings[0]
  assert "Tiny Shakespeare" in warnings[0] and "data.path" in warnings[0]


def test_tfds_source_joins_the_splits_without_tensorflow(monkeypatch):
  import tensorflow_datasets as tfds
  monkeypatch.setattr(sources, "tfds_prepared", lambda name, data_dir: True)  # the mock's copy
  with tfds.testing.mock_data(num_examples=1):
    text, source = language_model.load_text(_data_cfg())
    parts = [tfds.data_source("tiny_shakespeare", split=s)[0]["text"]
             for s in ("train", "validation", "test")]
  assert text == "".join(p.decode() if isinstance(p, bytes) else p for p in parts)
  assert source.startswith("TFDS tiny_shakespeare")


# --- vocabulary --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["chars", "bytes"])
def test_vocab_round_trip_and_json(tmp_path, kind):
  text = "To be, or not to be: ¿qué? 漢字\n"
  vocab = CharVocab.build(kind, text)
  ids = vocab.encode(text)
  assert ids.dtype == np.int32 and ids.min() >= 0 and ids.max() < vocab.size
  assert vocab.decode(ids) == text
  path = tmp_path / "vocab.json"
  path.write_text(vocab.to_json(), encoding="utf-8")
  again = CharVocab.from_json(path.read_text(encoding="utf-8"), str(path))
  np.testing.assert_array_equal(again.encode(text), ids)
  if kind == "chars":
    assert vocab.size == len(set(text)) and vocab.chars == "".join(sorted(set(text)))
  else:
    assert vocab.size == 256 and len(ids) == len(text.encode())


def test_unknown_characters_are_named():
  vocab = CharVocab.build("chars", "abc")
  with pytest.raises(UserError, match=r"--prompt has 2 character\(s\) not in the vocabulary: "
                                      r"'X', 'Z'"):
    vocab.encode("aXbZ", "--prompt")


# --- windows -----------------------------------------------------------------------------------


def test_train_windows_are_a_function_of_seed_and_step():
  ids = np.arange(1000, dtype=np.int32)
  a, b = TrainWindows(ids, 16, 8, seed=3), TrainWindows(ids, 16, 8, seed=3)
  batch = a.batch(5)
  for k in ("inputs", "targets", "mask"):
    np.testing.assert_array_equal(batch[k], b.batch(5)[k])  # a fresh iterator, same batch
  np.testing.assert_array_equal(a.batch(5)["inputs"], batch["inputs"])  # any order of calls
  assert batch["inputs"].shape == (8, 16) and batch["mask"].tolist() == [1.0] * 8
  np.testing.assert_array_equal(batch["targets"], batch["inputs"] + 1)  # shifted by one
  assert not np.array_equal(a.batch(6)["inputs"], batch["inputs"])
  assert not np.array_equal(TrainWindows(ids, 16, 8, seed=4).batch(5)["inputs"],
                         batch["inputs"])
  starts = np.concatenate([a.batch(s)["inputs"][:, 0] for s in range(200)])
  assert starts.min() >= 0 and starts.max() <= 1000 - 17 and starts.max() > 900  # whole range


def test_train_windows_split_the_global_batch_over_processes():
  ids = np.arange(500, dtype=np.int32)
  whole = TrainWindows(ids, 8, 6, seed=0).batch(2)["inputs"]
  parts = [TrainWindows(ids, 8, 6, seed=0, process_index=i, process_count=3).batch(2)
           for i in range(3)]
  np.testing.assert_array_equal(np.concatenate([p["inputs"] for p in parts]), whole)


def test_train_windows_position_check_and_too_short_text():
  windows = TrainWindows(np.arange(100, dtype=np.int32), 16, 4, seed=0)
  windows.check_position(7, windows.position(7))
  with pytest.raises(UserError, match="does not match"):
    TrainWindows(np.arange(100, dtype=np.int32), 8, 4, seed=0).check_position(
        7, windows.position(7))
  with pytest.raises(UserError, match="has 16 tokens; model.block_size=16 needs at least 17"):
    TrainWindows(np.arange(16, dtype=np.int32), 16, 4, seed=0)


def test_eval_windows_are_fixed_and_non_overlapping():
  ids = np.arange(100, dtype=np.int32)
  w = {k: np.asarray(v) for k, v in eval_windows(ids, 16).items()}  # rows read when asked
  assert w["inputs"].shape == (6, 16)  # (100 - 1) // 16 windows; the tail is left out
  np.testing.assert_array_equal(w["inputs"][:, 0], np.arange(6) * 16)
  np.testing.assert_array_equal(w["targets"], w["inputs"] + 1)
  sub = {k: np.asarray(v) for k, v in eval_windows(ids, 16, max_windows=3).items()}
  np.testing.assert_array_equal(sub["inputs"][:, 0], [0, 32, 80])  # evenly spaced, ends kept
  np.testing.assert_array_equal(eval_windows(ids, 16, max_windows=3)["inputs"],
                                sub["inputs"])  # the same windows every time
  with pytest.raises(UserError, match="validation text has 10 tokens"):
    eval_windows(ids[:10], 16)


def test_dataset_split_and_vocab_file(tiny_lm, tmp_path):
  text = open(tiny_lm.data.path, encoding="utf-8").read()
  ds = language_model.load(tiny_lm, str(tmp_path / "w"))
  cut = int(len(text) * 0.9)
  vocab = json.loads(ds.files["vocab.json"])
  assert vocab == {"kind": "chars", "chars": "".join(sorted(set(text)))}
  assert ds.model_info == {"vocab_size": len(vocab["chars"])}
  val = ds.evals["val"]
  assert val["inputs"].shape == (40, 16) and ds.eval_split == "val"
  decoded = "".join(vocab["chars"][i] for i in val["inputs"][0])
  assert decoded == text[cut:cut + 16]  # validation = the last 10%, from its first character
  assert ds.train.size == cut - 16


def test_an_existing_vocab_file_is_used_and_checked(tiny_lm, tmp_path):
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "vocab.json").write_text(json.dumps({"kind": "chars", "chars": "abc"}))
  with pytest.raises(UserError, match=r"the text .* not in the vocabulary"):
    language_model.load(tiny_lm, str(workdir))
  tiny_lm.data.vocab = "bytes"
  with pytest.raises(UserError, match="data.vocab='bytes' but .*vocab.json is a 'chars'"):
    language_model.load(tiny_lm, str(workdir))


# --- the loop on a tiny LM ---------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_lm_trains_and_resumes_exactly(trained_tiny_lm, tmp_path, monkeypatch):
  config, full, expected = trained_tiny_lm
  assert expected["val_count"] == 40 * 16
  assert expected["val_perplexity"] == pytest.approx(np.exp(expected["val_loss"]))
  assert expected["val_bits_per_token"] == pytest.approx(expected["val_loss"] / np.log(2))
  assert expected["val_loss"] < 3.0  # learning: a uniform guess over ~35 characters is 3.56

  resumed = str(tmp_path / "resumed")
  # Ctrl-C at step 19: the newest checkpoint is step 16.
  interrupt_at(config, resumed, monkeypatch, at_step=19, where=(TrainWindows, "batch"))
  vocab_text = open(os.path.join(resumed, "vocab.json"), encoding="utf-8").read()
  assert train.train_and_evaluate(config, resumed) == expected
  assert open(os.path.join(resumed, "vocab.json"), encoding="utf-8").read() == vocab_text
  vocab_size = len(json.loads(vocab_text)["chars"])
  like = state_like(models.get(config.model, vocab_size=vocab_size), optim.make(config.opt, 24),
                    np.zeros((1, 16), np.int32))
  states = []
  for workdir in (full, resumed):
    with checkpoint.Checkpoints(workdir, 3) as ckpts:
      states.append(ckpts.restore_latest(like)[0])
  for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
    np.testing.assert_array_equal(a, b)  # bitwise


@pytest.mark.slow
def test_the_gpt2_small_preset_is_gpt2_smalls_body_and_trains_at_toy_sizes(tmp_path):
  """configs/tiny_lm.py:gpt2_small: 12 x 768, 12 heads, block 1024 over bytes, 86,039,040
  params (shapes only); then the same preset at toy sizes, with every lever on (scanned blocks,
  block remat, 2 microbatches, bfloat16 compute), trains 4 steps on CPU, params still float32."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  config = load_config("tiny_lm", "gpt2_small")
  model = models.get(config.model, vocab_size=256)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1024),
                                                                              jnp.int32),
                                             train=False)["params"])
  assert sum(x.size for x in jax.tree.leaves(nn.unbox(shapes))) == 86_039_040
  assert (config.data.vocab, config.model.positions, config.model.dtype,
          config.model.scan_layers) == ("bytes", "learned", "auto", True)

  from conftest import set_keys, write_play  # pylint: disable=g-import-not-at-top
  text = str(tmp_path / "play.txt")
  write_play(text)
  set_keys(config, {"data.path": text, "model.num_layers": 2, "model.num_heads": 2,
                    "model.width": 32, "model.block_size": 16, "batch_size": 4,
                    "eval_batch_size": 4, "data.eval_windows": 8, "num_train_steps": 4,
                    "log_every": 2, "eval_every": 1000, "checkpoint_every": 1000,
                    "model.remat": "block", "train.grad_accum_steps": 2,
                    "model.dtype": "bfloat16"})
  final = train.train_and_evaluate(config, str(tmp_path / "w"))
  assert np.isfinite(final["val_loss"]) and final["val_loss"] < np.log(256) + 0.5
  toy = models.get(config.model, vocab_size=256)
  tokens = jnp.zeros((2, 16), jnp.int32)
  params = jax.eval_shape(lambda: toy.init(jax.random.PRNGKey(0), tokens, train=False)["params"])
  assert {x.dtype for x in jax.tree.leaves(nn.unbox(params))} == {jnp.dtype("float32")}
  assert jax.eval_shape(lambda p: toy.apply({"params": p}, tokens, train=False),
                        nn.unbox(params)).dtype == jnp.float32
