"""Part 1 baselines: torchvision architectures (no pretrained weights) adapted to 32x32 CIFAR-10.

The adaptations are exactly those of STUDY.md section 3; everything else is torchvision's model.
The classifier is sized through torchvision's `num_classes` argument rather than swapped after
construction, so it gets the family's own initialisation. Where a stem conv is replaced, the new
conv is initialised the way torchvision initialises that family's other convs (Kaiming normal,
fan_out), so the whole network follows one scheme instead of mixing in PyTorch's default init.
"""
from __future__ import annotations

from torch import nn
from torchvision import models as tvm


def _stem_conv(out_ch: int) -> nn.Conv2d:
    """Return a 3x3 stride-1 bias-free conv 3 -> out_ch, Kaiming-normal (fan_out) like torchvision."""
    conv = nn.Conv2d(3, out_ch, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def shufflenet_v2(num_classes: int = 10) -> nn.Module:
    """ShuffleNetV2 x0.5 with only the final fc resized (ImageNet stem kept): 352,042 parameters."""
    return tvm.shufflenet_v2_x0_5(weights=None, num_classes=num_classes)


def mobilenet_v2(num_classes: int = 10) -> nn.Module:
    """MobileNetV2 with a stride-1 3x3 first conv (3 -> 32) and a num_classes classifier: 2,236,682 parameters."""
    model = tvm.mobilenet_v2(weights=None, num_classes=num_classes)
    # features[0] is Conv2dNormActivation(conv, BN, ReLU6); only the conv's stride changes (2 -> 1).
    model.features[0][0] = _stem_conv(32)
    return model


def _resnet_cifar(model: nn.Module) -> nn.Module:
    """Swap the ImageNet stem (7x7/2 conv + max-pool) for a 3x3/1 conv and no pooling."""
    model.conv1 = _stem_conv(64)
    model.maxpool = nn.Identity()
    return model


def resnet18(num_classes: int = 10) -> nn.Module:
    """ResNet-18 with a CIFAR stem (3x3/1 conv, no max-pool): 11,173,962 parameters."""
    return _resnet_cifar(tvm.resnet18(weights=None, num_classes=num_classes))


def resnet34(num_classes: int = 10) -> nn.Module:
    """ResNet-34 with a CIFAR stem (3x3/1 conv, no max-pool): 21,282,122 parameters."""
    return _resnet_cifar(tvm.resnet34(weights=None, num_classes=num_classes))


def vgg11(num_classes: int = 10) -> nn.Module:
    """VGG-11 (no BN) with only the last classifier layer resized: 128,807,306 parameters.

    On 32x32 input the features end at 1x1 and torchvision's AdaptiveAvgPool2d(7) replicates that
    to 7x7, so the 4096-wide ImageNet classifier (most of the parameters) is kept unchanged.
    """
    return tvm.vgg11(weights=None, num_classes=num_classes)
