#!/usr/bin/env python
"""The README's pooling tables, from the benchmark records: P@1 on test classes per pooling and family,
mean ± std over the seeds that ran, and for each family whether GSP is first or tied-first (its mean is
not below any baseline's by more than the larger of the two seed standard deviations).

Reads ``benchmarks/results/{folder,pretrained}_<family>_results.json`` and ``collage_results.json``
(written by ``folder_benchmark.py``, ``pretrained_benchmark.py`` and ``collage_benchmark.py``, or their
``--report-only``); trains nothing.

    python benchmarks/pooling_table.py            # print the tables
    python benchmarks/pooling_table.py --write    # and replace them in README.md, between the markers
"""
from __future__ import annotations

import argparse
import json
import textwrap
from typing import List, Optional, Sequence, Tuple

from _runs import RESULTS, ROOT

README = ROOT / "README.md"
BEGIN, END = "<!-- pooling tables: benchmarks/pooling_table.py --write -->", "<!-- end of pooling tables -->"
BASELINES = ("gap", "max", "gem", "avgmax", "catavgmax")
ROWS = {  # method -> row label
    "gap": "GAP (`--pool gap`)", "max": "Max (`--pool max`)", "gem": "GeM (`--pool gem`)",
    "avgmax": "AvgMax (`--pool avgmax`)", "catavgmax": "CatAvgMax (`--pool catavgmax`)",
    "gsp": "**GSP** (the recipe's)", "gsp_zsr": "GSP + ZSR 0.1", "gsp_zsr1": "GSP + ZSR 1",
    "gsp_paper": "GSP, the paper's weighted sum",
}
# (column, results file): the regime's families
SCRATCH = [("scenes", "folder_scenes"), ("fashion", "folder_fashion"), ("collage folder", "folder_collage")]
UNSEEN = [("grid (unseen layout)", "folder_grid_g5")]
PRETRAINED = [("scenes", "pretrained_scenes"), ("fashion", "pretrained_fashion"),
              ("large fashion items", "pretrained_fashion_large"), ("collage folder", "pretrained_collage")]


def load(name: str) -> Optional[dict]:
    path = RESULTS / f"{name}_results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def p1(summary: Optional[dict], method: str) -> Optional[Tuple[float, float, int]]:
    """(mean, std, seeds) of P@1 in %, or None where the method has no finished run."""
    entry = (summary or {}).get("methods", {}).get(method)
    if not entry or not entry.get("runs"):
        return None
    return 100 * entry["precision_at_1_mean"], 100 * entry.get("precision_at_1_std", 0.0), len(entry["runs"])


def cell(value: Optional[Tuple[float, float, int]], seeds: int = 3) -> str:
    if value is None:
        return "–"
    mean, std, n = value
    return f"{mean:.1f} ± {std:.1f}" if n == seeds else f"{mean:.1f} ({n} seed{'s' * (n > 1)})"


def gsp_verdict(summary: Optional[dict]) -> str:
    """'first', 'tied-first' or 'behind <baseline> by x' for the recipe's GSP on one family."""
    gsp = p1(summary, "gsp")
    if gsp is None:
        return "–"
    behind = []
    for name in BASELINES:
        base = p1(summary, name)
        if base is not None and base[0] > gsp[0]:
            gap = base[0] - gsp[0]
            behind.append((gap, name, gap <= max(base[1], gsp[1])))
    if not behind:
        return "first"
    gap, name, tied = max(behind)
    return "tied-first" if all(t for _, _, t in behind) else f"behind {name} by {gap:.1f}"


def table(columns: Sequence[Tuple[str, str]], methods: Sequence[str], head: str = "pool") -> List[str]:
    summaries = {name: load(name) for _, name in columns}
    lines = [f"| {head} | " + " | ".join(c for c, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for method in methods:
        values = [p1(summaries[name], method) for _, name in columns]
        if all(v is None for v in values):
            continue
        lines.append(f"| {ROWS[method]} | " + " | ".join(cell(v) for v in values) + " |")
    lines.append("| GSP against the best baseline | " + " | ".join(gsp_verdict(summaries[n]) for _, n in columns) + " |")
    return lines


def zero_shot_row(columns: Sequence[Tuple[str, str]]) -> str:
    shots = [(load(name) or {}).get("zero_shot", {}).get("precision_at_1") for _, name in columns]
    return "| zero-shot floor | " + " | ".join("–" if v is None else f"{100 * v:.1f}" for v in shots) + " |"


def tables() -> List[str]:
    scratch = table(SCRATCH + UNSEEN, [*BASELINES, "gsp", "gsp_zsr", "gsp_paper"])
    pretrained = table(PRETRAINED, [*BASELINES, "gsp", "gsp_zsr", "gsp_zsr1"])
    pretrained.insert(2, zero_shot_row(PRETRAINED))
    return [*textwrap.wrap("**From scratch** (`--recipe folder-scratch`: `plain_cnn6`, 96 px, 8 epochs; GSP is "
                           "`gsp:mix=max`):", 100), "", *scratch, "",
            *textwrap.wrap("**Fine-tuning a pretrained backbone** (`--recipe folder`: `mobilenetv3_small_100` pretrained "
                           "here, 128 px, 8 epochs, BatchNorm frozen; GSP is the paper's weighted sum; the zero-shot floor "
                           "is the backbone as it is, with timm's average pool):", 100), "", *pretrained]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true", help=f"replace the block between the markers in {README.name}")
    a = p.parse_args()
    block = tables()
    print("\n".join(block))
    if a.write:
        text = README.read_text()
        if BEGIN not in text or END not in text:
            raise SystemExit(f"{README}: the markers {BEGIN!r} and {END!r} are missing")
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        README.write_text(head + BEGIN + "\n\n" + "\n".join(block) + "\n\n" + END + tail)


if __name__ == "__main__":
    main()
