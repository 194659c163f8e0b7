#!/usr/bin/env python
"""How the ``folder-scratch`` recipe was chosen: trials on VALIDATION classes of three generated families.

The families (``timm_gsp.data.generated``, generator seed 0, 200 classes x 20 images of 96 px) differ in
structure: ``scenes`` (one class blob on photo clutter), ``fashion`` (one real Fashion-MNIST item, an
instance class, among other items on photo clutter) and ``collage`` (a 3 x 3 mosaic, one glyph tile). Every
trial is ``examples/train.py --dataset folder --data-dir <family> --recipe benchmarks/folder_scratch_v1.yaml
--val-fraction 0.25`` (the recipe as it was before this search)
(25 of the 100 training classes held out and evaluated; the 100 test classes are never read) plus the flags
below, evaluated at its last epoch. A candidate is judged by its WORST family, so that the recipe is the
one that learns on every kind of image, not the one that shines on one of them.

Results: ``benchmarks/results/folder_search/<family>/<trial>/results.json``; the table:
``benchmarks/folder_recipe_search.md``. Finished trials are reused; ``--force`` re-runs them.

    python benchmarks/folder_recipe_search.py --jobs 2                # every trial (about 2 h on 2 cores)
    python benchmarks/folder_recipe_search.py --only cnn6_pa gap_cnn6_pa --families fashion
    python benchmarks/folder_recipe_search.py --report-only
"""
from __future__ import annotations

import argparse
import subprocess
from pathlib import Path
from typing import Dict, List

import numpy as np

from _runs import RESULTS, ROOT, read_run, run_side_by_side, train_run
from folder_benchmark import FAMILIES, family_root

OUT = RESULTS / "folder_search"
BASE_RECIPE = Path(__file__).resolve().parent / "folder_scratch_v1.yaml"  # what every trial starts from
VAL = ["--val-fraction", "0.25", "--eval-every", "1000", "--workers", "0", "--cache-images"]

# The reference point: a six-conv network whose first stage keeps the full resolution (plain_cnn6),
# ProxyAnchor, no augmentation, random batches. The others change one thing of it at a time.
PLAIN = ["--model", "plain_cnn6", "--model-kwargs", "--channels-last"]
NO_AUG = ["--scale", "1", "1", "--ratio", "1", "1", "--hflip", "0"]
PA = ["--loss", "proxyanchor", "--lr", "2e-3", "--zsr-weight", "0"]
RANDOM = ["--m-per-class", "0"]
TRIALS: Dict[str, List[str]] = {
    "cnn6_pa": [*PLAIN, *PA, *NO_AUG, *RANDOM],
    "gap_cnn6_pa": [*PLAIN, *PA, *NO_AUG, *RANDOM, "--pool", "gap"],
    # the recipe before this search: test_resnet (stem reduces 4x), multi-similarity, 16 x 4 batches, mild crops
    "v1_recipe": [],
    # stem / early resolution: timm's test_resnet (4x stem) under the same loss, batches and transforms
    "resnet_pa": [*PA, *NO_AUG, *RANDOM],
    # batch composition: 16 classes x 4 images
    "cnn6_pa_m4": [*PLAIN, *PA, *NO_AUG, "--m-per-class", "4"],
    # loss: multi-similarity (a pair loss needs classes repeated in the batch: 16 x 4)
    "cnn6_ms_m4": [*PLAIN, "--loss", "multisimilarity", "--lr", "2e-3", "--zsr-weight", "0", *NO_AUG, "--m-per-class", "4"],
    # the v1 recipe's loss, batches, rate and crops, on the full-resolution network
    "cnn6_v1": [*PLAIN],
    # embedding head: none (the pooled 128-d features are the embedding)
    "cnn6_pa_noembed": [*PLAIN, *PA, *NO_AUG, *RANDOM, "--embed-dim", "0"],
}


def run_trial(family: str, name: str, force: bool) -> None:
    common = ["--dataset", "folder", "--data-dir", str(family_root(family, generator_seed=0)), "--recipe", str(BASE_RECIPE), *VAL, "--seed", "0"]
    try:
        train_run(OUT / family / name, [*common, *TRIALS[name]], force)
    except subprocess.CalledProcessError as exc:
        print(f"trial {family}/{name} failed: {exc}", flush=True)


def write_md() -> None:
    lines = ["# Recipe search: `folder-scratch` on three families (validation classes only)", "",
             "Re-run: `python benchmarks/folder_recipe_search.py --jobs 2` (finished trials are reused). Every trial: "
             "`examples/train.py --dataset folder --data-dir <family> --recipe benchmarks/folder_scratch_v1.yaml " + " ".join(VAL[:2]) +
             " --seed 0` plus its flags; 25 of the 100 training classes of generator seed 0 held out (chance P@1 = "
             "19/499 = 3.8 %), the test classes never read. P@1 in % at the last epoch; a candidate is judged by its "
             "worst family.", "",
             "| trial | flags | " + " | ".join(FAMILIES) + " | worst | MAP@R (" + ", ".join(FAMILIES) + ") | wall s |",
             "|---|---|" + "---|" * len(FAMILIES) + "---|---|---|"]
    for name, flags in TRIALS.items():
        runs = {f: read_run(OUT / f / name) for f in FAMILIES if (OUT / f / name / "results.json").is_file()}
        if not runs:
            continue
        p1 = [f"{100 * runs[f]['metrics']['precision_at_1']:.1f}" if f in runs else "–" for f in FAMILIES]
        worst = f"{100 * min(r['metrics']['precision_at_1'] for r in runs.values()):.1f}" if len(runs) == len(FAMILIES) else "–"
        maps = " / ".join(f"{100 * runs[f]['metrics']['map_at_r']:.1f}" if f in runs else "–" for f in FAMILIES)
        wall = np.median([r["wall_time_s"] for r in runs.values()])
        lines.append(f"| {name} | `{' '.join(flags) or '(the recipe file before the search)'}` | {' | '.join(p1)} | "
                     f"{worst} | {maps} | {wall:.0f} |")
    notes = RESULTS / "folder_search_notes.md"
    if notes.is_file():
        lines += ["", notes.read_text()]
    (ROOT / "benchmarks" / "folder_recipe_search.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", choices=list(TRIALS), help="trial names (default: all)")
    p.add_argument("--families", nargs="*", choices=FAMILIES, default=list(FAMILIES))
    p.add_argument("--jobs", type=int, default=1, help="trials side by side (one thread each when > 1)")
    p.add_argument("--force", action="store_true")
    p.add_argument("--report-only", action="store_true", help="rewrite the table from finished trials only")
    a = p.parse_args()
    if not a.report_only:
        for family in a.families:
            family_root(family, generator_seed=0)  # written once, before the trials read it
        work = [(family, name) for name in (a.only or TRIALS) for family in a.families]
        run_side_by_side(a.jobs, lambda job: run_trial(*job, a.force), work)
    write_md()
    print((ROOT / "benchmarks" / "folder_recipe_search.md").read_text())


if __name__ == "__main__":
    main()
