"""The gpu-check table: one row per measured setting, from the stage results, as text, Markdown and JSON.

A row is ``ok`` (its figures), ``skipped`` (the reason: a missing package, no model fitting the GPU, the time
budget) or ``error`` (the stage's error message); a stage that fails never hides the others.
"""

from __future__ import annotations

import math

COLUMNS = ("stage", "variant", "model", "status", "throughput", "MFU", "peak memory", "time", "details")


def _num(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float) and abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _memory(result: dict) -> str:
    if result.get("peak_gib") is None:
        return "n/a"
    return f"{_num(result['peak_gib'])} GiB ({result.get('peak_kind', '')})"


def _mfu(result: dict) -> str:
    if result.get("mfu") is None:
        return "unknown (no bf16 peak for this device)" if result.get("achieved_tflops") is not None else "n/a"
    return f"{100 * result['mfu']:.1f}% ({_num(result['achieved_tflops'], 1)} TFLOP/s)"


def row(stage: str, variant: str, model: str | None, result: dict | None = None, reason: str | None = None) -> dict:
    """A table row; ``result`` is a stage's result (status ok or error) or None with ``reason`` for a skipped row."""
    if result is None:
        return {"stage": stage, "variant": variant, "model": model or "-", "status": "skipped", "reason": reason,
                "throughput": "", "MFU": "", "peak memory": "", "time": "", "details": reason or "", "figures": {}}  # fmt: skip
    status = result.get("status", "error")
    out = {"stage": stage, "variant": variant, "model": model or "-", "status": status, "reason": None,
           "throughput": "", "MFU": "", "peak memory": "", "time": f"{_num(result.get('seconds'), 1)} s",
           "details": "", "figures": result}  # fmt: skip
    if status != "ok":
        out["reason"] = result.get("error", "failed")
        out["details"] = out["reason"]
    return out


def sft_row(variant: str, model: str, result: dict) -> dict:
    out = row("SFT", variant, model, result)
    if result.get("status") == "ok":
        out["throughput"] = (f"{_num(result['samples_per_second'])} samples/s, "
                             f"{_num(result['tokens_per_second'], 0)} tokens/s")  # fmt: skip
        out["MFU"] = _mfu(result)
        out["peak memory"] = _memory(result)
        stop = ", time cap" if result.get("stopped_by_time_cap") else ""
        out["details"] = (
            f"batch {result['batch']} x {_num(result['tokens_per_sample'], 0)} tokens, {result['steps']} steps{stop} "
            f"({_num(result['seconds_per_step'], 3)} s/step after warm-up); loss {_num(result['loss_first'], 3)} -> "
            f"{_num(result['loss_last'], 3)} ({'finite' if result['loss_finite'] else 'NOT finite'}); "
            f"attn {result['attn']}, {result['dtype']}"
            + (
                f", ZeRO stage {result['deepspeed_zero_stage']} as run by DeepSpeed over {result['processes']} "
                "process(es)"
                if result.get("deepspeed_zero_stage")
                else ""
            )
        )
    return out


def grpo_row(variant: str, model: str, result: dict) -> dict:
    out = row("GRPO", variant, model, result)
    if result.get("status") == "ok":
        out["throughput"] = f"{_num(result.get('completions_per_second'))} completions/s generated"
        out["peak memory"] = _memory(result)
        scoring = result.get("scoring_seconds")
        out["details"] = (
            f"{result['completions_per_step']} completions ({result['num_generations']} per prompt, up to "
            f"{result['max_completion_length']} tokens, mean {_num(result['mean_completion_tokens'], 0)}); "
            f"per step: generation {_num(result.get('generation_seconds'))} s"
            + (f", scoring {_num(scoring)} s" if scoring is not None else "")
            + f", update {_num(result.get('update_seconds'))} s; {result['steps']} steps; "
            f"loss {'finite' if result['loss_finite'] else 'NOT finite'}"
        )
    return out


def inference_rows(model: str, result: dict) -> list[dict]:
    """Two rows from the transformers stage: the official batch and the best batch of the sweep."""
    official = row("inference", "transformers, official batch", model, result)
    if result.get("status") != "ok":
        return [official]
    ok = {s["batch"]: s for s in result["sweep"] if s["status"] == "ok"}
    first = ok[result["official_batch"]]
    official["variant"] = f"transformers, batch {result['official_batch']} (official)"
    official["throughput"] = f"{_num(first['rows_per_second'])} rows/s"
    official["peak memory"] = _memory(first)
    official["details"] = (f"{_num(first['mean_new_tokens'], 0)} new tokens per row (up to {result['max_new_tokens']}), "
                           f"{_num(first['generated_tokens_per_second'], 0)} tokens/s; attn {result['attn']}")  # fmt: skip
    best = row("inference", f"transformers, best batch ({result['best_batch']})", model, result)
    b = ok[result["best_batch"]]
    best["throughput"] = f"{_num(b['rows_per_second'])} rows/s"
    best["peak memory"] = _memory(b)
    tried = ", ".join(f"{s['batch']}: {_num(s['rows_per_second'])}" if s["status"] == "ok"
                      else f"{s['batch']}: {s['status']} ({s.get('reason', '')})" for s in result["sweep"])  # fmt: skip
    best["details"] = f"rows/s by batch: {tried}"
    return [official, best]


def vllm_row(model: str, result: dict) -> dict:
    out = row("inference", "vLLM", model, result)
    if result.get("status") == "ok":
        out["throughput"] = f"{_num(result['rows_per_second'])} rows/s"
        out["peak memory"] = _memory(result)
        agree = result.get("agreement")
        agree_text = (
            f"greedy agreement with transformers on {agree['compared_rows']} rows: {agree['identical_rows']} identical, "
            f"first token {100 * agree['first_token_agreement']:.0f}%, common prefix "
            f"{100 * agree['mean_common_prefix_fraction']:.0f}%"
            if agree
            else "agreement not computed (no transformers outputs)"
        )
        out["details"] = (f"{result['rows']} rows, {_num(result['mean_new_tokens'], 0)} new tokens per row, engine start "
                          f"{_num(result['engine_start_seconds'], 1)} s; {agree_text}")  # fmt: skip
    return out


def model_row(model: str, result: dict) -> dict:
    out = row("build model", "random weights from the kept architecture", model, result)
    if result.get("status") == "ok":
        out["details"] = f"{result['parameters']:,} parameters"
    return out


def render_text(rows: list[dict]) -> str:
    """The table as aligned plain text (long cells wrap into the details column's own lines)."""
    cells = [[str(r.get(c, "")) for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) if cells else len(c) for i, c in enumerate(COLUMNS)]
    widths[-1] = min(widths[-1], 120)
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for line in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
    return "\n".join(lines)


def render_markdown(rows: list[dict], header: dict) -> str:
    def esc(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    out = ["# spatialreasoner gpu-check", ""]
    out += [f"- {k}: {esc(v)}" for k, v in header.items()]
    out += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(esc(r.get(c, "")) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(out) + "\n"
