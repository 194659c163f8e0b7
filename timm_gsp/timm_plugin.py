"""Teach timm the ``"gsp"`` global pool. The only module of timm-gsp that touches timm internals.

``register()`` (run by ``import timm_gsp``, idempotent) patches, in place:

* ``SelectAdaptivePool2d`` -- the pool of ~60% of timm's models (ResNet, ConvNeXt, EfficientNet,
  MobileNetV3, RegNet, Swin (NHWC), ...). The heads that build it know the channel count
  (``create_classifier`` / ``ClassifierHead`` via ``_create_pool``, ``NormMlpClassifierHead``) and
  pass it through a context variable; a model that builds the pool itself gets a lazy pool that
  is sized by one dry forward right after ``timm.create_model`` (and ``reset_classifier``).
* ``ClNormMlpClassifierHead`` (Hiera, some MambaOut) and the token models ``VisionTransformer``
  (with its subclasses: DeiT, hybrids, ...), ``Eva`` and ``Beit``. For these the final norm is
  applied to every token before pooling, the placement of 'token' checkpoints, so that their
  pretrained weights load (pass ``fc_norm=True`` / ``use_fc_norm=True`` for 'avg' checkpoints).
* ``timm.create_model`` -- a clear error naming the model family where GSP cannot be attached.
* timm's pretrained loader -- a backbone checkpoint loads strictly except for the new prototypes.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Callable, Optional, Tuple

import torch
import torch.nn as nn

import timm
import timm.layers.classifier as timm_classifier
import timm.models as timm_models
import timm.models._builder as timm_builder
import timm.models._factory as timm_factory
from timm.layers import ClNormMlpClassifierHead, NormMlpClassifierHead, SelectAdaptivePool2d
from timm.models.beit import Beit
from timm.models._input import get_model_input_config
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer

from .pooling import GeneralizedSumPool, allow_missing_prototypes, gsp_modules
from .spec import is_gsp_spec, parse_gsp_spec

__all__ = ["register", "GSPUnsupportedModelError", "SUPPORTED_TIMM_VERSIONS", "model_input_size", "size_lazy_pools"]

SUPPORTED_TIMM_VERSIONS = ((1, 0, 31), (2, 0, 0))  # [low, high): model_args recording arrived in 1.0.31
_PATCHED_FLAG = "_timm_gsp_patched"
# Channel count of the pool being built, set by the heads that know it.
_pool_in_chs: contextvars.ContextVar[Optional[int]] = contextvars.ContextVar("timm_gsp_pool_in_chs", default=None)


class GSPUnsupportedModelError(ValueError):
    """The model family does not build its pooling in a way GSP can hook into via ``global_pool``."""


def _timm_version() -> tuple:
    parts = []
    for piece in timm.__version__.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _check_timm_version() -> None:
    low, high = SUPPORTED_TIMM_VERSIONS
    if not low <= _timm_version() < high:
        raise ImportError(
            f"timm-gsp supports timm >= {'.'.join(map(str, low))}, < {'.'.join(map(str, high))}; "
            f"found timm {timm.__version__}"
        )


def _patch(owner: Any, name: str, make: Callable[[Callable], Callable]) -> None:
    """Replace ``owner.name`` by ``make(original)`` once."""
    original = getattr(owner, name)
    if getattr(original, _PATCHED_FLAG, False):
        return
    patched = functools.wraps(original)(make(original))
    setattr(patched, _PATCHED_FLAG, True)
    setattr(owner, name, patched)


@contextlib.contextmanager
def _with_in_chs(in_chs: Optional[int]):
    token = _pool_in_chs.set(in_chs)
    try:
        yield
    finally:
        _pool_in_chs.reset(token)


def _new_pool(spec: str, in_chs: Optional[int], **layout) -> GeneralizedSumPool:
    return GeneralizedSumPool(in_chs, **parse_gsp_spec(spec), **layout)


# --- group a: SelectAdaptivePool2d and the heads that build it --------------------------------

def _select_adaptive_pool_init(original):
    def __init__(self, output_size=1, pool_type="fast", flatten=False, input_fmt="NCHW"):
        if not is_gsp_spec(pool_type):
            return original(self, output_size, pool_type, flatten, input_fmt)
        if output_size not in (1, (1, 1)):
            raise ValueError(f"GSP pools to a single vector; output_size={output_size} is not supported")
        nn.Module.__init__(self)
        self.pool_type = pool_type
        self.pool = _new_pool(pool_type, _pool_in_chs.get(), input_fmt=input_fmt, flatten=flatten)
        self.flatten = nn.Identity()
    return __init__


def _create_pool(original):
    def _create_pool(num_features, *args, **kwargs):
        with _with_in_chs(num_features):
            return original(num_features, *args, **kwargs)
    return _create_pool


def _head_init(original):
    def __init__(self, in_features, *args, **kwargs):
        with _with_in_chs(in_features):
            original(self, in_features, *args, **kwargs)
    return __init__


def _norm_mlp_head_reset(original):
    def reset(self, num_classes, pool_type=None, *args, **kwargs):
        in_features = kwargs.get("in_features") or self.in_features
        with _with_in_chs(in_features):
            original(self, num_classes, pool_type, *args, **kwargs)
    return reset


# --- ClNormMlpClassifierHead: pools inline on NHWC / NLC ------------------------------------

def _cl_head_init(original):
    def __init__(self, in_features, num_classes, hidden_size=None, pool_type="avg", *args, **kwargs):
        spec = pool_type if is_gsp_spec(pool_type) else None
        original(self, in_features, num_classes, hidden_size, "avg" if spec else pool_type, *args, **kwargs)
        self.gsp_pool = None
        if spec:
            _set_cl_head_gsp(self, spec)
    return __init__


def _set_cl_head_gsp(head, spec: str) -> None:
    head.pool_type = spec
    input_fmt = "NLC" if head.pool_dim == 1 else "NHWC"
    head.gsp_pool = _new_pool(spec, head.in_features, input_fmt=input_fmt)


def _cl_head_reset(original):
    def reset(self, num_classes, pool_type=None, *args, **kwargs):
        spec = pool_type if is_gsp_spec(pool_type) else None
        original(self, num_classes, "avg" if spec else pool_type, *args, **kwargs)
        if spec:
            _set_cl_head_gsp(self, spec)
        elif pool_type is not None:
            self.gsp_pool = None
    return reset


def _cl_head_global_pool(original):
    def _global_pool(self, x):
        if getattr(self, "gsp_pool", None) is not None:
            return self.gsp_pool(x)
        return original(self, x)
    return _global_pool


# --- token models: VisionTransformer (and subclasses), Eva, Beit ------------------------------

def _token_model_init(original):
    def __init__(self, *args, **kwargs):
        spec = kwargs.get("global_pool")
        if not is_gsp_spec(spec):
            original(self, *args, **kwargs)
            self.gsp_pool = None
            return
        parse_gsp_spec(spec)  # fail on a bad spec before building the backbone
        # '' builds no pool and puts the final norm before pooling, which is what we want.
        original(self, *args, **dict(kwargs, global_pool=""))
        _set_token_gsp(self, spec)
    return __init__


def _set_token_gsp(model, spec: str) -> None:
    model.global_pool = spec
    model.gsp_pool = _new_pool(spec, model.num_features, input_fmt="NLC", num_prefix_tokens=model.num_prefix_tokens)


def _token_model_reset_classifier(original):
    def reset_classifier(self, num_classes, global_pool=None):
        spec = global_pool if is_gsp_spec(global_pool) else None
        original(self, num_classes, "" if spec else global_pool)
        if spec:
            _set_token_gsp(self, spec)
        elif global_pool is not None:
            self.gsp_pool = None
    return reset_classifier


def _token_model_pool(original):
    def pool(self, x, pool_type=None):
        if pool_type is None and getattr(self, "gsp_pool", None) is not None:
            return self.gsp_pool(x)
        return original(self, x, pool_type)
    return pool


def _beit_forward_head(original):
    def forward_head(self, x, pre_logits: bool = False):
        if getattr(self, "gsp_pool", None) is None:
            return original(self, x, pre_logits)
        x = self.fc_norm(self.gsp_pool(x))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)
    return forward_head


# --- create_model, reset_classifier and pretrained loading ------------------------------------

def _family(model_name: str) -> str:
    try:
        arch = timm_models.parse_model_name(model_name)[1]
        entry = timm_models.model_entrypoint(arch)
        return f"{entry.__module__.rsplit('.', 1)[-1]} ({arch})"
    except Exception:  # an unknown or hub name: let timm's own error speak
        return model_name


def _unsupported(model_name: str, detail: str) -> GSPUnsupportedModelError:
    return GSPUnsupportedModelError(
        f"GSP cannot be attached through global_pool to model family {_family(model_name)}: {detail}. "
        f"Use timm_gsp.create_model({model_name!r}, ...), which rebuilds the head of any timm model "
        f"on its forward_features output."
    )


def model_input_size(model: nn.Module) -> Tuple[int, int, int]:
    """(C, H, W) the model is built for, honouring ``img_size`` given at creation."""
    # timm falls back to pretrained_cfg, then (3, 224, 224), for models it did not build
    return tuple(get_model_input_config(model)["input_size"])


def size_lazy_pools(model: nn.Module) -> None:
    """Create the prototypes of pools built without a channel count, by one dry forward.

    Only models that build their pool themselves (MobileNetV3, GhostNet, EfficientViT, ...) get
    here; their pool's input width is not always ``num_features``, so it is measured.
    """
    if not any(pool.is_lazy() for _, pool in gsp_modules(model)):
        return
    reference = next((p for p in model.parameters() if not isinstance(p, nn.UninitializedParameter)), None)
    if reference is None or reference.device.type == "meta":
        return  # sized at the first real forward
    input_size = model_input_size(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=reference.device, dtype=reference.dtype))
    finally:
        model.train(was_training)


def _reset_classifier(original):
    def reset_classifier(self, *args, **kwargs):
        original(self, *args, **kwargs)
        size_lazy_pools(self)
    return reset_classifier


def _create_model(original):
    def create_model(model_name, *args, **kwargs):
        spec = kwargs.get("global_pool")
        if not is_gsp_spec(spec) or kwargs.get("features_only"):
            return original(model_name, *args, **kwargs)  # feature extractors drop the head
        parse_gsp_spec(spec)
        try:
            model = original(model_name, *args, **kwargs)
        except (AssertionError, TypeError, ValueError, KeyError) as error:
            raise _unsupported(model_name, f"{type(error).__name__}: {error}") from error
        if not gsp_modules(model):
            raise _unsupported(model_name, f"{type(model).__name__} ignores global_pool={spec!r}")
        size_lazy_pools(model)
        _patch(type(model), "reset_classifier", _reset_classifier)
        return model
    return create_model


def _load_pretrained(original):
    def load_pretrained(model, *args, **kwargs):
        size_lazy_pools(model)
        # ImageNet checkpoints hold the backbone; GSP prototypes are new parameters.
        with allow_missing_prototypes():
            return original(model, *args, **kwargs)
    return load_pretrained


def register() -> None:
    """Install the hooks (idempotent)."""
    _check_timm_version()
    _patch(SelectAdaptivePool2d, "__init__", _select_adaptive_pool_init)
    _patch(timm_classifier, "_create_pool", _create_pool)
    _patch(NormMlpClassifierHead, "__init__", _head_init)
    _patch(NormMlpClassifierHead, "reset", _norm_mlp_head_reset)
    _patch(ClNormMlpClassifierHead, "__init__", _cl_head_init)
    _patch(ClNormMlpClassifierHead, "reset", _cl_head_reset)
    _patch(ClNormMlpClassifierHead, "_global_pool", _cl_head_global_pool)
    for token_model in (VisionTransformer, Eva, Beit):
        _patch(token_model, "__init__", _token_model_init)
        _patch(token_model, "reset_classifier", _token_model_reset_classifier)
    for pooled_model in (VisionTransformer, Eva):
        _patch(pooled_model, "pool", _token_model_pool)
    _patch(Beit, "forward_head", _beit_forward_head)
    _patch(timm_builder, "load_pretrained", _load_pretrained)
    original_create = timm_factory.create_model
    _patch(timm_factory, "create_model", _create_model)
    for namespace in (timm, timm_models):
        if getattr(namespace, "create_model", None) is original_create:
            namespace.create_model = timm_factory.create_model
