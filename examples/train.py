#!/usr/bin/env python
"""Fine-tune any timm model with Generalized Sum Pooling (or GAP) for deep metric learning.

    python examples/train.py                                              # embedded collage data
    python examples/train.py --dataset folder --data-dir my_images/      # your photos: recipe 'folder'
    python examples/train.py --dataset folder --data-dir my_images/ --recipe folder-scratch   # no pretrained weights
    python examples/train.py --recipe cub --data-dir /data/CUB_200_2011  # a paper benchmark
    torchrun --nproc_per_node 8 examples/train.py --recipe sop --data-dir /data/Stanford_Online_Products

A recipe (``examples/recipes/<name>.yaml``, or any YAML file) sets every option; flags override it.
Without ``--recipe`` the dataset picks it: ``folder`` -> ``folder``, ``cub`` -> ``cub``, ...; no
dataset at all -> ``collage``. The run prints its recipe, learning rates and transforms at start.

Every run writes to ``--output`` (refused if it already holds a run: ``--resume`` continues it,
``--overwrite`` replaces it; and, whatever the flags, while another live run holds it): ``metrics.jsonl``
(one line per epoch), ``metrics.png``, ``checkpoint/`` (the last epoch; safetensors, atomic, resumable), with
``--val-fraction`` also ``checkpoint-best/`` (the epoch with the best MAP@R on the validation classes), ``results.json``
(metrics, the model description, the recipe) and, for GSP, ``gsp_weights.png``.

``--resume`` continues exactly where the run stopped. Settings that define the model, the data or the
optimisation must be those of the checkpoint; these may change: ``--epochs`` (the cosine schedule is
stretched to the new length), ``--eval-every``, ``--workers``, ``--cache-images``, ``--data-dir``,
``--no-progress``, ``--stop-after-epoch``, ``--pretrained-path`` (a resumed run takes every weight from
its checkpoint, and keeps recording the weights file it started from).

``--pretrained-path FILE`` (timm train.py's flag): the backbone's pretrained weights from a timm
checkpoint file instead of a download (machines without network), loaded by timm itself; a missing
file or one of another architecture is refused before anything is written. The run's first lines and
``results.json`` name the file by its name and sha256.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

try:
    import matplotlib  # noqa: F401 (checked now: the plots are drawn at the end of the run)
    import yaml
    from pytorch_metric_learning import losses as pml_losses
    from pytorch_metric_learning.utils.distributed import DistributedLossWrapper
except ImportError as missing:  # the training extras are not part of the core install
    sys.exit(f"train.py: error: {missing.name} is missing; the training script needs: pip install 'timm-gsp[train]'")
from timm.scheduler import CosineLRScheduler, StepLRScheduler
from timm.utils import random_seed
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

import timm_gsp
from timm_gsp import RetrievalModelConfig, TimmGSPError
from timm_gsp.cli.support import USER_ERRORS, OneLineArgumentParser, ParseKwargs, one_line, wants_traceback
from timm_gsp.data import (DATASETS, Augmentation, CachedDataset, MPerClassBatchSampler, RandomBatchSampler, build_dataset,
                           build_eval_transform, build_train_transform, carve_validation, evaluation_splits,
                           resolve_input_config)
from timm_gsp.errors import ConfigError, OutputExistsError, OutputWriteError
from timm_gsp.layers.baseline_pools import GeneralizedMeanPool
from timm_gsp.layers.pool_spec import BASELINE_POOLS, MIXES, NORMS, pool_spec
from timm_gsp.loss.zsr import GSPMetricLoss
# chance_precision_at_1: P@1 of a random ranking, what learning_check compares a run's P@1 with
from timm_gsp.retrieval.evaluate import chance_precision_at_1, check_evaluation_split, evaluate_retrieval, write_weight_maps
from timm_gsp.train.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from timm_gsp.train.distributed import DistributedJob
from timm_gsp.train.folder_claim import CLAIM_FILE, FolderClaim
from timm_gsp.train.run_results import RunResults, TrainingSetup, pretrained_weights_record
from timm_gsp.utils import dry_forward, evenly_spaced, write_file_atomic

RECIPES = Path(__file__).resolve().parent / "recipes"
DEFAULT_RECIPE = "collage"
METRIC_LOSSES = {
    "contrastive": lambda n, d: pml_losses.ContrastiveLoss(pos_margin=0.0, neg_margin=0.5),
    "triplet": lambda n, d: pml_losses.TripletMarginLoss(margin=0.1),
    "multisimilarity": lambda n, d: pml_losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5),
    "proxyanchor": lambda n, d: pml_losses.ProxyAnchorLoss(n, d, margin=0.1, alpha=32),
    "proxynca": lambda n, d: pml_losses.ProxyNCALoss(n, d, softmax_scale=1),
    "normsoftmax": lambda n, d: pml_losses.NormalizedSoftmaxLoss(n, d, temperature=0.05),
}
# --pool -> the timm / timm-gsp pool: GSP, GAP (timm's "avg") and every baseline the factory accepts
POOLS = {"gsp": "gsp", "gap": "avg", **{name: name for name in BASELINE_POOLS if name != "avg"}}
AUGMENTATION = Augmentation()  # the augmentation flags' defaults: timm train.py's, as the library keeps them
SELECTION_METRIC = "map_at_r"  # what checkpoint-best maximises on the validation classes
# "Not learning" (a warning, and learning_check in results.json) needs both signs at once, judged from the
# second epoch on. The loss: a run that learns lowers its epoch-mean metric loss by well over 5 % within a few
# epochs, while at a fixed model the mean only wanders by a few percent with the batches drawn; so a last epoch
# above LOSS_STALL_RATIO x the first has not really moved. Retrieval: P@1 below CHANCE_MULTIPLE x the P@1 of a
# random ranking means the embedding hardly puts a same-class image first. Either sign alone is common in a
# healthy run (a loss that plateaus early, a hard split); both together say the recipe needs changing.
LOSS_STALL_RATIO = 0.95
CHANCE_MULTIPLE = 2.0
# Settings that may differ between a run and its --resume (everything else must match the checkpoint).
RESUMABLE = frozenset({"epochs", "eval_every", "workers", "cache_images", "data_dir", "no_progress",
                       "stop_after_epoch", "pretrained_path", "resume", "overwrite", "output", "debug"})
RUN_FILES = ("results.json", "metrics.jsonl", "metrics.png", "gsp_weights.png", "checkpoint", "checkpoint-best")


# --- arguments: flags > recipe YAML > parser defaults ---------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=None,
                        help="a name in examples/recipes (collage, folder, folder-scratch, cub, cars, sop, inshop) or a "
                             "YAML file; default: the dataset's recipe (collage without a dataset)")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=list(DATASETS))
    data.add_argument("--data-dir", default=None, help="dataset root (collage: cache folder, default ~/.cache/timm_gsp)")
    data.add_argument("--val-fraction", type=float, default=0.0,
                      help="hold out this share of TRAIN classes, evaluate on them and keep the best epoch (checkpoint-best/)")
    data.add_argument("--train-fraction", type=float, default=None, help="folder dataset: share of classes for training")
    data.add_argument("--img-size", type=int, default=None, help="input size (default: the model's)")
    data.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images (counted) instead of failing")
    data.add_argument("--workers", type=int, default=None, help="data-loading processes (default: min(4, CPU cores))")
    data.add_argument("--cache-images", action="store_true", help="decode every image once into memory (small datasets)")
    model = parser.add_argument_group("model")
    model.add_argument("--model", help="any timm model name")
    model.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=False,
                       help="start from the backbone's pretrained weights")
    model.add_argument("--pretrained-path", default=None, metavar="FILE",
                       help="the backbone's pretrained weights from this timm checkpoint file (.safetensors, or a torch "
                            ".pth/.pt/.bin state dict) instead of a download; implies --pretrained")
    model.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs, metavar="KEY=VALUE",
                       help="extra timm.create_model arguments, e.g. output_stride=8 img_size=96")
    model.add_argument("--pool", choices=sorted(POOLS), default="gsp",
                       help="global pooling: gsp, or a baseline (gap: average, max, ...; gem: generalised mean)")
    model.add_argument("--embed-dim", type=int, default=512,
                       help="size of the linear embedding after the pool; 0: no embedding layer (the pooled features)")
    model.add_argument("--num-prototypes", type=int, default=timm_gsp.GSP_DEFAULTS["num_prototypes"])
    model.add_argument("--transport-ratio", type=float, default=timm_gsp.GSP_DEFAULTS["transport_ratio"])
    model.add_argument("--gamma", type=float, default=timm_gsp.GSP_DEFAULTS["gamma"])
    model.add_argument("--gsp-border", type=int, default=timm_gsp.GSP_DEFAULTS["border"], metavar="RINGS",
                       help="outer rings of feature cells GSP leaves out (zero padding makes border cells alike in every "
                            "image, and they can draw weight); 0: none")
    model.add_argument("--gsp-mix", choices=MIXES, default=timm_gsp.GSP_DEFAULTS["mix"],
                       help="how GSP's plan becomes a vector: sum (weighted sum, the paper), max (max over the "
                            "re-weighted cells), gem (GeM over them), addmax (weighted sum + global max)")
    model.add_argument("--gsp-learn-ratio", action=argparse.BooleanOptionalAction, default=timm_gsp.GSP_DEFAULTS["learn_ratio"],
                       help="learn the transport ratio, starting at --transport-ratio")
    model.add_argument("--gsp-project", action=argparse.BooleanOptionalAction, default=timm_gsp.GSP_DEFAULTS["project"],
                       help="compute the costs and pool on a learned linear map of every cell (from the identity)")
    model.add_argument("--gsp-norm", choices=NORMS, default=timm_gsp.GSP_DEFAULTS["norm"],
                       help="cell normalisation for the costs: unit, clip (only norms above 1) or relative (only "
                            "norms above the image's mean cell norm)")
    model.add_argument("--prototype-init", choices=["random", "kcenter", "kcenter-pooled"], default="kcenter",
                       help="kcenter: greedy farthest-point init from local features of training images; "
                            "kcenter-pooled: from the mean features of up to 1024 training images, after "
                            "--prototype-warmup-epochs (the reference release's)")
    model.add_argument("--prototype-warmup-epochs", type=int, default=0,
                       help="kcenter-pooled: epochs trained with random prototypes before the init")
    model.add_argument("--drop-path", type=float, default=None)
    aug = parser.add_argument_group("augmentation and evaluation transform (timm train.py's names and meanings)")
    aug.add_argument("--scale", type=float, nargs=2, default=list(AUGMENTATION.scale), metavar="PCT",
                     help="RandomResizedCrop area range")
    aug.add_argument("--ratio", type=float, nargs=2, default=list(AUGMENTATION.ratio), metavar="RATIO",
                     help="RandomResizedCrop aspect range")
    aug.add_argument("--hflip", type=float, default=AUGMENTATION.hflip, help="horizontal flip probability")
    aug.add_argument("--vflip", type=float, default=AUGMENTATION.vflip, help="vertical flip probability")
    aug.add_argument("--color-jitter", type=float, default=AUGMENTATION.color_jitter, metavar="PCT",
                     help="colour jitter strength (0: none)")
    aug.add_argument("--aa", default=AUGMENTATION.auto_augment, metavar="NAME",
                     help="AutoAugment / RandAugment policy, e.g. rand-m9-mstd0.5")
    aug.add_argument("--reprob", type=float, default=AUGMENTATION.re_prob, metavar="PCT", help="random erasing probability")
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
    optim.add_argument("--m-per-class", type=int, default=4,
                       help="batch composition: M images of each of batch-size / M classes; 0: plain random batches")
    optim.add_argument("--amp", choices=["auto", "bf16", "fp16", "none"], default="auto",
                       help="auto: bf16 on CUDA (fp16 where bf16 is missing), none on CPU")
    optim.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=False,
                       help="keep every BatchNorm layer as the pretrained backbone left it: running statistics "
                            "and affine parameters frozen (DML practice for fine-tuning with small class-balanced "
                            "batches); no effect on a backbone from scratch")
    optim.add_argument("--channels-last", action="store_true",
                       help="NHWC memory layout for model and images (faster convolutions on CPUs and tensor cores)")
    run = parser.add_argument_group("run")
    run.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs (and after the last)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--output", default="output/train")
    run.add_argument("--resume", nargs="?", const="auto", default=None,
                     help="continue the run in --output (or from the given checkpoint folder)")
    run.add_argument("--overwrite", action="store_true", help="replace the run already in --output")
    run.add_argument("--stop-after-epoch", type=int, default=None,
                     help="end this process after that epoch, checkpoint kept (time-boxed jobs, tests)")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return parser


def recipe_path(name: str) -> Path:
    path = Path(name)
    return path if path.suffix else RECIPES / f"{name}.yaml"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Flags > recipe YAML > parser defaults; the recipe defaults to the dataset's."""
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    name = known.recipe or (known.dataset if known.dataset and recipe_path(known.dataset).is_file() else None) \
        or (DEFAULT_RECIPE if known.dataset in (None, DEFAULT_RECIPE) else None)
    if name is None:
        parser.error(f"no recipe for --dataset {known.dataset}: pass --recipe (one of "
                     f"{', '.join(sorted(p.stem for p in RECIPES.glob('*.yaml')))}, or a YAML file)")
    path = recipe_path(name)
    if not path.is_file():
        parser.error(f"recipe {name!r} not found (looked for {path}); --recipe takes one of "
                     f"{', '.join(sorted(p.stem for p in RECIPES.glob('*.yaml')))} or a YAML file")
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        parser.error(f"recipe {path} is not valid YAML: {str(error).splitlines()[0]}")
    unknown = sorted(set(recipe) - {a.dest for a in parser._actions})
    if unknown:
        parser.error(f"recipe {path} has unknown keys: {', '.join(unknown)}")
    parser.set_defaults(**recipe)
    args = parser.parse_args(argv)
    args.recipe = name
    check_args(parser, args)
    for key in ("backbone_lr", "prototype_lr", "loss_lr"):
        if getattr(args, key) is None:
            setattr(args, key, args.lr)
    if args.workers is None:
        args.workers = min(4, os.cpu_count() or 1)
    return args


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Settings that cannot work, named with the flag that fixes them (argparse: one line, exit 2)."""
    if args.dataset is None or args.model is None:
        parser.error("--dataset and --model are required (or a recipe that sets them)")
    if args.m_per_class < 0:
        parser.error(f"--m-per-class must be >= 1 (class-balanced batches) or 0 (random batches), got {args.m_per_class}")
    if args.batch_size < 1 or (args.m_per_class and args.batch_size % args.m_per_class):
        parser.error(f"--batch-size {args.batch_size} must be a positive multiple of --m-per-class {args.m_per_class}")
    if args.pool == "gsp" and args.zsr_weight > 0 and args.m_per_class == 0:
        # GSPMetricLoss refuses (ValueError) a batch whose halves share no class, which random batches often are
        parser.error("the zero-shot regulariser fits on one half of each batch and predicts the other's classes, which "
                     "random batches (--m-per-class 0) do not put in both halves: pass --zsr-weight 0, or --m-per-class >= 2")
    if args.pool == "gsp" and args.zsr_weight > 0 and args.m_per_class < 2:
        parser.error(f"the zero-shot regulariser fits on one half of each batch and predicts the other, so every class "
                     f"needs >= 2 images per batch: raise --m-per-class ({args.m_per_class}) or pass --zsr-weight 0")
    if not 0.0 <= args.zsr_weight <= 1.0:
        parser.error(f"--zsr-weight must be in [0, 1], got {args.zsr_weight}")
    if not 0.0 <= args.val_fraction < 1.0:
        parser.error(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    for flag in ("epochs", "eval_every", "embed_dim", "num_prototypes"):
        least = 0 if flag == "embed_dim" else 1
        if getattr(args, flag) < least:
            parser.error(f"--{flag.replace('_', '-')} must be >= {least}, got {getattr(args, flag)}")
    if args.workers is not None and args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    if args.resume and args.overwrite:
        parser.error("--resume continues the run in --output and --overwrite replaces it: pass one of them")
    try:
        augmentation_of(args)
        timm_gsp.format_gsp_spec(**gsp_options(args))
    except ValueError as error:
        parser.error(str(error))


def augmentation_of(args: argparse.Namespace) -> Augmentation:
    """The augmentation flags as the library's ``Augmentation`` (refused there with a ValueError)."""
    return Augmentation(scale=args.scale, ratio=args.ratio, hflip=args.hflip, vflip=args.vflip,
                        color_jitter=args.color_jitter, auto_augment=args.aa, re_prob=args.reprob)


def gsp_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The GSP flags as the pool-string options (``layers.pool_spec.GSP_DEFAULTS`` keys)."""
    return dict(num_prototypes=args.num_prototypes, transport_ratio=args.transport_ratio, gamma=args.gamma,
                border=args.gsp_border, mix=args.gsp_mix, learn_ratio=args.gsp_learn_ratio, project=args.gsp_project,
                norm=args.gsp_norm)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        train(args)
    except USER_ERRORS as error:
        if wants_traceback(args.debug):
            raise
        print(f"train.py: error: {one_line(error)}{after_failed_write(args.output, error)}", file=sys.stderr)
        return 1
    return 0


# --- the run ---------------------------------------------------------------------------------------

def train(args: argparse.Namespace) -> Dict[str, Any]:
    """The run: model, output folder, data, loss, optimiser and schedule, the epoch loop (train, evaluate,
    checkpoint), results. Returns ``results.json``'s content (``{"stopped_after_epoch": N}`` after
    ``--stop-after-epoch``)."""
    # The job's processes joined and left; the output folder's claim released however the run ends.
    with DistributedJob() as job, contextlib.ExitStack() as exits:
        check_data_dir(args.dataset, args.data_dir)
        # timm's seeding (torch, NumPy and Python's random), the same seed on every rank: what DDP does not
        # broadcast (the loss's proxies, ZSR's class embeddings) starts equal everywhere; the samplers shard by rank
        random_seed(args.seed)
        started = time.time()

        # Model: built before the output folder is touched, so a wrong --pretrained-path leaves nothing behind;
        # a resumed run takes every weight from its checkpoint and reads no pretrained weights.
        resuming = bool(args.resume)
        pretrained = args.pretrained or args.pretrained_path is not None
        freeze_bn = args.freeze_bn and pretrained  # from scratch BatchNorm has no statistics worth keeping
        model_kwargs = dict(args.model_kwargs, **({} if args.drop_path is None else {"drop_path_rate": args.drop_path}))
        pool = pool_spec(POOLS[args.pool], **gsp_options(args))
        description = RetrievalModelConfig(args.model, embed_dim=args.embed_dim, pool=pool, model_kwargs=model_kwargs)
        model = build_model(description, pretrained=pretrained and not resuming,
                            pretrained_path=None if resuming else args.pretrained_path, freeze_bn=freeze_bn,
                            channels_last=args.channels_last, device=job.device)
        gsp = bool(timm_gsp.gsp_modules(model))
        # which weights the run starts from, by content (a resumed run keeps its start's, below)
        weights = pretrained_weights_record(args.pretrained_path) if args.pretrained_path and not resuming else None
        output = prepare_output(Path(args.output), job, exits, resume=resuming, overwrite=args.overwrite)
        resume = None
        if resuming:
            resume = (output / "checkpoint") if args.resume == "auto" else Path(args.resume)
            model_state, state = load_checkpoint(resume, map_location=str(job.device))
            check_resume_settings(vars(args), state["config"], resume)
            weights = state.get("pretrained_weights")

        # Data: the evaluation preprocessing is what the metrics are measured with, and what an exported model
        # publishes (its data config); the train transform adds the augmentation.
        data_config = resolve_input_config(model, args.img_size, crop_pct=args.crop_pct, interpolation=args.interpolation)
        description = dataclasses.replace(description, data_config=data_config)
        augmentation = augmentation_of(args)
        train_tf, eval_tf = build_train_transform(data_config, augmentation), build_eval_transform(data_config)
        dataset_options: Dict[str, Any] = {"skip_corrupt": True} if args.skip_corrupt else {}
        if args.train_fraction is not None:
            dataset_options["train_fraction"] = args.train_fraction
        train_set, eval_splits = build_datasets(args.dataset, args.data_dir, train_tf, eval_tf, job,
                                                val_fraction=args.val_fraction, seed=args.seed, cache=args.cache_images,
                                                progress=not args.no_progress, **dataset_options)
        sampler = build_sampler(train_set, args.batch_size, args.m_per_class, args.seed, job)
        loader = DataLoader(train_set, batch_sampler=sampler, num_workers=args.workers,
                            pin_memory=job.device.type == "cuda", persistent_workers=args.workers > 0)

        # Loss, optimiser, schedule. Without an embedding layer the loss's proxies take the pooled width (a dry
        # forward: catavgmax doubles the backbone's, a wrapped model has its own).
        embed_size = args.embed_dim or int(dry_forward(model, tuple(data_config["input_size"])).shape[-1])
        zsr_weight = args.zsr_weight if gsp else 0.0
        criterion = build_criterion(args.loss, model, train_set.num_classes, embed_size, zsr_weight, args.zsr_embed_dim, job)
        learning_rates = {"backbone": args.backbone_lr, "head": args.lr, "prototypes": args.prototype_lr, "loss": args.loss_lr}
        optimizer = build_optimizer(model, criterion, args.opt, learning_rates, args.weight_decay)
        scheduler = build_scheduler(optimizer, len(sampler), args.epochs, args.warmup_epochs, args.sched)
        num_updates = 0  # optimiser updates so far: the schedule's clock
        dtype = amp_dtype(args.amp, job.device)
        scaler = torch.amp.GradScaler(job.device.type, enabled=dtype == torch.float16)
        history: List[Dict[str, Any]] = []
        start_epoch, best = 0, {"epoch": None, "metrics": None}
        if resume is not None:
            model.load_state_dict(model_state)
            criterion.load_state_dict(state["criterion"])
            optimizer.load_state_dict(state["optimizer"])
            num_updates = saved_update_count(state["scheduler"])
            scheduler.step_update(num_updates)  # the rate of the next update, on this run's (maybe stretched) schedule
            scaler.load_state_dict(state["scaler"])
            sampler.load_state_dict(state["sampler"])
            restore_rng_state(state["rng"][job.rank])
            start_epoch, history, best = state["epoch"] + 1, state["history"], state.get("best", best)
        elif gsp and args.prototype_init == "kcenter":
            init_prototypes(model, train_set, pooled=False, batch_size=args.batch_size, seed=args.seed, device=job.device)
        init_epoch = args.prototype_warmup_epochs if gsp and args.prototype_init == "kcenter-pooled" else None
        if args.overwrite and job.is_main:
            clear_run_files(output)  # the run can start: --overwrite's previous run goes now

        setup = TrainingSetup(
            recipe=args.recipe, dataset=args.dataset, train_fraction=args.train_fraction, val_fraction=args.val_fraction,
            model=args.model, pretrained=args.pretrained or weights is not None, pool=pool, embed_dim=args.embed_dim,
            prototype_init=args.prototype_init if gsp else None,
            prototype_warmup_epochs=args.prototype_warmup_epochs if gsp else None, freeze_bn=freeze_bn,
            loss=args.loss, zsr_weight=zsr_weight, optimizer=args.opt,
            # the schedule's peak rates (initial_lr), not the first step's: a warm-up starts below them
            learning_rates={g["name"]: g.get("initial_lr", g["lr"]) for g in optimizer.param_groups},
            weight_decay=args.weight_decay, clip_grad=args.clip_grad, schedule=args.sched, warmup_epochs=args.warmup_epochs,
            batch_size=args.batch_size, m_per_class=args.m_per_class, augmentation=augmentation.to_dict(),
            eval_transform=data_config, amp=str(dtype).replace("torch.", "") if dtype else "none", seed=args.seed,
            epochs=args.epochs, world_size=job.world_size)
        if job.is_main:
            print(describe_run(setup, recipe_file=recipe_path(args.recipe), pool_name=args.pool, model_kwargs=args.model_kwargs,
                               embed_size=embed_size, data_dir=args.data_dir, train_set=train_set, eval_splits=eval_splits,
                               transforms=(train_tf, eval_tf), weights=weights), flush=True)
            if resume is not None:
                print(f"resumed from {resume} at epoch {start_epoch + 1}", flush=True)

        # The epoch loop: train, evaluate every --eval-every epochs (and after the last), checkpoint.
        net = DistributedDataParallel(model, device_ids=[job.device.index] if job.device.type == "cuda" else None) \
            if job.enabled else model
        eval_kwargs = dict(batch_size=args.batch_size, num_workers=args.workers, device=job.device, amp_dtype=dtype,
                           progress=not args.no_progress)
        chance = chance_precision_at_1(eval_splits)
        metrics: Dict[str, float] = {}
        for epoch in range(start_epoch, args.epochs):
            if epoch == init_epoch:  # after the warm-up with random prototypes (a resumed run past it has them)
                init_prototypes(model, train_set, pooled=True, batch_size=args.batch_size, seed=args.seed, device=job.device)
            sampler.set_epoch(epoch)
            train_loss, num_updates = train_one_epoch(
                net, loader, criterion, optimizer, scheduler, scaler, num_updates, job, amp=dtype, clip_grad=args.clip_grad,
                channels_last=args.channels_last, freeze_bn=freeze_bn, desc=f"epoch {epoch + 1}/{args.epochs}",
                progress=job.is_main and not args.no_progress)
            record: Dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss}
            improved = False
            evaluated = (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs
            if evaluated:
                metrics = evaluate_retrieval(model, eval_splits, **eval_kwargs)
                record.update({k: (v if math.isfinite(v) else None) for k, v in metrics.items()})
                score = record.get(SELECTION_METRIC)
                improved = args.val_fraction > 0 and score is not None and (
                    best["metrics"] is None or score > best["metrics"][SELECTION_METRIC])
                if improved:
                    best = {"epoch": epoch + 1, "metrics": {k: v for k, v in record.items() if k not in ("epoch", "train_loss")}}
            history.append(record)
            rng_states = job.all_gather_object(rng_state())
            if job.is_main:
                print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()), flush=True)
                check = learning_check(history, record.get("precision_at_1"), chance) if evaluated else None
                if check and check["not_learning"] and epoch + 1 < args.epochs:  # the last epoch's is said at the end
                    print(not_learning_warning(check), file=sys.stderr, flush=True)
                state = {"epoch": epoch, "criterion": criterion.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": {"num_updates": num_updates}, "scaler": scaler.state_dict(),
                         "sampler": sampler.state_dict(), "rng": rng_states, "history": history, "best": best,
                         "config": vars(args), "pretrained_weights": weights}
                save_checkpoint(output / "checkpoint", model.state_dict(), state, model_config=description)
                if improved:
                    save_checkpoint(output / "checkpoint-best", model.state_dict(),
                                    {"epoch": epoch, "best": best, "config": vars(args)}, model_config=description)
                # Written from the checkpoint's history, after it: a resumed run never logs an epoch twice.
                write_lines(output / "metrics.jsonl", [json.dumps(h, allow_nan=False) for h in history])
            if args.stop_after_epoch is not None and epoch + 1 >= args.stop_after_epoch and epoch + 1 < args.epochs:
                return {"stopped_after_epoch": epoch + 1}

        # Results: the best epoch's metrics with --val-fraction, else the last epoch's.
        if not metrics and not best["metrics"]:  # resumed after the last epoch: evaluate the final weights
            metrics = evaluate_retrieval(model, eval_splits, **eval_kwargs)
        selected = args.val_fraction > 0 and best["metrics"] is not None
        reported = best["metrics"] if selected else metrics
        check = learning_check(history, reported.get("precision_at_1"), chance)
        results = RunResults(
            model=description, metrics=reported, dataset=args.dataset,
            dataset_root=str(Path(args.data_dir).resolve()) if args.data_dir else None, eval_split="+".join(eval_splits),
            checkpoint="checkpoint-best" if selected else "checkpoint", best_epoch=best["epoch"] if selected else None,
            epochs=args.epochs, recipe=json.loads(json.dumps(recorded_flags(args))), world_size=job.world_size,
            wall_time_s=time.time() - started, timm_gsp_version=timm_gsp.__version__, learning_check=check,
            pretrained_weights=weights, setup=setup)
        if job.is_main:
            results.write(output / "results.json")
            plot_metrics(history, output / "metrics.png")
            if gsp:
                write_weight_maps(output / "gsp_weights.png", model, next(iter(eval_splits.values())),
                                  mean=data_config["mean"], std=data_config["std"])
            summary = "  ".join(f"{k} {results.metrics[k]:.4f}" for k in ("precision_at_1", "r_precision", "map_at_r")
                                if results.metrics.get(k) is not None)
            chosen = f" (best epoch {results.best_epoch} of {args.epochs}, {results.checkpoint}/)" if selected else ""
            print(f"{args.pool.upper()} on held-out classes ({results.eval_split}){chosen}: {summary}")
            print(f"wrote {output / 'results.json'}, {output / 'metrics.png'}, {output / results.checkpoint}")
            if check and check["not_learning"]:
                print(not_learning_warning(check), file=sys.stderr, flush=True)
        return results.to_dict()


def train_one_epoch(net, loader, criterion, optimizer, scheduler, scaler, num_updates: int, job: DistributedJob, *,
                    amp: Optional[torch.dtype], clip_grad: Optional[float], channels_last: bool, freeze_bn: bool,
                    desc: str, progress: bool) -> Tuple[Optional[float], int]:
    """One pass over ``loader``, the schedule stepped after every update: (the epoch's mean loss, updates so far)."""
    train_mode(net, freeze_bn)
    clipped = [p for g in optimizer.param_groups for p in g["params"]]
    losses = []
    bar = tqdm(loader, desc=desc, disable=not progress)
    for images, labels in bar:
        images, labels = images.to(job.device, non_blocking=True), labels.to(job.device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(job.device.type, dtype=amp) if amp else contextlib.nullcontext():
            embeddings = net(images)
        loss = criterion(embeddings.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        job.average_gradients(criterion.parameters())
        if clip_grad:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(clipped, clip_grad)
        scaler.step(optimizer)
        scaler.update()
        num_updates += 1
        scheduler.step_update(num_updates)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    return (float(np.mean(losses)) if losses else None), num_updates


# --- model --------------------------------------------------------------------------------------------

def build_model(description: RetrievalModelConfig, *, pretrained: bool, pretrained_path: Optional[str], freeze_bn: bool,
                channels_last: bool, device: torch.device) -> torch.nn.Module:
    """The model, with the backbone's pretrained weights (timm's, or ``pretrained_path``'s file) when
    ``pretrained``, built once: a --pretrained-path that is missing, unreadable or of another architecture
    is a usage error (exit 2, the library names the file and its first mismatching keys)."""
    try:
        model = description.build(pretrained=pretrained, pretrained_path=pretrained_path)
    except ConfigError as error:
        if pretrained_path is None:
            raise
        build_parser().error(f"--pretrained-path {error}")
    except (OSError, ConnectionError) as error:
        if not pretrained or pretrained_path is not None:
            raise
        raise ConfigError(f"cannot load the pretrained weights of {description.model_name} ({type(error).__name__}: "
                          f"{str(error).splitlines()[0] if str(error) else 'no network?'}); on a machine without network "
                          f"give them as a file (--pretrained-path FILE) or train from scratch: --recipe folder-scratch "
                          f"(or --no-pretrained)") from error
    if freeze_bn:
        for norm in batch_norms(model):
            norm.requires_grad_(False)  # the optimiser leaves them out; train_mode keeps their statistics
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def batch_norms(model: torch.nn.Module) -> List[torch.nn.Module]:
    """Every BatchNorm layer of ``model`` (timm's BatchNormAct2d included)."""
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def train_mode(net: torch.nn.Module, freeze_bn: bool) -> None:
    """``net.train()``; with --freeze-bn the BatchNorm layers stay in eval mode: their running statistics
    are the pretrained ones, not re-estimated on the fine-tuning batches (re-estimating them on the target
    images alone, with no weight changed, costs a pretrained backbone much of its zero-shot accuracy)."""
    net.train()
    if freeze_bn:
        for norm in batch_norms(net):
            norm.eval()


def init_prototypes(model, train_set, *, pooled: bool, batch_size: int, seed: int, device: torch.device) -> None:
    """k-center init of GSP's prototypes from evenly spaced training images, the same on every rank: over
    their local features (``--prototype-init kcenter``, 64 images) or over each one's mean feature
    (``kcenter-pooled``, up to 1024 images)."""
    indices = evenly_spaced(len(train_set), 1024 if pooled else 64)
    batches = (torch.stack([train_set[i][0] for i in indices[k:k + batch_size]]).to(device)
               for k in range(0, len(indices), batch_size))
    saved = rng_state()  # the train transform draws random crops: keep the run's random streams
    try:
        timm_gsp.init_prototypes_kcenter(model, batches, seed=seed, pooled=pooled)
    except ConfigError:
        raise  # a setting of the pool itself (a --gsp-border wider than the map): its message says which
    except ValueError as error:
        num_prototypes = timm_gsp.gsp_modules(model)[0][1].num_prototypes
        what = f"{len(indices)} training images" if pooled else \
            f"the local features of {len(indices)} training images at this input size"
        raise ConfigError(f"{error}: {what} are fewer than --num-prototypes {num_prototypes}; lower "
                          f"--num-prototypes{'' if pooled else ', raise --img-size'}, or pass --prototype-init random") from None
    finally:
        restore_rng_state(saved)


# --- data ---------------------------------------------------------------------------------------------

def check_data_dir(dataset: str, data_dir: Optional[str]) -> None:
    """The dataset root exists, checked before the output folder, the model and its pretrained weights.
    (The collage's --data-dir is a cache folder, created when missing.)"""
    if dataset == "collage":
        return
    if data_dir is None:
        raise ConfigError(f"--dataset {dataset} reads images from disk: pass --data-dir (the dataset's root folder)")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise ConfigError(f"--data-dir {data_dir}: {'a file, not a folder' if root.exists() else 'no such folder'}")


def build_datasets(name: str, root: Optional[str], train_tf, eval_tf, job: DistributedJob, *, val_fraction: float,
                   seed: int, cache: bool, progress: bool, **options: Any):
    """(training split, evaluation split(s)): the dataset's own, or with ``val_fraction`` both carved from its
    training classes; a split that cannot measure anything is refused (as `timm-gsp eval` refuses it);
    ``cache``: each split decoded once into memory. ``options``: ``build_dataset``'s."""
    with job.main_first():  # a generated dataset (the collage) is built once, before the other ranks read it
        train_set = build_dataset(name, root, "train", train_tf, **options)
    if val_fraction:  # both halves from the one training split read above
        val_set = carve_validation(train_set, "val", val_fraction, seed)
        val_set.transform = eval_tf  # select_classes returned a copy: the train half keeps train_tf
        train_set = carve_validation(train_set, "train", val_fraction, seed)
        eval_splits = {"val": val_set}
    else:
        eval_splits = {split: build_dataset(name, root, split, eval_tf, **options) for split in evaluation_splits(name)}
    check_evaluation_split(eval_splits, hint=", or change --train-fraction / --val-fraction")
    if cache:  # after the splits are carved: each decodes only its own images
        train_set = CachedDataset(train_set, progress=progress)
        eval_splits = {split: CachedDataset(data, progress=progress) for split, data in eval_splits.items()}
    return train_set, eval_splits


def build_sampler(train_set, batch_size: int, m_per_class: int, seed: int, job: DistributedJob):
    """m-per-class batches (``m_per_class`` 0: random ones), sharded over the ranks: one pass over the
    training images per epoch, whatever the world size."""
    layout = dict(num_batches=max(len(train_set) // (batch_size * job.world_size), 1) * job.world_size,
                  num_replicas=job.world_size, rank=job.rank, seed=seed)
    if m_per_class == 0:
        if len(train_set) < batch_size:
            raise ConfigError(f"--batch-size {batch_size} is more than the {len(train_set)} training images: lower --batch-size")
        return RandomBatchSampler(train_set.labels, batch_size, **layout)
    classes_per_batch = batch_size // m_per_class
    if train_set.num_classes < classes_per_batch:
        raise ConfigError(f"--batch-size {batch_size} / --m-per-class {m_per_class} = {classes_per_batch} "
                          f"classes per batch, but the training split has {train_set.num_classes}: lower --batch-size")
    return MPerClassBatchSampler(train_set.labels, m_per_class, batch_size, **layout)


# --- loss, optimiser, schedule --------------------------------------------------------------------

def build_criterion(loss: str, model, num_classes: int, embed_size: int, zsr_weight: float,
                    zsr_embed_dim: Optional[int], job: DistributedJob) -> torch.nn.Module:
    """``loss`` (a METRIC_LOSSES name) with GSP's zero-shot regulariser at ``zsr_weight``, on the job's device;
    under DDP the metric loss pairs embeddings across ranks, as one big batch."""
    metric_loss = METRIC_LOSSES[loss](num_classes, embed_size)
    if job.enabled:
        metric_loss = DistributedLossWrapper(metric_loss)
    kwargs = {"class_embed_dim": zsr_embed_dim} if zsr_embed_dim else {}
    return GSPMetricLoss(metric_loss, model, num_classes, zsr_weight=zsr_weight, **kwargs).to(job.device)


def build_optimizer(model, criterion, opt: str, learning_rates: Dict[str, float], weight_decay: float) -> torch.optim.Optimizer:
    """Separate learning rates (``learning_rates``: backbone, head, prototypes, loss): backbone, embedding head,
    GSP prototypes, loss parameters. A pool's own parameters (GeM's exponent; GSP's cell map, learned ratio and
    GeM exponent) are new like the embedding, not pretrained: they learn at the head's rate."""
    pools = [m for m in model.modules() if isinstance(m, (GeneralizedMeanPool, timm_gsp.GeneralizedSumPool))]
    prototypes = {id(pool.prototypes) for _, pool in timm_gsp.gsp_modules(model)}
    head = {id(p) for module in [model.get_classifier(), *pools] for p in module.parameters()} - prototypes
    groups: Dict[str, List[torch.nn.Parameter]] = {"backbone": [], "head": [], "prototypes": []}
    for p in model.parameters():
        if p.requires_grad:
            key = "prototypes" if id(p) in prototypes else "head" if id(p) in head else "backbone"
            groups[key].append(p)
    param_groups = [{"name": k, "params": v, "lr": learning_rates[k]} for k, v in groups.items() if v]
    loss_params = [p for p in criterion.parameters() if p.requires_grad]
    if loss_params:
        param_groups.append({"name": "loss", "params": loss_params, "lr": learning_rates["loss"], "weight_decay": 0.0})
    optimizer_cls = torch.optim.AdamW if opt == "adamw" else torch.optim.Adam
    return optimizer_cls(param_groups, lr=learning_rates["head"], weight_decay=weight_decay)


def build_scheduler(optimizer, steps_per_epoch: int, epochs: int, warmup_epochs: float, sched: str):
    """timm's per-update schedule of every group's rate ``peak`` (its ``initial_lr``), over T = epochs x
    steps_per_epoch updates with W = warmup_epochs x steps_per_epoch of warm-up: update t runs at

        peak * t / W                                   for t < W   (a linear warm-up from 0)
        peak * (1 + cos(pi * (t - W) / (T - W))) / 2   for t >= W  (sched "cosine"; "none": peak)

    Step it after each update with ``step_update(updates done)``. It is a pure function of the
    settings and the update count, so a resumed run restores the count and, with a new --epochs,
    follows the schedule stretched to the new length."""
    total = max(epochs * steps_per_epoch, 1)
    warmup = int(warmup_epochs * steps_per_epoch)
    common = dict(warmup_t=warmup, warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)
    if sched == "none" or total - warmup <= 1:  # (a cosine over one update is its peak: no schedule to follow)
        return StepLRScheduler(optimizer, decay_t=total, decay_rate=1.0, **common)
    return CosineLRScheduler(optimizer, t_initial=total - warmup, lr_min=0.0, **common)


def amp_dtype(choice: str, device: torch.device) -> Optional[torch.dtype]:
    if choice == "none" or (choice == "auto" and device.type != "cuda"):
        return None
    if choice == "fp16" or (choice == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def saved_update_count(saved: Dict[str, Any]) -> int:
    """The update count a checkpoint's schedule reached (``last_epoch`` in the checkpoints of the torch
    LambdaLR that timm's scheduler replaced: it stepped once per update too)."""
    return int(saved["num_updates"] if "num_updates" in saved else saved["last_epoch"])


# --- the run folder ------------------------------------------------------------------------------

def prepare_output(output: Path, job: DistributedJob, exits: contextlib.ExitStack, *, resume: bool, overwrite: bool) -> Path:
    """The output folder, this run's from its first look at it until the run ends, however it ends: rank 0
    claims it (``FolderClaim``: a lock that dies with its process, so a killed run's claim is taken
    over), refusing a folder another live run holds (--resume and --overwrite too), and one that holds a
    run unless ``resume`` or ``overwrite`` says so. ``exits`` releases the claim; a folder the claim made
    goes with it if the run wrote nothing into it, and one that was there before is left as it was
    (--overwrite replaces the previous run only once this one can start: ``clear_run_files``)."""
    refusal = None
    if job.is_main:
        try:
            claim_output(output, exits, resume=resume, overwrite=overwrite)
        except TimmGSPError as error:
            refusal = error
    refusal = job.all_gather_object(refusal)[0]  # every rank stops with rank 0's reason
    if refusal is not None:
        raise refusal
    return output


def claim_output(output: Path, exits: contextlib.ExitStack, *, resume: bool, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise OutputExistsError(f"--output {output} is a file, not a folder: choose another --output")
    claim = FolderClaim(output)
    if not claim.acquire():
        raise OutputExistsError(f"--output {output} is in use by {claim.holder}: wait for it to end, "
                                f"or choose another --output")
    exits.callback(claim.release)
    if resume:
        return
    existing = sorted(p.name for p in output.iterdir() if p.name != CLAIM_FILE)
    if existing and not overwrite:
        ours = run_files(output)
        what = ", ".join(ours) if ours else f"{len(existing)} other files"
        raise OutputExistsError(f"--output {output} already holds a run ({what}): pass --resume to continue it, "
                                f"--overwrite to replace it, or choose another --output")


def run_files(output: Path) -> List[str]:
    """The names in ``output`` that a run writes (anything else there is the user's)."""
    return sorted(p.name for p in output.iterdir() if p.name in RUN_FILES or p.name.startswith(".checkpoint"))


def clear_run_files(output: Path) -> None:
    """--overwrite: the previous run's files go once this run can start (a run that fails at its start
    replaces nothing); anything else in the folder is the user's and stays."""
    for name in run_files(output):
        target = output / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()


def check_resume_settings(current: Dict[str, Any], saved: Dict[str, Any], source: Path) -> None:
    """Refuse a --resume whose model / data / optimisation settings (``current``: the flags) differ from
    the checkpoint's."""
    current = json.loads(json.dumps(current))  # lists for tuples, as stored
    changed = [f"--{key.replace('_', '-')}: {saved[key]!r} in the checkpoint, {current.get(key)!r} now"
               for key in sorted(saved) if key not in RESUMABLE and saved[key] != current.get(key)]
    if changed:
        raise ConfigError(f"--resume from {source} with other settings than the run's: " + "; ".join(changed)
                          + f". Resume with the run's settings (only {', '.join('--' + k.replace('_', '-') for k in sorted(RESUMABLE - {'resume', 'overwrite', 'output', 'debug'}))} may change), "
                          "or start a new run with --output")


def recorded_flags(args: argparse.Namespace) -> Dict[str, Any]:
    """The flags results.json records beside the setup (``recipe``): every flag, the weights file by name
    only (``pretrained_weights`` names it by content; its folder is this machine's business)."""
    flags = dict(vars(args))
    if flags.get("pretrained_path"):
        flags["pretrained_path"] = Path(flags["pretrained_path"]).name
    return flags


def write_lines(path: Path, lines: List[str]) -> None:
    write_file_atomic(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8"))


def after_failed_write(output: str, error: BaseException) -> str:
    """After a write that failed (a full disk): that the last checkpoint is whole, and how to go on."""
    if isinstance(error, OutputWriteError) and (Path(output) / "checkpoint").is_dir():
        return f"; the last checkpoint in {output} is whole: make room, then continue it with --resume"
    return ""


# --- what the run says: its start, whether it learns, its curves --------------------------------------

def describe_run(setup: TrainingSetup, *, recipe_file: Path, pool_name: str, model_kwargs: Dict[str, Any], embed_size: int,
                 data_dir: Optional[str], train_set, eval_splits, transforms, weights: Optional[Dict[str, str]]) -> str:
    """What the run is about to do, for the first lines of its log: its ``setup``, the data's sizes, both
    transforms; ``weights``: the pretrained-weights file it started from (``pretrained_weights_record``),
    named by file name and short content hash."""
    lrs = ", ".join(f"{group} {lr:g}" for group, lr in setup.learning_rates.items())
    if setup.warmup_epochs:
        lrs += f" (after {setup.warmup_epochs:g} warm-up epoch{'s' if setup.warmup_epochs != 1 else ''})"
    pool = pool_name if setup.pool == pool_name else f"{pool_name} ({setup.pool})"
    embedding = f"embedding {embed_size}" if setup.embed_dim else f"no embedding layer (the {embed_size}-d pooled features)"
    zsr = f" + ZSR {setup.zsr_weight:g}" if setup.zsr_weight else ""
    batches = "random images, no class balancing" if setup.m_per_class == 0 else \
        f"{setup.batch_size // setup.m_per_class} classes x {setup.m_per_class}"
    evals = ", ".join(f"{name} {len(s)} images / {s.num_classes} classes" for name, s in eval_splits.items())
    train_tf, eval_tf = transforms
    steps = lambda tf: " -> ".join(" ".join(repr(t).split()) for t in getattr(tf, "transforms", [tf]))  # noqa: E731
    start = f"pretrained: {weights['file']} sha256:{weights['sha256'][:12]}" if weights else \
        "pretrained" if setup.pretrained else "from scratch"
    return "\n".join([
        f"recipe {setup.recipe} ({recipe_file})",
        f"model {setup.model} ({start}){' ' + str(dict(model_kwargs)) if model_kwargs else ''}, "
        f"pool {pool}, {embedding}{', BatchNorm frozen (--freeze-bn)' if setup.freeze_bn else ''}",
        f"data {setup.dataset} {data_dir or ''}: train {len(train_set)} images / {train_set.num_classes} classes; eval {evals}",
        f"loss {setup.loss}{zsr}; {setup.optimizer} learning rates: {lrs}; weight decay {setup.weight_decay:g}; "
        f"{setup.epochs} epochs, batch {setup.batch_size} ({batches})",
        f"train transform: {steps(train_tf)}",
        f"eval transform: {steps(eval_tf)}",
    ])


def learning_check(history: List[Dict[str, Any]], precision_at_1: Optional[float],
                   chance: Optional[float]) -> Optional[Dict[str, Any]]:
    """``{"not_learning": bool, ...}`` with the numbers it was judged on (see LOSS_STALL_RATIO and
    CHANCE_MULTIPLE); None before a second epoch (no trend yet) or without a P@1 to judge."""
    losses = [h["train_loss"] for h in history if h.get("train_loss") is not None]
    if len(losses) < 2 or precision_at_1 is None or chance is None:
        return None
    stalled = losses[-1] >= LOSS_STALL_RATIO * losses[0]  # (>=: a loss stuck at 0 gives no gradient either)
    return {"not_learning": bool(stalled and precision_at_1 < CHANCE_MULTIPLE * chance), "epochs": len(losses),
            "first_epoch_loss": losses[0], "last_epoch_loss": losses[-1], "precision_at_1": precision_at_1,
            "chance_precision_at_1": chance}


def not_learning_warning(check: Dict[str, Any]) -> str:
    """One line: the numbers, and what to change."""
    return (f"train.py: warning: this run is not learning: training loss {check['first_epoch_loss']:.4g} in epoch 1 "
            f"and {check['last_epoch_loss']:.4g} in epoch {check['epochs']} (not below {LOSS_STALL_RATIO:g} x), "
            f"P@1 {check['precision_at_1']:.3f} below {CHANCE_MULTIPLE:g} x chance ({check['chance_precision_at_1']:.3f}); "
            f"try a 10x lower or higher --lr, another --m-per-class (0: random batches), a --model whose early "
            f"stages keep more resolution, or a larger --img-size")


def plot_metrics(history: List[Dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [h for h in history if h.get(SELECTION_METRIC) is not None]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot([h["epoch"] for h in history], [h["train_loss"] for h in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="train loss", title="training loss")
    for key in ("precision_at_1", "r_precision", "map_at_r"):
        ax_metric.plot([h["epoch"] for h in evals], [h[key] for h in evals], marker="o", label=key)
    ax_metric.set(xlabel="epoch", ylabel="metric", title="retrieval on held-out classes")
    ax_metric.legend()
    fig.tight_layout()
    try:
        write_file_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))  # a full disk: OutputWriteError
    finally:
        plt.close(fig)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
