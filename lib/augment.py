"""Batched, on-device image augmentation for CIFAR-sized batches.

Every function works on a whole batch (N, C, H, W) at once, on CPU or CUDA tensors, without host
syncs (no .item()/.tolist() on device tensors, no boolean-mask indexing). All randomness comes from
a caller-supplied *CPU* ``torch.Generator``: the small per-image random numbers (flip bits, crop
offsets, erase boxes, the batch permutation) are drawn on the CPU and moved to the device with
``non_blocking=True``. The same seed therefore gives bit-identical draws on CPU and GPU, and a
training loop can reproduce an epoch's augmentation from its seed alone.

Each random augmentation is split into a draw (CPU, returns the parameters) and a deterministic
core that applies given parameters (``flip_crop_with``, ``erase_with``, ``apply_mix``), so tests can
check the maths against torchvision for fixed parameters.
"""
from __future__ import annotations

import math
import random
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "to_device_async",
    "to_float_normalized",
    "flip_crop",
    "flip_crop_with",
    "random_erasing",
    "random_erasing_boxes",
    "erase_with",
    "MixPlan",
    "draw_mix",
    "apply_mix",
    "mix_batch",
]


def _check_generator(generator) -> torch.Generator:
    """Refuse anything but a CPU torch.Generator (draws must be device-independent)."""
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}; "
                        "create one with torch.Generator().manual_seed(seed)")
    if generator.device.type != "cpu":
        raise ValueError(f"generator must live on the CPU (got {generator.device}): per-image draws are made "
                         "on the CPU so that CPU and GPU runs see identical random numbers")
    return generator


def _check_batch(x: torch.Tensor, name: str = "x") -> None:
    """Require an image batch (N, C, H, W)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be an image batch of shape (N, C, H, W), got {shape}")


def to_device_async(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a small CPU tensor to `device` without making the host wait for the GPU.

    To CUDA the tensor is first copied into pinned (page-locked) memory: a copy from pageable memory may
    wait for the stream's queued work, which would keep the host from launching the next step while the
    GPU finishes this one.
    """
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def _channel_stats(values, x: torch.Tensor, name: str) -> torch.Tensor:
    """Per-channel constants as a float32 (1, C, 1, 1) tensor on x's device."""
    t = torch.as_tensor(values, dtype=torch.float32)  # no copy when already a float32 tensor
    if t.numel() != x.shape[1]:
        raise ValueError(f"{name} has {t.numel()} values but the batch has {x.shape[1]} channels")
    # A CPU constant is copied once per call; callers that care (BatchLoader) pass device tensors.
    return t.to(x.device, non_blocking=True).reshape(1, -1, 1, 1)


def to_float_normalized(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (N, C, H, W) in [0, 255] -> float32 ((x / 255 - mean) / std), per channel."""
    _check_batch(x)
    if x.dtype != torch.uint8:
        raise ValueError(f"to_float_normalized expects uint8 images in [0, 255], got {x.dtype}")
    mean_t, std_t = _channel_stats(mean, x, "mean"), _channel_stats(std, x, "std")
    return x.to(torch.float32).div_(255.0).sub_(mean_t).div_(std_t)


# ---------------------------------------------------------------------------------------------
# Horizontal flip + padded random crop
# ---------------------------------------------------------------------------------------------

def flip_crop_with(x: torch.Tensor, flip: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor,
                   padding: int = 4) -> torch.Tensor:
    """Per image: hflip where flip[i], zero-pad by `padding`, crop H x W at (dy[i], dx[i]) of the padded image.

    Equals torchvision's ``crop(pad(hflip(img) if flip else img, padding), dy, dx, H, W)`` for each
    image. flip: bool (N,), dy/dx: integer (N,) in [0, 2 * padding]. The range is checked only for
    CPU parameters (checking device tensors would need a host sync); flip_crop passes CPU ones.
    Works for any dtype (uint8 or float); the output has x's dtype and shape.
    """
    _check_batch(x)
    n, c, h, w = x.shape
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    params = {"flip": flip, "dy": dy, "dx": dx}
    for name, t in params.items():
        if not isinstance(t, torch.Tensor) or t.shape != (n,):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a tensor of shape ({n},) (one value per image), got {got}")
    for name in ("dy", "dx"):
        t = params[name]
        if t.dtype.is_floating_point:
            raise ValueError(f"{name} must be an integer tensor, got {t.dtype}")
        if t.device.type == "cpu" and n and (int(t.min()) < 0 or int(t.max()) > 2 * padding):
            raise ValueError(f"{name} offsets must lie in [0, {2 * padding}] (2 * padding), "
                             f"got values in [{int(t.min())}, {int(t.max())}]")
    flip = to_device_async(flip.to(torch.bool), x.device)
    dy = to_device_async(dy.to(torch.int64), x.device)
    dx = to_device_async(dx.to(torch.int64), x.device)

    hp, wp = h + 2 * padding, w + 2 * padding
    xp = F.pad(x, (padding, padding, padding, padding))  # (N, C, Hp, Wp), zeros outside
    rows = torch.arange(h, device=x.device).unsqueeze(0) + dy.unsqueeze(1)  # (N, H) rows of the padded image
    cols = torch.arange(w, device=x.device).unsqueeze(0) + dx.unsqueeze(1)  # (N, W) cols of the padded *flipped* image
    # Padding is symmetric, so the padded flipped image is the flipped padded image: col c' -> Wp-1-c'.
    cols = torch.where(flip.unsqueeze(1), wp - 1 - cols, cols)
    index = (rows.unsqueeze(2) * wp + cols.unsqueeze(1)).reshape(n, 1, h * w)  # (N, 1, H*W) flat indices
    out = xp.reshape(n, c, hp * wp).gather(2, index.expand(n, c, h * w))  # (N, C, H*W)
    return out.reshape(n, c, h, w)


def flip_crop(x: torch.Tensor, padding: int = 4, *, generator: torch.Generator) -> torch.Tensor:
    """Per image: horizontal flip with p=0.5, then RandomCrop(H x W, padding) (offsets uniform in [0, 2*padding]).

    The padding is zeros in x's own values: give it the uint8 images, before normalising, as torchvision pads the
    PIL image (a padded pixel then normalises to -mean/std, as there); a normalised batch would be padded with
    its mean instead."""
    _check_batch(x)
    _check_generator(generator)
    n = x.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    # Both offsets in one draw: (2, N) integers in [0, 2 * padding], as torchvision's RandomCrop.
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)
    return flip_crop_with(x, flip, offsets[0], offsets[1], padding)


# ---------------------------------------------------------------------------------------------
# Random erasing
# ---------------------------------------------------------------------------------------------

def random_erasing_boxes(n: int, height: int, width: int, *, p: float = 0.5,
                         scale: tuple[float, float] = (0.04, 0.2), ratio: tuple[float, float] = (0.5, 2.0),
                         generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw erase decisions and boxes on the CPU: (apply bool (N,), boxes int64 (N, 4) = top, left, h, w).

    Sampling follows torchvision's RandomErasing: area fraction ~ U(scale), log aspect (h / w) ~
    U(log ratio), h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect)), top-left uniform
    over the positions that keep the box inside the image.

    Decision on torchvision's retries: torchvision redraws (up to 10 times, then gives up and leaves
    the image unchanged) when h >= H or w >= W. A per-image retry loop does not vectorise, so here
    h and w are clamped to [1, H - 1] and [1, W - 1] instead. For 32 x 32 images with the default
    scale and ratio this never triggers (the largest side is sqrt(0.2 * 1024 * 2) ~ 20.2 < 32), so
    the distribution equals torchvision's there; for extreme scale/ratio a clamped box is smaller
    than its drawn area. Boxes are drawn for every image (also where apply is False) so that the
    random stream does not depend on p.
    """
    _check_generator(generator)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"erase probability p must be in [0, 1], got {p}")
    if not (0.0 < scale[0] <= scale[1] <= 1.0):
        raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
    if not (0.0 < ratio[0] <= ratio[1]):
        raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
    if height < 2 or width < 2:
        raise ValueError(f"images must be at least 2 x 2 to erase a box inside them, got {height} x {width}")
    u = torch.rand(5, n, generator=generator, dtype=torch.float64)  # (5, N): apply, area, aspect, top, left
    apply = u[0] < p
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[1])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[2])
    h = torch.round(torch.sqrt(area * aspect)).to(torch.int64).clamp_(1, height - 1)
    w = torch.round(torch.sqrt(area / aspect)).to(torch.int64).clamp_(1, width - 1)
    # floor(u * (count)) is uniform over {0, ..., count - 1}; min() guards the u -> 1 rounding edge.
    top = torch.minimum(torch.floor(u[3] * (height - h + 1)).to(torch.int64), height - h)
    left = torch.minimum(torch.floor(u[4] * (width - w + 1)).to(torch.int64), width - w)
    return apply, torch.stack([top, left, h, w], dim=1)


def erase_with(x: torch.Tensor, apply: torch.Tensor, boxes: torch.Tensor, value: float = 0.0) -> torch.Tensor:
    """Set box (top, left, h, w) of image i to `value` in all channels where apply[i]; returns a new tensor."""
    _check_batch(x)
    n, _, h, w = x.shape
    if apply.shape != (n,) or boxes.shape != (n, 4):
        raise ValueError(f"apply must have shape ({n},) and boxes ({n}, 4), got {tuple(apply.shape)} "
                         f"and {tuple(boxes.shape)}")
    apply = to_device_async(apply.to(torch.bool), x.device)
    boxes = to_device_async(boxes.to(torch.int64), x.device)
    top, left, bh, bw = (boxes[:, k].reshape(n, 1, 1) for k in range(4))  # each (N, 1, 1)
    rows = torch.arange(h, device=x.device).reshape(1, h, 1)
    cols = torch.arange(w, device=x.device).reshape(1, 1, w)
    inside = (rows >= top) & (rows < top + bh) & (cols >= left) & (cols < left + bw)  # (N, H, W)
    mask = (inside & apply.reshape(n, 1, 1)).unsqueeze(1)  # (N, 1, H, W), broadcast over channels
    return x.masked_fill(mask, value)


def random_erasing(x: torch.Tensor, p: float = 0.5, scale: tuple[float, float] = (0.04, 0.2),
                   ratio: tuple[float, float] = (0.5, 2.0), value: float = 0.0, *,
                   generator: torch.Generator) -> torch.Tensor:
    """Per image with probability p, erase one random rectangle to `value` (torchvision RandomErasing after Normalize)."""
    _check_batch(x)
    n, _, h, w = x.shape
    apply, boxes = random_erasing_boxes(n, h, w, p=p, scale=scale, ratio=ratio, generator=generator)
    return erase_with(x, apply, boxes, value)


# ---------------------------------------------------------------------------------------------
# MixUp / CutMix (one decision per batch)
# ---------------------------------------------------------------------------------------------

class MixPlan(NamedTuple):
    """One batch's mixing decision, drawn on the CPU."""

    kind: str  # 'none' | 'mixup' | 'cutmix'
    lam: float  # weight of the original labels y; for CutMix already recomputed from the box
    perm: torch.Tensor  # int64 (N,) on the CPU: image i is mixed with image perm[i]
    box: tuple[int, int, int, int]  # CutMix rows [y0, y1) and cols [x0, x1); (0, 0, 0, 0) otherwise


def draw_mix(n: int, height: int, width: int, *, mixup_p: float = 0.3, cutmix_p: float = 0.3,
             alpha: float = 0.5, generator: torch.Generator) -> MixPlan:
    """Draw the per-batch mixing decision: MixUp with prob mixup_p, else CutMix with prob cutmix_p, else none.

    The two probabilities are exclusive branches of one uniform draw u: u < mixup_p -> MixUp,
    u < mixup_p + cutmix_p -> CutMix, otherwise unmixed. With the defaults P(MixUp) = 0.3,
    P(CutMix) = 0.3, P(none) = 0.4 (not 0.3 and then 0.3 of the remaining 0.7).
    """
    _check_generator(generator)
    if mixup_p < 0 or cutmix_p < 0 or mixup_p + cutmix_p > 1 + 1e-12:
        raise ValueError(f"mixup_p and cutmix_p are exclusive probabilities: each must be >= 0 and their sum <= 1, "
                         f"got {mixup_p} and {cutmix_p}")
    if alpha <= 0:
        raise ValueError(f"mix alpha (Beta parameter) must be > 0, got {alpha}")
    # Always draw the same amount (u, a Beta seed, perm, box centre) so the stream is branch-independent.
    u, cy, cx = torch.rand(3, generator=generator, dtype=torch.float64).tolist()  # CPU tensor: no device sync
    # torch has no generator-aware Beta sampler; seed Python's one from the torch generator instead.
    beta_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    lam = random.Random(beta_seed).betavariate(alpha, alpha)
    perm = torch.randperm(n, generator=generator)
    if u < mixup_p:
        return MixPlan("mixup", lam, perm, (0, 0, 0, 0))
    if u < mixup_p + cutmix_p:
        # Box of side sqrt(1 - lam) * size, centre uniform over pixels, clipped to the image.
        cut = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * cut), int(width * cut)
        cy_i, cx_i = min(int(cy * height), height - 1), min(int(cx * width), width - 1)
        y0, x0 = max(cy_i - cut_h // 2, 0), max(cx_i - cut_w // 2, 0)
        y1, x1 = min(cy_i - cut_h // 2 + cut_h, height), min(cx_i - cut_w // 2 + cut_w, width)
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)  # the label weight is the area actually kept
        return MixPlan("cutmix", lam, perm, (y0, y1, x0, x1))
    return MixPlan("none", 1.0, perm, (0, 0, 0, 0))


def apply_mix(x: torch.Tensor, y: torch.Tensor, plan: MixPlan) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Apply a MixPlan: returns (x, y, y_b, lam); unmixed batches come back unchanged with y_b = y, lam = 1.0."""
    _check_batch(x)
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have one label per image, shape ({x.shape[0]},), got {tuple(y.shape)}")
    if plan.kind == "none":
        return x, y, y, 1.0
    perm = to_device_async(plan.perm, x.device)
    y_b = y[perm]
    if plan.kind == "mixup":
        if not x.dtype.is_floating_point:
            raise ValueError(f"MixUp needs a float batch (mix after normalising), got {x.dtype}")
        return plan.lam * x + (1.0 - plan.lam) * x[perm], y, y_b, plan.lam
    if plan.kind == "cutmix":
        y0, y1, x0, x1 = plan.box
        out = x.clone()
        out[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]  # paste the partner's patch: (N, C, y1-y0, x1-x0)
        return out, y, y_b, plan.lam
    raise ValueError(f"unknown mix kind {plan.kind!r}: expected 'none', 'mixup' or 'cutmix'")


def mixed_loss(out: torch.Tensor, y: torch.Tensor, y_b: torch.Tensor, lam, rest=None,
               label_smoothing: float = 0.0) -> torch.Tensor:
    """The loss of a (possibly mixed) batch: lam * CE(out, y) + rest * CE(out, y_b), rest = 1 - lam. With a float
    lam and no rest, an unmixed batch (lam = 1) is CE(out, y) alone; with rest given (0-d tensors a CUDA graph
    reads, lib.step_graph) both terms always, which for lam = 1, rest = 0 is CE(out, y) to the bit."""
    loss = F.cross_entropy(out, y, label_smoothing=label_smoothing)
    if rest is None:
        if lam >= 1.0:
            return loss
        rest = 1 - lam
    return lam * loss + rest * F.cross_entropy(out, y_b, label_smoothing=label_smoothing)


def mixed_accuracy(out: torch.Tensor, y: torch.Tensor, y_b: torch.Tensor, lam, rest=None) -> torch.Tensor:
    """Accuracy of a (possibly mixed) batch, each target weighted as in mixed_loss: a 0-d tensor."""
    pred = out.argmax(1)
    rest = 1 - lam if rest is None else rest
    return lam * (pred == y).float().mean() + rest * (pred == y_b).float().mean()


def mix_batch(x: torch.Tensor, y: torch.Tensor, mixup_p: float = 0.3, cutmix_p: float = 0.3, alpha: float = 0.5,
              *, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Per batch: MixUp (prob mixup_p) or CutMix (prob cutmix_p, exclusive) or nothing -> (x, y, y_b, lam).

    The loss of the returned batch is lam * CE(x, y) + (1 - lam) * CE(x, y_b); y_b = y[perm].
    """
    _check_batch(x)
    n, _, h, w = x.shape
    plan = draw_mix(n, h, w, mixup_p=mixup_p, cutmix_p=cutmix_p, alpha=alpha, generator=generator)
    return apply_mix(x, y, plan)
