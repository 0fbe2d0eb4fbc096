"""VGG-A (Simonyan & Zisserman, "Very Deep Convolutional Networks", ICLR 2015, configuration A)
for 32x32 inputs, with or without BatchNorm: the Part 2 network (STUDY.md section 6).

Parameter counts: 9,750,922 without BN, 9,756,426 with BN (one BatchNorm2d after every conv).
"""
from __future__ import annotations

import torch
from torch import nn

# Conv output widths; "M" is a 2x2 max-pool. Five pools take 32x32 down to 1x1.
CONFIG_A = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class VGG_A(nn.Module):
    """VGG-A: 3x3 convs (with bias) + ReLU, optional BN before each ReLU, and a 512-512-10 classifier."""

    def __init__(self, batch_norm: bool = False, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in CONFIG_A:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            # The conv keeps its bias even with BN, as in the original (BN makes it redundant, not harmful).
            layers.append(nn.Conv2d(in_ch, v, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            in_ch = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images (B, 3, 32, 32) to logits (B, num_classes)."""
        x = self.features(x)  # (B, 512, 1, 1)
        return self.classifier(torch.flatten(x, 1))  # flatten reshapes, so channels_last input works


def init_xavier_(model: nn.Module) -> nn.Module:
    """Xavier-normal conv/linear weights, zero biases, BN weight 1 and bias 0, in place; returns model."""
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model
