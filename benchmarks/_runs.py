"""What the benchmark scripts share: runs of examples/train.py, reading them back, the object weight
share of GSP, the seed-summary table / figures, and the portable paths of the records.

Portable paths: a record (a run's results.json, a summary, a table) names no directory of the machine
that wrote it. ``portable_path`` writes a file of this repository relative to its root
(``benchmarks/results/folder_fashion_runs/gap_seed0``), a folder in the dataset cache
(``timm_gsp.data.default_cache_root()``: ``$TIMM_GSP_CACHE``, else ``~/.cache/timm_gsp``) as
``<cache>/<name>`` (``<cache>/scenes-s0-v1``), and anything else as ``<elsewhere>/<its last name>``.
``train_run`` scrubs each run's records right after the run; ``scrub_records`` (``python
benchmarks/scrub_records.py``) re-writes every record of the repository the same way, idempotently."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path, PurePosixPath
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, TypeVar

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
KEYS = ("precision_at_1", "r_precision", "map_at_r")
T = TypeVar("T")
NAMES = {"precision_at_1": "P@1", "r_precision": "R-Precision", "map_at_r": "MAP@R"}


def train_run(out: Path, flags: Sequence[str], force: bool = False) -> Path:
    """``examples/train.py --output out <flags>`` as a subprocess, unless ``out`` already holds its results;
    then the run's records name their paths portably (``scrub_run``)."""
    if force or not (out / "results.json").is_file():
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, str(ROOT / "examples" / "train.py"), *flags, "--no-progress", "--output", str(out)]
        print("$", " ".join(cmd[1:]), flush=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        subprocess.run(cmd, check=True, env=env)
    try:
        scrub_run(out)
    except OSError as error:  # a finished run is worth more than its paths: benchmarks/scrub_records.py does it later
        print(f"note: the records of {portable_path(out)} keep their paths ({error})", flush=True)
    return out


# --- portable paths in the records ------------------------------------------------------------------

CACHE_MARK = "<cache>"  # timm_gsp.data.default_cache_root()
ELSEWHERE_MARK = "<elsewhere>"  # a folder neither in this repository nor in the cache: its name only
# first directories of absolute paths that are one machine's own (home, scratch and temporary folders)
MACHINE_ROOTS = ("root", "home", "work", "tmp", "Users", "mnt", "var", "private", "scratch", "opt", "srv", "media",
                 "Volumes")
# ... and wherever this checkout lives (a CI clone under /check, /builds, ...)
MACHINE_ROOTS += tuple(dict.fromkeys(p.parts[1] for p in (ROOT, ROOT.resolve()) if len(p.parts) > 1
                                     and p.parts[1] not in MACHINE_ROOTS))
_STOP = r"\s\"'`<>|,;()\[\]{}"  # characters that end a path in a record's text
MACHINE_PATH = re.compile(r"(?<![\w.:/\\~<>-])/(?:" + "|".join(map(re.escape, MACHINE_ROOTS)) + r")/[^" + _STOP + r"]*"
                          r"|(?<![\w\\])[A-Za-z]:\\{1,2}[^" + _STOP + r"]*")
RECORD_SUFFIXES = (".json", ".jsonl", ".md", ".txt", ".yaml", ".yml", ".csv")
_OUTPUT_KEY = re.compile(r'("output":\s*)"((?:/|[A-Za-z]:\\)[^"]*)"')
_REPO_TOP = ("benchmarks", "examples", "docs", "tests", "timm_gsp")


def _cache_roots() -> List[PurePosixPath]:
    from timm_gsp.data import default_cache_root
    roots = [default_cache_root()]
    return [PurePosixPath(os.path.normpath(str(r))) for r in dict.fromkeys([*roots, *(r.resolve() for r in roots)])]


def portable_path(path) -> str:
    """``path`` as a reader on another machine can resolve it (see the module docstring); a relative path,
    or one already portable, is returned as it is.

    Absolute paths this machine did not write are recognised too: a folder of the default cache of any
    machine (``.../.cache/timm_gsp/<name>``) is ``<cache>/<name>``, and a file of another checkout of this
    repository (``/x/checkout/benchmarks/results/...``) is relative to that checkout.
    """
    text = str(path)
    if re.match(r"[A-Za-z]:[\\/]", text):  # a Windows path
        return ELSEWHERE_MARK + "/" + re.split(r"[\\/]+", text.rstrip("\\/"))[-1]
    if not text.startswith("/"):
        return text
    p = PurePosixPath(os.path.normpath(text))
    for root in dict.fromkeys([ROOT, ROOT.resolve()]):
        root = PurePosixPath(root)
        if p == root or root in p.parents:
            return p.relative_to(root).as_posix()
    for cache in _cache_roots():
        if p == cache or cache in p.parents:
            return PurePosixPath(CACHE_MARK, p.relative_to(cache)).as_posix()
    parts = p.parts
    for i in range(1, len(parts) - 1):
        if parts[i] == ".cache" and parts[i + 1] == "timm_gsp":
            return PurePosixPath(CACHE_MARK, *parts[i + 2:]).as_posix()
    for i in range(1, len(parts) - 1):
        if parts[i] in _REPO_TOP and (ROOT / parts[i] / parts[i + 1]).exists():
            return PurePosixPath(*parts[i:]).as_posix()
    return f"{ELSEWHERE_MARK}/{p.name}"


def portable_text(text: str, run_dir: Optional[str] = None) -> str:
    """``text`` with every absolute path of a machine (``MACHINE_PATH``) written by ``portable_path``;
    numbers and everything else untouched. ``run_dir``: the text is that run's results.json, whose
    ``"output"`` is the run folder itself (wherever it was first written): it becomes ``run_dir``.
    Idempotent."""
    if run_dir is not None:
        text = _OUTPUT_KEY.sub(lambda m: f'{m.group(1)}"{run_dir}"', text)

    def one(match: "re.Match") -> str:
        found = match.group(0)
        core = found.rstrip(".:")  # a sentence's full stop is not part of the path
        return portable_path(core.replace("\\\\", "\\")) + found[len(core):]
    return MACHINE_PATH.sub(one, text)


def scrub_file(path: Path, run_dir: Optional[str] = None) -> bool:
    """Re-write one record's paths with ``portable_text``, atomically (a temporary sibling renamed into
    place, the file's mode kept), only if something changes and the file did not change meanwhile.
    Files that are not UTF-8 text are left alone. Returns whether the file was re-written."""
    stat = path.stat()
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return False
    new = portable_text(text, run_dir)
    if new == text:
        return False
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(new.encode("utf-8"))
        os.chmod(tmp, stat.st_mode & 0o7777)
        now = path.stat()
        if (now.st_mtime_ns, now.st_size) != (stat.st_mtime_ns, stat.st_size):
            return False  # written meanwhile: leave it to the next scrub
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return True


def _run_dir_of(path: Path) -> Optional[str]:
    """The run folder, relative to the repository, of a run's results.json (else None)."""
    if path.name != "results.json" or not (path.parent / "metrics.jsonl").is_file():
        return None
    folder = path.parent.resolve()
    return folder.relative_to(ROOT).as_posix() if folder.is_relative_to(ROOT) else None


def scrub_run(out: Path) -> List[Path]:
    """Scrub the records of one finished run folder (its own files; not inside ``checkpoint*`` folders,
    which are never committed). Returns the files re-written."""
    out = Path(out)
    if not (out / "results.json").is_file():
        return []
    changed = []
    for path in sorted(out.rglob("*")):
        if path.is_file() and path.suffix in RECORD_SUFFIXES and not any(
                part.startswith("checkpoint") for part in path.relative_to(out).parts[:-1]):
            if scrub_file(path, _run_dir_of(path)):
                changed.append(path)
    return changed


def record_files(folders: Sequence[str] = ("benchmarks", "examples", "docs")) -> List[Path]:
    """The records under ``folders``: git-tracked files and new files git does not ignore, with a record
    suffix (``RECORD_SUFFIXES``; code is not a record), less the files of unfinished runs (a folder with
    ``metrics.jsonl`` and no ``results.json``: a run still writing them)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *folders],
                            cwd=ROOT, check=True, capture_output=True).stdout.decode("utf-8").split("\0")
    files = []
    for name in dict.fromkeys(filter(None, listed)):
        path = ROOT / name
        if path.suffix not in RECORD_SUFFIXES or not path.is_file():
            continue
        if (path.parent / "metrics.jsonl").is_file() and not (path.parent / "results.json").is_file():
            continue
        files.append(path)
    return files


def scrub_records(folders: Sequence[str] = ("benchmarks", "examples", "docs")) -> List[Path]:
    """Re-write every record under ``folders`` (``record_files``) with portable paths; idempotent (a second
    call changes nothing). Returns the files re-written."""
    return [path for path in record_files(folders) if scrub_file(path, _run_dir_of(path))]


def run_side_by_side(jobs: int, run: Callable[[T], None], work: Sequence[T]) -> None:
    """``run(item)`` for each item in order, ``jobs`` at a time; with jobs > 1 each training process gets one
    thread (they inherit OMP_NUM_THREADS), so the jobs share the cores instead of fighting over them."""
    if jobs > 1:
        os.environ["OMP_NUM_THREADS"] = "1"
    with ThreadPoolExecutor(max(jobs, 1)) as pool:
        list(pool.map(run, work))


def read_run(out: Path) -> Dict:
    """The run's results.json as a dict (metrics, model, recipe, wall_time_s, ...)."""
    return json.loads((out / "results.json").read_text())


def load_trained(out: Path):
    """(model in eval mode, RunResults) of a finished run, with the weights its metrics belong to."""
    from safetensors.torch import load_file

    from timm_gsp.train.run_results import read_results
    results = read_results(out / "results.json")
    model = results.model.build()
    model.load_state_dict(load_file(str(out / results.checkpoint / "model.safetensors")))
    return model.eval(), results


def cell_overlap(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 4) boxes (x0, y0, x1, y1) normalised to [0, 1] -> (B, H, W): the share of each feature cell
    [j/W, (j+1)/W) x [i/H, (i+1)/H) that lies inside the image's box."""
    xs, ys = torch.arange(width + 1).float() / width, torch.arange(height + 1).float() / height
    ox = (torch.minimum(xs[1:][None], boxes[:, 2:3]) - torch.maximum(xs[:-1][None], boxes[:, 0:1])).clamp(min=0) * width
    oy = (torch.minimum(ys[1:][None], boxes[:, 3:4]) - torch.maximum(ys[:-1][None], boxes[:, 1:2])).clamp(min=0) * height
    return oy[:, :, None] * ox[:, None, :]


@torch.no_grad()
def object_weight_share(model, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]]) -> Dict[str, float]:
    """Mean over images of sum_j w_j * (share of feature cell j inside the object box).

    Args:
        batches: (images (B, 3, H, W), boxes (B, 4)) with boxes (x0, y0, x1, y1) normalised to [0, 1].
    """
    import timm_gsp
    shares, areas, grid = [], [], None
    for images, boxes in batches:
        with timm_gsp.capture_transport(model) as plans:
            model(images)
        h, w = grid = plans[-1].grid_size
        weights = plans[-1].weights.float().view(-1, h, w)
        shares.append((weights * cell_overlap(boxes, h, w)).sum((1, 2)))
        areas.append((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    s, a = torch.cat(shares), torch.cat(areas)
    return {"object_weight_share": float(s.mean()), "object_area_share": float(a.mean()),
            "share_above_area": float((s > a).float().mean()), "grid": list(grid)}


@torch.no_grad()
def winning_cells(model, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) images -> (B, C) index of the feature cell that wins each channel's maximum in the
    pooled vector of a max-pooling model: timm's ``max`` (over the cells ``f_j``) or GSP with ``mix=max``
    (over ``m_j f_j``, the cells GSP re-weighted)."""
    import timm_gsp
    pools = timm_gsp.gsp_modules(model)
    with (timm_gsp.capture_transport(model) if pools else contextlib.nullcontext()) as plans:
        features = model.forward_features(images)  # (B, C, H, W)
        cells = features.float().flatten(2)  # (B, C, N)
        if pools:
            model.forward_head(features)  # the pool's plan over these very cells
            cells = cells * (plans[-1].weights.float() * cells.shape[2]).unsqueeze(1)
    return cells.argmax(2)


@torch.no_grad()
def winning_cell_share(model, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]]) -> Dict[str, float]:
    """Where max pooling takes its values from: the mean, over images and channels, of the share of the
    winning cell (``winning_cells``) that lies in the object box, beside the box's share of the image
    (what the share would be if the winning cells fell anywhere)."""
    shares, areas = [], []
    for images, boxes in batches:
        winners = winning_cells(model, images)  # (B, C)
        grid = model.forward_features(images[:1]).shape[2:]
        overlap = cell_overlap(boxes, *grid).flatten(1)  # (B, N)
        shares.append(overlap.gather(1, winners).mean(1))
        areas.append((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    s, a = torch.cat(shares), torch.cat(areas)
    return {"winning_cell_share": float(s.mean()), "object_area_share": float(a.mean())}


def fmt(values: Sequence[float]) -> str:
    """Mean ± std in %; one value has no spread to show, and says so."""
    if len(values) == 1:
        return f"{100 * values[0]:.1f} (one seed)"
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}"


def method_rows(summary: Dict) -> List[str]:
    """A benchmark's results table (docs/benchmarks.md): one row per method, mean ± std over seeds, object
    weight share, wall time; where a max-pooled method measured it, the share of its channels whose maximum
    lies in the object box."""
    area = summary.get("object_area_share", 0.25)
    winners = any("winning_cell_share" in r for m in summary["methods"].values() for r in m["runs"])
    extra = " channels won inside the object box |" if winners else ""
    lines = ["| method | P@1 | R-Precision | MAP@R | object weight share |" + extra + " wall time / run: median (min–max) |",
             "|---|---|---|---|---|" + ("---|" if winners else "") + "---|"]
    for name, method in summary["methods"].items():
        runs = method["runs"]
        walls = [r["wall_time_s"] for r in runs]
        if "object_weight_share" in runs[0]:
            share = fmt([r["object_weight_share"] for r in runs]) + " %"
        else:
            share = f"({100 * area:.0f} % implicit)" if name == "gap" else "–"
        if winners:
            won = [r["winning_cell_share"] for r in runs if "winning_cell_share" in r]
            share += f" | {fmt(won)} %" if len(won) == len(runs) else " | –"
        lines.append(f"| {method['label']} | {fmt([r['precision_at_1'] for r in runs])} | {fmt([r['r_precision'] for r in runs])} | "
                     f"{fmt([r['map_at_r'] for r in runs])} | {share} | {np.median(walls):.0f} s ({min(walls):.0f}–{max(walls):.0f}) |")
        method.update({f"{k}_mean": float(np.mean([r[k] for r in runs])) for k in KEYS})
        method.update({f"{k}_std": float(np.std([r[k] for r in runs])) for k in KEYS})
        method["n_seeds"] = len(runs)
    return lines


def short_label(label: str) -> str:
    """A method's name without its note: "GAP (timm global_pool='avg')" -> "GAP"."""
    return label.split(" (")[0]


def paired_rows(summary: Dict, baseline: str = "gap") -> List[str]:
    """Markdown rows: each method minus ``baseline`` run with the same ``--seed``, P@1 and MAP@R in points,
    per seed and their mean (also stored in the summary as ``<metric>_minus_<baseline>``)."""
    if baseline not in summary["methods"]:
        return []
    base = {r["seed"]: r for r in summary["methods"][baseline]["runs"]}
    lines = [f"| method minus {short_label(summary['methods'][baseline]['label'])}, same seed | P@1 per seed | P@1 mean | "
             "MAP@R per seed | MAP@R mean |", "|---|---|---|---|---|"]
    for name, method in summary["methods"].items():
        pairs = [(r, base[r["seed"]]) for r in method["runs"] if r["seed"] in base]
        if name == baseline or not pairs:
            continue
        cells = []
        for key in ("precision_at_1", "map_at_r"):
            gaps = [100 * (r[key] - b[key]) for r, b in pairs]
            cells += [" / ".join(f"{g:+.1f}" for g in gaps), f"{np.mean(gaps):+.1f}"]
            method[f"{key}_minus_{baseline}"] = [g / 100 for g in gaps]
        lines.append(f"| {short_label(method['label'])} | " + " | ".join(cells) + " |")
    return lines


def plot_summary(summary: Dict, path: Path, object_name: str = "object") -> None:
    """MAP@R per method and seed; GSP's object weight share against the object's area share."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(summary["methods"])
    for x, m in enumerate(names):
        vals = [r["map_at_r"] for r in summary["methods"][m]["runs"]]
        ax1.bar(x, np.mean(vals), yerr=np.std(vals), alpha=0.5, capsize=4)
        ax1.scatter([x] * len(vals), vals, color="k", zorder=3, s=12)
    ax1.set_xticks(range(len(names)), [short_label(summary["methods"][m]["label"]) for m in names])
    ax1.set(ylabel="MAP@R (test classes)", title="retrieval, mean +- std over seeds (dots: seeds)")
    gsp = [m for m in names if "object_weight_share" in summary["methods"][m]["runs"][0]]
    for x, m in enumerate(gsp):
        vals = [r["object_weight_share"] for r in summary["methods"][m]["runs"]]
        ax2.bar(x, np.mean(vals), yerr=np.std(vals), alpha=0.5, capsize=4)
        ax2.scatter([x] * len(vals), vals, color="k", zorder=3, s=12)
    area = summary.get("object_area_share", 0.25)
    ax2.axhline(area, color="r", ls="--", label=f"{object_name} area share = GAP's implicit weight ({area:.2f})")
    ax2.set_xticks(range(len(gsp)), [summary["methods"][m]["label"] for m in gsp])
    ax2.set(ylim=(0, 1), ylabel=f"share of pooling weight on the {object_name}", title="where GSP puts its weight (test set)")
    ax2.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def heat_map_figure(images: torch.Tensor, boxes: torch.Tensor, heat_maps: Sequence[torch.Tensor], mean, std, path: Path,
                    cell: int = 128) -> None:
    """Top row: the images with the object boxed in green; then one row per heat map, one block per feature
    cell (bright = more), relative to each image's largest value.

    Args:
        images: (B, 3, H, W) normalised model inputs; boxes: (B, 4) normalised (x0, y0, x1, y1);
        heat_maps: each (B, h, w), non-negative.
    """
    from PIL import Image, ImageDraw

    from timm_gsp.retrieval import viz
    shown = viz.denormalize(images.float(), mean, std)
    size = images.shape[-1]
    sheet = Image.new("RGB", (cell * len(images), cell * (1 + len(heat_maps))), "white")
    for k in range(len(images)):
        tiles = [viz.to_pil(shown[k]).resize((cell, cell), Image.NEAREST)]
        for maps in heat_maps:
            heat = torch.nn.functional.interpolate(maps[k][None, None].float(), size=(size, size), mode="nearest")[0, 0]
            tiles.append(viz.overlay(shown[k], heat, alpha=0.6, scale=None).resize((cell, cell), Image.NEAREST))
        x0, y0, x1, y1 = (boxes[k] * cell).tolist()
        for row, tile in enumerate(tiles):
            ImageDraw.Draw(tile).rectangle([x0, y0, x1 - 1, y1 - 1], outline=(0, 255, 0), width=2)
            sheet.paste(tile, (cell * k, cell * row))
    sheet.save(path)


def weight_map_figure(model, images: torch.Tensor, boxes: torch.Tensor, mean, std, path: Path, cell: int = 128) -> None:
    """``heat_map_figure`` of GSP's pooling weights."""
    from timm_gsp.retrieval import viz
    heat_map_figure(images, boxes, [viz.pooling_maps(model, images).weights], mean, std, path, cell)


def winner_counts(model, images: torch.Tensor) -> torch.Tensor:
    """(B, h, w): how many channels of a max-pooling model's vector each feature cell wins (``winning_cells``)."""
    winners = winning_cells(model, images)  # (B, C)
    h, w = model.forward_features(images[:1]).shape[2:]
    counts = torch.zeros(len(images), h * w).scatter_add_(1, winners, torch.ones_like(winners, dtype=torch.float))
    return counts.view(-1, h, w)


def collect_methods(summary: Dict, methods: Dict[str, Tuple[str, List[str]]], seeds: Sequence[int], runs_dir: Path,
                    test_batches) -> None:
    """Fill ``summary["methods"]`` from the finished runs ``runs_dir/<method>_seed<seed>``: metrics, wall time
    and, for GSP runs, the object weight share (cached beside the run).

    Args:
        methods: name -> (label, train.py flags).
        test_batches: ``(model, results) -> iterable of (images, normalised boxes)`` of the test classes.
    """
    for name, (label, flags) in methods.items():
        runs = []
        for seed in seeds:
            out = runs_dir / f"{name}_seed{seed}"
            if not (out / "results.json").is_file():
                continue
            r = read_run(out)
            row = {"seed": seed, "wall_time_s": r["wall_time_s"], **{k: r["metrics"][k] for k in KEYS}}
            if name.startswith("gsp"):
                cache = out / "object_share.json"
                if not cache.is_file():
                    model, results = load_trained(out)
                    cache.write_text(json.dumps(object_weight_share(model, test_batches(model, results))))
                share = json.loads(cache.read_text())
                summary["object_area_share"] = share.pop("object_area_share")
                row.update(share)
            if is_max_pooled(r["model"]["pool"]):
                cache = out / "winning_share.json"
                if not cache.is_file() and (out / r["checkpoint"] / "model.safetensors").is_file():
                    model, results = load_trained(out)
                    cache.write_text(json.dumps(winning_cell_share(model, test_batches(model, results))))
                if cache.is_file():
                    share = json.loads(cache.read_text())
                    summary["object_area_share"] = share.pop("object_area_share")
                    row.update(share)
            runs.append(row)
            print(name, row, flush=True)
        if runs:
            summary["methods"][name] = {"label": label, "flags": flags, "runs": runs}


def is_max_pooled(pool: str) -> bool:
    """Whether a pool string takes each channel's maximum over cells: timm's ``max``, GSP with ``mix=max``."""
    import timm_gsp
    return pool == "max" or (timm_gsp.parse_gsp_spec(pool) or {}).get("mix") == "max"


def _weights(out: Path) -> Path:
    """The model weights of the checkpoint a finished run's results.json names."""
    return out / (read_run(out).get("checkpoint") or "") / "model.safetensors"


def max_and_gsp_maps(summary: Dict, runs_dir: Path, test_batches, path: Path, gsp_names: Sequence[str],
                     count: int = 10) -> None:
    """Where max pooling and GSP take the vector from, on the same test images (the runs of the first seed
    at which every method's weights are here): the images, then for each GSP method its pooling weights
    (and for ``mix=max`` the cells that win channels), then the cells that win max pooling's channels.
    Left as it is without such a seed."""
    names = [n for n in gsp_names if n in summary["methods"]] + (["max"] if "max" in summary["methods"] else [])
    seeds = [seed for seed in summary["seeds"] if all(
        (runs_dir / f"{n}_seed{seed}" / "results.json").is_file() and _weights(runs_dir / f"{n}_seed{seed}").is_file()
        for n in names)] if len(names) > 1 else []
    if not seeds:
        print(f"{path.name} left as it is: the runs' weights are not here", flush=True)
        return
    outs = [runs_dir / f"{n}_seed{seeds[0]}" for n in names]
    import timm_gsp
    from timm_gsp.retrieval import viz
    rows, images, boxes, cfg = [], None, None, None
    for out in outs:
        model, results = load_trained(out)
        if images is None:
            images, boxes = next(iter(test_batches(model, results, batch_size=100_000)))
            pick = torch.arange(0, len(images), max(len(images) // count, 1))[:count]
            images, boxes, cfg = images[pick], boxes[pick], results.model.data_config
        if timm_gsp.gsp_modules(model):
            rows.append(viz.pooling_maps(model, images).weights)
        if is_max_pooled(results.model.pool):
            rows.append(winner_counts(model, images))
    heat_map_figure(images, boxes, rows, cfg["mean"], cfg["std"], path)


def gsp_weight_maps(summary: Dict, runs_dir: Path, test_batches, path: Path, count: int = 10) -> None:
    """``weight_map_figure`` of the recipe's GSP (else GSP+ZSR), its first run whose weights are here, over
    ``count`` evenly spaced test images; without such a run (weights are not committed: a fresh checkout has
    only the numbers) the figure is left as it is."""
    for name in ("gsp", "gsp_zsr"):
        if name in summary["methods"]:
            outs = [runs_dir / f"{name}_seed{r['seed']}" for r in summary["methods"][name]["runs"]]
            found = [out for out in outs if _weights(out).is_file()]
            if not found:
                print(f"{path.name} left as it is: no weights of a {name} run in {portable_path(runs_dir)}", flush=True)
                return
            out = found[0]
            model, results = load_trained(out)
            images, boxes = next(iter(test_batches(model, results, batch_size=100_000)))
            pick = torch.arange(0, len(images), max(len(images) // count, 1))[:count]
            cfg = results.model.data_config
            weight_map_figure(model, images[pick], boxes[pick], cfg["mean"], cfg["std"], path)
            return


def stage_table(stages: Dict[str, List[str]], seeds: Sequence[int], rows: Sequence[Dict]) -> List[str]:
    """Markdown rows of a multi-seed search stage: mean ± std of P@1 and MAP@R over the trials ``<name>_s<seed>``."""
    by_name = {r["name"]: r for r in rows}
    lines = [f"## Stage 2: mean ± std (population) over seeds {list(seeds)}, validation P@1 / MAP@R in %", "",
             "| setting | flags | seeds | P@1 | MAP@R |", "|---|---|---|---|---|"]
    for name, flags in stages.items():
        done = [by_name[f"{name}_s{seed}"] for seed in seeds if f"{name}_s{seed}" in by_name]
        if done:
            lines.append(f"| {name} | `{' '.join(flags)}` | {len(done)} | {fmt([r['precision_at_1'] for r in done])} | "
                         f"{fmt([r['map_at_r'] for r in done])} |")
    return lines


def write_report(name: str, summary: Dict, header: List[str], lines: List[str], runs_dir: Path, test_batches) -> None:
    """A benchmark's outputs in ``RESULTS``: ``<name>_results.md`` (header + table lines), ``<name>_results.json``
    (the summary), ``<name>_metrics.png``, ``<name>_weight_maps.png`` (GSP's weights on test images) and, with a
    max-pooling run, ``<name>_max_vs_gsp.png`` (``max_and_gsp_maps``); the text with portable paths
    (``portable_text``)."""
    (RESULTS / f"{name}_results.md").write_text(portable_text("\n".join(header + lines) + "\n"))
    (RESULTS / f"{name}_results.json").write_text(portable_text(json.dumps(summary, indent=2)))
    plot_summary(summary, RESULTS / f"{name}_metrics.png", "object box")
    gsp_weight_maps(summary, runs_dir, test_batches, RESULTS / f"{name}_weight_maps.png")
    if "max" in summary["methods"]:
        max_and_gsp_maps(summary, runs_dir, test_batches, RESULTS / f"{name}_max_vs_gsp.png", ["gsp"])


def add_run_arguments(parser, methods: Sequence[str]) -> None:
    """The flags every method-by-seed benchmark takes: --methods, --seeds, --jobs, --force, --report-only."""
    parser.add_argument("--methods", nargs="*", default=list(methods), choices=list(methods))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (one thread each when > 1)")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--report-only", action="store_true", help="collect the runs that exist, train nothing")
