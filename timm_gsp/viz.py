"""Heat maps of what GSP pools: pooling weights and prototype assignments over the images.

For one batch, ``pooling_maps`` runs the model and reads, at its GSP pool,

* the pooling weights ``w`` (B, N) -- the share of each location in the embedding -- and the
  attributes (B, K), from ``capture_transport``;
* the costs (B, K, N) that enter the transport (a forward hook on ``pool.transport``), turned into
  per-prototype assignment maps ``softmax_i(-gamma * c_ij)``: which prototype each location is
  closest to, at the pool's own temperature (the assignment GSP's attributes are built from);

then lays the N locations out on the feature grid: (H, W) of NCHW / NHWC features, or for ViT
tokens the patch grid (``patch_embed.grid_size``, else the factorisation of N closest to the
image's aspect ratio). ``overlay`` / ``save_overlays`` draw them over the images as PNG files
with a Pillow colour map (no plotting library needed).
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageOps

from .pooling import GeneralizedSumPool, capture_transport, gsp_modules

__all__ = ["PoolingMaps", "denormalize", "feature_grid", "overlay", "pooling_maps", "save_overlays", "to_pil", "upsample"]

# Pillow's colorize maps 0 -> first, 0.5 -> middle, 1 -> last: a "hot"-like map, dark where GSP ignores.
DEFAULT_COLORS = ("black", "red", "yellow")


@dataclass
class PoolingMaps:
    """GSP's view of one batch, on the feature grid (h, w).

    Attributes:
        weights: (B, h, w) pooling weights; each image's weights sum to 1.
        selection: (B, h, w) the same weights times ``N * transport_ratio``: the share of each
            location's mass that is transported, in [0, 1] (1 = fully pooled, 0 = ignored; GAP
            would be ``transport_ratio`` everywhere). What ``save_overlays`` draws.
        assignments: (B, K, h, w) softmax over the K prototypes of ``-gamma * cost`` per location.
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


def _closest_factorisation(num_tokens: int, image_size: Tuple[int, int]) -> Tuple[int, int]:
    """(h, w) with h * w = N and h / w closest to the image's H / W (the square root for a square)."""
    aspect = image_size[0] / image_size[1]
    pairs = [(h, num_tokens // h) for h in range(1, num_tokens + 1) if num_tokens % h == 0]
    return min(pairs, key=lambda hw: abs(math.log(hw[0] / hw[1] / aspect)))


def feature_grid(model: nn.Module, num_tokens: int, image_size: Tuple[int, int]) -> Tuple[int, int]:
    """The (h, w) patch grid of ``num_tokens`` tokens of a token model for ``image_size`` (H, W).

    Uses the model's ``patch_embed.grid_size``, or ``image_size // patch_size``, when it accounts
    for every token; else the factorisation of N closest to the image's aspect ratio.
    """
    for module in model.modules():
        patch_embed = getattr(module, "patch_embed", None)
        if patch_embed is None:
            continue
        grid = getattr(patch_embed, "grid_size", None)
        if grid is not None and len(tuple(grid)) == 2 and grid[0] * grid[1] == num_tokens:
            return int(grid[0]), int(grid[1])
        patch = getattr(patch_embed, "patch_size", None)
        if patch is not None:
            patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
            grid = (image_size[0] // patch[0], image_size[1] // patch[1])
            if grid[0] * grid[1] == num_tokens:
                return grid
    return _closest_factorisation(num_tokens, image_size)


@contextlib.contextmanager
def _capture_costs(pools: Sequence[GeneralizedSumPool]) -> Iterator[List[torch.Tensor]]:
    """The costs (B, K, N) entering each transport, in call order (matching capture_transport)."""
    costs: List[torch.Tensor] = []
    handles = [pool.transport.register_forward_hook(lambda m, args, out: costs.append(args[0].detach())) for pool in pools]
    try:
        yield costs
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def pooling_maps(model: nn.Module, images: torch.Tensor, pool: Optional[str] = None) -> PoolingMaps:
    """Run ``model`` on ``images`` (B, 3, H, W) and return the maps of its GSP pool.

    Args:
        pool: qualified name of the GSP pool to read (see ``gsp_modules``); default: the last one run.
    """
    named = dict(gsp_modules(model))
    if pool is not None and pool not in named:
        raise ValueError(f"no GSP pool named {pool!r}; the model has {sorted(named)}")
    with capture_transport(model) as plans, _capture_costs(list(named.values())) as costs:
        model(images)
    runs = [(plan, cost) for plan, cost in zip(plans, costs) if pool is None or plan.module_name == pool]
    if not runs:
        raise RuntimeError(f"{type(model).__name__}'s forward did not run its GSP pool {pool or ''}".strip())
    plan, cost = runs[-1]
    batch, num_tokens = plan.weights.shape
    grid = plan.grid_size or feature_grid(model, num_tokens, tuple(images.shape[-2:]))
    gsp = named[plan.module_name]
    assignments = torch.softmax(cost.float() * -gsp.gamma, dim=1)  # (B, K, N)
    weights = plan.weights.float().reshape(batch, *grid)
    return PoolingMaps(
        weights=weights,
        selection=(weights * (num_tokens * gsp.transport_ratio)).clamp(0, 1),
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
