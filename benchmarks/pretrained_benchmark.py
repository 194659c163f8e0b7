#!/usr/bin/env python
"""The paper's regime on this machine: fine-tune the backbone pretrained by ``pretrain_backbone.py`` with
the ``folder`` recipe, and compare GAP, Max, GSP and GSP + ZSR against the zero-shot floor.

Every run is ``examples/train.py --dataset folder --data-dir <target folder> --recipe folder
--model mobilenetv3_small_100 --pretrained-path benchmarks/weights/mobilenetv3_small_100.source.safetensors``
plus ``BUDGET`` (128 px, 8 epochs, evaluated once at the end: about three minutes on one core) and the
method's flags. The ``folder`` recipe's learning rates keep their ratios (backbone 10x slower than the
head and the prototypes, the loss parameters 10x faster; one warm-up epoch) and are scaled by
``LR_SCALE`` for the short budget; that scale, and the recipe's ``freeze_bn``, were chosen with the
other trials on validation classes. The target folders (``TARGETS``) are the generated families
(``timm_gsp.data.generated``, generator seed 0, 200 classes x 20 images of 96 px) and ``fashion_large``,
the fashion family with the object as large as in the paper's datasets, on which no recipe choice was
made; the source set the backbone learnt from has none of their classes.

Two stages:

* ``--stage val``: the choices (learning-rate scale, crops, BatchNorm, embedding layer, ZSR weight) on
  VALIDATION classes of ``scenes`` and ``fashion``: 25 of the 100 training classes held out
  (``--val-fraction 0.25``), the test classes never read. Table: ``benchmarks/results/pretrained_search.md``.
* ``--stage test`` (default): the methods on the 100 test classes, 3 seeds, mean +- std, per-seed
  differences to GAP and to the zero-shot floor, the object weight share and weight maps of GSP. The
  floor is the pretrained backbone with timm's average pool and no fine-tuning (its 1024-d pooled
  features), on the same images under the same evaluation transform.
  Outputs: ``benchmarks/results/pretrained_<target>_results.{md,json}``, ``..._metrics.png``,
  ``..._weight_maps.png``.

    python benchmarks/pretrained_benchmark.py --stage val --family scenes fashion --jobs 2
    python benchmarks/pretrained_benchmark.py --family scenes fashion_large --jobs 2   # 5 methods x 3 seeds each
    python benchmarks/pretrained_benchmark.py --family scenes --report-only
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Dict, List

import torch
import yaml

from _runs import (RESULTS, ROOT, add_run_arguments, collect_methods, method_rows, paired_rows, read_run, run_side_by_side, train_run,
                   write_report)
from folder_benchmark import SPEED, family_root, test_batches

MODEL = "mobilenetv3_small_100"
WEIGHTS = ROOT / "benchmarks" / "weights" / f"{MODEL}.source.safetensors"
IMG_SIZE = 128
BUDGET = ["--img-size", str(IMG_SIZE), "--epochs", "8", "--eval-every", "1000"]
FOLDER_RECIPE = yaml.safe_load((ROOT / "examples" / "recipes" / "folder.yaml").read_text())
FOLDER_LRS = {key: FOLDER_RECIPE[key] for key in ("lr", "backbone_lr", "prototype_lr", "loss_lr")}
LR_SCALE = 30  # chosen on validation classes (--stage val)


def lr_flags(scale: float) -> List[str]:
    """The folder recipe's four learning rates, all multiplied by ``scale`` (their ratios kept)."""
    return [x for key, lr in FOLDER_LRS.items() for x in (f"--{key.replace('_', '-')}", f"{lr * scale:g}")]


NO_CROP = ["--scale", "1", "1", "--ratio", "1", "1"]
LIVE_BN, FROZEN_BN = ["--no-freeze-bn"], ["--freeze-bn"]  # explicit, so every trial re-runs as it ran
PAPER_ZSR = ["--zsr-weight", "0.1"]  # the recipe's weight when the search ran; explicit for the same reason
# validation trials: flags on top of the common ones; GSP with the paper's ZSR weight (0.1) unless named
TRIALS: Dict[str, List[str]] = {
    # 1. learning-rate scale, with BatchNorm re-estimated (the recipe before this search)
    "gsp_zsr_lr1": [*lr_flags(1), *LIVE_BN, *PAPER_ZSR],
    "gsp_zsr_lr10": [*lr_flags(10), *LIVE_BN, *PAPER_ZSR],
    "gsp_zsr_lr30": [*lr_flags(30), *LIVE_BN, *PAPER_ZSR],
    "gsp_zsr_lr10_nocrop": [*lr_flags(10), *LIVE_BN, *NO_CROP, *PAPER_ZSR],
    "gap_lr10": [*lr_flags(10), *LIVE_BN, "--pool", "gap"],
    "gsp_lr10": [*lr_flags(10), *LIVE_BN, "--zsr-weight", "0"],
    "gsp_zsr1_lr10": [*lr_flags(10), *LIVE_BN, "--zsr-weight", "1"],
    # 2. no embedding layer: GAP then starts exactly at the zero-shot floor
    "gsp_zsr_lr10_embed0": [*lr_flags(10), *LIVE_BN, "--embed-dim", "0", *PAPER_ZSR],
    "gap_lr10_embed0": [*lr_flags(10), *LIVE_BN, "--pool", "gap", "--embed-dim", "0"],
    # 3. BatchNorm frozen
    "gsp_zsr_lr10_freezebn": [*lr_flags(10), *FROZEN_BN, *PAPER_ZSR],
    "gap_lr10_freezebn": [*lr_flags(10), *FROZEN_BN, "--pool", "gap"],
    "gsp_zsr_lr30_freezebn": [*lr_flags(30), *FROZEN_BN, *PAPER_ZSR],
    "gap_lr30_freezebn": [*lr_flags(30), *FROZEN_BN, "--pool", "gap"],
    "gsp_zsr_lr30_freezebn_e16": [*lr_flags(30), *FROZEN_BN, "--epochs", "16", "--eval-every", "4", *PAPER_ZSR],
    # 4. ZSR weight at the chosen setting
    "gsp_lr30_freezebn": [*lr_flags(30), *FROZEN_BN, "--zsr-weight", "0"],
    "gsp_zsr1_lr30_freezebn": [*lr_flags(30), *FROZEN_BN, "--zsr-weight", "1"],
    # 5. the recipe's own length (30 epochs, evaluated every 5): its rates as they are, and x10
    "gsp_lr1_freezebn_e30": [*lr_flags(1), *FROZEN_BN, "--zsr-weight", "0", "--epochs", "30", "--eval-every", "5"],
    "gsp_lr10_freezebn_e30": [*lr_flags(10), *FROZEN_BN, "--zsr-weight", "0", "--epochs", "30", "--eval-every", "5"],
}
METHODS = {  # name -> (label, flags); the final comparison on the test classes
    "gap": ("GAP (timm global_pool='avg')", ["--pool", "gap"]),
    "max": ("Max (timm global_pool='max')", ["--pool", "max"]),
    "avgmax": ("AvgMax (timm 'avgmax')", ["--pool", "avgmax"]),
    "catavgmax": ("CatAvgMax (timm 'catavgmax')", ["--pool", "catavgmax"]),
    "gem": ("GeM (p learned from 3)", ["--pool", "gem"]),
    "gsp": ("GSP (ZSR weight 0)", ["--pool", "gsp", "--zsr-weight", "0"]),
    "gsp_zsr": ("GSP + ZSR 0.1 (the paper's weight)", ["--pool", "gsp", "--zsr-weight", "0.1"]),
    "gsp_zsr1": ("GSP + ZSR 1", ["--pool", "gsp", "--zsr-weight", "1"]),
}


# target folder -> (generated family, overrides of its benchmark config). The three families as the
# from-scratch benchmark has them, and the fashion family at the object scale of the paper's fine-grained
# sets (a CUB bird or a Cars car fills a quarter to half of the image): the item 50-70 % of the image side
# instead of 28-40 %, among 1-2 distractor items instead of 2-4. Same classes (the same Fashion-MNIST items).
TARGETS = {"scenes": ("scenes", {}), "fashion": ("fashion", {}), "collage": ("collage", {}),
           "fashion_large": ("fashion", {"object_size": (0.5, 0.7), "num_distractors": (1, 2)})}


def target_root(target: str) -> Path:
    """The target's folder (generator seed 0), written on first use."""
    family, overrides = TARGETS[target]
    return family_root(family, 0, target.replace("_", "-"), **overrides)


def describe_target(target: str) -> str:
    """The target's folder in words, for the reports."""
    family, overrides = TARGETS[target]
    changed = "".join(f", {key} {value}" for key, value in overrides.items())
    return f"`{family}` folder (generator seed 0{changed})"


def common_flags(target: str) -> List[str]:
    return ["--dataset", "folder", "--data-dir", str(target_root(target)), "--recipe", "folder", "--model", MODEL,
            "--pretrained-path", str(WEIGHTS), *BUDGET, *SPEED]


@torch.no_grad()
def zero_shot(target: str, split: str, bn_passes: int = 0) -> Dict[str, float]:
    """Retrieval metrics of the pretrained backbone as it is: timm's average pool, no embedding layer, no
    fine-tuning, under the evaluation transform the fine-tuned runs use (the folder recipe's crop).

    ``bn_passes`` > 0: first re-estimate only BatchNorm's running statistics (train mode, no weight changed)
    over that many passes of the training images (the training half, less the validation classes when
    ``split == "val"``) under the folder recipe's training crops, 64 at a time: what fine-tuning does to
    them unless ``--freeze-bn``."""
    import timm_gsp
    from timm_gsp.data import build_dataset, build_eval_transform, build_train_transform
    from timm_gsp.data.transforms import Augmentation
    from timm_gsp.models.model_config import resolve_input_config
    from timm_gsp.retrieval.evaluate import evaluate_retrieval
    model = timm_gsp.create_model(MODEL, pretrained_path=WEIGHTS, pool="avg", embed_dim=0)
    config = resolve_input_config(model, IMG_SIZE, crop_pct=FOLDER_RECIPE["crop_pct"])
    root, extra = target_root(target), ({"val_fraction": 0.25, "val_seed": 0} if split == "val" else {})
    if bn_passes:
        crops = Augmentation(**{k: FOLDER_RECIPE[k] for k in ("scale", "ratio", "hflip", "color_jitter")})
        train = build_dataset("folder", root, "train", build_train_transform(config, crops), **extra)
        torch.manual_seed(0)
        random.seed(0)  # timm's random resized crop draws from Python's generator
        model.train()
        for _ in range(bn_passes):
            order = torch.randperm(len(train))
            for start in range(0, len(train) - 63, 64):
                model(torch.stack([train[i][0] for i in order[start:start + 64]]))
    dataset = build_dataset("folder", root, split, build_eval_transform(config), **extra)
    return evaluate_retrieval(model.eval(), {"test": dataset}, batch_size=200, progress=False)


def cached(path: Path, compute) -> Dict[str, float]:
    """``compute()``'s metrics, stored at ``path`` the first time."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(compute()))
    return json.loads(path.read_text())


def cached_zero_shot(path: Path, target: str, split: str) -> Dict[str, float]:
    return cached(path, lambda: zero_shot(target, split))


def run_validation(families: List[str], trials: List[str], jobs: int, force: bool) -> None:
    out = RESULTS / "pretrained_search"
    work = [(f, t) for t in trials for f in families]
    run_side_by_side(jobs, lambda job: train_run(out / job[0] / job[1], [*common_flags(job[0]), "--val-fraction", "0.25",
                                                                         "--seed", "0", *TRIALS[job[1]]], force), work)
    lines = ["# Fine-tuning choices on validation classes (`pretrained_benchmark.py --stage val`)", "",
             "Every trial: `examples/train.py --dataset folder --data-dir <family> --recipe folder --model " + MODEL +
             " --pretrained-path " + WEIGHTS.relative_to(ROOT).as_posix() + " " + " ".join(BUDGET) +
             " --val-fraction 0.25 --seed 0` plus its flags. "
             "25 of the 100 training classes held out (chance P@1 = 19/499 = 3.8 %), test classes never read. "
             "P@1 / MAP@R in %; each trial evaluated at its last epoch, except `_e16` and `_e30`, which keep the "
             "best (by MAP@R) of epochs 4, 8, 12, 16 and 5, 10, ..., 30 on these classes.", "",
             "| trial | flags | " + " | ".join(f"{f} P@1 | {f} MAP@R" for f in families) + " |",
             "|---|---|" + "---|---|" * len(families)]
    zs = {f: cached_zero_shot(out / f / "zero_shot.json", f, "val") for f in families}
    drift = {f: cached(out / f / "zero_shot_bn_reestimated.json", lambda f=f: zero_shot(f, "val", bn_passes=3)) for f in families}
    for label, metrics in (("zero-shot (pretrained, GAP, no fine-tuning)", zs),
                           ("zero-shot after re-estimating only BatchNorm's statistics on the training images", drift)):
        lines.append(f"| {label} | – | " + " | ".join(
            f"{100 * metrics[f]['precision_at_1']:.1f} | {100 * metrics[f]['map_at_r']:.1f}" for f in families) + " |")
    for name, flags in TRIALS.items():
        runs = {f: read_run(out / f / name) for f in families if (out / f / name / "results.json").is_file()}
        if runs:
            cells = [f"{100 * runs[f]['metrics']['precision_at_1']:.1f} | {100 * runs[f]['metrics']['map_at_r']:.1f}"
                     if f in runs else "– | –" for f in families]
            lines.append(f"| {name} | `{' '.join(flags)}` | " + " | ".join(cells) + " |")
    (RESULTS / "pretrained_search.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def run_test(target: str, methods: List[str], seeds: List[int], jobs: int, force: bool, report_only: bool) -> None:
    name = f"pretrained_{target}"
    runs_dir = RESULTS / f"{name}_runs"
    root = target_root(target)
    common = [*common_flags(target), *lr_flags(LR_SCALE)]
    if not report_only:
        work = [(m, seed) for seed in seeds for m in methods]  # seed-major: an interrupted run keeps whole seeds
        run_side_by_side(jobs, lambda job: train_run(runs_dir / f"{job[0]}_seed{job[1]}",
                                                     [*common, *METHODS[job[0]][1], "--seed", str(job[1])], force), work)
    summary = {"recipe": "examples/recipes/folder.yaml", "model": MODEL, "weights": WEIGHTS.relative_to(ROOT).as_posix(),
               "flags": [*BUDGET, *lr_flags(LR_SCALE)], "data": f"{describe_target(target)} 200 x 20, 96 px", "seeds": seeds,
               "eval_split": "test", "methods": {}}
    summary["zero_shot"] = cached_zero_shot(runs_dir / "zero_shot.json", target, "test")
    batches = lambda model, results, batch_size=200: test_batches(model, results, root, batch_size)  # noqa: E731
    collect_methods(summary, METHODS, seeds, runs_dir, batches)
    if not summary["methods"]:
        return
    zs = summary["zero_shot"]
    lines = [*method_rows(summary)]
    lines.insert(2, f"| zero-shot: the pretrained backbone, GAP, no fine-tuning | {100 * zs['precision_at_1']:.1f} | "
                    f"{100 * zs['r_precision']:.1f} | {100 * zs['map_at_r']:.1f} | – | – |")
    lines += ["", *paired_rows(summary), "", *above_floor_rows(summary)]
    area = summary.get("object_area_share", 0.1)
    header = [f"{describe_target(target)}, test classes (100 x 20 images, disjoint from the training classes "
              f"and from every source class of the pretrained backbone); `examples/train.py --recipe folder --model {MODEL} "
              f"--pretrained-path {summary['weights']} {' '.join(BUDGET)} {' '.join(lr_flags(LR_SCALE))}` plus the method's "
              f"flags; mean ± std (population) over seeds {seeds}, in %; chance P@1 = 1.0 %. Object weight share: share of "
              f"GSP's pooling weight inside the class object's box (the box covers {100 * area:.0f} % of the image, the "
              "weight GAP gives it). Wall time: one run on one CPU core, two runs side by side.", ""]
    write_report(name, summary, header, lines, runs_dir, batches)
    print("\n".join(header + lines))


def above_floor_rows(summary: Dict) -> List[str]:
    """Markdown rows: each method's P@1 / MAP@R minus the zero-shot floor, per seed."""
    zs = summary["zero_shot"]
    lines = ["| method minus zero-shot | P@1 per seed | MAP@R per seed |", "|---|---|---|"]
    for method in summary["methods"].values():
        cells = [" / ".join(f"{100 * (r[k] - zs[k]):+.1f}" for r in method["runs"]) for k in ("precision_at_1", "map_at_r")]
        lines.append(f"| {method['label'].split(' (')[0]} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["val", "test"], default="test")
    p.add_argument("--family", nargs="*", choices=list(TARGETS), default=["scenes"],
                   help="target folders: the generated families, and fashion_large")
    p.add_argument("--trials", nargs="*", default=list(TRIALS), choices=list(TRIALS), help="--stage val: which trials")
    add_run_arguments(p, METHODS)
    a = p.parse_args()
    if not WEIGHTS.is_file():
        raise SystemExit(f"{WEIGHTS} is missing: run benchmarks/pretrain_backbone.py first")
    if a.stage == "val":
        run_validation(a.family, [] if a.report_only else a.trials, a.jobs, a.force)
        return
    for target in a.family:
        run_test(target, a.methods, a.seeds, a.jobs, a.force, a.report_only)


if __name__ == "__main__":
    main()
