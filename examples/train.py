#!/usr/bin/env python
"""Fine-tune any timm model with Generalized Sum Pooling (or GAP) for deep metric learning.

    python examples/train.py                                            # embedded collage data
    python examples/train.py --recipe cub --data-dir /data/CUB_200_2011 # a paper benchmark
    torchrun --nproc_per_node 8 examples/train.py --recipe sop --data-dir /data/Stanford_Online_Products

Every run writes to ``--output``: ``metrics.jsonl`` (one line per evaluation), ``metrics.png``,
``checkpoint/`` (safetensors, atomic, resumable with ``--resume``), ``results.json`` (final test
metrics + the full configuration) and, for GSP, ``gsp_weights.png`` (pooling weights over test
images). Recipes live in ``examples/recipes/*.yaml``; command-line flags override them.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
import yaml
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

import timm_gsp
from timm_gsp.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from timm_gsp.data import (Augmentation, MPerClassBatchSampler, build_dataset, build_eval_transform,
                           build_train_transform, carve_validation, evaluation_splits, resolve_input_config)
from timm_gsp.evaluate import evaluate_retrieval
from timm_gsp.losses import GSPMetricLoss

RECIPES = Path(__file__).resolve().parent / "recipes"
METRIC_LOSSES = {
    "contrastive": lambda n, d: pml_losses.ContrastiveLoss(pos_margin=0.0, neg_margin=0.5),
    "triplet": lambda n, d: pml_losses.TripletMarginLoss(margin=0.1),
    "multisimilarity": lambda n, d: pml_losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5),
    "proxyanchor": lambda n, d: pml_losses.ProxyAnchorLoss(n, d, margin=0.1, alpha=32),
    "proxynca": lambda n, d: pml_losses.ProxyNCALoss(n, d, softmax_scale=1),
    "normsoftmax": lambda n, d: pml_losses.NormalizedSoftmaxLoss(n, d, temperature=0.05),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="collage",
                        help="a name in examples/recipes (collage, cub, cars, sop, inshop) or a YAML file")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=["cub", "cars", "sop", "inshop", "folder", "collage"])
    data.add_argument("--data-dir", default=None, help="dataset root (collage: cache folder, default ~/.cache/timm_gsp)")
    data.add_argument("--val-fraction", type=float, default=0.0,
                      help="hold out this share of TRAIN classes and evaluate on it instead of the test classes")
    data.add_argument("--train-fraction", type=float, default=None, help="folder dataset: share of classes for training")
    data.add_argument("--img-size", type=int, default=None, help="input size (default: the model's)")
    data.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images (counted) instead of failing")
    data.add_argument("--workers", type=int, default=2)
    model = parser.add_argument_group("model")
    model.add_argument("--model", help="any timm model name")
    model.add_argument("--pretrained", action="store_true", help="start from the backbone's pretrained weights")
    model.add_argument("--pool", choices=["gsp", "gap", "max"], default="gsp")
    model.add_argument("--embed-dim", type=int, default=512)
    model.add_argument("--num-prototypes", type=int, default=64)
    model.add_argument("--transport-ratio", type=float, default=0.3)
    model.add_argument("--gamma", type=float, default=5.0)
    model.add_argument("--prototype-init", choices=["random", "kcenter"], default="kcenter",
                       help="kcenter: greedy farthest-point init from local features of training images")
    model.add_argument("--drop-path", type=float, default=None)
    model.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs, metavar="KEY=VALUE",
                       help="extra timm.create_model arguments, e.g. output_stride=8")
    aug = parser.add_argument_group("augmentation and evaluation transform (timm train.py's names and meanings)")
    aug.add_argument("--scale", type=float, nargs=2, default=[0.08, 1.0], metavar="PCT", help="RandomResizedCrop area range")
    aug.add_argument("--ratio", type=float, nargs=2, default=[3 / 4, 4 / 3], metavar="RATIO", help="RandomResizedCrop aspect range")
    aug.add_argument("--hflip", type=float, default=0.5, help="horizontal flip probability")
    aug.add_argument("--vflip", type=float, default=0.0, help="vertical flip probability")
    aug.add_argument("--color-jitter", type=float, default=0.4, metavar="PCT", help="colour jitter strength (0: none)")
    aug.add_argument("--aa", default=None, metavar="NAME", help="AutoAugment / RandAugment policy, e.g. rand-m9-mstd0.5")
    aug.add_argument("--reprob", type=float, default=0.0, metavar="PCT", help="random erasing probability")
    aug.add_argument("--crop-pct", type=float, default=None, help="evaluation centre-crop share (default: the model's)")
    aug.add_argument("--interpolation", default=None, help="resize interpolation, train and eval (default: the model's)")
    loss = parser.add_argument_group("loss")
    loss.add_argument("--loss", choices=sorted(METRIC_LOSSES), default="multisimilarity")
    loss.add_argument("--zsr-weight", type=float, default=0.1, help="weight of the zero-shot regulariser (GSP only)")
    loss.add_argument("--zsr-embed-dim", type=int, default=None, help="ZSR class-embedding size (default: the loss's)")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--opt", choices=["adamw", "adam"], default="adamw")
    optim.add_argument("--lr", type=float, default=1e-4, help="learning rate of the embedding head")
    optim.add_argument("--backbone-lr", type=float, default=None, help="default: --lr")
    optim.add_argument("--prototype-lr", type=float, default=None, help="default: --lr")
    optim.add_argument("--loss-lr", type=float, default=None, help="proxies and ZSR class embeddings (default: --lr)")
    optim.add_argument("--weight-decay", type=float, default=1e-4)
    optim.add_argument("--sched", choices=["cosine", "none"], default="cosine")
    optim.add_argument("--warmup-epochs", type=float, default=0.0)
    optim.add_argument("--clip-grad", type=float, default=None)
    optim.add_argument("--epochs", type=int, default=10)
    optim.add_argument("--batch-size", type=int, default=64, help="per process")
    optim.add_argument("--m-per-class", type=int, default=4)
    optim.add_argument("--amp", choices=["auto", "bf16", "fp16", "none"], default="auto",
                       help="auto: bf16 on CUDA (fp16 where bf16 is missing), none on CPU")
    run = parser.add_argument_group("run")
    run.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs (and after the last)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--output", default="output/train")
    run.add_argument("--resume", nargs="?", const="auto", default=None,
                     help="continue from a checkpoint folder (default: OUTPUT/checkpoint)")
    run.add_argument("--stop-after-epoch", type=int, default=None,
                     help="end this process after that epoch, checkpoint kept (time-boxed jobs, tests)")
    run.add_argument("--no-progress", action="store_true")
    return parser


class ParseKwargs(argparse.Action):
    """``KEY=VALUE ...`` -> dict, values read as Python literals when they are (timm train.py's --model-kwargs)."""

    def __call__(self, parser, namespace, values, option_string=None):
        import ast
        kwargs = {}
        for item in values:
            key, sep, value = item.partition("=")
            if not sep:
                parser.error(f"{option_string} expects KEY=VALUE items, got {item!r}")
            try:
                kwargs[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                kwargs[key] = value
        setattr(namespace, self.dest, kwargs)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Flags > recipe YAML > parser defaults."""
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    recipe_path = Path(known.recipe)
    if not recipe_path.suffix:
        recipe_path = RECIPES / f"{known.recipe}.yaml"
    if not recipe_path.is_file():
        parser.error(f"recipe {known.recipe!r} not found (looked for {recipe_path})")
    with open(recipe_path) as f:
        recipe = yaml.safe_load(f) or {}
    unknown = sorted(set(recipe) - {a.dest for a in parser._actions})
    if unknown:
        parser.error(f"recipe {recipe_path} has unknown keys: {', '.join(unknown)}")
    parser.set_defaults(**recipe)
    args = parser.parse_args(argv)
    if args.dataset is None or args.model is None:
        parser.error("--dataset and --model are required (or a recipe that sets them)")
    if args.batch_size % args.m_per_class:
        parser.error(f"--batch-size {args.batch_size} must be a multiple of --m-per-class {args.m_per_class}")
    for name in ("backbone_lr", "prototype_lr", "loss_lr"):
        if getattr(args, name) is None:
            setattr(args, name, args.lr)
    return args


class Distributed:
    """torchrun's environment, or a single process."""

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        if self.enabled:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_gather_object(self, value: Any) -> List[Any]:
        if not self.enabled:
            return [value]
        gathered: List[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def average_gradients(self, parameters) -> None:
        """Parameters outside DDP (loss proxies, ZSR class embeddings) get DDP's averaging by hand."""
        if self.enabled:
            for p in parameters:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world_size

    def close(self) -> None:
        if self.enabled:
            dist.destroy_process_group()


def amp_dtype(choice: str, device: torch.device) -> Optional[torch.dtype]:
    if choice == "none" or (choice == "auto" and device.type != "cuda"):
        return None
    if choice == "fp16" or (choice == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_data(args, model, env: Distributed):
    """Train loader (m-per-class batches, sharded over ranks), the evaluation split(s) and their
    data config (input size, mean, std, crop: what an exported model must publish)."""
    # The preprocessing the metrics are measured with: what an exported model must publish.
    eval_data_config = resolve_input_config(model, args.img_size, crop_pct=args.crop_pct, interpolation=args.interpolation)
    augmentation = Augmentation(scale=args.scale, ratio=args.ratio, hflip=args.hflip, vflip=args.vflip,
                                color_jitter=args.color_jitter, auto_augment=args.aa, re_prob=args.reprob)
    train_tf = build_train_transform(eval_data_config, augmentation)
    eval_tf = build_eval_transform(eval_data_config)
    extra: Dict[str, Any] = {}
    if args.skip_corrupt:
        extra["skip_corrupt"] = True
    if args.train_fraction is not None:
        extra["train_fraction"] = args.train_fraction
    # Build the cached collage once, on the main process, before the others read it.
    if env.enabled and not env.is_main:
        dist.barrier()
    train_set = build_dataset(args.dataset, args.data_dir, "train", train_tf, **extra)
    if env.enabled and env.is_main:
        dist.barrier()
    if args.val_fraction:  # both halves from the one training split read above
        val_set = carve_validation(train_set, "val", args.val_fraction, args.seed)
        val_set.transform = eval_tf  # select_classes returned a copy: the train half keeps train_tf
        train_set = carve_validation(train_set, "train", args.val_fraction, args.seed)
        eval_splits = {"val": val_set}
    else:
        eval_splits = {s: build_dataset(args.dataset, args.data_dir, s, eval_tf, **extra) for s in evaluation_splits(args.dataset)}
    sampler = MPerClassBatchSampler(train_set.labels, args.m_per_class, args.batch_size,
                                    num_batches=max(len(train_set) // (args.batch_size * env.world_size), 1) * env.world_size,
                                    num_replicas=env.world_size, rank=env.rank, seed=args.seed)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=args.workers,
                        pin_memory=env.device.type == "cuda", persistent_workers=False)
    return train_set, loader, sampler, eval_splits, eval_data_config


def build_model(args, env: Distributed) -> torch.nn.Module:
    kwargs: Dict[str, Any] = dict(args.model_kwargs)
    if args.drop_path is not None:
        kwargs["drop_path_rate"] = args.drop_path
    pool = {"gap": "avg", "max": "max", "gsp": "gsp"}[args.pool]
    model = timm_gsp.create_model(args.model, pretrained=args.pretrained, embed_dim=args.embed_dim, pool=pool,
                                  num_prototypes=args.num_prototypes, transport_ratio=args.transport_ratio,
                                  gamma=args.gamma, **kwargs)
    return model.to(env.device)


def init_prototypes(model, train_set, env: Distributed, seed: int, num_images: int = 64) -> None:
    """k-center over the local features of evenly spaced training images (the same on every rank)."""
    if not timm_gsp.gsp_modules(model):
        return
    rng = torch.get_rng_state()  # the train transform draws random crops; keep the run's stream
    step = max(len(train_set) // num_images, 1)
    images = torch.stack([train_set[i][0] for i in range(0, len(train_set), step)][:num_images])
    torch.set_rng_state(rng)
    timm_gsp.init_prototypes_kcenter(model, images.to(env.device), seed=seed)


def build_criterion(args, model, num_classes: int, env: Distributed) -> torch.nn.Module:
    metric_loss = METRIC_LOSSES[args.loss](num_classes, args.embed_dim)
    if env.enabled:
        metric_loss = DistributedLossWrapper(metric_loss)  # pairs across ranks, as one big batch
    zsr_weight = args.zsr_weight if timm_gsp.gsp_modules(model) else 0.0
    kwargs = {"class_embed_dim": args.zsr_embed_dim} if args.zsr_embed_dim else {}
    return GSPMetricLoss(metric_loss, model, num_classes, zsr_weight=zsr_weight, **kwargs).to(env.device)


def build_optimizer(args, model, criterion) -> torch.optim.Optimizer:
    """Separate learning rates: backbone, embedding head, GSP prototypes, loss parameters."""
    head = {id(p) for p in model.get_classifier().parameters()}
    groups: Dict[str, List[torch.nn.Parameter]] = {"backbone": [], "head": [], "prototypes": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = "prototypes" if name.endswith("prototypes") else "head" if id(p) in head else "backbone"
            groups[key].append(p)
    lrs = {"backbone": args.backbone_lr, "head": args.lr, "prototypes": args.prototype_lr, "loss": args.loss_lr}
    param_groups = [{"name": k, "params": v, "lr": lrs[k]} for k, v in groups.items() if v]
    loss_params = [p for p in criterion.parameters() if p.requires_grad]
    if loss_params:
        param_groups.append({"name": "loss", "params": loss_params, "lr": lrs["loss"], "weight_decay": 0.0})
    optimizer_cls = torch.optim.AdamW if args.opt == "adamw" else torch.optim.Adam
    return optimizer_cls(param_groups, lr=args.lr, weight_decay=args.weight_decay)


def build_scheduler(args, optimizer, steps_per_epoch: int):
    total = max(args.epochs * steps_per_epoch, 1)
    warmup = int(args.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if args.sched == "none":
            return 1.0
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def plot_metrics(history: List[Dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [h for h in history if "map_at_r" in h]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot([h["epoch"] for h in history], [h["train_loss"] for h in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="train loss", title="training loss")
    for key in ("precision_at_1", "r_precision", "map_at_r"):
        ax_metric.plot([h["epoch"] for h in evals], [h[key] for h in evals], marker="o", label=key)
    ax_metric.set(xlabel="epoch", ylabel="metric", title="retrieval on held-out classes")
    ax_metric.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_weight_maps(model, eval_set, path: Path, count: int = 8) -> None:
    """One PNG row: GSP pooling weights over ``count`` evenly spaced held-out images."""
    from PIL import Image

    from timm_gsp import viz

    indices = range(0, len(eval_set), max(len(eval_set) // count, 1))
    images = torch.stack([eval_set[i][0] for i in indices][:count]).to(next(model.parameters()).device)
    config = resolve_input_config(model)
    maps = viz.pooling_maps(model, images)
    shown = viz.denormalize(images.float().cpu(), config["mean"], config["std"])
    tiles = [viz.overlay(shown[i], maps.weights[i].cpu()).resize((128, 128), Image.NEAREST) for i in range(len(images))]
    grid = Image.new("RGB", (128 * len(tiles), 128))
    for i, tile in enumerate(tiles):
        grid.paste(tile, (128 * i, 0))
    grid.save(path)


def train(args: argparse.Namespace) -> Dict[str, Any]:
    env = Distributed()
    output = Path(args.output)
    if env.is_main:
        output.mkdir(parents=True, exist_ok=True)
    seed_everything(args.seed)
    started = time.time()
    model = build_model(args, env)
    train_set, loader, sampler, eval_splits, eval_data_config = build_data(args, model, env)
    criterion = build_criterion(args, model, train_set.num_classes, env)
    optimizer = build_optimizer(args, model, criterion)
    scheduler = build_scheduler(args, optimizer, len(sampler))
    dtype = amp_dtype(args.amp, env.device)
    scaler = torch.amp.GradScaler(env.device.type, enabled=dtype == torch.float16)
    history: List[Dict[str, Any]] = []
    start_epoch = 0

    resume = (output / "checkpoint") if args.resume == "auto" else (Path(args.resume) if args.resume else None)
    if resume is not None:
        model_state, state = load_checkpoint(resume, map_location=str(env.device))
        model.load_state_dict(model_state)
        criterion.load_state_dict(state["criterion"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        sampler.load_state_dict(state["sampler"])
        restore_rng_state(state["rng"][env.rank])
        start_epoch, history = state["epoch"] + 1, state["history"]
        if env.is_main:
            print(f"resumed from {resume} at epoch {start_epoch}")
    elif args.pool == "gsp" and args.prototype_init == "kcenter":
        init_prototypes(model, train_set, env, args.seed)

    net = DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None) if env.enabled else model
    autocast = lambda: torch.autocast(env.device.type, dtype=dtype) if dtype else contextlib.nullcontext()  # noqa: E731
    eval_kwargs = dict(batch_size=args.batch_size, num_workers=args.workers, device=env.device, amp_dtype=dtype,
                       progress=not args.no_progress)
    metrics: Dict[str, float] = {}
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        net.train()
        losses = []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not env.is_main or args.no_progress)
        for images, labels in bar:
            images, labels = images.to(env.device, non_blocking=True), labels.to(env.device, non_blocking=True)
            with autocast():
                embeddings = net(images)
            loss = criterion(embeddings.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            env.average_gradients(criterion.parameters())
            if args.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], args.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        record: Dict[str, Any] = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else float("nan")}
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            metrics = evaluate_retrieval(model, eval_splits, **eval_kwargs)
            record.update(metrics)
        history.append(record)
        rng_states = env.all_gather_object(rng_state())
        if env.is_main:
            with open(output / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
            save_checkpoint(output / "checkpoint", model.state_dict(), {
                "epoch": epoch, "criterion": criterion.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "sampler": sampler.state_dict(), "rng": rng_states, "history": history, "config": vars(args),
            })
        if args.stop_after_epoch is not None and epoch + 1 >= args.stop_after_epoch and epoch + 1 < args.epochs:
            env.close()
            return {"stopped_after_epoch": epoch + 1}

    if not metrics:  # resumed after the last epoch: evaluate the final weights
        metrics = evaluate_retrieval(model, eval_splits, **eval_kwargs)
    results = {"metrics": metrics, "config": vars(args), "data_config": eval_data_config, "epochs": args.epochs,
               "world_size": env.world_size, "wall_time_s": time.time() - started,
               "eval_split": "+".join(eval_splits)}
    if env.is_main:
        with open(output / "results.json", "w") as f:
            json.dump(results, f, indent=2)
        plot_metrics(history, output / "metrics.png")
        if timm_gsp.gsp_modules(model):
            save_weight_maps(model, next(iter(eval_splits.values())), output / "gsp_weights.png")
        summary = "  ".join(f"{k} {metrics[k]:.4f}" for k in ("precision_at_1", "r_precision", "map_at_r"))
        print(f"{args.pool.upper()} on held-out classes ({results['eval_split']}): {summary}")
        print(f"wrote {output / 'results.json'}, {output / 'metrics.png'}, {output / 'checkpoint'}")
        if args.dataset == "collage" and not args.val_fraction:
            print_collage_reference(metrics)
    env.close()
    return results


def print_collage_reference(metrics: Dict[str, float]) -> None:
    """Next to a collage test run, the table's numbers (benchmarks/collage_benchmark.py), if present."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "collage_results.json"
    if not path.is_file():
        return
    table = json.loads(path.read_text()).get("methods", {})
    keys = ("precision_at_1", "r_precision", "map_at_r")
    print(f"{'':28s} {'P@1':>14s} {'R-Prec':>14s} {'MAP@R':>14s}")
    print(f"{'this run':28s} " + " ".join(f"{metrics[k]:14.4f}" for k in keys))
    for name in ("gap", "gsp_zsr"):
        if name in table and f"{keys[0]}_mean" in table[name]:
            row = table[name]
            cells = " ".join(f"{row[k + '_mean']:.4f}+-{row[k + '_std']:.4f}".rjust(14) for k in keys)
            print(f"{row['label'][:28]:28s} {cells}   (results table, {row['n_seeds']} seeds)")


def main(argv: Optional[List[str]] = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
