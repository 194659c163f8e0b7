"""The ``timm-gsp`` command: embed, search, eval, export, push, show.

Every command that runs a model takes it as ``--model SOURCE`` (``model_sources.find_model``)::

    hf-hub:<repo>[@revision]     a published model on the Hub (or in the local cache)
    local-dir:<folder> | <folder> a published folder (``timm-gsp export`` writes one)
    <checkpoint folder>          a training checkpoint (model_config.json + model.safetensors)
    <run folder>                 a training run: the checkpoint its results.json names

``embed`` writes an index file (``timm_gsp.search``): the embeddings, the image paths, their class
labels when the images sit in class folders, and the model that made them (source + fingerprint),
so ``search`` refuses queries embedded by another model. Under ``torchrun`` the images are sharded
across the processes and rank 0 writes one index, the same as a one-process run.

Errors about the input are printed as one line, ``timm-gsp <command>: error: ...``, exit status 1;
``--debug`` (or ``TIMM_GSP_DEBUG=1``) shows their traceback. Other errors are bugs: traceback. A file
that cannot be written (a full disk) is such a line too, naming it and the cause; no part of it is left.

Paths in plain-text output are one line each (``cli_support.printable_path``: a name holding a newline
or another control character is printed as the shell's ``$'...'``); ``--json`` prints them as they are.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .cli_support import DEBUG_ENV, OneLineArgumentParser, one_line, printable_path, wants_traceback
from .errors import ConfigError, TimmGSPError

__all__ = ["main", "build_parser", "collect_images", "read_labels"]


# --- images -------------------------------------------------------------------------------------

def collect_images(paths: Sequence[str]) -> List[Tuple[str, Optional[str]]]:
    """``(absolute path, class)`` of the image files named directly (class: None) and of those below
    named folders (sorted, recursive; class: the first folder below the named one, as in a
    ``root/<class>/<images>`` dataset; None for an image directly in the named folder)."""
    from .data.images import is_image_file

    found: List[Tuple[str, Optional[str]]] = []
    for raw in paths:
        path = Path(raw).expanduser().resolve()
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p)):
                parts = file.relative_to(path).parts
                found.append((str(file), parts[0] if len(parts) > 1 else None))
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


class _ImageFiles(torch.utils.data.Dataset):
    """``dataset[i] -> (transform(RGB image i), i)``; unreadable files raise one-line errors."""

    def __init__(self, paths: Sequence[str], transform: Callable):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        from .data.images import load_rgb

        return self.transform(load_rgb(self.paths[index], layout="image")), index


# --- the model ----------------------------------------------------------------------------------

@dataclass
class _Loaded:
    """A model ready to embed: built, on its device, with its evaluation preprocessing."""

    model: torch.nn.Module
    found: Any  # model_sources.ModelFolder
    data_config: Dict[str, Any]
    transform: Callable


def _device(args: argparse.Namespace) -> torch.device:
    from .distributed import local_device

    return torch.device(args.device) if args.device else local_device()


def _load(found: Any, args: argparse.Namespace) -> _Loaded:
    from .data import build_eval_transform
    from .model_config import evaluation_data_config

    model = found.build().to(_device(args))
    data_config = evaluation_data_config(model, found.config)
    return _Loaded(model, replace(found, config=replace(found.config, data_config=data_config)), data_config,
                   build_eval_transform(data_config))


def _positive(value: int, flag: str) -> int:
    if value < 1:
        raise ConfigError(f"{flag} must be >= 1, got {value}")
    return value


def _embed_files(loaded: _Loaded, paths: Sequence[str], args: argparse.Namespace) -> Optional[torch.Tensor]:
    """(M, D) float32 embeddings of the images; under torchrun each process embeds its shard and
    rank 0 gets all of them in order (the other ranks get None). A NaN or an infinity from the model
    is a ``ConfigError`` naming the image."""
    from .evaluate import embed_dataset
    from .utils import world_size_and_rank

    embeddings, order = embed_dataset(loaded.model, _ImageFiles(paths, loaded.transform), batch_size=args.batch_size,
                                      num_workers=args.workers, device=_device(args), progress=not args.quiet)
    world_size, rank = world_size_and_rank()
    if world_size == 1:
        return _check_finite(embeddings.cpu(), paths, loaded)
    parts = [None] * world_size if rank == 0 else None
    torch.distributed.gather_object((embeddings.cpu(), order.cpu()), parts, dst=0)
    if rank != 0:
        return None
    merged = torch.empty(len(paths), parts[0][0].shape[1])
    for rows, indices in parts:
        merged[indices] = rows
    return _check_finite(merged, paths, loaded)


def _check_finite(embeddings: torch.Tensor, paths: Sequence[str], loaded: _Loaded) -> torch.Tensor:
    """``embeddings``, refused when the model gave a NaN or an infinity for an image (it would rank by NaN)."""
    from .search import nonfinite_rows

    bad = nonfinite_rows(embeddings)
    if len(bad):
        others = f", and for {len(bad) - 1} other of the {len(paths)} images" if len(bad) > 1 else ""
        raise ConfigError(f"{loaded.found.source} gives an embedding that is not finite (NaN or infinite) for "
                          f"{printable_path(paths[int(bad[0])])}{others}: its weights hold NaN or overflow; "
                          "nothing is ranked or written")
    return embeddings


def _start_distributed() -> bool:
    """Join the torchrun job this process belongs to (gloo on CPU, nccl on GPUs); False outside one."""
    from .distributed import start_distributed

    return start_distributed()


# --- commands -----------------------------------------------------------------------------------

def cmd_embed(args: argparse.Namespace) -> int:
    from .model_sources import find_model
    from .search import model_fingerprint, write_index

    if Path(args.output).exists() and not args.overwrite:
        raise ConfigError(f"{args.output} exists: pass --overwrite to replace it")
    images = collect_images(args.images)
    paths = [path for path, _ in images]
    classes = [label for _, label in images]
    labels = read_labels(args.labels, paths) if args.labels else (classes if None not in classes else None)
    distributed = _start_distributed()
    try:
        loaded = _load(find_model(args.model), args)
        embeddings = _embed_files(loaded, paths, args)
        if embeddings is not None:  # rank 0 (or the only process) writes the index
            record = {"source": loaded.found.source, "fingerprint": model_fingerprint(loaded.model),
                      "config": loaded.found.config.to_dict()}
            out = write_index(args.output, embeddings, paths, record, labels, overwrite=args.overwrite)
            print(f"wrote {embeddings.shape[0]} embeddings of size {embeddings.shape[1]} to {printable_path(out)}"
                  + (f" with {len(set(labels))} classes" if labels else ""))
    finally:
        if distributed:
            torch.distributed.destroy_process_group()
    return 0


def _query_labels(args: argparse.Namespace, images: List[Tuple[str, Optional[str]]], known: Optional[List[str]]) -> List[Optional[str]]:
    """Each query's class: ``--query-labels``, else its class folder or parent folder's name when the
    index knows that class (else None: the sheet then draws no right / wrong frames)."""
    paths = [path for path, _ in images]
    if args.query_labels:
        return read_labels(args.query_labels, paths)
    classes = set(known or ())
    return [label if label in classes else None for label in (c or Path(p).parent.name for p, c in images)]


def cmd_search(args: argparse.Namespace) -> int:
    from .model_sources import find_model
    from .search import check_index_model, model_fingerprint, read_index, search

    k = _positive(args.top_k, "--top-k")
    index = read_index(args.index)
    if not len(index):
        raise ConfigError(f"{args.index}: the index holds no embeddings")
    source = args.model or index.model.get("source")
    if not source or not isinstance(source, str):
        raise ConfigError(f"{args.index} records no model: pass --model")
    images = collect_images(args.queries)
    loaded = _load(find_model(source), args)
    check_index_model(index, model_fingerprint(loaded.model), loaded.found.source)
    queries = _embed_files(loaded, [path for path, _ in images], args)
    scores, indices = search(queries, index, min(k, len(index)), backend=args.backend)
    results = [{"query": path, "results": [{"rank": r + 1, "path": index.paths[i], "score": s,
                                            **({"label": index.labels[i]} if index.labels else {})}
                                           for r, (s, i) in enumerate(zip(row_scores, row_indices)) if i >= 0]}
               for (path, _), row_scores, row_indices in zip(images, scores.tolist(), indices.tolist())]
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for item in results:  # one line per query and per hit, whatever the file names hold
            print(printable_path(item["query"]))
            for hit in item["results"]:
                print(f"  {hit['rank']:>3}  {hit['score']:.4f}  {printable_path(hit['path'])}")
    if args.save:
        _save_search_sheet(args.save, results, _query_labels(args, images, index.labels), args.thumb)
        print(f"wrote {printable_path(args.save)}")
    return 0


def _save_search_sheet(path: str, results: List[Dict[str, Any]], query_labels: List[Optional[str]], thumb: int) -> None:
    from .evaluate import save_picture
    from .viz import Hit, retrieval_sheet

    hits = [[Hit(hit["path"], hit["score"], hit.get("label")) for hit in item["results"]] for item in results]
    save_picture(retrieval_sheet([item["query"] for item in results], hits, query_labels=query_labels, thumb=thumb), path)


def _eval_splits(args: argparse.Namespace) -> Dict[str, Any]:
    """The evaluation datasets (no transform yet), their names checked before anything is built."""
    from .data import DATASETS, build_dataset, evaluation_splits

    if args.dataset not in DATASETS:
        raise ConfigError(f"--dataset {args.dataset!r}: unknown dataset; expected one of {sorted(DATASETS)}")
    names = tuple(args.split) if args.split else ("all",) if args.dataset == "folder" else evaluation_splits(args.dataset)
    if len(names) > 1 and sorted(names) != ["gallery", "query"]:
        raise ConfigError(f"--split: evaluate one split, or query and gallery; got {list(names)}")
    splits = {}
    for name in names:
        try:
            splits[name] = build_dataset(args.dataset, args.root, name)
        except ConfigError as error:  # e.g. an unknown split name
            raise ConfigError(f"--split {name}: {error}") from None
    return splits


def cmd_eval(args: argparse.Namespace) -> int:
    from . import __version__
    from .evaluate import check_evaluation_split, embed_splits, score_embeddings, write_sheets
    from .model_card import metrics_table
    from .model_sources import find_model
    from .run_results import RunResults
    from .utils import write_file_atomic

    for k in args.k:
        _positive(k, "--k")
    found = find_model(args.model)
    splits = _eval_splits(args)
    check_evaluation_split(splits)  # a split whose metrics are undefined, or 100 % for any model, is refused
    loaded = _load(found, args)
    for dataset in splits.values():
        dataset.transform = loaded.transform
    embedded = embed_splits(loaded.model, splits, batch_size=args.batch_size, num_workers=args.workers,
                            device=_device(args), progress=not args.quiet)
    for name, (embeddings, _) in embedded.items():
        _check_finite(embeddings, splits[name].samples, loaded)
    metrics = score_embeddings(embedded, tuple(args.k))
    results = RunResults(model=loaded.found.config, metrics=metrics, dataset=args.dataset,
                         dataset_root=str(Path(args.root).resolve()) if args.root else None,
                         eval_split="+".join(splits), checkpoint=loaded.found.source, timm_gsp_version=__version__)
    table = metrics_table(results.metrics)
    print(table)
    if args.output:
        results.write(args.output)
    if args.report:
        report = Path(args.report)
        results.write(report / "metrics.json")
        title = f"# Retrieval metrics of {loaded.found.source}\n\n{args.dataset}, split `{'+'.join(splits)}`\n\n"
        write_file_atomic(report / "metrics.md", lambda tmp: tmp.write_text(title + table + "\n", encoding="utf-8"))
        write_sheets(report, loaded.model, splits, embedded, mean=loaded.data_config["mean"],
                     std=loaded.data_config["std"], k=args.report_k)
        print(f"wrote {printable_path(report)} ({', '.join(sorted(p.name for p in report.iterdir()))})")
    return 0


def _examples_data(results: Any, transform: Callable) -> Optional[Dict[str, Any]]:
    """The run's evaluation datasets, if they can be rebuilt here (else None, with a note)."""
    from .data import build_dataset

    if results is None or not results.dataset or not results.eval_split:
        return None
    if results.eval_split == "val":
        print("timm-gsp export: note: no example pictures: the run evaluated a validation split carved from its "
              "train classes", file=sys.stderr)
        return None
    try:
        return {name: build_dataset(results.dataset, results.dataset_root, name, transform)
                for name in results.eval_split.split("+")}
    except (TimmGSPError, ValueError) as error:
        print(f"timm-gsp export: note: no example pictures: the evaluation data is not reachable here ({error})",
              file=sys.stderr)
        return None


def cmd_export(args: argparse.Namespace) -> int:
    from .data import build_eval_transform
    from .hub import check_output_folder, save_pretrained
    from .model_config import evaluation_data_config
    from .model_sources import find_model
    from .run_results import read_results

    found = find_model(args.source)
    output = Path(args.output).expanduser().resolve()
    if output == found.folder:
        raise ConfigError("the output folder must differ from the model's folder")
    check_output_folder(output)
    results_path = args.results or found.results
    results = read_results(results_path) if results_path else None
    model = found.build()
    data_config = evaluation_data_config(model, found.config, input_size=args.input_size, crop_pct=args.crop_pct)
    eval_dataset = None if args.no_examples else _examples_data(results, build_eval_transform(data_config))
    folder = save_pretrained(model, output, results, model_config=replace(found.config, data_config=data_config),
                             repo_id=args.repo_id, dataset=args.dataset, split=args.split, license=args.license,
                             eval_dataset=eval_dataset, batch_size=args.batch_size, num_workers=args.workers)
    print(f"wrote {printable_path(folder)} ({', '.join(sorted(p.name for p in folder.iterdir()))})"
          + (f" with the metrics of {printable_path(results_path)}" if results_path else " (no results: the card has no metrics)"))
    if not results_path and (found.folder.parent / "results.json").is_file():
        print(f"timm-gsp export: note: {printable_path(found.folder.parent / 'results.json')} measured another checkpoint "
              f"than {printable_path(found.folder.name)}: export the run folder {printable_path(found.folder.parent)} "
              "to publish the measured one", file=sys.stderr)
    # The published preprocessing is what every user will apply: show it, it must be the run's.
    print(f"published input: {'x'.join(map(str, data_config['input_size']))}, crop_pct {data_config.get('crop_pct')}, "
          f"{data_config.get('interpolation')} (if the run evaluated otherwise, export again with --input-size / --crop-pct)")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .hub import check_repo_id, published_files, upload_folder, verify_folder

    check_repo_id(args.repo_id)
    published_files(args.folder)
    if not args.no_verify:
        # What the Hub will serve must rebuild from its config.json and hold every tensor it needs.
        verify_folder(args.folder)
    url = upload_folder(args.folder, args.repo_id, token=args.token, private=args.private, revision=args.revision,
                        create_pr=args.create_pr, commit_message=args.message)
    print(f"uploaded {printable_path(args.folder)} to {args.repo_id}: {url}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .model_sources import find_model
    from .viz import save_overlays

    images = collect_images(args.images)
    loaded = _load(find_model(args.model), args)
    paths = [path for path, _ in images]
    stems = _unique_stems(paths)
    files = _ImageFiles(paths, loaded.transform)
    written = 0
    for start in range(0, len(paths), args.batch_size):
        chunk = range(start, min(start + args.batch_size, len(paths)))
        batch = torch.stack([files[i][0] for i in chunk]).to(_device(args))
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

    from .utils import output_write_error

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


# --- the parser ---------------------------------------------------------------------------------

MODEL_HELP = ("hf-hub:<repo>, local-dir:<folder> or a published folder, a training checkpoint folder, "
              "or a training run folder (its results.json names the checkpoint)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .search import BACKENDS

    parser = OneLineArgumentParser(prog="timm-gsp", description="Image retrieval with GSP (Generalized Sum Pooling) timm models.")
    parser.add_argument("--version", action="version", version=f"timm-gsp {__version__}")
    parser.add_argument("--debug", action="store_true", help=f"show the traceback of errors (also: {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def model(p: argparse.ArgumentParser, required: bool = True) -> None:
        p.add_argument("--model", required=required, help=MODEL_HELP)
        p.add_argument("--device", default=None, help="default: cuda if available, else cpu")

    def runner(p: argparse.ArgumentParser) -> None:
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--workers", type=int, default=0, help="image loading processes")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("embed", help="images or folders -> an index file (runs under torchrun too)")
    p.add_argument("images", nargs="+", help="image files and/or folders (searched recursively; root/<class>/<images> "
                                             "records the classes)")
    p.add_argument("--output", "-o", required=True, help="the index file to write (.safetensors)")
    p.add_argument("--labels", help='JSON file {"image path": "class"} (default: the class folders, when all images sit in one)')
    p.add_argument("--overwrite", action="store_true", help="replace an existing index file")
    model(p)
    runner(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("search", help="query images against an index: top-k with cosine scores",
                       description="The model defaults to the one recorded in the index; another model is refused.")
    p.add_argument("queries", nargs="+", help="query image files and/or folders")
    p.add_argument("--index", required=True, help="index file written by `timm-gsp embed`")
    p.add_argument("--top-k", "-k", type=int, default=5)
    p.add_argument("--backend", choices=list(BACKENDS), default="exact", help="exact, or faiss (pip install faiss-cpu)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--save", help="also write a retrieval sheet: each query with its top-k (PNG)")
    p.add_argument("--query-labels", help='JSON file {"image path": "class"} (default: the parent folder names)')
    p.add_argument("--thumb", type=int, default=112, help="thumbnail size of --save, pixels")
    model(p, required=False)
    runner(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("eval", help="retrieval metrics of a model on a dataset")
    p.add_argument("--dataset", required=True, help="cub, cars, sop, inshop, folder (root/<class>/<images>) or collage")
    p.add_argument("--root", help="dataset folder")
    p.add_argument("--split", nargs="+", help="default: the benchmark's test split(s); all classes for a folder")
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8], help="the K of Recall@K")
    p.add_argument("--output", "-o", help="also write results.json (the input of `timm-gsp export --results`)")
    p.add_argument("--report", help="folder for metrics.json, metrics.md, retrieval.png and gsp_weights.png")
    p.add_argument("--report-k", type=int, default=5, help="results per query in the report's retrieval sheet")
    model(p)
    runner(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="a trained model -> a folder ready for the Hub (local-dir:)",
                       description="SOURCE: a training run folder (the checkpoint its results.json names, with those "
                                   "metrics), a training checkpoint folder, or a published folder. Only the model's "
                                   "weights and description are published, never the optimizer or loss state.")
    p.add_argument("source", help=MODEL_HELP)
    p.add_argument("output", help="the folder to write: model.safetensors, config.json, README.md (+ example pictures)")
    p.add_argument("--results", help="the run's results.json (default: the run's, when its metrics are for these weights)")
    p.add_argument("--repo-id", help="Hub repo named in the model card (default: filled in by push)")
    p.add_argument("--dataset", help="dataset for the card (default: the results')")
    p.add_argument("--split", help="evaluation split for the card (default: the results', else test)")
    p.add_argument("--license", default="apache-2.0")
    p.add_argument("--input-size", type=int, help="evaluation image size to publish (default: the run's)")
    p.add_argument("--crop-pct", type=float, help="evaluation crop_pct to publish (default: the run's)")
    p.add_argument("--no-examples", action="store_true", help="no example pictures (they embed the evaluation data)")
    runner(p)
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
    model(p)
    runner(p)
    p.set_defaults(func=cmd_show)
    return parser


# --- errors -------------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``timm-gsp`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TimmGSPError as error:
        if wants_traceback(args.debug):
            raise
        print(f"timm-gsp {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
