"""python -m jaxdl.report WORKDIR [WORKDIR ...]: the final metrics of runs as a Markdown table.

One row per run, one column per config key whose value differs between the runs (from each
WORKDIR/config.json), then the numbers of each run's `final` event in metrics.jsonl. A run
without a final event (still running, or killed) shows its last step and '-' for the metrics.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any

from jaxdl import errors, files, metrics
from jaxdl.errors import UserError

MISSING = "-"


@dataclasses.dataclass
class Run:
  workdir: str
  config: dict[str, Any]        # flattened: {'opt.lr': 0.001, ...}
  events: list[dict[str, Any]]  # metrics.jsonl

  @property
  def final(self) -> dict[str, Any] | None:
    finals = [e for e in self.events if e["event"] == "final"]
    return finals[-1] if finals else None


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def load_run(workdir: str) -> Run:
  """A workdir's config and events; UserError if it holds neither."""
  config_path = os.path.join(workdir, "config.json")
  events_path = os.path.join(workdir, "metrics.jsonl")
  if not files.Path(workdir).is_dir():  # a local directory or gs://
    raise UserError(f"{workdir}: no such directory")
  if not files.exists(config_path) and not files.exists(events_path):
    raise UserError(f"{workdir}: no config.json or metrics.jsonl (not a jaxdl workdir?)")
  try:
    config = flatten(files.read_json(config_path)) if files.exists(config_path) else {}
  except ValueError as e:
    raise UserError(f"{config_path}: not valid JSON ({e})") from None
  name = workdir if files.is_url(workdir) else os.path.normpath(workdir)  # normpath: gs:/ ...
  return Run(name, config, metrics.read_events(events_path))


def differing_keys(runs: list[Run]) -> list[str]:
  """Config keys whose values are not the same in every run, in config order."""
  keys = []
  for run in runs:
    keys += [k for k in run.config if k not in keys]
  return [k for k in keys
          if len({json.dumps(r.config.get(k, MISSING), sort_keys=True) for r in runs}) > 1]


def label(run: Run, keys: list[str]) -> str:
  """'opt.lr=0.1 seed=2' for the differing keys; the workdir's name when nothing differs."""
  if not keys:
    return os.path.basename(os.path.normpath(run.workdir))
  return " ".join(f"{k}={run.config.get(k, MISSING)}" for k in keys)


def _cell(value: Any) -> str:
  """A metric: 4 decimals, or 4 significant digits for very large or small numbers."""
  if isinstance(value, float):
    return f"{value:.4g}" if abs(value) >= 1e4 or 0 < abs(value) < 1e-3 else f"{value:.4f}"
  return str(value).replace("|", "\\|")


def _config_cell(value: Any) -> str:
  """A config value as written in an override: 0.003, adamw, True."""
  return str(value).replace("|", "\\|")


def table(runs: list[Run]) -> str:
  """The Markdown table: run | differing config keys | final metrics (numbers only)."""
  keys = differing_keys(runs)
  columns = []
  for run in runs:
    final = run.final or {}
    columns += [k for k, v in final.items() if k not in ("event", "step") and k not in columns
                and isinstance(v, (int, float)) and not isinstance(v, bool)]
  header = ["run", *keys, "step", *columns]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for run in runs:
    final = run.final
    if final is None:
      last = max((e["step"] for e in run.events), default=0)
      step = f"{last} (unfinished)"
    else:
      step = str(final["step"])
    row = [run.workdir, *(_config_cell(run.config.get(k, MISSING)) for k in keys), step,
           *(_cell(final[c]) if final and c in final else MISSING for c in columns)]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m jaxdl.report", description=__doc__.split("\n")[0])
  parser.add_argument("workdirs", nargs="+", metavar="WORKDIR")
  args = parser.parse_args(argv)
  with errors.reported():
    print(table([load_run(w) for w in args.workdirs]))


if __name__ == "__main__":
  main()
