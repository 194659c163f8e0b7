"""Published GSP retrieval models in timm's own Hugging Face Hub format: folder I/O and Hub transfer.

A published model is a folder (or Hub repo) of three files, plus two optional pictures:

    model.safetensors   the model's ``state_dict()`` (no pickle; no loss or optimizer state)
    config.json         timm's config (``timm.models.save_for_hf``): ``architecture``, ``model_args``,
                        ``pretrained_cfg`` (the evaluation preprocessing) and, under ``"timm_gsp"``, the
                        model's ``RetrievalModelConfig`` (all of it derived in ``model_config``)
    README.md           the model card (``model_card``)
    retrieval.png,      a retrieval sheet and the GSP weight maps of a few evaluation queries,
    gsp_weights.png     shown in the card (when the evaluation data was given)

so that, after ``import timm_gsp``, plain timm rebuilds the identical model::

    model = timm.create_model("hf-hub:user/repo", pretrained=True)      # or "local-dir:/path"

This module writes (``save_pretrained``), checks (``verify_folder``), loads (``read_state_dict``,
``load_state_dict``, ``build_published``), uploads (``upload_folder``, ``push_to_hub``: one commit of
the files the Hub does not hold already) and downloads (``download_snapshot``) such folders. Which
model a source names (``hf-hub:``, a folder, a training checkpoint or run) is ``model_sources``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

import timm

from .errors import CheckpointMismatchError, ConfigError, HubUnavailableError, OutputExistsError
from .model_card import fill_repo_id, model_card
from .model_config import RetrievalModelConfig, describe_model, evaluation_data_config, timm_model_args
from .run_results import RunResults, read_results, write_json_atomic
from .timm_plugin import LOCAL_DIR_PREFIX, LOCAL_DIR_SINCE, save_for_hf, timm_version
from .utils import PathLike, eval_mode, give_plain_file_mode, read_json_object

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "PUBLISHED_FILES",
    "WEIGHTS_NAME",
    "build_published",
    "check_output_folder",
    "check_repo_id",
    "download_snapshot",
    "load_state_dict",
    "published_files",
    "push_to_hub",
    "read_published_config",
    "read_state_dict",
    "save_pretrained",
    "upload_files",
    "upload_folder",
    "upload_operations",
    "verify_folder",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
PUBLISHED_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)
# timm reads "local-dir:<folder>" from LOCAL_DIR_SINCE on; older releases are given the config by hand.
_TIMM_HAS_LOCAL_DIR = timm_version() >= LOCAL_DIR_SINCE

# Names that lived here before issue 21 gave each idea its own module; forwarded, imported on first use.
_MOVED = {
    "ModelFolder": "model_sources", "find_model": "model_sources", "load_model": "model_sources",
    "DATA_CONFIG_KEYS": "model_config", "describe_model": "model_config", "evaluation_data_config": "model_config",
    "timm_model_args": "model_config",
    "DATASET_NAMES": "model_card", "REPO_PLACEHOLDER": "model_card", "metrics_table": "model_card",
    "model_card": "model_card",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f".{_MOVED[name]}", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _example_files() -> Tuple[str, ...]:
    from .evaluate import SHEET_FILES  # on first use: evaluate loads torchmetrics

    return tuple(SHEET_FILES.values())


# --- saving -------------------------------------------------------------------------------------

def check_output_folder(folder: PathLike) -> None:
    """Refuse a path that is a file, or a folder holding anything but a published model."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"{folder} exists and is not a folder: choose a folder to write the model into")
    allowed = set(PUBLISHED_FILES) | set(_example_files())
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
    (``model_config.timm_model_args``), so every supported timm writes the same config. Only
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
    # timm refuses the '' pool it reads from a GSP token model's head; config.timm_config writes the pool string
    timm_checked = {k: v for k, v in model_args.items() if k != "global_pool"}
    save_for_hf(model, str(folder), model_args=timm_checked, safe_serialization=True)
    give_plain_file_mode(folder / WEIGHTS_NAME)  # safetensors writes it private
    write_json_atomic(folder / CONFIG_NAME, config.timm_config(read_json_object(folder / CONFIG_NAME), model_args))
    for name in _example_files():
        (folder / name).unlink(missing_ok=True)
    sheets = {}
    if eval_dataset is not None:
        sheets = {kind: path.name for kind, path in _write_eval_sheets(folder, model, _as_splits(eval_dataset), config,
                                                                      batch_size, num_workers).items()}
    card = model_card(model, config, results, repo_id=repo_id, dataset=dataset, split=split, license=license, sheets=sheets)
    card.save(folder / CARD_NAME)
    if verify:
        verify_folder(folder, model)
    return folder


def _write_eval_sheets(folder: Path, model: nn.Module, splits: Dict[str, Any], config: RetrievalModelConfig,
                       batch_size: int, num_workers: int) -> Dict[str, Path]:
    from .evaluate import embed_splits, write_sheets

    embedded = embed_splits(model, splits, batch_size=batch_size, num_workers=num_workers, progress=False)
    return write_sheets(folder, model, splits, embedded, mean=config.data_config["mean"], std=config.data_config["std"])


# --- loading ------------------------------------------------------------------------------------

def read_published_config(folder: PathLike) -> RetrievalModelConfig:
    """The description of a published folder (its ``config.json``), with its published preprocessing."""
    path = Path(folder) / CONFIG_NAME
    return RetrievalModelConfig.from_timm_config(read_json_object(path), str(path))


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


def build_published(folder: PathLike) -> nn.Module:
    """The architecture a published folder's config.json describes, as timm builds it for a
    user (``local-dir:``), without weights."""
    folder = Path(folder)
    config = read_json_object(folder / CONFIG_NAME)
    if not isinstance(config.get("architecture"), str):
        raise ConfigError(f"{folder / CONFIG_NAME} is not a timm model config: it names no 'architecture'")
    try:
        if _TIMM_HAS_LOCAL_DIR:
            return timm.create_model(f"{LOCAL_DIR_PREFIX}{folder}", pretrained=False)
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
    rebuilt = build_published(folder)
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
    return [*PUBLISHED_FILES, *(name for name in _example_files() if (folder / name).is_file())]


def upload_files(folder: PathLike, repo_id: str) -> Dict[str, Union[bytes, Path]]:
    """What an upload of ``folder`` to ``repo_id`` sends: ``{path in repo: file}``, the card as bytes
    with the repo placeholder filled in (``folder`` itself is never changed)."""
    folder = Path(folder)
    files: Dict[str, Union[bytes, Path]] = {name: folder / name for name in published_files(folder)}
    files[CARD_NAME] = fill_repo_id((folder / CARD_NAME).read_text(encoding="utf-8"), repo_id).encode("utf-8")
    return files


def _size(content: Union[bytes, Path]) -> int:
    return len(content) if isinstance(content, bytes) else content.stat().st_size


def _sha256(content: Union[bytes, Path]) -> str:
    if isinstance(content, bytes):
        return hashlib.sha256(content).hexdigest()
    from huggingface_hub.utils.sha import sha_fileobj

    with open(content, "rb") as file:  # streamed: a weights file can be gigabytes
        return sha_fileobj(file).hex()


def _held_by(content: Union[bytes, Path], remote: Any) -> bool:
    """Whether the Hub's file ``remote`` (a ``RepoFile``) holds exactly ``content``: the sha256 the
    Hub reports for an LFS file, the git blob id of any other file."""
    from huggingface_hub.utils.sha import git_hash

    if remote is None:
        return False
    if remote.lfs is not None:
        return remote.lfs.size == _size(content) and remote.lfs.sha256 == _sha256(content)
    if remote.size != _size(content):
        return False
    return remote.blob_id == git_hash(content if isinstance(content, bytes) else content.read_bytes())


def upload_operations(files: Mapping[str, Union[bytes, Path]], remote: Iterable[Any]) -> List[Any]:
    """The ``CommitOperationAdd`` of each file in ``files`` (``{path in repo: bytes or file}``) that the
    repo's files ``remote`` (``RepoFile``s, as ``HfApi.get_paths_info`` lists them) do not hold with
    the same content; nothing for an unchanged file, nothing deleted."""
    from huggingface_hub import CommitOperationAdd

    held = {getattr(entry, "path", None): entry for entry in remote if hasattr(entry, "blob_id")}
    return [CommitOperationAdd(path_in_repo=name, path_or_fileobj=content if isinstance(content, bytes) else str(content))
            for name, content in files.items() if not _held_by(content, held.get(name))]


def _remote_files(api: Any, repo_id: str, paths: List[str], revision: Optional[str]) -> List[Any]:
    """The repo's files among ``paths`` at ``revision`` (none on a branch that does not exist yet)."""
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    try:
        return list(api.get_paths_info(repo_id, paths, revision=revision))
    except (EntryNotFoundError, RevisionNotFoundError):
        return []


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
    """Upload a published folder to ``repo_id`` (created if missing) as one commit of the files whose
    content the repo does not hold already (``upload_operations``); returns the commit URL, or the
    repo's URL when it holds every file already (no commit is made).

    ``folder`` is never changed: the card's repo placeholder is filled in the bytes sent.

    Raises:
        ConfigError: invalid repo id, or ``folder`` is not a published model folder.
        HubUnavailableError: offline mode, no token, or the Hub refused or could not be reached.
    """
    repo_id = check_repo_id(repo_id)
    files = upload_files(folder, repo_id)
    api = _hub_api(token)
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        operations = upload_operations(files, _remote_files(api, repo_id, list(files), revision))
        if not operations:
            return f"{api.endpoint}/{repo_id}" + (f"/tree/{revision}" if revision else "")
        commit = api.create_commit(repo_id=repo_id, operations=operations, commit_message=commit_message,
                                   revision=revision, create_pr=create_pr)
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
        upload_kwargs: Optional[Mapping[str, Any]] = None,
        **save_kwargs: Any,
) -> str:
    """``save_pretrained`` into a temporary folder, then ``upload_folder`` it: the upload is what
    ``save_pretrained`` writes. Returns the commit URL. ``upload_kwargs``: ``upload_folder``'s options
    (``private``, ``revision``, ``create_pr``, ``commit_message``); ``save_kwargs``: as ``save_pretrained``."""
    check_repo_id(repo_id)
    _hub_api(token)  # fail on offline / no token before writing anything
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(model, Path(tmp) / "model", results, repo_id=repo_id, **save_kwargs)
        return upload_folder(folder, repo_id, token=token, **dict(upload_kwargs or {}))


def download_snapshot(repo: str) -> Path:
    """The folder of the published files of ``<repo>[@revision]`` on the Hub (from the cache when offline).

    Raises:
        ConfigError: invalid repo id, or no such repo or revision on the Hub.
        HubUnavailableError: not in the local cache and the Hub cannot be reached.
    """
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
