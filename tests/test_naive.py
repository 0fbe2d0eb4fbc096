"""The original's pipeline (lib.naive): its transforms, datasets (an image-folder copy's files, read as the original
read them), validation and per-batch mixing, and its short runs for the agreement check."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import lib.naive as N
import lib.train as T
from lib.experiments import recipe_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_naive_transforms_are_the_originals_per_image_pipeline(tiny_source):
    train_tf, eval_tf = N.naive_transforms(recipe_config("CANet", tiny_source))
    names = [type(t).__name__ for t in train_tf.transforms]
    assert names == ["RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize", "RandomErasing"]
    assert train_tf.transforms[0].padding == 4 and train_tf.transforms[4].scale == (0.04, 0.2)
    assert [type(t).__name__ for t in eval_tf.transforms] == ["ToTensor", "Normalize"]
    bn_train, _ = N.naive_transforms(recipe_config("VGG_A", tiny_source))
    assert [type(t).__name__ for t in bn_train.transforms] == ["ToTensor", "Normalize"]  # Part 2: no augmentation


def test_naive_validation_goes_through_the_training_transforms_as_the_originals(tiny_source):
    cfg = recipe_config("CANet_tiny", tiny_source, "cpu", num_train=16, num_val=8)
    names = lambda loader: [type(t).__name__ for t in loader.dataset.dataset.transform.transforms]  # noqa: E731
    timed = N._naive_pipeline(cfg, torch.device("cpu"), 0, 0, N.NAIVE_VAL_TRANSFORMS)
    assert N.NAIVE_VAL_TRANSFORMS == "train" and names(timed.val_loader) == names(timed.train_loader)
    assert "RandomErasing" in names(timed.val_loader)
    plain = N._naive_pipeline(cfg, torch.device("cpu"), 0, 0)  # the agreement run's: plain images
    assert names(plain.val_loader) == ["ToTensor", "Normalize"]
    with pytest.raises(ValueError, match="'train' or 'eval'"):
        N._naive_pipeline(cfg, torch.device("cpu"), 0, 0, "augmented")
    naive = N.naive_epoch("ShuffleNetV2", tiny_source, "cpu", num_train=16, num_val=8, num_workers=0, warmup_steps=0)
    assert naive["val_transforms"] == "train" and naive["dataset"] == "files"


def test_naive_datasets_read_the_image_files_of_the_same_split(tiny_source, tmp_path, monkeypatch):
    import tarfile

    from torchvision.datasets import ImageFolder

    from lib.data import DataError, image_files_root, load_cifar10

    cfg = recipe_config("CANet_tiny", tiny_source, "cpu", num_train=50, num_val=6)
    plain, _ = N.naive_transforms(recipe_config("VGG_A", tiny_source))  # ToTensor + Normalize: exact pixels
    train, val, kind, info = N.naive_datasets(cfg, plain, plain)
    assert kind == "files" and info["kind"] == "image-folder"
    assert isinstance(train.dataset, ImageFolder) and isinstance(val.dataset, ImageFolder)
    X_tr, y_tr, X_val, y_val, *_ = T.split_data(cfg)
    for files, X, y in ((train, X_tr, y_tr), (val, X_val, y_val)):
        assert len(files) == len(y) == (50 if files is train else 6)
        arrays = N.ArrayDataset(X, y, plain)
        for i in range(len(y)):  # the same images, in the same order, with the same labels
            (a, la), (b, lb) = files[i], arrays[i]
            assert la == lb and torch.equal(a, b)
    # An archive is extracted once, under the data root, and read the same way.
    archive = tmp_path / "copy.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(Path(tiny_source) / "train", arcname="copy/train")
        tar.add(Path(tiny_source) / "test", arcname="copy/test")
    packed = cfg.replace(data_source=str(archive))
    train2, _, kind2, _ = N.naive_datasets(packed, plain, plain)
    root = image_files_root(load_cifar10(str(archive)))
    assert kind2 == "files" and root.name == "copy" and (root / "train" / "cat").is_dir()
    assert [torch.equal(train2[i][0], train[i][0]) for i in range(3)] == [True] * 3
    marker = root / "train" / "marker"
    marker.write_text("x")  # a second use reads the extracted folder again, not the archive
    N.naive_datasets(packed, plain, plain)
    assert marker.exists()
    # A folder packed in one top-level folder, with files lib.data does not read (macOS litter, a .bmp, an empty
    # hidden folder): the naive datasets read lib.data's images, no more.
    folder = tmp_path / "outer"
    shutil.copytree(tiny_source, folder / "copy")
    cat = folder / "copy" / "train" / "cat"
    (cat / "._0000.png").write_bytes((cat / "0000.png").read_bytes())
    (cat / "0000.png").rename(cat / "0000.bmp")
    (folder / "copy" / "train" / ".ipynb_checkpoints").mkdir()
    odd = cfg.replace(data_source=str(folder), num_train=None, num_val=None)
    train3, val3, _, _ = N.naive_datasets(odd, plain, plain)
    X_tr, y_tr, X_val, *_ = T.split_data(odd)
    assert len(train3) == len(y_tr) and torch.equal(train3[0][0], N.ArrayDataset(X_tr, y_tr, plain)[0][0])
    # An ImageFolder that finds other images than lib.data (here: if it took the .bmp) is refused.
    monkeypatch.setattr(N, "is_image_file", lambda rel: True)
    with pytest.raises(DataError, match="finds other images"):
        N.naive_datasets(odd, plain, plain)
    monkeypatch.undo()
    # A corrupt archive is bad input; a killed extraction's leftover is deleted once it is old.
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b not a tar")
    with pytest.raises(DataError, match="cannot extract"):
        image_files_root(SimpleNamespace(info={"kind": "image-folder", "path": str(bad)}), root=tmp_path / "r")
    stale, fresh = tmp_path / "r" / "extracted" / ".tmp-old", tmp_path / "r" / "extracted" / ".tmp-running"
    stale.mkdir(parents=True)
    fresh.mkdir()
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    image_files_root(load_cifar10(str(archive)), root=tmp_path / "r")
    assert not stale.exists() and fresh.exists()
    # The official data (torchvision's CIFAR10 holds arrays in memory): the arrays.
    monkeypatch.setattr(N, "image_files_root", lambda data: None)
    assert N.naive_datasets(cfg, plain, plain)[2] == "arrays"


def test_naive_epoch_mixes_every_batch_of_the_part1_recipe_only(tiny_source, monkeypatch):
    calls, original = [], N.mix_batch

    def counting(x, y, mixup_p, cutmix_p, alpha, *, generator):
        calls.append((mixup_p, cutmix_p, alpha))
        return original(x, y, mixup_p, cutmix_p, alpha, generator=generator)

    monkeypatch.setattr(N, "mix_batch", counting)
    naive = N.naive_epoch("ShuffleNetV2", tiny_source, "cpu", num_train=16, num_val=8, num_workers=0, warmup_steps=0)
    cfg = recipe_config("ShuffleNetV2", tiny_source)
    assert calls == [(cfg.mixup_p, cfg.cutmix_p, cfg.mix_alpha)] * naive["steps"]
    calls.clear()
    N.naive_epoch("VGG_A", tiny_source, "cpu", num_train=16, num_val=8, num_workers=0, warmup_steps=0)
    assert calls == []  # the BN protocol trains without augmentation


def test_naive_run_follows_the_recipe_schedule_and_switch(tiny_source, monkeypatch):
    made = []
    naive_optimizer = N._naive_optimizer
    monkeypatch.setattr(N, "_naive_optimizer", lambda kind, params, cfg, lr: made.append((kind, lr))
                        or naive_optimizer(kind, params, cfg, lr))
    run = N.naive_run("ShuffleNetV2", tiny_source, "cpu", epochs=3, num_train=16, num_val=8, num_workers=0)
    cfg = recipe_config("ShuffleNetV2", tiny_source, "cpu").replace(num_epochs=3)
    assert made == [("adamw", cfg.lr), ("sgd", cfg.lr * cfg.lr_gamma ** 2)]  # switch at int(0.8 * 3) = 2
    assert len(run["val_acc"]) == 3 and all(0.0 <= a <= 1.0 for a in run["val_acc"])
    assert (run["num_train"], run["num_val"]) == (16, 8) and run["seconds"] > 0
