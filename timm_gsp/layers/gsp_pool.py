"""Generalized Sum Pooling (GSP) as an ``nn.Module`` for NCHW, NHWC and token (NLC) features.

Gurbuz, Sener, Alatan, "Generalized Sum Pooling for Metric Learning", ICCV 2023.

GSP pools ``z = sum_j w_j f_j`` with weights from a partial optimal transport of the local
features onto ``K`` learned prototypes (see ``layers.transport``). ``transport_ratio = 1``
is global average pooling exactly. ``border = b > 0`` leaves the ``b`` outer rings of the feature
grid out of the transport (weight 0): zero padding makes them alike in every image (docs/method.md).

Reading the weights: the sub-module ``GeneralizedSumPool.transport`` returns a
``TransportPlan(weights (B, M), attributes (B, K))`` over the M cells it transports.
``watch_transport`` is the one way to see it: it hooks each pool and hands every forward to a
callback as a ``CapturedPlan`` (weights over the full grid, attributes, costs, grid size, and on
request the features), without changing the pooled output. ``capture_transport`` (heat maps,
``retrieval.viz``), the zero-shot loss (``loss.zsr``) and the k-center initialisation
(``models.factory``) are built on it.

Loading weights: a checkpoint without this pool's prototypes (an ImageNet backbone, a GAP model)
loads strictly into a GSP model otherwise, and the prototypes keep their initialisation; prototypes
of another shape fail. Loaders of trained GSP models (``hub.published``) also require the prototypes.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.utils.hooks import RemovableHandle

from ..errors import ConfigError
from .pool_spec import GSP_DEFAULTS, check_gsp_args, format_gsp_spec
from .transport import TransportPlan, dense_layout, gsp_transport, prototype_costs, token_view, weighted_sum

__all__ = [
    "GeneralizedSumPool",
    "GSPTransport",
    "CapturedPlan",
    "capture_transport",
    "gsp_modules",
    "watch_transport",
]

INPUT_FORMATS = ("NCHW", "NHWC", "NLC")
PROTOTYPES = "prototypes"


class GSPTransport(nn.Module):
    """The transport of ``gsp_transport`` as a module: the place to hook for weights and attributes.

    ``forward(costs (B, K, N)) -> TransportPlan(weights (B, N), attributes (B, K))``.

    With ``learn_ratio`` the transport ratio is ``sigmoid(ratio_logit)``, a parameter that starts at
    ``transport_ratio`` and learns through the implicit gradient of the threshold; otherwise the
    module has no parameter.
    """

    __jit_unused_properties__ = ["current_ratio"]

    def __init__(self, transport_ratio: float = GSP_DEFAULTS["transport_ratio"], gamma: float = GSP_DEFAULTS["gamma"],
                 learn_ratio: bool = GSP_DEFAULTS["learn_ratio"]):
        super().__init__()
        check_gsp_args(transport_ratio=transport_ratio, gamma=gamma, learn_ratio=learn_ratio)
        self.transport_ratio = float(transport_ratio)  # the configured (starting) ratio: part of the pool string
        self.gamma = float(gamma)
        if learn_ratio:
            self.ratio_logit = nn.Parameter(torch.tensor([math.log(transport_ratio / (1.0 - transport_ratio))]))
        else:
            self.register_parameter("ratio_logit", None)

    @property
    def current_ratio(self) -> float:
        """The transport ratio in use: the learned one, or the configured one."""
        return self.transport_ratio if self.ratio_logit is None else float(torch.sigmoid(self.ratio_logit.detach()))

    def forward(self, costs: torch.Tensor) -> TransportPlan:
        logit = self.ratio_logit
        if logit is None:
            return gsp_transport(costs, self.transport_ratio, self.gamma)
        ratio = torch.sigmoid(logit.to(costs.dtype))
        return gsp_transport(costs, float(ratio.item()), self.gamma, ratio)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if prefix + "ratio_logit" in missing_keys:  # a backbone checkpoint: the ratio starts as configured
            missing_keys.remove(prefix + "ratio_logit")

    def extra_repr(self) -> str:
        learned = ", learned" if self.ratio_logit is not None else ""
        return f"transport_ratio={self.transport_ratio}{learned}, gamma={self.gamma}"


class GeneralizedSumPool(nn.Module):
    """Generalized Sum Pooling of local features.

    Shapes:
        NCHW: (B, C, H, W) -> (B, C), or (B, C, 1, 1) with ``flatten=False``
        NHWC: (B, H, W, C) -> (B, C), or (B, 1, 1, C) with ``flatten=False``
        NLC:  (B, L, C) -> (B, C); the first ``num_prefix_tokens`` tokens (class, register,
              distillation) are skipped.

    The transport runs over the N = H * W cells of the grid (the L - num_prefix_tokens tokens), or
    with ``border = b`` over the (H - 2b) x (W - 2b) interior only, each of its cells with mass
    1 / N_interior; the border cells get weight 0.

    The plan's weights ``w`` (B, N) become the pooled vector by ``mix`` (``m_j = N w_j``, 1 for every
    cell of a uniform plan, up to ``1 / mu`` for a cell transported whole):

    * ``"sum"``: ``sum_j w_j f_j``, the paper's weighted sum (``transport_ratio=1``: GAP);
    * ``"max"``: ``max_j m_j f_j`` per channel, the reference PyTorch port's head: GSP picks the cells,
      each channel takes its strongest picked cell (``transport_ratio=1``: global max pooling of
      non-negative features);
    * ``"gem"``: ``(mean_j max(m_j f_j, eps)^p)^(1/p)``, a learned ``p`` from 3 (the reference's
      ``use_gemp``; ``transport_ratio=1``: GeM);
    * ``"addmax"``: ``sum_j w_j f_j + max_j f_j`` (the reference's ``augment_max_pool``, with the
      embedding shared by the two terms).

    Args:
        in_chs: feature channels C. ``None`` defers creating the prototypes to the first
            forward (or to a state dict that holds them), for hosts that do not know C.
        num_prototypes: K, the number of learned prototypes.
        transport_ratio: mu in (0, 1], the share of feature mass that is pooled; 1 is GAP.
        gamma: entropy weight > 0; larger is a harder selection.
        input_fmt: 'NCHW', 'NHWC' or 'NLC'.
        num_prefix_tokens: leading tokens to skip (NLC only).
        flatten: return (B, C) rather than keeping singleton spatial dims (NCHW / NHWC).
        border: outer rings of grid cells left out of the transport (0: none). Must leave at
            least one cell: checked against every input map (and ``grid_size``), a ``ConfigError``.
        grid_size: (h, w) grid of the tokens after the prefix tokens (NLC only; the plugin passes a
            ViT's fixed patch grid). Needed for ``border > 0`` on tokens; otherwise it only lets
            ``capture_transport`` report the grid.
        mix: how the plan becomes a vector, above: 'sum', 'max', 'gem' or 'addmax'.
        learn_ratio: learn the transport ratio, from ``transport_ratio`` (``GSPTransport``).
        project: a learned linear map of every cell (C -> C, from the identity) before the costs;
            the pool pools the mapped cells (the reference transports embedded cells).
        norm: how the costs normalise a cell: 'unit', 'clip' or 'relative' (``transport.prototype_costs``).
    """

    # Python-side conveniences that TorchScript must not compile.
    __jit_unused_properties__ = ["transport_ratio", "gamma", "in_chs", "spec", "learn_ratio", "project"]

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
            *,
            border: int = GSP_DEFAULTS["border"],
            grid_size: Optional[Sequence[int]] = None,
            mix: str = GSP_DEFAULTS["mix"],
            learn_ratio: bool = GSP_DEFAULTS["learn_ratio"],
            project: bool = GSP_DEFAULTS["project"],
            norm: str = GSP_DEFAULTS["norm"],
    ):
        super().__init__()
        if input_fmt not in INPUT_FORMATS:
            raise ValueError(f"input_fmt must be one of {INPUT_FORMATS}, got {input_fmt!r}")
        check_gsp_args(num_prototypes, transport_ratio, gamma, border, mix, learn_ratio, project, norm)
        if in_chs is not None and int(in_chs) < 1:
            raise ValueError(f"in_chs must be >= 1, got {in_chs}")
        if num_prefix_tokens < 0 or (num_prefix_tokens and input_fmt != "NLC"):
            raise ValueError(f"num_prefix_tokens={num_prefix_tokens} is only meaningful (>= 0) for NLC input")
        if grid_size is not None:
            if input_fmt != "NLC":
                raise ValueError(f"grid_size is only meaningful for NLC input ({input_fmt} maps carry their own grid)")
            if len(grid_size) != 2 or min(grid_size) < 1:
                raise ValueError(f"grid_size must be (h, w) with h, w >= 1, got {grid_size!r}")
            grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.num_prototypes = int(num_prototypes)
        self.input_fmt = input_fmt
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.flatten = flatten
        self.border = int(border)
        self.grid_size = grid_size
        if self.border and input_fmt == "NLC":
            if grid_size is None:
                raise ConfigError(
                    f"GSP border={self.border} needs the grid of the tokens, and this NLC pool has none (grid_size): "
                    f"known for ViT-style patch tokens of a fixed image size; use border=0 for this model"
                )
            self._check_border(*grid_size)
        self.mix = mix
        self.norm = norm
        self.transport = GSPTransport(transport_ratio, gamma, learn_ratio)
        factory = dict(device=device, dtype=dtype)
        if mix == "gem":
            self.gem_p = nn.Parameter(torch.full((1,), 3.0, **factory))
        else:
            self.register_parameter("gem_p", None)
        if in_chs is None:
            self.prototypes = nn.UninitializedParameter(**factory)
        else:
            self.prototypes = nn.Parameter(torch.empty(self.num_prototypes, int(in_chs), **factory))
        if project:  # the (C, C) map and its bias, sized with the prototypes
            self.projection = nn.UninitializedParameter(**factory) if in_chs is None else \
                nn.Parameter(torch.empty(int(in_chs), int(in_chs), **factory))
            self.projection_bias = nn.UninitializedParameter(**factory) if in_chs is None else \
                nn.Parameter(torch.empty(int(in_chs), **factory))
        else:
            self.register_parameter("projection", None)
            self.register_parameter("projection_bias", None)
        if in_chs is not None:
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

    @property
    def learn_ratio(self) -> bool:
        return self.transport.ratio_logit is not None

    @property
    def project(self) -> bool:
        return self.projection is not None

    @property
    def spec(self) -> str:
        """The canonical ``gsp:...`` pool string of this pool's hyper-parameters."""
        return format_gsp_spec(self.num_prototypes, self.transport_ratio, self.gamma, self.border, self.mix,
                               self.learn_ratio, self.project, self.norm)

    def is_lazy(self) -> bool:
        return isinstance(self.prototypes, nn.UninitializedParameter)

    def reset_parameters(self) -> None:
        # Random directions in high dimension are all ~sqrt(2) from every feature, so a fresh
        # GSP starts out as GAP and training moves the prototypes (docs/method.md).
        if not self.is_lazy():
            nn.init.normal_(self.prototypes)
            if self.projection is not None:  # the identity: costs and pooling start on the backbone's cells
                nn.init.eye_(self.projection)
                nn.init.zeros_(self.projection_bias)

    def materialize(self, in_chs: int) -> None:
        """Create the parameters of a lazy pool for ``in_chs`` channels (no-op if already built)."""
        if self.is_lazy():
            self._materialize_shapes(int(in_chs))
            self.reset_parameters()

    def _materialize_shapes(self, in_chs: int) -> None:
        self.prototypes.materialize((self.num_prototypes, in_chs))
        if self.projection is not None:
            self.projection.materialize((in_chs, in_chs))
            self.projection_bias.materialize((in_chs,))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        key = prefix + PROTOTYPES
        if self.is_lazy() and key in state_dict and state_dict[key].dim() == 2:
            # the width comes from the checkpoint, the count from this pool: another K is a size mismatch
            self._materialize_shapes(state_dict[key].shape[1])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        # a backbone checkpoint: the pool's parameters are new (loaders of trained GSP models require them)
        own = [prefix + name for name, _ in self.named_parameters()]
        missing_keys[:] = [k for k in missing_keys if k not in own]

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
        if self.projection is not None and not self.is_lazy() and flat.shape[1] == self.prototypes.shape[1]:
            flat = self._project(flat)  # prototypes live where the costs are computed
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

    def _check_border(self, height: int, width: int) -> None:
        if height - 2 * self.border < 1 or width - 2 * self.border < 1:
            raise ConfigError(
                f"GSP border={self.border} leaves no cell of a {height}x{width} feature grid to pool; "
                f"border must be at most {(min(height, width) - 1) // 2} here"
            )

    def _to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W), (B, H, W, C) or (B, L, C) -> (B, N, C): the cells the transport sees, prefix
        tokens dropped, inside the border rings. A view without a border; cutting one out copies."""
        expected_dims = 3 if self.input_fmt == "NLC" else 4
        if x.dim() != expected_dims:
            raise ValueError(
                f"GeneralizedSumPool with input_fmt={self.input_fmt} expects a {expected_dims}-d "
                f"tensor, got shape {list(x.shape)}"
            )
        b = self.border
        if self.input_fmt == "NCHW":
            if b > 0:
                self._check_border(x.shape[2], x.shape[3])
                x = x[:, :, b:x.shape[2] - b, b:x.shape[3] - b]
            return x.flatten(2).transpose(1, 2)  # a view in either memory format
        if self.input_fmt == "NHWC":
            if b > 0:
                self._check_border(x.shape[1], x.shape[2])
                x = x[:, b:x.shape[1] - b, b:x.shape[2] - b]
            return x.flatten(1, 2)
        if x.shape[1] <= self.num_prefix_tokens:
            raise ValueError(f"{x.shape[1]} tokens leave no patch token after {self.num_prefix_tokens} prefix tokens")
        tokens = x[:, self.num_prefix_tokens:]
        grid = self.grid_size
        if b > 0 and grid is not None:  # the constructor refused a border without a grid
            if tokens.shape[1] != grid[0] * grid[1]:
                raise ValueError(
                    f"GSP border={b} expects {grid[0]}x{grid[1]} patch tokens (grid_size), got {tokens.shape[1]}: "
                    f"the model runs at another input size than its pool was built for"
                )
            tokens = tokens.reshape(x.shape[0], grid[0], grid[1], x.shape[2])[:, b:grid[0] - b, b:grid[1] - b]
            tokens = tokens.flatten(1, 2)
        return tokens

    def input_grid(self, x: torch.Tensor) -> Optional[Tuple[int, int]]:
        """(H, W), the full grid of input ``x``: an NCHW / NHWC map's, or the ``grid_size`` of tokens
        whose count matches it; None for tokens of unknown grid."""
        if self.input_fmt == "NCHW":
            return int(x.shape[2]), int(x.shape[3])
        if self.input_fmt == "NHWC":
            return int(x.shape[1]), int(x.shape[2])
        grid = self.grid_size
        if grid is not None and x.shape[1] - self.num_prefix_tokens == grid[0] * grid[1]:
            return grid
        return None

    def _project(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., C): the learned map of ``project``; the identity without it."""
        weight, bias = self.projection, self.projection_bias
        if weight is None or bias is None:
            return tokens
        return torch.nn.functional.linear(tokens, weight.to(tokens.dtype), bias.to(tokens.dtype))

    def _pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, C) in float32 (float64 for float64 input)."""
        compute_dtype = torch.float64 if tokens.dtype == torch.float64 else torch.float32
        # Plain NCHW is read as (B, C, N) in place, tokens as (B, N, C): no transpose copy.
        features, channel_dim = dense_layout(tokens.to(compute_dtype), 2)
        if self.projection is not None:
            features, channel_dim = self._project(token_view(features, channel_dim)), 2
        costs = prototype_costs(features, self.prototypes.to(compute_dtype), channel_dim, self.norm)
        plan = self.transport(costs)
        return self._mix(features, plan.weights, channel_dim)

    def _mix(self, features: torch.Tensor, weights: torch.Tensor, channel_dim: int) -> torch.Tensor:
        """Features (B, N, C) or (B, C, N) (``channel_dim`` 2 or 1) and weights (B, N) -> (B, C) by ``mix``."""
        if self.mix == "sum":
            return weighted_sum(features, weights, channel_dim)
        cells = 3 - channel_dim  # the dimension of the N cells
        if self.mix == "addmax":
            return weighted_sum(features, weights, channel_dim) + features.amax(cells)
        reweighted = features * (weights * weights.shape[1]).unsqueeze(channel_dim)  # m_j f_j
        if self.mix == "max":
            return reweighted.amax(cells)
        p = self.gem_p
        assert p is not None  # mix == "gem" has its exponent (TorchScript's Optional refinement)
        p = p.to(features.dtype)
        return reweighted.clamp_min(1e-6).pow(p).mean(cells).pow(1.0 / p)

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
        text = (
            f"in_chs={self.in_chs}, num_prototypes={self.num_prototypes}, input_fmt={self.input_fmt}, "
            f"num_prefix_tokens={self.num_prefix_tokens}, flatten={self.flatten}"
        )
        if self.border:
            text += f", border={self.border}"
        for key in ("mix", "project", "norm"):
            if getattr(self, key) != GSP_DEFAULTS[key]:
                text += f", {key}={getattr(self, key)}"
        return text + (f", grid_size={self.grid_size}" if self.grid_size is not None else "")


def gsp_modules(model: nn.Module) -> List[Tuple[str, GeneralizedSumPool]]:
    """All GSP pools in ``model`` as (qualified name, module) pairs, in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, GeneralizedSumPool)]


def place_on_grid(values: torch.Tensor, grid_size: Optional[Tuple[int, int]], border: int) -> torch.Tensor:
    """(..., M) values of the interior cells of an (H, W) grid -> (..., H * W), zero on the ``border``
    outer rings (row-major, as the pool flattens the grid); ``values`` itself when ``border`` is 0."""
    if not border:
        return values
    if grid_size is None:
        raise ValueError(f"border={border} needs the grid size to place values on the grid")
    height, width = grid_size
    full = values.new_zeros(*values.shape[:-1], height, width)
    full[..., border:height - border, border:width - border] = values.unflatten(-1, (height - 2 * border, width - 2 * border))
    return full.flatten(-2)


@dataclass
class CapturedPlan:
    """One GSP forward, as its transport saw it.

    Attributes:
        module_name: the pool's qualified name in the model.
        weights: (B, N) pooling weights of every cell of the grid, N = H * W (or of every patch token),
            zero on the border rings a pool with ``border > 0`` leaves out; each row sums to 1.
        attributes: (B, K) transported mass per prototype; each row sums to 1.
        grid_size: (H, W) of NCHW / NHWC input, or of tokens whose pool knows their grid; else None.
        costs: (B, K, M) the prototype costs that entered the transport, over the M cells it
            transported (M = N without a border); ``on_grid`` lays such values out like ``weights``.
        border: the pool's ``border``.
        features: (B, M, C) the transported local features (only with ``keep_features``), else None.
    """

    module_name: str
    weights: torch.Tensor
    attributes: torch.Tensor
    grid_size: Optional[Tuple[int, int]]
    costs: Optional[torch.Tensor] = None
    border: int = 0
    features: Optional[torch.Tensor] = None

    def on_grid(self, values: torch.Tensor) -> torch.Tensor:
        """(..., M) values of the transported cells -> (..., N) on the full grid, zero on the border."""
        return place_on_grid(values, self.grid_size, self.border)


class _PlanRecorder:
    """The hooks of one pool: the pool's forward pre-hook notes the input's grid (and features, on
    request), the forward hook of its ``transport`` hands the plan on as a ``CapturedPlan``.

    An object rather than closures: a hooked model still pickles and deep-copies, and the hooks hold
    only the callback (never the model, nor a loss that registered them).
    """

    def __init__(self, module_name: str, on_plan: Callable[[CapturedPlan], None], detach: bool, keep_features: bool):
        self.module_name = module_name
        self.on_plan = on_plan
        self.detach = detach
        self.keep_features = keep_features
        self.grid: Optional[Tuple[int, int]] = None
        self.border = 0
        self.features: Optional[torch.Tensor] = None

    def see_input(self, pool: GeneralizedSumPool, args: Tuple[torch.Tensor, ...]) -> None:
        x = args[0]
        self.grid, self.border = pool.input_grid(x), pool.border
        if self.keep_features:
            self.features = self._maybe_detach(pool._to_tokens(x))

    def see_plan(self, transport: nn.Module, args: Tuple[torch.Tensor, ...], plan: TransportPlan) -> None:
        weights = place_on_grid(self._maybe_detach(plan.weights), self.grid, self.border)
        features, self.features = self.features, None  # one forward's features: not kept past its record
        self.on_plan(CapturedPlan(self.module_name, weights, self._maybe_detach(plan.attributes), self.grid,
                                  self._maybe_detach(args[0]), self.border, features))

    def _maybe_detach(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach() if self.detach else tensor


def watch_transport(
        pools: Sequence[Tuple[str, GeneralizedSumPool]],
        on_plan: Callable[[CapturedPlan], None],
        detach: bool = True,
        keep_features: bool = False,
) -> List[RemovableHandle]:
    """Call ``on_plan(CapturedPlan)`` after every transport of these (name, pool) pairs, in call order.

    The one primitive behind every look at GSP's transport. Each pool gets a forward pre-hook and its
    ``transport`` one forward hook; remove the returned handles to stop.

    Args:
        detach: record detached tensors; ``False`` keeps the graph (the zero-shot loss
            back-propagates through the attributes).
        keep_features: also record the transported features (B, M, C).
    """
    handles: List[RemovableHandle] = []
    for name, pool in pools:
        recorder = _PlanRecorder(name, on_plan, detach, keep_features)
        handles.append(pool.register_forward_pre_hook(recorder.see_input))
        handles.append(pool.transport.register_forward_hook(recorder.see_plan))
    return handles


@contextlib.contextmanager
def capture_transport(model: nn.Module, detach: bool = True, keep_features: bool = False) -> Iterator[List[CapturedPlan]]:
    """Record the transport plan of every GSP forward inside the ``with`` block (see ``watch_transport``).

    Example::

        with capture_transport(model) as plans:
            model(images)
        heat = plans[-1].weights.view(-1, *plans[-1].grid_size)  # (B, H, W)
    """
    pools = gsp_modules(model)
    if not pools:
        raise ValueError(f"{type(model).__name__} has no GeneralizedSumPool module to capture")
    records: List[CapturedPlan] = []
    handles = watch_transport(pools, records.append, detach, keep_features)
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()
