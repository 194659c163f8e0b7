"""Rebuild the head of any timm model as GSP + embedding layer, for retrieval.

Two routes, one result (a timm model whose ``forward`` gives ``(B, embed_dim)`` embeddings):

* native: families whose pooling timm builds through ``global_pool`` (see ``timm_plugin``) get
  ``global_pool="gsp:..."`` and their classifier, sized ``embed_dim``, becomes the embedding layer;
  ``pretrained_cfg``, feature info and hub export stay timm's own.
* wrapped: any other family (XCiT, LeViT, MLP-Mixer, ...) is wrapped by ``GSPRetrievalNet``,
  a registered timm architecture (``gsp_retrieval``) that pools the backbone's
  ``forward_features`` output, so it saves and loads through timm's hub helpers too.

Baseline pools (``layers.pool_spec.BASELINE_POOLS``) take the same two routes: timm's own types (``avg``, ``max``,
``avgmax``, ``catavgmax``) go native where the family's head builds them, else wrapped (a token model's
``catavgmax``); ``gem`` is not a timm pool, so GeM models are always wrapped. ``embed_dim=0`` keeps
no embedding layer: the pooled vector is the embedding.

``pretrained_path`` gives the backbone's pretrained weights as a file (machines without network): timm
loads it itself (``pretrained_cfg_overlay=dict(file=...)``), so its published weights and a file are
adapted alike; a file that is missing, unreadable or of another architecture is a ``ConfigError``.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import pickle
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Union

import torch
import torch.nn as nn

import timm
from safetensors import SafetensorError
from timm.models import build_model_with_cfg, generate_default_cfgs, load_state_dict, register_model

from ..errors import ConfigError, GSPUnsupportedModelError
from ..layers.baseline_pools import create_baseline_pool, pooled_width
from ..layers.gsp_pool import GeneralizedSumPool, capture_transport, gsp_modules
from ..layers.pool_spec import BASELINE_POOLS, GSP_DEFAULTS, is_gsp_spec, parse_gsp_spec, pool_spec
from ..timm_plugin import HUB_PREFIXES, LOCAL_DIR_PREFIX, model_input_size, pretrained_mismatches, size_lazy_pools
from ..utils import PathLike, dry_forward, eval_mode

__all__ = ["create_model", "convert", "GSPRetrievalNet", "init_prototypes_kcenter"]

_WRAPPED_ONLY_POOLS = ("gem",)  # not timm pool types: no family's head builds them
_CHECKED_POOLS = ("avgmax", "catavgmax")  # timm types some heads take but do not build (checked after the build)
_PRETRAINED_FILE = "pass a timm checkpoint file (.safetensors, or a torch .pth/.pt/.bin state dict)"
_SHOWN_MISMATCHES = 3  # a file of another architecture differs in hundreds of keys: the first few say it


def _pools_natively(model: nn.Module, pool: str, img_size: Any = None, in_chans: Optional[int] = None) -> bool:
    """Whether a natively built ``model`` really applies the timm pool ``pool``: a head may take a pool
    name it does not build, or build it before a layer that does not fit its width (a ConvNeXt head's
    norm after ``catavgmax``); GSP and ``avg`` / ``max`` are trusted as timm builds them."""
    if pool not in _CHECKED_POOLS:
        return True
    named = getattr(model, "global_pool", None) == pool or any(getattr(m, "pool_type", None) == pool for m in model.modules())
    if not named:
        return False
    try:
        dry_forward(model, model_input_size(model, img_size, in_chans))
    except RuntimeError:
        return False
    return True


def _fresh_embedding(model: nn.Module) -> None:
    # Some timm heads start at zero (head_init_scale); an all-zero embedding cannot rank anything.
    classifier = model.get_classifier()
    if isinstance(classifier, nn.Linear):
        classifier.reset_parameters()


def _check_embed_dim(embed_dim: int) -> None:
    if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 0:
        raise ConfigError(f"embed_dim must be an integer >= 0, got {embed_dim!r}")


def _read_pretrained_file(path: Path) -> Dict[str, torch.Tensor]:
    """The state dict in a pretrained-weights file, read by timm's own reader (the one its pretrained
    loading uses: safetensors by extension, else a torch file, under a ``state_dict`` / ``model`` key
    if there is one). A missing or unreadable file is a ``ConfigError`` naming it, and nothing else is
    said: torch's warnings while reading a file that is refused (a plain pickle's "Detected pickle
    protocol 4 ... weights_only Unpickler might not support ...") are dropped, that one line says it;
    the warnings of a file that loads are passed on, that one left out (it loaded)."""
    if not path.is_file():
        raise ConfigError(f"{path}: {'a folder, not a file' if path.is_dir() else 'no such file'}; {_PRETRAINED_FILE}")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        try:
            state_dict = load_state_dict(str(path))
        except (SafetensorError, pickle.UnpicklingError, EOFError, RuntimeError, OSError) as error:  # bad bytes, no access
            # the reader's first sentence: torch's goes on with advice for trusted pickles, not for this file
            detail = str(error).splitlines()[0].split(". ")[0] if str(error) else "empty or truncated"
            raise ConfigError(f"{path}: not a readable checkpoint ({type(error).__name__}: {detail}); {_PRETRAINED_FILE}") from None
    if not state_dict or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ConfigError(f"{path}: holds no state dict of tensors; {_PRETRAINED_FILE}")
    for warning in said:
        if not str(warning.message).startswith("Detected pickle protocol"):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return state_dict


def _check_fit(model: nn.Module, state_dict: Dict[str, torch.Tensor], path: Path, model_name: str,
               shapes: bool = True) -> None:
    """A ``ConfigError`` naming the first mismatches (``timm_plugin.pretrained_mismatches``) when the
    file does not fit the model."""
    mismatches = pretrained_mismatches(model, state_dict, shapes=shapes)
    if mismatches:
        more = len(mismatches) - _SHOWN_MISMATCHES
        raise ConfigError(f"{path} does not fit {model_name}: {'; '.join(mismatches[:_SHOWN_MISMATCHES])}"
                          f"{f' (and {more} more)' if more > 0 else ''}; the file must be a timm checkpoint of the "
                          f"{model_name} architecture")


@contextlib.contextmanager
def _quiet_timm() -> Iterator[None]:
    """timm's warnings muted: after loading a file, timm logs the keys it could not place (a screen of
    names), which ``_check_fit`` reports as one line instead; and torch's remark on a plain pickle's
    protocol, about a file ``_read_pretrained_file`` has already read."""
    logger = logging.getLogger("timm")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            yield
    finally:
        logger.setLevel(level)


def _create_timm_model(model_name: str, pretrained: bool, pretrained_path: Optional[PathLike], **kwargs: Any) -> nn.Module:
    """``timm.create_model``; with ``pretrained_path``, the pretrained weights come from that file, loaded
    by timm itself (``pretrained_cfg_overlay=dict(file=...)``), so timm adapts them as it adapts its
    published weights (classifier dropped for another ``num_classes``, first conv for other ``in_chans``).
    The file is checked against the model: timm loads non-strictly once it has dropped the classifier,
    and would take a checkpoint of another architecture without a word when no tensor shapes collide."""
    if pretrained_path is None:
        return timm.create_model(model_name, pretrained=pretrained, **kwargs)
    if model_name.startswith((*HUB_PREFIXES, LOCAL_DIR_PREFIX)):
        raise ConfigError(f"{pretrained_path}: the model {model_name} names published weights, which timm would load "
                          f"instead of the file; pass a timm architecture name (e.g. resnet50)")
    path = Path(pretrained_path).expanduser()
    state_dict = _read_pretrained_file(path)
    overlay = {**(kwargs.pop("pretrained_cfg_overlay", None) or {}), "file": str(path)}
    try:
        with _quiet_timm():
            model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except RuntimeError:  # torch's load refused a key or a shape: name them, on a model built without weights
        _check_fit(timm.create_model(model_name, pretrained=False, **kwargs), state_dict, path, model_name)
        raise  # the file fits: the failure is not about it
    _check_fit(model, state_dict, path, model_name, shapes=False)
    return model


def create_model(
        model_name: str,
        pretrained: bool = False,
        embed_dim: int = 512,
        pool: str = "gsp",
        num_prototypes: int = GSP_DEFAULTS["num_prototypes"],
        transport_ratio: float = GSP_DEFAULTS["transport_ratio"],
        gamma: float = GSP_DEFAULTS["gamma"],
        pretrained_path: Optional[PathLike] = None,
        **kwargs: Any,
) -> nn.Module:
    """A timm model with GSP (or another pool, for baselines) and an embedding layer.

    Args:
        model_name: any timm model name.
        pretrained: load the backbone's pretrained weights (the head is new).
        embed_dim: output size; 0 returns the pooled features (B, num_features).
        pool: 'gsp', a full 'gsp:...' spec, or a baseline pool (``layers.pool_spec.BASELINE_POOLS``: 'avg', 'max',
            'avgmax', 'catavgmax', 'gem').
        num_prototypes, transport_ratio, gamma: GSP hyper-parameters (when ``pool='gsp'``).
        pretrained_path: the backbone's pretrained weights from this timm checkpoint file (safetensors, or
            a torch file holding a state dict) instead of timm's download; implies ``pretrained``. timm
            loads it as it loads its own weights (classifier dropped, first conv adapted, ...). The
            path is an input of this build only: no description or saved config records it.
        **kwargs: passed to ``timm.create_model`` (drop_path_rate, img_size, output_stride, ...).

    Returns:
        model with ``forward(images (B, 3, H, W)) -> (B, embed_dim)``.

    Raises:
        ConfigError: ``pretrained_path`` is missing, a folder, unreadable, or does not fit the
            architecture (the message names the first mismatching keys and shapes). One type for
            every problem with the file, a missing one included.
    """
    _check_embed_dim(embed_dim)
    global_pool = pool_spec(pool, num_prototypes, transport_ratio, gamma)

    def wrapped() -> GSPRetrievalNet:
        backbone = _create_timm_model(model_name, pretrained, pretrained_path, num_classes=0, **kwargs)
        return GSPRetrievalNet(backbone, embed_dim, global_pool, backbone_args=kwargs)

    if global_pool in _WRAPPED_ONLY_POOLS:
        return wrapped()
    try:
        model = _create_timm_model(model_name, pretrained, pretrained_path, num_classes=embed_dim,
                                   global_pool=global_pool, **kwargs)
    except GSPUnsupportedModelError:
        return wrapped()
    except AssertionError:
        if is_gsp_spec(global_pool):
            raise
        return wrapped()  # the family's head refuses this baseline pool (timm asserts on pool names)
    if not _pools_natively(model, global_pool, kwargs.get("img_size"), kwargs.get("in_chans")):
        return wrapped()
    _fresh_embedding(model)
    return model


def convert(
        model: nn.Module,
        embed_dim: int = 512,
        pool: str = "gsp",
        num_prototypes: int = GSP_DEFAULTS["num_prototypes"],
        transport_ratio: float = GSP_DEFAULTS["transport_ratio"],
        gamma: float = GSP_DEFAULTS["gamma"],
        *,
        inplace: bool = False,
        img_size: Any = None,
) -> nn.Module:
    """A retrieval model (pool + embedding head) made from an already built timm model, e.g. one with
    pretrained weights; the backbone keeps its weights, the head is new.

    One rule for both routes: with ``inplace=False`` (default) ``model`` is left untouched and a
    converted copy is returned; with ``inplace=True`` ``model`` itself is changed (its head rebuilt,
    or, for families that need the wrapper, its classifier removed and the model returned inside a
    ``GSPRetrievalNet``). A model that already has a GSP pool is refused: its trained prototypes and
    head would be replaced.

    Args:
        img_size: the input size the model was built for, when it differs from its pretrained_cfg
            (needed to size pools by one dry forward).
    """
    _check_embed_dim(embed_dim)
    global_pool = pool_spec(pool, num_prototypes, transport_ratio, gamma)
    if not hasattr(model, "reset_classifier") or not hasattr(model, "forward_features"):
        raise TypeError(f"convert expects a timm model, got {type(model).__name__}")
    if gsp_modules(model) or isinstance(model, GSPRetrievalNet):
        raise ConfigError(
            f"{type(model).__name__} is already a retrieval model with a GSP or embedding head; converting it "
            "again would replace its trained prototypes and head. Use it as it is, or convert the original backbone"
        )
    if not inplace:
        model = copy.deepcopy(model)
    try:
        if global_pool in _WRAPPED_ONLY_POOLS:
            raise GSPUnsupportedModelError(f"{global_pool!r} is not a timm pool type")
        model.reset_classifier(embed_dim, global_pool)
        if is_gsp_spec(global_pool) and not gsp_modules(model):
            raise GSPUnsupportedModelError(f"{type(model).__name__}.reset_classifier ignores global_pool")
        if not _pools_natively(model, global_pool, img_size):
            raise GSPUnsupportedModelError(f"{type(model).__name__}'s head does not build {global_pool!r}")
    except (GSPUnsupportedModelError, AssertionError, TypeError, ValueError):
        # This family's head cannot take the pool: the wrapper pools forward_features instead.
        return GSPRetrievalNet(backbone=model, num_classes=embed_dim, global_pool=global_pool, img_size=img_size)
    size_lazy_pools(model, img_size)
    _fresh_embedding(model)
    return model


@torch.no_grad()
def init_prototypes_kcenter(model: nn.Module, images: Union[torch.Tensor, Iterable[torch.Tensor]], seed: Optional[int] = 0,
                            pooled: bool = False) -> None:
    """Greedy k-center initialisation of every GSP pool of ``model`` from images.

    Args:
        images: (B, 3, H, W), or an iterable of such batches.
        pooled: k-center over each image's mean local feature (B >= num_prototypes images), as the
            reference release initialises from a memory of pooled features after a short warm-up;
            else over all local features of the images (B * N >= num_prototypes).
    """
    pools = gsp_modules(model)
    if not pools:
        raise ConfigError(f"{type(model).__name__} has no GSP pool to initialise")
    batches = [images] if isinstance(images, torch.Tensor) else images
    features: Dict[str, List[torch.Tensor]] = {name: [] for name, _ in pools}
    with eval_mode(model), capture_transport(model, keep_features=True) as plans:
        for batch in batches:
            plans.clear()
            model(batch)
            last = {plan.module_name: plan.features for plan in plans}  # (B, M, C); a pool run twice: its last
            for name, cells in last.items():
                features[name].append(cells.mean(1) if pooled else cells.flatten(0, 1))
    for name, pool in pools:
        if not features[name]:
            raise RuntimeError(f"{type(model).__name__}'s forward did not run its GSP pool {name}")
        pool.init_prototypes_kcenter(torch.cat(features[name]), seed=seed)


def _feature_layout(features: Any, num_features: int) -> str:
    """The layout of a ``forward_features`` output: 'NCHW', 'NHWC' or 'NLC'."""
    if not isinstance(features, torch.Tensor):
        raise GSPUnsupportedModelError(
            f"forward_features returns a {type(features).__name__}, not one feature tensor GSP could pool"
        )
    if features.dim() == 4:
        if features.shape[1] == num_features:
            return "NCHW"
        if features.shape[-1] == num_features:
            return "NHWC"
    elif features.dim() == 3 and features.shape[-1] == num_features:
        return "NLC"
    raise GSPUnsupportedModelError(
        f"cannot place GSP on forward_features output of shape {tuple(features.shape)} "
        f"with num_features={num_features}"
    )


class GSPRetrievalNet(nn.Module):
    """Any timm backbone + GSP (or a baseline pool) on ``forward_features`` + embedding.

    ``forward_features``: (B, 3, H, W) -> the backbone's local features (NCHW / NHWC / NLC);
    ``forward_head``: -> (B, num_classes) embeddings (or (B, P) pooled with ``pre_logits=True``, P =
    ``pooled_width(global_pool, num_features)``); with ``num_classes=0`` the pooled vector is the output.
    ``reconstruction_args()`` are the ``model_args`` that rebuild it through timm (``gsp_retrieval``).
    """

    def __init__(
            self,
            backbone: Union[str, nn.Module],
            num_classes: int = 512,
            global_pool: str = "gsp",
            backbone_pretrained: bool = False,
            backbone_args: Optional[Dict[str, Any]] = None,
            in_chans: int = 3,
            img_size: Optional[Any] = None,
    ):
        super().__init__()
        backbone_args = {k: v for k, v in dict(backbone_args or {}).items() if k != "pretrained_cfg_overlay"}
        if isinstance(backbone, str):
            # timm passes these back when it rebuilds a saved model (they are in its model_args)
            if in_chans != 3:
                backbone_args["in_chans"] = in_chans
            if img_size is not None:
                backbone_args["img_size"] = img_size
            backbone = timm.create_model(backbone, pretrained=backbone_pretrained, num_classes=0, **backbone_args)
        else:
            backbone.reset_classifier(0)  # its classifier would be an unused parameter (DDP objects)
        self.backbone = backbone
        self.backbone_name = backbone.pretrained_cfg["architecture"]
        self.backbone_args = backbone_args
        self.num_features = backbone.num_features
        self.num_prefix_tokens = getattr(backbone, "num_prefix_tokens", 0)
        input_size = model_input_size(backbone, backbone_args.get("img_size", img_size), backbone_args.get("in_chans"))
        # Serve the backbone's input config at the size it is built for.
        self.pretrained_cfg = dict(getattr(backbone, "pretrained_cfg", {}), architecture="gsp_retrieval",
                                   input_size=input_size)
        features = dry_forward(backbone, input_size, backbone.forward_features)
        self.input_fmt = _feature_layout(features, self.num_features)
        self.global_pool = None
        self.reset_classifier(num_classes, pool_spec(global_pool))

    def reconstruction_args(self) -> Dict[str, Any]:
        """``timm.create_model("gsp_retrieval", **args)`` rebuilds this architecture."""
        return {"backbone": self.backbone_name, "backbone_args": dict(self.backbone_args),
                "num_classes": self.num_classes, "global_pool": self.global_pool}

    def _build_pool(self, pool_type: str) -> nn.Module:
        prefix = self.num_prefix_tokens if self.input_fmt == "NLC" else 0
        if is_gsp_spec(pool_type):
            return GeneralizedSumPool(self.num_features, **parse_gsp_spec(pool_type), input_fmt=self.input_fmt,
                                      num_prefix_tokens=prefix)
        if pool_type in BASELINE_POOLS:
            return create_baseline_pool(pool_type, self.input_fmt, prefix)
        raise ConfigError(f"GSPRetrievalNet supports GSP and {BASELINE_POOLS} pools, got {pool_type!r}")

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None and global_pool != self.global_pool:
            self.pool = self._build_pool(global_pool)
            self.global_pool = global_pool
        self.num_classes = self.embed_dim = num_classes
        width = pooled_width(self.global_pool, self.num_features)
        self.head = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# Input settings are the backbone's (GSPRetrievalNet copies them); this entry only names the arch.
default_cfgs = generate_default_cfgs({"gsp_retrieval": {"num_classes": 512}})


@register_model
def gsp_retrieval(pretrained: bool = False, **kwargs: Any) -> GSPRetrievalNet:
    """timm entry point of ``GSPRetrievalNet``, used to rebuild saved models (``hf-hub:``,
    ``local-dir:``) from their ``model_args``: ``backbone``, ``num_classes``, ``global_pool``, ..."""
    return build_model_with_cfg(GSPRetrievalNet, "gsp_retrieval", pretrained, **kwargs)
