"""The original's training pipeline, the reference the benchmark times the repository's own epoch against.

    naive_epoch("CANet", "shared")             # seconds and images/s of one epoch, as the original trained it
    naive_run("CANet_tiny", epochs=3, seed=0)  # a short run with it (lib.bench.agreement: naive vs lib.train)

It mirrors the ORIGINAL: a torchvision dataset (an image-folder copy such as the JPEG one: torchvision's
ImageFolder, which opens and decodes every image file each time it is read, our reading of how the original read
such a copy, which STUDY.md does not say; the official data: arrays in memory, as torchvision's CIFAR10 holds them),
per-image PIL transforms in a DataLoader with 4 worker processes, fp32, deterministic cuDNN without autotuning,
PyTorch's default optimiser kernels, a host sync per step (loss.item()), and a validation pass every 50 iterations
plus the end-of-epoch one, on images through the training transforms, as the original validated on augmented images
(NAIVE_VAL_TRANSFORMS). It is meant to be naive. Its data split (lib.train.split_data) and its MixUp/CutMix rule
(lib.augment.mix_batch, one decision per batch as the original; the CutMix box is lib.augment's, side int(32 *
sqrt(1 - lam)) before clipping) are the repository's own, so both pipelines train on the same images under the same
rule; the random draws differ. CANets are built as specified (per path, three ChannelAttention branches:
set_merged(model, False)).
"""
from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from lib.augment import mix_batch
from lib.config import NORMS, TrainConfig
from lib.data import CLASSES, DataError, image_files_root, is_image_file, load_cifar10
from lib.experiments import recipe_config
from lib.models import build, set_merged
from lib.train import backend_flags, lr_at, optimizer_at, resolve_device, split_data, sync

NAIVE_VAL_EVERY = 50  # the original validated every 50 iterations (and at the end of the epoch)
# The original validated on augmented images (STUDY.md section 1, a bug the study does not copy); we read that as
# its training augmentation (the usual cause: a validation split cut from the augmented training set). The naive
# epoch mirrors that cost ("train"); the agreement run's naive side validates on plain images ("eval"), as
# lib.train does.
NAIVE_VAL_TRANSFORMS = "train"


class ArrayDataset(torch.utils.data.Dataset):
    """torchvision-style dataset over uint8 arrays (N, 32, 32, 3): a PIL image per item, then `transform`."""

    def __init__(self, X: np.ndarray, y: np.ndarray, transform):
        self.X, self.y, self.transform = X, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.X[i])), int(self.y[i])


def naive_transforms(cfg: TrainConfig):
    """(train, eval) torchvision transforms of the recipe, applied one image at a time."""
    from torchvision import transforms as T

    mean, std = NORMS[cfg.norm]
    plain = [T.ToTensor(), T.Normalize(mean, std)]
    if not cfg.augment:
        return T.Compose(plain), T.Compose(plain)
    train = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), *plain,
                       T.RandomErasing(p=cfg.erase_p, scale=(0.04, 0.2), ratio=(0.5, 2.0), value=0)])
    return train, T.Compose(plain)


def _naive_validate(model: nn.Module, loader, criterion, device: torch.device) -> tuple[float, float]:
    """One pass over the validation loader, with a host sync per batch as the original; (loss, acc)."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = model(x)
            loss_sum += criterion(out, y).item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
            n += len(y)
    model.train()
    return loss_sum / max(n, 1), correct / max(n, 1)


def _naive_optimizer(kind: str, params, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """The recipe's optimiser with PyTorch's default kernels (the original's; lib.train uses fused ones)."""
    if kind in ("adamw", "adam"):
        cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
        return cls(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


class _Naive(NamedTuple):
    """The original's pipeline for one config: per-image PIL transforms in DataLoaders, an fp32 model."""

    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    model: nn.Module
    criterion: nn.Module
    mix_generator: torch.Generator
    info: dict


def _image_folder(root: Path, transform):
    """torchvision's ImageFolder over the files lib.data reads (the ten class folders in CLASSES order; .png/.jpg
    files that are not hidden, so no macOS litter such as ._0001.jpg): each opened and decoded when it is read."""
    from torchvision.datasets import ImageFolder

    class StudyImageFolder(ImageFolder):
        def find_classes(self, directory):
            return list(CLASSES), {name: i for i, name in enumerate(CLASSES)}

    # is_valid_file sees the whole path; lib.data reads images directly inside a class folder (class/file).
    return StudyImageFolder(root, transform,
                            is_valid_file=lambda path: is_image_file("/".join(Path(path).parts[-2:])))


def naive_datasets(cfg: TrainConfig, train_tf, eval_tf):
    """(train, val, kind, data info): the datasets of cfg's split as the original read them (see the module doc),
    with the transforms given; kind is what they read, 'files' (an image-folder copy's, each opened and decoded when
    read) or 'arrays' (decoded images in memory), which bench entries record as naive_dataset. The same images as
    lib.train.split_data's, in the same order: for an image-folder copy, torchvision's ImageFolder over its train/
    folder (_image_folder), subset by the images' indices, after a check that it finds each class's images in
    lib.data's class order and number (within a class folder both list the files sorted by name)."""
    data = load_cifar10(cfg.data_source)
    folder = image_files_root(data)
    if folder is None:
        X_tr, y_tr, X_val, y_val, *_ = split_data(cfg, data)
        return ArrayDataset(X_tr, y_tr, train_tf), ArrayDataset(X_val, y_val, eval_tf), "arrays", data.info
    # The split of the images' indices: split_data's rule applied to 0..N-1 instead of the images.
    i_tr, _, i_val, _, *_ = split_data(cfg, dataclasses.replace(data, X_train=np.arange(len(data.y_train))))
    train_set = _image_folder(folder / "train", train_tf)
    val_set = copy.copy(train_set)  # the same file list (one scan of the folder), its own transforms
    val_set.transform = eval_tf
    if train_set.targets != data.y_train.tolist():
        raise DataError(f"torchvision's ImageFolder finds other images in {folder / 'train'} than lib.data "
                        f"({len(train_set.targets)} against {len(data.y_train)}, or other counts per class): the naive "
                        f"pipeline could not read the same split; look for images deeper than <class>/<image>, or "
                        f"files changed while it ran")
    return (torch.utils.data.Subset(train_set, i_tr.tolist()), torch.utils.data.Subset(val_set, i_val.tolist()),
            "files", data.info)


def _naive_pipeline(cfg: TrainConfig, dev: torch.device, num_workers: int, seed: int,
                    val_transforms: str = "eval") -> _Naive:
    """Loaders over cfg's split and the freshly seeded model (call inside backend_flags). val_transforms:
    'eval' (plain images) or 'train' (the training transforms, as the original validated)."""
    if val_transforms not in ("train", "eval"):
        raise ValueError(f"val_transforms must be 'train' or 'eval', not {val_transforms!r}")
    train_tf, eval_tf = naive_transforms(cfg)
    eval_tf = train_tf if val_transforms == "train" else eval_tf
    train_set, val_set, kind, info = naive_datasets(cfg, train_tf, eval_tf)
    pin = dev.type == "cuda"
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True,
                                               num_workers=num_workers, pin_memory=pin,
                                               drop_last=len(train_set) % cfg.batch_size == 1)  # as lib.train: BN
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=cfg.batch_size,
                                             shuffle=False, num_workers=num_workers, pin_memory=pin)
    torch.manual_seed(seed)
    model = set_merged(build(cfg.model), False).to(dev)  # CANet as specified: per path, three SE branches
    return _Naive(train_loader, val_loader, model, nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
                  torch.Generator().manual_seed(seed),
                  dict(info, num_train=len(train_set), num_val=len(val_set), dataset=kind))


def _naive_train_epoch(p: _Naive, optimizer, cfg: TrainConfig, dev: torch.device, val_every: int | None) -> dict:
    """One epoch of the original's loop: per-step host syncs, a validation pass every `val_every` steps (None:
    none) and one at the end. Returns steps, val_passes, train_loss, train_acc, val_loss, val_acc."""
    p.model.train()
    running_loss, running_correct, steps, val_passes = 0.0, 0.0, 0, 0
    for i, (x, y) in enumerate(p.train_loader):
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        if cfg.augment:  # per batch, on the device batch (the same MixUp/CutMix as lib.augment's)
            x, y_a, y_b, lam = mix_batch(x, y, cfg.mixup_p, cfg.cutmix_p, cfg.mix_alpha, generator=p.mix_generator)
        else:
            y_a, y_b, lam = y, y, 1.0
        out = p.model(x)
        loss = lam * p.criterion(out, y_a) + (1 - lam) * p.criterion(out, y_b)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pred = out.argmax(1)
        running_loss += loss.item()  # the original's per-step host syncs
        running_correct += (lam * (pred == y_a).sum() + (1 - lam) * (pred == y_b).sum()).item()
        steps += 1
        if val_every and (i + 1) % val_every == 0:
            _naive_validate(p.model, p.val_loader, p.criterion, dev)
            val_passes += 1
    val_loss, val_acc = _naive_validate(p.model, p.val_loader, p.criterion, dev)
    n = len(p.train_loader.dataset)
    return {"steps": steps, "val_passes": val_passes + 1, "train_loss": running_loss / max(steps, 1),
            "train_acc": running_correct / max(n, 1), "val_loss": val_loss, "val_acc": val_acc}


def naive_epoch(model_name: str, data_source: str | None = None, device: str = "auto", *,
                num_train: int | None = None, num_val: int | None = None, num_workers: int = 4,
                val_every: int = NAIVE_VAL_EVERY, warmup_steps: int = 2, seed: int = 0,
                val_transforms: str = NAIVE_VAL_TRANSFORMS) -> dict:
    """Time one epoch of the original's pipeline for `model_name` (see the module doc); returns seconds, images/s.
    Its validation passes use `val_transforms` ('train': augmented, as the original's)."""
    dev = resolve_device(device)
    cfg = recipe_config(model_name, data_source, str(dev), num_train, num_val, seed)
    # PyTorch's defaults otherwise: fp32, cuDNN's TF32 on, matmul TF32 off; deterministic, no autotuning.
    with backend_flags(deterministic=True, benchmark=False, cudnn_tf32=True, matmul_tf32=False):
        p = _naive_pipeline(cfg, dev, num_workers, seed, val_transforms)
        optimizer = _naive_optimizer(optimizer_at(cfg, 0), p.model.parameters(), cfg, cfg.lr)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.lr_gamma)
        p.model.train()
        # Warm-up (untimed): CUDA context, cuBLAS/cuDNN handles. No optimiser step, so the weights stay (BatchNorm's
        # running statistics move with these random batches: the epoch's timing, not its accuracy, is used).
        for _ in range(warmup_steps):
            x = torch.randn(min(cfg.batch_size, p.info["num_train"]), 3, 32, 32, device=dev)
            p.criterion(p.model(x), torch.zeros(x.shape[0], dtype=torch.long, device=dev)).backward()
            optimizer.zero_grad(set_to_none=True)
        sync(dev)

        t0 = time.perf_counter()
        epoch = _naive_train_epoch(p, optimizer, cfg, dev, val_every)
        scheduler.step()
        sync(dev)
        seconds = time.perf_counter() - t0
    n = p.info["num_train"]
    return {"seconds": seconds, "images_per_s": n / seconds, "num_train": n, "num_val": p.info["num_val"],
            "batch_size": cfg.batch_size, "steps": epoch["steps"], "val_passes": epoch["val_passes"],
            "num_workers": num_workers, "train_loss": epoch["train_loss"], "val_acc": epoch["val_acc"],
            "val_transforms": val_transforms, "dataset": p.info["dataset"], "data": p.info.get("label")}


def naive_run(model_name: str, data_source: str | None = None, device: str = "auto", *, epochs: int = 3,
              seed: int = 0, num_train: int | None = None, num_val: int | None = None,
              num_workers: int = 4) -> dict:
    """Train `epochs` epochs of the model's recipe (compressed to that many epochs: the lr schedule and the
    optimiser switch of lib.train.lr_at / optimizer_at) with the original's pipeline, without the
    intermediate validation passes (they cost time, not accuracy). Returns per-epoch val_acc and seconds."""
    dev = resolve_device(device)
    cfg = recipe_config(model_name, data_source, str(dev), num_train, num_val, seed)
    cfg = cfg.replace(num_epochs=epochs, seed=seed)  # as fast_run: the BN protocol's fixed seed is replaced
    accs = []
    t0 = time.perf_counter()
    with backend_flags(deterministic=True, benchmark=False, cudnn_tf32=True, matmul_tf32=False):
        p = _naive_pipeline(cfg, dev, num_workers, seed)
        kind, optimizer = None, None
        for epoch in range(epochs):
            if optimizer_at(cfg, epoch) != kind:  # the recipe's switch: a fresh optimiser at the lr reached
                kind = optimizer_at(cfg, epoch)
                optimizer = _naive_optimizer(kind, p.model.parameters(), cfg, lr_at(cfg, epoch))
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, epoch)
            accs.append(_naive_train_epoch(p, optimizer, cfg, dev, None)["val_acc"])
        sync(dev)
    return {"val_acc": accs, "seconds": time.perf_counter() - t0, "num_train": p.info["num_train"],
            "num_val": p.info["num_val"], "dataset": p.info["dataset"], "data": p.info.get("label")}
