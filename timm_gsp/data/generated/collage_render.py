"""Procedural drawing for the collage benchmark (pure numpy, vectorised over a batch of tiles).

An image is a ``grid x grid`` mosaic of square tiles. One tile carries the class; the others are
nuisance. The two kinds differ *in style*, so "which tile is the object" is learnable, while the
nuisance still dominates ``1 - 1/grid**2`` of the area and changes in every image, so averaging
pooling (GAP) mixes a lot of per-image noise into the embedding:

* object tile: a near-plain, low-saturation background (light or dark, faint gradient) with one
  class glyph -- a smooth radial-harmonic blob/star (class-specific harmonics, aspect, optional
  hole), filled with a class-specific two-colour pattern (solid+outline, stripes, bands, halves,
  dots). Per image: rotation, scale, position in the tile, colour jitter.
* nuisance tile: saturated textures (stripes, colour blobs, clouds, plaid) with 0-2 distractor
  shapes from a separate pool of straight-edged primitives (polygons, ellipses, rings, crosses,
  bars) in random solid colours. Nuisance colours are drawn from the same colour space as class
  palettes, so colour statistics of the whole image do not reveal the class.

Coordinates inside a tile are normalised to (-1, 1) with pixel centres at ``(i + 0.5) / T * 2 - 1``.
Edges are anti-aliased with a one-pixel ramp on a signed "inside margin" (positive inside).
All randomness comes from the ``numpy.random.Generator`` passed in, so output is a pure function
of the seeds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

__all__ = ["Glyph", "make_glyph", "make_distractor_pool", "render_images"]

_NUM_HUES = 6  # class fill hues come from this many bins: same-hue classes differ by shape/pattern
_CHANNEL_JITTER = 0.2  # per-image multiplicative colour jitter of the glyph, per channel
_BRIGHTNESS_JITTER = 0.1
_PATTERNS = ("outline", "stripes", "bands", "halves", "dots")
_DISTRACTOR_KINDS = ("polygon", "ellipse", "ring", "cross", "bar")


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB. Inputs broadcastable arrays in [0, 1]; returns ``(..., 3)``."""
    h = np.asarray(h, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    k = (np.arange(3) * -1 / 3.0 + 1.0)  # phase offsets for R, G, B: 5/6 rule folded into one formula
    h6 = (h[..., None] + k) % 1.0 * 6.0
    c = np.clip(np.abs(h6 - 3.0) - 1.0, 0.0, 1.0)
    return v[..., None] * (1.0 - s[..., None] + s[..., None] * c)


def _coverage(margin: np.ndarray, px: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] from a signed inside-margin in tile units."""
    return np.clip(margin / px + 0.5, 0.0, 1.0)


def _tile_coords(tile: int) -> Tuple[np.ndarray, np.ndarray]:
    u = ((np.arange(tile, dtype=np.float32) + 0.5) / tile * 2.0 - 1.0)
    return u[None, :].repeat(tile, 0), u[:, None].repeat(tile, 1)  # X (columns), Y (rows): (T, T)


def _pose(x: np.ndarray, y: np.ndarray, cx: np.ndarray, cy: np.ndarray, rot: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Tile coords (T, T) -> object frame (n, T, T) for per-tile centre ``(cx, cy)`` and rotation (n,)."""
    dx = x[None] - cx[:, None, None]
    dy = y[None] - cy[:, None, None]
    c, s = np.cos(rot)[:, None, None], np.sin(rot)[:, None, None]
    return (c * dx + s * dy).astype(np.float32), (-s * dx + c * dy).astype(np.float32)


@dataclass(frozen=True)
class Glyph:
    """One class's appearance. Radius (before per-image scale) ``r(t) = norm * (1 + sum a_k cos(f_k t + p_k))``."""

    freqs: Tuple[int, ...]
    amps: Tuple[float, ...]
    phases: Tuple[float, ...]
    norm: float             # makes max r(t) == 1
    aspect: float           # object-frame y squash, (0, 1]
    hole: float             # 0 = solid; else inner radius ratio
    pattern: str            # one of _PATTERNS
    pattern_freq: float
    pattern_angle: float
    size: float             # mean radius in tile half-widths
    color1: Tuple[float, float, float]
    color2: Tuple[float, float, float]


def make_glyph(rng: np.random.Generator) -> Glyph:
    """Draw a class appearance. Use one generator per class id so classes are independent of
    how many classes or images are generated."""
    main = int(rng.integers(2, 8))
    freqs = (main, int(rng.integers(1, 10)), int(rng.integers(1, 10)))
    amps = (float(rng.uniform(0.15, 0.45)), float(rng.uniform(0.0, 0.12)), float(rng.uniform(0.0, 0.12)))
    phases = tuple(float(p) for p in rng.uniform(0, 2 * np.pi, 3))
    t = np.linspace(0, 2 * np.pi, 721)
    r = 1 + sum(a * np.cos(f * t + p) for f, a, p in zip(freqs, amps, phases))
    hue1 = (int(rng.integers(_NUM_HUES)) + rng.uniform(-0.15, 0.15)) / _NUM_HUES
    if rng.random() < 0.5:  # second colour: a darker shade of the first, or another hue bin
        hue2, val2 = hue1, float(rng.uniform(0.2, 0.4))
    else:
        hue2, val2 = (int(rng.integers(_NUM_HUES)) + 0.5) / _NUM_HUES, float(rng.uniform(0.5, 0.95))
    c1 = _hsv_to_rgb(hue1, rng.uniform(0.55, 0.95), rng.uniform(0.55, 0.95))
    c2 = _hsv_to_rgb(hue2, rng.uniform(0.5, 0.95), val2)
    return Glyph(
        freqs=freqs, amps=amps, phases=phases, norm=float(1.0 / r.max()),
        aspect=float(rng.uniform(0.65, 1.0)),
        hole=float(rng.uniform(0.3, 0.5)) if rng.random() < 0.3 else 0.0,
        pattern=_PATTERNS[int(rng.integers(len(_PATTERNS)))],
        pattern_freq=float(rng.uniform(1.2, 2.5)),
        pattern_angle=float(rng.uniform(0, np.pi)),
        size=float(rng.uniform(0.6, 0.78)),
        color1=tuple(float(c) for c in c1), color2=tuple(float(c) for c in c2),
    )


def _render_object_tiles(g: Glyph, n: int, tile: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` object tiles of one class: ``(n, T, T, 3)`` float32 in ~[0, 1]."""
    px = 2.0 / tile
    x, y = _tile_coords(tile)
    scale = g.size * rng.uniform(0.85, 1.12, n)
    slack = np.clip(0.96 - scale, 0.0, None)
    cx, cy = rng.uniform(-1, 1, (2, n)) * slack
    rot = rng.uniform(-np.pi / 3, np.pi / 3, n)
    ox, oy = _pose(x, y, cx, cy, rot)
    oy = oy / g.aspect
    rho = np.sqrt(ox * ox + oy * oy)
    theta = np.arctan2(oy, ox)
    radius = np.ones_like(rho)
    for f, a, p in zip(g.freqs, g.amps, g.phases):
        radius += a * np.cos(f * theta + p)
    radius *= g.norm * scale[:, None, None]
    margin = radius - rho
    if g.hole:
        margin = np.minimum(margin, rho - g.hole * radius)
    alpha = _coverage(margin, px)[..., None]

    # Class pattern in the object frame (it rotates with the object): 1 -> colour1, 0 -> colour2.
    u = ox / scale[:, None, None]
    v = oy / scale[:, None, None]
    ca, sa = np.cos(g.pattern_angle), np.sin(g.pattern_angle)
    if g.pattern == "outline":
        pat = _coverage(margin - 0.14 * scale[:, None, None], px)
    elif g.pattern == "stripes":
        pat = np.clip(0.5 + 2.5 * np.cos(2 * np.pi * g.pattern_freq * (ca * u + sa * v)), 0, 1)
    elif g.pattern == "bands":
        pat = np.clip(0.5 + 2.5 * np.cos(2 * np.pi * g.pattern_freq * rho / np.maximum(radius, 1e-3)), 0, 1)
    elif g.pattern == "halves":
        pat = _coverage(ca * u + sa * v, px)
    else:  # dots
        pat = np.clip(0.5 + 3.0 * np.cos(2 * np.pi * g.pattern_freq * u) * np.cos(2 * np.pi * g.pattern_freq * v), 0, 1)
    jitter = (rng.uniform(1 - _CHANNEL_JITTER, 1 + _CHANNEL_JITTER, (n, 1, 1, 3))
              + rng.uniform(-_BRIGHTNESS_JITTER, _BRIGHTNESS_JITTER, (n, 1, 1, 1)))
    c1 = np.asarray(g.color1, np.float32) * jitter
    c2 = np.asarray(g.color2, np.float32) * jitter
    fg = pat[..., None] * c1 + (1 - pat[..., None]) * c2

    # Plain-ish background: neutral light (75%) or dark grey, faint tint and gradient.
    light = rng.random(n) < 0.75
    level = np.where(light, rng.uniform(0.72, 0.95, n), rng.uniform(0.06, 0.2, n))
    tint = rng.uniform(-0.03, 0.03, (n, 3))
    grad_dir = rng.uniform(0, 2 * np.pi, n)
    grad = rng.uniform(0, 0.06, n)[:, None, None] * (np.cos(grad_dir)[:, None, None] * x + np.sin(grad_dir)[:, None, None] * y)
    bg = (level[:, None, None] + grad)[..., None] + tint[:, None, None, :]
    return (alpha * fg + (1 - alpha) * bg).astype(np.float32)


def _random_colors(rng: np.random.Generator, shape: Tuple[int, ...]) -> np.ndarray:
    """Colours spanning the class palette space (and greys): ``shape + (3,)``."""
    return _hsv_to_rgb(rng.random(shape), rng.uniform(0.15, 1.0, shape), rng.uniform(0.15, 1.0, shape)).astype(np.float32)


def _render_textures(n: int, tile: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` nuisance texture tiles ``(n, T, T, 3)``: stripes, blobs, clouds or plaid."""
    x, y = _tile_coords(tile)
    kind = rng.integers(4, size=n)
    out = np.empty((n, tile, tile, 3), np.float32)
    cols = _random_colors(rng, (n, 2))
    # float32 parameters keep the per-pixel maths in float32 (half the memory traffic).
    ang = rng.uniform(0, np.pi, n).astype(np.float32)[:, None, None]
    freq = rng.uniform(1.5, 5.0, n).astype(np.float32)[:, None, None]
    proj = np.cos(ang) * x + np.sin(ang) * y
    for k in range(4):
        idx = np.nonzero(kind == k)[0]
        if idx.size == 0:
            continue
        m = idx.size
        c = cols[idx]
        if k == 0:  # stripes with a wobble
            wob = rng.uniform(0, 0.25, m)[:, None, None] * np.sin(2 * np.pi * rng.uniform(0.5, 2, m)[:, None, None] * (np.cos(ang[idx]) * y - np.sin(ang[idx]) * x))
            t = np.clip(0.5 + 2 * np.sin(2 * np.pi * freq[idx] * (proj[idx] + wob)), 0, 1)[..., None]
            out[idx] = t * c[:, None, None, 0] + (1 - t) * c[:, None, None, 1]
        elif k == 1:  # colour blobs on a base colour
            acc = np.repeat(c[:, None, None, 0], tile, 1).repeat(tile, 2)
            for bc in np.moveaxis(_random_colors(rng, (m, 4)), 1, 0):
                centre = rng.uniform(-1.1, 1.1, (2, m))
                sig = rng.uniform(0.2, 0.55, m)
                d2 = (x[None] - centre[0][:, None, None]) ** 2 + (y[None] - centre[1][:, None, None]) ** 2
                w = np.exp(-d2 / (2 * sig[:, None, None] ** 2))[..., None]
                acc = w * bc[:, None, None] + (1 - w) * acc
            out[idx] = acc
        elif k == 2:  # clouds: bilinear upsampling of a coarse random colour grid
            cells = int(rng.integers(3, 6))
            coarse = _random_colors(rng, (m, cells, cells))
            pos = (np.arange(tile) + 0.5) / tile * (cells - 1)
            i0 = np.clip(np.floor(pos).astype(int), 0, cells - 2)
            f = (pos - i0).astype(np.float32)
            rows = coarse[:, i0] * (1 - f)[None, :, None, None] + coarse[:, i0 + 1] * f[None, :, None, None]
            out[idx] = rows[:, :, i0] * (1 - f)[None, None, :, None] + rows[:, :, i0 + 1] * f[None, None, :, None]
        else:  # plaid: two crossing stripe sets
            proj2 = -np.sin(ang[idx]) * x + np.cos(ang[idx]) * y
            t = 0.5 + 0.5 * np.sin(2 * np.pi * freq[idx] * proj[idx])[..., None] * np.sin(2 * np.pi * freq[idx] * 0.7 * proj2)[..., None]
            out[idx] = t * c[:, None, None, 0] + (1 - t) * c[:, None, None, 1]
    return out


def make_distractor_pool(rng: np.random.Generator, size: int = 48) -> List[Tuple[str, int, float]]:
    """Distractor shape pool, disjoint in kind from class glyphs: ``[(kind, sides, aspect)]``."""
    pool = []
    for _ in range(size):
        kind = _DISTRACTOR_KINDS[int(rng.integers(len(_DISTRACTOR_KINDS)))]
        pool.append((kind, int(rng.integers(3, 7)), float(rng.uniform(0.4, 1.0))))
    return pool


def _draw_distractors(tiles: np.ndarray, pool: List[Tuple[str, int, float]], rng: np.random.Generator) -> None:
    """Paint 0-2 pool shapes (random pose and solid colour, may cross the tile edge) on each tile, in place."""
    n, tile = tiles.shape[:2]
    px = 2.0 / tile
    x, y = _tile_coords(tile)
    count = rng.choice(3, size=n, p=[0.3, 0.45, 0.25])
    for slot in range(2):
        idx = np.nonzero(count > slot)[0]
        if idx.size == 0:
            continue
        which = rng.integers(len(pool), size=idx.size)
        s = rng.uniform(0.25, 0.6, idx.size)
        cx, cy = rng.uniform(-0.9, 0.9, (2, idx.size))
        ox, oy = _pose(x, y, cx, cy, rng.uniform(0, 2 * np.pi, idx.size))
        colors = _random_colors(rng, (idx.size,))
        margin = np.empty_like(ox)
        for j, (kind, sides, aspect) in enumerate(pool):
            sel = np.nonzero(which == j)[0]
            if sel.size == 0:
                continue
            u, v, r = ox[sel], oy[sel], s[sel][:, None, None]
            if kind == "polygon":  # regular polygon, radial distance to its edge
                sector = 2 * np.pi / sides
                th = np.mod(np.arctan2(v, u), sector) - sector / 2
                margin[sel] = r * np.cos(np.pi / sides) / np.cos(th) - np.sqrt(u * u + v * v)
            elif kind in ("ellipse", "ring"):
                rho = np.sqrt(u * u + (v / aspect) ** 2)
                margin[sel] = r - rho if kind == "ellipse" else np.minimum(r - rho, rho - 0.6 * r)
            elif kind == "cross":
                w = 0.28 * r
                margin[sel] = np.maximum(np.minimum(r - np.abs(u), w - np.abs(v)), np.minimum(r - np.abs(v), w - np.abs(u)))
            else:  # bar
                margin[sel] = np.minimum(r - np.abs(u), 0.35 * aspect * r - np.abs(v))
        a = _coverage(margin, px)[..., None]
        tiles[idx] = a * colors[:, None, None, :] + (1 - a) * tiles[idx]


def render_images(glyph: Glyph, n: int, image_size: int, grid: int, pool: List[Tuple[str, int, float]],
                  rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Render ``n`` collages of one class.

    Returns:
        images: ``(n, S, S, 3)`` uint8, ``S = image_size``.
        object_tile: ``(n,)`` int64, row-major index of the object tile in the ``grid x grid`` mosaic.
    """
    tile = image_size // grid
    cells = grid * grid
    obj = _render_object_tiles(glyph, n, tile, rng)
    nuis = _render_textures(n * (cells - 1), tile, rng)
    _draw_distractors(nuis, pool, rng)
    pos = rng.integers(cells, size=n)
    is_obj = np.arange(cells)[None, :] == pos[:, None]
    tiles = np.empty((n, cells, tile, tile, 3), np.float32)
    tiles[is_obj] = obj
    tiles[~is_obj] = nuis  # boolean indexing fills row-major, i.e. image by image
    img = tiles.reshape(n, grid, grid, tile, tile, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, image_size, image_size, 3)
    # Sensor-like noise everywhere: no region is exactly constant.
    img *= 255.0
    # Uniform noise (std 0.02 * 255): ~3x cheaper to draw than Gaussian, same role.
    noise = rng.random(img.shape, dtype=np.float32)
    noise -= 0.5
    noise *= np.float32(0.02 * 255.0 * np.sqrt(12.0))
    img += noise
    img += 0.5
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8), pos.astype(np.int64)
