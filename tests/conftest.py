"""Shared fixtures: a tiny CIFAR-like image folder that the tests create, a private data cache, one-thread steps;
fabricated bench files and finished results for the benchmark, planning and lanes tests."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib.data import CLASSES
from lib.models import PART1_MODELS, revision
from lib.paths import REPO
from lib.results import atomic_write_json

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


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared, loaded CPU, thread oversubscription made tiny training steps 20-70x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def fake_entry(fast=1.0, overhead=0.1, setup=2.0, warmup=1.5, naive=None, model="CANet"):
    """A bench entry with chosen numbers (fabricated: these tests check arithmetic, not speed)."""
    return {"model": model, "recipe": "part1", "batch_size": 256, "fast_seconds": fast,
            "fast_overhead_seconds": overhead, "setup_seconds": setup, "warmup_seconds": warmup,
            "naive_seconds": naive, "ratio": None if naive is None else naive / fast, "fast_images_per_s": 45000 / fast,
            "compile_seconds": 0.5, "num_train": 45000, "num_val": 5000, "date": "2026-11-26T12:00:00+00:00",
            "torch": "2.11.0", "data": "JPEG-q75 copy", "model_revision": revision(model)}


def fake_bench(part1=None, bn=None, probe=0.01) -> dict:
    """A complete fabricated bench dict: every Part 1 model, both BN models and both probes."""
    entries = {m: fake_entry(model=m, **(part1 or {})) for m in PART1_MODELS}
    for m in ("VGG_A", "VGG_A_BN"):
        entries[m] = dict(fake_entry(model=m, **(bn or dict(fast=0.5, overhead=0.05, setup=1.0, warmup=0.4))),
                          recipe="bn-protocol", batch_size=128)
        entries[f"probe-{m}"] = {"model": m, "kind": "probe", "seconds_per_step": probe}
    return {"device": "NVIDIA H100 80GB HBM3", "device_slug": "nvidia-h100-80gb-hbm3", "entries": entries}


def bench_with_compiled_variants() -> dict:
    """fake_bench plus torch.compile'd entries: CANet's pays off over 70 epochs, ResNet18's does not."""
    bench = fake_bench()
    # CANet compiled, per run: 2 + (30 - 0.5) + 70 x (0.5 + 0.1) = 73.5 s < 79.5 s plain.
    bench["entries"]["CANet+compile"] = dict(fake_entry(model="CANet", fast=0.5, warmup=30.0), compiled=True)
    # ResNet18 compiled: 2 + 39.1 + 70 x 1.0 = 111.1 s > 79.5 s.
    bench["entries"]["ResNet18+compile"] = dict(fake_entry(model="ResNet18", fast=0.9, warmup=40.0), compiled=True)
    # Timed with --compile on a CPU, where nothing is compiled: never a reason to compile.
    bench["entries"]["VGG_A+compile"] = dict(fake_entry(model="VGG_A", fast=0.01, warmup=0.01), compiled=False)
    return bench


def write_finished(dirs, cfg) -> None:
    """A result file whose config matches `cfg` (and the per-step series file of a run that records them): the
    planner must treat the run as done."""
    atomic_write_json(Path(dirs.results) / f"{cfg.name}.json", {"name": cfg.name, "config": cfg.to_dict()})
    if getattr(cfg, "record_steps", False):
        atomic_write_json(Path(dirs.results) / f"{cfg.name}.steps.json", {"loss": [], "grad_max": [], "grad_min": []})


def script_copy(tmp_path: Path) -> Path:
    """The GPU runner and the modules its merge uses, in a fresh folder standing for a checkout."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy2(REPO / "scripts" / "gpu_full_study.sh", repo / "scripts")
    (repo / "lib").mkdir()
    for name in ("__init__.py", "bench_merge.py", "results.py", "paths.py"):
        shutil.copy2(REPO / "lib" / name, repo / "lib" / name)
    return repo
