"""`minift plot RUN_DIR`: the curves of a run, drawn from its metrics.jsonl (lesson 12, "Reading the
curves").

    RUN_DIR/metrics.jsonl  ->  read_metrics  ->  train lines, eval lines
                           ->  make_figure   ->  3 panels: training loss | learning rate | dev metrics
                           ->  plot_run      ->  RUN_DIR/curves.png

The log is written by `train` in minift/train/loop.py: {"event": "train", "step", "loss", "lr", ...}
every `log_every` steps and {"event": "eval", "step", <metric>: float, ...} before the first step and
after every epoch. matplotlib is an optional extra (`pip install 'minift[plot]'`): it is imported only
here, inside the functions that draw, and drawn with the Agg backend (no display needed).

`save_figure` writes the lessons' figures (lessons/figures/*.png, redrawn by `make figures`) so that
the same drawing always gives the same bytes.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for the annotations: matplotlib stays optional at import time
    from matplotlib.figure import Figure

METRICS_FILE = "metrics.jsonl"
# Keys of an eval line that are not metrics: where the evaluation happened and how much it scored.
NOT_METRICS = ("event", "epoch", "step", "examples", "tokens")
# Metrics where lower is better; they share a log-scaled axis of their own in the dev panel. On a log
# axis perplexity = exp(loss) is the loss curve stretched by 1/ln 10, so the two read the same way.
LOWER_IS_BETTER = ("loss", "perplexity")
TRAIN_KEYS = ("step", "loss", "lr")
# When set, save_figure writes into this folder instead (same file name): the test suite sets it, so
# that running the lessons never rewrites the committed figures.
FIGURES_DIR_ENV = "MINIFT_FIGURES_DIR"


class MetricsFileError(ValueError):
    """A metrics.jsonl line that cannot be plotted; the message starts with `file:line:`."""


class MissingDependencyError(ImportError, RuntimeError):
    """matplotlib is not installed. An ImportError for Python callers, and a RuntimeError so that the
    `minift` command prints the message rather than a traceback (main in minift/cli.py)."""


def read_metrics(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """The train and eval lines of RUN_DIR/metrics.jsonl, in file order; other events
    (e.g. early_stop) and blank lines are skipped. Raises MetricsFileError naming file:line."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist (or is not a directory)")
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} the --out of a minift finetune run?")
    train, evals = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = _parse(line, f"{path}:{number}")
            if record["event"] == "train":
                train.append(record)
            elif record["event"] == "eval":
                evals.append(record)
    if not train and not evals:
        raise MetricsFileError(f"{path} holds no train or eval line: nothing to plot")
    return train, evals


def _parse(line: str, where: str) -> dict:
    """One line -> its JSON object, after checking what the plot reads from it."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise MetricsFileError(f"{where}: not a JSON line ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict) or "event" not in record:
        raise MetricsFileError(f"{where}: expected a JSON object with an \"event\" key, "
                               f"got {line.strip()[:80]}")
    needed = TRAIN_KEYS if record["event"] == "train" else ("step",) if record["event"] == "eval" else ()
    for key in needed:
        if not _is_number(record.get(key)):
            raise MetricsFileError(f"{where}: a {record['event']} line needs a number for {key!r}, "
                                   f"got {record.get(key)!r}")
    return record


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def dev_metric_names(evals: list[dict]) -> list[str]:
    """Every numeric key the eval lines carry except the bookkeeping ones, in first-seen order."""
    names: dict[str, None] = {}
    for record in evals:
        for key, value in record.items():
            if key not in NOT_METRICS and _is_number(value):
                names[key] = None
    return list(names)


def make_figure(train: list[dict], evals: list[dict], title: str = "") -> Figure:
    """Three panels sharing the step axis: training loss, learning rate, dev metrics. Every line is
    labelled ("train loss", "lr", "dev <metric>"), so a test can read back what was drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A Figure with its own Agg canvas, not pyplot: no display, no global figure registry to leak.
    fig = Figure(figsize=(8, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, lr_ax, dev_ax = fig.subplots(3, 1, sharex=True)
    steps = [r["step"] for r in train]
    loss_ax.plot(steps, [r["loss"] for r in train], color="C0", label="train loss")
    loss_ax.set_ylabel("training loss")
    lr_ax.plot(steps, [r["lr"] for r in train], color="C1", label="lr")
    lr_ax.set_ylabel("learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    _draw_dev(dev_ax, evals)
    dev_ax.set_xlabel("optimizer step")
    for ax in (loss_ax, lr_ax, dev_ax):
        ax.grid(alpha=0.3)
    if not train:
        loss_ax.set_title("no train lines logged", fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def _draw_dev(ax, evals: list[dict]) -> None:
    """Scores (accuracy, F1, ...) on the left axis; losses on a log-scaled axis (the right one when
    there are scores too). An eval line without a metric, or with a non-finite value, leaves a gap."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    names = dev_metric_names(evals)
    scores = [n for n in names if n not in LOWER_IS_BETTER]
    losses = [n for n in names if n in LOWER_IS_BETTER]
    if not names:
        ax.set_title("no dev evaluation logged", fontsize="small")
        return
    loss_ax = ax.twinx() if scores and losses else ax
    lines = []
    for i, name in enumerate(scores + losses):
        target = loss_ax if name in losses else ax
        steps, values = _series(evals, name)
        lines += target.plot(steps, values, marker="o", color=f"C{i + 2}",
                             linestyle="--" if name in losses else "-", label=f"dev {name}")
    if scores:
        ax.set_ylabel("dev score")
    if losses:
        loss_ax.set_yscale("log")
        # Ticks at 1, 2, 5 x 10^k written as plain numbers (0.2, 0.5): a dev loss often spans less
        # than one decade, where the default log ticks would leave the axis nearly unlabelled.
        loss_ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        loss_ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
        loss_ax.yaxis.set_minor_formatter(NullFormatter())
        loss_ax.set_ylabel(f"dev {' / '.join(losses)} (log)")
    ax.legend(lines, [line.get_label() for line in lines], fontsize="small", loc="best")


def _series(evals: list[dict], name: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one dev metric; NaN where it is missing or not finite, so the line breaks."""
    steps, values = [], []
    for record in evals:
        value = record.get(name)
        steps.append(record["step"])
        values.append(float(value) if _is_number(value) and math.isfinite(value) else math.nan)
    return steps, values


def plot_run(run_dir: str | Path, out: str | Path | None = None, dpi: int = 80) -> Path:
    """Draws RUN_DIR/metrics.jsonl to a PNG (default RUN_DIR/curves.png); returns its path."""
    try:
        import matplotlib  # noqa: F401 - only to fail early, with the fix in the message
    except ImportError:
        raise MissingDependencyError(
            "minift plot needs matplotlib, an optional extra: pip install 'minift[plot]' "
            "(or pip install matplotlib)"
        ) from None
    run_dir = Path(run_dir)
    train, evals = read_metrics(run_dir)
    out = run_dir / "curves.png" if out is None else Path(out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must name a .png file, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = make_figure(train, evals, title=f"{run_dir.resolve().name} ({METRICS_FILE})")
    fig.savefig(out, dpi=dpi)
    return out


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Writes a lesson's figure to `path` (a .png) and returns where it went. The PNG holds the pixels
    and nothing else: matplotlib would add a "Software" text chunk naming its version, so a figure
    redrawn after an upgrade would change although no pixel did. With the fixed dpi, rerunning
    `make figures` rewrites identical bytes and git sees only the figures whose drawing changed.
    MINIFT_FIGURES_DIR, when set, receives the file (same name) instead of `path`."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"save_figure writes PNG files, got {path}")
    if os.environ.get(FIGURES_DIR_ENV):
        path = Path(os.environ[FIGURES_DIR_ENV]) / path.name
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, metadata={"Software": None})
    return path
