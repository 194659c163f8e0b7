"""Moving a published folder (``hub.published``) to and from the Hugging Face Hub.

``upload_folder`` sends one commit of the files whose content the Hub does not hold already
(``upload_operations``), with the model card's repo placeholder filled in; ``push_to_hub`` is
``save_pretrained`` into a temporary folder, then that upload. ``download_snapshot`` fetches the files
a model needs (from the local cache when offline). Every failure to reach the Hub is one
``HubUnavailableError``; a repo id that cannot exist is a ``ConfigError``.
"""
from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch.nn as nn

import timm

from ..errors import ConfigError, HubUnavailableError
from ..train.run_results import RunResults
from ..utils import PathLike
from .model_card import fill_repo_id
from .published import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, published_files, save_pretrained

__all__ = ["check_repo_id", "download_snapshot", "push_to_hub", "upload_files", "upload_folder", "upload_operations"]


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
