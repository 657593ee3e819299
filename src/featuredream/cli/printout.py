"""What ``featuredream dream`` prints: the headline and what it is, its figures, the ladder, the dreams."""

from __future__ import annotations


def print_result(result, cfg, what: str) -> None:
    """The CLI's summary of one dream: one-time setup, the headline (and what it is), activation, XE and
    ceiling, ratio, judge, search, verification, the ladder and the distinct dreams."""
    for step in result.setup:
        print(f"setup       : {step.what} in {step.seconds:.1f} s (outside the time budget)")
    print(f"best prompt : {result.best.text!r}")
    print(f"headline    : {headline_text(result, cfg)}")
    print(f"activation  : {result.best.activation:.3f}  ({what})")
    print(
        f"XE          : {result.best.xe:.3f}"
        + (
            f"  (limit {result.xe_limit:.3f} = xe_max {cfg.xe_max} at {len(result.best.ids)} tokens, "
            f"feasible: {result.feasible})"
            if result.xe_limit is not None
            else "  (no fluency ceiling)"
        )
    )
    if result.dataset_max is not None:
        print(f"dataset max : {result.dataset_max:.3f}  ratio {result.ratio:.2f}  (from {result.dataset})")
    if result.judge is not None:
        j = result.judge
        print(
            f"judge       : percentile {j.percentile:.0f} among natural prose (50 = typical; "
            f"{j.judge} XE {j.xe:.2f} at {j.tokens} tokens)"
        )
    print(
        f"start       : {result.start}; {len(result.history)} iterations, {result.n_evaluated} candidates, "
        f"{result.wall_time:.1f} s ({result.stop_reason})"
    )
    print(f"verified    : re-scored from the text, |fast - reference| = {result.verification.abs_error:.2e}")
    for line in ladder_lines(result) + dream_lines(result):
        print(line)


def headline_text(result, cfg) -> str:
    """What the best prompt is: the most readable above the floor, or the most activating, and why."""
    floor = (
        ""
        if result.floor is None
        else f"the floor {result.floor:.3f}"
        + (f" = {cfg.floor} the dataset max" if isinstance(cfg.floor, str) else "")
    )
    if result.headline == "readable":
        return f"the most readable prompt reaching {floor}"
    if cfg.goal == "max":
        return "the most activating prompt under the ceiling (--goal max)"
    if result.floor is None:
        return (
            f"the most activating prompt under the ceiling (no dataset maximum to set the floor {cfg.floor})"
        )
    return f"the most activating prompt under the ceiling (nothing reached {floor})"


def dream_lines(result) -> list[str]:
    """The distinct dreams as text rows (only with more than one): activation, ratio, XE, its excess over
    natural text of its length, judge percentile, prompt."""
    if len(result.dreams) < 2:
        return []
    rows = [f"dreams      : {'#':>2} {'act':>8} {'ratio':>6} {'XE':>6} {'+XE':>6} {'judge':>5}  prompt"]
    for i, d in enumerate(result.dreams, 1):
        ratio = result.ratio_of(d.prompt)
        pct = d.judge.percentile if d.judge else float("nan")
        excess = "" if d.xe_excess is None else f"{d.xe_excess:+.2f}"
        mark = "" if d.above_floor else "  (below the floor)"
        rows.append(
            f"{'':14}{i:>2} {d.prompt.activation:8.2f} {'' if ratio is None else f'{ratio:.2f}':>6} "
            f"{d.prompt.xe:6.2f} {excess:>6} {'' if pct != pct else f'{pct:.0f}':>5}  {d.prompt.text!r}{mark}"
        )
    return rows


def ladder_lines(result) -> list[str]:
    """The fluency ladder as text rows: ceiling, activation, ratio, XE (limit), judge percentile, prompt."""
    if not result.ladder:
        return []
    rows = [
        f"ladder      : {'ceiling':>8} {'act':>8} {'ratio':>6} {'XE':>6} {'limit':>6} {'judge':>5}  prompt"
    ]
    for g in result.ladder:
        ratio = result.ratio_of(g.prompt)
        pct = g.judge.percentile if g.judge else float("nan")
        lim = "" if g.xe_limit is None else f"{g.xe_limit:.2f}"
        mark = "" if g.feasible else "  (nothing met this ceiling)"
        rows.append(
            f"{'':14}{g.ceiling:>8} {g.prompt.activation:8.2f} "
            f"{'' if ratio is None else f'{ratio:.2f}':>6} {g.prompt.xe:6.2f} {lim:>6} "
            f"{'' if pct != pct else f'{pct:.0f}':>5}  {g.prompt.text!r}{mark}"
        )
    return rows
