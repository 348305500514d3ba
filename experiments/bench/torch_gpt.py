"""nanoGPT's CPU configuration in PyTorch, written for the side-by-side benchmark (not jaxdl).

A GPT at jaxdl's `configs/tiny_lm.py:nanogpt_cpu` sizes and recipe, as nanoGPT builds it:
4 pre-LayerNorm blocks, 4 heads, width 128, block 64, learned positions, tied input/output
embedding, no biases (nanoGPT's default), exact-erf GELU, normal(0.02) init with residual
projections scaled by 1/sqrt(2 * layers); AdamW lr 1e-3 (warmup 100, cosine to 1e-4 at 2,000),
b2 0.99, weight decay 0.1 on matrices, clip 1.0; batch 12 random windows of the first 90% of the
text. Validation is the same fixed set jaxdl evaluates: every non-overlapping 64-character window
of the last 10%, from offset 0.

  pip install torch==2.13.0   # CPU wheel; not a jaxdl dependency (pyproject's `bench` extra)
  python experiments/bench/torch_gpt.py --data=../shared/data/tiny_shakespeare/input.txt

Prints one JSON line: tokens/s over the training steps after warm-up (eval excluded), the median
step time, and the final validation loss.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

try:
  import torch
  from torch import nn
  from torch.nn import functional as F
except ImportError:
  sys.exit("this benchmark needs PyTorch: pip install torch==2.13.0 (or pip install -e .[bench])")

LAYERS, HEADS, WIDTH, BLOCK, BATCH = 4, 4, 128, 64, 12
LR, MIN_LR, WARMUP, WEIGHT_DECAY, B2, CLIP = 1e-3, 1e-4, 100, 0.1, 0.99, 1.0


class Block(nn.Module):

  def __init__(self):
    super().__init__()
    self.ln1, self.ln2 = nn.LayerNorm(WIDTH, bias=False), nn.LayerNorm(WIDTH, bias=False)
    self.qkv = nn.Linear(WIDTH, 3 * WIDTH, bias=False)
    self.attn_out = nn.Linear(WIDTH, WIDTH, bias=False)
    self.mlp_in = nn.Linear(WIDTH, 4 * WIDTH, bias=False)
    self.mlp_out = nn.Linear(4 * WIDTH, WIDTH, bias=False)

  def forward(self, x):
    b, t, d = x.shape
    q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
    q, k, v = (y.view(b, t, HEADS, d // HEADS).transpose(1, 2) for y in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    x = x + self.attn_out(y.transpose(1, 2).reshape(b, t, d))
    return x + self.mlp_out(F.gelu(self.mlp_in(self.ln2(x))))


class GPT(nn.Module):

  def __init__(self, vocab_size: int):
    super().__init__()
    self.tokens = nn.Embedding(vocab_size, WIDTH)
    self.positions = nn.Embedding(BLOCK, WIDTH)
    self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
    self.ln_final = nn.LayerNorm(WIDTH, bias=False)
    for name, p in self.named_parameters():
      if p.dim() >= 2:
        std = 0.02 / math.sqrt(2 * LAYERS) if name.endswith(("attn_out.weight", "mlp_out.weight")) else 0.02
        nn.init.normal_(p, 0.0, std)

  def forward(self, idx, targets):
    x = self.tokens(idx) + self.positions(torch.arange(idx.shape[1]))
    for block in self.blocks:
      x = block(x)
    logits = self.ln_final(x) @ self.tokens.weight.T  # tied output layer
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def lr_at(step: int, steps: int) -> float:
  """nanoGPT's get_lr: linear warmup, then cosine from LR to MIN_LR at the last step."""
  if step < WARMUP:
    return LR * (step + 1) / (WARMUP + 1)
  ratio = (step - WARMUP) / (steps - WARMUP)
  return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LR - MIN_LR)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", required=True, help="the Tiny Shakespeare input.txt")
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--warmup_steps", type=int, default=20, help="steps left out of tokens/s")
  args = parser.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)

  with open(args.data, encoding="utf-8") as f:
    text = f.read()
  chars = sorted(set(text))
  lookup = {c: i for i, c in enumerate(chars)}  # the characters of the whole text, as nanoGPT
  ids = torch.tensor([lookup[c] for c in text], dtype=torch.long)
  cut = int(len(ids) * 0.9)
  train, val = ids[:cut], ids[cut:]

  model = GPT(len(chars))
  decay = [p for p in model.parameters() if p.dim() >= 2]
  no_decay = [p for p in model.parameters() if p.dim() < 2]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                           {"params": no_decay, "weight_decay": 0.0}], lr=LR, betas=(0.9, B2))
  gen = torch.Generator().manual_seed(args.seed)
  offsets = torch.arange(BLOCK + 1)
  step_s = []
  for step in range(args.steps):
    t0 = time.perf_counter()
    starts = torch.randint(len(train) - BLOCK, (BATCH,), generator=gen)
    windows = train[starts[:, None] + offsets]
    for group in opt.param_groups:
      group["lr"] = lr_at(step, args.steps)
    loss = model(windows[:, :-1], windows[:, 1:])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    opt.step()
    step_s.append(time.perf_counter() - t0)

  model.eval()
  n = (len(val) - 1) // BLOCK
  idx = torch.arange(n)[:, None] * BLOCK + torch.arange(BLOCK)[None, :]
  with torch.no_grad():
    losses = [model(val[idx[i:i + 256]], val[idx[i:i + 256] + 1]) * len(idx[i:i + 256])
              for i in range(0, n, 256)]
  val_loss = float(sum(losses) / n)
  timed = step_s[args.warmup_steps:]
  print(json.dumps({
      "impl": "torch", "threads": torch.get_num_threads(), "torch": torch.__version__,
      "steps": args.steps, "tokens_per_s": BATCH * BLOCK * len(timed) / sum(timed),
      "step_ms_median": 1e3 * statistics.median(timed), "train_s": sum(step_s),
      "val_loss": val_loss, "val_windows": n}))


if __name__ == "__main__":
  main()
