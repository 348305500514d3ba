"""Vocabularies, saved as WORKDIR/vocab.json beside the checkpoints, so that a resumed run and
the tools (jaxdl.predict, jaxdl.sample) map ids exactly as training did.

  WordVocab  a text classifier's words (0 = padding, 1 = OOV) and label names. Word-level:
             lower-cased words and single punctuation marks; the training split's words seen at
             least min_count times. With prefix_backoff = N > 0 an unseen word first takes the
             id of its longest prefix of at least N characters that the vocabulary has
             ("wretchedness" → "wretched", "dizzying" → "dizzy"): English inflects at the end
             of words (experiments/text_classifier/README.md has what it bought).
  CharVocab  a language model's characters (sorted, as nanoGPT's prepare.py builds them), or
             the 256 UTF-8 byte values.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re

import numpy as np

from jaxdl.errors import UserError, first_line

VOCAB_FILE = "vocab.json"
TOKENIZER = "lower-words-v1"  # the name saved in vocab.json; change it if tokenize() changes
PAD, OOV = "<pad>", "<oov>"   # ids 0 and 1 (models/text.py relies on these ids)
CHAR_KINDS = ("chars", "bytes")  # config.data.vocab of a language model

_WORD_RE = re.compile(r"[\w'’]+|[^\w\s]")  # a word (inner apostrophes kept) or a punctuation mark
# Penn Treebank escapes, as SST-2's dev and test sets write brackets, slashes and asterisks
# (its train set has "(", "/" and "*").
_PTB_ESCAPES = {"-lrb-": "(", "-rrb-": ")", "-lsb-": "[", "-rsb-": "]", "-lcb-": "{",
                "-rcb-": "}", "\\/": "/", "\\*": "*"}
_PTB_RE = re.compile("|".join(map(re.escape, _PTB_ESCAPES)))


def tokenize(text: str) -> list[str]:
  """Lower-cased words (keeping inner apostrophes: "n't", "'s") and single punctuation marks;
  Penn Treebank bracket escapes (-LRB-) become the brackets."""
  return _WORD_RE.findall(_PTB_RE.sub(lambda m: _PTB_ESCAPES[m.group()], text.lower()))


@dataclasses.dataclass
class WordVocab:
  """Words by id (0 = padding, 1 = OOV), and what the classifier's outputs mean."""
  words: list[str]
  label_names: list[str]
  min_count: int
  tokenizer: str = TOKENIZER
  prefix_backoff: int = 0  # > 0: an unseen word takes the id of its longest known prefix this long

  def __post_init__(self):
    self.index = {w: i for i, w in enumerate(self.words)}

  def id(self, word: str) -> int:
    """The word's id; an unseen one gets its longest known prefix's (see prefix_backoff), else
    the OOV id."""
    i = self.index.get(word)
    if i is not None:
      return i
    if self.prefix_backoff:
      for end in range(len(word) - 1, self.prefix_backoff - 1, -1):
        i = self.index.get(word[:end])
        if i is not None:
          return i
    return 1

  @property
  def num_classes(self) -> int:
    return len(self.label_names)

  def to_json(self) -> str:
    return json.dumps({"tokenizer": self.tokenizer, "min_count": self.min_count,
                       "prefix_backoff": self.prefix_backoff,
                       "label_names": self.label_names, "words": self.words},
                      ensure_ascii=False, indent=0) + "\n"

  @classmethod
  def from_json(cls, text: str, path: str) -> "WordVocab":
    try:
      d = json.loads(text)
      vocab = cls(words=list(d["words"]), label_names=[str(n) for n in d["label_names"]],
                  min_count=int(d["min_count"]), tokenizer=str(d["tokenizer"]),
                  # Files from before prefix_backoff existed: their runs mapped unseen words to OOV.
                  prefix_backoff=int(d.get("prefix_backoff", 0)))
    except (ValueError, KeyError, TypeError) as e:
      raise UserError(f"{path}: not a jaxdl vocabulary ({first_line(e)})") from None
    if vocab.tokenizer != TOKENIZER:
      raise UserError(f"{path}: made by tokenizer {vocab.tokenizer!r}, this jaxdl has "
                      f"{TOKENIZER!r}; use a new --workdir")
    if vocab.words[:2] != [PAD, OOV]:
      raise UserError(f"{path}: the first two words must be {PAD!r} and {OOV!r}")
    return vocab

  def encode(self, texts: list[str], max_len: int) -> tuple[np.ndarray, dict[str, int]]:
    """int32 ids [N, max_len], right-padded with 0; and counts: 'truncated' texts, 'tokens',
    'unseen' tokens (not in the vocabulary) and 'backed_off' ones (given a known prefix)."""
    tokens_NxL = np.zeros((len(texts), max_len), np.int32)
    counts = dict.fromkeys(("truncated", "tokens", "unseen", "backed_off"), 0)
    for i, text in enumerate(texts):
      words = tokenize(text)
      ids = [self.id(w) for w in words]
      unseen = sum(w not in self.index for w in words)
      counts["truncated"] += len(ids) > max_len
      counts["tokens"] += len(ids)
      counts["unseen"] += unseen
      counts["backed_off"] += unseen - ids.count(1)
      ids = ids[:max_len]
      tokens_NxL[i, :len(ids)] = ids
    return tokens_NxL, counts


def build_vocab(texts: list[str], labels: np.ndarray, min_count: int, max_size: int,
                label_names: list[str], prefix_backoff: int = 0,
                num_classes: int = 0) -> WordVocab:
  """The training split's words seen >= min_count times, most frequent first (ties by word),
  at most max_size words in all (0 = no limit). Classes: `num_classes`, or when 0 the data's
  label names, or 1 + the largest label, and then every class below it must have an example:
  a stray label (a 7 among 0/1, a 99999999) would otherwise make classes that never occur,
  and a macro-F1 averaged over them."""
  counts = collections.Counter(w for text in texts for w in tokenize(text))
  words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
  if max_size:
    words = words[:max(0, max_size - 2)]
  largest = int(labels.max())
  if not num_classes:
    num_classes = largest + 1
    present = np.unique(labels[labels >= 0])  # -1 (unlabelled) is refused by the task
    if len(present) < num_classes and len(label_names) != num_classes:
      absent = num_classes - len(present)
      example = next(c for c in range(num_classes) if c not in set(present.tolist()))
      raise UserError(
          f"the train split's labels leave {absent:,} of the classes 0..{largest} without an "
          f"example (e.g. {example}; label {largest} is in {int((labels == largest).sum())} "
          f"row(s)): a stray label? If those classes are real, set "
          f"--config.data.num_classes={num_classes}")
  if len(label_names) != num_classes:
    label_names = [str(c) for c in range(num_classes)]
  return WordVocab([PAD, OOV] + words, label_names, min_count, prefix_backoff=prefix_backoff)



class CharVocab:
  """Characters (or UTF-8 bytes) ↔ int32 ids; id i is the i-th sorted character."""

  def __init__(self, kind: str, chars: str = ""):
    if kind not in CHAR_KINDS:
      raise UserError(f"data.vocab={kind!r} is not one of {', '.join(CHAR_KINDS)}")
    self.kind, self.chars = kind, chars if kind == "chars" else ""
    self.size = len(self.chars) if kind == "chars" else 256
    self._codepoints = np.array([ord(c) for c in self.chars], np.uint32)  # sorted

  @classmethod
  def build(cls, kind: str, text: str) -> "CharVocab":
    return cls(kind, "".join(sorted(set(text))) if kind == "chars" else "")

  def to_json(self) -> str:
    return json.dumps({"kind": self.kind, "chars": self.chars}, ensure_ascii=False) + "\n"

  @classmethod
  def from_json(cls, text: str, path: str) -> "CharVocab":
    try:
      obj = json.loads(text)
      return cls(obj["kind"], obj["chars"])
    except (ValueError, KeyError, TypeError) as e:
      raise UserError(f"{path}: not a jaxdl vocabulary file ({first_line(e)})") from None

  def encode(self, text: str, what: str = "the text") -> np.ndarray:
    """int32 ids of `text`; UserError naming the characters the vocabulary lacks."""
    if self.kind == "bytes":
      return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)
    codepoints = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    ids = np.searchsorted(self._codepoints, codepoints)
    known = (ids < self.size) & (self._codepoints[np.minimum(ids, self.size - 1)] == codepoints)
    if not known.all():
      missing = sorted(set(chr(c) for c in codepoints[~known]))
      shown = ", ".join(repr(c) for c in missing[:10]) + (" ..." if len(missing) > 10 else "")
      raise UserError(f"{what} has {len(missing)} character(s) not in the vocabulary: {shown}")
    return ids.astype(np.int32)

  def decode(self, ids) -> str:
    ids = np.asarray(ids)
    if self.kind == "bytes":
      return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")
    return "".join(self.chars[i] for i in ids)

