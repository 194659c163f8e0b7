"""Training images/s fed from an image folder, against the same model fed from memory, in one run.

    python benchmarks/bench_folder_throughput.py                  # generates the scenes in a temp folder
    python benchmarks/bench_folder_throughput.py --data-dir data/scenes-50 --steps 30 --rounds 5

One training recipe (the project's image-folder recipe from scratch: ``test_resnet`` with
``output_stride=8`` at 96 px, embedding 128, GSP; AdamW; batches of 16 classes x 4 from
``MPerClassBatchSampler``; multi-similarity loss), fed three ways:

* ``folder``: a ``DataLoader`` over the scenes' train split on disk (PNG decode + timm train
  transform in ``--workers`` persistent worker processes), as ``examples/train.py`` runs it;
* ``cached``: the same over ``CachedDataset`` (decoded once up front; transform in the workers);
* ``memory``: pre-made batches of tensors, no decoding and no transform: the ceiling.

Each mode is timed for ``--steps`` steps per round, the modes alternating within and across rounds
so that machine noise hits all alike. Prints images/s and the ratio to ``memory`` (the folder run's
target is >= 0.7). On a shared machine the absolute numbers are noisy; the ratios are the result.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
from pytorch_metric_learning.losses import MultiSimilarityLoss
from torch.utils.data import DataLoader
from tqdm import tqdm

import timm_gsp
from timm_gsp.data import (
    Augmentation, CachedDataset, FolderDataset, MPerClassBatchSampler, build_train_transform, resolve_input_config,
)
from timm_gsp.data.generated.scenes import ScenesConfig, write_scenes

Batch = Tuple[torch.Tensor, torch.Tensor]
SCENES = ScenesConfig(num_classes=50, images_per_class=20)
IMAGE_SIZE = 96
CLASSES_PER_BATCH, M_PER_CLASS = 16, 4


def batches_forever(dataset, workers: int, pin_memory: bool, seed: int) -> Iterator[Batch]:
    """The training loop's batches, epoch after epoch (persistent workers outlive each epoch)."""
    sampler = MPerClassBatchSampler(dataset.labels, M_PER_CLASS, CLASSES_PER_BATCH * M_PER_CLASS, seed=seed)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0,
                        pin_memory=pin_memory)
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def cycle(batches: List[Batch]) -> Iterator[Batch]:
    while True:
        yield from batches


def images_per_second(train_step: Callable[[Batch], None], batches: Iterator[Batch], steps: int,
                      untimed: int, device: torch.device) -> float:
    """Throughput of ``steps`` training steps, after ``untimed`` ones that drain the batches the
    workers prepared while another mode was timed (they would come for free)."""
    for _ in range(untimed):
        train_step(next(batches))
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, images = time.perf_counter(), 0
    for _ in range(steps):
        batch = next(batches)
        train_step(batch)
        images += len(batch[1])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help=f"scenes folder (written there if absent; default: a temp folder) "
                                           f"of {SCENES.num_classes} classes x {SCENES.images_per_class} images")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="DataLoader workers")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per mode before the first round")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        root = write_scenes(Path(args.data_dir or Path(tmp) / "scenes"), SCENES)
        model = timm_gsp.create_model("test_resnet", embed_dim=128, output_stride=8).to(device)
        data_config = resolve_input_config(model, IMAGE_SIZE, crop_pct=1.0)
        transform = build_train_transform(data_config, Augmentation(scale=(0.8, 1), ratio=(0.9, 1.1), hflip=0.5,
                                                                    color_jitter=0))
        folder = FolderDataset(root, "train", transform)
        cached = CachedDataset(folder)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
        criterion = MultiSimilarityLoss(alpha=2, beta=50, base=0.5)

        def train_step(batch: Batch) -> None:
            images, labels = (t.to(device, non_blocking=True) for t in batch)
            optimizer.zero_grad(set_to_none=True)
            criterion(model(images), labels).backward()
            optimizer.step()

        pin = device.type == "cuda"
        memory_source = batches_forever(folder, 0, False, args.seed + 1)
        memory = [tuple(t.to(device) for t in next(memory_source)) for _ in range(8)]
        modes: Dict[str, Iterator[Batch]] = {
            "folder": batches_forever(folder, args.workers, pin, args.seed),
            "cached": batches_forever(cached, args.workers, pin, args.seed),
            "memory": cycle(memory),
        }
        prefetched = 2 * args.workers  # DataLoader's default prefetch_factor per worker
        model.train()
        for batches in modes.values():
            images_per_second(train_step, batches, args.warmup, prefetched, device)
        rates: Dict[str, List[float]] = {name: [] for name in modes}
        names = list(modes)
        order = [name for r in range(args.rounds) for name in (names if r % 2 == 0 else names[::-1])]
        for name in tqdm(order, desc="timing", unit="mode", leave=False):
            rates[name].append(images_per_second(train_step, modes[name], args.steps,
                                                 prefetched if name != "memory" else 0, device))
        # what the loaders supply with no training running: how far they are from being the limit
        supply = {name: images_per_second(lambda batch: None, modes[name], args.steps, prefetched, device)
                  for name in ("folder", "cached")}

    print(f"\ntest_resnet (output_stride 8, {IMAGE_SIZE} px, embedding 128, GSP), AdamW, batch "
          f"{CLASSES_PER_BATCH} classes x {M_PER_CLASS}, multi-similarity loss, on {device}; train split "
          f"{len(folder)} images / {folder.num_classes} classes; {args.workers} workers; cache {cached.nbytes / 2**20:.1f} MiB")
    print(f"{args.rounds} rounds x {args.steps} steps per mode; images/s per round, then median:")
    median = {name: sorted(values)[len(values) // 2] for name, values in rates.items()}
    for name in names:
        rounds = " ".join(f"{r:7.1f}" for r in rates[name])
        print(f"  {name:7s} {rounds}   median {median[name]:7.1f}   ratio to memory {median[name] / median['memory']:.2f}")
    print(f"folder / memory = {median['folder'] / median['memory']:.2f} (target >= 0.7), "
          f"cached / memory = {median['cached'] / median['memory']:.2f}")
    print(f"loaders alone, no training: folder {supply['folder']:.1f} images/s, cached {supply['cached']:.1f} images/s")
    command = ["python", "benchmarks/bench_folder_throughput.py", "--workers", str(args.workers), "--steps",
               str(args.steps), "--rounds", str(args.rounds), "--warmup", str(args.warmup), "--device", args.device,
               "--seed", str(args.seed)] + (["--data-dir", args.data_dir] if args.data_dir else [])
    print(f"reproduce: {shlex.join(command)}")


if __name__ == "__main__":
    sys.exit(main())
