"""GSP vs GAP, measured side by side in one run: the head alone and a whole ResNet-50 train step.

    python benchmarks/bench_gsp_head.py                    # CPU defaults
    python benchmarks/bench_gsp_head.py --device cuda --amp bf16

Prints medians and the GSP / GAP ratios. Timings alternate GSP and GAP runs so that machine noise
hits both alike; no number here is a pass/fail threshold.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, List

import timm
import torch
from tqdm import tqdm

import timm_gsp


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def alternate_timings(steps: dict, repeats: int, warmup: int, device: torch.device) -> dict:
    """Median seconds of each callable, run in alternation ``repeats`` times after ``warmup``."""
    times = {name: [] for name in steps}
    names = list(steps)
    for i in tqdm(range(warmup + repeats), desc="timing", leave=False):
        for name in names if i % 2 == 0 else names[::-1]:  # neither side always runs first
            step = steps[name]
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def head_step(model: torch.nn.Module, features: torch.Tensor, autocast: Callable) -> Callable[[], None]:
    """forward_head + backward on fixed backbone features (the head alone)."""
    def step():
        features.grad = None
        with autocast():
            out = model.forward_head(features)
        out.float().square().mean().backward()
    return step


def train_step(model: torch.nn.Module, images: torch.Tensor, optimizer, autocast: Callable) -> Callable[[], None]:
    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            out = model(images)
        out.float().square().mean().backward()
        optimizer.step()
    return step


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-prototypes", type=int, default=64)
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier (or embedding) size after pooling")
    parser.add_argument("--feature-size", type=int, default=7, help="H = W of the backbone features for the head test")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--train-batch-size", type=int, default=None, help="batch of the end-to-end step (default: --batch-size)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--train-repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    parser.add_argument("--skip-train-step", action="store_true")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    autocast = lambda: torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)  # noqa: E731
    torch.manual_seed(0)
    spec = timm_gsp.format_gsp_spec(num_prototypes=args.num_prototypes)
    models = {
        "gsp": timm.create_model(args.model, global_pool=spec, num_classes=args.num_classes).to(device),
        "gap": timm.create_model(args.model, global_pool="avg", num_classes=args.num_classes).to(device),
    }
    models["gap"].load_state_dict(models["gsp"].state_dict(), strict=False)

    channels = models["gap"].num_features
    features = torch.randn(args.batch_size, channels, args.feature_size, args.feature_size, device=device)
    print(f"{args.model} head: batch {args.batch_size}, {channels} x {args.feature_size} x {args.feature_size}, "
          f"K = {args.num_prototypes}, {args.num_classes} outputs, device {device}, amp {args.amp}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    # Frozen backbone (features need no gradient) and fine-tuning (the gradient flows back into
    # the backbone: GSP adds its third K x C x N product there, GAP only a broadcast).
    grad_features = features.detach().requires_grad_(True)
    for label, feats in (("head fwd+bwd, frozen backbone ", features), ("head fwd+bwd, grad to features", grad_features)):
        timed = alternate_timings({k: head_step(m, feats, autocast) for k, m in models.items()}, args.repeats, 3, device)
        print(f"  {label}   GSP {timed['gsp'] * 1e3:8.2f} ms   GAP {timed['gap'] * 1e3:8.2f} ms   "
              f"ratio GSP/GAP {timed['gsp'] / timed['gap']:.2f}x")
    head = timed  # the fine-tuning head: what the train step below runs

    if args.skip_train_step:
        return
    batch = args.train_batch_size or args.batch_size
    images = torch.randn(batch, 3, args.img_size, args.img_size, device=device)
    steps = {
        name: train_step(model, images, torch.optim.SGD(model.parameters(), lr=1e-4), autocast)
        for name, model in models.items()
    }
    train = alternate_timings(steps, args.train_repeats, 3, device)  # CPU steps speed up over the first few
    print(f"  train step     GSP {train['gsp'] * 1e3:8.1f} ms   GAP {train['gap'] * 1e3:8.1f} ms   "
          f"ratio GSP/GAP {train['gsp'] / train['gap']:.3f}x  (overhead {100 * (train['gsp'] / train['gap'] - 1):+.1f}%)"
          f"  [batch {batch} x {args.img_size}px]")
    # Whole-step timings on CPU drift by 10 % and more between steps, far more than the head
    # costs; the head's measured extra time, as a share of the GAP step, is the steadier figure.
    if batch == args.batch_size:
        extra = head["gsp"] - head["gap"]
        print(f"  GSP head's extra {extra * 1e3:.1f} ms per step = {100 * extra / train['gap']:+.2f}% of the GAP train step")


if __name__ == "__main__":
    main()
