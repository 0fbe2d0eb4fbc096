"""Model registry: every network of the study by name (STUDY.md sections 2, 3 and 6).

    model = build("CANet_tiny")          # a fresh nn.Module, 10 classes
    list_models()                        # all names, in the study's order
    PART1_MODELS                         # the nine Part 1 comparison models
    last_linear(model)                   # the classifier layer whose gradient range Part 2 records
    revision("CANet")                    # 2: which GPU kernels its forward runs (lib.bench re-times older timings)
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lib.config import PART1_MODELS  # defined there, where nothing imports torch (the CLI's help)

from . import baselines
from .canet import VARIANTS as CANET_VARIANTS
from .canet import CANet, canet, set_merged, set_side_stream
from .vgg import VGG_A, init_xavier_

# name -> builder(num_classes) -> nn.Module. Insertion order is the order list_models() reports.
_REGISTRY: dict[str, Callable[[int], nn.Module]] = {
    "CANet_tiny": lambda num_classes: canet("CANet_tiny", num_classes),
    "CANet_light": lambda num_classes: canet("CANet_light", num_classes),
    "CANet": lambda num_classes: canet("CANet", num_classes),
    "CANet_pro": lambda num_classes: canet("CANet_pro", num_classes),
    "ShuffleNetV2": baselines.shufflenet_v2,
    "MobileNetV2": baselines.mobilenet_v2,
    "ResNet18": baselines.resnet18,
    "ResNet34": baselines.resnet34,
    "VGG11": baselines.vgg11,
    "VGG_A": lambda num_classes: VGG_A(batch_norm=False, num_classes=num_classes),
    "VGG_A_BN": lambda num_classes: VGG_A(batch_norm=True, num_classes=num_classes),
}

# Bumped when a model's forward runs other kernels on a GPU (the same function, computed differently): bench
# entries record it, and lib.bench re-times an entry timed with an older one. 2: CANet's merged convolutions
# and one-convolution ChannelAttention (lib.models.canet.AttResBlock._forward_merged). Not bumped for the dense
# copy before the merged shortcut's BatchNorm (canet._dense_like, 2026-11-27): the H200 call that measured it
# re-timed the graphed CANet/CANet_tiny entries by hand; the compiled entries, the CANet graph check and the
# traces kept from before it (Inductor makes its own BatchNorm kernels; the copy does not change what a graph
# captures), where a bump would have re-timed every CANet in the next call.
REVISIONS = {name: 2 for name in CANET_VARIANTS}

__all__ = ["build", "list_models", "last_linear", "revision", "set_merged", "set_side_stream", "PART1_MODELS",
           "CANET_VARIANTS", "CANet", "VGG_A", "init_xavier_"]


def list_models() -> list[str]:
    """Return every model name that build() accepts, in the study's order."""
    return list(_REGISTRY)


def build(name: str, num_classes: int = 10) -> nn.Module:
    """Return a freshly initialised model `name` with `num_classes` outputs."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}: valid names are {', '.join(_REGISTRY)}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return _REGISTRY[name](num_classes)


def revision(name: str) -> int:
    """The implementation revision of model `name` (REVISIONS; 1 for a model never changed)."""
    return REVISIONS.get(name, 1)


def last_linear(model: nn.Module) -> nn.Linear:
    """Return the last nn.Linear of `model` in registration order (the classifier for every model here)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer: last_linear needs a linear classifier")
    return linears[-1]
