"""The tables of benchmarks/README.md, printed from the JSON files the benchmark scripts wrote.

    python benchmarks/tables.py                      # every table, with the JSON it comes from
    python benchmarks/tables.py --check              # exit 1 unless each table is in benchmarks/README.md,
                                                     # README.md or docs/*.md as is

Covers throughput.json, prefix_cache.json, quality_vs_time.json, scaling.json, multi_feature.json,
ladder_examples.json, tune_readable_goal*.json, direction_dreams.json and the quality JSONs (through
quality_table.py). The tuning table's labels are prose; tune_round*.json hold its
figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from quality_table import (  # noqa: E402
    dominance_rows_table,
    dominance_table,
    has_dominance,
    rows_table,
    summary_table,
)

HERE = Path(__file__).parent


def _f(x, spec: str, none: str = "–") -> str:
    return none if x is None else format(x, spec)


def _cell_text(text: str) -> str:
    return "`" + text.replace("\r", "␍").replace("\n", "⏎").replace("|", "\\|").replace("`", "'") + "`"


def headline_examples_table(d: dict) -> str:
    """Per latent: its best dataset example cut to the headline's length, then the headline (README)."""
    lines = [
        "| latent | text | ratio | judge pct |",
        "|---:|---|---:|---:|",
    ]
    for row in d["rows"]:
        h = row["headline"]
        mark = " (dominates)" if row["dominates"] else ""
        lines.append(
            f"| **{row['latent']}** | dataset's best: {_cell_text(row['dataset_text'])} | 1.00 | "
            f"{row['dataset_judge_pct']:.0f} |"
        )
        lines.append(
            f"| | dream ({row['kind']}){mark}: {_cell_text(h['text'])} | {h['ratio']:.2f} | {h['judge_pct']:.0f} |"
        )
    return "\n".join(lines)


def ladder_examples_table(d: dict) -> str:
    """Per latent: its best dataset example (last 16 tokens), then the dream at each rung of the ladder."""
    lines = [
        "| latent | text | ratio | XE (limit) | judge pct |",
        "|---:|---|---:|---:|---:|",
    ]
    for row in d["rows"]:
        lines.append(
            f"| **{row['latent']}** | dataset's best: {_cell_text(row['dataset_text_16'])} | 1.00 | – | "
            f"{row['dataset_judge_pct_16']:.0f} |"
        )
        for g in row["rungs"]:
            ceiling = g["ceiling"] or "none"
            limit = "" if g["xe_limit"] is None else f" ({g['xe_limit']:.2f})"
            infeasible = "" if g["feasible"] else " (INF)"
            lines.append(
                f"| | {ceiling}: {_cell_text(g['text'])} | {g['ratio']:.2f}{infeasible} | "
                f"{g['xe']:.2f}{limit} | {g['judge_pct']:.0f} |"
            )
    return "\n".join(lines)


def throughput_tables(d: dict) -> list[str]:
    peak = d["peak_gflop_per_s"]
    where = "measured peak" if d["machine"]["device"] == "cpu" else "datasheet peak"
    head = f"% of {where} ({peak:.0f} GFLOP/s in this run)" if peak else "% of peak (device not in the table)"
    names = {
        "reference": "reference (strings, fp32, mask)",
        "full": "optimized, with XE (full forward)",
        "early": f"optimized, no XE (early exit at layer {d['objective_layer']})",
    }
    a = [
        f"| path | ms / batch | candidates / s | GFLOP / batch | GFLOP/s | {head} |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in d["rows"]:
        a.append(
            f"| {names[r['path']]} | {r['ms']:.0f} | {r['cand_per_s']:.0f} | {r['gflop']:.0f} | "
            f"{r['gflop_per_s']:.0f} | {_f(r['pct_peak'], '.0f')}{'%' if r['pct_peak'] is not None else ''} |"
        )
    out = ["\n".join(a)]
    c = d.get("cascade")
    if c:
        b = [
            "| path (the loop's own children) | ms / batch | candidates / s | children finished with XE |",
            "|---|---:|---:|---:|",
            f"| reference (strings, fp32, mask) | {c['ms_reference']:.0f} | {c['cand_per_s_reference']:.0f} | "
            f"{c['children']}/{c['children']} |",
            f"| `DreamLoop.evaluate`, cascade off (XE for every child) | {c['ms_cascade_off']:.0f} | "
            f"{c['cand_per_s_cascade_off']:.0f} | {c['children']}/{c['children']} |",
            f"| `DreamLoop.evaluate`, cascade on (the default) | {c['ms_cascade']:.0f} | "
            f"{c['cand_per_s_cascade']:.0f} | **{c['finished']}/{c['children']} "
            f"({100 * c['finished_share']:.0f}%)** |",
        ]
        out.append("\n".join(b))
    return out


def prefix_cache_table(d: dict) -> str:
    names = {"early": "to layer 12 (early exit)", "xe": "full forward with XE"}
    lines = [
        "| children | path | no cache (ms) | prefix cache (ms) | ratio | child tokens from the cache | "
        "max diff score / XE |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in d["rows"]:
        lines.append(
            f"| {r['children']} | {names[r['path']]} | {r['ms_plain']:.0f} | {r['ms_cache']:.0f} | "
            f"**{r['ratio']:.2f}×** | {100 * r['cached_share']:.0f}% | {r['max_dscore']:.1e} / "
            f"{_f(r['max_dxe'], '.1e')} |"
        )
    return "\n".join(lines)


def quality_vs_time_table(d: dict) -> str:
    lines = [
        "| t (s) | optimized: median activation | plain: median activation | optimized: median ratio | "
        "plain: median ratio |",
        "|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(d["table"]):
        last = i == len(d["table"]) - 1
        acts = [_f(r[f"{n}_act"], ".2f") for n in ("optimized", "plain")]
        if last:
            acts = [f"**{a}**" for a in acts]
        lines.append(
            f"| {r['t']:g} | {acts[0]} | {acts[1]} | {_f(r['optimized_ratio'], '.2f')} | "
            f"{_f(r['plain_ratio'], '.2f')} |"
        )
    return "\n".join(lines)


def scaling_table(d: dict) -> str:
    lines = [
        "| model | params (M) | children | tokens | early exit (ms) | + prefix cache (ms) | full + XE (ms) | "
        "full / early |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in d["rows"]:
        lines.append(
            f"| {r['model']} | {r['params_m']} | {r['children']} | {r['length']} | {r['early_ms']:.0f} | "
            f"{r['cached_ms']:.0f} | {r['full_ms']:.0f} | {r['full_ms'] / r['early_ms']:.2f} |"
        )
    return "\n".join(lines)


def multi_feature_table(d: dict) -> str:
    lines = [
        "| K | s / iteration / feature | start + verification / feature (s) | all-in s / feature | "
        "same best prompt as the smaller K |",
        "|---:|---:|---:|---:|---|",
    ]
    same = {s["k_large"]: s for s in d["shared_same"]}
    for r in d["rows"]:
        s = same.get(r["k"])
        if s is None:
            cell = "–"
            if d.get("single") is not None:
                cell += f" (and equal to `dream()`: {'yes' if d['single']['same_best_as_first_k'] else 'no'})"
        else:
            cell = f"{'yes' if s['same'] == s['shared'] else 'no'} ({s['same']}/{s['shared']} shared with K = {s['k_small']})"
        lines.append(
            f"| {r['k']} | {r['s_per_iter_per_feature']:.3f} | {r['start_verify_per_feature']:.2f} | "
            f"{r['all_in_per_feature']:.1f} | {cell} |"
        )
    return "\n".join(lines)


def readable_tuning_table(runs: list[dict]) -> str:
    """One row per variant of the readable goal's tuning runs (tune.py), in the order they were run."""
    lines = [
        "| variant | overrides | ≥ 1 | dominate | median ratio | judge pct, median: dream / example | median length "
        "| median iterations |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for d in runs:
        for name, s in d["summary"].items():
            over = ", ".join(f"{k}={v}" for k, v in s["overrides"].items()) or "(defaults)"
            lines.append(
                f"| {name} | `{over}` | {s['beat']}/{s['n']} | **{s['dominate']}/{s['n']}** | "
                f"{s['median_ratio']:.2f} | **{s['median_judge_pct']:.0f}** / {s['median_dataset_judge_pct']:.0f} | "
                f"{s['median_tokens']:g} | {s['median_iters']:g} |"
            )
    return "\n".join(lines)


def direction_dreams_table(d: dict) -> str:
    """Per site: directions whose maximum and dream are at valid positions, reproduced, and beaten."""
    lines = [
        "| site | directions | maximum valid / reproduced alone | dream's token valid | headline ≥ max "
        "| median ratio: headline / most activating | unguarded max in the hole | search wall (budget) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for site, s in d["summary"].items():
        lines.append(
            f"| {site} | {s['n']} | {s['maxima_valid']}/{s['n']} / {s['maxima_reproduced']}/{s['n']} | "
            f"{s['dreams_valid']}/{s['n']} | **{s['beat_max']}/{s['n']}** | {s['median_ratio']:.2f} / "
            f"{s['median_most_activating_ratio']:.2f} | {s['unguarded_max_above_cap']}/{s['n']} | "
            f"{s['max_search_wall']:.1f} s ({s['budget']:g} s) |"
        )
    return "\n".join(lines)


def all_tables() -> list[tuple[str, str]]:
    """``(json file, markdown table)`` for every table this script covers whose JSON exists."""
    out: list[tuple[str, str]] = []

    def load(name: str) -> dict | None:
        p = HERE / name
        return json.loads(p.read_text()) if p.exists() else None

    for name in (
        "quality.json",
        "quality_k3.json",
        "quality_240.json",
        "quality_query.json",
        "quality_cold.json",
        "quality_gemma.json",
    ):
        if (d := load(name)) is not None:
            out.append((name, summary_table(d)))
            if has_dominance(d):
                out += [(name, dominance_table(d)), (name, dominance_rows_table(d))]
            else:
                out.append((name, rows_table(d)))
    if (d := load("throughput.json")) is not None:
        out += [("throughput.json", t) for t in throughput_tables(d)]
    if (d := load("prefix_cache.json")) is not None:
        out.append(("prefix_cache.json", prefix_cache_table(d)))
    if (d := load("quality_vs_time.json")) is not None:
        out.append(("quality_vs_time.json", quality_vs_time_table(d)))
    if (d := load("scaling.json")) is not None:
        out.append(("scaling.json", scaling_table(d)))
    if (d := load("multi_feature.json")) is not None:
        out.append(("multi_feature.json", multi_feature_table(d)))
    tuning = [d for n in ("", "2", "3") if (d := load(f"tune_readable_goal{n}.json")) is not None]
    if tuning:
        out.append(("tune_readable_goal*.json", readable_tuning_table(tuning)))
    if (d := load("direction_dreams.json")) is not None:
        out.append(("direction_dreams.json", direction_dreams_table(d)))
    if (d := load("ladder_examples.json")) is not None and "headline" in d["rows"][0]:
        out.append(("ladder_examples.json", headline_examples_table(d)))
        out.append(("ladder_examples.json", ladder_examples_table(d)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="each table must be in the READMEs or docs verbatim")
    ap.add_argument("--readme", default=str(HERE / "README.md"))
    args = ap.parse_args()
    tables = all_tables()
    if not args.check:
        for name, table in tables:
            print(f"<!-- from benchmarks/{name} (python benchmarks/tables.py) -->\n{table}\n")
        return
    docs = [Path(args.readme), HERE.parent / "README.md", *sorted((HERE.parent / "docs").glob("*.md"))]
    readme = "\n".join(p.read_text() for p in docs)
    missing = [(name, t) for name, t in tables if t not in readme]
    for name, t in missing:
        print(f"not in {args.readme} as generated from benchmarks/{name}:\n{t}\n")
    print(f"{len(tables) - len(missing)}/{len(tables)} tables match their JSON")
    sys.exit(1 if missing else 0)


if __name__ == "__main__":
    main()
