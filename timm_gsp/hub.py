"""Publish and reuse trained GSP retrieval models in timm's own Hugging Face Hub format.

A published model is a folder (or Hub repo) of exactly three files:

    model.safetensors   the model's ``state_dict()`` (no pickle; no loss or optimizer state)
    config.json         timm's config: ``architecture``, ``model_args`` (the GSP pool string,
                        embedding size, img_size, ...) and ``pretrained_cfg`` (input size, mean,
                        std, interpolation, crop); written by ``timm.models.save_for_hf``
    README.md           the model card: task, dataset and split, retrieval metrics, recipe,
                        usage, license and citation

so that, after ``import timm_gsp``, plain timm rebuilds the identical model::

    model = timm.create_model("hf-hub:user/repo", pretrained=True)      # or "local-dir:/path"

Loading reads tensors (safetensors) and JSON only: no code from a checkpoint is executed; the
GSP layer's code is the installed ``timm_gsp`` package.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
from safetensors.torch import load_file

import timm
from timm.data import resolve_data_config
from timm.models import save_for_hf

from .pooling import gsp_modules

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "PUBLISHED_FILES",
    "REPO_PLACEHOLDER",
    "WEIGHTS_NAME",
    "CheckpointMismatchError",
    "HubUnavailableError",
    "data_config_from_run",
    "find_results",
    "gsp_summary",
    "is_model_folder",
    "load_model",
    "load_state_dict",
    "metrics_table",
    "model_card",
    "push_to_hub",
    "read_results",
    "read_state_dict",
    "save_pretrained",
    "upload_folder",
    "verify_folder",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
PUBLISHED_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)
# Stands for the repo id in a card written before the repo is known; ``upload_folder`` fills it in.
REPO_PLACEHOLDER = "<namespace>/<model-name>"
PathLike = Union[str, os.PathLike]

CITATION = """@inproceedings{gurbuz2023generalized,
  title     = {Generalized Sum Pooling for Metric Learning},
  author    = {Gurbuz, Yeti Z. and Sener, Ozan and Alatan, A. Aydin},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2023},
  eprint    = {2308.09228},
  archivePrefix = {arXiv}
}"""
TIMM_CITATION = """@misc{rw2019timm,
  author    = {Ross Wightman},
  title     = {PyTorch Image Models},
  year      = {2019},
  publisher = {GitHub},
  journal   = {GitHub repository},
  doi       = {10.5281/zenodo.4414861},
  howpublished = {\\url{https://github.com/huggingface/pytorch-image-models}}
}"""

# Benchmark names used by ``timm_gsp.data.build_dataset`` -> names for people.
DATASET_NAMES = {
    "cub": "CUB-200-2011",
    "cars": "Cars196",
    "sop": "Stanford Online Products",
    "inshop": "In-Shop Clothes Retrieval",
    "collage": "timm-gsp generated collage",
    "folder": "image folder",
}
# Keys of ``timm_gsp.metrics.RetrievalMetrics.compute()`` -> the field's names for them.
_FIXED_METRIC_NAMES = {"precision_at_1": "P@1", "r_precision": "R-Precision", "map_at_r": "MAP@R"}
# Training-run keys in timm's data-config vocabulary that describe the evaluation preprocessing.
_DATA_CONFIG_KEYS = ("input_size", "img_size", "crop_pct", "crop_mode", "interpolation", "mean", "std")
# Run-config keys left out of a public card: local paths and switches that say nothing about the recipe.
_PRIVATE_RUN_KEYS = frozenset({"data_dir", "root", "output", "resume", "checkpoint", "workers", "no_progress"})


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not fit the model it is loaded into (names both shapes)."""


class HubUnavailableError(RuntimeError):
    """The Hub cannot be reached: offline mode, no token, or no network."""


# --- what a GSP model is ------------------------------------------------------------------------

def gsp_summary(model: nn.Module) -> Dict[str, Any]:
    """The GSP and embedding hyper-parameters of ``model``, for ``config.json`` and the card.

    Returns:
        ``{"embed_dim", "num_features", "pools": [{"name", "num_prototypes", "feature_dim",
        "transport_ratio", "gamma", "input_fmt"}]}``; ``pools`` is empty for a non-GSP model.
    """
    pools = [
        {
            "name": name,
            "num_prototypes": pool.num_prototypes,
            "feature_dim": pool.in_chs,
            "transport_ratio": pool.transport_ratio,
            "gamma": pool.gamma,
            "input_fmt": pool.input_fmt,
        }
        for name, pool in gsp_modules(model)
    ]
    return {
        "embed_dim": int(getattr(model, "num_classes", 0) or 0),
        "num_features": int(getattr(model, "num_features", 0) or 0),
        "pools": pools,
    }


def read_results(results: Union[None, PathLike, Mapping[str, Any]]) -> Dict[str, Any]:
    """A training run's ``results.json`` (path or dict) as ``{"metrics": {...}, "config": {...}}``.

    Raises:
        ValueError: the file is not of that shape, or a metric is not a number.
    """
    if results is None:
        return {"metrics": {}, "config": {}}
    if not isinstance(results, Mapping):
        with open(results, encoding="utf-8") as f:
            results = json.load(f)
    if not isinstance(results, Mapping) or not isinstance(results.get("metrics", {}), Mapping):
        raise ValueError('results must be {"metrics": {name: value}, "config": {...}}')
    metrics = dict(results.get("metrics") or {})
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"metric {key!r} must be a number, got {value!r}")
    out = dict(results)
    out["metrics"] = {k: float(v) for k, v in metrics.items()}
    out["config"] = dict(results.get("config") or {})
    return out


def data_config_from_run(results: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """Evaluation preprocessing of a training run (``read_results`` output), in timm's vocabulary.

    The first found of: ``results["data_config"]``, ``results["config"]["data_config"]`` (a dict
    as ``timm.data.resolve_data_config`` returns), else the run config's keys of those names
    (``input_size``, ``img_size``, ``crop_pct``, ``crop_mode``, ``interpolation``, ``mean``,
    ``std``; an int size means a square image). ``None`` when the run records none of them.
    """
    config = results.get("config") or {}
    given = results.get("data_config") or config.get("data_config")
    source = given if isinstance(given, Mapping) else config
    found = {k: source[k] for k in _DATA_CONFIG_KEYS if source.get(k) is not None}
    if isinstance(found.get("img_size"), int):
        found["img_size"] = (found["img_size"], found["img_size"])
    if isinstance(found.get("input_size"), int):
        found["input_size"] = (3, found["input_size"], found["input_size"])
    return found or None


# --- the model card -----------------------------------------------------------------------------

def _metric_name(key: str) -> str:
    if key in _FIXED_METRIC_NAMES:
        return _FIXED_METRIC_NAMES[key]
    if key.startswith("recall_at_"):
        return f"R@{key[len('recall_at_'):]}"
    return key


def _metric_order(key: str) -> Tuple[int, int, str]:
    if key == "precision_at_1":
        return (0, 0, key)
    if key.startswith("recall_at_") and key[len("recall_at_"):].isdigit():
        return (1, int(key[len("recall_at_"):]), key)
    return ({"r_precision": 2, "map_at_r": 3}.get(key, 4), 0, key)


def metrics_table(metrics: Mapping[str, float]) -> str:
    """Markdown table of retrieval metrics in percent, in the field's order and names
    (P@1, R@K, R-Precision, MAP@R; other keys as they are)."""
    rows = [f"| {_metric_name(k)} | {100 * float(metrics[k]):.2f} |" for k in sorted(metrics, key=_metric_order)]
    return "\n".join(["| Metric | Value (%) |", "|---|---|", *rows])


def _yaml_str(value: Any) -> str:
    return json.dumps(str(value))  # a JSON string is a valid, safely quoted YAML scalar


def _front_matter(name: str, license: str, metrics: Mapping[str, float], dataset: Optional[str], split: str) -> str:
    lines = [
        "---",
        "library_name: timm",
        f"license: {license}",
        "pipeline_tag: image-feature-extraction",
        "tags:",
        *(f"- {tag}" for tag in ("image-feature-extraction", "image-retrieval", "metric-learning", "timm", "timm-gsp")),
    ]
    finite = {k: v for k, v in metrics.items() if math.isfinite(v)}
    if finite and dataset:
        lines += [
            "model-index:",
            f"- name: {_yaml_str(name)}",
            "  results:",
            "  - task:",
            "      type: image-feature-extraction",
            "      name: Image retrieval",
            "    dataset:",
            f"      type: {_yaml_str(dataset)}",
            f"      name: {_yaml_str(DATASET_NAMES.get(dataset, dataset))}",
            f"      split: {_yaml_str(split)}",
            "    metrics:",
        ]
        for key in sorted(finite, key=_metric_order):
            lines += [f"    - type: {key}", f"      name: {_yaml_str(_metric_name(key))}", f"      value: {finite[key]!r}"]
    lines.append("---")
    return "\n".join(lines)


def _format_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 200 else text[:197] + "..."


def model_card(
        model: nn.Module,
        results: Union[None, PathLike, Mapping[str, Any]] = None,
        *,
        repo_id: Optional[str] = None,
        dataset: Optional[str] = None,
        split: Optional[str] = None,
        license: str = "apache-2.0",
        config: Optional[Mapping[str, Any]] = None,
) -> str:
    """The ``README.md`` of a published GSP retrieval model.

    Args:
        model: the model being published.
        results: the training run's ``results.json`` (path or dict): ``metrics`` fill the metrics
            table, ``config`` the recipe; ``dataset`` / ``split`` default to its
            ``config["dataset"]`` / ``config["split"]`` or ``eval_split`` (else ``"test"``).
        repo_id: the Hub repo; ``None`` writes ``REPO_PLACEHOLDER`` (filled in at upload).
        config: the written timm ``config.json`` (for the input settings); default: the model's.
    """
    run = read_results(results)
    metrics, recipe = run["metrics"], run["config"]
    dataset = dataset or recipe.get("dataset")
    split = split or recipe.get("split") or run.get("eval_split") or "test"
    repo = repo_id or REPO_PLACEHOLDER
    name = repo.split("/")[-1]
    summary = gsp_summary(model)
    pretrained_cfg = dict((config or {}).get("pretrained_cfg") or resolve_data_config(model=model))
    architecture = (config or {}).get("architecture") or model.pretrained_cfg.get("architecture", type(model).__name__)
    backbone = ((config or {}).get("model_args") or getattr(model, "_model_args", {})).get("backbone")
    global_pool = (config or {}).get("global_pool") or getattr(model, "global_pool", None)
    params = sum(p.numel() for p in model.parameters()) / 1e6

    text = [_front_matter(name, license, metrics, dataset, split), f"# {name}", ""]
    pooling = ("**Generalized Sum Pooling** (GSP, Gurbuz et al., ICCV 2023)" if summary["pools"]
               else f"`{global_pool}` pooling (a baseline without GSP)")
    text.append(
        f"An image-retrieval (deep metric learning) model: a timm `{backbone or architecture}` backbone with "
        f"{pooling} and a linear embedding layer. "
        f"Its forward maps an image to an embedding of {summary['embed_dim']} dimensions; compare embeddings "
        "by cosine similarity. Published with `timm-gsp` in timm's own format: plain timm loads it after "
        "`import timm_gsp`."
    )
    text += ["", "## Model details", ""]
    text.append("- **Task:** image retrieval / metric learning (class-disjoint train and test classes)")
    text.append(f"- **Architecture:** `{architecture}`" + (f" wrapping `{backbone}`" if backbone else ""))
    if global_pool:
        text.append(f"- **Pooling:** `{global_pool}`")
    for pool in summary["pools"]:
        text.append(
            f"- **GSP** (`{pool['name']}`): {pool['num_prototypes']} prototypes of {pool['feature_dim']} channels, "
            f"transport ratio {pool['transport_ratio']}, gamma {pool['gamma']}"
        )
    text.append(f"- **Embedding size:** {summary['embed_dim']} (from {summary['num_features']} pooled features)")
    text.append(f"- **Parameters (M):** {params:.2f}")
    input_size = pretrained_cfg.get("input_size")
    text.append(
        f"- **Input:** {'x'.join(str(s) for s in input_size) if input_size else '?'}, "
        f"interpolation {pretrained_cfg.get('interpolation')}, crop_pct {pretrained_cfg.get('crop_pct')} "
        f"({pretrained_cfg.get('crop_mode', 'center')}), mean {list(pretrained_cfg.get('mean', []))}, "
        f"std {list(pretrained_cfg.get('std', []))}"
    )
    if dataset:
        text.append(f"- **Dataset:** {DATASET_NAMES.get(dataset, dataset)} (`{dataset}`), evaluated on split `{split}`")
    text.append("- **Paper:** [Generalized Sum Pooling for Metric Learning](https://arxiv.org/abs/2308.09228)")

    text += ["", "## Retrieval metrics", ""]
    if metrics:
        text.append(f"Evaluated on {DATASET_NAMES.get(dataset, dataset) if dataset else 'the held-out classes'}, split `{split}`.")
        text += ["", metrics_table(metrics)]
    else:
        text.append("No evaluation results were given.")

    text += ["", "## Training recipe", ""]
    public = {k: v for k, v in recipe.items() if k not in _PRIVATE_RUN_KEYS and v is not None}
    if public:
        text += ["| Argument | Value |", "|---|---|"]
        text += [f"| {_format_value(k)} | {_format_value(v)} |" for k, v in sorted(public.items())]
    else:
        text.append("Not recorded.")

    text += ["", "## How to use", "", "```python", "import timm", "import timm_gsp  # registers the GSP pool with timm",
             "", f'model = timm.create_model("hf-hub:{repo}", pretrained=True).eval()',
             "config = timm.data.resolve_data_config(model=model)",
             "transform = timm.data.create_transform(**config)",
             "embeddings = model(transform(image).unsqueeze(0))  # (1, embed_dim); image: a PIL RGB image",
             "```", "",
             "Or from the command line (`pip install timm-gsp`):", "", "```bash",
             f"timm-gsp embed gallery/ --model hf-hub:{repo} --output gallery.safetensors",
             "timm-gsp search query.jpg --index gallery.safetensors --top-k 5",
             f"timm-gsp show query.jpg --model hf-hub:{repo} --output heatmaps/",
             "```", "",
             "The weights are stored only as `model.safetensors` and the architecture as JSON (`config.json`): "
             "loading executes no code from this repository.",
             "", "## License", "", f"{license}", "", "## Citation", "", "```bibtex", CITATION, "```", "",
             "```bibtex", TIMM_CITATION, "```", ""]
    return "\n".join(text)


# --- saving -------------------------------------------------------------------------------------

def _check_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} exists and is not a folder")
    extra = sorted(p.name for p in folder.iterdir() if p.name not in PUBLISHED_FILES) if folder.exists() else []
    if extra:
        # The folder is what an upload sends: stray files would make it differ from the upload.
        raise FileExistsError(f"{folder} holds files that are not part of a published model: {extra}; use an empty folder")


def verify_folder(folder: PathLike) -> None:
    """Rebuild the architecture from the written config.json, as a user's ``local-dir:`` load will,
    and check that every saved tensor fits it (strictly: missing prototypes fail too); a config that
    cannot be reloaded fails here."""
    folder = Path(folder)
    try:
        rebuilt = timm.create_model(f"local-dir:{folder}", pretrained=False)
    except Exception as error:
        raise RuntimeError(f"the config.json written to {folder} does not rebuild the model: {type(error).__name__}: {error}") from error
    load_state_dict(rebuilt, read_state_dict(folder / WEIGHTS_NAME), source=str(folder / WEIGHTS_NAME))


def save_pretrained(
        model: nn.Module,
        folder: PathLike,
        results: Union[None, PathLike, Mapping[str, Any]] = None,
        *,
        data_config: Optional[Mapping[str, Any]] = None,
        repo_id: Optional[str] = None,
        dataset: Optional[str] = None,
        split: Optional[str] = None,
        license: str = "apache-2.0",
        verify: bool = True,
) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` for the Hub (or ``local-dir:``).

    Built on ``timm.models.save_for_hf`` with safetensors only: ``model_args`` records the
    architecture's reconstruction arguments (GSP pool string, embedding size, img_size, ...) and
    ``pretrained_cfg`` the input settings. Only ``model.state_dict()`` is saved, so loss
    parameters (proxies, ZSR class embeddings) and optimizer state never enter the weights.

    Args:
        model: a timm GSP retrieval model (``timm_gsp.create_model``).
        folder: created if missing; must hold no other files.
        results: the training run's results (see ``model_card``).
        data_config: preprocessing used for evaluation, in timm's vocabulary (``input_size``,
            ``crop_pct``, ``interpolation``, ``mean``, ``std``, ...); default:
            ``data_config_from_run(results)``, else the model's current config.
        repo_id, dataset, split, license: for the model card.
        verify: rebuild the model from the written config.json and check the weights fit it.

    Returns:
        the folder.
    """
    folder = Path(folder)
    _check_folder(folder)
    if any(isinstance(p, nn.UninitializedParameter) for p in model.parameters()):
        raise ValueError("the model has unsized (lazy) GSP prototypes: run one forward before saving")
    run = read_results(results)
    if data_config is None:
        data_config = data_config_from_run(run)
    summary = gsp_summary(model)
    save_for_hf(
        model,
        str(folder),
        # Informational (timm ignores unknown top-level keys): GSP settings in plain sight.
        model_config={"timm_gsp": {"version": _version(), **summary}, "pretrained_cfg": {"license": license}},
        safe_serialization=True,
        data_config=dict(data_config) if data_config else None,
    )
    with open(folder / CONFIG_NAME, encoding="utf-8") as f:
        config = json.load(f)
    card = model_card(model, run, repo_id=repo_id, dataset=dataset, split=split, license=license, config=config)
    (folder / CARD_NAME).write_text(card, encoding="utf-8")
    if verify:
        verify_folder(folder)
    return folder


def _version() -> str:
    from . import __version__
    return __version__


# --- the Hub ------------------------------------------------------------------------------------

def _network_errors() -> Tuple[type, ...]:
    """Transport-level exception types of whichever HTTP stack huggingface_hub uses."""
    errors: List[type] = [ConnectionError, TimeoutError]
    for module_name in ("httpx2", "httpx", "requests"):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        for attr in ("TransportError", "ConnectionError", "Timeout"):
            error = getattr(module, attr, None) or getattr(getattr(module, "exceptions", None), attr, None)
            if isinstance(error, type) and issubclass(error, BaseException):
                errors.append(error)
    return tuple(errors)


def _hub_api(token: Optional[str]):
    from huggingface_hub import HfApi, constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise HubUnavailableError("cannot upload: HF_HUB_OFFLINE is set (offline mode); unset it and check the network")
    token = token or get_token()
    if not token:
        raise HubUnavailableError(
            "uploading needs a Hugging Face token with write access: pass token=... / --token, "
            "set HF_TOKEN, or run `hf auth login`"
        )
    return HfApi(token=token, library_name="timm", library_version=timm.__version__)


def upload_folder(
        folder: PathLike,
        repo_id: str,
        *,
        token: Optional[str] = None,
        private: bool = False,
        revision: Optional[str] = None,
        create_pr: bool = False,
        commit_message: str = "Add GSP retrieval model",
) -> str:
    """Upload a ``save_pretrained`` folder's three files to ``repo_id`` (created if missing).

    A card written without a repo id gets it filled in (in the folder, too, so the folder stays
    identical to the upload). Returns the commit URL.

    Raises:
        FileNotFoundError: a published file is missing.
        HubUnavailableError: offline mode, no token, or the Hub cannot be reached.
    """
    folder = Path(folder)
    missing = [name for name in PUBLISHED_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a model folder to publish: missing {missing} (write it with save_pretrained / timm-gsp export)")
    api = _hub_api(token)
    card = (folder / CARD_NAME).read_text(encoding="utf-8")
    if REPO_PLACEHOLDER in card:
        (folder / CARD_NAME).write_text(card.replace(REPO_PLACEHOLDER, repo_id), encoding="utf-8")
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            allow_patterns=list(PUBLISHED_FILES),
            revision=revision,
            create_pr=create_pr,
            commit_message=commit_message,
        )
    except _network_errors() as error:
        raise HubUnavailableError(f"cannot reach the Hugging Face Hub to upload {repo_id}: {type(error).__name__}: {error}") from error
    return str(getattr(commit, "commit_url", commit))


def push_to_hub(
        model: nn.Module,
        repo_id: str,
        results: Union[None, PathLike, Mapping[str, Any]] = None,
        *,
        token: Optional[str] = None,
        private: bool = False,
        revision: Optional[str] = None,
        create_pr: bool = False,
        commit_message: str = "Add GSP retrieval model",
        **save_kwargs: Any,
) -> str:
    """``save_pretrained`` into a temporary folder, then ``upload_folder`` it: the upload is
    byte for byte what ``save_pretrained`` writes. Returns the commit URL.

    ``save_kwargs``: ``data_config``, ``dataset``, ``split``, ``license``, ``verify``.
    """
    _hub_api(token)  # fail on offline / no token before writing anything
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(model, Path(tmp) / "model", results, repo_id=repo_id, **save_kwargs)
        return upload_folder(folder, repo_id, token=token, private=private, revision=revision,
                             create_pr=create_pr, commit_message=commit_message)


# --- loading ------------------------------------------------------------------------------------

def read_state_dict(checkpoint: PathLike) -> Dict[str, torch.Tensor]:
    """The model state dict of a safetensors file, or of ``model.safetensors`` in a folder.

    Only safetensors is read (no pickle): other formats are refused.
    """
    path = Path(checkpoint)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: only safetensors checkpoints are loaded (pickle files can execute code)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return load_file(str(path), device="cpu")


def _describe_shape(key: str, shape: Tuple[int, ...]) -> str:
    if key.endswith("prototypes") and len(shape) == 2:
        return f"{tuple(shape)} ({shape[0]} prototypes of {shape[1]} channels)"
    return str(tuple(shape))


def load_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strictly load ``state_dict`` into ``model``, or raise ``CheckpointMismatchError`` naming
    every tensor whose shape differs (checkpoint and model shapes), missing or unexpected."""
    expected = model.state_dict()
    mismatched = [
        f"{key}: {_describe_shape(key, tuple(state_dict[key].shape))} in {source}, "
        f"{_describe_shape(key, tuple(value.shape))} in the model"
        for key, value in expected.items()
        if key in state_dict and tuple(state_dict[key].shape) != tuple(value.shape)
    ]
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    problems = mismatched + ([f"missing from {source}: {missing}"] if missing else []) + (
        [f"not in the model: {unexpected}"] if unexpected else [])
    if problems:
        raise CheckpointMismatchError(
            f"{source} does not fit {type(model).__name__} (check num_prototypes / embed_dim / the architecture):\n  "
            + "\n  ".join(problems)
        )
    model.load_state_dict(state_dict, strict=True)


def is_model_folder(path: PathLike) -> bool:
    """A folder whose config.json is timm's (names an architecture) next to model.safetensors."""
    path = Path(path)
    config = path / CONFIG_NAME
    if not (path.is_dir() and config.is_file() and (path / WEIGHTS_NAME).is_file()):
        return False
    try:
        with open(config, encoding="utf-8") as f:
            return "architecture" in json.load(f)
    except (OSError, ValueError):
        return False


def load_model(
        model: Optional[str] = None,
        checkpoint: Optional[PathLike] = None,
        **create_args: Any,
) -> nn.Module:
    """A GSP retrieval model from a name and/or a checkpoint, as the ``timm-gsp`` commands take them.

    Args:
        model: ``hf-hub:<repo>`` or ``local-dir:<folder>`` (published model, weights included),
            or a timm model name built by ``timm_gsp.create_model(model, **create_args)``.
            ``None``: ``checkpoint`` must be a folder with timm's ``config.json``.
        checkpoint: a ``model.safetensors`` file or a folder holding one (e.g. a training
            checkpoint folder); its weights are loaded strictly on top.
        create_args: ``embed_dim``, ``num_prototypes``, ``transport_ratio``, ``gamma``,
            ``img_size``, ... for a timm model name.

    Raises:
        CheckpointMismatchError: the checkpoint's prototypes / embedding do not fit the model.
    """
    if model is None:
        if checkpoint is None or not is_model_folder(checkpoint):
            raise ValueError(
                "give a model (hf-hub:<repo>, local-dir:<folder> or a timm name with its GSP arguments), "
                "or a checkpoint folder that holds timm's config.json"
            )
        model, checkpoint = f"local-dir:{checkpoint}", None
    if model.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        net = timm.create_model(model, pretrained=checkpoint is None)
    else:
        from .factory import create_model
        net = create_model(model, **create_args)
    if checkpoint is not None:
        load_state_dict(net, read_state_dict(checkpoint), source=str(checkpoint))
    return net.eval()


def find_results(path: PathLike, names: Iterable[str] = ("results.json",)) -> Optional[Path]:
    """``results.json`` in a checkpoint's folder or its parent (the training run's folder)."""
    path = Path(path)
    base = path if path.is_dir() else path.parent
    for folder in (base, base.parent):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None
