"""Figures for the report: per-category bar plots of the benchmark tables and training curves of a run.

``plots table`` draws a table written by ``spatialreasoner tables`` (3DSRBench: overall and the 4 types in one panel,
the 12 subtypes in another; CV-Bench-3D: overall, Depth and Distance), one bar per model and category, with the
published number of the paper model a row reproduces drawn on its bar as a black tick. ``plots training`` draws
loss (SFT: on a log scale), learning rate and, for GRPO runs, the mean of every reward and TRL's diagnostics
(completion length, clipped ratio, reward spread) from a run's ``trainer_state.json`` (``log_history``). Figures are drawn with matplotlib's Agg canvas (no display needed) and written atomically.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator

from spatialreasoner.errors import ConfigError, DataError
from spatialreasoner.evaluate.tables import CHANCE, CVB_MEAN, CVB_POOLED, HIGH, LOW, PAPER_ALIASES, read_table_csv
from spatialreasoner.taxonomy import BENCHMARKS, CANARY, CVB, CVB_CATEGORIES, SRB, SRB_SUBTYPES, SRB_TYPES
from spatialreasoner.utils import atomic_path, json_object_arg

log = logging.getLogger(__name__)

DPI = 110
STAGES = ("sft", "grpo")
#: Bars of a panel are labelled with their value up to this many bars.
MAX_LABELLED_BARS = 40
#: Rows of baselines (the expected chance accuracy, a seeded random draw), drawn in greys.
RANDOM = "random"
BASELINE_GREYS = {CHANCE: "0.45"}
#: Panels of each benchmark's figure: (title, columns).
PANELS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    SRB: (("overall and question types", ("overall", *SRB_TYPES)), ("subtypes", SRB_SUBTYPES)),
    CVB: (("overall and categories", (CVB_POOLED, CVB_MEAN, *CVB_CATEGORIES)),),
    CANARY: (("memorisation check of the chain (training rows, not generalisation)", ("overall",)),),
}
_REWARD_KEY = re.compile(r"^rewards/(.+)/mean$")


# ---------------------------------------------------------------------------------------------------------- tables


def read_table(path: str | Path, benchmark: str) -> pd.DataFrame:
    """A benchmark table written by ``spatialreasoner tables``, checked (columns, numbers in range)."""
    return read_table_csv(path, benchmark)


def is_baseline(model: str) -> bool:
    return model in BASELINE_GREYS or model.startswith(RANDOM)


def _label(column: str) -> str:
    return textwrap.fill(column.replace("_", " "), width=14)


def _draw_bars(
    ax: Axes,
    table: pd.DataFrame,
    columns: Sequence[str],
    published: Mapping[str, Mapping[str, float]],
    colors: Mapping[str, str],
) -> bool:
    """Grouped bars (groups: columns, bars: models); a black tick on a bar where the paper gives the number."""
    n = len(table)
    width = 0.8 / n
    x = np.arange(len(columns))
    any_paper = False
    for i, (_, row) in enumerate(table.iterrows()):
        pos = x - 0.4 + width * (i + 0.5)
        heights = np.array([float(row[c]) for c in columns])
        low = np.array([float(row[f"{c} {LOW}"]) for c in columns])
        high = np.array([float(row[f"{c} {HIGH}"]) for c in columns])
        # the 95% interval as an error bar (none where the column has no rows)
        yerr = np.nan_to_num(np.stack([heights - low, high - heights]), nan=0.0).clip(min=0.0)
        bars = ax.bar(
            pos, np.nan_to_num(heights), width=width * 0.92, color=colors[row["model"]], label=row["model"],
            yerr=yerr, error_kw={"elinewidth": 0.8, "capsize": 1.5, "ecolor": "0.2"},
        )  # fmt: skip
        if n * len(columns) <= MAX_LABELLED_BARS:  # numbers on the bars (a 0 bar is otherwise invisible)
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
        ref = published.get(row["model"]) or {}
        for p, c in zip(pos, columns, strict=True):
            value = ref.get(c)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                ax.hlines(float(value), p - width / 2, p + width / 2, colors="black", linewidth=2.2, zorder=3)
                any_paper = True
    ax.set_xticks(x, [_label(c) for c in columns], fontsize=8)
    ax.set_xlim(-0.5, len(columns) - 0.5)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return any_paper


def plot_table(
    table_csv: str | Path,
    benchmark: str,
    out: str | Path,
    paper: Mapping | None = None,
    paper_names: Mapping[str, str | None] | None = None,
) -> Path:
    """Bar plot of one benchmark table into ``out`` (PNG).

    ``paper[benchmark][paper_model][column]`` are published numbers and ``paper_names[model]`` the paper model a row
    reproduces (None: none), as for ``spatialreasoner tables``; only the numbers the paper gives are drawn.
    """
    table = read_table(table_csv, benchmark)
    by_paper_model = (paper or {}).get(benchmark, {}) or {}
    names = paper_names or {}
    aliases = PAPER_ALIASES.get(benchmark, {})
    published = {
        m: {aliases.get(k, k): v for k, v in (by_paper_model.get(names.get(m)) or {}).items()}
        for m in table["model"]
        if names.get(m)
    }
    palette = [f"C{i}" for i in range(10)]
    others = [m for m in table["model"] if not is_baseline(m)]
    colors = {m: palette[i % len(palette)] for i, m in enumerate(others)}
    colors |= {m: BASELINE_GREYS.get(m, "0.7") for m in table["model"] if is_baseline(m)}

    panels = PANELS[benchmark]
    widest = max(len(columns) for _, columns in panels)
    width = min(24.0, max(12.0, 2.0 + 0.14 * len(table) * widest))
    fig = Figure(figsize=(width, 1.0 + 3.6 * len(panels)), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    any_paper = False
    for (title, columns), ax in zip(panels, fig.subplots(len(panels), 1, squeeze=False)[:, 0], strict=True):
        any_paper |= _draw_bars(ax, table, columns, published, colors)
        ax.set_title(f"{benchmark}: {title}", fontsize=10, loc="left")
    handles, labels = fig.axes[0].get_legend_handles_labels()
    if any_paper:
        handles.append(Line2D([], [], color="black", linewidth=2.2))
        labels.append("paper (published)")
    fig.legend(handles, labels, loc="outside upper center", ncol=min(len(labels), 6), fontsize=8, frameon=False)
    return _save(fig, out)


# -------------------------------------------------------------------------------------------------------- training


def read_log_history(path: str | Path) -> list[dict]:
    """The ``log_history`` of a ``trainer_state.json``; a DataError unless it is a non-empty list of entries."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing; expected the trainer_state.json of a finished run")
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read as JSON: {exc}") from exc
    history = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise DataError(f"{path}: expected a JSON object with a list of entries under 'log_history'")
    if not history:
        raise DataError(
            f"{path}: log_history is empty; expected one entry per logging step (step, loss, learning_rate)"
        )
    return history


def series(history: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of ``key`` over the entries that have it with a finite number and a step."""
    points = [
        (h["step"], float(h[key]))
        for h in history
        if isinstance(h.get("step"), int | float)
        and isinstance(h.get(key), int | float)
        and not isinstance(h.get(key), bool)
        and math.isfinite(h[key])
    ]
    if not points:
        return np.array([]), np.array([])
    steps, values = zip(*points, strict=True)
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def reward_names(history: Sequence[Mapping]) -> list[str]:
    """Reward functions logged as ``rewards/<name>/mean``, in first-seen order."""
    names: list[str] = []
    for h in history:
        for key in h:
            m = _REWARD_KEY.match(key)
            if m and m.group(1) not in names:
                names.append(m.group(1))
    return names


def _smoothed(values: np.ndarray) -> np.ndarray | None:
    """A centred rolling mean over about a fiftieth of the points, or None for short curves."""
    if len(values) <= 50:
        return None
    window = max(2, len(values) // 50)
    return pd.Series(values).rolling(window, center=True, min_periods=1).mean().to_numpy()


def _curve(
    ax: Axes, steps: np.ndarray, values: np.ndarray, color: str, label: str | None = None, linestyle: str = "-"
) -> None:
    smooth = _smoothed(values)
    style = {"color": color, "linestyle": linestyle}
    if smooth is None:
        ax.plot(steps, values, **style, linewidth=1.4, marker="." if len(values) <= 30 else None, label=label)
    else:
        ax.plot(steps, values, **style, linewidth=0.8, alpha=0.3)
        ax.plot(steps, smooth, **style, linewidth=1.6, label=label)


def quarter_means(values: np.ndarray) -> tuple[float, float]:
    """Means over the first and the last quarter of the values (at least one value each)."""
    k = max(1, len(values) // 4)
    return float(values[:k].mean()), float(values[-k:].mean())


def curve_summary(history: Sequence[Mapping]) -> str:
    """One line of what the curves show: the loss at the first and last step and, for each logged reward (and the
    share of GRPO groups whose rewards had no spread), the means over the first and last quarter of the steps."""
    steps, loss = series(history, "loss")
    parts = [
        f"{len(steps)} logged steps; loss {loss[0]:.4g} at step {int(steps[0])}, {loss[-1]:.4g} at step {int(steps[-1])}"
    ]
    keys = [f"rewards/{name}/mean" for name in reward_names(history)] + ["reward", "frac_reward_zero_std"]
    keys += ["completions/mean_length", "completions/clipped_ratio"]
    for key in keys:
        _, values = series(history, key)
        if len(values):
            first, last = quarter_means(values)
            name = key.removeprefix("rewards/").removesuffix("/mean")
            parts.append(f"{name} {first:.3f} -> {last:.3f} (first -> last quarter)")
    return "; ".join(parts)


#: GRPO's diagnostics as TRL logs them, each drawn in its own panel when present: (title, [(key, label)], y label).
GRPO_DIAGNOSTICS: tuple[tuple[str, tuple[tuple[str, str], ...], str], ...] = (
    (
        "completion length",
        (("completions/mean_length", "mean"), ("completions/mean_terminated_length", "mean of terminated")),
        "tokens",
    ),
    ("clipped ratio", (("completions/clipped_ratio", "share cut at max_completion_length"),), "share"),
    (
        "reward spread",
        (("reward_std", "std of the total reward"), ("frac_reward_zero_std", "share of groups without spread")),
        "",
    ),
)
#: Drawn as a band around the mean completion length.
LENGTH_RANGE = ("completions/min_length", "completions/max_length")


def _log_label(value: float, _position=None) -> str:
    """Plain numbers at 1, 2 and 5 times a power of ten (0.2, 0.5, 1, 2, 5), none between them."""
    if value <= 0:
        return ""
    mantissa = round(value / 10 ** math.floor(math.log10(value)), 6)
    return f"{value:g}" if mantissa in (1, 2, 5) else ""


def training_figure(history: Sequence[Mapping], path: Path, run: str | None = None, stage: str | None = None) -> Figure:
    """The figure of :func:`plot_training` from a checked ``log_history`` (``path`` names it in errors)."""
    loss = series(history, "loss")
    lr = series(history, "learning_rate")
    for key, (steps, _) in (("loss", loss), ("learning_rate", lr)):
        if not len(steps):
            raise DataError(f"{path}: no log_history entry has a numeric 'step' and {key!r}; expected step metrics")
    rewards = reward_names(history)
    if stage == "grpo" and not rewards:
        raise DataError(f"{path}: a GRPO run's log_history has no 'rewards/<name>/mean' entries")
    diagnostics = [
        (title, [(key, label) for key, label in keys if len(series(history, key)[0])], ylabel)
        for title, keys, ylabel in (GRPO_DIAGNOSTICS if rewards else ())
    ]
    diagnostics = [d for d in diagnostics if d[1]]

    n_top = 3 if rewards else 2
    n_rows = 2 if diagnostics else 1
    fig = Figure(figsize=(4.6 * n_top, 3.8 * n_rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(n_rows, n_top, squeeze=False)
    axes = list(grid[0])
    _curve(axes[0], *loss, "C0")
    # SFT's cross-entropy falls by orders of magnitude: on a log scale its late steps stay readable. GRPO's loss
    # crosses zero, so it stays linear.
    log_loss = not rewards and bool((loss[1] > 0).all())
    if log_loss:
        axes[0].set_yscale("log")
        axes[0].yaxis.set_major_formatter(FuncFormatter(_log_label))
        axes[0].yaxis.set_minor_formatter(FuncFormatter(_log_label))
    axes[0].set_title("loss (log scale)" if log_loss else "loss", fontsize=10)
    axes[1].plot(*lr, color="C1", linewidth=1.4)
    axes[1].set_title("learning rate", fontsize=10)
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    axes[1].set_ylim(bottom=0)
    if rewards:
        ax = axes[2]
        for i, name in enumerate(rewards):
            _curve(ax, *series(history, f"rewards/{name}/mean"), f"C{(i + 2) % 10}", label=name)
        total = series(history, "reward")
        if len(total[0]) and len(rewards) > 1:  # dashed: a reward it coincides with stays visible between the dashes
            _curve(ax, *total, "black", label="total", linestyle="--")
        ax.set_title("reward means", fontsize=10)
        ax.legend(fontsize=8)
    if diagnostics:
        for ax, (title, keys, ylabel) in zip(grid[1], diagnostics, strict=False):
            for i, (key, label) in enumerate(keys):
                _curve(ax, *series(history, key), f"C{(i + 5) % 10}", label=label)
            if title == "completion length":
                (s_lo, lo), (s_hi, hi) = (series(history, k) for k in LENGTH_RANGE)
                if len(lo) and len(lo) == len(hi) and np.array_equal(s_lo, s_hi):
                    ax.fill_between(s_lo, lo, hi, color="C5", alpha=0.15, linewidth=0, label="min to max")
            if title == "clipped ratio" or "frac_reward_zero_std" in dict(keys):
                ax.set_ylim(-0.03, 1.03)
            ax.set_title(title, fontsize=10)
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=8)
            axes.append(ax)
        for ax in grid[1][len(diagnostics) :]:
            ax.set_visible(False)
    for ax in axes:
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    last = int(max(loss[0].max(), lr[0].max()))
    title = " ".join(p for p in (run, f"({stage})" if stage else None) if p)
    fig.suptitle(f"{title}: {last} steps" if title else f"{last} steps", fontsize=11)
    return fig


def plot_training(trainer_state: str | Path, out: str | Path, run: str | None = None, stage: str | None = None) -> Path:
    """Loss (SFT: on a log scale), learning rate and, for GRPO, reward means and TRL's diagnostics (completion
    length, the share of completions cut at the length limit, reward spread) against the step, from
    ``trainer_state.json``.

    ``stage`` ``grpo`` requires reward entries (``rewards/<name>/mean``); None draws them when present.
    """
    if stage is not None and stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    path = Path(trainer_state)
    history = read_log_history(path)
    fig = training_figure(history, path, run=run, stage=stage)
    log.info("%s: %s", run or path, curve_summary(history))
    return _save(fig, out)


# ------------------------------------------------------------------------------------------------------------ output


# ------------------------------------------------------------------------------------------- accuracy along training


def plot_checkpoints(table_csv: str | Path, run: str, out: str | Path) -> Path:
    """Accuracy of ``run`` against the training step, one line per benchmark with its 95% interval as a band, from
    ``checkpoints.csv`` (``spatialreasoner checkpoint-table``)."""
    from spatialreasoner.evaluate.checkpoints import read_checkpoint_table

    table = read_checkpoint_table(table_csv)
    part = table[table["run"] == run]
    if part.empty:
        runs = ", ".join(sorted(table["run"].astype(str).unique()))
        raise DataError(f"{table_csv}: no rows for run {run!r}; it holds {runs}")
    fig = Figure(figsize=(7.5, 4.2), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, (bench, rows) in enumerate(part.groupby("benchmark", sort=False)):
        rows = rows.sort_values("step")
        color = f"C{i}"
        label = f"{bench} ({rows['metric'].iloc[0]})"
        ax.plot(rows["step"], rows["accuracy"], marker="o", color=color, label=label)
        ax.fill_between(rows["step"], rows["ci_low"], rows["ci_high"], color=color, alpha=0.2, linewidth=0)
    ax.set_xlabel("training step (0: the initial model)")
    ax.set_ylabel("accuracy (%), 95% interval")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{run}: accuracy along training", fontsize=10, loc="left")
    ax.legend(fontsize=8, frameon=False)
    return _save(fig, out)


def _save(fig: Figure, out: str | Path) -> Path:
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    log.info("wrote %s", out)
    return out


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="figure", required=True, metavar="FIGURE")
    table = sub.add_parser("table", help="bar plot of a benchmark table", description="bar plot of a benchmark table")
    table.add_argument("--table", required=True, help="a table written by `spatialreasoner tables` (<bench>.csv)")
    table.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    table.add_argument("--out", required=True, help="PNG file")
    table.add_argument("--paper", default="{}", help="JSON: published numbers paper[bench][paper_model][column]")
    table.add_argument("--paper-names", default="{}", help="JSON: model -> paper model it reproduces (null for none)")
    training = sub.add_parser(
        "training",
        help="training curves of a run",
        description="loss, learning rate and (GRPO) reward means, completion length, clipped ratio and reward spread",
    )
    training.add_argument("--trainer-state", required=True, help="the run's trainer_state.json")
    training.add_argument("--out", required=True, help="PNG file")
    training.add_argument("--run", default=None, help="run name for the title")
    training.add_argument("--stage", default=None, choices=STAGES, help="grpo: reward curves are required")
    ckpt = sub.add_parser(
        "checkpoints",
        help="accuracy along training of a run",
        description="accuracy of a run's evaluated checkpoints against the step, with the 95%% interval as a band",
    )
    ckpt.add_argument("--table", required=True, help="checkpoints.csv written by `spatialreasoner checkpoint-table`")
    ckpt.add_argument("--run", required=True, help="the run to draw")
    ckpt.add_argument("--out", required=True, help="PNG file")


def run(args: argparse.Namespace) -> int:
    if args.figure == "table":
        paper = json_object_arg(args.paper, "--paper")
        names = json_object_arg(args.paper_names, "--paper-names")
        out = plot_table(args.table, args.benchmark, args.out, paper, names)
    elif args.figure == "checkpoints":
        out = plot_checkpoints(args.table, args.run, args.out)
    else:
        out = plot_training(args.trainer_state, args.out, run=args.run, stage=args.stage)
    print(out)
    return 0
