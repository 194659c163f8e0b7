"""Zero-shot regularisation (ZSR) of GSP, and a wrapper adding it to any metric-learning loss.

Gurbuz, Sener, Alatan, "Generalized Sum Pooling for Metric Learning", ICCV 2023 (docs/method.md, "Zero-shot regularisation").

GSP's attribute vectors ``a`` (B, K) (the share of transported mass each prototype received) should
behave like semantic attributes: a linear map fitted on one half of the batch must predict the
class embeddings of the other half. ``ZeroShotLoss`` is that loss on its own; ``GSPMetricLoss``
combines it with a metric loss, taking the attributes from the model with a forward hook, so that a
training step stays ``loss = criterion(model(images), labels)``::

    criterion = GSPMetricLoss(losses.MultiSimilarityLoss(), model, num_classes=100)
    optimizer = torch.optim.Adam([
        {"params": model.parameters(), "lr": 1e-5},
        {"params": criterion.parameters(), "lr": 1e-3},  # proxies (if any) and class embeddings
    ])
    loss = criterion(model(images), labels)
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Iterator, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers.gsp_pool import CapturedPlan, GeneralizedSumPool, gsp_modules, watch_transport

__all__ = ["zero_shot_loss", "ZeroShotLoss", "GSPMetricLoss"]

DEFAULT_CLASS_EMBED_DIM = 128
DEFAULT_RIDGE_LAMBDA = 0.05
DEFAULT_SCALE = 9.5
DEFAULT_ZSR_WEIGHT = 0.1


def _ridge_predict(fit_x: torch.Tensor, fit_y: torch.Tensor, query_x: torch.Tensor, ridge_lambda: float) -> torch.Tensor:
    """Ridge regression fitted on (fit_x, fit_y), applied to query_x.

    ``W = X^T (X X^T + lambda I)^-1 Y`` is the ridge solution in its dual (m x m) form: with m
    samples of K attributes it solves a system of the batch's size, not of K.

    Args:
        fit_x: (m, K) attributes, fit_y: (m, D) class embeddings, query_x: (q, K).

    Returns:
        (q, D) predicted class embeddings.
    """
    gram = fit_x @ fit_x.T
    gram = gram + ridge_lambda * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    # solve, not inv: same result for this SPD system, better conditioned and differentiable as such.
    weight = fit_x.T @ torch.linalg.solve(gram, fit_y)  # (K, D)
    return query_x @ weight


def _check_batch(attributes: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    if attributes.dim() != 2:
        raise ValueError(f"attributes must have shape (B, K), got {tuple(attributes.shape)}")
    if labels.dim() != 1 or labels.shape[0] != attributes.shape[0]:
        raise ValueError(
            f"labels must have shape (B,) matching attributes (B, K); got labels {tuple(labels.shape)} "
            f"and attributes {tuple(attributes.shape)}"
        )
    if attributes.shape[0] < 2:
        raise ValueError(f"zero-shot loss needs a batch of at least 2 samples (two halves), got {attributes.shape[0]}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    even, odd = labels[0::2], labels[1::2]
    # one host read (one device sync) for the three checks
    low, high, shared = torch.stack([labels.min(), labels.max(), torch.isin(odd, even).any().to(labels.dtype)]).tolist()
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"labels must be class indices in [0, {num_classes}), got values in [{low}, {high}]; "
            f"remap the training classes to 0..num_classes-1"
        )
    if not shared:
        raise ValueError(
            "the two halves of the batch (even positions: classes "
            f"{_preview(even)}, odd positions: classes {_preview(odd)}) share no class, so neither half "
            "can predict the other's class embeddings; put samples of a class next to each other, e.g. "
            "batches of timm_gsp.data.MPerClassBatchSampler with m >= 2"
        )


def _preview(labels: torch.Tensor, limit: int = 8) -> str:
    values = sorted(set(labels.tolist()))
    shown = ", ".join(str(v) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


def zero_shot_loss(
        attributes: torch.Tensor,
        labels: torch.Tensor,
        class_embeddings: torch.Tensor,
        ridge_lambda: float = DEFAULT_RIDGE_LAMBDA,
        scale: float = DEFAULT_SCALE,
) -> torch.Tensor:
    """Zero-shot regularisation loss (docs/method.md), as a function.

    The batch is split into half A (even positions) and half B (odd positions). A ridge regression
    fitted on A maps A's attributes to A's class embeddings and predicts B's, and symmetrically
    B predicts A. Each sample's prediction ``y_hat`` is scored by the softmax cross-entropy of the
    logits ``scale * y_hat @ E^T`` against its class.

    Averaging: the mean over all B samples of their cross-entropy (every sample is predicted exactly
    once, by the half it is not in), i.e. ``(|A| * L(B->A) + |B| * L(A->B)) / (|A| + |B|)``; for an
    even batch size this is ``(L(A->B) + L(B->A)) / 2``.

    Computed in float32 (float64 if ``attributes`` or ``class_embeddings`` is float64) with autocast
    disabled: the m x m solve is not safe in half precision.

    Args:
        attributes: (B, K) GSP attribute vectors, B >= 2.
        labels: (B,) integer classes in [0, C).
        class_embeddings: (C, D) class embeddings E.
        ridge_lambda: ridge regularisation lambda > 0.
        scale: logit scale s > 0.

    Returns:
        Scalar loss, in the compute dtype.

    Raises:
        ValueError: bad shapes, B < 2, labels outside [0, C), or halves that share no class.
            These checks read the labels on the host: one device sync per call.
    """
    if class_embeddings.dim() != 2:
        raise ValueError(f"class_embeddings must have shape (C, D), got {tuple(class_embeddings.shape)}")
    _check_batch(attributes, labels, class_embeddings.shape[0])
    wide = torch.float64 in (attributes.dtype, class_embeddings.dtype)
    compute_dtype = torch.float64 if wide else torch.float32
    with torch.autocast(device_type=attributes.device.type, enabled=False):
        x = attributes.to(compute_dtype)
        table = class_embeddings.to(compute_dtype)
        y = table[labels]  # (B, D)
        x_a, y_a, x_b, y_b = x[0::2], y[0::2], x[1::2], y[1::2]
        predicted = torch.cat([
            _ridge_predict(x_b, y_b, x_a, ridge_lambda),  # A predicted by the predictor fitted on B
            _ridge_predict(x_a, y_a, x_b, ridge_lambda),  # B predicted by the predictor fitted on A
        ])  # (B, D), rows ordered A then B
        targets = torch.cat([labels[0::2], labels[1::2]])
        logits = scale * (predicted @ table.T)  # (B, C)
        return F.cross_entropy(logits, targets)


class ZeroShotLoss(nn.Module):
    """Zero-shot regularisation (ZSR) loss with learnable class embeddings (docs/method.md).

    ``forward(attributes (B, K), labels (B,)) -> scalar``; see ``zero_shot_loss`` for the split into
    halves, the ridge regression and how the two directions are averaged.

    Args:
        num_classes: C, the number of training classes; labels must be in [0, C).
        class_embed_dim: D, the size of the class embeddings E (C x D). Default 128: E only has
            to give the classes linearly separable targets for a map from K (64-128) attributes, and
            a ridge fit on half a batch (~60 samples) has rank <= 60 anyway. (The reference PyTorch
            port reuses the metric embedding size, 512.)
        ridge_lambda: ridge regularisation lambda (default 0.05).
        scale: logit scale s (default 9.5).

    E is He-normal initialised with fan-in D (``kaiming_normal_``: std sqrt(2 / D)), so every
    row has expected squared norm 2 and the initial logits ``s * y_hat @ E^T`` have a scale that
    depends neither on D nor on C. (The reference port uses fan-out C, std sqrt(2 / C).)
    """

    def __init__(
            self,
            num_classes: int,
            class_embed_dim: int = DEFAULT_CLASS_EMBED_DIM,
            ridge_lambda: float = DEFAULT_RIDGE_LAMBDA,
            scale: float = DEFAULT_SCALE,
            device=None,
            dtype=None,
    ):
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if int(class_embed_dim) < 1:
            raise ValueError(f"class_embed_dim must be >= 1, got {class_embed_dim}")
        if not (float(ridge_lambda) > 0 and math.isfinite(ridge_lambda)):
            raise ValueError(f"ridge_lambda must be a finite number > 0, got {ridge_lambda}")
        if not (float(scale) > 0 and math.isfinite(scale)):
            raise ValueError(f"scale must be a finite number > 0, got {scale}")
        self.num_classes = int(num_classes)
        self.ridge_lambda = float(ridge_lambda)
        self.scale = float(scale)
        self.class_embeddings = nn.Parameter(torch.empty(self.num_classes, int(class_embed_dim), device=device, dtype=dtype))
        self.reset_parameters()

    @property
    def class_embed_dim(self) -> int:
        return self.class_embeddings.shape[1]

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.class_embeddings, mode="fan_in", nonlinearity="relu")

    def forward(self, attributes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return zero_shot_loss(attributes, labels, self.class_embeddings, self.ridge_lambda, self.scale)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, class_embed_dim={self.class_embed_dim}, "
            f"ridge_lambda={self.ridge_lambda}, scale={self.scale}"
        )


class _AttributeSlot:
    """Where the transport hook leaves the latest attributes.

    The hook holds this small object, not the loss module, so that the model does not keep the loss
    (and its class embeddings) alive through its hook table.
    """

    __slots__ = ("attributes",)

    def __init__(self) -> None:
        self.attributes: Optional[torch.Tensor] = None

    def store(self, plan: CapturedPlan) -> None:
        # Kept with its graph: ZSR must back-propagate into the prototypes and the backbone.
        self.attributes = plan.attributes

    # A capture belongs to one step and holds its graph, which cannot be copied: a deep copy or a
    # pickle of the hooked model (an EMA copy, torch.save) gets an empty slot of its own.
    def __getstate__(self) -> dict:
        return {"attributes": None}

    def __setstate__(self, state: dict) -> None:
        self.attributes = None


def _unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


class GSPMetricLoss(nn.Module):
    """A metric-learning loss plus GSP's zero-shot regularisation, fed by a hook on the model.

    ``forward(embeddings (B, E), labels (B,), *args, **kwargs) -> scalar`` returns

        (1 - zsr_weight) * metric_loss(embeddings, labels, *args, **kwargs) + zsr_weight * L_zsr

    where ``L_zsr = ZeroShotLoss(attributes, labels)`` on the attributes (B, K) of the model's most
    recent forward. Extra arguments (``indices_tuple`` from a miner, ``ref_emb``, ...) go to the
    metric loss only. Any pytorch-metric-learning loss works, proxy losses included: their
    parameters live in this module next to the class embeddings, so ``criterion.parameters()``
    (or ``metric_loss_parameters()`` / ``zsr_parameters()`` for separate learning rates) is what the
    optimizer needs. ``state_dict()`` holds the metric loss and the class embeddings, never the model.

    The attributes are captured, with their gradient, by ``layers.gsp_pool.watch_transport`` hooks on the
    model's GSP pool(s) and their ``transport`` sub-modules, registered here. Call the loss right after the forward
    whose embeddings it receives: it always uses the latest capture. With several GSP pools the
    latest is the last one run in forward order, unless ``gsp_pool`` selects one.

    ``zsr_weight = 0`` is the plain metric loss: no class embeddings, no hook, and the model needs
    no GSP. ``remove()`` (or leaving a ``with criterion:`` block) detaches the hook; so does garbage
    collection of the criterion. After each call ``last_metric_loss`` and ``last_zsr_loss`` (None when
    skipped) hold the detached terms, for logging.

    Distributed training: pass the DistributedDataParallel-wrapped model or the inner one (the hook
    goes on the inner module either way). Wrap a pml loss in ``DistributedLossWrapper`` *before*
    passing it here, so that the metric loss gathers embeddings across ranks while ZSR uses this
    rank's batch; the class embeddings' gradients are not synchronised by the model's DDP, so wrap
    this criterion in its own DistributedDataParallel (or all-reduce ``zsr_parameters()`` grads).
    ``nn.DataParallel`` is not supported: its replicas would each capture a chunk of the batch.

    Args:
        metric_loss: an ``nn.Module`` called as ``metric_loss(embeddings, labels, ...)``.
        model: the GSP model (may be wrapped in DistributedDataParallel or torch.compile).
        num_classes: number of training classes; labels must be in [0, num_classes) (needed by ZSR).
        zsr_weight: weight of ZSR in [0, 1] (default 0.1, as in the paper).
        class_embed_dim, ridge_lambda, scale: of ``ZeroShotLoss`` (defaults 128, 0.05, 9.5).
        gsp_pool: the GSP pool to read, as a module or its qualified name in ``gsp_modules(model)``;
            ``None`` hooks every GSP pool and uses whichever ran last.
    """

    def __init__(
            self,
            metric_loss: nn.Module,
            model: nn.Module,
            num_classes: int,
            zsr_weight: float = DEFAULT_ZSR_WEIGHT,
            class_embed_dim: int = DEFAULT_CLASS_EMBED_DIM,
            ridge_lambda: float = DEFAULT_RIDGE_LAMBDA,
            scale: float = DEFAULT_SCALE,
            gsp_pool: Union[None, str, GeneralizedSumPool] = None,
    ):
        super().__init__()
        if not isinstance(metric_loss, nn.Module):
            raise TypeError(f"metric_loss must be an nn.Module (e.g. a pytorch-metric-learning loss), got {type(metric_loss).__name__}")
        _check_weight(zsr_weight)
        self.metric_loss = metric_loss
        self._zsr_weight = float(zsr_weight)
        self._slot = _AttributeSlot()
        self._handles: List[Any] = []
        self.last_metric_loss: Optional[torch.Tensor] = None
        self.last_zsr_loss: Optional[torch.Tensor] = None
        inner = _unwrap_model(model)
        # A weak reference, not a sub-module: the model must stay out of this module's state_dict,
        # parameters() and .to(); the criterion does not own the model.
        self._model_ref = weakref.ref(inner)
        self._model_name = type(inner).__name__
        if self._zsr_weight == 0:
            self.zsr: Optional[ZeroShotLoss] = None
            return
        if isinstance(model, nn.DataParallel):
            raise ValueError(
                "nn.DataParallel is not supported with zero-shot regularisation (each replica would capture "
                "only its chunk of the batch); use DistributedDataParallel"
            )
        self.zsr = ZeroShotLoss(num_classes, class_embed_dim, ridge_lambda, scale)
        self._handles = watch_transport(self._select_pools(inner, gsp_pool), self._slot.store, detach=False)
        # Drop the hooks when this criterion is garbage collected without remove().
        self._finalizer = weakref.finalize(self, _remove_handles, list(self._handles))

    def _select_pools(self, model: nn.Module,
                      gsp_pool: Union[None, str, GeneralizedSumPool]) -> List[Tuple[str, GeneralizedSumPool]]:
        """The (name, pool) pairs to hook: every GSP pool, or the one ``gsp_pool`` names."""
        pools = gsp_modules(model)
        if not pools:
            raise ValueError(
                f"{self._model_name} has no GeneralizedSumPool, so zero-shot regularisation has no attributes; "
                f"create it with global_pool='gsp' or pass zsr_weight=0"
            )
        if gsp_pool is None:
            return pools
        for name, module in pools:
            if module is gsp_pool or name == gsp_pool:
                return [(name, module)]
        raise ValueError(f"gsp_pool {gsp_pool!r} is not one of the GSP pools of {self._model_name}: {[name for name, _ in pools]}")

    @property
    def zsr_weight(self) -> float:
        return self._zsr_weight

    @zsr_weight.setter
    def zsr_weight(self, value: float) -> None:
        """Change the weight (e.g. a schedule); a criterion built with 0 has no ZSR to turn on."""
        _check_weight(value)
        if value > 0 and self.zsr is None:
            raise ValueError("this criterion was built with zsr_weight=0 and has no ZSR; build it with zsr_weight > 0")
        self._zsr_weight = float(value)

    @property
    def model(self) -> Optional[nn.Module]:
        """The hooked model (unwrapped from DDP / torch.compile), or None once it was freed."""
        return self._model_ref()

    @property
    def hooked(self) -> bool:
        return bool(self._handles)

    def metric_loss_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the metric loss (e.g. ProxyAnchor proxies); empty for pair/triplet losses."""
        return self.metric_loss.parameters()

    def zsr_parameters(self) -> Iterator[nn.Parameter]:
        """The ZSR class embeddings (C, D); empty when zsr_weight was 0."""
        return iter(()) if self.zsr is None else self.zsr.parameters()

    def captured_attributes(self) -> torch.Tensor:
        """Attributes (B, K) of the latest forward of the hooked GSP pool(s), with gradient."""
        if not self._handles:
            raise RuntimeError(
                "no attribute hook is attached (zsr_weight was 0 or remove() was called); "
                "build a new criterion to capture attributes"
            )
        if self._slot.attributes is None:
            raise RuntimeError(
                f"no GSP attributes captured yet: run the model ({self._model_name}) forward on the batch "
                f"before calling the loss"
            )
        return self._slot.attributes

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        metric = self.metric_loss(embeddings, labels, *args, **kwargs)
        self.last_metric_loss, self.last_zsr_loss = metric.detach(), None
        if self._zsr_weight == 0:
            return metric
        attributes = self.captured_attributes()
        if attributes.shape[0] != labels.shape[0]:
            raise ValueError(
                f"the latest GSP forward of {self._model_name} had batch size {attributes.shape[0]}, but the loss got "
                f"{labels.shape[0]} labels; call the loss right after the single forward that made its embeddings"
            )
        zsr = self.zsr(attributes, labels.to(attributes.device))
        self.last_zsr_loss = zsr.detach()
        return (1.0 - self._zsr_weight) * metric + self._zsr_weight * zsr

    def remove(self) -> None:
        """Detach the hook(s) from the model and drop the captured attributes (idempotent)."""
        if self._handles:
            self._finalizer()
            self._handles = []
        self._slot.attributes = None

    def __enter__(self) -> "GSPMetricLoss":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.remove()

    def extra_repr(self) -> str:
        pools = "hooked" if self._handles else "not hooked"
        return f"zsr_weight={self._zsr_weight}, model={self._model_name} ({pools})"


def _check_weight(value: float) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"zsr_weight must be in [0, 1], got {value}")


def _remove_handles(handles: List[Any]) -> None:
    for handle in handles:
        handle.remove()
