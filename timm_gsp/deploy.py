"""Deploying a GSP model: ``torch.export`` programs and ONNX files checked with onnxruntime.

The GSP threshold solver (``layers.transport.solve_threshold``) stops early in eager mode once every row
has converged; that check reads a tensor's value, which a traced graph cannot. Under
``torch.compile`` and ``torch.export`` (and so ONNX export, which runs ``torch.export``)
``torch.compiler.is_compiling()`` is true and the solver runs its fixed ``MAX_SOLVER_ITERS``
iterations instead. Converged rows are frozen by the iteration itself, so the exported graph
gives the eager result for any input, not only for the example it was traced with.

``channels_last`` needs nothing special: ``model.to(memory_format=torch.channels_last)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .models.model_config import RetrievalModelConfig, evaluation_data_config, parse_input_size
from .timm_plugin import model_input_size
from .utils import PathLike

__all__ = ["example_input", "export_onnx", "export_program", "onnx_max_error"]

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"


def example_input(
        model: nn.Module,
        input_size: Union[None, int, Sequence[int], Mapping[str, Any], RetrievalModelConfig] = None,
        batch_size: int = 2,
        seed: int = 0,
) -> torch.Tensor:
    """A random (batch_size, C, H, W) batch at the size the model is built for, on its device.

    Args:
        input_size: ``(C, H, W)``, ``(H, W)`` or an int; or the model's ``RetrievalModelConfig``
            or evaluation data config, whose size it is. Default: ``timm_plugin.model_input_size``
            (the size timm reports the model is built for; on timm < 1.0.31 its ``pretrained_cfg``,
            so a model built with another ``img_size`` needs its description here).
        batch_size: >= 2: ``torch.export`` specialises a dimension of size 1.
    """
    reference = next(model.parameters())
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, *_input_size(model, input_size), generator=generator)
    return images.to(device=reference.device, dtype=reference.dtype)


def _input_size(model: nn.Module, given: Any) -> Tuple[int, int, int]:
    if isinstance(given, RetrievalModelConfig):
        given = evaluation_data_config(model, given)
    if isinstance(given, Mapping):
        given = given.get("input_size")
    if given is None:
        return model_input_size(model)
    return parse_input_size(given, channels=model_input_size(model)[0])


def _batch_dynamic_shapes(dynamic_batch: bool):
    # min=1: a deployment serves single images too; the example batch must still be >= 2.
    return ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None


def export_program(
        model: nn.Module,
        example: Optional[torch.Tensor] = None,
        *,
        dynamic_batch: bool = True,
) -> torch.export.ExportedProgram:
    """``torch.export`` of the model in eval mode: ``(B, C, H, W) -> (B, embed_dim)``.

    Args:
        example: input to trace with (default ``example_input(model)``).
        dynamic_batch: the batch size is symbolic; H and W stay those of ``example``.
    """
    model = model.eval()
    example = example_input(model) if example is None else example
    return torch.export.export(model, (example,), dynamic_shapes=_batch_dynamic_shapes(dynamic_batch))


def export_onnx(
        model: nn.Module,
        path: PathLike,
        example: Optional[torch.Tensor] = None,
        *,
        dynamic_batch: bool = True,
        verify: bool = True,
        atol: float = 1e-4,
) -> Path:
    """Write an ONNX file of the model (input ``images``, output ``embeddings``) through the
    dynamo exporter, and, with ``verify``, check it with onnxruntime against PyTorch.

    Args:
        model: a GSP model or an ``ExportedProgram`` of one (then ``example`` is required to verify).
        dynamic_batch: symbolic batch size.
        atol: largest allowed absolute difference of the embeddings.

    Raises:
        AssertionError: onnxruntime's output differs from PyTorch's by more than ``atol``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(model, torch.export.ExportedProgram):
        program, reference = model, model.module()
        onnx_program = torch.onnx.export(program, dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    else:
        reference = model.eval()
        example = example_input(model) if example is None else example
        onnx_program = torch.onnx.export(
            model, (example,), dynamo=True, dynamic_shapes=_batch_dynamic_shapes(dynamic_batch),
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        )
    onnx_program.save(str(path))
    if verify:
        if example is None:
            raise ValueError("verifying an ExportedProgram's ONNX file needs the example input")
        error = onnx_max_error(path, reference, [example])
        if error > atol:
            raise AssertionError(f"onnxruntime differs from PyTorch by {error:.3g} > atol={atol:g} on {path}")
    return path


@torch.no_grad()
def onnx_max_error(path: PathLike, model: nn.Module, inputs: Sequence[torch.Tensor]) -> float:
    """Largest absolute difference between onnxruntime (CPU) and PyTorch over ``inputs``."""
    import onnxruntime  # optional dependency: pip install timm-gsp[export]

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    worst = 0.0
    for images in inputs:
        expected = model(images).float().cpu()
        (got,) = session.run(None, {input_name: images.cpu().numpy()})
        worst = max(worst, float((torch.from_numpy(got) - expected).abs().max()))
    return worst
