#!/usr/bin/env python
"""Recipe search for the collage benchmark, on a VALIDATION split of the training classes only.

Every trial runs ``examples/train.py --val-fraction 0.2`` (20 of the 100 train classes held out,
never the test classes) as a subprocess, one after the other (the target machine has 2 CPU cores).
Results go to ``benchmarks/results/recipe_search.json`` and the table ``benchmarks/recipe_search.md``.
Finished trials are skipped on re-run (their ``results.json`` is reused); ``--force`` re-runs them.

    python benchmarks/recipe_search.py                                          # all trials
    python benchmarks/recipe_search.py --only gap_lr1e-2 gsp_zsr_lr3e-3         # some trials
    python benchmarks/recipe_search.py --report-only                             # rewrite the .md only
"""
from __future__ import annotations

import argparse
import json
import subprocess
import time

from _runs import KEYS, RESULTS, ROOT, read_run, stage_table, train_run

OUT = RESULTS / "recipe_search"

# Shared by every trial: the search budget (backbone, size, epochs) is the same for all poolings.
COMMON = ["--val-fraction", "0.2", "--no-progress", "--workers", "0", "--model", "test_resnet",
          "--img-size", "64", "--epochs", "4", "--eval-every", "4"]

# Stage 1 (seed 0 only): learning rate per pooling, prototype init, mu/gamma. name -> extra flags.
# Baselines get the same lr sweep as GSP.
STAGE1 = {
    "gap_lr3e-3": ["--pool", "gap", "--lr", "3e-3"],
    "gsp_zsr_lr3e-3": ["--pool", "gsp", "--lr", "3e-3", "--zsr-weight", "0.1"],
    "gap_lr1e-3": ["--pool", "gap", "--lr", "1e-3"],
    "gsp_zsr_lr1e-3": ["--pool", "gsp", "--lr", "1e-3", "--zsr-weight", "0.1"],
    "gap_lr1e-2": ["--pool", "gap", "--lr", "1e-2"],
    "gap_lr3e-2": ["--pool", "gap", "--lr", "3e-2"],
    "gsp_zsr_lr1e-2": ["--pool", "gsp", "--lr", "1e-2", "--zsr-weight", "0.1"],
    "max_lr1e-2": ["--pool", "max", "--lr", "1e-2"],
    "gsp_zsr_mu0.25_g10": ["--pool", "gsp", "--lr", "3e-3", "--zsr-weight", "0.1", "--transport-ratio", "0.25", "--gamma", "10"],
    "max_lr3e-3": ["--pool", "max", "--lr", "3e-3"],
    "gap_lr1e-1": ["--pool", "gap", "--lr", "1e-1"],
    "gsp_zsr_lr3e-2": ["--pool", "gsp", "--lr", "3e-2", "--zsr-weight", "0.1"],
    "max_lr3e-2": ["--pool", "max", "--lr", "3e-2"],
    "gsp_zsr_random": ["--pool", "gsp", "--lr", "3e-3", "--zsr-weight", "0.1", "--prototype-init", "random"],
}
TRIALS = {name: [*flags, "--seed", "0"] for name, flags in STAGE1.items()}

# Stage 2, three seeds each (the seed also draws the validation classes): each pooling at its
# stage-1 lr, then the GSP knobs stage 1 left open (ZSR weight, K, mu) at GSP's lr 1e-2.
STAGE2 = {
    "gap": ["--pool", "gap", "--lr", "3e-2"],
    "max": ["--pool", "max", "--lr", "1e-2"],
    "gsp_zsr0": ["--pool", "gsp", "--lr", "1e-2", "--zsr-weight", "0"],
    "gsp_zsr0.03": ["--pool", "gsp", "--lr", "1e-2", "--zsr-weight", "0.03"],
    "gsp_zsr0.1": ["--pool", "gsp", "--lr", "1e-2", "--zsr-weight", "0.1"],
    "gsp_zsr0.3": ["--pool", "gsp", "--lr", "1e-2", "--zsr-weight", "0.3"],
    "gsp_zsr0.1_k32": ["--pool", "gsp", "--lr", "1e-2", "--zsr-weight", "0.1", "--num-prototypes", "32"],
    "gsp_zsr0.1_mu0.5": ["--pool", "gsp", "--lr", "1e-2", "--zsr-weight", "0.1", "--transport-ratio", "0.5"],
    # added after the rows above: a smaller ZSR weight, and the best weight with K = 32
    "gsp_zsr0.01": ["--pool", "gsp", "--lr", "1e-2", "--zsr-weight", "0.01"],
    "gsp_zsr0.03_k32": ["--pool", "gsp", "--lr", "1e-2", "--zsr-weight", "0.03", "--num-prototypes", "32"],
    "gsp_zsr0.03_k64": ["--pool", "gsp", "--lr", "1e-2", "--zsr-weight", "0.03", "--num-prototypes", "64"],
    "gsp_zsr0_k32": ["--pool", "gsp", "--lr", "1e-2", "--zsr-weight", "0", "--num-prototypes", "32"],
    "gsp_zsr0_k64": ["--pool", "gsp", "--lr", "1e-2", "--zsr-weight", "0", "--num-prototypes", "64"],
}
STAGE2_SEEDS = (0, 1, 2)
TRIALS.update({f"{name}_s{seed}": [*flags, "--seed", str(seed)] for name, flags in STAGE2.items() for seed in STAGE2_SEEDS})


def run_trial(name: str, flags, force: bool) -> dict:
    out = train_run(OUT / name, [*COMMON, *flags], force)
    r = read_run(out)
    return {"name": name, "flags": flags, "split": r["eval_split"], "wall_time_s": r["wall_time_s"],
            **{k: r["metrics"][k] for k in KEYS}}


def write_md(rows) -> None:
    lines = ["# Recipe search (collage, validation split of the training classes)", "",
             "Re-run: `python benchmarks/recipe_search.py` "
             "(trials already done are reused; `--force` re-runs).", "",
             "Every trial: `examples/train.py " + " ".join(COMMON) + "` plus the flags below. "
             "Evaluated on 20 of the 100 training classes held out (`--val-fraction 0.2`); "
             "the test classes were never used for any choice.", "",
             "| trial | flags | P@1 | R-Prec | MAP@R | wall s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | `{' '.join(r['flags'])}` | {r['precision_at_1']:.4f} | "
                     f"{r['r_precision']:.4f} | {r['map_at_r']:.4f} | {r['wall_time_s']:.0f} |")
    lines += ["", *stage_table(STAGE2, STAGE2_SEEDS, rows)]
    notes = ROOT / "benchmarks" / "results" / "recipe_search_notes.md"
    if notes.is_file():
        lines += ["", notes.read_text()]
    (ROOT / "benchmarks" / "recipe_search.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", help="trial names (default: all)")
    p.add_argument("--force", action="store_true")
    p.add_argument("--report-only", action="store_true", help="rewrite the record from finished trials only")
    a = p.parse_args()
    names = [] if a.report_only else (a.only or list(TRIALS))
    rows = []
    for name in TRIALS:
        if name in names or (OUT / name / "results.json").is_file():
            try:
                rows.append(run_trial(name, TRIALS[name], a.force and name in names))
            except subprocess.CalledProcessError as exc:
                print(f"trial {name} failed: {exc}", flush=True)
            OUT.mkdir(parents=True, exist_ok=True)
            (OUT.parent / "recipe_search.json").write_text(json.dumps(rows, indent=2))
            write_md(rows)
            print(f"[{time.strftime('%H:%M:%S')}] {rows[-1] if rows else ''}", flush=True)


if __name__ == "__main__":
    main()
