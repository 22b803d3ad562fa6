"""Report figures from small hand-made tables and a hand-made trainer_state.json."""

import json
import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image

from spatialreasoner.errors import ConfigError, DataError
from spatialreasoner.evaluate.plots import DPI, plot_table, plot_training, reward_names, series, training_figure
from spatialreasoner.evaluate.tables import TABLE_COLUMNS, csv_columns

PAPER = {"3DSRBench": {"SpatialReasoner": {"overall": 60.3, "height": 52.5, "location": 75.2}}}
NAMES = {"ours": "SpatialReasoner", "base": None}


def write_table(path, benchmark, models=("ours", "base", "chance (expected)"), drop=()):
    """A table in the layout `spatialreasoner tables` writes (counts, then each accuracy with its interval)."""
    rows = []
    for i, m in enumerate(models):
        row = {"model": m, "rows": 40, "groups": 10, "unmatched (%)": 5.0}
        for j, c in enumerate(TABLE_COLUMNS[benchmark]):
            value = (10.0 * i + 3 * j) % 90 + 5
            row |= {c: value, f"{c} ci_low": value - 4, f"{c} ci_high": value + 4}
        rows.append(row)
    columns = [c for c in csv_columns(benchmark) if not any(c == d or c.startswith(f"{d} ") for d in drop)]
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    return path


def assert_png(path, min_size=(600, 250)):
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size[0] >= min_size[0] and img.size[1] >= min_size[1], img.size
        return img.size


def grpo_state(steps=60, rewards=("accuracy_reward", "format_reward")):
    history = []
    for step in range(1, steps + 1):
        entry = {"step": step, "epoch": step / steps, "loss": 0.01 * (-1) ** step, "learning_rate": 1e-4 * step / steps}
        entry["reward"] = 0.0
        for i, name in enumerate(rewards):
            entry[f"rewards/{name}/mean"] = min(1.0, step / steps + 0.1 * i)
            entry[f"rewards/{name}/std"] = 0.2
            entry["reward"] += entry[f"rewards/{name}/mean"]
        # TRL's diagnostics: completion lengths (mean within min..max), clipped share, reward spread
        entry |= {"completions/mean_length": 20.0 + step, "completions/min_length": 10.0 + step}
        entry |= {"completions/max_length": 40.0 + step, "completions/mean_terminated_length": 15.0 + step}
        entry |= {"completions/clipped_ratio": 1.0 - step / steps, "reward_std": 0.5 / step}
        entry["frac_reward_zero_std"] = 0.25 * (step % 4)
        history.append(entry)
    history.append({"step": steps, "train_runtime": 12.5, "train_loss": 0.01})  # the Trainer's closing summary
    return {"global_step": steps, "log_history": history}


def sft_state(steps=8):
    return {
        "log_history": [
            {"step": s, "loss": 6.0 / s, "learning_rate": 5e-3, "grad_norm": 1.0} for s in range(1, steps + 1)
        ]
    }


@pytest.mark.parametrize("benchmark", ["3DSRBench", "CV-Bench-3D"])
def test_table_plot_is_a_png(tmp_path, benchmark):
    table = write_table(tmp_path / f"{benchmark}.csv", benchmark)
    out = plot_table(table, benchmark, tmp_path / "plots" / f"{benchmark}.png", PAPER, NAMES)
    assert out == tmp_path / "plots" / f"{benchmark}.png"
    width, height = assert_png(out)
    if benchmark == "3DSRBench":  # two panels: overall + types, subtypes
        assert height > 6 * DPI
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary left behind


def test_table_plot_without_paper_numbers(tmp_path):
    table = write_table(tmp_path / "CV-Bench-3D.csv", "CV-Bench-3D", models=("only",))
    assert_png(plot_table(table, "CV-Bench-3D", tmp_path / "cvb.png"))


def test_table_plot_names_the_missing_columns(tmp_path):
    table = write_table(tmp_path / "3DSRBench.csv", "3DSRBench", drop=("height", "multi_object_parallel"))
    with pytest.raises(DataError, match=r"3DSRBench\.csv: columns differ .*missing height, height ci_low"):
        plot_table(table, "3DSRBench", tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()


def test_table_plot_rejects_an_empty_table_and_text_values(tmp_path):
    empty = write_table(tmp_path / "empty.csv", "CV-Bench-3D", models=())
    with pytest.raises(DataError, match=r"empty\.csv: no rows"):
        plot_table(empty, "CV-Bench-3D", tmp_path / "out.png")
    text = write_table(tmp_path / "text.csv", "CV-Bench-3D", models=("m",))
    df = pd.read_csv(text)
    df["Depth"] = df["Depth"].astype(object)
    df.loc[0, "Depth"] = "high"
    df.to_csv(text, index=False)
    with pytest.raises(DataError, match=r"text\.csv: column Depth holds values that are not accuracies"):
        plot_table(text, "CV-Bench-3D", tmp_path / "out.png")
    over = write_table(tmp_path / "over.csv", "CV-Bench-3D", models=("m",))
    df = pd.read_csv(over)
    df.loc[0, "Distance ci_high"] = 400.0  # a cut or edited number
    df.to_csv(over, index=False)
    with pytest.raises(DataError, match=r"over\.csv: column Distance ci_high holds values that are not accuracies"):
        plot_table(over, "CV-Bench-3D", tmp_path / "out.png")
    with pytest.raises(DataError, match=r"absent\.csv: missing"):
        plot_table(tmp_path / "absent.csv", "CV-Bench-3D", tmp_path / "out.png")
    with pytest.raises(ConfigError, match="unknown benchmark"):
        plot_table(text, "MMBench", tmp_path / "out.png")


def test_grpo_training_curves(tmp_path):
    state = tmp_path / "trainer_state.json"
    state.write_text(json.dumps(grpo_state()))
    history = grpo_state()["log_history"]
    assert reward_names(history) == ["accuracy_reward", "format_reward"]
    steps, loss = series(history, "loss")
    assert len(steps) == 60 and loss[0] == pytest.approx(-0.01)  # the closing summary is not a loss point
    out = plot_training(state, tmp_path / "training" / "run.png", run="SpatialReasoner", stage="grpo")
    width, height = assert_png(out)
    assert width > 12 * DPI  # three panels: loss, learning rate, rewards


def test_sft_training_curves(tmp_path):
    state = tmp_path / "trainer_state.json"
    state.write_text(json.dumps(sft_state()))
    width, _ = assert_png(plot_training(state, tmp_path / "sft.png", run="SpatialReasoner-SFT", stage="sft"))
    assert width < 12 * DPI  # two panels


def _lines(ax):
    """Every curve of a panel: label -> (steps, values)."""
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}


def test_sft_loss_is_drawn_on_a_log_scale(tmp_path):
    history = sft_state(steps=8)["log_history"]
    fig = training_figure(history, tmp_path / "trainer_state.json", stage="sft")
    loss, lr = fig.axes
    assert loss.get_yscale() == "log" and loss.get_title() == "loss (log scale)"
    assert lr.get_yscale() == "linear"
    (steps, values), *_ = _lines(loss).values()
    assert steps == [h["step"] for h in history] and values == pytest.approx([h["loss"] for h in history])
    # a loss that reaches zero or below cannot be drawn on a log axis: linear, as GRPO's
    history[3]["loss"] = 0.0
    assert training_figure(history, tmp_path / "trainer_state.json").axes[0].get_yscale() == "linear"


def test_grpo_diagnostics_are_drawn_from_the_logged_values(tmp_path):
    history = grpo_state(steps=20)["log_history"]
    fig = training_figure(history, tmp_path / "trainer_state.json", stage="grpo")
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert list(panels) == [
        "loss", "learning rate", "reward means", "completion length", "clipped ratio", "reward spread",
    ]  # fmt: skip
    assert panels["loss"].get_yscale() == "linear"  # GRPO's loss crosses zero
    logged = [h for h in history if "loss" in h]
    steps = [h["step"] for h in logged]
    for title, key, label in (
        ("completion length", "completions/mean_length", "mean"),
        ("completion length", "completions/mean_terminated_length", "mean of terminated"),
        ("clipped ratio", "completions/clipped_ratio", "share cut at max_completion_length"),
        ("reward spread", "reward_std", "std of the total reward"),
        ("reward spread", "frac_reward_zero_std", "share of groups without spread"),
    ):
        drawn_steps, values = _lines(panels[title])[label]
        assert drawn_steps == steps and values == pytest.approx([h[key] for h in logged]), (title, key)
    # the band of completion lengths spans min to max at every step
    (band,) = panels["completion length"].collections
    ys = band.get_paths()[0].vertices[:, 1]
    assert min(ys) == min(h["completions/min_length"] for h in logged)
    assert max(ys) == max(h["completions/max_length"] for h in logged)
    # without TRL's diagnostics (an older log) the figure keeps its first row only
    bare = [{k: v for k, v in h.items() if not k.startswith("completions/") and "std" not in k} for h in history]
    assert [ax.get_title() for ax in training_figure(bare, tmp_path / "s.json").axes if ax.get_visible()] == [
        "loss", "learning rate", "reward means",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"log_history": []}, "log_history is empty"),
        ({"global_step": 3}, "a list of entries under 'log_history'"),
        ({"log_history": [{"step": 1, "learning_rate": 1e-5}]}, "no log_history entry has a numeric 'step' and 'loss'"),
        ({"log_history": [{"step": 1, "loss": 1.0}]}, "'learning_rate'"),
    ],
)
def test_bad_trainer_state_names_the_file(tmp_path, content, message):
    state = tmp_path / "trainer_state.json"
    state.write_text(json.dumps(content))
    with pytest.raises(DataError, match=rf"trainer_state\.json: .*{message}"):
        plot_training(state, tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()


def test_grpo_run_without_rewards_and_unreadable_state(tmp_path):
    state = tmp_path / "trainer_state.json"
    state.write_text(json.dumps(sft_state()))
    with pytest.raises(DataError, match=r"trainer_state\.json: a GRPO run's log_history has no 'rewards/<name>/mean'"):
        plot_training(state, tmp_path / "out.png", stage="grpo")
    state.write_text("{not json")
    with pytest.raises(DataError, match=r"trainer_state\.json: cannot read as JSON"):
        plot_training(state, tmp_path / "out.png")
    with pytest.raises(DataError, match=r"missing\.json: missing"):
        plot_training(tmp_path / "missing.json", tmp_path / "out.png")


def test_cli_draws_both_figures_and_reports_bad_input_in_one_line(tmp_path):
    table = write_table(tmp_path / "3DSRBench.csv", "3DSRBench")
    state = tmp_path / "trainer_state.json"
    state.write_text(json.dumps(grpo_state(steps=5)))
    cli = [sys.executable, "-m", "spatialreasoner.cli", "plots"]
    args = ["--paper", json.dumps(PAPER), "--paper-names", json.dumps(NAMES)]
    table_cmd = [*cli, "table", "--table", str(table), "--benchmark", "3DSRBench", "--out", str(tmp_path / "t.png")]
    subprocess.run([*table_cmd, *args], check=True, capture_output=True)
    assert_png(tmp_path / "t.png")
    train = [*cli, "training", "--trainer-state", str(state), "--run", "r", "--stage", "grpo"]
    subprocess.run([*train, "--out", str(tmp_path / "r.png")], check=True, capture_output=True)
    assert_png(tmp_path / "r.png")
    state.write_text(json.dumps({"log_history": []}))
    proc = subprocess.run([*train, "--out", str(tmp_path / "bad.png")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{state}: log_history is empty" in proc.stderr


def test_curve_summary_gives_the_first_and_last_quarter_means():
    from spatialreasoner.evaluate.plots import curve_summary

    acc = [0.0, 0.5, 0.25, 0.25, 0.5, 0.5, 1.0, 0.5]
    history = [
        {"step": s, "loss": 2.0 - 0.1 * s, "rewards/accuracy/mean": a, "frac_reward_zero_std": 0.5, "learning_rate": 1}
        for s, a in zip(range(1, 9), acc, strict=True)
    ] + [{"step": 8, "train_runtime": 3.0}]
    line = curve_summary(history)
    assert line.startswith("8 logged steps; loss 1.9 at step 1, 1.2 at step 8")
    # quarters of 8 steps: steps 1-2 and 7-8
    assert "accuracy 0.250 -> 0.750 (first -> last quarter)" in line
    assert "frac_reward_zero_std 0.500 -> 0.500" in line
