"""Text sources: TSV/CSV/JSONL readers and their one-line errors, TFDS, the vocabulary."""

import json
import os

import numpy as np
import pytest

from jaxdl.data import tables, vocab as vocabs
from jaxdl.errors import UserError


def _write(path, content, mode="w"):
  with open(path, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
    f.write(content)
  return str(path)


def test_tsv_reads_glue_format_including_sst2_carriage_returns(tmp_path):
  # SST-2's real train.tsv has a bare '\r' before every tab; it must not split the row.
  path = _write(tmp_path / "train.tsv", "sentence\tlabel\na fine film \r\t1\nbad\r\t0\n\n")
  split = tables.read_file(path)
  assert split.texts == ["a fine film", "bad"] and split.labels.tolist() == [1, 0]


def test_csv_and_jsonl_read_text_or_sentence(tmp_path):
  csv_path = _write(tmp_path / "a.csv", 'label,text\n2,"hello, world"\n0,"a ""quoted"" one"\n')
  split = tables.read_file(csv_path)
  assert split.texts == ["hello, world", 'a "quoted" one'] and split.labels.tolist() == [2, 0]
  jsonl_path = _write(tmp_path / "a.jsonl",
                      '{"sentence": "x y", "label": 1}\n\n{"sentence": "z", "label": "0"}\n')
  split = tables.read_file(jsonl_path)
  assert split.texts == ["x y", "z"] and split.labels.tolist() == [1, 0]


def test_a_split_without_labels_is_unlabelled(tmp_path):
  split = tables.read_file(_write(tmp_path / "test.tsv", "index\tsentence\n0\tok\n1\tfine\n"))
  assert split.texts == ["ok", "fine"] and split.labels is None
  assert tables.read_file(_write(tmp_path / "t.jsonl", '{"text": "a"}\n')).labels is None


@pytest.mark.parametrize("name,content,message", [
    ("train.tsv", "sentence\tlabel\ngood\t1\nno tab here\n", r"train\.tsv:3: 1 fields"),
    ("train.tsv", "sentence\tlabel\ngood\t1\nbad\tneg\n",
     r"train\.tsv:3: label 'neg' is not an integer"),
    ("train.tsv", "words\tlabel\ngood\t1\n", r"train\.tsv:1: no 'sentence' or 'text' column"),
    ("train.tsv", "sentence\tlabel\ngood\t-3\n", r"train\.tsv:2: label -3 is negative"),
    ("train.csv", 'text,label\n"a",1\n"b",1.5\n',
     r"train\.csv:3: label '1\.5' is not an integer"),
    ("train.csv", 'text,label\n"a",1\n"b"\n', r"train\.csv:3: 1 fields"),
    ("train.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n',
     r"train\.jsonl:2: no 'label' field"),
    ("train.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": "x"}\n',
     r"train\.jsonl:2: label 'x' is not an integer"),
    ("train.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": true}\n',
     r"train\.jsonl:2: label True is not an integer"),
    ("train.jsonl", '{"text": "a", "label": 1}\n[1, 2]\n', r"train\.jsonl:2: not a JSON object"),
    ("train.jsonl", '{"label": 1}\n', r"train\.jsonl:1: no string 'sentence' or 'text' field"),
    ("train.tsv", "", r"train\.tsv: the file is empty"),
    ("train.tsv", "  \n\n", r"train\.tsv: the file is empty"),
])
def test_bad_rows_name_the_file_and_line(tmp_path, name, content, message):
  path = _write(tmp_path / name, content)
  with pytest.raises(UserError, match=message) as info:
    tables.read_file(path)
  assert "\n" not in str(info.value)


def test_non_utf8_is_one_line(tmp_path):
  path = _write(tmp_path / "train.tsv", b"sentence\tlabel\ncr\xe8me\t1\n", "wb")
  with pytest.raises(UserError, match=r"train\.tsv: not UTF-8 text \(byte 0xe8 at offset 17\)"):
    tables.read_file(path)


def test_load_dir_finds_splits_and_rejects_ambiguity(tmp_path):
  _write(tmp_path / "train.jsonl", '{"text": "a", "label": 0}\n')
  _write(tmp_path / "validation.csv", "text,label\nb,1\n")
  splits = tables.load_dir(str(tmp_path))
  assert sorted(splits) == ["dev", "train"] and splits["dev"].texts == ["b"]
  _write(tmp_path / "dev.tsv", "sentence\tlabel\nc\t1\n")
  with pytest.raises(UserError, match="several dev files"):
    tables.load_dir(str(tmp_path))
  os.remove(tmp_path / "train.jsonl")
  with pytest.raises(UserError, match="no train.tsv, train.csv or train.jsonl"):
    tables.load_dir(str(tmp_path))


def test_tokenize_lowercases_and_splits_punctuation():
  assert vocabs.tokenize("It 's a Crème-brûlée, isn't it?!") == [
      "it", "'s", "a", "crème", "-", "brûlée", ",", "isn't", "it", "?", "!"]
  assert vocabs.tokenize("a -LRB- good -rrb- film") == ["a", "(", "good", ")", "film"]


def test_vocab_round_trip_and_encoding():
  texts = ["the film is good", "the film is bad", "The end ."]
  vocab = vocabs.build_vocab(texts, np.array([1, 0, 2]), min_count=2, max_size=0,
                             label_names=[])
  # 'the' x3, then 'film' and 'is' x2 (ties by word); singletons are OOV.
  assert vocab.words == ["<pad>", "<oov>", "the", "film", "is"]
  assert vocab.num_classes == 3 and vocab.label_names == ["0", "1", "2"]
  again = vocabs.WordVocab.from_json(vocab.to_json(), "vocab.json")
  assert again.words == vocab.words and again.label_names == vocab.label_names
  assert again.index == vocab.index and again.min_count == 2
  tokens, counts = again.encode(["the film is great fun", "great", ""], max_len=4)
  assert tokens.tolist() == [[2, 3, 4, 1], [1, 0, 0, 0], [0, 0, 0, 0]]
  assert counts == {"truncated": 1, "tokens": 6, "unseen": 3, "backed_off": 0}
  capped = vocabs.build_vocab(texts, np.array([1, 0, 1]), 1, max_size=3, label_names=["n", "p"])
  assert capped.words == ["<pad>", "<oov>", "the"] and capped.label_names == ["n", "p"]


def test_prefix_backoff_gives_unseen_words_their_longest_known_prefix():
  texts = ["a dizzy film", "a wretched film", "films"]
  vocab = vocabs.build_vocab(texts, np.array([0, 0, 1]), 1, 0, [], prefix_backoff=4)
  again = vocabs.WordVocab.from_json(vocab.to_json(), "vocab.json")
  assert again.prefix_backoff == 4
  ids = [again.index[w] for w in ("dizzy", "wretched", "films", "film")]
  # 'films' (seen) keeps its own id; 'filmic' backs off to 'film' (4 chars is enough); 'dizz'
  # and 'wre' are unseen and too short to back off; 'a' stays itself.
  tokens, counts = again.encode(["dizzying wretchedness films filmic dizz wre a"], max_len=8)
  assert tokens[0].tolist() == ids + [1, 1, again.index["a"], 0]
  assert counts == {"truncated": 0, "tokens": 7, "unseen": 5, "backed_off": 3}
  # Off (and in vocab.json files from before the option): every unseen word is OOV.
  old = json.loads(vocab.to_json())
  del old["prefix_backoff"]
  plain = vocabs.WordVocab.from_json(json.dumps(old), "vocab.json")
  assert plain.prefix_backoff == 0
  assert plain.encode(["dizzying films"], max_len=2)[0].tolist() == [[1, ids[2]]]


def test_vocab_file_errors_are_one_line():
  with pytest.raises(UserError, match="vocab.json: not a jaxdl vocabulary"):
    vocabs.WordVocab.from_json("{}", "vocab.json")
  bad = json.dumps({"tokenizer": "bytes", "min_count": 1, "label_names": ["0", "1"],
                    "words": ["<pad>", "<oov>"]})
  with pytest.raises(UserError, match="made by tokenizer 'bytes'"):
    vocabs.WordVocab.from_json(bad, "vocab.json")


def test_a_class_count_given_allows_classes_without_an_example():
  """data.num_classes: classes that the training split does not show are real ones."""
  vocab = vocabs.build_vocab(["a", "b"], np.array([0, 3]), 1, 0, [], num_classes=5)
  assert vocab.num_classes == 5 and vocab.label_names == ["0", "1", "2", "3", "4"]
  with pytest.raises(vocabs.UserError, match="leave 2 of the classes 0..3 without an example"):
    vocabs.build_vocab(["a", "b"], np.array([0, 3]), 1, 0, [])
  # The data's own label names (TFDS metadata) give the count too.
  assert vocabs.build_vocab(["a", "b"], np.array([0, 2]), 1, 0, ["x", "y", "z"]).num_classes == 3
