"""Markdown tables for benchmarks/README.md from the JSON files benchmarks/quality.py wrote.

python benchmarks/quality_table.py benchmarks/quality.json [benchmarks/quality_240.json ...]
"""

from __future__ import annotations

import json
import sys


def _r(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def _judged(d: dict) -> bool:
    return any("median_judge_pct" in s for s in d["summary"].values())


def summary_table(d: dict) -> str:
    judged = _judged(d)
    lines = [
        "| mode | latents | ratio ≥ 1 (feasible) | median ratio | median XE / limit | median length | "
        "median iterations | at 15 s | at 60 s | at 240 s |"
        + (" judge pct: median / > 95 |" if judged else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if judged else ""),
    ]
    for mode, s in d["summary"].items():
        at = [
            f"{100 * s[k]['frac_ratio_ge_1']:.0f}% / {s[k]['median_ratio']:.2f}" if k in s else "–"
            for k in ("at_15s", "at_60s", "at_240s")
        ]
        wins = round(s["frac_ratio_ge_1"] * s["n"])
        lines.append(
            f"| {mode} | {s['n']} | **{wins}/{s['n']} ({100 * s['frac_ratio_ge_1']:.0f}%)** | "
            f"**{s['median_ratio']:.2f}** | {s['median_xe']:.2f} / {_r(s['median_xe_limit'])} | "
            f"{s['median_tokens']:g} | {s['median_iterations']:g} | "
            + " | ".join(at)
            + " |"
            + (f" **{s['median_judge_pct']:.0f}** / {s['judge_pct_above_95']} |" if judged else "")
        )
    return "\n".join(lines)


def has_dominance(d: dict) -> bool:
    return all("dominates" in r for r in d["rows"]) and bool(d["rows"])


def dominance_table(d: dict) -> str:
    """The readable goal's figures per mode: above the dataset maximum, dominating the best dataset example
    (the judge finds the dream at least as natural at its length), judge percentiles of dream and example,
    headlines that are the readable kind, and distinct dominating dreams (with ``--dreams K``)."""
    lines = [
        "| mode | latents | beat the dataset max | dominate its best example | judge pct, median: dream / example "
        "| readable headlines | dreams per latent | distinct dominating dreams |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, s in d["summary"].items():
        rows = [r for r in d["rows"] if r["mode"] == mode]
        n, k = len(rows), max(len(r.get("dreams", [])) for r in rows)
        beat = sum(r["feasible"] and r["ratio"] >= 1 for r in rows)
        dom = sum(r["dominates"] for r in rows)
        per = [r["dominating_dreams"] for r in rows]
        lines.append(
            f"| {mode} | {n} | **{beat}/{n} ({100 * beat / n:.0f}%)** | **{dom}/{n} ({100 * dom / n:.0f}%)** | "
            f"**{s['median_judge_pct']:.0f}** / {s['median_dataset_judge_pct']:.0f} | "
            f"{s['readable_headlines']}/{n} | {k} | {sum(per)} ({sum(x >= 2 for x in per)} latents with 2 or more) |"
        )
    return "\n".join(lines)


def dominance_rows_table(d: dict) -> str:
    """Per latent (the first mode): ratio, judge percentile of the dream and of the dataset example at the
    dream's length, whether it dominates, the most activating prompt's ratio, and the dream."""
    mode = next(iter(d["summary"]))
    lines = [
        "| latent | ratio | judge pct: dream / example | dominates | most activating ratio | dream |",
        "|---:|---:|---:|:---:|---:|---|",
    ]
    for r in (r for r in d["rows"] if r["mode"] == mode):
        text = r["text"].replace("\r", "␍").replace("\n", "⏎").replace("|", "\\|").replace("`", "'")
        lines.append(
            f"| {r['latent']} | {r['ratio']:.2f}{'' if r['feasible'] else ' (INF)'} | "
            f"{r['judge_pct']:.0f} / {r['dataset_judge_pct']:.0f} | {'yes' if r['dominates'] else 'no'} | "
            f"{_r(r['most_activating_ratio'])} | `{text}` |"
        )
    return "\n".join(lines)


def rows_table(d: dict) -> str:
    modes = list(d["summary"])
    judge = " / judge pct" if _judged(d) else ""
    head = "| latent | dataset max | " + " | ".join(f"{m}: ratio / XE (limit){judge}" for m in modes)
    head += f" | {modes[0]} dream |"
    lines = [head, "|---:|---:|" + "---|" * len(modes) + "---|"]
    by = {(r["mode"], r["latent"]): r for r in d["rows"]}
    for lat in d["latents"]:
        rs = [by.get((m, lat)) for m in modes]
        if rs[0] is None:
            continue
        cells = [
            "–"
            if r is None
            else f"{r['ratio']:.2f}{'' if r['feasible'] else ' (INF)'} / {r['xe']:.2f} ({_r(r['xe_limit'])})"
            + (f" / judge {r['judge_pct']:.0f}" if r.get("judge_pct") is not None else "")
            for r in rs
        ]
        text = rs[0]["text"].replace("\r", "␍").replace("\n", "⏎").replace("|", "\\|").replace("`", "'")
        lines.append(f"| {lat} | {rs[0]['dataset_max']:.1f} | " + " | ".join(cells) + f" | `{text}` |")
    return "\n".join(lines)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        d = json.load(open(path))
        print(
            f"### {path} ({d['sae']}, {d['args']['budget']:g} s, xe_max {d['args']['xe_max']}, complete: {d.get('complete')})\n"
        )
        print(summary_table(d) + "\n")
        if has_dominance(d):
            print(dominance_table(d) + "\n")
            print(dominance_rows_table(d) + "\n")
        else:
            print(rows_table(d) + "\n")
