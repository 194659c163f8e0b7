#!/usr/bin/env python
"""The from-scratch folder benchmark: GSP against timm's pools and GeM on three generated families.

Each family (``timm_gsp.data.generated``: ``scenes``, ``fashion``, ``collage``; 200 classes x 20 images of
96 px) is written to an image folder and trained with ``examples/train.py --dataset folder --data-dir D
--recipe folder-scratch``, only the pooling changed; the folder dataset's own rule splits the classes (the
first 100 train, the other 100 test) and the metrics are on the 100 test classes, which no recipe trial
read (``benchmarks/folder_recipe_search.py`` used validation classes carved from the training half).
``--generator-seed 1`` writes other folders of the same families (other classes, other images), and
``--family grid`` a folder of a fourth layout that no choice was made on (the scenes' objects, each
filling one cell of a 3 x 3 grid of photo crops), for the check on data the search never saw at all.
For GSP runs the script also measures the share of pooling weight on the class object's box, next to
the box's share of the image (the weight GAP gives it); for max-pooling runs (timm's ``max``, GSP with
``mix=max``) the share of channels whose maximum lies in the box.

Methods: timm's ``avg`` (GAP), ``max``, ``avgmax``, ``catavgmax``, GeM, the recipe's GSP (``gsp``), the
same with ZSR 0.1 (``gsp_zsr``), and the paper's head as the recipe shipped it before
(``gsp_paper``: the weighted sum, K 64, transport ratio 0.3, gamma 5).

Outputs (``benchmarks/results/``): ``folder_<family>[_g<seed>]_results.{json,md}``, ``..._metrics.png``,
``..._weight_maps.png``, ``..._max_vs_gsp.png`` (where GSP and max pooling take the vector from) and
``..._preview.png`` (images of a training and a test class, objects boxed). Finished runs are reused;
``--force`` redoes them.

    python benchmarks/folder_benchmark.py --family fashion --jobs 2                   # 8 methods x 3 seeds
    python benchmarks/folder_benchmark.py --family grid --generator-seed 5 --methods gap max gsp --jobs 2
    python benchmarks/folder_benchmark.py --family scenes --methods gap gsp --seeds 0 1 2 --jobs 2
    python benchmarks/folder_benchmark.py --family collage --report-only
"""
from __future__ import annotations

import argparse
import importlib
import math
from pathlib import Path

import torch
import yaml

from timm_gsp.data.generated import write_preview
from timm_gsp.layers.pool_spec import pool_spec

from _runs import (RESULTS, ROOT, add_run_arguments, collect_methods, method_rows, paired_rows, run_side_by_side, train_run,
                   write_report)

FAMILIES = ("scenes", "fashion", "collage")
# folders of a layout no choice was read on: name -> (generated family, overrides of its config)
UNSEEN = {"grid": ("scenes", {"layout": "grid"})}
RECIPE = yaml.safe_load((ROOT / "examples" / "recipes" / "folder-scratch.yaml").read_text())
RECIPE_GSP = pool_spec("gsp", **{key: RECIPE[key] for key in ("num_prototypes", "transport_ratio", "gamma")},
                       **{key: RECIPE[f"gsp_{key}"] for key in ("mix", "learn_ratio", "project", "norm") if f"gsp_{key}" in RECIPE})
# the paper's head at its defaults, every GSP flag explicit: what the recipe shipped before GSP's search
PAPER_GSP = ["--pool", "gsp", "--gsp-mix", "sum", "--num-prototypes", "64", "--transport-ratio", "0.3", "--gamma", "5",
             "--no-gsp-learn-ratio", "--no-gsp-project", "--gsp-norm", "unit", "--prototype-init", "kcenter"]
METHODS = {  # name -> (label, flags); everything else comes from the folder-scratch recipe
    "gap": ("GAP (timm global_pool='avg')", ["--pool", "gap"]),
    "max": ("Max (timm global_pool='max')", ["--pool", "max"]),
    "avgmax": ("AvgMax (timm 'avgmax')", ["--pool", "avgmax"]),
    "catavgmax": ("CatAvgMax (timm 'catavgmax')", ["--pool", "catavgmax"]),
    "gem": ("GeM (p learned from 3)", ["--pool", "gem"]),
    "gsp": (f"GSP (the recipe's `{RECIPE_GSP}`)", ["--pool", "gsp"]),
    "gsp_zsr": ("GSP + ZSR 0.1 (the paper's weight)", ["--pool", "gsp", "--zsr-weight", "0.1"]),
    "gsp_paper": ("GSP, the paper's weighted sum (the recipe's before the search)", PAPER_GSP),
}
SPEED = ["--workers", "0", "--cache-images"]  # small folders: decode once, no loader processes beside the jobs


def family_root(family: str, generator_seed: int, name: str = "", progress: bool = False, **overrides) -> Path:
    """The family's folder for ``generator_seed``, written on first use into the dataset cache (one folder
    per generator version, so a changed generator never meets an old folder). A config with ``overrides``
    (fields of the family's config) is kept in a folder of its own, called ``name``."""
    from timm_gsp.data import default_cache_root
    from timm_gsp.data.generated import default_config, write_family
    version = importlib.import_module(f"timm_gsp.data.generated.{family}").GENERATOR_VERSION
    root = default_cache_root() / f"{name or family}-s{generator_seed}-v{version}"
    return write_family(family, root, default_config(family, seed=generator_seed, **overrides), progress=progress)


def test_batches(model, results, root: Path, batch_size: int = 200):
    """(images, object boxes normalised to the model's view) of the test classes, under the run's evaluation
    transform; a centre crop (``crop_pct`` < 1: resize to floor(size / crop_pct), crop size) moves the boxes."""
    from timm_gsp.data import build_dataset, build_eval_transform
    from timm_gsp.data.generated import read_boxes, read_meta
    config = results.model.data_config
    dataset = build_dataset("folder", root, "test", build_eval_transform(config))
    side = read_meta(root)["config"]["image_size"]
    size = config["input_size"][-1]
    kept = size / math.floor(size / config.get("crop_pct", 1.0))  # share of the image side the crop keeps
    boxes = read_boxes(root)
    keys = [Path(p).relative_to(root).as_posix() for p in dataset.samples]
    for start in range(0, len(dataset), batch_size):
        index = range(start, min(start + batch_size, len(dataset)))
        images = torch.stack([dataset[i][0] for i in index])
        normalised = torch.tensor([boxes[keys[i]] for i in index], dtype=torch.float32) / side
        yield images, ((normalised - (1 - kept) / 2) / kept).clamp(0, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=[*FAMILIES, *UNSEEN], required=True)
    p.add_argument("--generator-seed", type=int, default=0, help="0: the search's folders (test classes); 1: other folders")
    add_run_arguments(p, METHODS)
    a = p.parse_args()
    name = f"folder_{a.family}" + (f"_g{a.generator_seed}" if a.generator_seed else "")
    runs_dir = RESULTS / f"{name}_runs"
    family, overrides = UNSEEN.get(a.family, (a.family, {}))
    root = family_root(family, a.generator_seed, a.family, **overrides)
    common = ["--dataset", "folder", "--data-dir", str(root), "--recipe", "folder-scratch", *SPEED]
    if not a.report_only:
        # seed-major: an interrupted benchmark still has every method at the first seeds
        work = [(m, seed) for seed in a.seeds for m in a.methods]
        run_side_by_side(a.jobs, lambda job: train_run(runs_dir / f"{job[0]}_seed{job[1]}",
                                                       [*common, *METHODS[job[0]][1], "--seed", str(job[1])], a.force), work)
    layout = "".join(f", {key} {value}" for key, value in overrides.items())
    summary = {"recipe": "examples/recipes/folder-scratch.yaml", "data": f"{family} (generator seed {a.generator_seed}"
               f"{layout}) 200 x 20, 96 px", "seeds": a.seeds, "eval_split": "test", "methods": {}}
    batches = lambda model, results, batch_size=200: test_batches(model, results, root, batch_size)  # noqa: E731
    collect_methods(summary, METHODS, a.seeds, runs_dir, batches)  # every method with finished runs
    if not summary["methods"]:
        return
    lines = [*method_rows(summary), "", *paired_rows(summary)]
    area = summary.get("object_area_share", 0.1)
    header = [f"`{family}` folder (generator seed {a.generator_seed}{layout}), test classes (100 classes x 20 images, disjoint "
              f"from the 100 training classes); recipe `examples/recipes/folder-scratch.yaml`, only the pooling changed; "
              f"mean ± std (population) over seeds {a.seeds}, in %; chance P@1 = 19/1999 = 1.0 %. Object weight share: "
              f"mean share of the GSP pooling weight inside the class object's box over the test set (the box covers "
              f"{100 * area:.0f} % of the image, the weight GAP gives it). Wall time: one run of examples/train.py "
              "(training + evaluation) on one CPU core, two runs side by side.", ""]
    write_report(name, summary, header, lines, runs_dir, batches)
    write_preview(root, RESULTS / f"{name}_preview.png", classes=2)  # a training and a test class, objects boxed
    print("\n".join(lines))
    print(f"(data: {root}; code: {ROOT / 'benchmarks' / 'folder_benchmark.py'})")


if __name__ == "__main__":
    main()
