"""PlainCNN: a small VGG-style timm model that keeps full resolution in its first stage.

For retrieval trained from scratch on small images (a folder of 96 px pictures, no pretrained
weights), where the object that names the class may be 20 px across: timm's small ResNets reduce
the input 4x in their stem before any block sees it, so such an object is a few cells wide by
the first stage. PlainCNN runs its first stage at the input's resolution and halves it with a
2 x 2 max-pool after every stage (VGG's layout, Simonyan & Zisserman 2015, without its MLP head).

    (B, 3, H, W) -> stage 1 at H x W -> pool -> stage 2 at H/2 -> pool -> stage 3 at H/4 -> pool
                 -> forward_features (B, channels[-1], H/8, W/8) -> timm ClassifierHead

Each stage is ``depth`` 3 x 3 convs with BatchNorm and ReLU (timm's ``ConvNormAct``). The head is
timm's ``ClassifierHead``, so every timm pool type (``global_pool="gsp"`` too) applies. Registered
with timm when ``timm_gsp`` is imported:

* ``plain_cnn6``: channels 32-64-128, two convs per stage (0.29 M parameters; output stride 8).
"""
# No ``from __future__ import annotations``: FX copies the string annotations of ``forward`` into the traced
# code, which TorchScript then cannot resolve (timm's test of FX-traced, scripted models).
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, ConvNormAct
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

__all__ = ["PlainCNN"]


class PlainCNN(nn.Module):
    """Stages of ``depth`` 3 x 3 conv-BN-ReLU, each followed by a 2 x 2 max-pool; timm's classifier head."""

    def __init__(
            self,
            channels: Sequence[int] = (32, 64, 128),
            depth: int = 2,
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: str = "avg",
            drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        stages: List[nn.Module] = []
        self.feature_info = []
        width = in_chans
        for index, out in enumerate(channels):
            convs = [ConvNormAct(width if i == 0 else out, out, 3) for i in range(depth)]
            stages.append(nn.Sequential(*convs, nn.MaxPool2d(2)))
            self.feature_info.append(dict(num_chs=out, reduction=2 ** (index + 1), module=f"stages.{index}"))
            width = out
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = width
        self.head = ClassifierHead(width, num_classes, pool_type=global_pool, drop_rate=drop_rate)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r"^stages\.0", blocks=r"^stages\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        assert not enable, "gradient checkpointing not supported"

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_features, H / 2^stages, W / 2^stages)"""
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, num_features, h, w) -> (B, num_classes), or the pooled (B, num_features) with ``pre_logits``"""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {"url": "", "num_classes": 1000, "input_size": (3, 96, 96), "pool_size": (12, 12), "crop_pct": 1.0,
            "interpolation": "bilinear", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
            "first_conv": "stages.0.0.conv", "classifier": "head.fc", **kwargs}


default_cfgs = generate_default_cfgs({"plain_cnn6": _cfg()})


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> PlainCNN:
    every_stage = tuple(range(len(kwargs["channels"])))  # features_only's default: each stage's output
    return build_model_with_cfg(PlainCNN, variant, pretrained,
                                feature_cfg=dict(flatten_sequential=True, out_indices=every_stage), **kwargs)


@register_model
def plain_cnn6(pretrained: bool = False, **kwargs: Any) -> PlainCNN:
    """Six 3 x 3 convs, 32-64-128 channels, the first two at full resolution; output stride 8."""
    return _create("plain_cnn6", pretrained, **dict(dict(channels=(32, 64, 128), depth=2), **kwargs))
