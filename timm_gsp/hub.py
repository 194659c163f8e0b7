"""Publish and reuse trained GSP retrieval models in timm's own Hugging Face Hub format.

A published model is a folder (or Hub repo) of three files, plus two optional pictures:

    model.safetensors   the model's ``state_dict()`` (no pickle; no loss or optimizer state)
    config.json         timm's config (``timm.models.save_for_hf``): ``architecture``, ``model_args``
                        (embedding size, the GSP pool string, img_size, ...), ``pretrained_cfg``
                        (the evaluation preprocessing: input size, mean, std, interpolation, crop)
                        and, under ``"timm_gsp"``, the model's ``RetrievalModelConfig``
    README.md           the model card: task, dataset and split, retrieval metrics, recipe, usage,
                        license and citation
    retrieval.png,      a retrieval sheet and the GSP weight maps of a few evaluation queries,
    gsp_weights.png     shown in the card (when the evaluation data was given)

so that, after ``import timm_gsp``, plain timm rebuilds the identical model::

    model = timm.create_model("hf-hub:user/repo", pretrained=True)      # or "local-dir:/path"

``load_model(source)`` is the one loader of the tools: a Hub repo, a published folder, a training
checkpoint folder (``model_config.json`` + ``model.safetensors``) or a training run's folder
(``results.json`` names the checkpoint its metrics belong to). Loading reads tensors (safetensors)
and JSON only: no code from a checkpoint is executed.
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

import timm

from .checkpoint import MODEL_CONFIG_FILE, read_model_config
from .errors import CheckpointMismatchError, ConfigError, HubUnavailableError, OutputExistsError
from .evaluate import SHEET_FILES
from .model_config import RetrievalModelConfig
from .pooling import gsp_modules
from .run_results import RunResults, read_results, write_json_atomic
from .spec import format_gsp_spec
from .timm_plugin import save_for_hf
from .utils import PathLike, eval_mode, give_plain_file_mode, read_json_object

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "DATA_CONFIG_KEYS",
    "PUBLISHED_FILES",
    "REPO_PLACEHOLDER",
    "WEIGHTS_NAME",
    "ModelFolder",
    "check_output_folder",
    "check_repo_id",
    "describe_model",
    "evaluation_data_config",
    "find_model",
    "gsp_summary",
    "load_model",
    "load_state_dict",
    "metrics_table",
    "model_card",
    "published_files",
    "push_to_hub",
    "read_state_dict",
    "save_pretrained",
    "timm_model_args",
    "upload_folder",
    "verify_folder",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
PUBLISHED_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)
_OPTIONAL_FILES = tuple(SHEET_FILES.values())
# Stands for the repo id in a card written before the repo is known; ``upload_folder`` fills it in.
REPO_PLACEHOLDER = "<namespace>/<model-name>"
# The evaluation preprocessing, in timm's data-config vocabulary.
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
_HUB_PREFIXES = ("hf-hub:", "hf_hub:")
# timm reads "local-dir:<folder>" from 1.0.16 on; older releases are given the config by hand.
_TIMM_HAS_LOCAL_DIR = tuple(int(n) for n in re.findall(r"\d+", timm.__version__)[:3]) >= (1, 0, 16)

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
# Recipe keys left out of a public card: local paths and switches that say nothing about the recipe.
_PRIVATE_RUN_KEYS = frozenset({"data_dir", "root", "output", "resume", "checkpoint", "workers", "no_progress"})


# --- what a model is ----------------------------------------------------------------------------

def gsp_summary(model: nn.Module) -> Dict[str, Any]:
    """The GSP pools of ``model`` for the card: ``{"embed_dim", "num_features", "pools": [{"name",
    "num_prototypes", "feature_dim", "transport_ratio", "gamma", "input_fmt"}]}``."""
    pools = [{"name": name, "num_prototypes": pool.num_prototypes, "feature_dim": pool.in_chs,
              "transport_ratio": pool.transport_ratio, "gamma": pool.gamma, "input_fmt": pool.input_fmt}
             for name, pool in gsp_modules(model)]
    return {"embed_dim": int(getattr(model, "num_classes", 0) or 0),
            "num_features": int(getattr(model, "num_features", 0) or 0), "pools": pools}


def describe_model(model: nn.Module) -> RetrievalModelConfig:
    """The description of a retrieval model made without one at hand: architecture, embedding
    size and pool as the model holds them. Construction arguments it cannot show (a ViT's
    ``img_size``, ``output_stride``, ...) are not in it: pass ``model_config`` to ``save_pretrained``
    for such models (its ``verify`` step catches a description that does not rebuild the model)."""
    from .factory import GSPRetrievalNet

    if isinstance(model, GSPRetrievalNet):
        return RetrievalModelConfig(model.backbone_name, model.num_classes, model.global_pool, model.backbone_args)
    pools = gsp_modules(model)
    if pools:
        pool = pools[-1][1]
        spec = format_gsp_spec(pool.num_prototypes, pool.transport_ratio, pool.gamma)
    else:
        spec = getattr(getattr(model, "global_pool", None), "pool_type", getattr(model, "global_pool", "avg"))
    return RetrievalModelConfig(model.pretrained_cfg["architecture"], int(model.num_classes), spec)


def timm_model_args(model: nn.Module, config: RetrievalModelConfig) -> Dict[str, Any]:
    """``model_args`` that make ``timm.create_model(architecture, **model_args)`` rebuild ``model``:
    the wrapper's own ``reconstruction_args()``, else the description's embedding size (as
    ``num_classes``), pool string (as ``global_pool``) and ``model_kwargs``."""
    from .factory import GSPRetrievalNet

    if isinstance(model, GSPRetrievalNet):
        return model.reconstruction_args()
    return {**config.model_kwargs, "num_classes": config.embed_dim, "global_pool": config.pool}


def evaluation_data_config(model: nn.Module, config: Optional[RetrievalModelConfig] = None,
                           **overrides: Any) -> Dict[str, Any]:
    """The complete evaluation preprocessing (``DATA_CONFIG_KEYS``) of a model: ``overrides`` (not
    None) merged into the description's ``data_config``, merged into the model's
    ``pretrained_cfg`` at the input size the description builds it for."""
    from .data.transforms import resolve_input_config
    from .timm_plugin import model_input_size

    base = resolve_input_config(model)
    kwargs = config.model_kwargs if config is not None else {}
    if kwargs.get("img_size") is not None or kwargs.get("in_chans") is not None:
        base["input_size"] = model_input_size(model, kwargs.get("img_size"), kwargs.get("in_chans"))
    given = {**(config.data_config if config is not None else {}), **{k: v for k, v in overrides.items() if v is not None}}
    unknown = sorted(set(given) - set(DATA_CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"data config keys {unknown} are not evaluation settings; expected {list(DATA_CONFIG_KEYS)}")
    merged = resolve_input_config({**base, **given})
    return json.loads(json.dumps({k: merged[k] for k in DATA_CONFIG_KEYS if k in merged}))


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


def metrics_table(metrics: Mapping[str, Optional[float]]) -> str:
    """Markdown table of retrieval metrics in percent, in the field's order and names
    (P@1, R@K, R-Precision, MAP@R; other keys as they are); undefined ones (None, NaN) as n/a."""
    def cell(value: Optional[float]) -> str:
        return "n/a" if value is None or value != value else f"{100 * float(value):.2f}"

    rows = [f"| {_metric_name(k)} | {cell(metrics[k])} |" for k in sorted(metrics, key=_metric_order)]
    return "\n".join(["| Metric | Value (%) |", "|---|---|", *rows])


def _yaml_str(value: Any) -> str:
    return json.dumps(str(value))  # a JSON string is a valid, safely quoted YAML scalar


def _front_matter(name: str, license: str, metrics: Mapping[str, float], dataset: Optional[str], split: str) -> str:
    lines = ["---", "library_name: timm", f"license: {license}", "pipeline_tag: image-feature-extraction", "tags:",
             *(f"- {tag}" for tag in ("image-feature-extraction", "image-retrieval", "metric-learning", "timm", "timm-gsp"))]
    if metrics and dataset:
        lines += ["model-index:", f"- name: {_yaml_str(name)}", "  results:", "  - task:",
                  "      type: image-feature-extraction", "      name: Image retrieval", "    dataset:",
                  f"      type: {_yaml_str(dataset)}", f"      name: {_yaml_str(DATASET_NAMES.get(dataset, dataset))}",
                  f"      split: {_yaml_str(split)}", "    metrics:"]
        for key in sorted(metrics, key=_metric_order):
            lines += [f"    - type: {key}", f"      name: {_yaml_str(_metric_name(key))}", f"      value: {metrics[key]!r}"]
    lines.append("---")
    return "\n".join(lines)


def _format_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 200 else text[:197] + "..."


def model_card(
        model: nn.Module,
        config: RetrievalModelConfig,
        results: Optional[RunResults] = None,
        *,
        repo_id: Optional[str] = None,
        dataset: Optional[str] = None,
        split: Optional[str] = None,
        license: str = "apache-2.0",
        sheets: Mapping[str, str] = (),
) -> str:
    """The ``README.md`` of a published GSP retrieval model.

    Args:
        model: the model being published (for its GSP pools and parameter count).
        config: its description, ``data_config`` complete (the published preprocessing).
        results: the run's results: metrics table and model-index, the recipe table; ``dataset``
            and ``split`` default to its ``dataset`` and ``eval_split`` (else ``"test"``).
        repo_id: the Hub repo; ``None`` writes ``REPO_PLACEHOLDER`` (filled in at upload).
        sheets: ``{"retrieval": file name, "weights": file name}`` of pictures in the folder.
    """
    results = results or RunResults()
    metrics = results.finite_metrics
    dataset = dataset or results.dataset
    split = split or results.eval_split or "test"
    repo = repo_id or REPO_PLACEHOLDER
    name = repo.split("/")[-1]
    summary = gsp_summary(model)
    data = config.data_config
    params = sum(p.numel() for p in model.parameters()) / 1e6
    gsp = bool(summary["pools"])

    text = [_front_matter(name, license, metrics, dataset, split), f"# {name}", ""]
    pooling = ("**Generalized Sum Pooling** (GSP, Gurbuz et al., ICCV 2023)" if gsp
               else f"`{config.pool}` pooling (a baseline without GSP)")
    text.append(
        f"An image-retrieval (deep metric learning) model: a timm `{config.model_name}` backbone with {pooling} and "
        f"a linear embedding layer. Its forward maps an image to an embedding of {summary['embed_dim']} dimensions; "
        "compare embeddings by cosine similarity. Published with `timm-gsp` in timm's own format: plain timm loads "
        "it after `import timm_gsp`."
    )
    text += ["", "## Model details", "",
             "- **Task:** image retrieval / metric learning (class-disjoint train and test classes)",
             f"- **Backbone:** `{config.model_name}`" + (f" ({_format_value(config.model_kwargs)})" if config.model_kwargs else ""),
             f"- **Pooling:** `{config.pool}`"]
    for pool in summary["pools"]:
        text.append(f"- **GSP** (`{pool['name']}`): {pool['num_prototypes']} prototypes of {pool['feature_dim']} "
                    f"channels, transport ratio {pool['transport_ratio']}, gamma {pool['gamma']}")
    text.append(f"- **Embedding size:** {summary['embed_dim']} (from {summary['num_features']} pooled features)")
    text.append(f"- **Parameters (M):** {params:.2f}")
    text.append(f"- **Input:** {'x'.join(str(s) for s in data.get('input_size', ['?']))}, interpolation "
                f"{data.get('interpolation')}, crop_pct {data.get('crop_pct')} ({data.get('crop_mode', 'center')}), "
                f"mean {data.get('mean')}, std {data.get('std')}")
    if dataset:
        text.append(f"- **Dataset:** {DATASET_NAMES.get(dataset, dataset)} (`{dataset}`), evaluated on split `{split}`")
    text.append("- **Paper:** [Generalized Sum Pooling for Metric Learning](https://arxiv.org/abs/2308.09228)")

    text += ["", "## Retrieval metrics", ""]
    if results.metrics:
        text.append(f"Evaluated on {DATASET_NAMES.get(dataset, dataset) if dataset else 'the held-out classes'}, split `{split}`.")
        text += ["", metrics_table(results.metrics)]
    else:
        text.append("No evaluation results were given.")
    if sheets:
        text += ["", "## Examples", ""]
        if "retrieval" in sheets:
            text += [f"Queries from split `{split}` (left) with their nearest neighbours by cosine similarity, best first; "
                     "green frames: same class, red: another class. The first rows are a fixed random sample, the "
                     "last ones the queries with the lowest average precision.", "",
                     f"![Retrieval examples]({sheets['retrieval']})", ""]
        if "weights" in sheets:
            text += ["The GSP pooling weights of the same queries: bright locations make up the embedding, dark "
                     "ones are left out.", "", f"![GSP pooling weights]({sheets['weights']})", ""]

    text += ["", "## Training recipe", ""]
    public = {k: v for k, v in results.recipe.items() if k not in _PRIVATE_RUN_KEYS and v is not None}
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
             "```", "", "Or from the command line (`pip install timm-gsp`):", "", "```bash",
             f"timm-gsp embed gallery/ --model hf-hub:{repo} --output gallery.safetensors",
             "timm-gsp search query.jpg --index gallery.safetensors --top-k 5 --save results.png",
             *([f"timm-gsp show query.jpg --model hf-hub:{repo} --output heatmaps/"] if gsp else []),
             "```", "",
             "The weights are stored only as `model.safetensors` and the architecture as JSON (`config.json`): "
             "loading executes no code from this repository.",
             "", "## License", "", f"{license}", "", "## Citation", "", "```bibtex", CITATION, "```", "",
             "```bibtex", TIMM_CITATION, "```", ""]
    return "\n".join(text)


# --- saving -------------------------------------------------------------------------------------

def check_output_folder(folder: PathLike) -> None:
    """Refuse a path that is a file, or a folder holding anything but a published model."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"{folder} exists and is not a folder: choose a folder to write the model into")
    allowed = set(PUBLISHED_FILES) | set(_OPTIONAL_FILES)
    extra = sorted(p.name for p in folder.iterdir() if p.name not in allowed) if folder.exists() else []
    if extra:
        # The folder is what an upload sends: stray files would make it differ from the upload.
        raise OutputExistsError(f"{folder} holds files that are not part of a published model: {extra}; use an empty folder")


def _as_results(results: Union[None, PathLike, Mapping[str, Any], RunResults]) -> Optional[RunResults]:
    if results is None or isinstance(results, RunResults):
        return results
    if isinstance(results, Mapping):
        return RunResults.from_dict(results)
    return read_results(results)


def _write_config(folder: Path, model_args: Mapping[str, Any], config: RetrievalModelConfig) -> None:
    """The one update of timm's config.json after ``save_for_hf``, for every timm >= 1.0.15:

    * ``model_args`` / ``global_pool``: the pool string. timm reads a model's current pool from its
      head, which a GSP token model leaves empty (GSP sits after the final norm), so timm would
      record ``''`` there (and refuses it as an export argument);
    * ``pretrained_cfg``: the evaluation preprocessing (``save_for_hf`` takes a data config only
      from timm 1.0.20 on); test-time sizes of the source checkpoint no longer apply;
    * ``timm_gsp``: the description, read back by ``load_model``.
    """
    path = folder / CONFIG_NAME
    written = json.loads(path.read_text(encoding="utf-8"))
    written["model_args"] = {**written.get("model_args", {}), **model_args}
    written["global_pool"] = model_args["global_pool"]
    pretrained_cfg = written.setdefault("pretrained_cfg", {})
    for key in ("test_input_size", "test_crop_pct", "test_pool_size"):
        pretrained_cfg.pop(key, None)
    pretrained_cfg.update(config.data_config)
    written["timm_gsp"] = config.to_dict()
    write_json_atomic(path, written)


def _as_splits(eval_dataset: Any) -> Dict[str, Any]:
    return dict(eval_dataset) if isinstance(eval_dataset, Mapping) else {"test": eval_dataset}


def save_pretrained(
        model: nn.Module,
        folder: PathLike,
        results: Union[None, PathLike, Mapping[str, Any], RunResults] = None,
        *,
        model_config: Optional[RetrievalModelConfig] = None,
        data_config: Optional[Mapping[str, Any]] = None,
        repo_id: Optional[str] = None,
        dataset: Optional[str] = None,
        split: Optional[str] = None,
        license: str = "apache-2.0",
        verify: bool = True,
        eval_dataset: Any = None,
        batch_size: int = 32,
        num_workers: int = 0,
) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` (and, with ``eval_dataset``,
    the two example pictures) for the Hub or ``local-dir:``.

    Built on ``timm.models.save_for_hf`` with safetensors only and ``model_args`` given explicitly
    (``timm_model_args``), so every supported timm writes the same config. Only
    ``model.state_dict()`` is saved: loss parameters and optimizer state never enter the weights.

    Args:
        model: a GSP retrieval model (``timm_gsp.create_model`` / ``RetrievalModelConfig.build``).
        folder: created if missing; may hold only a previously published model (replaced).
        results: the run's ``RunResults`` (or its ``results.json``, or its dict).
        model_config: the model's description; default ``results.model``, else ``describe_model``.
        data_config: evaluation preprocessing, merged into the description's (``DATA_CONFIG_KEYS``).
        repo_id, dataset, split, license: for the model card.
        verify: rebuild the model from the written folder, as a user's ``local-dir:`` load does,
            load the weights strictly and compare its embeddings with ``model``'s.
        eval_dataset: the evaluation data (``ds[i] -> (model input, label)``, or
            ``{"query": q, "gallery": g}``): the pictures are made from it.
        batch_size, num_workers: for embedding ``eval_dataset``.

    Returns:
        the folder.
    """
    folder = Path(folder)
    check_output_folder(folder)
    if any(isinstance(p, nn.UninitializedParameter) for p in model.parameters()):
        raise ConfigError("the model has unsized (lazy) GSP prototypes: run one forward before saving")
    results = _as_results(results)
    config = model_config or (results.model if results is not None else None) or describe_model(model)
    config = dataclasses.replace(config, data_config=evaluation_data_config(model, config, **dict(data_config or {})))
    model_args = timm_model_args(model, config)
    timm_checked = {k: v for k, v in model_args.items() if k != "global_pool"}  # see _write_config
    save_for_hf(model, str(folder), model_args=timm_checked, safe_serialization=True)
    give_plain_file_mode(folder / WEIGHTS_NAME)  # safetensors writes it private
    _write_config(folder, model_args, config)
    for name in _OPTIONAL_FILES:
        (folder / name).unlink(missing_ok=True)
    sheets = {}
    if eval_dataset is not None:
        sheets = {kind: path.name for kind, path in _write_eval_sheets(folder, model, _as_splits(eval_dataset), config,
                                                                      batch_size, num_workers).items()}
    card = model_card(model, config, results, repo_id=repo_id, dataset=dataset, split=split, license=license, sheets=sheets)
    (folder / CARD_NAME).write_text(card, encoding="utf-8")
    if verify:
        verify_folder(folder, model)
    return folder


def _write_eval_sheets(folder: Path, model: nn.Module, splits: Dict[str, Any], config: RetrievalModelConfig,
                       batch_size: int, num_workers: int) -> Dict[str, Path]:
    from .evaluate import embed_splits, write_sheets

    embedded = embed_splits(model, splits, batch_size=batch_size, num_workers=num_workers, progress=False)
    return write_sheets(folder, model, splits, embedded, mean=config.data_config["mean"], std=config.data_config["std"])


def _rebuild(folder: Path) -> nn.Module:
    """The architecture a published folder's config.json describes, as timm builds it for a
    user (``local-dir:``), without weights."""
    config = read_json_object(folder / CONFIG_NAME)
    if not isinstance(config.get("architecture"), str):
        raise ConfigError(f"{folder / CONFIG_NAME} is not a timm model config: it names no 'architecture'")
    try:
        if _TIMM_HAS_LOCAL_DIR:
            return timm.create_model(f"local-dir:{folder}", pretrained=False)
        return timm.create_model(config["architecture"], pretrained=False, pretrained_cfg=config.get("pretrained_cfg"),
                                 **config.get("model_args", {}))
    except (TypeError, ValueError, KeyError, RuntimeError) as error:
        if isinstance(error, CheckpointMismatchError):
            raise
        raise ConfigError(f"{folder / CONFIG_NAME} does not build a model: {type(error).__name__}: {error}") from error


@torch.no_grad()
def verify_folder(folder: PathLike, model: Optional[nn.Module] = None) -> nn.Module:
    """Rebuild the model from a published folder as a user's ``local-dir:`` load does and load every
    tensor strictly (missing prototypes fail too); with ``model``, also check that the rebuilt model
    embeds a random batch as ``model`` does (a description that builds another pool or input size
    fails here). Returns the rebuilt model."""
    folder = Path(folder)
    rebuilt = _rebuild(folder)
    load_state_dict(rebuilt, read_state_dict(folder / WEIGHTS_NAME), source=str(folder / WEIGHTS_NAME))
    if model is not None:
        reference = next(model.parameters())
        rebuilt = rebuilt.to(reference.device, reference.dtype)
        size = tuple(rebuilt.pretrained_cfg["input_size"])
        images = torch.randn(2, *size, generator=torch.Generator().manual_seed(0)).to(reference.device, reference.dtype)
        with eval_mode(model), eval_mode(rebuilt):
            expected, got = model(images), rebuilt(images)
        if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
            difference = (got - expected).abs().max().item() if got.shape == expected.shape else f"shape {tuple(got.shape)}"
            raise CheckpointMismatchError(
                f"{folder}: the written config.json rebuilds a model whose embeddings differ from the saved model's "
                f"({difference} vs {tuple(expected.shape)}): pass model_config=RetrievalModelConfig(...) describing the "
                "model (its pool and construction arguments such as img_size)")
    return rebuilt.eval()


# --- the Hub ------------------------------------------------------------------------------------

def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if huggingface_hub accepts it as ``<namespace>/<name>``, else a ``ConfigError``."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ConfigError(f"invalid repo id {repo_id!r}: {' '.join(str(error).split())}") from None
    if repo_id.count("/") != 1:
        raise ConfigError(f"invalid repo id {repo_id!r}: expected <user or organisation>/<model name>")
    return repo_id


def _network_errors() -> Tuple[type, ...]:
    """Transport-level and Hub HTTP exception types of whichever HTTP stack huggingface_hub uses."""
    from huggingface_hub.errors import HfHubHTTPError

    errors: List[type] = [ConnectionError, TimeoutError, HfHubHTTPError]
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
        raise HubUnavailableError("uploading needs a Hugging Face token with write access: pass token=... / --token, "
                                  "set HF_TOKEN, or run `hf auth login`")
    return HfApi(token=token, library_name="timm", library_version=timm.__version__)


def published_files(folder: PathLike) -> List[str]:
    """The files of a published model folder that an upload sends (``ConfigError`` if it is not one)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"no such model folder: {folder}")
    missing = [name for name in PUBLISHED_FILES if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"{folder} is not a model folder to publish: missing {missing} (write it with "
                          "`timm-gsp export` / save_pretrained)")
    return [*PUBLISHED_FILES, *(name for name in _OPTIONAL_FILES if (folder / name).is_file())]


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
    """Upload a published folder's files to ``repo_id`` (created if missing); returns the commit URL.

    ``folder`` is never changed: a copy is uploaded, its card's repo placeholder filled in.

    Raises:
        ConfigError: invalid repo id, or ``folder`` is not a published model folder.
        HubUnavailableError: offline mode, no token, or the Hub refused or could not be reached.
    """
    repo_id = check_repo_id(repo_id)
    folder = Path(folder)
    files = published_files(folder)
    api = _hub_api(token)
    with tempfile.TemporaryDirectory() as tmp:
        upload = Path(tmp)
        for name in files:
            shutil.copyfile(folder / name, upload / name)
        card = (upload / CARD_NAME).read_text(encoding="utf-8")
        (upload / CARD_NAME).write_text(card.replace(REPO_PLACEHOLDER, repo_id), encoding="utf-8")
        try:
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
            commit = api.upload_folder(repo_id=repo_id, folder_path=str(upload), allow_patterns=files,
                                       revision=revision, create_pr=create_pr, commit_message=commit_message)
        except _network_errors() as error:
            detail = " ".join(str(error).split())
            raise HubUnavailableError(f"uploading {folder} to {repo_id} failed: {type(error).__name__}: {detail}") from error
    return str(getattr(commit, "commit_url", commit))


def push_to_hub(
        model: nn.Module,
        repo_id: str,
        results: Union[None, PathLike, Mapping[str, Any], RunResults] = None,
        *,
        token: Optional[str] = None,
        private: bool = False,
        revision: Optional[str] = None,
        create_pr: bool = False,
        commit_message: str = "Add GSP retrieval model",
        **save_kwargs: Any,
) -> str:
    """``save_pretrained`` into a temporary folder, then ``upload_folder`` it: the upload is what
    ``save_pretrained`` writes. Returns the commit URL. ``save_kwargs``: as ``save_pretrained``."""
    check_repo_id(repo_id)
    _hub_api(token)  # fail on offline / no token before writing anything
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(model, Path(tmp) / "model", results, repo_id=repo_id, **save_kwargs)
        return upload_folder(folder, repo_id, token=token, private=private, revision=revision,
                             create_pr=create_pr, commit_message=commit_message)


# --- loading ------------------------------------------------------------------------------------

def read_state_dict(checkpoint: PathLike) -> Dict[str, torch.Tensor]:
    """The state dict of a safetensors file, or of ``model.safetensors`` in a folder (no pickle).

    Raises:
        ConfigError: the file is missing or not a ``.safetensors`` file.
        CheckpointMismatchError: it cannot be read (corrupt, truncated); the message names it.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(checkpoint)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if path.suffix != ".safetensors":
        raise ConfigError(f"{path}: only safetensors checkpoints are loaded (pickle files can execute code)")
    if not path.is_file():
        raise ConfigError(f"weights not found: {path}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointMismatchError(f"{path}: unreadable weights (corrupt or truncated safetensors file: {error})") from error


def _describe_shape(key: str, shape: Tuple[int, ...]) -> str:
    if key.endswith("prototypes") and len(shape) == 2:
        return f"{tuple(shape)} ({shape[0]} prototypes of {shape[1]} channels)"
    return str(tuple(shape))


def _short(keys: List[str]) -> str:
    return str(keys if len(keys) <= 8 else keys[:8] + [f"... {len(keys) - 8} more"])


def load_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strictly load ``state_dict`` into ``model``, or raise ``CheckpointMismatchError`` (one line)
    naming every tensor whose shape differs (checkpoint and model shapes), missing or unexpected."""
    expected = model.state_dict()
    mismatched = [f"{key}: {_describe_shape(key, tuple(state_dict[key].shape))} in {source}, "
                  f"{_describe_shape(key, tuple(value.shape))} in the model"
                  for key, value in expected.items()
                  if key in state_dict and tuple(state_dict[key].shape) != tuple(value.shape)]
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    problems = mismatched + ([f"missing from {source}: {_short(missing)}"] if missing else []) + (
        [f"not in the model: {_short(unexpected)}"] if unexpected else [])
    if problems:
        raise CheckpointMismatchError(f"{source} does not fit {type(model).__name__} (check num_prototypes / embed_dim / "
                                      f"the architecture): " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)


@dataclasses.dataclass(frozen=True)
class ModelFolder:
    """A trained model found on disk (or in the Hub cache), before it is built.

    Attributes:
        config: its description (for a published folder, ``data_config`` is its ``pretrained_cfg``'s).
        folder: the folder holding ``model.safetensors``.
        source: how to name it again from anywhere: ``hf-hub:<repo>`` or the absolute folder path.
        published: a folder in timm's format (rebuilt through timm), else a training checkpoint.
        results: the run's ``results.json`` whose metrics belong to these weights, if known.
    """

    config: RetrievalModelConfig
    folder: Path
    source: str
    published: bool
    results: Optional[Path] = None

    def build(self) -> nn.Module:
        """The model in eval mode, every tensor of the weights file loaded strictly."""
        weights = self.folder / WEIGHTS_NAME
        state = read_state_dict(weights)
        if self.published:
            model = _rebuild(self.folder)
        else:
            try:
                model = self.config.build()
            except (TypeError, ValueError, RuntimeError) as error:
                if isinstance(error, ConfigError):
                    raise
                raise ConfigError(f"{self.folder}: its model description does not build: {type(error).__name__}: {error}") from error
        load_state_dict(model, state, source=str(weights))
        return model.eval()


def _describe_published(folder: Path) -> RetrievalModelConfig:
    """The description in a published folder's config.json (written under "timm_gsp"; derived from
    timm's keys for a folder published without it), with its published preprocessing."""
    path = folder / CONFIG_NAME
    config = read_json_object(path)
    pretrained_cfg = config.get("pretrained_cfg") or {}
    data_config = {k: pretrained_cfg[k] for k in DATA_CONFIG_KEYS if pretrained_cfg.get(k) is not None}
    if isinstance(config.get("timm_gsp"), Mapping) and "model_name" in config["timm_gsp"]:
        description = RetrievalModelConfig.from_dict(config["timm_gsp"], f"{path} (timm_gsp)")
        return dataclasses.replace(description, data_config=data_config)
    args = dict(config.get("model_args") or {})
    if not isinstance(config.get("architecture"), str):
        raise ConfigError(f"{path} is not a timm model config: it names no 'architecture'")
    try:
        if config["architecture"] == "gsp_retrieval":
            return RetrievalModelConfig(args["backbone"], args.get("num_classes", 512), args.get("global_pool", "gsp"),
                                        args.get("backbone_args", {}), data_config)
        embed_dim = args.pop("num_classes", config.get("num_classes"))
        pool = args.pop("global_pool", config.get("global_pool", "avg"))
        if args.get("in_chans") == 3:  # timm records the default too
            del args["in_chans"]
        return RetrievalModelConfig(config["architecture"], embed_dim, pool, args, data_config)
    except (KeyError, ConfigError) as error:
        raise ConfigError(f"{path} does not describe a timm-gsp retrieval model: {error}") from None


def _download(repo: str) -> Path:
    """The snapshot folder of ``hf-hub:<repo>[@revision]`` (from the cache when offline)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    repo_id, _, revision = repo.partition("@")
    check_repo_id(repo_id)
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]))
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise ConfigError(f"hf-hub:{repo}: no such model repo or revision on the Hub ({type(error).__name__})") from None
    except LocalEntryNotFoundError:
        raise HubUnavailableError(f"hf-hub:{repo} is not in the local Hugging Face cache and the Hub cannot be reached "
                                  "(offline mode or no network)") from None
    except _network_errors() as error:
        raise HubUnavailableError(f"hf-hub:{repo}: cannot download from the Hub: {type(error).__name__}: {error}") from None


def find_model(source: Union[str, PathLike]) -> ModelFolder:
    """Where a model is and what it is, reading JSON only. ``source`` is one of

    * ``hf-hub:<repo>[@revision]``: a published model on the Hub (or in the local cache);
    * ``local-dir:<folder>`` or a folder with timm's ``config.json``: a published model;
    * a training checkpoint folder (``model_config.json`` + ``model.safetensors``);
    * a training run folder, or its ``results.json``: the checkpoint the results name.

    Raises:
        ConfigError: nothing there, or not one of these; the message names the path.
        HubUnavailableError: a Hub model that is not cached, offline.
    """
    text = str(source)
    if text.startswith(_HUB_PREFIXES):
        repo = text.split(":", 1)[1]
        folder = _download(repo)
        return ModelFolder(_describe_published(folder), folder, f"hf-hub:{repo}", True)
    path = Path(text[len("local-dir:"):] if text.startswith("local-dir:") else text).expanduser().resolve()
    if path.is_file() and path.name.endswith(".json"):
        path = path.parent
    if not path.exists():
        raise ConfigError(f"no such model: {path}")
    if (path / CONFIG_NAME).is_file():
        return ModelFolder(_describe_published(path), path, str(path), True)
    if (path / MODEL_CONFIG_FILE).is_file():
        return ModelFolder(read_model_config(path), path, str(path), False, _run_results_of(path))
    if (path / "results.json").is_file():
        results = read_results(path / "results.json")
        if not results.checkpoint:
            raise ConfigError(f"{path / 'results.json'} names no checkpoint folder")
        found = find_model(path / results.checkpoint)
        return dataclasses.replace(found, results=path / "results.json")
    raise ConfigError(f"{path} is not a model: expected a published folder ({CONFIG_NAME} + {WEIGHTS_NAME}), a training "
                      f"checkpoint ({MODEL_CONFIG_FILE} + {WEIGHTS_NAME}) or a training run folder (results.json)")


def _run_results_of(checkpoint: Path) -> Optional[Path]:
    """The run's results.json one folder up, when its metrics belong to this checkpoint."""
    path = checkpoint.parent / "results.json"
    if not path.is_file():
        return None
    try:
        named = read_results(path).checkpoint
    except ConfigError:
        return None
    return path if named and (checkpoint.parent / named).resolve() == checkpoint else None


def load_model(source: Union[str, PathLike]) -> nn.Module:
    """The model of ``source`` (see ``find_model``) in eval mode, every tensor of its weights loaded
    strictly into the architecture its description builds (a config that disagrees with the
    weights, e.g. another embedding size or number of prototypes, is refused naming both shapes)."""
    return find_model(source).build()
