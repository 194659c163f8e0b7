"""Teach timm the ``"gsp"`` global pool: the one module of timm-gsp that touches timm's private internals.

The rule, which ``tests/test_imports.py`` keeps: only this module wraps or patches timm (assigns to an
attribute of timm, of one of its modules or of one of its classes), imports from a private timm module
(``timm.models._hub``) or names a private timm attribute (one whose name starts with ``_``). Every other
module of timm-gsp uses timm's public API: it imports what ``timm``, ``timm.data``, ``timm.layers`` and
``timm.models`` export, calls it (``timm.create_model``, ``build_model_with_cfg``, ...), subclasses it,
registers architectures with ``register_model``, and reads the public attributes of timm models
(``pretrained_cfg``, ``num_features``, ``num_classes``, ``reset_classifier``, ...).

``register()`` (run by ``import timm_gsp``, idempotent) makes these changes, all at registration,
each a wrapper that forwards ``*args, **kwargs`` unchanged to timm's own function and only acts
when GSP is asked for, so a model that does not ask for GSP is built, run, scripted and traced
exactly as without the plugin:

=============================================  =========  ===================================================
timm attribute (public name)                   touch      why (timm releases: all of 1.0.15 - 1.0.31)
=============================================  =========  ===================================================
``timm.layers.SelectAdaptivePool2d.__init__``  wrapped    the pool class of ~60 % of timm's models (ResNet,
                                                          ConvNeXt, EfficientNet, Swin NHWC, ...) learns
                                                          ``"gsp"``: it builds ``GeneralizedSumPool``
``timm.models.VisionTransformer.__init__``,    wrapped    these classes assert on the pool name; with GSP
``.reset_classifier``; the same of                        they are built with ``global_pool=''`` (the tokens
``timm.models.Eva`` and ``timm.models.Beit``              reach the head unpooled) and GSP is put in the
                                                          ``head_drop`` slot, after the final norm
``timm.layers.ClNormMlpClassifierHead``        wrapped    same for Hiera / MambaOut heads: GSP goes in the
``.__init__``, ``.reset``                                 ``pre_logits`` slot, after the head's norm
``timm.create_model``,                         wrapped    sizes pools built without a channel count (one dry
``timm.models.create_model``                              forward), names the family when GSP cannot be
                                                          attached, refuses a published GSP model whose
                                                          config and weights disagree on the embedding size
``timm.models.register_notrace_module``        called     ``GeneralizedSumPool`` is an FX leaf, so timm's FX
                                                          feature extraction traces GSP models
``timm.models.save_for_hf``                    re-export  what ``hub.published`` saves with; before timm
(``timm.models._hub.save_for_hf`` < 1.0.20)               exported it (1.0.20) it is taken from its module
``timm.models.get_model_input_config``         read       a model's input size (timm >= 1.0.31; before, the
                                                          size given at creation or the pretrained_cfg's)
=============================================  =========  ===================================================

Written, only on the module that a wrapped ``__init__`` / ``reset`` builds and only when GSP is asked
for: a ``SelectAdaptivePool2d``'s ``pool``, ``pool_type`` and ``flatten``, a token model's ``head_drop``
(and the load-state-dict pre-hook that maps its final norm, below), a ``ClNormMlpClassifierHead``'s
``pre_logits``. Read, never written: the model attributes ``norm``, ``fc_norm``,
``num_prefix_tokens``, ``num_features``, ``pretrained_cfg``, ``num_classes``, ``dynamic_img_size`` and
``patch_embed.grid_size`` (token models: the patch grid GSP's ``border`` needs), on heads
``in_features``, ``input_fmt``/``pool_dim``, and ``timm.__version__``. The ``global_pool`` argument is
recorded by timm's own factory (timm >= 1.0.20 writes it to ``model_args``); ``hub.published`` passes
the full reconstruction arguments to ``save_for_hf`` explicitly, so older releases save the same config.

Token models put their final norm where GSP needs it, on every token before pooling: checkpoints
that store it as ``fc_norm`` (Eva, BEiT, ViT 'avg' variants) and those that store it as ``norm``
('token' ViTs) both load strictly, the norm mapped to whichever of the two the model holds.

``pretrained_mismatches`` says how a checkpoint file does not fit a model by the rules of timm's
pretrained loading (its classifier dropped for another ``num_classes``): timm loads a file
non-strictly once it has dropped the classifier, so a checkpoint of another architecture whose
tensor shapes never collide would load without a word.
"""
from __future__ import annotations

import functools
import inspect
import itertools
import re
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch.nn as nn

import timm
import timm.models
from timm.layers import ClNormMlpClassifierHead, SelectAdaptivePool2d
from timm.models import Beit, Eva, VisionTransformer, register_notrace_module

try:
    from timm.models import save_for_hf
except ImportError:  # timm < 1.0.20 defines it without exporting it
    from timm.models._hub import save_for_hf

from .errors import CheckpointMismatchError, GSPUnsupportedModelError
from .layers.gsp_pool import GeneralizedSumPool, gsp_modules
from .layers.pool_spec import is_gsp_spec, parse_gsp_spec
from .utils import dry_forward

__all__ = ["register", "SUPPORTED_TIMM_VERSIONS", "HUB_PREFIXES", "LOCAL_DIR_PREFIX", "LOCAL_DIR_SINCE", "model_input_size",
           "pretrained_mismatches", "save_for_hf", "size_lazy_pools", "timm_version", "TOKEN_MODELS"]

# [low, high): the seam is tested on both ends (CI runs the plugin tests on the oldest and the newest).
SUPPORTED_TIMM_VERSIONS = ((1, 0, 15), (2, 0, 0))
TOKEN_MODELS = (VisionTransformer, Eva, Beit)
_WRAPPED = "__timm_gsp_wrapped__"  # marks our wrappers (idempotent registration); never `__wrapped__`,
# which TorchScript would follow to timm's source while resolving names in this module

# The model-name prefixes timm resolves to published models: the Hugging Face Hub, and a local folder
# in the Hub's layout (read by timm from LOCAL_DIR_SINCE on).
HUB_PREFIXES = ("hf-hub:", "hf_hub:")
LOCAL_DIR_PREFIX = "local-dir:"
LOCAL_DIR_SINCE = (1, 0, 16)


def timm_version(version: Optional[str] = None) -> Tuple[int, int, int]:
    """(major, minor, patch) of the installed timm, or of ``version``: "1.0.16.dev0" -> (1, 0, 16)."""
    parts = [int(n) for n in re.findall(r"\d+", timm.__version__ if version is None else version)[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def _check_timm_version() -> None:
    low, high = SUPPORTED_TIMM_VERSIONS
    if not low <= timm_version() < high:
        raise ImportError(
            f"timm-gsp supports timm >= {'.'.join(map(str, low))}, < {'.'.join(map(str, high))}; found timm "
            f"{timm.__version__}. Outside that range global_pool='gsp' is not registered: install a supported "
            f"timm (pip install 'timm>={'.'.join(map(str, low))},<{high[0]}')"
        )


def _wrap(owner: Any, name: str, make: Callable[[Callable], Callable]) -> None:
    """Replace ``owner.name`` by ``make(original)``, once."""
    original = getattr(owner, name)
    if getattr(original, _WRAPPED, False):
        return
    wrapper = make(original)
    # Name and docstring for help(); deliberately no ``__wrapped__`` (see _WRAPPED).
    functools.update_wrapper(wrapper, original, updated=())
    del wrapper.__wrapped__
    setattr(wrapper, _WRAPPED, True)
    setattr(owner, name, wrapper)


def _bind(original: Callable, *args: Any, **kwargs: Any) -> inspect.BoundArguments:
    """The call's arguments by name, defaults filled in, whatever timm release defines ``original``."""
    bound = inspect.signature(original).bind(*args, **kwargs)
    bound.apply_defaults()
    return bound


def _new_pool(spec: str, in_chs: Optional[int], **layout: Any) -> GeneralizedSumPool:
    return GeneralizedSumPool(in_chs, **parse_gsp_spec(spec), **layout)


def _init_with_gsp(pool_argument: str, attach: Callable[[nn.Module, str, Mapping[str, Any]], None]):
    """The ``__init__`` wrapper of a timm class whose ``pool_argument`` may name GSP: timm builds the
    module with ``""`` (no pool) there, then ``attach(module, spec, call arguments)`` puts GSP in.
    Calls that do not ask for GSP go to timm unchanged."""
    def wrap(original):
        def __init__(*args, **kwargs):
            bound = _bind(original, *args, **kwargs)
            spec = bound.arguments.get(pool_argument)
            if not is_gsp_spec(spec):
                return original(*args, **kwargs)
            parse_gsp_spec(spec)  # fail on a bad spec before building anything
            bound.arguments[pool_argument] = ""
            original(*bound.args, **bound.kwargs)
            attach(bound.arguments["self"], spec, bound.arguments)
        return __init__
    return wrap


# --- group a: SelectAdaptivePool2d -------------------------------------------------------------

def _attach_adaptive_gsp(pool: nn.Module, spec: str, arguments: Mapping[str, Any]) -> None:
    """GSP as the ``pool`` of a SelectAdaptivePool2d that timm built as its identity pool."""
    output_size = arguments["output_size"]
    if output_size not in (1, (1, 1)):
        raise ValueError(f"GSP pools to a single vector; output_size={output_size} is not supported")
    pool.pool_type = spec
    # The channel count is not passed to the pool: the prototypes are created lazily, by the
    # dry forward after timm.create_model, by a checkpoint that holds them, or at the first forward.
    pool.pool = _new_pool(spec, None, input_fmt=arguments["input_fmt"], flatten=arguments["flatten"])
    pool.flatten = nn.Identity()


# --- token models: VisionTransformer (and subclasses), Eva, Beit --------------------------------

def _gsp_head_drop(model: nn.Module) -> Optional[GeneralizedSumPool]:
    slot = getattr(model, "head_drop", None)
    return slot.pool if isinstance(slot, nn.Sequential) and isinstance(getattr(slot, "pool", None), GeneralizedSumPool) else None


def _patch_grid(model: nn.Module) -> Optional[Tuple[int, int]]:
    """The (h, w) grid of a token model's patch tokens, when fixed (not with ``dynamic_img_size``)."""
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None or getattr(model, "dynamic_img_size", False):
        return None
    return int(grid[0]), int(grid[1])


def _attach_token_gsp(model: nn.Module, spec: str, arguments: Optional[Mapping[str, Any]] = None) -> None:
    """GSP in the ``head_drop`` slot: forward_head then runs (no pool) -> fc_norm (per token) -> GSP -> dropout."""
    drop = model.head_drop
    if _gsp_head_drop(model) is not None:
        drop = model.head_drop.drop
    pool = _new_pool(spec, model.num_features, input_fmt="NLC", num_prefix_tokens=model.num_prefix_tokens,
                     grid_size=_patch_grid(model))
    model.head_drop = nn.Sequential(OrderedDict([("pool", pool), ("drop", drop)]))
    _register_norm_remap(model)


def _detach_token_gsp(model: nn.Module) -> None:
    if _gsp_head_drop(model) is not None:
        model.head_drop = model.head_drop.drop


def _token_model_reset_classifier(original):
    def reset_classifier(*args, **kwargs):
        bound = _bind(original, *args, **kwargs)
        self, spec = bound.arguments["self"], bound.arguments.get("global_pool")
        if is_gsp_spec(spec):
            parse_gsp_spec(spec)
            bound.arguments["global_pool"] = ""
            original(*bound.args, **bound.kwargs)
            _attach_token_gsp(self, spec)
            return
        original(*args, **kwargs)
        if spec is not None:  # another pool was asked for: GSP goes
            _detach_token_gsp(self)
    return reset_classifier


class _NormRemap:
    """Load-state-dict pre-hook of a GSP token model: its final norm is a per-token norm before GSP,
    held as ``norm`` (applied in ``forward_features``) or ``fc_norm`` (applied in the head); a
    checkpoint stores it under one of the two names, which may be the other one."""

    def __call__(self, module: nn.Module, state_dict: Dict[str, Any], prefix: str, *args: Any) -> None:
        if _gsp_head_drop(module) is None:
            return
        names = ("norm", "fc_norm")
        held = [n for n in names if any(True for _ in getattr(module, n).parameters())]
        stored = [n for n in names if any(k.startswith(f"{prefix}{n}.") for k in state_dict)]
        if len(held) == 1 and len(stored) == 1 and held != stored:
            source, target = f"{prefix}{stored[0]}.", f"{prefix}{held[0]}."
            for key in [k for k in state_dict if k.startswith(source)]:
                state_dict[target + key[len(source):]] = state_dict.pop(key)


def _register_norm_remap(model: nn.Module) -> None:
    if getattr(model, "_timm_gsp_norm_remap", False):
        return
    register = getattr(model, "register_load_state_dict_pre_hook", None)
    if register is not None:  # torch >= 2.5
        register(_NormRemap())
    else:
        model._register_load_state_dict_pre_hook(_NormRemap(), with_module=True)
    model._timm_gsp_norm_remap = True


def pretrained_mismatches(model: nn.Module, state_dict: Mapping[str, Any], shapes: bool = True) -> List[str]:
    """How a timm checkpoint's ``state_dict`` does not fit ``model`` as timm loads pretrained weights, one
    phrase per key (``conv1.weight: (64, 3, 7, 7) in the file, (32, 3, 3, 3) in the model``, ``missing
    bn1.weight``, ``unexpected head.weight``), the three kinds taken in turn (so the first few show each
    kind there is); empty when it fits.

    Not counted, as timm and torch do not count them: the classifier (``pretrained_cfg["classifier"]``)
    when timm drops it (the model's ``num_classes`` differs from the ``pretrained_cfg``'s), GSP pools'
    parameters (new in a backbone checkpoint) and batch-norm ``num_batches_tracked`` counters (torch
    fills them in). A GSP token model's final norm matches under either name (``_NormRemap``).
    ``shapes=False`` compares names only: after a load that succeeded, a shape that differs is one
    timm adapted (a first conv for other ``in_chans``, a resampled position embedding)."""
    stored, held = dict(state_dict), dict(model.state_dict())
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classifiers = cfg.get("classifier")
    if classifiers and getattr(model, "num_classes", None) != cfg.get("num_classes"):
        for name in (classifiers,) if isinstance(classifiers, str) else classifiers:
            for key in (f"{name}.weight", f"{name}.bias"):
                stored.pop(key, None)
                held.pop(key, None)
    new = {f"{name}.{key}" for name, pool in gsp_modules(model) for key in pool.state_dict()}
    _NormRemap()(model, stored, "")
    counter = "num_batches_tracked"
    missing = [f"missing {k}" for k in held if k not in stored and k not in new and not k.endswith(counter)]
    unexpected = [f"unexpected {k}" for k in stored if k not in held and not k.endswith(counter)]
    resized = [f"{k}: {tuple(stored[k].shape)} in the file, {tuple(held[k].shape)} in the model"
               for k in held if shapes and k in stored and k not in new and tuple(stored[k].shape) != tuple(held[k].shape)]
    return [phrase for group in itertools.zip_longest(resized, missing, unexpected) for phrase in group if phrase]


# --- ClNormMlpClassifierHead (Hiera, MambaOut, ...): pools inline on NHWC / NLC ----------------

def _attach_head_gsp(head: nn.Module, spec: str, arguments: Optional[Mapping[str, Any]] = None) -> None:
    """GSP first in ``pre_logits``: the head then runs (no pool) -> norm (per token) -> GSP -> MLP -> fc."""
    input_fmt = "NLC" if head.pool_dim == 1 else "NHWC"
    pool = _new_pool(spec, head.in_features, input_fmt=input_fmt)
    rest = _head_mlp(head)
    head.pre_logits = nn.Sequential(OrderedDict([("pool", pool), *rest.named_children()])) \
        if isinstance(rest, nn.Sequential) else nn.Sequential(OrderedDict([("pool", pool)]))


def _head_mlp(head: nn.Module) -> nn.Module:
    """The head's own pre_logits, without a GSP pool we put there."""
    slot = head.pre_logits
    if isinstance(slot, nn.Sequential) and isinstance(getattr(slot, "pool", None), GeneralizedSumPool):
        rest = [(name, child) for name, child in slot.named_children() if name != "pool"]
        return nn.Sequential(OrderedDict(rest)) if rest else nn.Identity()
    return slot


def _cl_head_reset(original):
    def reset(*args, **kwargs):
        bound = _bind(original, *args, **kwargs)
        self, spec = bound.arguments["self"], bound.arguments["pool_type"]
        if is_gsp_spec(spec):
            parse_gsp_spec(spec)
            bound.arguments["pool_type"] = ""
        had_gsp = _head_mlp(self) is not self.pre_logits
        if had_gsp and (spec is not None or bound.arguments.get("reset_other")):
            self.pre_logits = _head_mlp(self)  # timm's reset sees the head as it built it
        original(*bound.args, **bound.kwargs)
        if is_gsp_spec(spec):
            _attach_head_gsp(self, spec)
    return reset


# --- create_model --------------------------------------------------------------------------------

def model_input_size(model: nn.Module, img_size: Any = None, in_chans: Optional[int] = None) -> Tuple[int, int, int]:
    """(C, H, W) the model is built for: ``img_size`` / ``in_chans`` given at creation, else what timm
    knows of the model (``get_model_input_config`` from timm 1.0.31, else its ``pretrained_cfg``)."""
    get_input_config = getattr(timm.models, "get_model_input_config", None)
    if get_input_config is not None:
        channels, height, width = get_input_config(model)["input_size"]
    else:
        from timm.data import resolve_data_config
        channels, height, width = resolve_data_config(model=model)["input_size"]
    if img_size is not None:
        height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)[-2:]
    return (in_chans or channels, int(height), int(width))


def size_lazy_pools(model: nn.Module, img_size: Any = None, in_chans: Optional[int] = None) -> None:
    """Create the prototypes of GSP pools built without a channel count, by one dry forward.

    Pools reached through ``SelectAdaptivePool2d`` do not know their input width (which is not
    always ``num_features``: GhostNet, EfficientViT, ...), so it is measured.
    """
    if not any(pool.is_lazy() for _, pool in gsp_modules(model)):
        return
    reference = next((p for p in model.parameters() if not isinstance(p, nn.UninitializedParameter)), None)
    if reference is None or reference.device.type == "meta":
        return  # sized at the first real forward
    dry_forward(model, model_input_size(model, img_size, in_chans))


def _family(model_name: str) -> str:
    try:
        arch = timm.models.parse_model_name(model_name)[1]
        entry = timm.models.model_entrypoint(arch)
        return f"{entry.__module__.rsplit('.', 1)[-1]} ({arch})"
    except Exception:  # an unknown or hub name: the caller's own error speaks
        return model_name


def _unsupported(model_name: str, detail: str) -> GSPUnsupportedModelError:
    return GSPUnsupportedModelError(
        f"GSP cannot be attached through global_pool to model family {_family(model_name)}: {detail}. "
        f"Use timm_gsp.create_model({model_name!r}, ...), which rebuilds the head of any timm model "
        f"on its forward_features output."
    )


def _rejects_gsp(original: Callable, bound: inspect.BoundArguments) -> bool:
    """Whether a failed ``create_model`` call failed because the family's constructor refuses the GSP
    pool: building (never downloading) fails with it and succeeds without it."""
    arguments = {k: v for k, v in bound.arguments.items() if k != "kwargs"}
    arguments["pretrained"] = False
    kwargs = dict(bound.arguments.get("kwargs", {}))
    if bound.arguments.get("pretrained"):
        try:
            original(**arguments, **kwargs)
        except Exception:
            pass
        else:
            return False  # it builds: the failure came from loading the weights
    try:
        original(**arguments, **{k: v for k, v in kwargs.items() if k != "global_pool"})
    except Exception:
        return False  # it fails without GSP too: not about GSP
    return True


def _check_published_head(model: nn.Module, model_name: str, user_kwargs: Dict[str, Any], pretrained: bool) -> None:
    """A published GSP model whose config.json asks for another embedding size than its weights hold
    would get a random embedding layer from timm (it drops a classifier of the wrong size): refuse."""
    if not (pretrained and model_name.startswith((*HUB_PREFIXES, LOCAL_DIR_PREFIX))) or "num_classes" in user_kwargs:
        return
    stored = getattr(model, "pretrained_cfg", {}).get("num_classes")
    if gsp_modules(model) and stored is not None and stored != model.num_classes:
        raise CheckpointMismatchError(
            f"{model_name}: config.json builds {model.num_classes} outputs (model_args.num_classes) but its "
            f"weights are for {stored} (num_classes): the embedding layer would be random. Fix config.json, "
            f"or pass num_classes= explicitly to train a new head"
        )


def _create_model(original):
    def create_model(*args, **kwargs):
        bound = _bind(original, *args, **kwargs)
        model_name = bound.arguments["model_name"]
        user_kwargs = bound.arguments.get("kwargs", {})
        spec = user_kwargs.get("global_pool")
        if is_gsp_spec(spec):
            parse_gsp_spec(spec)  # a bad spec is the caller's ValueError, before anything is built
            try:
                model = original(*args, **kwargs)
            except Exception as error:
                if _rejects_gsp(original, bound):
                    raise _unsupported(model_name, f"{type(error).__name__}: {error}") from error
                raise  # not about GSP: timm's own error, unchanged
            if not user_kwargs.get("features_only") and not gsp_modules(model):
                raise _unsupported(model_name, f"{type(model).__name__} ignores global_pool={spec!r}")
        else:
            model = original(*args, **kwargs)
        if isinstance(model, nn.Module) and not user_kwargs.get("features_only"):
            size_lazy_pools(model, user_kwargs.get("img_size"), user_kwargs.get("in_chans"))
            _check_published_head(model, model_name, user_kwargs, bool(bound.arguments.get("pretrained")))
        return model
    return create_model


def register() -> None:
    """Install the wrappers listed in the module docstring (idempotent)."""
    _check_timm_version()
    _wrap(SelectAdaptivePool2d, "__init__", _init_with_gsp("pool_type", _attach_adaptive_gsp))
    for token_model in TOKEN_MODELS:
        _wrap(token_model, "__init__", _init_with_gsp("global_pool", _attach_token_gsp))
        _wrap(token_model, "reset_classifier", _token_model_reset_classifier)
    _wrap(ClNormMlpClassifierHead, "__init__", _init_with_gsp("pool_type", _attach_head_gsp))
    _wrap(ClNormMlpClassifierHead, "reset", _cl_head_reset)
    original_create_model = timm.models.create_model
    _wrap(timm.models, "create_model", _create_model)
    if timm.create_model is original_create_model:  # the same function, re-exported
        timm.create_model = timm.models.create_model
    register_notrace_module(GeneralizedSumPool)

