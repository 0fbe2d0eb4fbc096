"""CANet: the Convolution-and-Attention Network of the course project (STUDY.md section 2).

Six AttResBlocks, each running two parallel conv paths: one is re-weighted by CBAM-style spatial
attention (Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018), the other by a
multi-kernel ECA-style channel attention (Wang et al., "ECA-Net: Efficient Channel Attention for
Deep Convolutional Neural Networks", CVPR 2020). The attended maps then pass through one
`unit_transform` shared by both paths, which gates each path before they are summed with the
shortcut. The class is generic in the base width `w` and classifier hidden size `h`; the four
variants are data (`VARIANTS`).

To see the attention maps, hook the named submodules: `block.sa` / `block.se` expose
`attention(x)`, which returns the (B, 1, H, W) / (B, C, 1, 1) sigmoid map their forward applies, e.g.
`block.sa.register_forward_hook(lambda m, inp, out: maps.append(m.attention(inp[0])))`.

Parameter counts (checked by tests/test_models.py): CANet_tiny 396,155; CANet_light 1,576,244;
CANet 6,289,574; CANet_pro 25,128,842. The spec read literally gives these exact counts: every
conv is bias-free, the shortcut is conv + BN in every block (also the stride-1 ones, where it is a
3x3 conv, not an identity), each block has one BN per path plus one after the sum, and the head's
BatchNorm2d(4w) sits before the flatten.
"""
from __future__ import annotations

import os
from itertools import islice

import torch
import torch.nn.functional as F
from torch import nn

# name -> (w, h): base width and classifier hidden size.
VARIANTS = {
    "CANet_tiny": (16, 27),
    "CANet_light": (32, 54),
    "CANet": (64, 108),
    "CANet_pro": (128, 216),
}


class SpatialAttention(nn.Module):
    """CBAM-style spatial attention: x * sigmoid(conv([mean_c(x), max_c(x)]))."""

    def __init__(self, kernel_size: int, padding: int):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=padding, bias=False)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Return the (B, 1, H, W) sigmoid attention map for x of shape (B, C, H, W)."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)  # (B,2,H,W)
        return torch.sigmoid(self.conv(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return x re-weighted per pixel."""
        return x * self.attention(x)


class ChannelAttention(nn.Module):
    """Multi-kernel ECA channel attention: 1-D convs (kernels 3, 5, 7) over the pooled channel vector.

    The three conv outputs are mixed by learnable scalars `scales` (initialised to 1) and summed.
    """

    def __init__(self, kernel_sizes: tuple[int, ...] = (3, 5, 7)):
        super().__init__()
        # 'same' padding (k // 2 for odd k) keeps one weight per channel.
        self.convs = nn.ModuleList(nn.Conv1d(1, 1, k, padding=k // 2, bias=False) for k in kernel_sizes)
        self.scales = nn.Parameter(torch.ones(len(kernel_sizes)))
        self.merged: bool | None = None  # False: the branches one by one (set_merged); else one convolution

    def mixed_kernel(self) -> torch.Tensor:
        """The one (1, 1, k_max) kernel equal to the scaled sum of the branches: each branch's kernel is
        zero-padded to k_max on both sides (all are odd and centred), so conv(y, mixed) with padding k_max // 2
        is sum_i scales[i] * conv_i(y) exactly (convolution is linear in its kernel)."""
        k_max = max(conv.kernel_size[0] for conv in self.convs)
        kernels = torch.stack([F.pad(conv.weight, ((k_max - conv.kernel_size[0]) // 2,) * 2) for conv in self.convs])
        return (self.scales.view(-1, 1, 1, 1) * kernels).sum(0)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Return the (B, C, 1, 1) sigmoid channel weights for x of shape (B, C, H, W).

        The three branches run as one convolution with mixed_kernel(): one small kernel launch instead of
        three convolutions, three products and their sum (backward likewise); the same function. With
        self.merged False they run one by one, as the specification writes them (the naive benchmark)."""
        B, C = x.shape[0], x.shape[1]
        # The channel axis becomes the 1-D sequence axis: (B, C, H, W) -> (B, 1, C).
        y = x.mean(dim=(2, 3)).reshape(B, 1, C)
        if self.merged is False:
            branches = [s * conv(y) for s, conv in zip(self.scales, self.convs)]  # each (B, 1, C)
            return torch.sigmoid(torch.stack(branches).sum(0)).reshape(B, C, 1, 1)
        kernel = self.mixed_kernel()
        mixed = F.conv1d(y, kernel, padding=kernel.shape[-1] // 2)  # (B, 1, C)
        return torch.sigmoid(mixed).reshape(B, C, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return x re-weighted per channel."""
        return x * self.attention(x)


def _conv_path(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """One of the two parallel paths: conv3x3 -> ReLU -> conv3x3(stride) -> BN -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class AttResBlock(nn.Module):
    """Two parallel conv paths gated by SA and SE through one shared unit_transform, plus a shortcut.

    out = ReLU(BN(U(SA(a)) * a + U(SE(b)) * b + shortcut(x))), with a = path_a(x), b = path_b(x).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, sa_kernel: int, sa_padding: int):
        super().__init__()
        self.path_a = _conv_path(in_ch, out_ch, stride)
        self.path_b = _conv_path(in_ch, out_ch, stride)
        # The merged form (_forward_merged) runs both paths' first convolutions as one with the default stride and
        # dilation: they must share their settings, stride 1 among them.
        first = (self.path_a[0], self.path_b[0])
        assert all(getattr(first[0], k) == getattr(first[1], k) for k in ("kernel_size", "stride", "padding",
                                                                           "dilation")) and first[0].stride == (1, 1)
        self.sa = SpatialAttention(sa_kernel, sa_padding)
        self.se = ChannelAttention()
        # ONE module applied to both attended maps, so both paths are gated by the same transform.
        self.unit_transform = nn.Sequential(
            nn.Conv2d(out_ch, out_ch // 2, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch // 2, out_ch, 1, bias=False),
            nn.Sigmoid(),
        )
        # Stride 2 downsamples with a 2x2/2 conv; stride 1 uses a 3x3 conv (a learned shortcut, not identity).
        if stride == 1:
            shortcut_conv = nn.Conv2d(in_ch, out_ch, 3, stride=1, padding=1, bias=False)
        else:
            shortcut_conv = nn.Conv2d(in_ch, out_ch, 2, stride=stride, bias=False)
        self.shortcut = nn.Sequential(shortcut_conv, nn.BatchNorm2d(out_ch))
        self.bn = nn.BatchNorm2d(out_ch)
        self.merged: bool | None = None  # see merged_for; set for a whole model with set_merged
        self.side_stream = None  # a torch.cuda.Stream for path b in the merged form (set_side_stream); None: one stream

    def merged_for(self, x: torch.Tensor) -> bool:
        """Whether forward(x) runs the merged form: self.merged if set, else on CUDA inputs only."""
        return x.is_cuda if self.merged is None else self.merged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, in, H, W) to (B, out, H/stride, W/stride)."""
        if self.merged_for(x):
            return self._forward_merged(x)
        a = self.path_a(x)
        b = self.path_b(x)
        u_a = self.unit_transform(self.sa(a))
        u_b = self.unit_transform(self.se(b))
        return F.relu(self.bn(u_a * a + u_b * b + self.shortcut(x)))

    def _path_b_rest(self, first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Path b after its first convolution's output `first`, and SE of it: (b, SE(b))."""
        b = F.relu(first)  # path_b[1]
        for layer in islice(self.path_b, 2, None):
            b = layer(b)
        return b, self.se(b)

    def _forward_merged(self, x: torch.Tensor) -> torch.Tensor:
        """forward with fewer, larger convolutions, the same function of the same parameters:
        - the convolutions that read x with the same geometry (3x3, stride 1, padding 1: both paths' first
          convs and, in the stride-1 blocks, the shortcut's) run as one, on their concatenated weights;
        - the shared unit_transform runs once, on SA(a) and SE(b) stacked along the batch (it has no batch
          statistics, so each half is what it would be alone).
        A CANet forward pass then runs 45 convolutions instead of 66 (78 before ChannelAttention ran its branches
        as one), and backward as many fewer: on a GPU the small CANets are bound by the number of kernels, not
        by arithmetic. On a CPU the slicing and stacking cost more than they save (measured on the project's
        2-core CPU: a training step of CANet_tiny / CANet_light 9-17% slower), so merged_for chooses by device.
        Forward hooks on path_a, path_b, their first conv and ReLU, and (stride 1) the shortcut and its conv
        do not fire here, as those modules are not called; those on sa, se, unit_transform, the BatchNorms and
        the paths' later layers do. It relies on what _conv_path and __init__ build: bias-free convs, ReLU
        after each path's first conv (applied out of place: in place on a view of the merged output would
        break autograd)."""
        first_a, first_b, sc_conv = self.path_a[0], self.path_b[0], self.shortcut[0]
        with_shortcut = sc_conv.kernel_size == first_a.kernel_size and sc_conv.stride == first_a.stride \
            and sc_conv.padding == first_a.padding
        weights = [first_a.weight, first_b.weight] + ([sc_conv.weight] if with_shortcut else [])
        parts = F.conv2d(x, torch.cat(weights), padding=first_a.padding).split(first_a.out_channels, dim=1)
        side = self.side_stream if x.is_cuda else None
        if side is None:
            b, se_b = self._path_b_rest(parts[1])
        else:  # path b and its SE beside path a's kernels (an experiment: set_side_stream)
            side.wait_stream(torch.cuda.current_stream(side.device))
            with torch.cuda.stream(side):
                b, se_b = self._path_b_rest(parts[1])
        a = F.relu(parts[0])  # path_a[1]
        for layer in islice(self.path_a, 2, None):
            a = layer(a)
        # parts[2] is a channel slice: strided in every memory format. BatchNorm on it would fall back to
        # CUDA's generic kernels (measured on the H200: 0.39 ms per backward call for CANet_tiny, three per step,
        # 15% of the graphed step's kernel time), so it gets a dense copy in x's memory format first.
        shortcut = self.shortcut[1](_dense_like(parts[2], x)) if with_shortcut else self.shortcut(x)
        sa_a = self.sa(a)
        _rejoin(side, b, se_b)
        u_a, u_b = self.unit_transform(torch.cat([sa_a, se_b])).chunk(2)
        return F.relu(self.bn(u_a * a + u_b * b + shortcut))


def _rejoin(stream, *made_there: torch.Tensor) -> None:
    """Make the current stream wait for `stream`'s kernels, and keep the tensors made there from being reused
    before the current stream is done with them (None: nothing to do)."""
    if stream is None:
        return
    current = torch.cuda.current_stream(stream.device)
    current.wait_stream(stream)
    for t in made_there:
        t.record_stream(current)


def _dense_like(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`t` stored densely in the memory format of `like` (channels_last or contiguous)."""
    cl = like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous()
    return t.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


# (in multiple of w or 0 for the 3 RGB channels, out multiple of w, stride, SA kernel, SA padding)
_BLOCKS = [
    (0, 1, 1, 7, 3),
    (1, 1, 1, 7, 3),
    (1, 2, 2, 5, 2),
    (2, 2, 1, 5, 2),
    (2, 4, 2, 3, 1),
    (4, 4, 2, 3, 1),
]


class CANet(nn.Module):
    """CANet with base width `width` and classifier hidden size `hidden` for 32x32 inputs."""

    def __init__(self, width: int = 64, hidden: int = 108, num_classes: int = 10):
        super().__init__()
        self.blocks = nn.Sequential(*[
            AttResBlock(3 if cin == 0 else cin * width, cout * width, stride, k, p)
            for cin, cout, stride, k, p in _BLOCKS
        ])
        # Spatial size after the blocks is 32 / 8 = 4; pooled to 2x2 -> 4w * 4 = 16w features.
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(2),
            nn.BatchNorm2d(4 * width),
            nn.Flatten(),
            nn.Linear(16 * width, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images (B, 3, H, W) to logits (B, num_classes)."""
        return self.head(self.blocks(x))


MERGED_ENV = "CIFAR10_CANET_MERGED"  # how canet() builds: '1' merged, '0' as specified, unset or 'auto' by device
_MERGED_CHOICES = {"1": True, "0": False, "auto": None, "": None}


def set_merged(model: nn.Module, merged: bool | None) -> nn.Module:
    """Choose how the blocks of `model` run: True merged (AttResBlock._forward_merged, ChannelAttention in one
    convolution), False as the specification writes them (per path, three ChannelAttention branches: the
    original's structure, which the naive benchmark pipeline and the FLOP count use), None by device (blocks
    merged on CUDA; ChannelAttention in one convolution everywhere). All compute the same function of the
    same parameters. Returns `model`; a no-op for networks without these blocks."""
    for module in model.modules():
        if isinstance(module, (AttResBlock, ChannelAttention)):
            module.merged = merged
    return model


def set_side_stream(model: nn.Module, stream) -> nn.Module:
    """An experiment, off by default (`scripts/speed_probe.py ... --variants streams` times it): the merged
    blocks of `model` run path b and its channel attention on `stream` (a torch.cuda.Stream), beside path a, the
    shortcut and the spatial attention on the current stream; autograd runs their backward on the same streams.
    The function is the same; only the kernels' order between the two streams changes. None: one stream, as
    always. CPU inputs ignore it. Returns `model`. Meant for the CUDA-graphed step; with torch.compile (untried)
    the stream switch would likely break the graph. Not yet run on a GPU: tests/test_models.py has a CUDA-only
    check."""
    for module in model.modules():
        if isinstance(module, AttResBlock):
            module.side_stream = stream
    return model


def merged_from_env() -> bool | None:
    """The choice CIFAR10_CANET_MERGED makes for canet() (see set_merged), with a clear error for others."""
    value = os.environ.get(MERGED_ENV, "").strip().lower()
    if value not in _MERGED_CHOICES:
        raise ValueError(f"{MERGED_ENV}={value!r}: use 1 (merged blocks), 0 (as specified, per path) or auto "
                         f"(merged on CUDA; the default)")
    return _MERGED_CHOICES[value]


def blocks_merged(model: nn.Module, x: torch.Tensor) -> bool | None:
    """Whether `model`'s AttResBlocks run merged for inputs like `x` (None: a network without them)."""
    blocks = [m for m in model.modules() if isinstance(m, AttResBlock)]
    return any(b.merged_for(x) for b in blocks) if blocks else None


def merged_on_cuda() -> bool:
    """Whether canet() builds blocks that run merged on CUDA inputs, as CIFAR10_CANET_MERGED says now."""
    choice = merged_from_env()
    return True if choice is None else choice


def canet(name: str, num_classes: int = 10) -> CANet:
    """Build the CANet variant `name` (a key of VARIANTS)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown CANet variant {name!r}: choose one of {', '.join(VARIANTS)}")
    width, hidden = VARIANTS[name]
    return set_merged(CANet(width, hidden, num_classes), merged_from_env())
