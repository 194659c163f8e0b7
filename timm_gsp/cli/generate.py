"""``timm-gsp generate``: write one of the generated image-folder benchmarks (``data.generated``: scenes,
fashion, collage) to a folder, and print the folder; ``--preview`` also saves a contact sheet."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_parsers", "cmd_generate"]


def cmd_generate(args: argparse.Namespace) -> int:
    from ..data.generated import default_config, write_family, write_preview

    overrides = {k: v for k, v in (("num_classes", args.num_classes), ("images_per_class", args.images_per_class),
                                   ("image_size", args.image_size)) if v is not None}
    root = write_family(args.family, args.out, default_config(args.family, args.seed, **overrides), progress=not args.quiet)
    if args.preview is not None:
        write_preview(root, args.preview)
    print(root)
    return 0


def add_parsers(sub: Any) -> None:
    """``generate``, on the sub-command parsers of ``timm-gsp``."""
    from ..data.generated.folder_family import FAMILIES

    p = sub.add_parser("generate", help="write a generated image-folder benchmark (scenes, fashion, collage)",
                       description="Writes root/class_NNN/NN.png and root/<family>.json (the object boxes); each "
                                   "family's 200 classes x 20 images of 96 px take about 30 s on one core. scenes and "
                                   "fashion need pip install 'timm-gsp[bench]'.")
    p.add_argument("--family", required=True, choices=FAMILIES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path, help="the folder to write (must be empty or absent)")
    p.add_argument("--num-classes", type=int, default=None, help="default 200 (half train, half test)")
    p.add_argument("--images-per-class", type=int, default=None, help="default 20")
    p.add_argument("--image-size", type=int, default=None, help="default 96")
    p.add_argument("--preview", type=Path, default=None, help="also save a PNG contact sheet of a few classes here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)
