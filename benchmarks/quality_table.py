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
        text = rs[0]["text"].replace("\n", "⏎").replace("|", "\\|").replace("`", "'")
        lines.append(f"| {lat} | {rs[0]['dataset_max']:.1f} | " + " | ".join(cells) + f" | `{text}` |")
    return "\n".join(lines)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        d = json.load(open(path))
        print(
            f"### {path} ({d['sae']}, {d['args']['budget']:g} s, xe_max {d['args']['xe_max']}, complete: {d.get('complete')})\n"
        )
        print(summary_table(d) + "\n")
        print(rows_table(d) + "\n")
