"""The model card (``README.md``) of a published GSP retrieval model: the one place that writes it.

Built with huggingface_hub's own ``ModelCard`` / ``ModelCardData`` / ``EvalResult``, so the front
matter is the Hub's schema (``library_name``, ``license``, ``pipeline_tag``, ``tags``, ``model-index``
with one ``EvalResult`` per retrieval metric, which the Hub renders as the model's evaluation results)
and parses back with ``ModelCard.load``. The body says what the model is (from its
``RetrievalModelConfig`` and its pools), how it was trained (the run's ``TrainingSetup``) and measured (its
``RunResults``) and how to use it.

A card written before the repo is known names it ``REPO_PLACEHOLDER``; ``fill_repo_id`` puts the
repo in at upload.
"""
from __future__ import annotations

import json
import re
from typing import Any, List, Mapping, Optional, Tuple

import torch.nn as nn

from ..layers.baseline_pools import pooled_width
from ..layers.gsp_pool import gsp_modules
from ..layers.pool_spec import parse_gsp_spec
from ..models.model_config import RetrievalModelConfig
from ..train.run_results import RunResults, TrainingSetup

__all__ = ["DATASET_NAMES", "REPO_PLACEHOLDER", "fill_repo_id", "metrics_table", "model_card"]

# Stand for the repo id (and its name) in a card written before the repo is known.
REPO_PLACEHOLDER = "<namespace>/<model-name>"
_NAME_PLACEHOLDER = REPO_PLACEHOLDER.split("/")[1]

TAGS = ("image-feature-extraction", "image-retrieval", "metric-learning", "timm", "timm-gsp")
PIPELINE_TAG = "image-feature-extraction"

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
# What a baseline pool does, for people.
_BASELINE_NAMES = {"avg": "average", "max": "max", "avgmax": "average + max (their mean)",
                   "catavgmax": "average and max (concatenated)", "gem": "generalized-mean (GeM)"}


# --- metrics ------------------------------------------------------------------------------------

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


def _card_data(name: str, license: str, metrics: Mapping[str, float], dataset: Optional[str], split: str):
    """The front matter: the Hub's metadata, and a model-index entry per metric when they were measured."""
    from huggingface_hub import EvalResult, ModelCardData

    results = [EvalResult(task_type=PIPELINE_TAG, task_name="Image retrieval", dataset_type=dataset,
                          dataset_name=DATASET_NAMES.get(dataset, dataset), dataset_split=split, metric_type=key,
                          metric_name=_metric_name(key), metric_value=metrics[key])
               for key in sorted(metrics, key=_metric_order)] if dataset else []
    return ModelCardData(library_name="timm", license=license, pipeline_tag=PIPELINE_TAG, tags=list(TAGS),
                         model_name=name, eval_results=results or None)


# --- the body -----------------------------------------------------------------------------------

def _public_value(value: Any) -> Any:
    """A setting as a public card shows it: an absolute path of the machine that trained (a recipe file
    ``/home/me/my.yaml``) by its last name only; the rest as it is."""
    if isinstance(value, str) and (value.startswith("/") or re.match(r"[A-Za-z]:[\\/]", value)):
        return re.split(r"[\\/]+", value.rstrip("\\/"))[-1]
    if isinstance(value, Mapping):
        return {k: _public_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_public_value(v) for v in value]
    return value


def _format_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 200 else text[:197] + "..."


def _setup_rows(setup: TrainingSetup) -> List[Tuple[str, Any]]:
    """(setting, value) rows of the recipe table, in ``TrainingSetup``'s order: each recorded field, a
    mapping (learning rates per group, augmentation, evaluation transform) one row per item."""
    rows: List[Tuple[str, Any]] = []
    for name, value in setup.to_dict().items():
        if isinstance(value, Mapping):
            rows += [(f"{name}.{key}", item) for key, item in value.items() if item is not None]
        elif value is not None:
            rows.append((name, value))
    return rows


def _pooling(config: RetrievalModelConfig) -> str:
    if config.gsp is not None:
        return "**Generalized Sum Pooling** (GSP, Gurbuz et al., ICCV 2023)"
    return f"{_BASELINE_NAMES.get(config.pool, config.pool)} pooling (`{config.pool}`, a baseline without GSP)"


def _details(model: nn.Module, config: RetrievalModelConfig, dataset: Optional[str], split: str) -> List[str]:
    num_features = int(getattr(model, "num_features", 0) or 0)
    pooled = pooled_width(config.pool, num_features)
    data = config.data_config
    params = sum(p.numel() for p in model.parameters()) / 1e6
    lines = ["- **Task:** image retrieval / metric learning (class-disjoint train and test classes)",
             f"- **Backbone:** `{config.model_name}`" + (f" ({_format_value(config.model_kwargs)})" if config.model_kwargs else ""),
             f"- **Pooling:** `{config.pool}`"]
    for name, pool in gsp_modules(model):
        settings = {k: v for k, v in parse_gsp_spec(pool.spec).items() if k != "num_prototypes"}
        lines.append(f"- **GSP** (`{name}`): {pool.num_prototypes} prototypes of {pool.in_chs} channels, "
                     + ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in settings.items()))
    if config.embed_dim:
        lines.append(f"- **Embedding size:** {config.embed_dim} (a linear layer on {pooled} pooled features)")
    else:
        lines.append(f"- **Embedding size:** {pooled} (the pooled features; no embedding layer)")
    lines.append(f"- **Parameters (M):** {params:.2f}")
    lines.append(f"- **Input:** {'x'.join(str(s) for s in data.get('input_size', ['?']))}, interpolation "
                 f"{data.get('interpolation')}, crop_pct {data.get('crop_pct')} ({data.get('crop_mode', 'center')}), "
                 f"mean {data.get('mean')}, std {data.get('std')}")
    if dataset:
        lines.append(f"- **Dataset:** {DATASET_NAMES.get(dataset, dataset)} (`{dataset}`), evaluated on split `{split}`")
    lines.append("- **Paper:** [Generalized Sum Pooling for Metric Learning](https://arxiv.org/abs/2308.09228)")
    return lines


def _examples(sheets: Mapping[str, str], split: str) -> List[str]:
    lines = ["", "## Examples", ""]
    if "retrieval" in sheets:
        lines += [f"Queries from split `{split}` (left) with their nearest neighbours by cosine similarity, best first; "
                  "green frames: same class, red: another class. The first rows are a fixed random sample, the "
                  "last ones the queries with the lowest average precision.", "",
                  f"![Retrieval examples]({sheets['retrieval']})", ""]
    if "weights" in sheets:
        lines += ["The GSP pooling weights of the same queries: bright locations make up the embedding, dark "
                  "ones are left out.", "", f"![GSP pooling weights]({sheets['weights']})", ""]
    return lines


def _usage(repo: str, gsp: bool, license: str) -> List[str]:
    return ["", "## How to use", "", "```python", "import timm", "import timm_gsp  # registers the GSP pool with timm",
            "", f'model = timm.create_model("hf-hub:{repo}", pretrained=True).eval()',
            "config = timm.data.resolve_data_config(model=model)",
            "transform = timm.data.create_transform(**config)",
            "embeddings = model(transform(image).unsqueeze(0))  # (1, embedding size); image: a PIL RGB image",
            "```", "", "Or from the command line (`pip install timm-gsp`):", "", "```bash",
            f"timm-gsp embed gallery/ --model hf-hub:{repo} --output gallery.safetensors",
            "timm-gsp search query.jpg --index gallery.safetensors --top-k 5 --save results.png",
            *([f"timm-gsp show query.jpg --model hf-hub:{repo} --output heatmaps/"] if gsp else []),
            "```", "",
            "The weights are stored only as `model.safetensors` and the architecture as JSON (`config.json`): "
            "loading executes no code from this repository.",
            "", "## License", "", f"{license}", "", "## Citation", "", "```bibtex", CITATION, "```", "",
            "```bibtex", TIMM_CITATION, "```", ""]


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
):
    """The ``huggingface_hub.ModelCard`` of a published GSP retrieval model (``card.save(path)``).

    Args:
        model: the model being published (for its GSP pools, feature width and parameter count).
        config: its description, ``data_config`` complete (the published preprocessing).
        results: the run's results: metrics table and model-index, the recipe table (its ``setup``); ``dataset``
            and ``split`` default to its ``dataset`` and ``eval_split`` (else ``"test"``).
        repo_id: the Hub repo; ``None`` writes ``REPO_PLACEHOLDER`` (``fill_repo_id`` at upload).
        sheets: ``{"retrieval": file name, "weights": file name}`` of pictures in the folder.
    """
    from huggingface_hub import ModelCard

    results = results or RunResults()
    dataset = dataset or results.dataset
    split = split or results.eval_split or "test"
    repo = repo_id or REPO_PLACEHOLDER
    name = repo.split("/")[-1]
    embedding = ("a linear embedding layer" if config.embed_dim
                 else "no embedding layer (the pooled features are the embedding)")

    text = [f"# {name}", "",
            f"An image-retrieval (deep metric learning) model: a timm `{config.model_name}` backbone with "
            f"{_pooling(config)} and {embedding}. Its forward maps an image to one embedding vector; compare "
            "embeddings by cosine similarity. Published with `timm-gsp` in timm's own format: plain timm loads "
            "it after `import timm_gsp`.",
            "", "## Model details", "", *_details(model, config, dataset, split), "", "## Retrieval metrics", ""]
    if results.metrics:
        text.append(f"Evaluated on {DATASET_NAMES.get(dataset, dataset) if dataset else 'the held-out classes'}, split `{split}`.")
        text += ["", metrics_table(results.metrics)]
    else:
        text.append("No evaluation results were given.")
    if sheets:
        text += _examples(sheets, split)
    text += ["", "## Training recipe", ""]
    rows = _setup_rows(results.setup) if results.setup is not None else []
    if rows:
        text += ["| Setting | Value |", "|---|---|"]
        text += [f"| {_format_value(name)} | {_format_value(_public_value(value))} |" for name, value in rows]
    else:
        text.append("Not recorded.")
    text += _usage(repo, config.gsp is not None, license)
    data = _card_data(name, license, results.finite_metrics, dataset, split)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n" + "\n".join(text))


def fill_repo_id(card_text: str, repo_id: str) -> str:
    """A card written with ``REPO_PLACEHOLDER``, naming ``repo_id`` instead (its name in the title and model-index)."""
    return card_text.replace(REPO_PLACEHOLDER, repo_id).replace(_NAME_PLACEHOLDER, repo_id.split("/")[-1])
