#!/usr/bin/env python
"""The stand-in for ImageNet weights: a real timm architecture pretrained here as a classifier on a large,
varied source set whose classes no benchmark tests on.

Nothing can be downloaded on this machine, and the paper's regime (fine-tune a pretrained backbone)
needs pretrained weights. This script makes them: timm's ``mobilenetv3_small_100`` (a model any timm
user can pick; 1.5 M backbone parameters, so its checkpoint, classifier included, stays under 10 MB and
is committed) trained from scratch to classify the 670 classes of four kinds of images (96 px) below:

* ``scenes``, ``fashion``, ``collage``: 200 classes x 40 images each of the project's generated families
  (``timm_gsp.data.generated``), written with generator seed ``SOURCE_SEED`` = 1000, so their class
  objects are other draws than the benchmarks' (seeds 0 and 1). Fashion classes are single real
  Fashion-MNIST items: a source class whose item is a class of a benchmark folder (seed 0 or 1) is dropped
  (the count is printed and recorded), so not even the same garment is a class on both sides;
* ``photos``: the 18 scikit-image photographs cut into 2 x 2 quadrants (72 classes), 40 random zoomed
  crops of each quadrant, so the network also sees natural textures and objects.

Training (one home for every setting: ``RECIPE`` below): images decoded once into memory, augmented on
the batch as tensors (random resized crop to 128 px of scale 0.25-1, horizontal flip, brightness /
contrast / saturation jitter), AdamW, label smoothing 0.1, one warm-up epoch then cosine, 5 images per
class held out to measure top-1 accuracy at the end. 33 minutes on 2 CPU cores.

Outputs: ``benchmarks/weights/mobilenetv3_small_100.source.safetensors`` (timm's key names, the
classifier included: ``timm.create_model("mobilenetv3_small_100", pretrained=True,
pretrained_cfg_overlay=dict(file=...))`` or ``examples/train.py --pretrained-path ...`` load it, and timm
drops the classifier for any other ``num_classes``), and ``benchmarks/results/pretrain_backbone.json``
(recipe, source classes, accuracy per kind, per-epoch loss, sha256 of the weights).

    python benchmarks/pretrain_backbone.py              # refuses to replace existing weights
    python benchmarks/pretrain_backbone.py --force      # retrain (same seed, same recipe)
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from folder_benchmark import family_root  # noqa: E402
from timm_gsp.utils import file_sha256, write_file_atomic  # noqa: E402

WEIGHTS = ROOT / "benchmarks" / "weights"
RESULTS = ROOT / "benchmarks" / "results"
SOURCE_SEED = 1000          # generator seed of the source families; the benchmarks use 0 and 1
BENCHMARK_SEEDS = (0, 1)    # folders whose fashion items may not be source classes
RECIPE = {
    "model": "mobilenetv3_small_100",
    "classes_per_family": 200,
    "images_per_class": 40,
    "held_out_per_class": 5,
    "photo_grid": 2,              # each photograph cut into 2 x 2 quadrant classes
    "image_size": 96,             # stored images
    "input_size": 128,            # network input (the fine-tuning benchmark's size)
    "scale": (0.25, 1.0),         # random resized crop: area share
    "ratio": (3 / 4, 4 / 3),
    "hflip": 0.5,
    "jitter": 0.4,                # brightness, contrast, saturation factors in 1 +- this
    "epochs": 14,
    "batch_size": 128,
    "lr": 2e-3,
    "weight_decay": 0.02,
    "warmup_epochs": 1,
    "label_smoothing": 0.1,
    "drop_rate": 0.1,
    "seed": 0,
}


def source_folders() -> Dict[str, Path]:
    """The three generated families of the source set, written into the dataset cache on first use."""
    sizes = {k: RECIPE[k] for k in ("images_per_class", "image_size")}
    return {family: family_root(family, SOURCE_SEED, f"pretrain-{family}", progress=True,
                                num_classes=RECIPE["classes_per_family"], **sizes)
            for family in ("scenes", "fashion", "collage")}


def benchmark_fashion_items() -> set:
    """Fashion-MNIST indices that are classes of a benchmark fashion folder (generator seeds 0 and 1)."""
    from timm_gsp.data.generated.fashion import FashionConfig, class_items, load_fashion_mnist
    count = len(load_fashion_mnist().images)
    return {int(i) for seed in BENCHMARK_SEEDS for i in class_items(FashionConfig(seed=seed), count)[0]}


def read_folder(root: Path, skip: set = frozenset()) -> List[np.ndarray]:
    """One uint8 (N, S, S, 3) array per class folder ``root/class_NNN`` (sorted), except those in ``skip``."""
    from PIL import Image
    return [np.stack([np.asarray(Image.open(f).convert("RGB")) for f in sorted(d.glob("*.png"))])
            for d in sorted(root.glob("class_*")) if d.name not in skip]


def photo_classes(rng: np.random.Generator) -> List[np.ndarray]:
    """Quadrant classes of the scikit-image photographs: per class, random zoomed crops (N, S, S, 3)."""
    from PIL import Image

    from timm_gsp.data.generated.scenes import photo_pool
    side, grid, n = RECIPE["image_size"], RECIPE["photo_grid"], RECIPE["images_per_class"]
    classes = []
    for photo in photo_pool():
        h, w = photo.shape[0] // grid, photo.shape[1] // grid
        for qy in range(grid):
            for qx in range(grid):
                quadrant = photo[qy * h:(qy + 1) * h, qx * w:(qx + 1) * w]
                crops = []
                for _ in range(n):
                    c = int(min(h, w) * rng.uniform(0.35, 1.0))
                    y, x = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
                    crops.append(np.asarray(Image.fromarray(quadrant[y:y + c, x:x + c]).resize((side, side), Image.BILINEAR)))
                classes.append(np.stack(crops))
    return classes


def build_source() -> Tuple[Dict[str, torch.Tensor], Dict]:
    """(tensors: train/held-out images uint8 (N, 3, S, S), labels (N,), kinds (N,)), description)."""
    folders = source_folders()
    banned = benchmark_fashion_items()
    meta = json.loads((folders["fashion"] / "fashion.json").read_text())
    dropped = {name for name, c in meta["classes"].items() if c["item"] in banned}
    kinds = {"scenes": read_folder(folders["scenes"]), "fashion": read_folder(folders["fashion"], dropped),
             "collage": read_folder(folders["collage"]), "photos": photo_classes(np.random.default_rng([SOURCE_SEED, 7]))}
    held = RECIPE["held_out_per_class"]
    parts = {"train": ([], [], []), "held_out": ([], [], [])}
    label = 0
    for kind_id, classes in enumerate(kinds.values()):
        for images in classes:
            for split, chunk in (("train", images[:-held]), ("held_out", images[-held:])):
                parts[split][0].append(torch.from_numpy(chunk).permute(0, 3, 1, 2))
                parts[split][1].append(torch.full((len(chunk),), label))
                parts[split][2].append(torch.full((len(chunk),), kind_id))
            label += 1
    tensors = {f"{split}_{name}": torch.cat(values) for split, lists in parts.items()
               for name, values in zip(("images", "labels", "kinds"), lists)}
    description = {"kinds": {k: len(v) for k, v in kinds.items()}, "num_classes": label,
                   "fashion_classes_dropped": len(dropped), "generator_seed": SOURCE_SEED,
                   "folders": {k: v.name for k, v in folders.items()},
                   "train_images": len(tensors["train_labels"]), "held_out_images": len(tensors["held_out_labels"])}
    return tensors, description


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random resized crop + flip + colour jitter of a batch, as one affine resampling per image.

    Args:
        images: uint8 (B, 3, S, S).
    Returns:
        float (B, 3, input_size, input_size) in [0, 1].
    """
    b, size = len(images), RECIPE["input_size"]
    u = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    area = RECIPE["scale"][0] + (RECIPE["scale"][1] - RECIPE["scale"][0]) * u(b)
    log_lo, log_hi = math.log(RECIPE["ratio"][0]), math.log(RECIPE["ratio"][1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * u(b))
    sx, sy = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)  # crop side / image side
    cx, cy = (1 - sx) * (2 * u(b) - 1), (1 - sy) * (2 * u(b) - 1)                      # crop centre in [-1, 1]
    flip = torch.where(u(b) < RECIPE["hflip"], -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx * flip, cx, sy, cy
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    x = F.grid_sample(images.float() / 255, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    j = RECIPE["jitter"]
    bright, contrast, sat = (1 + j * (2 * u(3, b, 1, 1, 1) - 1)).unbind(0)
    x = x * bright
    x = (x - x.mean((1, 2, 3), keepdim=True)) * contrast + x.mean((1, 2, 3), keepdim=True)
    grey = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return ((x - grey) * sat + grey).clamp(0, 1)


def plain(images: torch.Tensor) -> torch.Tensor:
    """The evaluation view: the whole image resized to the input size, float in [0, 1]."""
    return F.interpolate(images.float() / 255, size=RECIPE["input_size"], mode="bilinear", antialias=True, align_corners=False)


@torch.no_grad()
def accuracy(model, images: torch.Tensor, labels: torch.Tensor, kinds: torch.Tensor, names: List[str], normalise) -> Dict:
    """Top-1 accuracy on held-out images, overall and per kind of image."""
    model.eval()
    correct = torch.cat([model(normalise(plain(images[i:i + 256]))).argmax(1) == labels[i:i + 256]
                         for i in range(0, len(images), 256)])
    out = {"top1": float(correct.float().mean())}
    out.update({f"top1_{name}": float(correct[kinds == k].float().mean()) for k, name in enumerate(names)})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--force", action="store_true", help="retrain and replace the committed weights")
    p.add_argument("--epochs", type=int, default=RECIPE["epochs"], help="(for a quick look; the weights use the recipe's)")
    p.add_argument("--out", type=Path, default=WEIGHTS / f"{RECIPE['model']}.source.safetensors")
    a = p.parse_args()
    if a.out.exists() and not a.force:
        sys.exit(f"{a.out} exists; pass --force to retrain and replace it")
    import timm
    from safetensors.torch import save_file
    from timm.scheduler import CosineLRScheduler
    from tqdm import tqdm

    torch.manual_seed(RECIPE["seed"])
    start = time.time()
    data, description = build_source()
    names = list(description["kinds"])
    print(f"source set: {description}", flush=True)
    model = timm.create_model(RECIPE["model"], num_classes=description["num_classes"], drop_rate=RECIPE["drop_rate"])
    cfg = model.pretrained_cfg
    mean, std = torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    normalise = lambda x: (x - mean) / std  # noqa: E731
    opt = torch.optim.AdamW(model.parameters(), lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"])
    n, bs = len(data["train_labels"]), RECIPE["batch_size"]
    steps = n // bs
    sched = CosineLRScheduler(opt, t_initial=a.epochs * steps, warmup_t=RECIPE["warmup_epochs"] * steps,
                              warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)
    gen = torch.Generator().manual_seed(RECIPE["seed"])
    history = []
    for epoch in range(a.epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        losses = []
        for step in tqdm(range(steps), desc=f"epoch {epoch + 1}/{a.epochs}", mininterval=10):
            index = order[step * bs:(step + 1) * bs]
            logits = model(normalise(augment(data["train_images"][index], gen)))
            loss = F.cross_entropy(logits, data["train_labels"][index], label_smoothing=RECIPE["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step_update(epoch * steps + step + 1)
            losses.append(loss.item())
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "elapsed_s": round(time.time() - start)})
        print(history[-1], flush=True)
    held = accuracy(model, data["held_out_images"], data["held_out_labels"], data["held_out_kinds"], names, normalise)
    train_view = accuracy(model, data["train_images"][::10], data["train_labels"][::10], data["train_kinds"][::10], names, normalise)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    write_file_atomic(a.out, lambda tmp: save_file(state, str(tmp), metadata={
        "arch": RECIPE["model"], "num_classes": str(description["num_classes"])}))
    record = {"weights": a.out.relative_to(ROOT).as_posix() if a.out.is_relative_to(ROOT) else a.out.name,
              "sha256": file_sha256(a.out), "size_bytes": a.out.stat().st_size, "recipe": {**RECIPE, "epochs": a.epochs},
              "source": description, "held_out_accuracy": held, "train_accuracy_every_10th": train_view,
              "history": history, "wall_time_s": round(time.time() - start), "torch": torch.__version__,
              "timm": timm.__version__}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pretrain_backbone.json").write_text(json.dumps(record, indent=2))
    print(json.dumps({k: record[k] for k in ("weights", "sha256", "held_out_accuracy", "wall_time_s")}, indent=2))


if __name__ == "__main__":
    main()
