"""Rebuild the head of any timm model as GSP + embedding layer, for retrieval.

Two routes, one result (a timm model whose ``forward`` gives ``(B, embed_dim)`` embeddings):

* native: families whose pooling timm builds through ``global_pool`` (see ``timm_plugin``) get
  ``global_pool="gsp:..."`` and their classifier, sized ``embed_dim``, becomes the embedding layer;
  ``pretrained_cfg``, feature info and hub export stay timm's own.
* wrapped: any other family (XCiT, LeViT, MLP-Mixer, ...) is wrapped by ``GSPRetrievalNet``,
  a registered timm architecture (``gsp_retrieval``) that pools the backbone's
  ``forward_features`` output, so it saves and loads through timm's hub helpers too.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn

import timm
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .pooling import GeneralizedSumPool, gsp_modules
from .spec import format_gsp_spec, is_gsp_spec, parse_gsp_spec
from .timm_plugin import GSPUnsupportedModelError, model_input_size

__all__ = ["create_model", "convert", "GSPRetrievalNet", "init_prototypes_kcenter", "pool_spec"]


def pool_spec(
        pool: str = "gsp",
        num_prototypes: int = 64,
        transport_ratio: float = 0.3,
        gamma: float = 5.0,
) -> str:
    """The timm ``global_pool`` string: GSP with these hyper-parameters, or any timm pool as is."""
    if pool.lower() in ("gsp", "gsp:"):
        return format_gsp_spec(num_prototypes, transport_ratio, gamma)
    if is_gsp_spec(pool):
        parse_gsp_spec(pool)
    return pool


def _fresh_embedding(model: nn.Module) -> None:
    # Some timm heads start at zero (head_init_scale); an all-zero embedding cannot rank anything.
    classifier = model.get_classifier()
    if isinstance(classifier, nn.Linear):
        classifier.reset_parameters()


def create_model(
        model_name: str,
        pretrained: bool = False,
        embed_dim: int = 512,
        pool: str = "gsp",
        num_prototypes: int = 64,
        transport_ratio: float = 0.3,
        gamma: float = 5.0,
        **kwargs: Any,
) -> nn.Module:
    """A timm model with GSP (or another pool, for baselines) and an embedding layer.

    Args:
        model_name: any timm model name (or ``hf-hub:`` / ``local-dir:`` source).
        pretrained: load the backbone's pretrained weights (the head is new).
        embed_dim: output size; 0 returns the pooled features (B, num_features).
        pool: 'gsp', a full 'gsp:...' spec, or a timm pool ('avg', 'max', ...).
        num_prototypes, transport_ratio, gamma: GSP hyper-parameters (when ``pool='gsp'``).
        **kwargs: passed to ``timm.create_model`` (drop_path_rate, img_size, ...).

    Returns:
        model with ``forward(images (B, 3, H, W)) -> (B, embed_dim)``.
    """
    if embed_dim < 0:
        raise ValueError(f"embed_dim must be >= 0, got {embed_dim}")
    global_pool = pool_spec(pool, num_prototypes, transport_ratio, gamma)
    try:
        model = timm.create_model(model_name, pretrained=pretrained, num_classes=embed_dim, global_pool=global_pool, **kwargs)
    except GSPUnsupportedModelError:
        return GSPRetrievalNet(model_name, embed_dim, global_pool, backbone_pretrained=pretrained, backbone_args=kwargs)
    _fresh_embedding(model)
    return model


def convert(
        model: nn.Module,
        embed_dim: int = 512,
        pool: str = "gsp",
        num_prototypes: int = 64,
        transport_ratio: float = 0.3,
        gamma: float = 5.0,
) -> nn.Module:
    """Rebuild the head of an already built timm model (e.g. with pretrained weights) in place
    where its family allows it, else wrap it; returns the retrieval model."""
    if embed_dim < 0:
        raise ValueError(f"embed_dim must be >= 0, got {embed_dim}")
    global_pool = pool_spec(pool, num_prototypes, transport_ratio, gamma)
    if not hasattr(model, "reset_classifier") or not hasattr(model, "forward_features"):
        raise TypeError(f"convert expects a timm model, got {type(model).__name__}")
    try:
        model.reset_classifier(embed_dim, global_pool)
        if is_gsp_spec(global_pool) and not gsp_modules(model):
            raise GSPUnsupportedModelError(f"{type(model).__name__}.reset_classifier ignores global_pool")
    except (GSPUnsupportedModelError, AssertionError, TypeError, ValueError):
        return GSPRetrievalNet(backbone=model, num_classes=embed_dim, global_pool=global_pool)
    _fresh_embedding(model)
    return model


@torch.no_grad()
def init_prototypes_kcenter(model: nn.Module, images: torch.Tensor, seed: Optional[int] = 0) -> None:
    """Greedy k-center initialisation of every GSP pool of ``model`` from a batch of images.

    Args:
        images: (B, 3, H, W), enough of them that B * N >= num_prototypes.
    """
    pools = gsp_modules(model)
    if not pools:
        raise ValueError(f"{type(model).__name__} has no GSP pool to initialise")
    inputs = {}
    handles = [pool.register_forward_pre_hook(lambda m, args: inputs.__setitem__(m, args[0])) for _, pool in pools]
    was_training = model.training
    model.eval()
    try:
        model(images)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    for _, pool in pools:
        pool.init_prototypes_kcenter(inputs[pool], seed=seed)


def _feature_layout(features: Any, num_features: int) -> Tuple[str, int]:
    """Guess the layout of a ``forward_features`` output: (input_fmt, num_prefix_tokens)."""
    if not isinstance(features, torch.Tensor):
        raise GSPUnsupportedModelError(
            f"forward_features returns a {type(features).__name__}, not one feature tensor GSP could pool"
        )
    if features.dim() == 4:
        if features.shape[1] == num_features:
            return "NCHW", 0
        if features.shape[-1] == num_features:
            return "NHWC", 0
    elif features.dim() == 3 and features.shape[-1] == num_features:
        return "NLC", -1  # prefix count comes from the model
    raise GSPUnsupportedModelError(
        f"cannot place GSP on forward_features output of shape {tuple(features.shape)} "
        f"with num_features={num_features}"
    )


class GSPRetrievalNet(nn.Module):
    """Any timm backbone + GSP (or a plain pool) on ``forward_features`` + embedding.

    ``forward_features``: (B, 3, H, W) -> the backbone's local features (NCHW / NHWC / NLC);
    ``forward_head``: -> (B, num_classes) embeddings (or (B, C) pooled with ``pre_logits=True``).
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
        backbone_args = dict(backbone_args or {})
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
        self.num_features = backbone.num_features
        self.num_prefix_tokens = getattr(backbone, "num_prefix_tokens", 0)
        # Serve the backbone's input config; timm's saved config.json rebuilds from _model_args.
        self.pretrained_cfg = dict(getattr(backbone, "pretrained_cfg", {}), architecture="gsp_retrieval",
                                   input_size=model_input_size(backbone))
        self.input_fmt = self._probe_layout()
        self.global_pool = None
        self.reset_classifier(num_classes, pool_spec(global_pool))
        self._model_args = {
            "backbone": backbone.pretrained_cfg["architecture"],
            "backbone_args": {k: v for k, v in backbone_args.items() if k not in ("pretrained_cfg_overlay",)},
        }

    def _probe_layout(self) -> str:
        reference = next(self.backbone.parameters())
        input_size = model_input_size(self.backbone)
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            with torch.no_grad():
                features = self.backbone.forward_features(
                    torch.zeros(1, *input_size, device=reference.device, dtype=reference.dtype))
        finally:
            self.backbone.train(was_training)
        input_fmt, _ = _feature_layout(features, self.num_features)
        return input_fmt

    def _build_pool(self, pool_type: str) -> nn.Module:
        if is_gsp_spec(pool_type):
            prefix = self.num_prefix_tokens if self.input_fmt == "NLC" else 0
            return GeneralizedSumPool(self.num_features, **parse_gsp_spec(pool_type), input_fmt=self.input_fmt, num_prefix_tokens=prefix)
        if pool_type in ("avg", "max"):
            return _ReducePool(pool_type, self.input_fmt, self.num_prefix_tokens if self.input_fmt == "NLC" else 0)
        raise ValueError(f"GSPRetrievalNet supports GSP, 'avg' and 'max' pools, got {pool_type!r}")

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None and global_pool != self.global_pool:
            self.pool = self._build_pool(global_pool)
            self.global_pool = global_pool
        self.num_classes = self.embed_dim = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class _ReducePool(nn.Module):
    """Mean or max over the local features of any layout: -> (B, C)."""

    def __init__(self, mode: str, input_fmt: str, num_prefix_tokens: int = 0):
        super().__init__()
        self.mode, self.input_fmt, self.num_prefix_tokens = mode, input_fmt, num_prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_fmt == "NCHW":
            dims: Tuple[int, ...] = (2, 3)
        elif self.input_fmt == "NHWC":
            dims = (1, 2)
        else:
            x, dims = x[:, self.num_prefix_tokens:], (1,)
        return x.mean(dims) if self.mode == "avg" else x.amax(dims)


# Input settings are the backbone's (GSPRetrievalNet copies them); this entry only names the arch.
default_cfgs = generate_default_cfgs({"gsp_retrieval": {"num_classes": 512}})


@register_model
def gsp_retrieval(pretrained: bool = False, **kwargs: Any) -> GSPRetrievalNet:
    """timm entry point of ``GSPRetrievalNet``, used to rebuild saved models (``hf-hub:``,
    ``local-dir:``) from their ``model_args``: ``backbone``, ``num_classes``, ``global_pool``, ..."""
    return build_model_with_cfg(GSPRetrievalNet, "gsp_retrieval", pretrained, **kwargs)
