"""What the commands take from the command line: image files and folders (``collect_images``) and their
classes (``read_labels``), the model of ``--model SOURCE`` on its device with its evaluation
preprocessing (``load``), the images embedded by it (``embed_files``), and the flags that every
command running a model shares (``add_model_flags``, ``add_runner_flags``)."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..errors import ConfigError
from .support import printable_path

__all__ = ["MODEL_HELP", "Loaded", "add_model_flags", "add_runner_flags", "check_finite", "collect_images", "device",
           "embed_files", "image_dataset", "load", "positive", "read_labels", "start_distributed"]

MODEL_HELP = ("hf-hub:<repo>, local-dir:<folder> or a published folder, a training checkpoint folder, "
              "or a training run folder (its results.json names the checkpoint)")


# --- images -------------------------------------------------------------------------------------

def collect_images(paths: Sequence[str]) -> List[Tuple[str, Optional[str]]]:
    """``(absolute path, class)`` of the image files named directly (class: None) and of those below
    named folders (recursive, in path order; class: the first folder below the named one, as in a
    ``root/<class>/<images>`` dataset, read by the datasets' own ``scan_image_folder``; None for an
    image directly in the named folder)."""
    from ..data.datasets import scan_image_folder

    found: List[Tuple[str, Optional[str]]] = []
    for raw in paths:
        path = Path(raw).expanduser().resolve()
        if path.is_dir():
            images = scan_image_folder(path)
            below = [(file, name) for name, files in images.classes.items() for file in files]
            found.extend(sorted([*below, *((file, None) for file in images.loose)], key=lambda item: Path(item[0])))
        elif path.is_file():
            found.append((str(path), None))
        else:
            raise ConfigError(f"no such file or folder: {raw}")
    if not found:
        raise ConfigError(f"no images found in {list(paths)}")
    return found


def read_labels(file: str, paths: Sequence[str]) -> List[str]:
    """The class of each image from a JSON file ``{"image path": "class", ...}`` (paths absolute or
    relative to the file's folder)."""
    source = Path(file)
    try:
        mapping = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read labels file {file}: {error}") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, (str, int)) for v in mapping.values()):
        raise ConfigError(f"labels file {file}: expected a JSON object {{\"image path\": \"class\", ...}}")
    by_path = {str((source.parent / k).expanduser().resolve()): str(v) for k, v in mapping.items()}
    missing = [p for p in paths if p not in by_path]
    if missing:
        raise ConfigError(f"labels file {file} has no class for {len(missing)} images, e.g. {missing[0]}")
    return [by_path[p] for p in paths]


def image_dataset(paths: Sequence[str], transform: Callable) -> torch.utils.data.Dataset:
    """The images as the datasets' ``ImageFileDataset``, labelled by position: ``dataset[i] ->
    (transform(RGB image i), i)``; a missing or unreadable file is a one-line error naming it."""
    from ..data.base import ImageFileDataset

    return ImageFileDataset([(path, index) for index, path in enumerate(paths)], transform=transform,
                            name="images", split="all")


# --- the model ----------------------------------------------------------------------------------

@dataclass
class Loaded:
    """A model ready to embed: built, on its device, with its evaluation preprocessing."""

    model: torch.nn.Module
    found: Any  # hub.model_sources.ModelFolder
    data_config: Dict[str, Any]
    transform: Callable


def device(args: argparse.Namespace) -> torch.device:
    """``--device``, else this process's own device (``train.distributed.local_device``)."""
    from ..train.distributed import local_device

    return torch.device(args.device) if args.device else local_device()


def load(found: Any, args: argparse.Namespace) -> Loaded:
    """The model ``found`` (a ``ModelFolder``) built on its device, with its complete evaluation preprocessing."""
    from ..data import build_eval_transform
    from ..models.model_config import evaluation_data_config

    model = found.build().to(device(args))
    data_config = evaluation_data_config(model, found.config)
    return Loaded(model, replace(found, config=replace(found.config, data_config=data_config)), data_config,
                  build_eval_transform(data_config))


def positive(value: int, flag: str) -> int:
    if value < 1:
        raise ConfigError(f"{flag} must be >= 1, got {value}")
    return value


def embed_files(loaded: Loaded, paths: Sequence[str], args: argparse.Namespace) -> Optional[torch.Tensor]:
    """(M, D) float32 embeddings of the images; under torchrun each process embeds its shard and
    rank 0 gets all of them in order (the other ranks get None). A NaN or an infinity from the model
    is a ``ConfigError`` naming the image."""
    from ..retrieval.evaluate import embed_dataset
    from ..utils import world_size_and_rank

    embeddings, order = embed_dataset(loaded.model, image_dataset(paths, loaded.transform), batch_size=args.batch_size,
                                      num_workers=args.workers, device=device(args), progress=not args.quiet)
    world_size, rank = world_size_and_rank()
    if world_size == 1:
        return check_finite(embeddings.cpu(), paths, loaded)
    parts = [None] * world_size if rank == 0 else None
    torch.distributed.gather_object((embeddings.cpu(), order.cpu()), parts, dst=0)
    if rank != 0:
        return None
    merged = torch.empty(len(paths), parts[0][0].shape[1])
    for rows, indices in parts:
        merged[indices] = rows
    return check_finite(merged, paths, loaded)


def check_finite(embeddings: torch.Tensor, paths: Sequence[str], loaded: Loaded) -> torch.Tensor:
    """``embeddings``, refused when the model gave a NaN or an infinity for an image (it would rank by NaN)."""
    from ..retrieval.search import nonfinite_rows

    bad = nonfinite_rows(embeddings)
    if len(bad):
        others = f", and for {len(bad) - 1} other of the {len(paths)} images" if len(bad) > 1 else ""
        raise ConfigError(f"{loaded.found.source} gives an embedding that is not finite (NaN or infinite) for "
                          f"{printable_path(paths[int(bad[0])])}{others}: its weights hold NaN or overflow; "
                          "nothing is ranked or written")
    return embeddings


def start_distributed() -> bool:
    """Join the torchrun job this process belongs to (gloo on CPU, nccl on GPUs); False outside one."""
    from ..train.distributed import start_distributed

    return start_distributed()


# --- the flags ----------------------------------------------------------------------------------

def add_model_flags(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--model", required=required, help=MODEL_HELP)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")


def add_runner_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0, help="image loading processes")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
