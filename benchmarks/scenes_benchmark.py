#!/usr/bin/env python
"""The scenes benchmark: an image folder on disk, trained with ``--dataset folder --recipe folder-scratch``.

The generator (``timm_gsp.data.scenes``) writes 200 classes x 20 images of 96 px to a folder: one small
object per image (class-specific silhouette and duotone photo fill, random position / scale / rotation,
not aligned to any feature grid) on clutter cut from real photographs. The folder dataset's own rule
splits the classes: the first 100 (sorted names) train, the other 100 test. Every run is
``examples/train.py --dataset folder --data-dir D --recipe folder-scratch`` with only the pooling and the
ZSR weight changed (the recipe's learning rate was the best one for GSP and for GAP alike), evaluated
on the test classes. For GSP runs the script also measures the share of pooling weight that falls on
the object's box, next to the box's share of the image (GAP's implicit weight).

``--layout grid`` and ``--layout small`` are the checks on other data, folders that no recipe trial read the
test classes of: ``grid`` (other classes: generator seed 1) puts the object in one random cell of a 3 x 3 grid
and a photo crop in every other cell; ``small`` (generator seed 2, never used for any trial) keeps the free
layout with smaller objects (19-29 px across, about half the area).

Outputs (``benchmarks/results/``): ``scenes_results.json``, ``scenes_results.md`` (the README table),
``scenes_metrics.png``, ``scenes_weight_maps.png`` (``scenes_<layout>_*`` for the checks). Finished runs
are reused; ``--force`` redoes them.

    python benchmarks/scenes_benchmark.py                       # 4 methods x 3 seeds, ~30 min on 2 cores
    python benchmarks/scenes_benchmark.py --layout grid --methods gap gsp gsp_zsr
    python benchmarks/scenes_benchmark.py --layout small --methods gap gsp
    python benchmarks/scenes_benchmark.py --report-only
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

import torch

from _runs import RESULTS, ROOT, collect_methods, gsp_weight_maps, method_rows, paired_rows, plot_summary, train_run

METHODS = {  # name -> (label, flags); everything else comes from the folder-scratch recipe
    "gap": ("GAP (timm global_pool='avg')", ["--pool", "gap"]),
    "max": ("Max (timm global_pool='max')", ["--pool", "max"]),
    "gsp": ("GSP", ["--pool", "gsp", "--zsr-weight", "0"]),
    "gsp_zsr": ("GSP+ZSR", ["--pool", "gsp", "--zsr-weight", "0.03"]),  # the recipe runs without ZSR
}


LAYOUTS = {  # name -> (table title, ScenesConfig fields)
    "free": ("Scenes", {"layout": "free", "seed": 0}),
    "grid": ("Grid scenes", {"layout": "grid", "seed": 1}),
    "small": ("Small-object scenes", {"layout": "free", "seed": 2, "object_size": (0.2, 0.3)}),
}


def results_name(layout: str) -> str:
    return "scenes" if layout == "free" else f"scenes_{layout}"


def scenes_root(layout: str, data_dir: Optional[Path] = None) -> Path:
    """The layout's image folder, written on first use (default: in the dataset cache)."""
    from timm_gsp.data import default_cache_root
    from timm_gsp.data.scenes import ScenesConfig, write_scenes
    return write_scenes(data_dir or default_cache_root() / f"{results_name(layout)}-v1", ScenesConfig(**LAYOUTS[layout][1]))


def test_batches(model, results, root: Path, batch_size: int = 200):
    """(images, normalised object boxes) of the test classes, under the run's evaluation transform."""
    from timm_gsp.data import build_dataset, build_eval_transform
    from timm_gsp.data.scenes import read_scene_boxes, read_scenes_meta
    dataset = build_dataset("folder", root, "test", build_eval_transform(results.model.data_config))
    side = read_scenes_meta(root)["config"]["image_size"]
    boxes = read_scene_boxes(root)
    keys = [str(Path(p).relative_to(root)) for p in dataset.samples]
    for start in range(0, len(dataset), batch_size):
        index = range(start, min(start + batch_size, len(dataset)))
        images = torch.stack([dataset[i][0] for i in index])
        yield images, torch.tensor([boxes[keys[i]] for i in index], dtype=torch.float32) / side


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--layout", choices=sorted(LAYOUTS), default="free", help="free: the benchmark; grid, small: the checks on other data")
    p.add_argument("--data-dir", type=Path, default=None, help="where the image folder is written (default: the cache)")
    p.add_argument("--force", action="store_true")
    p.add_argument("--report-only", action="store_true", help="collect the runs that exist, train nothing")
    a = p.parse_args()
    name = results_name(a.layout)
    runs_dir = RESULTS / f"{name}_runs"
    root = scenes_root(a.layout, a.data_dir)
    common = ["--dataset", "folder", "--data-dir", str(root), "--recipe", "folder-scratch"]
    if not a.report_only:  # seed-major: an interrupted benchmark still has every method at the first seeds
        for seed in a.seeds:
            for m in a.methods:
                train_run(runs_dir / f"{m}_seed{seed}", [*common, *METHODS[m][1], "--seed", str(seed)], a.force)
    summary = {"recipe": "examples/recipes/folder-scratch.yaml", "data": f"{name} 200 x 20, 96 px", "seeds": a.seeds,
               "eval_split": "test", "methods": {}}
    batches = lambda model, results, batch_size=200: test_batches(model, results, root, batch_size)  # noqa: E731
    collect_methods(summary, {m: METHODS[m] for m in a.methods}, a.seeds, runs_dir, batches)
    if not summary["methods"]:
        return
    lines = [*method_rows(summary), "", *paired_rows(summary)]
    area = summary.get("object_area_share", 0.1)
    header = [f"{LAYOUTS[a.layout][0]} test classes (100 classes x 20 images, disjoint from the 100 training classes), read from an "
              f"image folder; recipe `examples/recipes/folder-scratch.yaml` (test_resnet from scratch, output stride 8, "
              f"96 px); mean ± std (population) over seeds {a.seeds}, in %. Object weight share: mean share of the GSP "
              f"pooling weight inside the object's box over the test set (the box covers {100 * area:.0f} % of the image, "
              "the weight GAP gives it). Wall time: one run of examples/train.py (training + evaluation) on 2 CPU cores.", ""]
    (RESULTS / f"{name}_results.md").write_text("\n".join(header + lines) + "\n")
    (RESULTS / f"{name}_results.json").write_text(json.dumps(summary, indent=2))
    plot_summary(summary, RESULTS / f"{name}_metrics.png", "object box")
    gsp_weight_maps(summary, runs_dir, batches, RESULTS / f"{name}_weight_maps.png")
    print("\n".join(lines))
    print(f"(data: {root}; code: {ROOT / 'benchmarks' / 'scenes_benchmark.py'})")


if __name__ == "__main__":
    main()
