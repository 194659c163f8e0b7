"""The ``timm-gsp`` command: embed, search, eval, export, push, show.

Every command that runs a model takes it the same way::

    --model hf-hub:<repo> | local-dir:<folder>      a published model (weights included)
    --model <timm name> [--embed-dim ... --num-prototypes ...] --checkpoint <model.safetensors or folder>
    --checkpoint <folder with timm's config.json>   (e.g. a folder written by ``timm-gsp export``)

Embeddings files (``embed`` writes, ``search`` reads): ``.safetensors`` with the tensor
``embeddings`` (M, D) and the image paths and model in its metadata, or ``.npy`` with a
``<file>.json`` beside it holding the paths and model. Embeddings are the model's raw outputs;
``search`` ranks by cosine similarity.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .data.images import is_image_file

__all__ = ["main", "build_parser", "collect_images", "read_embeddings", "write_embeddings"]

EMBEDDINGS_KEY = "embeddings"
EMBEDDINGS_FORMAT = "timm-gsp-embeddings/1"
# Flags of a timm model name, passed to timm_gsp.create_model (None = create_model's default).
_CREATE_FLAGS = ("embed_dim", "num_prototypes", "transport_ratio", "gamma", "pool", "img_size")
# Architecture keys of a training run's config (examples/train.py); its img_size is a preprocessing
# size there, not a model argument, so it is not among them.
_RUN_MODEL_KEYS = ("embed_dim", "num_prototypes", "transport_ratio", "gamma", "pool")
_RUN_POOLS = {"gap": "avg"}  # train.py's --pool names -> timm_gsp.create_model's


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


# --- images and embeddings files ----------------------------------------------------------------

def collect_images(paths: Sequence[str]) -> List[str]:
    """Image files named directly, plus the image files below named folders (sorted, recursive)."""
    found: List[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(str(p) for p in path.rglob("*") if p.is_file() and is_image_file(p))
        elif path.is_file():
            found.append(str(path))
        else:
            raise CommandError(f"no such file or folder: {raw}")
    if not found:
        raise CommandError(f"no images found in {list(paths)}")
    return found


class _ImageFiles(torch.utils.data.Dataset):
    """``dataset[i] -> transform(RGB image i)``."""

    def __init__(self, paths: Sequence[str], transform: Callable):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.paths[index]) as image:
                return self.transform(image.convert("RGB"))
        except (OSError, UnidentifiedImageError) as error:
            raise CommandError(f"cannot read image {self.paths[index]}: {error}") from error


def write_embeddings(path: str, embeddings: torch.Tensor, paths: Sequence[str], source: Dict[str, Any]) -> Path:
    """Write (M, D) embeddings with their image paths and the model that made them."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": EMBEDDINGS_FORMAT, "paths": list(paths), "model": source}
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        # safetensors metadata is str -> str: the lists and dicts go in as JSON.
        save_file({EMBEDDINGS_KEY: embeddings.contiguous()}, str(out),
                  metadata={k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})
    elif out.suffix == ".npy":
        import numpy as np

        np.save(out, embeddings.numpy())
        Path(f"{out}.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    else:
        raise CommandError(f"embeddings file must end in .safetensors or .npy, got {out.name}")
    return out


def read_embeddings(path: str) -> Tuple[torch.Tensor, List[str], Dict[str, Any]]:
    """(embeddings (M, D), image paths (M,), model source) of a file written by ``write_embeddings``."""
    file = Path(path)
    if not file.is_file():
        raise CommandError(f"no such embeddings file: {path}")
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            embeddings, raw = f.get_tensor(EMBEDDINGS_KEY), f.metadata() or {}
        meta = {k: (v if k == "format" else json.loads(v)) for k, v in raw.items()}
    elif file.suffix == ".npy":
        import numpy as np

        embeddings = torch.from_numpy(np.load(file, allow_pickle=False))
        meta = json.loads(Path(f"{file}.json").read_text(encoding="utf-8"))
    else:
        raise CommandError(f"embeddings file must end in .safetensors or .npy, got {file.name}")
    paths = meta.get("paths") or []
    if embeddings.dim() != 2 or len(paths) != embeddings.shape[0]:
        raise CommandError(f"{path}: {tuple(embeddings.shape)} embeddings for {len(paths)} paths")
    return embeddings.float(), paths, meta.get("model") or {}


# --- the model ----------------------------------------------------------------------------------

def _add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", help="hf-hub:<repo>, local-dir:<folder>, or a timm model name (with the flags below)")
    group.add_argument("--checkpoint", help="model.safetensors, or a folder holding it (with timm's config.json: --model not needed)")
    group.add_argument("--embed-dim", type=int, help="for a timm name: embedding size (default 512)")
    group.add_argument("--num-prototypes", type=int, help="for a timm name: GSP prototypes (default 64)")
    group.add_argument("--transport-ratio", type=float, help="for a timm name: GSP transport ratio (default 0.3)")
    group.add_argument("--gamma", type=float, help="for a timm name: GSP gamma (default 5)")
    group.add_argument("--pool", help="for a timm name: 'gsp' (default) or a timm pool for baselines")
    group.add_argument("--img-size", type=int, help="for a timm name: img_size of fixed-size models (ViT, ...)")
    group.add_argument("--input-size", type=int, help="resize images to this size (default: the model's config)")
    group.add_argument("--device", default=None, help="default: cuda if available, else cpu")


def _model_source(args: argparse.Namespace) -> Dict[str, Any]:
    """How the model was given: enough for ``search`` to rebuild it from an embeddings file."""
    create = {k: getattr(args, k) for k in _CREATE_FLAGS if getattr(args, k, None) is not None}
    checkpoint = str(Path(args.checkpoint).resolve()) if args.checkpoint else None
    model = args.model
    if model and model.startswith("local-dir:"):  # absolute, so the record works from any folder
        model = f"local-dir:{Path(model[len('local-dir:'):]).resolve()}"
    return {"model": model, "checkpoint": checkpoint, "create_args": create, "input_size": args.input_size}


def _device(args: argparse.Namespace) -> torch.device:
    return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _load(source: Dict[str, Any], device: torch.device) -> Tuple[torch.nn.Module, Callable, Dict[str, Any]]:
    """(model in eval mode, eval transform, data config) of a model source."""
    from timm.data import create_transform, resolve_data_config

    from .hub import load_model

    name, checkpoint = source.get("model"), source.get("checkpoint")
    if not name and not checkpoint:
        raise CommandError("give --model (hf-hub:<repo>, local-dir:<folder> or a timm name) and/or --checkpoint")
    if name and not name.startswith(("hf-hub:", "hf_hub:", "local-dir:")) and not checkpoint:
        # A bare timm name has a freshly initialised head: its embeddings would mean nothing.
        raise CommandError(f"--model {name} needs --checkpoint with its trained weights "
                           "(or give a published model: hf-hub:<repo> / local-dir:<folder>)")
    model = load_model(name, checkpoint, **source.get("create_args", {}))
    model = model.to(device).eval()
    config = resolve_data_config(model=model)
    if source.get("input_size"):
        config["input_size"] = (config["input_size"][0], source["input_size"], source["input_size"])
    return model, create_transform(**config), config


@torch.no_grad()
def _embed(model: torch.nn.Module, transform: Callable, paths: Sequence[str], device: torch.device,
           batch_size: int, workers: int, quiet: bool) -> torch.Tensor:
    """(M, D) float32 embeddings of the images, batched, with a progress bar."""
    from tqdm import tqdm

    loader = torch.utils.data.DataLoader(_ImageFiles(paths, transform), batch_size=batch_size, num_workers=workers)
    out = []
    with tqdm(total=len(paths), unit="img", desc="embed", disable=quiet, file=sys.stderr) as bar:
        for images in loader:
            out.append(model(images.to(device)).float().cpu())
            bar.update(images.shape[0])
    return torch.cat(out)


# --- commands -----------------------------------------------------------------------------------

def cmd_embed(args: argparse.Namespace) -> int:
    paths = collect_images(args.images)
    source = _model_source(args)
    device = _device(args)
    model, transform, _ = _load(source, device)
    embeddings = _embed(model, transform, paths, device, args.batch_size, args.workers, args.quiet)
    out = write_embeddings(args.output, embeddings, paths, source)
    print(f"wrote {embeddings.shape[0]} embeddings of size {embeddings.shape[1]} to {out}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    gallery, gallery_paths, indexed_source = read_embeddings(args.index)
    queries = collect_images(args.queries)
    # The queries must go through the model that embedded the gallery: by default, the recorded one.
    source = _model_source(args) if (args.model or args.checkpoint) else indexed_source
    device = _device(args)
    model, transform, _ = _load(source, device)
    query = _embed(model, transform, queries, device, args.batch_size, args.workers, args.quiet)
    if query.shape[1] != gallery.shape[1]:
        raise CommandError(f"query embeddings have size {query.shape[1]}, the index {gallery.shape[1]}: not the same model")
    scores = torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(gallery, dim=1).T
    top = scores.topk(min(args.top_k, gallery.shape[0]), dim=1)
    results = [
        {"query": q, "results": [{"rank": r + 1, "path": gallery_paths[i], "score": s}
                                 for r, (s, i) in enumerate(zip(top.values[n].tolist(), top.indices[n].tolist()))]}
        for n, q in enumerate(queries)
    ]
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for item in results:
            print(item["query"])
            for hit in item["results"]:
                print(f"  {hit['rank']:>3}  {hit['score']:.4f}  {hit['path']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    # Data and metrics are only needed here: importing them lazily keeps the other commands light.
    from .data import build_dataset, evaluation_splits
    from .evaluate import evaluate_retrieval
    from .hub import metrics_table

    source = _model_source(args)
    device = _device(args)
    model, transform, data_config = _load(source, device)
    if args.split:
        split_names: Tuple[str, ...] = tuple(args.split)
    else:
        # A plain folder is evaluated whole; benchmarks on their held-out classes.
        split_names = ("all",) if args.dataset == "folder" else evaluation_splits(args.dataset)
    splits = {name: build_dataset(args.dataset, args.root, name, transform) for name in split_names}
    if len(splits) > 1 and set(splits) != {"query", "gallery"}:
        raise CommandError(f"evaluate one split, or query and gallery; got {list(splits)}")
    metrics = evaluate_retrieval(model, splits, k_values=tuple(args.k), batch_size=args.batch_size,
                                 num_workers=args.workers, device=device, progress=not args.quiet)
    print(metrics_table(metrics))
    if args.output:
        # The run config speaks create_model's vocabulary, so `export` can rebuild the model from it.
        config = {"model": source["model"], "checkpoint": source["checkpoint"], **source["create_args"],
                  "dataset": args.dataset, "root": args.root, "split": "+".join(split_names)}
        results = {"metrics": metrics, "config": {k: v for k, v in config.items() if v is not None},
                   "data_config": data_config}
        Path(args.output).write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


def _export_model(args: argparse.Namespace, results: Dict[str, Any]) -> torch.nn.Module:
    """The model of a training checkpoint (see ``cmd_export``)."""
    from .hub import is_model_folder, load_model

    checkpoint = Path(args.checkpoint)
    if not checkpoint.exists():
        raise CommandError(f"no such checkpoint: {checkpoint}")
    create = {k: getattr(args, k) for k in _CREATE_FLAGS if getattr(args, k, None) is not None}
    if args.model:
        return load_model(args.model, checkpoint, **create)
    if is_model_folder(checkpoint):
        return load_model(None, checkpoint)
    run = results.get("config", {})
    if isinstance(run.get("model"), str):
        # A run config (examples/train.py's arguments) names the model and its head.
        from_run = {k: run[k] for k in _RUN_MODEL_KEYS if run.get(k) is not None}
        if "pool" in from_run:
            from_run["pool"] = _RUN_POOLS.get(from_run["pool"], from_run["pool"])
        return load_model(run["model"], checkpoint, **{**from_run, **create})
    raise CommandError(
        f"cannot tell the architecture of {checkpoint}: pass --model <timm name> with its GSP flags, "
        "or keep timm's config.json (or a results.json whose config names 'model') beside model.safetensors"
    )


def cmd_export(args: argparse.Namespace) -> int:
    from .hub import find_results, read_results, save_pretrained

    results_path = args.results or find_results(args.checkpoint)
    results = read_results(results_path)
    model = _export_model(args, results)
    data_config = {k: v for k, v in (("input_size", args.input_size), ("crop_pct", args.crop_pct)) if v is not None} or None
    if data_config and "input_size" in data_config:
        data_config["input_size"] = (3, args.input_size, args.input_size)
    if Path(args.output).resolve() == Path(args.checkpoint).resolve():
        raise CommandError("the output folder must differ from the checkpoint")
    folder = save_pretrained(model, args.output, results, data_config=data_config, repo_id=args.repo_id,
                             dataset=args.dataset, split=args.split, license=args.license)
    print(f"wrote {folder} ({', '.join(sorted(p.name for p in folder.iterdir()))})"
          + (f" with the metrics of {results_path}" if results_path else " (no results.json: the card has no metrics)"))
    # The published preprocessing is what every user will apply: show it, it must be the run's.
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))["pretrained_cfg"]
    print(f"published input: {'x'.join(map(str, cfg['input_size']))}, crop_pct {cfg.get('crop_pct')}, "
          f"{cfg.get('interpolation')} (if the run evaluated otherwise, export again with --input-size / --crop-pct)")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .hub import upload_folder, verify_folder

    if not args.no_verify:
        # What the Hub will serve must rebuild from its config.json and hold every tensor it needs.
        verify_folder(args.folder)
    url = upload_folder(args.folder, args.repo_id, token=args.token, private=args.private, revision=args.revision,
                        create_pr=args.create_pr, commit_message=args.message)
    print(f"uploaded {args.folder} to {args.repo_id}: {url}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .viz import save_overlays

    paths = collect_images(args.images)
    source = _model_source(args)
    device = _device(args)
    model, transform, config = _load(source, device)
    stems = _unique_stems(paths)
    files = _ImageFiles(paths, transform)
    written = 0
    for start in range(0, len(paths), args.batch_size):
        chunk = range(start, min(start + args.batch_size, len(paths)))
        images = torch.stack([files[i] for i in chunk]).to(device)
        written += len(save_overlays(model, images, args.output, [stems[i] for i in chunk], mean=config["mean"],
                                     std=config["std"], top_prototypes=args.top_prototypes, alpha=args.alpha))
    print(f"wrote {written} PNG files to {args.output}")
    return 0


def _unique_stems(paths: Sequence[str]) -> List[str]:
    """File stems, suffixed where two images share one (a/x.jpg, b/x.jpg -> x, x-1)."""
    seen: Dict[str, int] = {}
    stems = []
    for path in paths:
        stem = Path(path).stem
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        stems.append(stem if count == 0 else f"{stem}-{count}")
    return stems


# --- the parser ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="timm-gsp", description="Image retrieval with GSP (Generalized Sum Pooling) timm models.")
    parser.add_argument("--version", action="version", version=f"timm-gsp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def runner(p: argparse.ArgumentParser) -> None:
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--workers", type=int, default=0, help="image loading processes")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("embed", help="images or folders -> embeddings file")
    p.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--output", "-o", required=True, help="embeddings file: .safetensors or .npy")
    _add_model_args(p)
    runner(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("search", help="query images against an embeddings file: top-k with cosine scores")
    p.add_argument("queries", nargs="+", help="query image files and/or folders")
    p.add_argument("--index", required=True, help="embeddings file written by `timm-gsp embed`")
    p.add_argument("--top-k", "-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_model_args(p)
    p.description = "The model defaults to the one recorded in the index."
    runner(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("eval", help="retrieval metrics of a model on a dataset")
    p.add_argument("--dataset", required=True, help="cub, cars, sop, inshop, folder (root/<class>/<images>) or collage")
    p.add_argument("--root", help="dataset folder")
    p.add_argument("--split", nargs="+", help="default: the benchmark's test split(s); all classes for a folder")
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8], help="the K of Recall@K")
    p.add_argument("--output", "-o", help="also write results.json (the input of `timm-gsp export --results`)")
    _add_model_args(p)
    runner(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="training checkpoint -> a folder ready for the Hub (local-dir:)",
                       description="CHECKPOINT: model.safetensors (the model's state dict) or a folder holding it, "
                                   "e.g. a training checkpoint folder (other files there, such as optimizer or loss "
                                   "state, are ignored) or an already exported folder. The architecture comes from "
                                   "--model and its flags, else timm's config.json beside the weights, else the "
                                   "'model' key (and create_model arguments) of the run's results.json config.")
    p.add_argument("checkpoint")
    p.add_argument("output", help="the folder to write: model.safetensors, config.json, README.md")
    p.add_argument("--results", help="the run's results.json (default: beside the checkpoint or one folder up)")
    p.add_argument("--repo-id", help="Hub repo named in the model card (default: filled in by push)")
    p.add_argument("--dataset", help="dataset for the card (default: results config 'dataset')")
    p.add_argument("--split", help="evaluation split for the card (default: results config 'split', else test)")
    p.add_argument("--license", default="apache-2.0")
    p.add_argument("--crop-pct", type=float, help="evaluation crop_pct to publish (default: the run's, else the model's)")
    _add_model_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("push", help="upload an exported folder to the Hugging Face Hub (needs a token)")
    p.add_argument("folder")
    p.add_argument("repo_id", help="<user or org>/<name>")
    p.add_argument("--token", help="default: HF_TOKEN or the stored login")
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision")
    p.add_argument("--create-pr", action="store_true")
    p.add_argument("--message", default="Add GSP retrieval model", help="commit message")
    p.add_argument("--no-verify", action="store_true", help="skip loading the folder with timm before the upload")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("show", help="PNG heat maps of the GSP pooling weights and prototype assignments")
    p.add_argument("images", nargs="+", help="image files and/or folders")
    p.add_argument("--output", "-o", required=True, help="folder for <image>_gsp.png and <image>_prototype<k>.png")
    p.add_argument("--top-prototypes", type=int, default=3, help="assignment maps of the prototypes with most mass")
    p.add_argument("--alpha", type=float, default=0.5, help="heat map opacity")
    _add_model_args(p)
    runner(p)
    p.set_defaults(func=cmd_show)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``timm-gsp`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from .hub import CheckpointMismatchError, HubUnavailableError

    try:
        return args.func(args)
    except (CommandError, CheckpointMismatchError, HubUnavailableError, FileNotFoundError, FileExistsError) as error:
        print(f"timm-gsp {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
