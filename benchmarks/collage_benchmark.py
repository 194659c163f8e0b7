#!/usr/bin/env python
"""The collage benchmark: GAP, max pooling, GSP and GSP+ZSR, same backbone / budget / recipe, >= 3 seeds.

Every run is ``examples/train.py`` with the default recipe (``examples/recipes/collage.yaml``) and
only ``--pool``, ``--zsr-weight`` and ``--seed`` changed, evaluated on the TEST classes (disjoint from
the training classes). For the GSP models the script then reloads each checkpoint and measures the
share of GSP pooling weight that falls on the object tile, averaged over the test set, next to the
object's share of the image area (what GAP gives it implicitly).

Outputs (``benchmarks/results/``): ``collage_results.json``, ``collage_results.md`` (the table of docs/benchmarks.md),
``collage_weight_maps.png`` (GSP+ZSR weights over test images), ``collage_metrics.png`` (MAP@R per
method and seed; object weight share vs area share). Runs already done are reused; ``--force`` redoes them.

    python benchmarks/collage_benchmark.py                                              # 4 methods x 3 seeds
    python benchmarks/collage_benchmark.py --seeds 0 1 2 3 4 --methods gap gsp_zsr
    python benchmarks/collage_benchmark.py --report-only                                # re-collect only
"""
from __future__ import annotations

import argparse
import json

import torch

from _runs import RESULTS, collect_methods, gsp_weight_maps, method_rows, plot_summary, train_run

RUNS = RESULTS / "collage_runs"

METHODS = {  # name -> (label, flags); everything else comes from the default recipe
    # Each method runs at the learning rate that was best for it on the validation split
    # (benchmarks/recipe_search.md): GAP 3e-2, max 1e-2, GSP+ZSR 1e-2 (the recipe's; GSP shares it).
    # GSP+ZSR is the recipe as it stands (its ZSR weight); GSP is the same without ZSR.
    "gap": ("GAP (timm global_pool='avg')", ["--pool", "gap", "--lr", "3e-2"]),
    "max": ("Max (timm global_pool='max')", ["--pool", "max", "--lr", "1e-2"]),
    "gsp": ("GSP", ["--pool", "gsp", "--zsr-weight", "0"]),
    "gsp_zsr": ("GSP+ZSR", ["--pool", "gsp"]),
}


def test_batches(model, results, batch_size: int = 200):
    """(images, normalised object-tile boxes) of the collage test classes under the run's evaluation transform."""
    from timm_gsp.data import build_dataset, build_eval_transform
    dataset = build_dataset("collage", results.dataset_root, "test", build_eval_transform(results.model.data_config))
    side = dataset.config.image_size  # object_boxes are in pixels of the untransformed image
    for start in range(0, len(dataset), batch_size):
        index = list(range(start, min(start + batch_size, len(dataset))))
        yield torch.stack([dataset[i][0] for i in index]), dataset.object_boxes[index].float() / side


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--force", action="store_true")
    p.add_argument("--report-only", action="store_true", help="collect the runs that exist, train nothing")
    p.add_argument("extra", nargs="*", help="extra train.py flags after --, applied to every run")
    a = p.parse_args()
    if not a.report_only:  # seed-major: an interrupted benchmark still has every method at the first seeds
        for seed in a.seeds:
            for m in a.methods:
                train_run(RUNS / f"{m}_seed{seed}", [*METHODS[m][1], "--seed", str(seed), *a.extra], a.force)
    summary = {"recipe": "examples/recipes/collage.yaml", "seeds": a.seeds, "eval_split": "test", "methods": {}}
    collect_methods(summary, {m: METHODS[m] for m in a.methods}, a.seeds, RUNS, test_batches)
    if not summary["methods"]:
        return
    lines = method_rows(summary)
    area = summary.get("object_area_share", 0.25)
    header = [f"Collage test classes (100 classes x 20 images, disjoint from the 100 training classes); "
              f"test_resnet from scratch, 64 px, 4 epochs, recipe `examples/recipes/collage.yaml`; mean ± std "
              f"(population) over seeds {a.seeds}, in %. Object weight share: mean share of the GSP pooling weight on "
              f"the object tile over the test set (the object covers {100 * area:.0f} % of the image, which is the weight "
              "GAP gives it). Wall time: one run of examples/train.py (training + evaluation) on 2 CPU cores.", ""]
    (RESULTS / "collage_results.md").write_text("\n".join(header + lines) + "\n")
    (RESULTS / "collage_results.json").write_text(json.dumps(summary, indent=2))
    plot_summary(summary, RESULTS / "collage_metrics.png", "object tile")
    gsp_weight_maps(summary, RUNS, test_batches, RESULTS / "collage_weight_maps.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
