"""``timm-gsp eval``: the retrieval metrics of a model on a dataset, and optionally a report folder
(``metrics.json``, ``metrics.md`` and the example pictures) or a ``results.json`` for ``timm-gsp export``."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict

from ..errors import ConfigError
from .inputs import add_model_flags, add_runner_flags, check_finite, device, load, positive
from .support import printable_path

__all__ = ["add_parsers", "cmd_eval"]


def _eval_splits(args: argparse.Namespace) -> Dict[str, Any]:
    """The evaluation datasets (no transform yet), their names checked before anything is built."""
    from ..data import DATASETS, build_dataset, evaluation_splits

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
    from .. import __version__
    from ..hub.model_card import metrics_table
    from ..hub.model_sources import find_model
    from ..retrieval.evaluate import check_evaluation_split, embed_splits, score_embeddings, write_sheets
    from ..train.run_results import RunResults
    from ..utils import write_file_atomic

    for k in args.k:
        positive(k, "--k")
    found = find_model(args.model)
    splits = _eval_splits(args)
    check_evaluation_split(splits)  # a split whose metrics are undefined, or 100 % for any model, is refused
    loaded = load(found, args)
    for dataset in splits.values():
        dataset.transform = loaded.transform
    embedded = embed_splits(loaded.model, splits, batch_size=args.batch_size, num_workers=args.workers,
                            device=device(args), progress=not args.quiet)
    for name, (embeddings, _) in embedded.items():
        check_finite(embeddings, splits[name].samples, loaded)
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


def add_parsers(sub: Any) -> None:
    """``eval``, on the sub-command parsers of ``timm-gsp``."""
    p = sub.add_parser("eval", help="retrieval metrics of a model on a dataset")
    p.add_argument("--dataset", required=True, help="cub, cars, sop, inshop, folder (root/<class>/<images>) or collage")
    p.add_argument("--root", help="dataset folder")
    p.add_argument("--split", nargs="+", help="default: the benchmark's test split(s); all classes for a folder")
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8], help="the K of Recall@K")
    p.add_argument("--output", "-o", help="also write results.json (the input of `timm-gsp export --results`)")
    p.add_argument("--report", help="folder for metrics.json, metrics.md, retrieval.png and gsp_weights.png")
    p.add_argument("--report-k", type=int, default=5, help="results per query in the report's retrieval sheet")
    add_model_flags(p)
    add_runner_flags(p)
    p.set_defaults(func=cmd_eval)
