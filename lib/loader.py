"""A batch loader over a whole dataset that already sits on the training device.

CIFAR-10 is small (50,000 x 3 x 32 x 32 uint8 = 150 MB), so the images are decoded once, kept
on the device as uint8 NCHW, and every batch is indexed, augmented and normalised there
(lib/augment.py). No worker processes, no per-step host syncs.

Reproducibility: all randomness of an epoch (the order and every augmentation draw) comes from
one CPU generator seeded from (seed, epoch) when iteration starts. Call ``set_epoch(epoch)``
before each epoch, as with DistributedSampler; a run resumed at epoch k then sees exactly the
batches it would have seen without the interruption. Without set_epoch every pass repeats epoch 0.
"""
from __future__ import annotations

import hashlib
from typing import Iterator, NamedTuple

import torch

from lib.augment import to_device_async, apply_mix, draw_mix, erase_with, flip_crop, random_erasing_boxes, to_float_normalized

__all__ = ["Batch", "BatchLoader", "epoch_generator"]


class Batch(NamedTuple):
    """One training/evaluation batch; loss = lam * CE(x, y) + (1 - lam) * CE(x, y_b)."""

    x: torch.Tensor  # float32 (B, C, H, W), normalised (and augmented when training)
    y: torch.Tensor  # int64 (B,) labels of the images
    y_b: torch.Tensor  # int64 (B,) labels of the mixing partners; the same object as y when unmixed
    lam: float  # weight of y; 1.0 when unmixed


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator whose state depends only on (seed, epoch)."""
    # Hash rather than seed + epoch, so that (seed=0, epoch=1) and (seed=1, epoch=0) differ.
    digest = hashlib.sha256(f"batchloader:{int(seed)}:{int(epoch)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


class BatchLoader:
    """Iterate over (X, y) on their device in batches, optionally shuffled and augmented.

    X: uint8 (N, C, H, W) images on the target device; y: int64 (N,) labels on the same device.
    augment=True (training): flip + 4-pixel-pad crop on uint8, normalise, random erasing with
    probability erase_p (value 0 on the normalised image), then per-batch MixUp/CutMix with
    exclusive probabilities mixup_p/cutmix_p. augment=False (validation/test): only normalise;
    mixup_p/cutmix_p/erase_p are then ignored, so evaluation data is never augmented.
    """

    def __init__(self, X: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = False,
                 augment: bool = False, erase_p: float = 0.5, mixup_p: float = 0.0, cutmix_p: float = 0.0,
                 mix_alpha: float = 0.5, mean, std, seed: int = 0, drop_last: bool = False,
                 channels_last: bool = False):
        if not isinstance(X, torch.Tensor) or X.dim() != 4 or X.dtype != torch.uint8:
            got = f"{X.dtype} {tuple(X.shape)}" if isinstance(X, torch.Tensor) else type(X).__name__
            raise ValueError(f"X must be a uint8 tensor of shape (N, C, H, W) (convert NHWC numpy arrays with "
                             f"torch.from_numpy(X).permute(0, 3, 1, 2)), got {got}")
        if not isinstance(y, torch.Tensor) or y.shape != (X.shape[0],) or y.dtype != torch.int64:
            got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"y must be an int64 tensor with one label per image, shape ({X.shape[0]},), got {got}")
        if y.device != X.device:
            raise ValueError(f"X and y must be on the same device, got {X.device} and {y.device}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not 0.0 <= erase_p <= 1.0:
            raise ValueError(f"erase_p must be in [0, 1], got {erase_p}")
        if mixup_p < 0 or cutmix_p < 0 or mixup_p + cutmix_p > 1:
            raise ValueError(f"mixup_p and cutmix_p are exclusive probabilities: each >= 0 and sum <= 1, "
                             f"got {mixup_p} and {cutmix_p}")
        self.X, self.y = X, y
        self.batch_size = batch_size
        self.shuffle, self.augment, self.drop_last = shuffle, augment, drop_last
        self.erase_p, self.mixup_p, self.cutmix_p, self.mix_alpha = erase_p, mixup_p, cutmix_p, mix_alpha
        self.seed, self.epoch = seed, 0
        self.channels_last = channels_last
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.numel() != X.shape[1] or std_t.numel() != X.shape[1]:
            raise ValueError(f"mean and std need one value per channel ({X.shape[1]}), "
                             f"got {mean_t.numel()} and {std_t.numel()}")
        if bool((std_t <= 0).any()):
            raise ValueError(f"std must be positive, got {std_t.tolist()}")
        # Copied to the device once here, so that normalising a batch needs no host-to-device copy.
        self._mean = mean_t.reshape(1, -1, 1, 1).to(X.device)
        self._std = std_t.reshape(1, -1, 1, 1).to(X.device)

    @property
    def num_samples(self) -> int:
        """Number of images in the dataset (including any dropped by drop_last)."""
        return self.X.shape[0]

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration reproduces."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[Batch]:
        """Yield the epoch's batches; the random stream is restarted from (seed, epoch) every time."""
        generator = epoch_generator(self.seed, self.epoch)
        n, device = self.num_samples, self.X.device
        order = to_device_async(torch.randperm(n, generator=generator), device) if self.shuffle else None
        for b in range(len(self)):
            start, stop = b * self.batch_size, min((b + 1) * self.batch_size, n)
            if order is None:
                xb, yb = self.X[start:stop], self.y[start:stop]
            else:
                idx = order[start:stop]  # (B,) on the device
                xb, yb = self.X.index_select(0, idx), self.y.index_select(0, idx)
            y_b, lam = yb, 1.0
            if self.augment:
                xb = to_float_normalized(flip_crop(xb, 4, generator=generator), self._mean, self._std)
                bsz, _, h, w = xb.shape
                # Drawn even when erase_p == 0 so that the random stream does not depend on erase_p.
                apply, boxes = random_erasing_boxes(bsz, h, w, p=self.erase_p, generator=generator)
                if self.erase_p > 0:
                    xb = erase_with(xb, apply, boxes, 0.0)
                if self.mixup_p > 0 or self.cutmix_p > 0:
                    plan = draw_mix(bsz, h, w, mixup_p=self.mixup_p, cutmix_p=self.cutmix_p,
                                    alpha=self.mix_alpha, generator=generator)
                    xb, yb, y_b, lam = apply_mix(xb, yb, plan)
            else:
                xb = to_float_normalized(xb, self._mean, self._std)
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yield Batch(xb, yb, y_b, lam)
