"""Readers for the four standard deep-metric-learning benchmarks in their official layouts, plus a
generic class-per-folder reader. All use the standard class-disjoint ("zero-shot") splits:

=========  ===========================================  ===============================
dataset    files read                                   split
=========  ===========================================  ===============================
CUB        CUB_200_2011/{images.txt,                    classes 1-100 train, 101-200 test
           image_class_labels.txt, classes.txt, images/}
Cars196    cars_annos.mat + car_ims/ (official), or     classes 1-98 train, 99-196 test
           images/<class name>/ (class-folder variant)
SOP        Stanford_Online_Products/Ebay_{train,test}   Ebay_train (11,318 classes) / Ebay_test (11,316)
In-Shop    list_eval_partition.txt + img/ (or Eval/ +   train / query / gallery; query and gallery
           Img/img/)                                    share one label space
folder     root/<class>/<images>                        sorted classes, first fraction train
=========  ===========================================  ===============================

Images are decoded lazily in ``__getitem__``; a missing or corrupt one raises an error naming its
path. ``skip_corrupt=True`` decodes everything up front and drops bad files with a warning.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Dict, Hashable, List, NamedTuple, Optional, Sequence, Tuple

from ..errors import ConfigError, DatasetLayoutError
from ..utils import PathLike
from .base import ImageFileDataset, Transform
from .images import is_image_file
from .layout import find_layout_root

__all__ = ["CUB200", "Cars196", "StanfordOnlineProducts", "InShop", "FolderDataset", "ImageFolder", "scan_image_folder"]

Record = Tuple[str, Hashable]


def _read_rows(path: Path, layout: str, ncols: int, skip: int = 0) -> List[List[str]]:
    """Whitespace-separated rows of ``path`` after ``skip`` header lines; blank lines ignored.

    Splits at most ``ncols - 1`` times so a last column (a file path) may contain spaces.
    """
    if not path.is_file():
        raise DatasetLayoutError(f"{layout}: index file not found: {path}")
    rows = []
    with open(path, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if lineno <= skip or not line.strip():
                continue
            parts = line.split(None, ncols - 1)
            if len(parts) != ncols:
                raise DatasetLayoutError(
                    f"{layout}: malformed line {lineno} in {path}: expected {ncols} columns, got {line.rstrip()!r}")
            rows.append([p.strip() for p in parts])
    return rows


def _check_images_present(records: Sequence[Record], layout: str, where: str) -> None:
    """Cheap layout check: the first, middle and last listed images must exist (not all N, which
    would stat 100k files on a network drive; the rest are checked when loaded)."""
    if not records:
        raise DatasetLayoutError(f"{layout}: the index lists no images for this split ({where})")
    for i in sorted({0, len(records) // 2, len(records) - 1}):
        path = records[i][0]
        if not os.path.exists(path):
            raise DatasetLayoutError(f"{layout}: image listed in the index is missing: {path} (images expected under {where})")


def _split_error(layout: str, split: str, allowed: Sequence[str]) -> ConfigError:
    return ConfigError(f"{layout}: unknown split {split!r}; expected one of {list(allowed)}")


def _first_half(split: str, class_ids: Sequence[int], num_train_classes: Optional[int], layout: str) -> List[int]:
    """Class ids of ``split`` under the "first half of class ids train" protocol."""
    ids = sorted(set(class_ids))
    n_train = len(ids) // 2 if num_train_classes is None else int(num_train_classes)
    if not 0 < n_train < len(ids):
        raise ConfigError(f"{layout}: num_train_classes={n_train} must be in 1..{len(ids) - 1}")
    if split == "train":
        return ids[:n_train]
    if split == "test":
        return ids[n_train:]
    raise _split_error(layout, split, ("train", "test"))


class CUB200(ImageFileDataset):
    """Caltech-UCSD Birds-200-2011. Train: classes 1-100 (5,864 images), test: 101-200 (5,924).

    Args:
        root: the ``CUB_200_2011`` folder or the folder containing it.
        split: ``"train"`` or ``"test"``.
        num_train_classes: classes ``1..n`` form train (default: half the class ids, i.e. 100).
    """

    LAYOUT = "CUB-200-2011"
    EXPECTED = "CUB_200_2011/{images.txt, image_class_labels.txt, images/<class>/<image>.jpg}"

    def __init__(self, root: PathLike, split: str = "train", transform: Optional[Transform] = None, *,
                 skip_corrupt: bool = False, num_train_classes: Optional[int] = None) -> None:
        base = find_layout_root(root, ["images.txt", "image_class_labels.txt", "images"], self.LAYOUT,
                                self.EXPECTED, wrappers=("CUB_200_2011",))
        images = dict(_read_rows(base / "images.txt", self.LAYOUT, 2))
        labels = {i: int(c) for i, c in _read_rows(base / "image_class_labels.txt", self.LAYOUT, 2)}
        if set(images) != set(labels):
            missing = sorted(set(images) ^ set(labels))[:5]
            raise DatasetLayoutError(f"{self.LAYOUT}: images.txt and image_class_labels.txt list different image ids "
                                     f"(e.g. {missing}) in {base}")
        names: Dict[Hashable, str] = {}
        if (base / "classes.txt").is_file():
            names = {int(i): n for i, n in _read_rows(base / "classes.txt", self.LAYOUT, 2)}
        keep = set(_first_half(split, labels.values(), num_train_classes, self.LAYOUT))
        # Image ids are numeric strings; keep the official order (by id).
        records = [(str(base / "images" / images[i]), labels[i]) for i in sorted(images, key=int) if labels[i] in keep]
        for path, cid in records:  # class names from the folder when classes.txt is absent
            names.setdefault(cid, Path(path).parent.name)
        _check_images_present(records, self.LAYOUT, str(base / "images"))
        super().__init__(records, names, transform, name="cub", split=split, skip_corrupt=skip_corrupt)
        self.root = base


class Cars196(ImageFileDataset):
    """Stanford Cars-196. Train: classes 1-98 (8,054 images), test: 99-196 (8,131). The official
    ``test`` flag of the annotations is ignored (the DML protocol splits by class).

    Layouts (``layout="auto"`` tries them in this order):

    * ``"annos"`` (official): ``cars_annos.mat`` (struct array ``annotations`` with fields
      ``relative_im_path`` (``car_ims/000001.jpg``), ``bbox_x1..bbox_y2``, ``class``, ``test``; cell
      array ``class_names``) next to ``car_ims/``. Needs scipy.
    * ``"folder"``: ``images/<class name>/<image>`` (the re-packaging used by several DML codebases);
      sorted class-folder names are class ids 1..196 (the official class_names are alphabetical,
      so the split matches).
    """

    LAYOUT = "Cars196"
    EXPECTED = "cars_annos.mat + car_ims/*.jpg (official), or images/<class name>/*.jpg"
    WRAPPERS = ("cars196", "CARS196", "Cars196", "cars", "stanford_cars", "StanfordCars")

    def __init__(self, root: PathLike, split: str = "train", transform: Optional[Transform] = None, *,
                 skip_corrupt: bool = False, num_train_classes: Optional[int] = None, layout: str = "auto") -> None:
        if layout not in ("auto", "annos", "folder"):
            raise ConfigError(f"{self.LAYOUT}: layout must be 'auto', 'annos' or 'folder', got {layout!r}")
        if layout == "folder":
            base = find_layout_root(root, ["images"], self.LAYOUT, self.EXPECTED, wrappers=self.WRAPPERS)
        else:
            try:
                base = find_layout_root(root, ["cars_annos.mat"], self.LAYOUT, self.EXPECTED, wrappers=self.WRAPPERS)
                layout = "annos"
            except DatasetLayoutError:
                # The class-folder variant only when it is clearly there; otherwise report the
                # official layout's error (with its suggestions), which names cars_annos.mat.
                base = self._folder_variant_root(root) if layout == "auto" else None
                if base is None:
                    raise
                layout = "folder"
        if layout == "annos":
            records_all, names = self._read_annos(base)
        else:
            records_all, names = self._read_folder(base)
        keep = set(_first_half(split, [c for _, c in records_all], num_train_classes, self.LAYOUT))
        records = [r for r in records_all if r[1] in keep]
        _check_images_present(records, self.LAYOUT, str(base / ("car_ims" if layout == "annos" else "images")))
        super().__init__(records, names, transform, name="cars", split=split, skip_corrupt=skip_corrupt)
        self.root = base
        self.layout = layout

    @classmethod
    def _folder_variant_root(cls, root: Optional[PathLike]) -> Optional[Path]:
        if root is None:
            return None
        for cand in [Path(root).expanduser()] + [Path(root).expanduser() / w for w in cls.WRAPPERS]:
            images = cand / "images"
            if images.is_dir() and any(d.is_dir() for d in images.iterdir()):
                return cand
        return None

    @classmethod
    def _read_annos(cls, base: Path) -> Tuple[List[Record], Dict[Hashable, str]]:
        try:
            import scipy.io
        except ImportError as exc:
            raise ImportError(f"{cls.LAYOUT}: reading {base / 'cars_annos.mat'} needs scipy (pip install scipy), "
                              "or use the class-folder layout images/<class name>/") from exc
        mat_path = base / "cars_annos.mat"
        try:
            mat = scipy.io.loadmat(str(mat_path), squeeze_me=True, struct_as_record=True)
            ann = mat["annotations"]
        except (ValueError, KeyError, OSError, TypeError) as exc:
            raise DatasetLayoutError(f"{cls.LAYOUT}: cannot read 'annotations' from {mat_path}: {exc}") from exc
        ann = ann.reshape(-1)  # squeeze_me turns a single annotation into a 0-d array
        fields = ann.dtype.names or ()
        if "relative_im_path" not in fields or "class" not in fields:
            raise DatasetLayoutError(f"{cls.LAYOUT}: {mat_path} 'annotations' lacks relative_im_path/class "
                                     f"fields (has {fields})")
        records = [(str(base / str(p)), int(c)) for p, c in zip(ann["relative_im_path"], ann["class"])]
        names: Dict[Hashable, str] = {}
        if "class_names" in mat:
            for i, n in enumerate(mat["class_names"].reshape(-1), 1):
                names[i] = str(n)
        return records, names

    @classmethod
    def _read_folder(cls, base: Path) -> Tuple[List[Record], Dict[Hashable, str]]:
        class_dirs = sorted(d for d in (base / "images").iterdir() if d.is_dir())
        if not class_dirs:
            raise DatasetLayoutError(f"{cls.LAYOUT}: {base / 'images'} has no class folders and there is no "
                                     f"{base / 'cars_annos.mat'}; expected {cls.EXPECTED}")
        records, names = [], {}
        for cid, d in enumerate(class_dirs, 1):
            names[cid] = d.name
            records += [(str(p), cid) for p in sorted(d.iterdir()) if is_image_file(p)]
        return records, names


class StanfordOnlineProducts(ImageFileDataset):
    """Stanford Online Products. Train: ``Ebay_train.txt`` (59,551 images, 11,318 classes),
    test: ``Ebay_test.txt`` (60,502 images, 11,316 classes). Class names are the official class ids.

    Args:
        root: the ``Stanford_Online_Products`` folder or the folder containing it.
    """

    LAYOUT = "Stanford Online Products"
    EXPECTED = ("Stanford_Online_Products/{Ebay_train.txt, Ebay_test.txt, <category>_final/<image>.JPG}, "
                "index columns 'image_id class_id super_class_id path' with a header line")

    def __init__(self, root: PathLike, split: str = "train", transform: Optional[Transform] = None, *,
                 skip_corrupt: bool = False) -> None:
        if split not in ("train", "test"):
            raise _split_error(self.LAYOUT, split, ("train", "test"))
        index = f"Ebay_{split}.txt"
        base = find_layout_root(root, [index], self.LAYOUT, self.EXPECTED, wrappers=("Stanford_Online_Products",))
        rows = _read_rows(base / index, self.LAYOUT, 4)
        if rows and rows[0][0] == "image_id":  # the header line
            rows = rows[1:]
        try:
            records = [(str(base / path), int(cls_id)) for _, cls_id, _, path in rows]
        except ValueError as exc:
            raise DatasetLayoutError(f"{self.LAYOUT}: non-integer class_id in {base / index}: {exc}") from exc
        _check_images_present(records, self.LAYOUT, str(base))
        super().__init__(records, None, transform, name="sop", split=split, skip_corrupt=skip_corrupt)
        self.root = base


class InShop(ImageFileDataset):
    """DeepFashion In-Shop Clothes Retrieval. Splits ``train`` (25,882 images, 3,997 items),
    ``query`` (14,218) and ``gallery`` (12,612) over 3,985 test items. ``query`` and ``gallery``
    share one label space (sorted union of their item ids), so ``labels`` compare across the two.

    Accepted layouts (``root`` is the folder holding them, or the benchmark folder above):
    ``list_eval_partition.txt`` + ``img/...``, or the official ``Eval/list_eval_partition.txt`` +
    ``Img/img/...``. The index has a count line, a header line, then
    ``image_name item_id evaluation_status`` rows with paths like ``img/WOMEN/Dresses/id_00000002/02_1_front.jpg``.
    """

    LAYOUT = "In-Shop"
    EXPECTED = "list_eval_partition.txt + img/<...>.jpg, or Eval/list_eval_partition.txt + Img/img/<...>.jpg"
    WRAPPERS = ("Eval", "In-shop Clothes Retrieval Benchmark", "In-shop Clothes Retrieval Benchmark/Eval",
                "InShop", "inshop", "In-shop", "in-shop")
    SPLITS = ("train", "query", "gallery")

    def __init__(self, root: PathLike, split: str = "train", transform: Optional[Transform] = None, *,
                 skip_corrupt: bool = False) -> None:
        if split not in self.SPLITS:
            hint = " (In-Shop is evaluated query vs gallery; use split='query' and split='gallery')" if split == "test" else ""
            raise ConfigError(f"{self.LAYOUT}: unknown split {split!r}; expected one of {list(self.SPLITS)}{hint}")
        part_dir = find_layout_root(root, ["list_eval_partition.txt"], self.LAYOUT, self.EXPECTED, wrappers=self.WRAPPERS)
        index = part_dir / "list_eval_partition.txt"
        rows = _read_rows(index, self.LAYOUT, 3, skip=2)
        self._check_count(index, len(rows))
        bad = sorted({s for _, _, s in rows} - set(self.SPLITS))
        if bad:
            raise DatasetLayoutError(f"{self.LAYOUT}: unknown evaluation_status {bad} in {index}")
        img_base = self._find_image_base(part_dir, rows[0][0] if rows else "img")
        if split == "train":
            order = None
        else:  # one label space for query and gallery
            order = sorted({item for _, item, s in rows if s in ("query", "gallery")})
        records = [(str(img_base / name), item) for name, item, s in rows if s == split]
        _check_images_present(records, self.LAYOUT, str(img_base))
        super().__init__(records, None, transform, name="inshop", split=split, skip_corrupt=skip_corrupt, class_order=order)
        self.root = part_dir

    @classmethod
    def _check_count(cls, index: Path, n_rows: int) -> None:
        with open(index, "r", encoding="utf-8") as f:
            first = f.readline().strip()
        if not first.isdigit():
            raise DatasetLayoutError(f"{cls.LAYOUT}: first line of {index} should be the image count, got {first!r}")
        if int(first) != n_rows:
            warnings.warn(f"{cls.LAYOUT}: {index} announces {first} images but lists {n_rows}", RuntimeWarning, stacklevel=3)

    @classmethod
    def _find_image_base(cls, part_dir: Path, first_image: str) -> Path:
        """The folder that ``img/...`` paths are relative to: next to the index, or ``Img/`` beside ``Eval/``."""
        candidates = [part_dir, part_dir / "Img", part_dir.parent, part_dir.parent / "Img"]
        for cand in candidates:
            if (cand / first_image).exists():
                return cand
        tried = ", ".join(str(c / first_image) for c in candidates)
        raise DatasetLayoutError(f"{cls.LAYOUT}: cannot find the images listed in {part_dir / 'list_eval_partition.txt'}; "
                                 f"looked for the first one at {tried} (expected {cls.EXPECTED})")


class ImageFolder(NamedTuple):
    """The image files of a folder, as ``scan_image_folder`` finds them."""

    classes: Dict[str, List[str]]  # class folder name -> its image paths (nested ones too), sorted
    loose: List[str]  # the images directly in the folder, sorted
    empty: List[str]  # the class folders that hold no image


def scan_image_folder(base: PathLike, layout: str = "folder") -> ImageFolder:
    """The image files under ``base``, read as ``root/<class name>/<images>``: each folder directly in
    ``base`` (not hidden) is a class, and its images may be nested below it; images directly in
    ``base`` are ``loose``. Paths are ``base`` joined with the names found (links are not resolved).

    Class folders may be links (a dataset assembled from folders elsewhere). Below them each real
    folder is read once, and a link to a folder is followed only into ``base`` and outside every
    class folder: ``class_0/up -> ..`` would otherwise file every class under ``class_0``, and a
    link into another class would read its images twice, under two labels. Each real image file
    counts once (the first class in sorted order keeps it). Skipped links are counted in one
    warning, which names ``layout``.
    """
    base = Path(base)
    root = base.resolve()
    class_dirs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    class_roots = [d.resolve() for d in class_dirs]
    read_dirs, read_files, skipped_links = set(class_roots), set(), []

    def may_follow(real: Path) -> bool:
        return real not in read_dirs and real.is_relative_to(root) and not any(
            real.is_relative_to(c) or c.is_relative_to(real) for c in class_roots)

    classes: Dict[str, List[str]] = {}
    empty = []
    for class_dir, class_root in zip(class_dirs, class_roots):
        files, pending = [], [(str(class_dir), class_root)]
        while pending:  # depth-first, entries sorted: the same walk on every machine
            folder, real_folder = pending.pop()
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda e: e.name)
            for entry in entries:
                # the real path without a system call unless the entry is a link
                real = Path(os.path.realpath(entry.path)) if entry.is_symlink() else real_folder / entry.name
                if entry.is_dir():
                    if entry.is_symlink() and not may_follow(real):
                        skipped_links.append(entry.path)
                    elif real not in read_dirs:
                        read_dirs.add(real)
                        pending.append((entry.path, real))
                elif is_image_file(entry.name) and real not in read_files:
                    read_files.add(real)
                    files.append(entry.path)
        if files:
            classes[class_dir.name] = sorted(files)
        else:
            empty.append(class_dir.name)
    if skipped_links:
        warnings.warn(f"{layout}: skipped {len(skipped_links)} directory links under {base} that lead out of "
                      f"the dataset, into a class folder or to a folder already read: {sorted(skipped_links)[:3]}",
                      RuntimeWarning, stacklevel=2)
    loose = sorted(str(p) for p in base.iterdir() if p.is_file() and is_image_file(p))
    return ImageFolder(classes, loose, empty)


class FolderDataset(ImageFileDataset):
    """``root/<class name>/<images>`` (images may be nested below the class folder), split by class.
    Each image file is read once, under the class folder it is in (see ``scan_image_folder`` for links).

    Args:
        split: ``"train"``, ``"test"`` or ``"all"``.
        train_fraction: without explicit lists, sorted class names ``[:round(C * train_fraction)]``
            are train and the rest test (deterministic, no seed involved).
        train_classes / test_classes: explicit class-name lists (either or both; the missing one is
            the complement). They must be disjoint and exist.
    """

    LAYOUT = "folder"
    EXPECTED = "<root>/<class name>/<image files>"

    def __init__(self, root: PathLike, split: str = "train", transform: Optional[Transform] = None, *,
                 train_fraction: float = 0.5, train_classes: Optional[Sequence[str]] = None,
                 test_classes: Optional[Sequence[str]] = None, skip_corrupt: bool = False) -> None:
        if split not in ("train", "test", "all"):
            raise _split_error(self.LAYOUT, split, ("train", "test", "all"))
        if root is None or not Path(root).expanduser().is_dir():
            raise DatasetLayoutError(f"{self.LAYOUT}: dataset root does not exist or is not a folder: {root} "
                                     f"(expected layout: {self.EXPECTED})")
        base = Path(root).expanduser()
        per_class = self._scan(base)
        all_classes = sorted(per_class)
        chosen = all_classes if split == "all" else self._split(all_classes, split, train_fraction, train_classes, test_classes)
        records = [(p, c) for c in chosen for p in per_class[c]]
        super().__init__(records, None, transform, name="folder", split=split, skip_corrupt=skip_corrupt)
        self.root = base

    @classmethod
    def _scan(cls, base: Path) -> Dict[str, List[str]]:
        """``{class name: sorted image paths}`` of the class folders under ``base`` (``scan_image_folder``)."""
        found = scan_image_folder(base, cls.LAYOUT)
        if not found.classes:
            hint = f"; {base} holds images directly -- did you mean root={base.parent}?" if found.loose else ""
            raise DatasetLayoutError(f"{cls.LAYOUT}: no class folders with images under {base} "
                                     f"(expected layout: {cls.EXPECTED}){hint}")
        if found.empty:
            warnings.warn(f"{cls.LAYOUT}: ignoring {len(found.empty)} class folders without images under {base}: "
                          f"{found.empty[:5]}", RuntimeWarning, stacklevel=3)
        return found.classes

    @classmethod
    def _split(cls, all_classes: List[str], split: str, train_fraction: float,
               train_classes: Optional[Sequence[str]], test_classes: Optional[Sequence[str]]) -> List[str]:
        known = set(all_classes)
        for label, lst in (("train_classes", train_classes), ("test_classes", test_classes)):
            unknown = sorted(set(lst or ()) - known)
            if unknown:
                raise ConfigError(f"{cls.LAYOUT}: {label} names classes not found as folders: {unknown[:5]}")
        if train_classes is not None or test_classes is not None:
            train = set(train_classes) if train_classes is not None else known - set(test_classes or ())
            test = set(test_classes) if test_classes is not None else known - train
            overlap = sorted(train & test)
            if overlap:
                raise ConfigError(f"{cls.LAYOUT}: train_classes and test_classes overlap: {overlap[:5]}")
        else:
            if not 0.0 < train_fraction < 1.0:
                raise ConfigError(f"{cls.LAYOUT}: train_fraction must be in (0, 1), got {train_fraction}")
            if len(all_classes) < 2:
                raise ConfigError(f"{cls.LAYOUT}: need at least 2 class folders for a class-disjoint split")
            n_train = min(max(round(len(all_classes) * train_fraction), 1), len(all_classes) - 1)
            train, test = set(all_classes[:n_train]), set(all_classes[n_train:])
        chosen = sorted(train if split == "train" else test)
        if not chosen:
            raise ConfigError(f"{cls.LAYOUT}: the {split} split has no classes")
        return chosen
