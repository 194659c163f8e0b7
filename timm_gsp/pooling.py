"""Generalized Sum Pooling (GSP) as an ``nn.Module`` for NCHW, NHWC and token (NLC) features.

Gurbuz, Sener, Alatan, "Generalized Sum Pooling for Metric Learning", ICCV 2023.

GSP pools ``z = sum_j w_j f_j`` with weights from a partial optimal transport of the local
features onto ``K`` learned prototypes (see ``timm_gsp.transport``). ``transport_ratio = 1``
is global average pooling exactly.

Reading the weights: the sub-module ``GeneralizedSumPool.transport`` returns a
``TransportPlan(weights (B, N), attributes (B, K))``; a forward hook on it (or the
``capture_transport`` context manager) sees the plan of every forward, which is how the zero-shot
loss and the heat maps get it without changing the pooled output.

Loading weights: a checkpoint without this pool's prototypes (an ImageNet backbone, a GAP model)
loads strictly into a GSP model otherwise, and the prototypes keep their initialisation; prototypes
of another shape fail. Loaders of trained GSP models (``timm_gsp.hub``) also require the prototypes.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import torch
import torch.nn as nn

from .spec import GSP_DEFAULTS, check_gsp_args
from .transport import TransportPlan, dense_layout, gsp_transport, prototype_costs, weighted_sum

__all__ = [
    "GeneralizedSumPool",
    "GSPTransport",
    "CapturedPlan",
    "capture_transport",
    "gsp_modules",
]

INPUT_FORMATS = ("NCHW", "NHWC", "NLC")
PROTOTYPES = "prototypes"


class GSPTransport(nn.Module):
    """Parameter-free wrapper of ``gsp_transport``: the place to hook for weights and attributes.

    ``forward(costs (B, K, N)) -> TransportPlan(weights (B, N), attributes (B, K))``.
    """

    def __init__(self, transport_ratio: float = GSP_DEFAULTS["transport_ratio"], gamma: float = GSP_DEFAULTS["gamma"]):
        super().__init__()
        check_gsp_args(transport_ratio=transport_ratio, gamma=gamma)
        self.transport_ratio = float(transport_ratio)
        self.gamma = float(gamma)

    def forward(self, costs: torch.Tensor) -> TransportPlan:
        return gsp_transport(costs, self.transport_ratio, self.gamma)

    def extra_repr(self) -> str:
        return f"transport_ratio={self.transport_ratio}, gamma={self.gamma}"


class GeneralizedSumPool(nn.Module):
    """Generalized Sum Pooling of local features.

    Shapes:
        NCHW: (B, C, H, W) -> (B, C), or (B, C, 1, 1) with ``flatten=False``
        NHWC: (B, H, W, C) -> (B, C), or (B, 1, 1, C) with ``flatten=False``
        NLC:  (B, L, C) -> (B, C); the first ``num_prefix_tokens`` tokens (class, register,
              distillation) are skipped.

    Args:
        in_chs: feature channels C. ``None`` defers creating the prototypes to the first
            forward (or to a state dict that holds them), for hosts that do not know C.
        num_prototypes: K, the number of learned prototypes.
        transport_ratio: mu in (0, 1], the share of feature mass that is pooled; 1 is GAP.
        gamma: entropy weight > 0; larger is a harder selection.
        input_fmt: 'NCHW', 'NHWC' or 'NLC'.
        num_prefix_tokens: leading tokens to skip (NLC only).
        flatten: return (B, C) rather than keeping singleton spatial dims (NCHW / NHWC).
    """

    # Python-side conveniences that TorchScript must not compile.
    __jit_unused_properties__ = ["transport_ratio", "gamma", "in_chs"]

    def __init__(
            self,
            in_chs: Optional[int] = None,
            num_prototypes: int = GSP_DEFAULTS["num_prototypes"],
            transport_ratio: float = GSP_DEFAULTS["transport_ratio"],
            gamma: float = GSP_DEFAULTS["gamma"],
            input_fmt: str = "NCHW",
            num_prefix_tokens: int = 0,
            flatten: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        if input_fmt not in INPUT_FORMATS:
            raise ValueError(f"input_fmt must be one of {INPUT_FORMATS}, got {input_fmt!r}")
        check_gsp_args(num_prototypes, transport_ratio, gamma)
        if in_chs is not None and int(in_chs) < 1:
            raise ValueError(f"in_chs must be >= 1, got {in_chs}")
        if num_prefix_tokens < 0 or (num_prefix_tokens and input_fmt != "NLC"):
            raise ValueError(f"num_prefix_tokens={num_prefix_tokens} is only meaningful (>= 0) for NLC input")
        self.num_prototypes = int(num_prototypes)
        self.input_fmt = input_fmt
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.flatten = flatten
        self.transport = GSPTransport(transport_ratio, gamma)
        factory = dict(device=device, dtype=dtype)
        if in_chs is None:
            self.prototypes = nn.UninitializedParameter(**factory)
        else:
            self.prototypes = nn.Parameter(torch.empty(self.num_prototypes, int(in_chs), **factory))
            self.reset_parameters()

    @property
    def transport_ratio(self) -> float:
        return self.transport.transport_ratio

    @property
    def gamma(self) -> float:
        return self.transport.gamma

    @property
    def in_chs(self) -> Optional[int]:
        return None if self.is_lazy() else self.prototypes.shape[1]

    def is_lazy(self) -> bool:
        return isinstance(self.prototypes, nn.UninitializedParameter)

    def reset_parameters(self) -> None:
        # Random directions in high dimension are all ~sqrt(2) from every feature, so a fresh
        # GSP starts out as GAP and training moves the prototypes (docs/method.md).
        if not self.is_lazy():
            nn.init.normal_(self.prototypes)

    def materialize(self, in_chs: int) -> None:
        """Create the prototypes of a lazy pool for ``in_chs`` channels (no-op if already built)."""
        if self.is_lazy():
            self.prototypes.materialize((self.num_prototypes, int(in_chs)))
            self.reset_parameters()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        key = prefix + PROTOTYPES
        if self.is_lazy() and key in state_dict and state_dict[key].dim() == 2:
            # the width comes from the checkpoint, the count from this pool: another K is a size mismatch
            self.prototypes.materialize((self.num_prototypes, state_dict[key].shape[1]))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if key in missing_keys:
            missing_keys.remove(key)  # a backbone checkpoint: the prototypes are new parameters

    @torch.no_grad()
    def init_prototypes_kcenter(self, features: torch.Tensor, seed: Optional[int] = 0) -> torch.Tensor:
        """Greedy k-center (farthest point) initialisation of the prototypes.

        Args:
            features: local features in this pool's ``input_fmt`` (prefix tokens are skipped),
                or already flattened (M, C).
            seed: picks the first centre; ``None`` uses the global RNG.

        Returns:
            indices: (K,) rows of the flattened (M, C) features chosen as prototypes.
        """
        flat = features if features.dim() == 2 else self._to_tokens(features).flatten(0, 1)
        if flat.shape[0] < self.num_prototypes:
            raise ValueError(f"k-center needs at least K={self.num_prototypes} features, got {flat.shape[0]}")
        self.materialize(flat.shape[1])
        if flat.shape[1] != self.prototypes.shape[1]:
            raise ValueError(f"features have {flat.shape[1]} channels, prototypes {self.prototypes.shape[1]}")
        unit = torch.nn.functional.normalize(flat.float(), dim=1)
        generator = None if seed is None else torch.Generator(device="cpu").manual_seed(seed)
        first = int(torch.randint(unit.shape[0], (1,), generator=generator))
        chosen = [first]
        distance = (unit - unit[first]).norm(dim=1)
        for _ in range(self.num_prototypes - 1):
            nxt = int(distance.argmax())
            chosen.append(nxt)
            distance = torch.minimum(distance, (unit - unit[nxt]).norm(dim=1))
        indices = torch.tensor(chosen, device=flat.device)
        self.prototypes.copy_(flat[indices].to(self.prototypes.dtype))
        return indices

    def _to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W), (B, H, W, C) or (B, L, C) -> (B, N, C) (a view; prefix tokens dropped)."""
        expected_dims = 3 if self.input_fmt == "NLC" else 4
        if x.dim() != expected_dims:
            raise ValueError(
                f"GeneralizedSumPool with input_fmt={self.input_fmt} expects a {expected_dims}-d "
                f"tensor, got shape {list(x.shape)}"
            )
        if self.input_fmt == "NCHW":
            return x.flatten(2).transpose(1, 2)  # a view in either memory format
        if self.input_fmt == "NHWC":
            return x.flatten(1, 2)
        if x.shape[1] <= self.num_prefix_tokens:
            raise ValueError(f"{x.shape[1]} tokens leave no patch token after {self.num_prefix_tokens} prefix tokens")
        return x[:, self.num_prefix_tokens:]

    def _pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, C) in float32 (float64 for float64 input)."""
        compute_dtype = torch.float64 if tokens.dtype == torch.float64 else torch.float32
        # Plain NCHW is read as (B, C, N) in place, tokens as (B, N, C): no transpose copy.
        features, channel_dim = dense_layout(tokens.to(compute_dtype), 2)
        costs = prototype_costs(features, self.prototypes.to(compute_dtype), channel_dim)
        plan = self.transport(costs)
        return weighted_sum(features, plan.weights, channel_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self._to_tokens(x)  # (B, N, C)
        if not torch.jit.is_scripting():
            self.materialize(tokens.shape[2])
        if tokens.shape[2] != self.prototypes.shape[1]:
            raise ValueError(
                f"GeneralizedSumPool has prototypes for {self.prototypes.shape[1]} channels, "
                f"got input of shape {list(x.shape)} ({self.input_fmt})"
            )
        if torch.jit.is_scripting():
            pooled = self._pool(tokens).to(x.dtype)
        else:
            with torch.autocast(device_type=x.device.type, enabled=False):
                pooled = self._pool(tokens).to(x.dtype)  # (B, C)
        if not self.flatten and self.input_fmt != "NLC":
            pooled = pooled[:, :, None, None] if self.input_fmt == "NCHW" else pooled[:, None, None, :]
        return pooled

    def extra_repr(self) -> str:
        return (
            f"in_chs={self.in_chs}, num_prototypes={self.num_prototypes}, input_fmt={self.input_fmt}, "
            f"num_prefix_tokens={self.num_prefix_tokens}, flatten={self.flatten}"
        )


def gsp_modules(model: nn.Module) -> List[Tuple[str, GeneralizedSumPool]]:
    """All GSP pools in ``model`` as (qualified name, module) pairs, in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, GeneralizedSumPool)]


@dataclass
class CapturedPlan:
    """One GSP forward: weights (B, N), attributes (B, K), and the (H, W) grid of NCHW/NHWC input."""

    module_name: str
    weights: torch.Tensor
    attributes: torch.Tensor
    grid_size: Optional[Tuple[int, int]]


@contextlib.contextmanager
def capture_transport(model: nn.Module, detach: bool = True) -> Iterator[List[CapturedPlan]]:
    """Record the transport plan of every GSP forward inside the ``with`` block.

    Example::

        with capture_transport(model) as plans:
            model(images)
        heat = plans[-1].weights.view(-1, *plans[-1].grid_size)  # (B, H, W)
    """
    pools = gsp_modules(model)
    if not pools:
        raise ValueError(f"{type(model).__name__} has no GeneralizedSumPool module to capture")
    records: List[CapturedPlan] = []
    handles = []
    for name, pool in pools:
        grid = {}

        def remember_grid(module, args, grid=grid):
            x = args[0]
            if module.input_fmt == "NCHW":
                grid["size"] = (x.shape[2], x.shape[3])
            elif module.input_fmt == "NHWC":
                grid["size"] = (x.shape[1], x.shape[2])
            else:
                grid["size"] = None

        def record(module, args, plan, name=name, grid=grid):
            weights, attributes = (plan.weights.detach(), plan.attributes.detach()) if detach else plan
            records.append(CapturedPlan(name, weights, attributes, grid.get("size")))

        handles.append(pool.register_forward_pre_hook(remember_grid))
        handles.append(pool.transport.register_forward_hook(record))
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()
