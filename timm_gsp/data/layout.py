"""Locating a dataset's root folder from what the user passed, with helpful errors.

Users often point one level too high (the folder that *contains* ``CUB_200_2011``) or too low
(``CUB_200_2011/images``). Well-known wrapper folders are accepted silently; anything else raises a
:class:`DatasetLayoutError` that names the expected files and, if a nearby folder has them,
suggests it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence

from ..errors import DatasetLayoutError
from ..utils import PathLike

__all__ = ["find_layout_root", "suggest_roots"]

# Bounds for the suggestion search, so a wrong root such as "/" or a huge image folder stays cheap.
_MAX_DIRS_VISITED = 400
_MAX_ENTRIES_PER_DIR = 2000


def _has_all(folder: Path, markers: Sequence[str]) -> bool:
    return all((folder / m).exists() for m in markers)


def suggest_roots(root: PathLike, markers: Sequence[str], depth_down: int = 3, depth_up: int = 2) -> List[Path]:
    """Folders near ``root`` (ancestors up to ``depth_up``, descendants up to ``depth_down``) that
    contain every relative path in ``markers``. Bounded breadth-first search; nearest first."""
    root = Path(root).expanduser()
    found: List[Path] = []
    anc = root
    for _ in range(depth_up):
        anc = anc.parent
        if anc == anc.parent:
            break
        if _has_all(anc, markers):
            found.append(anc)
    if not root.is_dir():
        return found
    frontier, visited = [(root, 0)], 0
    while frontier and visited < _MAX_DIRS_VISITED:
        folder, depth = frontier.pop(0)
        visited += 1
        if depth > 0 and _has_all(folder, markers):
            found.append(folder)
            continue
        if depth >= depth_down:
            continue
        try:
            with os.scandir(folder) as it:
                subdirs = []
                for i, entry in enumerate(it):
                    if i >= _MAX_ENTRIES_PER_DIR:
                        break
                    if entry.is_dir(follow_symlinks=True) and not entry.name.startswith("."):
                        subdirs.append(Path(entry.path))
        except OSError:
            continue
        frontier.extend((d, depth + 1) for d in sorted(subdirs))
    return found


def find_layout_root(
    root: Optional[PathLike],
    markers: Sequence[str],
    layout: str,
    expected: str,
    wrappers: Sequence[str] = (),
) -> Path:
    """Return the folder holding every path in ``markers``: ``root`` itself, or ``root/<w>`` for a
    known wrapper folder name ``w``.

    Args:
        root: what the user passed.
        markers: relative paths that identify the layout, e.g. ``["images.txt", "images"]``.
        layout: dataset name for messages, e.g. ``"CUB-200-2011"``.
        expected: one-line description of the expected tree, printed in errors.
        wrappers: folder names accepted between ``root`` and the layout (e.g. ``"CUB_200_2011"``).

    Raises:
        DatasetLayoutError: naming the missing path(s), the expected layout and nearby candidates.
    """
    if root is None:
        raise DatasetLayoutError(f"{layout}: no dataset root given; expected a folder laid out as {expected}")
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetLayoutError(f"{layout}: dataset root does not exist: {root} (expected layout: {expected})")
    if not root.is_dir():
        raise DatasetLayoutError(f"{layout}: dataset root is not a folder: {root} (expected layout: {expected})")
    for cand in [root] + [root / w for w in wrappers]:
        if _has_all(cand, markers):
            return cand
    missing = [str(root / m) for m in markers if not (root / m).exists()]
    msg = f"{layout}: {root} is not in the expected layout; missing {', '.join(missing)}. Expected: {expected}"
    suggestions = suggest_roots(root, markers)
    if suggestions:
        msg += ". Found the expected files under " + " and ".join(str(s) for s in suggestions[:3])
        msg += f" -- did you mean root={suggestions[0]}?"
    raise DatasetLayoutError(msg)
