"""``timm-gsp export`` (a trained model -> a folder in timm's Hub format, ``local-dir:``) and
``timm-gsp push`` (that folder -> the Hugging Face Hub). Only the model's weights and description are
published, never the optimizer or loss state."""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from ..errors import ConfigError, TimmGSPError
from .inputs import MODEL_HELP, add_runner_flags
from .support import printable_path

__all__ = ["add_parsers", "cmd_export", "cmd_push"]


def _examples_data(results: Any, transform: Callable) -> Optional[Dict[str, Any]]:
    """The run's evaluation datasets, if they can be rebuilt here (else None, with a note)."""
    from ..data import build_dataset

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
    from ..data import build_eval_transform
    from ..hub.model_sources import find_model
    from ..hub.published import check_output_folder, save_pretrained
    from ..models.model_config import evaluation_data_config
    from ..train.run_results import read_results

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
    from ..hub.published import published_files, verify_folder
    from ..hub.transfer import check_repo_id, upload_folder

    check_repo_id(args.repo_id)
    published_files(args.folder)
    if not args.no_verify:
        # What the Hub will serve must rebuild from its config.json and hold every tensor it needs.
        verify_folder(args.folder)
    url = upload_folder(args.folder, args.repo_id, token=args.token, private=args.private, revision=args.revision,
                        create_pr=args.create_pr, commit_message=args.message)
    print(f"uploaded {printable_path(args.folder)} to {args.repo_id}: {url}")
    return 0


def add_parsers(sub: Any) -> None:
    """``export`` and ``push``, on the sub-command parsers of ``timm-gsp``."""
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
    add_runner_flags(p)
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
