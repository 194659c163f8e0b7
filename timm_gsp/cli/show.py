"""``timm-gsp show``: PNG heat maps of a model's GSP pooling weights and prototype assignments on images."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import torch

from ..errors import TimmGSPError
from .inputs import add_model_flags, add_runner_flags, collect_images, device, image_dataset, load
from .support import printable_path

__all__ = ["add_parsers", "cmd_show"]


def cmd_show(args: argparse.Namespace) -> int:
    from ..hub.model_sources import find_model
    from ..retrieval.viz import save_overlays

    images = collect_images(args.images)
    loaded = load(find_model(args.model), args)
    paths = [path for path, _ in images]
    stems = _unique_stems(paths)
    files = image_dataset(paths, loaded.transform)
    written = 0
    for start in range(0, len(paths), args.batch_size):
        chunk = range(start, min(start + args.batch_size, len(paths)))
        batch = torch.stack([files[i][0] for i in chunk]).to(device(args))
        written += _write_into(Path(args.output), lambda folder: save_overlays(
            loaded.model, batch, folder, [stems[i] for i in chunk], mean=loaded.data_config["mean"],
            std=loaded.data_config["std"], top_prototypes=args.top_prototypes, alpha=args.alpha))
    print(f"wrote {written} PNG files to {printable_path(args.output)}")
    return 0


def _write_into(folder: Path, write: Callable[[Path], List[Path]]) -> int:
    """``write(tmp)`` into a fresh hidden folder inside ``folder``, then each file it wrote renamed into
    ``folder``: a write that fails (a full disk) leaves no partial file, and is an ``OutputWriteError``
    naming ``folder`` and the cause. Returns the number of files."""
    import shutil
    import uuid

    from ..utils import output_write_error

    tmp = folder / f".timm-gsp-{uuid.uuid4().hex[:12]}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        written = write(tmp)
        for file in written:
            Path(file).replace(folder / Path(file).name)
        return len(written)
    except TimmGSPError:
        raise
    except OSError as error:
        raise output_write_error(folder, error) from error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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


def add_parsers(sub: Any) -> None:
    """``show``, on the sub-command parsers of ``timm-gsp``."""
    p = sub.add_parser("show", help="PNG heat maps of the GSP pooling weights and prototype assignments")
    p.add_argument("images", nargs="+", help="image files and/or folders")
    p.add_argument("--output", "-o", required=True, help="folder for <image>_gsp.png and <image>_prototype<k>.png")
    p.add_argument("--top-prototypes", type=int, default=3, help="assignment maps of the prototypes with most mass")
    p.add_argument("--alpha", type=float, default=0.5, help="heat map opacity")
    add_model_flags(p)
    add_runner_flags(p)
    p.set_defaults(func=cmd_show)
