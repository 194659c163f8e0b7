"""Heat maps of what GSP pools: pooling weights and prototype assignments over the images.

For one batch, ``pooling_maps`` runs the model and reads, at its GSP pool, through
``capture_transport``,

* the pooling weights ``w`` (B, N) -- the share of each location in the embedding -- and the
  attributes (B, K);
* the costs that entered the transport, turned into per-prototype assignment maps
  ``softmax_i(-gamma * c_ij)``: which prototype each location is closest to, at the pool's own
  temperature (the assignment GSP's attributes are built from); zero on the border rings a pool
  with ``border > 0`` leaves out, like the weights;

then lays the N locations out on the feature grid: (H, W) of NCHW / NHWC features, or for ViT
tokens the factorisation of N closest to the image's aspect ratio (the patch grid, read without
touching the model's internals). ``overlay`` / ``save_overlays`` draw them over the images as PNG
files with a Pillow colour map (no plotting library needed).

Contact sheets, as PIL images: ``retrieval_sheet`` (each query and its ranked hits, framed green /
red when right / wrong) and ``weight_map_sheet`` (each image above GSP's selection over it).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont, ImageOps

from ..errors import ConfigError
from ..layers.gsp_pool import capture_transport, gsp_modules

__all__ = [
    "BACKGROUND",
    "CORRECT_COLOR",
    "Hit",
    "PoolingMaps",
    "denormalize",
    "feature_grid",
    "overlay",
    "pooling_maps",
    "retrieval_sheet",
    "save_overlays",
    "UNKNOWN_COLOR",
    "WRONG_COLOR",
    "to_pil",
    "upsample",
    "weight_map_sheet",
]

# Pillow's colorize maps 0 -> first, 0.5 -> middle, 1 -> last: a "hot"-like map, dark where GSP ignores.
DEFAULT_COLORS = ("black", "red", "yellow")


@dataclass
class PoolingMaps:
    """GSP's view of one batch, on the feature grid (h, w).

    Attributes:
        weights: (B, h, w) pooling weights; each image's weights sum to 1.
        selection: (B, h, w) the same weights times ``M * transport_ratio`` (M the transported
            locations: all N, or the interior with a border): the share of each location's mass
            that is transported, in [0, 1] (1 = fully pooled, 0 = ignored; GAP would be
            ``transport_ratio`` everywhere). What ``save_overlays`` draws.
        assignments: (B, K, h, w) softmax over the K prototypes of ``-gamma * cost`` per location
            (0 on a left-out border).
        attributes: (B, K) transported mass per prototype (sums to 1).
        grid_size: (h, w).
        module_name: the GSP pool these come from.
    """

    weights: torch.Tensor
    selection: torch.Tensor
    assignments: torch.Tensor
    attributes: torch.Tensor
    grid_size: Tuple[int, int]
    module_name: str


def feature_grid(num_tokens: int, image_size: Tuple[int, int]) -> Tuple[int, int]:
    """The (h, w) patch grid of ``num_tokens`` tokens for an image of ``image_size`` (H, W): the
    factorisation h * w = N with h / w closest to H / W (the square root for a square image)."""
    aspect = image_size[0] / image_size[1]
    pairs = [(h, num_tokens // h) for h in range(1, num_tokens + 1) if num_tokens % h == 0]
    return min(pairs, key=lambda hw: abs(math.log(hw[0] / hw[1] / aspect)))


@torch.no_grad()
def pooling_maps(model: nn.Module, images: torch.Tensor, pool: Optional[str] = None) -> PoolingMaps:
    """Run ``model`` on ``images`` (B, 3, H, W) and return the maps of its GSP pool.

    Args:
        pool: qualified name of the GSP pool to read (see ``gsp_modules``); default: the last one run.
    """
    named = dict(gsp_modules(model))
    if pool is not None and pool not in named:
        raise ValueError(f"no GSP pool named {pool!r}; the model has {sorted(named)}")
    with capture_transport(model) as plans:
        model(images)
    runs = [plan for plan in plans if pool is None or plan.module_name == pool]
    if not runs:
        raise RuntimeError(f"{type(model).__name__}'s forward did not run its GSP pool {pool or ''}".strip())
    plan = runs[-1]
    batch, num_tokens = plan.weights.shape
    grid = plan.grid_size or feature_grid(num_tokens, tuple(images.shape[-2:]))
    gsp = named[plan.module_name]
    assignments = plan.on_grid(torch.softmax(plan.costs.float() * -gsp.gamma, dim=1))  # (B, K, N)
    weights = plan.weights.float().reshape(batch, *grid)
    transported = plan.costs.shape[2]  # M locations carry mass 1 / M each
    return PoolingMaps(
        weights=weights,
        selection=(weights * (transported * gsp.transport_ratio)).clamp(0, 1),
        assignments=assignments.reshape(batch, -1, *grid),
        attributes=plan.attributes.float(),
        grid_size=tuple(grid),
        module_name=plan.module_name,
    )


def upsample(maps: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of (..., h, w) maps to (..., H, W)."""
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    return F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False).reshape(*lead, *size)


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo the input normalisation: (B, 3, H, W) model inputs -> displayable values in [0, 1]."""
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * std_t + mean_t).clamp(0, 1)


def to_pil(image: Union[torch.Tensor, Image.Image]) -> Image.Image:
    """An RGB PIL image from a (3, H, W) tensor in [0, 1] (or a PIL image, converted to RGB)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W) in [0, 1] or a PIL image, got shape {tuple(image.shape)}")
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


def overlay(
        image: Union[torch.Tensor, Image.Image],
        heat: torch.Tensor,
        alpha: float = 0.5,
        colors: Tuple[str, str, str] = DEFAULT_COLORS,
        scale: Optional[float] = 1.0,
) -> Image.Image:
    """``heat`` (h, w) divided by ``scale``, upsampled, colour mapped and blended over ``image``.

    Args:
        image: (3, H, W) in [0, 1] or a PIL image.
        heat: (h, w) non-negative map (any grid; upsampled bilinearly to the image).
        alpha: weight of the heat map in the blend.
        colors: the colours of 0, 0.5 and 1.
        scale: the heat drawn as 1; ``None``: the map's maximum (relative, for maps with no
            natural range). GSP's selection and assignments lie in [0, 1]: keep 1 to compare images.
    """
    base = to_pil(image)
    if heat.dim() != 2:
        raise ValueError(f"heat must be (h, w), got shape {tuple(heat.shape)}")
    heat = upsample(heat.detach().float().cpu(), (base.height, base.width))
    # Divide, never subtract a minimum: a location GSP ignores stays dark.
    heat = heat / (heat.max().clamp_min(1e-12) if scale is None else scale)
    gray = Image.fromarray((heat.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), "L")
    colored = ImageOps.colorize(gray, black=colors[0], mid=colors[1], white=colors[2])
    return Image.blend(base, colored, alpha)


def save_overlays(
        model: nn.Module,
        images: torch.Tensor,
        out_dir: Union[str, os.PathLike],
        names: Optional[Sequence[str]] = None,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        top_prototypes: int = 3,
        alpha: float = 0.5,
) -> List[Path]:
    """Write, per image, ``<name>_gsp.png`` (GSP's selection, ``PoolingMaps.selection``) and
    ``<name>_prototype<k>.png`` for the ``top_prototypes`` prototypes with the largest attribute
    (their assignment maps), both on the absolute [0, 1] scale.

    Args:
        images: (B, 3, H, W) normalised model inputs.
        names: one file stem per image (default ``image0000``, ...).
        mean, std: the normalisation of ``images`` (the model's data config), to draw them.

    Returns:
        the written paths, image by image.
    """
    names = list(names) if names is not None else [f"image{i:04d}" for i in range(images.shape[0])]
    if len(names) != images.shape[0]:
        raise ValueError(f"{len(names)} names for {images.shape[0]} images")
    maps = pooling_maps(model, images)
    shown = denormalize(images.float(), mean, std)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: List[Path] = []
    for index, name in enumerate(names):
        path = out / f"{name}_gsp.png"
        overlay(shown[index], maps.selection[index], alpha).save(path)
        written.append(path)
        top = maps.attributes[index].topk(min(top_prototypes, maps.attributes.shape[1])).indices
        for k in top.tolist():
            path = out / f"{name}_prototype{k}.png"
            overlay(shown[index], maps.assignments[index, k], alpha).save(path)
            written.append(path)
    return written


# --- contact sheets -----------------------------------------------------------------------------

BACKGROUND = (255, 255, 255)
TEXT_COLOR = (25, 25, 25)
CORRECT_COLOR = (0, 160, 0)  # frame of a hit with the query's label
WRONG_COLOR = (215, 0, 0)  # frame of a hit with another label
UNKNOWN_COLOR = (175, 175, 175)  # frame of a hit whose label is not known

ImageLike = Union[Image.Image, str, os.PathLike]


class Hit(NamedTuple):
    """One retrieved gallery item, as ``retrieval_sheet`` draws it.

    ``correct`` None: decided by comparing ``label`` with the query's label when both are known.
    """

    image: ImageLike
    score: float
    label: Optional[str] = None
    correct: Optional[bool] = None


class _Cell(NamedTuple):
    image: Image.Image  # every cell of a sheet has the same size
    lines: Sequence[str]  # caption, one string per line
    frame: Optional[Tuple[int, int, int]] = None


def retrieval_sheet(
        queries: Sequence[ImageLike],
        hits: Sequence[Sequence[Hit]],
        *,
        query_labels: Optional[Sequence[Optional[str]]] = None,
        thumb: int = 112,
        title: Optional[str] = None,
) -> Image.Image:
    """One row per query: the query, then its hits in rank order, each captioned.

    The query is captioned "query" and its label; hit r "#r  score" and its label. A hit is framed
    ``CORRECT_COLOR`` when right, ``WRONG_COLOR`` when wrong, ``UNKNOWN_COLOR`` when unknown.

    Args:
        queries: Q images (PIL images or paths).
        hits: per query, its hits best first (rows may differ in length).
        query_labels: the Q query labels, if known (a newline in one starts another caption line).
        thumb: thumbnail side in pixels (images are fitted inside, aspect kept).
        title: a line above the sheet.

    Returns:
        an RGB image of Q rows and 1 + max(len(row)) columns.
    """
    if len(hits) != len(queries):
        raise ConfigError(f"{len(hits)} rows of hits for {len(queries)} queries")
    if query_labels is not None and len(query_labels) != len(queries):
        raise ConfigError(f"{len(query_labels)} query labels for {len(queries)} queries")
    rows = []
    for q, (query, row) in enumerate(zip(queries, hits)):
        query_label = None if query_labels is None else query_labels[q]
        cells = [_Cell(_thumbnail(query, thumb), _caption("query", query_label))]
        for rank, hit in enumerate(row, 1):
            correct = hit.correct
            if correct is None and hit.label is not None and query_label is not None:
                correct = hit.label == query_label
            frame = UNKNOWN_COLOR if correct is None else CORRECT_COLOR if correct else WRONG_COLOR
            cells.append(_Cell(_thumbnail(hit.image, thumb), _caption(f"#{rank}  {hit.score:.3f}", hit.label), frame))
        rows.append(cells)
    return _sheet(rows, title=title, split_first_column=True)


def weight_map_sheet(
        model: nn.Module,
        images: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        captions: Optional[Sequence[str]] = None,
        thumb: int = 112,
        columns: int = 8,
        title: Optional[str] = None,
) -> Image.Image:
    """Per image, the image above GSP's selection over it (``PoolingMaps.selection``, [0, 1] scale).

    Args:
        images: (B, 3, H, W) normalised model inputs; ``mean`` / ``std`` their normalisation.
        captions: one caption per image, a newline between its lines (default ``image 0``, ...).
        columns: images per row of the sheet.

    Returns:
        an RGB image of ceil(B / columns) rows of captioned (image, overlay) pairs.
    """
    captions = list(captions) if captions is not None else [f"image {i}" for i in range(images.shape[0])]
    if len(captions) != images.shape[0]:
        raise ConfigError(f"{len(captions)} captions for {images.shape[0]} images")
    maps = pooling_maps(model, images)
    shown = denormalize(images.detach().float().cpu(), mean, std)
    cells = []
    for index, caption in enumerate(captions):
        pair = Image.new("RGB", (thumb, 2 * thumb + thumb // 16), BACKGROUND)
        pair.paste(_thumbnail(shown[index], thumb), (0, 0))
        pair.paste(_thumbnail(overlay(shown[index], maps.selection[index].cpu()), thumb), (0, pair.height - thumb))
        cells.append(_Cell(pair, caption.split("\n")))
    return _sheet([cells[i:i + columns] for i in range(0, len(cells), columns)], title=title)


def _caption(first: str, label: Optional[str]) -> List[str]:
    """Caption lines under a thumbnail: ``first``, then the label (a newline in it starts another line)."""
    return [first] if label is None else [first, *str(label).split("\n")]


def _thumbnail(image: Union[ImageLike, torch.Tensor], size: int) -> Image.Image:
    """``image`` fitted into a size x size square (aspect kept, centred on the background)."""
    if isinstance(image, (str, os.PathLike)):
        from ..data.images import load_rgb  # names the file when it is missing or corrupt

        image = load_rgb(image, layout="retrieval sheet")
    return ImageOps.pad(to_pil(image), (size, size), color=BACKGROUND)


def _font(size: int) -> ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` px; its small fixed bitmap font before Pillow 10.1."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    """``text``, shortened with an ellipsis until it fits ``width`` pixels."""
    while len(text) > 1 and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…"
    return text


def _sheet(rows: Sequence[Sequence[_Cell]], *, title: Optional[str] = None,
           split_first_column: bool = False) -> Image.Image:
    """Cells on a grid, each its image (framed when it has a frame colour) over its caption lines.

    ``split_first_column`` sets the first column apart (the queries of a retrieval sheet).
    """
    if not rows:
        raise ConfigError("nothing to draw: no images")
    width, height = rows[0][0].image.size
    frame = max(3, width // 24)  # thick enough to read the colour at a glance
    gap = 2 * frame
    font_size = max(12, width // 8)
    font = _font(font_size)
    line_height = font_size + 4  # also fits the smaller bitmap font of old Pillows
    num_lines = max(len(cell.lines) for row in rows for cell in row)
    cell_width, image_height = width + 2 * frame, height + 2 * frame
    cell_height = image_height + 2 + num_lines * line_height
    split = 3 * gap if split_first_column else 0
    num_columns = max(len(row) for row in rows)
    top = gap + (2 * line_height if title else 0)
    sheet = Image.new("RGB", (2 * gap + num_columns * (cell_width + gap) - gap + split,
                              top + len(rows) * (cell_height + gap)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        title_font = _font(font_size + 4)
        draw.text((gap, gap), _fit(draw, title, title_font, sheet.width - 2 * gap), fill=TEXT_COLOR, font=title_font)
    for r, row in enumerate(rows):
        y = top + r * (cell_height + gap)
        for c, cell in enumerate(row):
            x = gap + c * (cell_width + gap) + (split if c else 0)
            if cell.frame is not None:
                draw.rectangle((x, y, x + cell_width - 1, y + image_height - 1), fill=cell.frame)
            sheet.paste(cell.image, (x + frame, y + frame))
            for i, line in enumerate(cell.lines):
                text = _fit(draw, line, font, cell_width)
                left = x + (cell_width - draw.textlength(text, font=font)) / 2
                draw.text((left, y + image_height + 2 + i * line_height), text, fill=TEXT_COLOR, font=font)
    if split:  # a rule between the queries and their hits
        rule_x = gap + cell_width + gap // 2 + split // 2
        draw.line((rule_x, top, rule_x, sheet.height - gap), fill=UNKNOWN_COLOR, width=1)
    return sheet
