"""Shared fixtures: a tiny CIFAR-like image folder that the tests create, and a private data cache."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from lib.data import CLASSES

# A developer's exported CIFAR10_REUSE_ONLY=1 would make every test that trains refuse: tests set it themselves.
os.environ.pop("CIFAR10_REUSE_ONLY", None)


def make_image_folder(root, n_train: int = 8, n_test: int = 5, seed: int = 0, fmt: str = "png"):
    """Write {train,test}/<class>/NNNN.<fmt> 32x32 images whose colour depends on the class (learnable)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for c, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            base = np.array([(c * 25) % 256, (c * 70) % 256, (255 - c * 25) % 256], dtype=np.float64)
            for i in range(n):
                img = np.clip(base + rng.normal(0, 40, size=(32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i:04d}.{fmt}")
    return root


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory):
    """Path of a tiny image-folder copy: 10 classes x (8 train, 5 test) PNG images."""
    return str(make_image_folder(tmp_path_factory.mktemp("tiny_cifar")))


@pytest.fixture(autouse=True)
def private_data_root(tmp_path_factory, monkeypatch):
    """Keep the tests' decoded-array caches out of the repository's data/ folder."""
    monkeypatch.setenv("CIFAR10_ROOT", str(tmp_path_factory.getbasetemp() / "data_root"))
