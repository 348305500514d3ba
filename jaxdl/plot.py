"""python -m jaxdl.plot WORKDIR [WORKDIR ...] --out=curves.png: train and eval curves of runs.

One panel per metric (default: loss, and the metrics the runs' tasks name, PLOT_METRICS:
accuracy, or perplexity, when the runs log them); in
each, every run's train curve is solid and its eval curve (the eval split's `eval` events plus
its `final` event) dashed, in the run's colour. Runs are labelled by the config keys on which
they differ (from WORKDIR/config.json). Drawn with matplotlib's Agg backend: no display needed.
"""

from __future__ import annotations

import argparse
import io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxdl import errors, files  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxdl import report  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxdl.errors import (  # pylint: disable=g-import-not-at-top,wrong-import-position
    UserError, first_line)

SKIP = ("count", "lr")  # bookkeeping, not learning curves (nor is any '<unit>_per_s')


def _eval_split(run: report.Run) -> str | None:
  """The split the run evaluates every eval_every steps: the prefix of its `eval` keys (or,
  with no eval event, of the first `final` loss)."""
  for kind in ("eval", "final"):
    for event in run.events:
      if event["event"] == kind:
        for key in event:
          if key.endswith("_loss"):
            return key[:-len("_loss")]
  return None


def curves(run: report.Run) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
  """{metric: {'train' | 'eval': (steps, values)}} of one run."""
  split = _eval_split(run)
  out: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
  def add(metric, kind, step, value):
    steps, values = out.setdefault(metric, {}).setdefault(kind, ([], []))
    steps.append(step)
    values.append(float(value))
  for event in run.events:
    for key, value in event.items():
      if key in ("event", "step") or not isinstance(value, (int, float)):
        continue
      if event["event"] == "train":
        kind, metric = "train", key
      elif event["event"] in ("eval", "final") and split and key.startswith(split + "_"):
        kind, metric = "eval", key[len(split) + 1:]
      else:
        continue
      if metric not in SKIP and not metric.endswith("_per_s"):
        add(metric, kind, event["step"], value)
  return out


def _task_names(runs: list[report.Run], name: str) -> list[str]:
  """The metric names the runs' tasks list under `name` (PLOT_METRICS, LOG_SCALE), in order;
  none from a run whose task cannot be imported here."""
  from jaxdl import tasks  # pylint: disable=g-import-not-at-top  (imports jax: only when plotting)
  out = []
  for run in runs:
    try:
      names = getattr(tasks.get(run.config.get("task", tasks.UNNAMED)), name, ())
    except UserError:
      names = ()
    out += [m for m in names if m not in out]
  return out


def default_metrics(runs: list[report.Run], all_curves: list[dict]) -> list[str]:
  """The loss, and the panels the runs' tasks name (task.PLOT_METRICS) that some run logged."""
  present = set().union(*all_curves) if all_curves else set()
  return ["loss"] + [m for m in _task_names(runs, "PLOT_METRICS") if m in present and m != "loss"]


def plot(workdirs: list[str], out: str, metrics: list[str] | None = None,
         title: str | None = None) -> str:
  """Draws the runs' curves into the PNG `out`; returns its path."""
  runs = [report.load_run(w) for w in workdirs]
  keys = report.differing_keys(runs)
  all_curves = [curves(r) for r in runs]
  metrics = metrics or default_metrics(runs, all_curves)
  present = set().union(*all_curves)
  log_scale = ["loss"] + _task_names(runs, "LOG_SCALE")
  for metric in metrics:
    if metric not in present:
      raise UserError(f"--metrics: no run logs {metric!r}; these do: {', '.join(sorted(present))}")
  fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.8), squeeze=False)
  for ax, metric in zip(axes[0], metrics):
    for i, (run, run_curves) in enumerate(zip(runs, all_curves)):
      colour = f"C{i % 10}"
      name = report.label(run, keys)
      for kind, style in (("train", "-"), ("eval", "--")):
        if kind in run_curves.get(metric, {}):
          steps, values = run_curves[metric][kind]
          split = "train" if kind == "train" else _eval_split(run)
          ax.plot(steps, values, style, color=colour, marker="." if kind == "eval" else None,
                  label=f"{name} ({split})", linewidth=1.2)
    ax.set_title(metric)
    ax.set_xlabel("step")
    if metric in log_scale:
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
  # One legend for all panels, below them: labels made of several config keys are long, and
  # inside a panel they would cover the curves.
  legend = {}
  for ax in axes[0]:
    for handle, text in zip(*ax.get_legend_handles_labels()):
      legend.setdefault(text, handle)
  fig.legend(legend.values(), legend.keys(), loc="upper center", bbox_to_anchor=(0.5, 0.0),
             fontsize="small", frameon=False)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  # The PNG's bytes, written to `out` exactly: savefig given a path without a suffix writes
  # OUT.png, and the path printed would not be the file written.
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=90, bbox_inches="tight")
  plt.close(fig)
  try:
    if not files.is_url(out):  # gs:// (etils.epath) has no directories to make
      if os.path.isdir(out):
        raise UserError(f"--out={out}: is a directory; give a file name, e.g. "
                        f"--out={os.path.join(out, 'curves.png')}")
      os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    files.Path(out).write_bytes(png.getvalue())
  except OSError as e:  # permission denied, a file where a directory should be, a full disk
    raise UserError(f"--out={out}: cannot be written ({first_line(e)})") from None
  return out


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m jaxdl.plot", description=__doc__.split("\n")[0])
  parser.add_argument("workdirs", nargs="+", metavar="WORKDIR")
  parser.add_argument("--out", default="curves.png", help="the PNG to write (curves.png)")
  parser.add_argument("--metrics", default="",
                      help="comma-separated panels, e.g. loss,accuracy (default: loss and "
                           "the metrics the runs' tasks name)")
  parser.add_argument("--title", default=None, help="a title above the panels")
  args = parser.parse_args(argv)
  with errors.reported():
    metrics = [m for m in args.metrics.split(",") if m] or None
    print(plot(args.workdirs, args.out, metrics, args.title))


if __name__ == "__main__":
  main()
