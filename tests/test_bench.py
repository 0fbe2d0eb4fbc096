"""Benchmark harness: the fast epoch and the naive one side by side on a CPU; the bench file merges; estimate and
table; graph checks, traces, bookkeeping, agreement; the GPU fast path's CPU-testable parts (graph routing, device
histograms, deferred checkpoints). The naive pipeline itself: test_naive.py; planning the GPU calls: test_plan.py."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import lib.bench as B
import lib.naive as N
import lib.plan as P
import lib.train as T
from conftest import bench_with_compiled_variants, fake_bench, fake_entry
from lib.config import TrainConfig
from lib.data import resolve_source
from lib.experiments import recipe_config, recipe_name
from lib.loader import BatchLoader
from lib.models import build, revision
from lib.paths import REPO, gpu_bench_files, output_dirs
from lib.report import published_profile
from lib.results import atomic_write_json, device_name, read_json

pytestmark = pytest.mark.usefixtures("one_thread")

ENTRY_KEYS = {"model", "recipe", "batch_size", "num_train", "num_val", "data", "device", "torch", "date",
              "naive_seconds", "naive_images_per_s", "naive_val_passes", "naive_workers", "naive_val_transforms",
              "naive_dataset", "fast_seconds",
              "fast_images_per_s", "fast_overhead_seconds", "fast_overhead_warm", "compile_seconds", "setup_seconds",
              "warmup_seconds",
              "cuda_graphs", "compiled", "ratio", "model_revision"}


def strip_seconds(history):
    """History rows without wall-clock times."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


# ----------------------------------------------------------------------------------------- the two pipelines


def test_recipe_config_picks_the_models_study_recipe(tiny_source):
    p1 = recipe_config("CANet", tiny_source)
    assert (p1.batch_size, p1.augment, p1.norm, p1.optimizer, recipe_name(p1)) == (256, True, "imagenet",
                                                                                      "adamw_sgd", "part1")
    bn = recipe_config("VGG_A_BN", tiny_source, num_train=100)
    assert (bn.batch_size, bn.augment, bn.norm, bn.optimizer, bn.lr, bn.num_train) == (128, False, "half", "adam",
                                                                                        1e-3, 100)
    assert recipe_name(bn) == "bn-protocol"
    with pytest.raises(ValueError, match="neither part of the study"):
        recipe_config("VGG11_BN", tiny_source)


def test_naive_and_fast_epoch_time_a_tiny_epoch_on_cpu(tiny_source, monkeypatch):
    # ShuffleNetV2: a Part 1 model that costs little at 32x32 (its ImageNet stem downsamples 4x at once).
    naive = N.naive_epoch("ShuffleNetV2", tiny_source, "cpu", num_train=16, num_val=8, num_workers=0, val_every=1,
                          warmup_steps=1)
    assert (naive["num_train"], naive["num_val"], naive["batch_size"], naive["steps"]) == (16, 8, 256, 1)
    assert naive["val_passes"] == 2  # one after every step (val_every=1) and the end-of-epoch pass
    assert naive["seconds"] > 0 and naive["images_per_s"] == pytest.approx(16 / naive["seconds"])
    seen = []
    step_model_for = T.step_model_for
    monkeypatch.setattr(T, "step_model_for", lambda m, cfg, *a: seen.append(
        (T.compile_requested(cfg), T.step_graph_requested(cfg.model))) or step_model_for(m, cfg, *a))
    monkeypatch.setenv(T.COMPILE_ENV, "all")  # the plain variant is timed plain whatever the environment says
    monkeypatch.setenv(T.STEP_GRAPH_ENV, "all")
    fast = B.fast_epoch("ShuffleNetV2", tiny_source, "cpu", num_train=16, num_val=8)
    assert seen == [(False, False)] and os.environ[T.COMPILE_ENV] == os.environ[T.STEP_GRAPH_ENV] == "all"
    assert fast["step_graph"] is False  # a CPU steps eagerly whatever is asked
    seen.clear()
    B.fast_epoch("ShuffleNetV2", tiny_source, "cpu", num_train=16, num_val=8, step_graph=True)
    assert seen == [(False, True)]
    assert fast["seconds"] > 0 and fast["images_per_s"] == pytest.approx(16 / fast["seconds"])
    assert fast["overhead_seconds"] > 0 and fast["setup_seconds"] > 0 and fast["warmup_seconds"] > 0
    assert fast["cuda_graphs"] is False and fast["compiled"] is False and fast["compile_seconds"] == 0.0
    assert fast["num_train"] == 16 and np.isfinite(fast["train_loss"]) and fast["canet_merged"] is None


# ----------------------------------------------------------------------------------------- the bench file


def test_run_benchmark_writes_and_merges_the_bench_file(tiny_source, tmp_path, monkeypatch):
    monkeypatch.setenv(T.COMPILE_MODE_ENV, "default")  # key <model>+compile
    calls = []

    def fake_naive(model_name, source, device, **kw):
        calls.append(("naive", model_name))
        return {"seconds": 10.0, "images_per_s": 4500.0, "val_passes": 4, "val_transforms": "train",
                "dataset": "files"}

    def fake_fast(model_name, source, device, **kw):
        calls.append(("fast", model_name))
        return {"seconds": 0.5, "images_per_s": 90000.0, "overhead_seconds": 0.1, "compile_seconds": 1.0,
                "setup_seconds": 2.0, "warmup_seconds": 0.8, "cuda_graphs": False, "compiled": kw["compile"],
                "compile_mode": "default" if kw["compile"] else None, "num_train": 16, "num_val": 8, "data": "tiny",
                "earlier_in_process": True if kw["compile"] else None}  # None: as on a CPU

    monkeypatch.setattr(B, "naive_epoch", fake_naive)
    monkeypatch.setattr(B, "fast_epoch", fake_fast)
    path = tmp_path / "bench" / "cpu.json"
    B.run_benchmark(["CANet_tiny"], tiny_source, "cpu", path, num_workers=0, progress=False)
    data = read_json(path)
    assert data["device"] == device_name("cpu") and set(data["entries"]) == {"CANet_tiny"}
    entry = data["entries"]["CANet_tiny"]
    assert set(entry) == ENTRY_KEYS
    assert entry["ratio"] == pytest.approx(20.0) and entry["torch"] == torch.__version__
    assert (entry["recipe"], entry["batch_size"], entry["naive_workers"]) == ("part1", 256, 0)

    B.run_benchmark([], tiny_source, "cpu", path, fast_only=["VGG_A_BN"], progress=False)
    entries = read_json(path)["entries"]
    assert set(entries) == {"CANet_tiny", "VGG_A_BN"} and entries["CANet_tiny"] == entry  # merged, kept
    assert entries["VGG_A_BN"]["ratio"] is None and "naive_seconds" not in entries["VGG_A_BN"]
    assert (entries["VGG_A_BN"]["recipe"], entries["VGG_A_BN"]["batch_size"]) == ("bn-protocol", 128)
    assert [p.name for p in path.parent.iterdir()] == ["cpu.json"]  # atomic writes leave no temp files

    calls.clear()
    before = path.read_bytes()
    monkeypatch.setattr(B, "_now", lambda: "2099-01-01T00:00:00+00:00")  # a rewrite would show
    B.run_benchmark(["CANet_tiny"], tiny_source, "cpu", path, fast_only=["VGG_A_BN"], missing_only=True,
                    progress=False)
    assert calls == []  # everything asked for is in the file already
    assert path.read_bytes() == before  # and it is not rewritten (its 'updated' is its last measurement's)
    old = read_json(path)
    del old["entries"]["CANet_tiny"]["naive_val_transforms"]  # timed before the naive validation was augmented
    atomic_write_json(path, old)
    B.run_benchmark(["CANet_tiny"], tiny_source, "cpu", path, missing_only=True, num_workers=0, progress=False)
    assert calls == [("naive", "CANet_tiny"), ("fast", "CANet_tiny")]
    assert read_json(path)["entries"]["CANet_tiny"]["naive_val_transforms"] == "train"
    calls.clear()
    old = read_json(path)
    del old["entries"]["CANet_tiny"]["naive_dataset"]  # timed when the naive epoch read decoded arrays
    atomic_write_json(path, old)
    B.run_benchmark(["CANet_tiny"], tiny_source, "cpu", path, missing_only=True, num_workers=0, progress=False)
    assert calls == [("naive", "CANet_tiny"), ("fast", "CANet_tiny")]  # an image-folder copy's files are read now
    assert read_json(path)["entries"]["CANet_tiny"]["naive_dataset"] == "files"
    calls.clear()
    monkeypatch.setattr(B, "timed_as_now", lambda entry, dev: entry["model"] != "VGG_A_BN")
    B.run_benchmark(["CANet_tiny"], tiny_source, "cpu", path, fast_only=["VGG_A_BN"], missing_only=True,
                    progress=False)
    assert calls == [("fast", "VGG_A_BN")]  # an entry timed otherwise than now is timed again
    monkeypatch.undo()
    monkeypatch.setenv(T.COMPILE_MODE_ENV, "default")
    monkeypatch.setattr(B, "naive_epoch", fake_naive)
    monkeypatch.setattr(B, "fast_epoch", fake_fast)
    B.run_benchmark([], tiny_source, "cpu", path, fast_only=["VGG_A_BN"], compile=True, progress=False)
    entries = read_json(path)["entries"]
    assert entries["VGG_A_BN+compile"]["compiled"] is True and entries["VGG_A_BN"]["compiled"] is False
    assert entries["VGG_A_BN+compile"]["compile_mode"] == "default" and "compile_mode" not in entries["VGG_A_BN"]
    assert entries["VGG_A_BN+compile"]["earlier_in_process"] is True and "earlier_in_process" not in entries["VGG_A_BN"]

    # also_compiled: the compiled epoch comes last and shares the process's one naive epoch.
    calls.clear()
    B.run_benchmark(["CANet_tiny", "VGG_A_BN"], tiny_source, "cpu", path, also_compiled=["CANet_tiny"],
                    progress=False)
    assert calls == [("naive", "CANet_tiny"), ("fast", "CANet_tiny"), ("naive", "VGG_A_BN"), ("fast", "VGG_A_BN"),
                     ("fast", "CANet_tiny")]
    both = read_json(path)["entries"]
    assert both["CANet_tiny+compile"]["naive_seconds"] == both["CANet_tiny"]["naive_seconds"] == 10.0
    assert both["CANet_tiny+compile"]["ratio"] == pytest.approx(20.0) and both["CANet_tiny+compile"]["compiled"]
    rows = [line for line in B.bench_table(path).splitlines() if line.startswith("| CANet_tiny")]
    assert rows[0].startswith("| CANet_tiny | ") and rows[1].startswith("| CANet_tiny (torch.compile) | ")
    uncompiled = dict(both["CANet_tiny+compile"], compiled=False)  # as on a CPU, where nothing compiles
    assert "| CANet_tiny (torch.compile asked for, ran uncompiled) |" in B.bench_table(
        {"device": "cpu", "entries": {"CANet_tiny+compile": uncompiled}})
    calls.clear()
    B.run_benchmark([], tiny_source, "cpu", path, also_compiled=["VGG_A"], progress=False)
    assert calls == [("naive", "VGG_A"), ("fast", "VGG_A"), ("fast", "VGG_A")]  # its naive epoch joins the run

    other = dict(read_json(path), device="NVIDIA H100 80GB HBM3")
    path.write_text(json.dumps(other))
    with pytest.raises(ValueError, match="not of this device"):
        B.run_benchmark(["CANet_tiny"], tiny_source, "cpu", path, progress=False)


def test_step_graph_rows_are_timed_beside_the_naive_epoch_and_shown_apart(tiny_source, tmp_path, monkeypatch):
    """--also-step-graph / --also-step-graph-compiled: one naive epoch serves the plain row and both whole-step
    graph rows, each under its own key and label; the speed verdict may pick such a row, the study estimate reads
    them only for the models CIFAR10_STEP_GRAPH names, and a row whose capture failed says so."""
    calls = []
    monkeypatch.setattr(B, "naive_epoch", lambda m, *a, **kw: calls.append(("naive", m)) or {
        "seconds": 12.0, "images_per_s": 3750.0, "val_passes": 4, "val_transforms": "train", "dataset": "files"})

    def fake_fast(model_name, source, device, **kw):
        calls.append(("fast", model_name, kw["compile"], kw["step_graph"]))
        seconds = 0.4 if kw["step_graph"] else 1.0
        return {"seconds": seconds, "images_per_s": 16 / seconds, "overhead_seconds": 0.1, "compile_seconds": 0.0,
                "setup_seconds": 2.0, "warmup_seconds": 1.5, "cuda_graphs": True, "compiled": kw["compile"],
                "compile_mode": "default" if kw["compile"] else None, "step_graph": kw["step_graph"],
                "num_train": 16, "num_val": 8, "data": "tiny"}

    monkeypatch.setattr(B, "fast_epoch", fake_fast)
    path = tmp_path / "cpu.json"
    B.run_benchmark(["CANet_tiny"], tiny_source, "cpu", path, also_step_graph=["CANet_tiny"],
                    also_step_graph_compiled=["CANet_tiny"], progress=False)
    assert calls == [("naive", "CANet_tiny"), ("fast", "CANet_tiny", False, False), ("fast", "CANet_tiny", False, True),
                     ("fast", "CANet_tiny", True, True)]
    entries = read_json(path)["entries"]
    assert set(entries) == {"CANet_tiny", "CANet_tiny+step-graph", "CANet_tiny+step-graph-compiled"}
    sg, sgc = entries["CANet_tiny+step-graph"], entries["CANet_tiny+step-graph-compiled"]
    assert sg["step_graph"] is True and sg["compiled"] is False and "compile_mode" not in sg and "step_graph" not in \
        entries["CANet_tiny"]
    assert sgc["compiled"] is True and sgc["compile_mode"] == "default" and sg["ratio"] == pytest.approx(30.0)
    assert B.step_graph_key("CANet", True) == "CANet+step-graph-compiled"
    compiled = dict(entries["CANet_tiny"], compiled=True, compile_mode="default")  # a --also-compiled row
    table = B.bench_table(dict(read_json(path), entries=dict(entries, **{"CANet_tiny+compile": compiled})))
    rows = [line for line in table.splitlines() if line.startswith("| CANet_tiny")]
    assert [r.split(" | ")[0] for r in rows] == ["| CANet_tiny", "| CANet_tiny (torch.compile)",
                                                 "| CANet_tiny (whole-step CUDA graph)",
                                                 "| CANet_tiny (whole-step CUDA graph, torch.compile)"]
    rows = rows[:1] + rows[2:]
    assert "| whole-step graph | 12.00 | 0.40 | 30.0x" in rows[1] and "| whole-step graph, compiled |" in rows[2]
    assert "Whole-step CUDA graph rows: the training step" in table
    assert "Whole-step CUDA graph rows" not in B.bench_table({"device": "cpu", "entries": {
        "CANet_tiny": entries["CANet_tiny"]}})
    failed = dict(sg, step_graph=False)
    assert "| CANet_tiny (whole-step CUDA graph asked for, ran eager steps) |" in B.bench_table(
        {"device": "cpu", "entries": {"CANet_tiny+step-graph": failed}})
    assert B.timed_as_now(sg, torch.device("cuda"))
    # An older model's compiled row in another compile mode is superseded; a step-graph row is not (BENCH_STEP_GRAPH
    # times it again).
    monkeypatch.setenv(T.COMPILE_MODE_ENV, "reduce-overhead")
    assert B.superseded(dict(sgc, step_graph=None, model_revision=0)) and not B.superseded(dict(sgc, model_revision=0))
    monkeypatch.delenv(T.COMPILE_MODE_ENV)
    monkeypatch.setenv(T.CUDA_GRAPHS_ENV, "0")  # an execution choice of its own: not re-timed for this switch
    assert B.timed_as_now(sg, torch.device("cuda"))
    monkeypatch.delenv(T.CUDA_GRAPHS_ENV)
    gpu = fake_bench()
    gpu["entries"]["CANet_tiny"] = dict(gpu["entries"]["CANet_tiny"], naive_seconds=12.0, ratio=12.0)
    before = (B.format_estimate(gpu), B.study_estimate(gpu, 1)["total_minutes"])
    gpu["entries"]["CANet_tiny+step-graph-compiled"] = dict(sgc, fast_seconds=0.4, ratio=30.0)
    assert (B.format_estimate(gpu), B.study_estimate(gpu, 1)["total_minutes"]) == before
    assert "CANet_tiny 30.0x of 25x (whole-step graph, compiled): met" in B.speed_verdict(gpu)
    monkeypatch.setenv(T.STEP_GRAPH_ENV, "all")  # the committed renders read no shell's choice
    with B.as_committed():
        assert B.format_estimate(gpu) == before[0]
    # Where CIFAR10_STEP_GRAPH names a model (compiled inside where CIFAR10_COMPILE does), `lib run` trains it so:
    # the estimate reads that row, and names it missing where it is not measured.
    monkeypatch.delenv(T.COMPILE_ENV, raising=False)
    monkeypatch.setenv(T.STEP_GRAPH_ENV, "CANet_tiny")
    assert B.key_in_use("CANet_tiny") == "CANet_tiny+step-graph" and B.key_in_use("CANet") == "CANet"
    assert B.study_estimate(gpu, 1)["missing"] == ["CANet_tiny+step-graph"]
    with pytest.raises(ValueError, match=r"python -m lib bench --fast-only CANet_tiny --step-graph-rows "
                                         r"--missing-only"):
        B.estimate_study_minutes(gpu)
    monkeypatch.setenv(T.COMPILE_ENV, "CANet_tiny")
    assert B.key_in_use("CANet_tiny") == "CANet_tiny+step-graph-compiled"
    plain, chosen = gpu["entries"]["CANet_tiny"], gpu["entries"]["CANet_tiny+step-graph-compiled"]
    assert B.run_seconds(chosen, 70) != pytest.approx(B.run_seconds(plain, 70))
    assert B.study_estimate(gpu, 1)["part1"]["CANet_tiny"] == pytest.approx(B.run_seconds(chosen, 70))


def test_step_graph_rows_of_fast_only_models_are_both_variants_without_naive_epochs(tiny_source, tmp_path,
                                                                                    monkeypatch, capsys):
    """--fast-only M --step-graph-rows: the two rows the plan may read where CIFAR10_STEP_GRAPH names M (compiled
    inside or not, as the later compile choice says), fast epochs only, each skipped by --missing-only once there."""
    from lib.cli import main

    calls = []
    monkeypatch.setattr(B, "naive_epoch", lambda *a, **kw: calls.append("naive"))

    def fake_fast(model_name, source, device, **kw):
        calls.append((model_name, kw["compile"], kw["step_graph"]))
        return {"seconds": 0.5, "images_per_s": 32.0, "overhead_seconds": 0.1, "compile_seconds": 0.0,
                "setup_seconds": 2.0, "warmup_seconds": 1.5, "cuda_graphs": True, "compiled": kw["compile"],
                "compile_mode": "default" if kw["compile"] else None, "step_graph": kw["step_graph"],
                "num_train": 16, "num_val": 8, "data": "tiny"}

    monkeypatch.setattr(B, "fast_epoch", fake_fast)
    out = str(tmp_path / "cpu.json")
    args = ["bench", "--device", "cpu", "--out", out, "--data", str(tiny_source), "--fast-only", "CANet_tiny",
            "ResNet18", "--step-graph-rows", "--missing-only"]
    assert main(args) == 0
    assert calls == [("CANet_tiny", False, True), ("CANet_tiny", True, True), ("ResNet18", False, True),
                     ("ResNet18", True, True)]
    entries = read_json(out)["entries"]
    assert set(entries) == {"CANet_tiny+step-graph", "CANet_tiny+step-graph-compiled", "ResNet18+step-graph",
                            "ResNet18+step-graph-compiled"}
    assert all("naive_seconds" not in e and e["ratio"] is None for e in entries.values())
    assert main(args) == 0 and len(calls) == 4  # there already: nothing timed again
    monkeypatch.setenv(T.STEP_GRAPH_ENV, "CANet_tiny")
    monkeypatch.setenv(T.COMPILE_ENV, "CANet_tiny")
    assert B.entry_in_use(entries, "CANet_tiny") is entries["CANet_tiny+step-graph-compiled"]
    # The compile choice weighs the two step-graph rows of a model the variable names (not its plain rows).
    data = read_json(out)
    data["entries"]["CANet_tiny+step-graph-compiled"].update(fast_seconds=0.2, compile_seconds=5.0)
    assert B.compile_choice(data) == ["CANet_tiny"]
    data["entries"]["CANet_tiny+step-graph-compiled"]["fast_seconds"] = 0.9
    assert B.compile_choice(data) == []
    data["entries"]["ResNet18+step-graph-compiled"]["fast_seconds"] = 0.2
    assert B.compile_choice(data) == []  # ResNet18's runs are not step-graphed: its plain rows are not measured
    monkeypatch.setenv(T.STEP_GRAPH_ENV, "all")
    assert B.compile_choice(data) == ["ResNet18"]
    for bad, why in ((["--step-graph-rows", "--models", "CANet"], "name them with --fast-only"),
                     (["--fast-only", "CANet", "--step-graph-rows", "--compile"], "leave out --compile")):
        assert main(["bench", "--device", "cpu", "--out", out, *bad]) == 2
        assert why in capsys.readouterr().err


def test_graph_checks_and_traces_time_the_cuda_graphed_step_whatever_the_environment(tiny_source, monkeypatch):
    """CIFAR10_STEP_GRAPH (like CIFAR10_COMPILE) must not turn the graph check or the trace into another variant:
    step_model_for is asked for the CUDA-graphed step."""
    seen = []
    step_model_for = T.step_model_for
    monkeypatch.setattr(T, "step_model_for", lambda m, cfg, *a: seen.append(
        (T.step_graph_requested(cfg.model), T.compile_requested(cfg))) or step_model_for(m, cfg, *a))
    monkeypatch.setenv(T.STEP_GRAPH_ENV, "all")
    monkeypatch.setenv(T.COMPILE_ENV, "all")
    cfg = recipe_config("CANet_tiny", tiny_source, "cpu")
    loader = BatchLoader(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), 2,
                         mean=(0.5,) * 3, std=(0.5,) * 3)
    B._graphed_step(build("CANet_tiny"), cfg, torch.device("cpu"), loader)
    B.trace_steps("CANet_tiny", tiny_source, "cpu", steps=1, batch_size=4, row_limit=1)
    assert seen == [(False, False), (False, False)]
    assert os.environ[T.STEP_GRAPH_ENV] == "all"


def test_bench_path_is_per_device():
    assert B.device_slug("cpu").startswith("cpu-") and "/" not in B.device_slug("cpu")
    assert B.bench_path("cpu", root="/r") == Path("/r/results/bench") / f"{B.device_slug('cpu')}.json"


# ----------------------------------------------------------------------------------------- estimate and table


def test_estimate_study_minutes_by_hand():
    bench = fake_bench()
    # Part 1, per run: setup 2 + (warm-up 1.5 - epoch 1.0) + 70 x (1.0 + 0.1) = 79.5 s; nine models: 715.5 s.
    # BN protocol, per run: 1 + max(0, 0.4 - 0.5) + 50 x (0.5 + 0.05) = 28.5 s; 2 models x 4 lrs: 228 s.
    # Probes: 4,000 steps x 0.01 s x 2 networks = 80 s.  Total 1,023.5 s.
    assert B.estimate_study_minutes(bench) == pytest.approx(1023.5 / 60)
    assert B.estimate_study_minutes(bench, seeds=2) == pytest.approx((2 * 715.5 + 228 + 80) / 60)
    est = B.study_estimate(bench)
    assert est["part1"]["CANet"] == pytest.approx(79.5) and est["bn"]["VGG_A_BN"] == pytest.approx(114.0)
    del bench["entries"]["ResNet34"], bench["entries"]["probe-VGG_A"]
    with pytest.raises(ValueError, match="ResNet34, probe-VGG_A"):
        B.estimate_study_minutes(bench)


def test_compile_choice_and_the_estimates_follow_the_measured_variant(tiny_source, tmp_path, monkeypatch):
    monkeypatch.setenv(T.COMPILE_MODE_ENV, "default")  # the fabricated compiled entries are mode 'default'
    bench = bench_with_compiled_variants()
    assert B.compile_choice(bench) == ["CANet"]
    monkeypatch.delenv(T.COMPILE_ENV, raising=False)
    assert B.study_estimate(bench)["part1"]["CANet"] == pytest.approx(79.5)
    source = resolve_source(tiny_source)
    dirs = output_dirs("full", root=tmp_path)
    canet_job = lambda: next(j for j in P.study_jobs(bench, source, dirs) if j.names == ("p1-CANet-s0",))
    assert canet_job().seconds == pytest.approx(79.5)
    monkeypatch.setenv(T.COMPILE_ENV, "CANet")
    assert B.study_estimate(bench)["part1"]["CANet"] == pytest.approx(73.5)
    assert B.study_estimate(bench)["part1"]["ResNet18"] == pytest.approx(79.5)
    assert canet_job().seconds == pytest.approx(73.5)
    # The estimate line: as the runner trains by default (its compile choice) unless CIFAR10_COMPILE says.
    monkeypatch.delenv(T.COMPILE_ENV)
    chosen = B.format_estimate(bench)
    assert "torch.compile'd as the GPU runner chooses for one run at a time: CANet" in chosen
    assert T.COMPILE_ENV not in os.environ
    monkeypatch.setenv(T.COMPILE_ENV, "")
    plain = B.format_estimate(bench)
    assert "torch.compile'd" not in plain
    minutes = [float(re.search(r"seed\(s\): ([\d.]+) min", line).group(1)) for line in (plain, chosen)]
    assert minutes[0] - minutes[1] == pytest.approx((79.5 - 73.5) / 60, abs=0.051)
    monkeypatch.setenv(T.COMPILE_ENV, "all")  # a model to be compiled without a compiled measurement: unknown
    est = B.study_estimate(bench)
    assert est["part1"]["ResNet18"] == pytest.approx(111.1) and "MobileNetV2" not in est["part1"]
    assert "MobileNetV2+compile" in est["missing"] and "CANet+compile" not in est["missing"]
    with pytest.raises(ValueError, match="--compile --missing-only"):
        B.estimate_study_minutes(bench)
    assert B.entry_in_use({}, "CANet") is None
    # Another compile mode is another measurement; with CUDA graphs off, reduce-overhead falls back to default.
    monkeypatch.setenv(T.COMPILE_MODE_ENV, "reduce-overhead")
    assert B.key_in_use("CANet") == "CANet+compile-reduce-overhead" and B.compile_choice(bench) == []
    monkeypatch.setenv(T.CUDA_GRAPHS_ENV, "0")
    assert T.compile_mode() == "default" and B.key_in_use("CANet") == "CANet+compile"
    monkeypatch.delenv(T.COMPILE_MODE_ENV)  # unset: reduce-overhead (fusion and CUDA graphs), default without graphs
    assert T.compile_mode() == "default"
    monkeypatch.delenv(T.CUDA_GRAPHS_ENV)
    assert T.compile_mode() == "reduce-overhead"
    monkeypatch.setenv(T.COMPILE_MODE_ENV, "max-autotune")
    assert T.compile_mode() == "max-autotune"
    monkeypatch.setenv(T.CUDA_GRAPHS_ENV, "0")
    assert T.compile_mode() == "max-autotune-no-cudagraphs"


def test_an_entry_is_timed_as_now_when_its_step_matches_the_cuda_graph_switch(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    eager, graphed = fake_entry(), dict(fake_entry(), cuda_graphs=True)
    monkeypatch.delenv(T.CUDA_GRAPHS_ENV, raising=False)
    assert B.timed_as_now(graphed, cuda) and not B.timed_as_now(eager, cuda)
    monkeypatch.setenv(T.CUDA_GRAPHS_ENV, "0")
    assert B.timed_as_now(eager, cuda) and not B.timed_as_now(graphed, cuda)
    compiled = dict(eager, compiled=True, compile_mode="default")
    assert B.timed_as_now(compiled, cuda) and B.timed_as_now(eager, cpu) and B.timed_as_now(graphed, cpu)
    monkeypatch.delenv(T.CUDA_GRAPHS_ENV)
    monkeypatch.setenv(T.EAGER_MODELS_ENV, "MobileNetV2, CANet")  # their graph check failed: eager for them only
    assert B.timed_as_now(eager, cuda) and not B.timed_as_now(graphed, cuda)  # fake_entry's model is CANet
    assert B.timed_as_now(dict(graphed, model="ResNet18", model_revision=1), cuda)
    assert not T.graphs_enabled_for("CANet") and T.graphs_enabled_for("ResNet18")
    # Timed with an older implementation of the model (before CANet's merged blocks): re-timed, on any device.
    assert revision("CANet") == 2 and revision("ResNet18") == 1
    for entry in (eager, graphed, compiled):
        old = {k: v for k, v in entry.items() if k != "model_revision"}  # entries of revision 1 record none
        assert not B.timed_as_now(old, cuda) and not B.timed_as_now(old, cpu)
    assert B.timed_as_now({k: v for k, v in fake_entry(model="ResNet18").items() if k != "model_revision"}, cpu)


def test_a_canet_entry_is_timed_again_when_its_blocks_would_run_otherwise(monkeypatch):
    from lib.models.canet import MERGED_ENV, blocks_merged

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.delenv(T.CUDA_GRAPHS_ENV, raising=False)
    merged = dict(fake_entry(), cuda_graphs=True, canet_merged=True)
    per_path = dict(merged, canet_merged=False)
    compiled = dict(merged, compiled=True, compile_mode="reduce-overhead")
    monkeypatch.delenv(MERGED_ENV, raising=False)  # auto: merged on CUDA
    assert B.timed_as_now(merged, cuda) and not B.timed_as_now(per_path, cuda) and B.timed_as_now(compiled, cuda)
    assert B.timed_as_now({k: v for k, v in merged.items() if k != "canet_merged"}, cuda)  # recorded before: merged
    monkeypatch.setenv(MERGED_ENV, "0")  # a GPU measured the merged form slower
    assert not B.timed_as_now(merged, cuda) and B.timed_as_now(per_path, cuda) and not B.timed_as_now(compiled, cuda)
    assert B.timed_as_now(merged, cpu) and B.timed_as_now(dict(merged, model="ResNet18", model_revision=1), cuda)
    # What fast_epoch records: None for networks without the blocks, and by device and setting for a CANet.
    x = torch.zeros(1, 3, 32, 32)
    assert blocks_merged(build("ResNet18"), x) is None and blocks_merged(build("CANet_tiny"), x) is False
    monkeypatch.setenv(MERGED_ENV, "1")
    assert blocks_merged(build("CANet_tiny"), x) is True
    monkeypatch.delenv(MERGED_ENV)
    assert blocks_merged(build("CANet_tiny"), x) is False  # auto: per path on a CPU
    # Graph checks of a CANet are reused only for the form they checked.
    check = {"model": "CANet_tiny", "ok": True, "torch": torch.__version__, "model_revision": revision("CANet_tiny"),
             "canet_merged": True}
    assert B.graph_check_as_now(check) and B.graph_check_as_now({k: v for k, v in check.items() if k != "canet_merged"})
    monkeypatch.setenv(MERGED_ENV, "0")
    assert not B.graph_check_as_now(check) and B.graph_check_as_now(dict(check, canet_merged=False))
    assert B.graph_check_as_now(dict(check, model="ResNet18", model_revision=1))


def test_bookkeeping_is_timed_warm(monkeypatch):
    # A first call's one-off costs (here a slow first _log_epoch) are not counted in the per-epoch bookkeeping.
    calls = []

    def log_epoch(writer, model, row, *args):
        calls.append(row["epoch"])
        time.sleep(0.4 if len(calls) == 1 else 0.0)

    monkeypatch.setattr(T, "_log_epoch", log_epoch)
    model = torch.nn.Linear(4, 2)
    row = {"epoch": 3, "seconds": 1.0}
    seconds = B._bookkeeping_seconds(T, model, torch.optim.SGD(model.parameters(), lr=0.1), torch.device("cpu"),
                                     row, torch.zeros(5), torch.zeros(5), 5)
    assert calls == [3, 4] and 0 < seconds < 0.3


def test_bookkeeping_parts_are_timed_one_by_one_and_recorded(tiny_source, tmp_path, monkeypatch, capsys):
    from lib.cli import main

    slow = {"_log_histograms": 0.05, "weight_histograms": 0.02}  # seconds each call of these takes (fabricated)
    for name, pause in slow.items():
        real = getattr(T, name)
        monkeypatch.setattr(T, name, lambda *a, _real=real, _pause=pause, **k: (time.sleep(_pause), _real(*a, **k))[1])
    r = B.bookkeeping_parts("CANet_tiny", tiny_source, "cpu", reps=2, steps_per_epoch=7)
    ms = r["ms"]
    assert set(ms) == {"scalars", "histograms", "histogram_counting", "weight_histograms", "best_copy",
                       "last_checkpoint"} and ms["histogram_counting"] is None  # counted on the device: CUDA only
    assert 50 <= ms["histograms"] < 1000 and 20 <= ms["weight_histograms"] < 1000 and ms["scalars"] < 50
    # Off CUDA every part runs every epoch, the resumable checkpoint too.
    assert r["per_epoch_ms"] == pytest.approx(sum(v for v in ms.values() if v is not None))
    assert (r["num_param_tensors"], r["steps_per_epoch"], r["reps"]) == (126, 7, 2)
    # Recorded under 'bookkeeping', said under the table, and not measured again with --missing-only.
    path = tmp_path / "bench.json"
    B.save_bookkeeping(r, path, "cpu")
    line = B.bookkeeping_lines(path)[0]
    assert line.startswith("Per-epoch bookkeeping of CANet_tiny (126 parameter tensors, ") and \
        f"scalars of 7 steps {ms['scalars']:.1f}, parameter histograms {ms['histograms']:.1f}, " in line
    monkeypatch.setattr(B, "bookkeeping_parts", lambda *a, **k: pytest.fail("measured again"))
    assert main(["bench", "--bookkeeping", "CANet_tiny", "--missing-only", "--device", "cpu", "--out", str(path)]) == 0
    assert "bookkeeping of CANet_tiny: in " in capsys.readouterr().out
    B.save_bookkeeping(dict(r, parts_alone=None), path, "cpu")  # as recorded before parts were timed alone
    monkeypatch.setattr(B, "bookkeeping_parts", lambda *a, **k: dict(r, date="anew"))
    assert main(["bench", "--bookkeeping", "CANet_tiny", "--missing-only", "--device", "cpu", "--out", str(path)]) == 0
    assert read_json(path)["bookkeeping"]["CANet_tiny"]["date"] == "anew"
    assert main(["bench", "--bookkeeping", "CANet_huge", "--device", "cpu", "--out", str(path)]) == 2
    assert "--bookkeeping: 'CANet_huge' (did you mean CANet_light?) is not a model" in capsys.readouterr().err


def test_bookkeeping_parts_each_start_with_the_writers_queue_written(tiny_source, monkeypatch):
    """The GPU path's counting is timed on its own after 'histograms', which queued an event per parameter: the
    writer's thread must have written them first (busy, it slows the counting down: bookkeeping_parts)."""
    order = []
    real_writer, real_log, real_count = T.tensorboard_writer, T._log_histograms, T.param_histograms

    def writer(logdir, **kw):
        w = real_writer(logdir, **kw)
        flush = w.flush
        w.flush = lambda: (order.append("flush"), flush())[1]
        return w

    monkeypatch.setattr(T, "_gpu_fast_path", lambda device: True)  # the CUDA bookkeeping, on the CPU
    monkeypatch.setattr(T, "tensorboard_writer", writer)
    monkeypatch.setattr(T, "_log_histograms", lambda *a: (order.append("histograms"), real_log(*a))[1])
    monkeypatch.setattr(T, "param_histograms", lambda *a: (order.append("count"), real_count(*a))[1])
    r = B.bookkeeping_parts("CANet_tiny", tiny_source, "cpu", reps=2, steps_per_epoch=7)
    assert r["ms"]["histogram_counting"] > 0 and r["parts_alone"]
    starts = [i for i, what in enumerate(order) if what == "histograms"]
    assert len(starts) == 3  # the untimed first round and two timed ones
    for i in starts:  # the part (which counts inside), then the writer flushed, then the counting alone
        assert order[i - 1:i + 4] == ["flush", "histograms", "count", "flush", "count"]
    old = dict(r, parts_alone=None)
    assert "writer" not in B.bookkeeping_lines({"bookkeeping": {"CANet_tiny": r}})[0]
    assert "timed right after queuing the histograms for TensorBoard's thread" in B.bookkeeping_lines(
        {"bookkeeping": {"CANet_tiny": old}})[0]


def test_graph_check_handles_dropout_apart():
    # torchvision's VGG11 and MobileNetV2 have dropout; the graph check turns it off for the eager-vs-graphed
    # comparison (the two would draw different masks) and checks instead that a replay draws fresh masks.
    assert [type(m).__name__ for m in B._dropouts(build("MobileNetV2"))] == ["Dropout"]
    assert B._dropouts(build("CANet_tiny")) == [] and B._dropouts(build("ResNet18")) == []
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5)).train()
    cfg = TrainConfig(name="t", model="CANet_tiny", precision="fp32")
    x = torch.randn(4, 8)
    fresh = B._dropout_check(net, x, cfg, torch.device("cpu"))
    assert fresh["fresh_masks_per_replay"] is True and fresh["replay_rel_diff"] > 0.1 and fresh["replayed"]
    net[1].p = 0.0  # a step that replays the capture's masks would look like this: the same output twice
    assert B._dropout_check(net, x, cfg, torch.device("cpu")) == {"fresh_masks_per_replay": False,
                                                                  "replay_rel_diff": 0.0, "replayed": True}
    net[1].p = 0.5  # fresh masks, but not through the graph (e.g. a batch of another shape): proves nothing
    net.takes_fast_route = lambda x: False
    assert B._dropout_check(net, x, cfg, torch.device("cpu"))["fresh_masks_per_replay"] is False
    # Failed checks of version 1 (dropout on in the comparison) are made again; passed ones and new ones stand.
    old = {"model": "VGG11", "ok": False, "torch": torch.__version__, "model_revision": revision("VGG11")}
    assert not B.graph_check_as_now(old) and B.graph_check_as_now(dict(old, ok=True))
    assert B.graph_check_as_now(dict(old, check_version=B.GRAPH_CHECK_VERSION))
    new = dict(old, ok=True, model="MobileNetV2", precision="fp32", steps=3, check_version=B.GRAPH_CHECK_VERSION,
               max_rel_diff={"out": 0.0}, dropout={"fresh_masks_per_replay": True, "replay_rel_diff": 0.31})
    line, = B.graph_check_lines({"graph_checks": {"VGG11": dict(old, precision="fp32", steps=3,
                                                                  max_rel_diff={"out": 1.3}), "MobileNetV2": new}})
    assert "the same within tolerance for MobileNetV2 (bit-identical)" in line
    assert "DIFFERENT for VGG11 (max relative differences {'out': 1.3}; checked by version 1, which compared " \
           "with dropout on" in line
    assert "MobileNetV2's dropout off while compared" in line and "two replays 0.31" in line
    # A crashed check says so, without the version-1 explanation (and it is not made again: it carries the version).
    crashed = dict(old, model="ResNet18", check_version=B.GRAPH_CHECK_VERSION, precision="fp32", steps=0,
                   note="the check crashed: RuntimeError: x")
    line, = B.graph_check_lines({"graph_checks": {"ResNet18": crashed}})
    assert line.endswith("DIFFERENT for ResNet18 (the check crashed: RuntimeError: x).")
    assert B.graph_check_as_now(crashed)


def test_run_benchmark_records_the_canet_block_form(tiny_source, tmp_path, monkeypatch):
    monkeypatch.setattr(B, "fast_epoch", lambda m, *a, **kw: {
        "seconds": 0.5, "images_per_s": 9e4, "overhead_seconds": 0.1, "compile_seconds": 1.0, "setup_seconds": 2.0,
        "warmup_seconds": 0.8, "cuda_graphs": False, "compiled": False, "num_train": 16, "num_val": 8, "data": "t",
        "canet_merged": True if m.startswith("CANet") else None})
    path = tmp_path / "cpu.json"
    B.run_benchmark([], tiny_source, "cpu", path, fast_only=["CANet_tiny", "ResNet18"], progress=False)
    entries = read_json(path)["entries"]
    assert entries["CANet_tiny"]["canet_merged"] is True and "canet_merged" not in entries["ResNet18"]


def test_fast_only_never_drops_a_naive_measurement(tiny_source, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(B, "naive_epoch", lambda m, *a, **kw: calls.append(("naive", m)) or {
        "seconds": 10.0, "images_per_s": 4500.0, "val_passes": 4, "val_transforms": "train", "dataset": "files"})
    monkeypatch.setattr(B, "fast_epoch", lambda m, *a, **kw: calls.append(("fast", m)) or {
        "seconds": 0.5, "images_per_s": 9e4, "overhead_seconds": 0.1, "compile_seconds": 1.0, "setup_seconds": 2.0,
        "warmup_seconds": 0.8, "cuda_graphs": False, "compiled": False, "num_train": 16, "num_val": 8, "data": "t"})
    path = tmp_path / "cpu.json"
    B.run_benchmark(["CANet_tiny"], tiny_source, "cpu", path, num_workers=0, progress=False)
    monkeypatch.setattr(B, "timed_as_now", lambda entry, dev: False)  # as if CUDA graphs were switched since
    calls.clear()
    B.run_benchmark([], tiny_source, "cpu", path, fast_only=["CANet_tiny"], missing_only=True, progress=False)
    assert calls == [] and read_json(path)["entries"]["CANet_tiny"]["naive_seconds"] == 10.0
    B.run_benchmark(["CANet_tiny"], tiny_source, "cpu", path, missing_only=True, num_workers=0, progress=False)
    assert calls == [("naive", "CANet_tiny"), ("fast", "CANet_tiny")]  # --models re-times both, side by side


def test_trace_steps_profiles_a_short_epoch_on_cpu(tiny_source):
    t = B.trace_steps("ShuffleNetV2", tiny_source, "cpu", steps=2, batch_size=8, row_limit=5)
    assert (t["steps"], t["batch_size"], t["cuda_graphs"], t["device_ms_per_step"]) == (2, 8, False, None)
    assert t["wall_ms_per_step"] > 0 and t["ops_per_step"] > 50  # a network's forward and backward
    assert "aten::" in t["table"] and t["table"].count("\n") < 20  # row_limit rows, not every operator
    assert t["merged"] is False  # no CANet blocks


def test_trace_steps_of_the_whole_step_graph_say_whether_it_ran(tiny_source, monkeypatch):
    monkeypatch.setenv(T.STEP_GRAPH_ENV, "all")  # the shell's choice does not decide the variant traced
    t = B.trace_steps("CANet_tiny", tiny_source, "cpu", steps=1, batch_size=4, step_graph=True)
    assert t["step_graph"] is False and t["cuda_graphs"] is False  # a CPU has no CUDA graph: eager steps
    assert "whole step" not in B.trace_line(t)
    assert B.trace_line(dict(t, device="GPU", cuda_graphs=True, step_graph=True)).startswith(
        "[trace] CANet_tiny on GPU, batch 4, 1 steps, CUDA graphs on, the whole step as one graph: ")
    assert os.environ[T.STEP_GRAPH_ENV] == "all"  # restored


def test_trace_steps_compares_merged_and_per_path_canet_blocks(tiny_source):
    per_path, merged = (B.trace_steps("CANet_tiny", tiny_source, "cpu", steps=1, batch_size=4, merged=m)
                        for m in (None, True))  # None: by device, per path on a CPU
    assert per_path["merged"] is False and merged["merged"] is True
    assert merged["ops_per_step"] < per_path["ops_per_step"] - 40  # 21 convolutions fewer, and their backward


def test_cli_bench_prints_the_compile_choice(tiny_source, tmp_path, capsys, monkeypatch):
    from lib.cli import main

    monkeypatch.setenv(T.COMPILE_MODE_ENV, "default")  # the fabricated compiled entries are mode 'default'

    path = tmp_path / "h100.json"
    atomic_write_json(path, bench_with_compiled_variants())
    assert main(["bench", "--device", "cpu", "--out", str(path), "--compile-choice"]) == 0
    assert capsys.readouterr().out == "CANet\n"
    assert main(["bench", "--device", "cpu", "--out", str(tmp_path / "none.json"), "--compile-choice"]) == 0
    assert capsys.readouterr().out == "\n"
    # The GPU runner's form: the choice into a file, and into CIFAR10_COMPILE for a --plan of the same process.
    monkeypatch.setenv(T.COMPILE_ENV, "")
    choice = tmp_path / "compile.txt"
    assert main(["bench", "--device", "cpu", "--out", str(path), "--compile-choice-file", str(choice)]) == 0
    assert choice.read_text() == "CANet\n" and os.environ[T.COMPILE_ENV] == "CANet"
    assert capsys.readouterr().out == ""
    planned = []  # a --plan in the same process estimates CANet's run compiled (73.5 s, not 79.5 s; margin 1.2)
    for extra in ([], ["--compile-choice-file", str(choice)]):
        monkeypatch.setenv(T.COMPILE_ENV, "")
        assert main(["bench", "--device", "cpu", "--out", str(path), "--plan", "p1-CANet-s0", "--budget", "1000",
                     "--data", tiny_source, "--margin", "1.0"] + extra) == 0
        planned.append(capsys.readouterr().out)
    assert "train p1-CANet-s0" in planned[0] and "train p1-CANet-s0" in planned[1]
    seconds = [float(re.search(r"estimated ([\d.]+) s", out).group(1)) for out in planned]
    assert seconds[0] - seconds[1] == pytest.approx(79.5 - 73.5, abs=1.0)


def test_bench_table_shows_ratios_against_targets():
    bench = fake_bench()
    bench["entries"]["CANet"] = fake_entry(model="CANet", fast=1.0, naive=20.6)
    bench["entries"]["CANet_tiny"] = fake_entry(model="CANet_tiny", fast=1.0, naive=15.0)
    table = B.bench_table(bench)
    canet = next(line for line in table.splitlines() if line.startswith("| CANet |"))
    tiny = next(line for line in table.splitlines() if line.startswith("| CANet_tiny |"))
    assert "| part1 (256) | eager | 20.60 | 1.00 | 20.6x (met) | 15x |" in canet
    assert "| 15.00 | 1.00 | 15.0x (missed) | 25x |" in tiny
    lines = table.splitlines()
    assert lines[0].startswith("**Against the targets** (NVIDIA H100 80GB HBM3): CANet 20.6x of 15x (eager): met; "
                               "CANet_tiny 15.0x of 25x (eager): missed. The `full` study one run after another")
    assert lines[4].startswith("| CANet_tiny |")  # measured side by side first, in study order
    assert "NVIDIA H100 80GB HBM3" in table and "17.1 min" in table
    assert "model rev" not in table  # every entry of this checkout's revisions
    assert "Speed-up: naive s/epoch / fast s/epoch, both without bookkeeping and one-off costs" in table
    one_off = canet.rstrip(" |").rsplit("| ", 1)[-1]
    assert not one_off.endswith("*")
    bench["entries"]["CANet"]["earlier_in_process"] = True  # the autotuning was paid by an earlier run: marked
    marked = next(line for line in B.bench_table(bench).splitlines() if line.startswith("| CANet |"))
    assert marked.endswith(f"| {one_off}* |")
    # A compiled row whose compile read its graphs back from the on-disk cache is marked and explained; misses only
    # (a fresh compile) or a row that is not compiled are not.
    bench["entries"]["CANet+compile-reduce-overhead"] = dict(
        fake_entry(model="CANet", fast=0.8, warmup=5.0, naive=20.6), compiled=True, compile_mode="reduce-overhead",
        compile_cache={"fxgraph_hit": 2, "fxgraph_miss": 0, "aot_hit": 1, "aot_miss": 0})
    table = B.bench_table(bench)
    row = next(line for line in table.splitlines() if line.startswith("| CANet (torch.compile, reduce-overhead) |"))
    assert row.endswith("\u2020 |") and "\u2020: compiled from torch.compile's on-disk cache" in table
    for lookups in ({"fxgraph_hit": 0, "fxgraph_miss": 2}, {"fxgraph_hit": 1, "fxgraph_miss": 1},
                    {"fxgraph_hit": 2, "aot_bypass": 1}):  # a fresh compile, or partly one: not marked
        bench["entries"]["CANet+compile-reduce-overhead"]["compile_cache"] = lookups
        assert "\u2020" not in B.bench_table(bench)
    bench["entries"]["CANet"]["compile_cache"] = {"fxgraph_hit": 2}  # (never recorded for an uncompiled row)
    assert "\u2020" not in B.bench_table(bench)
    del bench["entries"]["CANet+compile-reduce-overhead"], bench["entries"]["CANet"]["compile_cache"]
    del bench["entries"]["CANet"]["model_revision"]  # timed before CANet's blocks were merged
    table = B.bench_table(bench)
    assert "| part1 (256) | eager, model rev 1 | 20.60 |" in table
    # Under the table, one item per definition, then one per measurement line: each its own line in markdown.
    assert all(f"\n- {what}: " in table for what in ("Naive", "Fast", "Speed-up", "Targets", "Bookkeeping"))
    assert "\n- Estimated full study on " in table
    assert "(lib.models.REVISIONS: CANet at rev 2 now); the GPU runner's next `bench` call" in table
    assert "| CANet_tiny | part1 (256) | eager |" in table
    bench["entries"]["CANet_tiny"]["canet_merged"] = False  # timed with CIFAR10_CANET_MERGED=0
    assert "| CANet_tiny | part1 (256) | eager, CANet blocks per path |" in B.bench_table(bench)
    # Naive epochs from before the naive validation went through the training transforms are named as such.
    assert "the naive epochs of the rows CANet_tiny, CANet were timed before that" in table
    bench["entries"]["CANet_tiny"]["naive_val_transforms"] = "train"
    assert "the naive epochs of the rows CANet were timed before that" in B.bench_table(bench)
    bench["entries"]["CANet"]["naive_val_transforms"] = "train"
    table = B.bench_table(bench)
    assert "timed before that" not in table and "validation images through the training transforms" in table
    # Naive epochs that read decoded arrays where the original read the image files are named too.
    assert "every naive epoch here read decoded arrays from memory instead" in table
    bench["entries"]["CANet"]["naive_dataset"] = "files"
    assert "the naive epochs of the rows CANet_tiny read decoded arrays" in B.bench_table(bench)
    bench["entries"]["CANet_tiny"]["naive_dataset"] = "files"
    assert "read decoded arrays from memory instead" not in B.bench_table(bench)
    assert B.naive_dataset_as_now({"data": "official CIFAR-10"})  # never re-timed for that: no files to read
    official = {k: dict(e, data="official CIFAR-10", naive_dataset="arrays") for k, e in bench["entries"].items()}
    assert "instead" not in B.bench_table(dict(bench, entries=official))  # torchvision holds the official arrays
    # A compiled row of an older model revision in a mode the runner no longer uses is named under the table, not
    # shown (nor described by the notes); in the runner's own mode, or of this revision, it stays a row.
    old = dict(fake_entry(model="CANet", fast=7.1, naive=15.2), compiled=True, compile_mode="default",
               naive_dataset="arrays", date="2026-11-27T02:08:37+00:00")
    del old["model_revision"]  # timed before CANet's blocks were merged
    bench["entries"]["CANet+compile"] = old
    table = B.bench_table(bench)
    assert "| CANet (torch.compile) |" not in table and "read decoded arrays" not in table
    assert ("Left out of the table, as the GPU runner no longer measures them (an older implementation of the model, "
            "in a torch.compile mode it no longer uses; kept in the bench file): CANet (torch.compile), model rev 1, "
            "2026-11-27.") in table
    bench["entries"]["CANet+compile"] = dict(old, model_revision=revision("CANet"))
    assert "| CANet (torch.compile) | part1 (256) | compiled |" in B.bench_table(bench)
    bench["entries"]["CANet+compile"] = dict(old, compile_mode="reduce-overhead")
    table = B.bench_table(bench)
    assert "| CANet (torch.compile, reduce-overhead) | part1 (256) | compiled, model rev 1 |" in table
    assert "Left out of the table" not in table


def test_cli_bench_prints_table_and_estimate(tmp_path, capsys):
    from lib.cli import main

    path = tmp_path / "h100.json"
    atomic_write_json(path, fake_bench())
    assert main(["bench", "--device", "cpu", "--out", str(path), "--table", "--estimate"]) == 0
    out = capsys.readouterr().out
    assert "| ResNet18 | part1 (256)" in out and "1 seed(s): 17.1 min" in out


# ----------------------------------------------------------------------------------------- GPU fast path, on a CPU


def test_step_model_is_the_model_itself_on_cpu():
    model = build("CANet_tiny")
    loader = BatchLoader(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), 2,
                         mean=(0.5,) * 3, std=(0.5,) * 3)
    cfg = TrainConfig(name="x", model="CANet_tiny", device="cpu", compile=True)
    step, info = T.step_model_for(model, cfg, torch.device("cpu"), loader)
    assert step is model and info == {"compile": False, "cuda_graphs": False, "compile_seconds": 0.0, "note": ""}


def test_compile_is_requested_by_the_config_or_the_environment(monkeypatch):
    cfg = TrainConfig(name="x", model="CANet", device="cpu")
    monkeypatch.delenv(T.COMPILE_ENV, raising=False)
    assert not T.compile_requested(cfg) and T.compile_requested(cfg.replace(compile=True))
    for value, wanted in (("CANet", True), ("CANet_tiny, CANet", True), ("CANet_tiny", False), ("all", True),
                          ("", False)):
        monkeypatch.setenv(T.COMPILE_ENV, value)
        assert T.compile_requested(cfg) is wanted, value
    monkeypatch.setenv(T.COMPILE_ENV, "all")  # a CPU never compiles
    loader = BatchLoader(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), 2,
                         mean=(0.5,) * 3, std=(0.5,) * 3)
    model = build("CANet_tiny")
    assert T.step_model_for(model, cfg.replace(model="CANet_tiny"), torch.device("cpu"), loader)[0] is model


def test_compiled_forward_compiles_once_and_runs_only_full_training_batches(monkeypatch):
    compiled, calls = [], []

    def fake_compile(module, mode=None, dynamic=None):  # stands in for Inductor
        compiled.append((mode, dynamic))
        return lambda x: calls.append(tuple(x.shape)) or module(x)

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 30 * 30, 10))
    fwd = T.CompiledForward(model, (4, 3, 32, 32), mode="reduce-overhead")
    assert compiled == [("reduce-overhead", False)]
    assert list(fwd.state_dict()) == [f"model.{k}" for k in model.state_dict()]  # no parameters of its own
    fwd.train()
    assert fwd(torch.randn(4, 3, 32, 32)).shape == (4, 10) and calls == [(4, 3, 32, 32)]
    fwd(torch.randn(3, 3, 32, 32))  # the partial last batch: eager, no second compilation
    with torch.no_grad():
        fwd(torch.randn(4, 3, 32, 32))
    fwd.eval()
    fwd(torch.randn(4, 3, 32, 32))
    assert len(calls) == 1 and len(compiled) == 1
    T.CompiledForward(model, (4, 3, 32, 32))
    assert compiled[-1] == (None, False)  # mode "default" is torch.compile's default


def test_compiled_forward_records_its_compile_cache_lookups_after_the_first_step(monkeypatch):
    """At the second full batch (the first step's backward compiled by then) info['compile_cache'] holds the
    cache lookups made since the module was built, not those of the process before it."""
    from torch._dynamo.utils import counters

    def fake_compile(module, mode=None, dynamic=None):  # a compile that reads one graph back, misses another
        def run(x):
            if not seen:
                counters["inductor"]["fxgraph_cache_hit"] += 1
                counters["aot_autograd"]["autograd_cache_miss"] += 1
                seen.append(x)
            return module(x)
        return run

    seen = []
    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setitem(counters, "inductor", counters["inductor"].copy())  # restored after the test
    monkeypatch.setitem(counters, "aot_autograd", counters["aot_autograd"].copy())
    counters["inductor"]["fxgraph_cache_miss"] += 5  # an earlier compile in this process: not this module's
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 10)).train()
    info = {}
    fwd = T.CompiledForward(model, (2, 3, 4, 4), info=info)
    fwd(torch.randn(2, 3, 4, 4))
    assert "compile_cache" not in info
    fwd(torch.randn(1, 3, 4, 4))  # the partial batch runs eagerly and records nothing
    assert "compile_cache" not in info
    fwd(torch.randn(2, 3, 4, 4))
    assert info["compile_cache"] == {"fxgraph_hit": 1, "fxgraph_miss": 0, "fxgraph_bypass": 0, "aot_hit": 0,
                                     "aot_miss": 1, "aot_bypass": 0}


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="Inductor's CPU code needs a C++ compiler")
def test_a_second_process_reads_the_compiled_graphs_back_from_the_cache_folder(tmp_path):
    """What the GPU runner's carried cache relies on: a process compiling what an earlier one compiled into the same
    TORCHINDUCTOR_CACHE_DIR reads the graphs back (hits, no misses), and CompiledForward says so (the counter names
    hold for the installed torch). A tiny model on the CPU: 10-20 s, then 2-4."""
    code = ("import json, torch, lib.train as T\n"
            "model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).train()\n"
            "info = {}\n"
            "fwd = T.CompiledForward(model, (2, 3, 2, 2), info=info)\n"
            "for _ in range(2):\n"
            "    fwd(torch.randn(2, 3, 2, 2)).sum().backward()\n"
            "print(json.dumps(info['compile_cache']))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHINDUCTOR_", "TORCH_COMPILE"))}
    env.update(TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(REPO))  # caches on, as by default
    first, second = (json.loads(subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                                               text=True, timeout=300, check=True).stdout.splitlines()[-1])
                     for _ in range(2))
    assert first["fxgraph_miss"] >= 2 and first["fxgraph_hit"] == 0  # forward and backward compiled
    assert second["fxgraph_hit"] == first["fxgraph_miss"] and second["fxgraph_miss"] == 0
    assert second["aot_hit"] == first["aot_miss"] >= 1 and first["fxgraph_bypass"] == second["fxgraph_bypass"] == 0


def test_step_model_on_cuda_is_compiled_where_requested(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda module, mode=None, dynamic=None: module)  # no CUDA needed
    loader = BatchLoader(torch.zeros(8, 3, 32, 32, dtype=torch.uint8), torch.zeros(8, dtype=torch.long), 4,
                         mean=(0.5,) * 3, std=(0.5,) * 3)
    cfg = TrainConfig(name="x", model="CANet_tiny", device="cuda", batch_size=4)
    model = build("CANet_tiny")
    monkeypatch.setenv(T.COMPILE_ENV, "CANet_tiny")
    monkeypatch.setenv(T.CUDA_GRAPHS_ENV, "0")  # compile does not depend on the CUDA-graph switch
    monkeypatch.setattr(T, "_STEPS_BUILT", set())  # a fresh process
    step, info = T.step_model_for(model, cfg, torch.device("cuda"), loader)
    assert isinstance(step, T.CompiledForward) and step.batch_shape == (4, 3, 32, 32)
    assert info["compile"] is True and info["compile_mode"] == "default" and info["cuda_graphs"] is False
    assert info["earlier_in_process"] is False  # the first run of the model in this process: it pays the one-off
    assert T.step_model_for(build("CANet_tiny"), cfg, torch.device("cuda"), loader)[1]["earlier_in_process"] is True
    assert T.step_model_for(build("VGG11"), cfg.replace(model="VGG11"), torch.device("cuda"),
                            loader)[1]["earlier_in_process"] is False
    step, info = T.step_model_for(model, cfg.replace(batch_size=16), torch.device("cuda"), loader)
    assert step is model and "fewer images than one batch" in info["note"]
    monkeypatch.setenv(T.COMPILE_ENV, "")
    step, info = T.step_model_for(model, cfg, torch.device("cuda"), loader)
    assert step is model and info["compile"] is False and "=0: eager steps" in info["note"]
    monkeypatch.delenv(T.CUDA_GRAPHS_ENV)
    monkeypatch.setenv(T.EAGER_MODELS_ENV, "CANet_tiny")  # its graph check failed: no capture is tried
    step, info = T.step_model_for(model, cfg, torch.device("cuda"), loader)
    assert step is model and info["cuda_graphs"] is False and "names CANet_tiny: eager steps" in info["note"]


def test_compiled_forward_falls_back_to_eager_steps_when_the_compile_fails(monkeypatch):
    def broken(x):
        raise RuntimeError("Inductor exploded")

    monkeypatch.setattr(torch, "compile", lambda module, mode=None, dynamic=None: broken)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 10)).train()
    info = {"compile": True}
    fwd = T.CompiledForward(model, (2, 3, 4, 4), info=info)
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(fwd(x), model(x))  # the eager result, not an error
    assert info["compile"] is False and "Inductor exploded" in info["note"]
    assert torch.equal(fwd(x), model(x))


def test_graphed_forward_replays_only_full_training_batches(monkeypatch):
    calls = []

    def fake_make_graphed(module, sample_args, **kwargs):  # stands in for the CUDA capture
        def replay(x):
            calls.append(tuple(x.shape))
            return module(x)
        return replay

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", fake_make_graphed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 30 * 30, 10))
    graphed = T.GraphedForward(model, torch.randn(4, 3, 32, 32), TrainConfig(name="x", model="CANet_tiny"))
    assert all(k.startswith("model.") for k in graphed.state_dict())  # the graph holds no parameters of its own
    graphed.train()
    assert graphed(torch.randn(4, 3, 32, 32)).shape == (4, 10) and calls == [(4, 3, 32, 32)]
    graphed(torch.randn(3, 3, 32, 32))  # an epoch's last, partial batch: eager
    with torch.no_grad():
        graphed(torch.randn(4, 3, 32, 32))
    graphed.eval()
    graphed(torch.randn(4, 3, 32, 32))
    assert len(calls) == 1 and not model.training


@pytest.mark.parametrize("pass_values, piece_values", [(1 << 24, 1 << 16), (2500, 300)])
def test_device_histograms_equal_tensorboards(tmp_path, monkeypatch, pass_values, piece_values):
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import make_histogram

    # 2500 / 300: several passes, a tensor split over two of them, statistics over several pieces per part
    monkeypatch.setattr(T, "HIST_PASS_VALUES", pass_values)
    monkeypatch.setattr(T, "HIST_PIECE_VALUES", piece_values)
    writer = SummaryWriter(str(tmp_path))
    edges = np.asarray(writer.default_bins, dtype=np.float64)
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(2000, generator=gen, dtype=torch.float64) * 0.05,
               torch.randn(3, 7, 5, generator=gen) * 30, torch.full((4,), 0.25),
               torch.randn(4000, generator=gen), torch.tensor([1.0, float("inf"), 2.0])]
    # zero, a tiny value, the last edge (closed), values beyond the edges (not counted, but in min/max/sums)
    tensors[0][:6] = torch.tensor([0.0, 1e-13, -2.5, 3.0, edges[-1], -1e21], dtype=torch.float64)
    counts, stats = T.param_histograms(tensors, edges)
    assert counts.shape == (5, len(edges) - 1) and counts.dtype == np.int64 and stats.shape == (5, 5)
    for values, row, (vmin, vmax, vsum, vsq, finite) in zip(tensors[:4], counts, stats):
        got_counts, got_limits = T._trim_histogram(row, edges)
        ref = make_histogram(values.numpy().reshape(-1).astype(np.float64), edges)
        assert got_counts.tolist() == list(ref.bucket) and got_limits.tolist() == list(ref.bucket_limit)
        assert (vmin, vmax, finite) == (ref.min, ref.max, 1.0)
        assert vsum == pytest.approx(ref.sum, rel=1e-9, abs=1e-4)
        assert vsq == pytest.approx(ref.sum_squares, rel=1e-9)
    assert counts[0].sum() == 1999  # -1e21 is outside the edges
    assert stats[4, 4] == 0.0  # not all finite

    class Recorder:
        default_bins = writer.default_bins
        rows = []

        def add_histogram_raw(self, tag, vmin, vmax, num, vsum, vsq, limits, bucket_counts, global_step):
            self.rows.append((tag, num, sum(bucket_counts), global_step))

    model = build("CANet_tiny")
    with torch.no_grad():
        model.head[-1].bias[0] = float("nan")  # non-finite parameters are left out, as lib.train does on CPU
    T._add_param_histograms_on_device(Recorder(), model, step=3)
    params = dict(model.named_parameters())
    assert [r[0] for r in Recorder.rows] == [n for n in params if n != "head.5.bias"]
    assert all(num == params[tag].numel() == total and step == 3 for tag, num, total, step in Recorder.rows)
    writer.close()


def test_device_histograms_run_the_same_operators_for_any_number_of_tensors():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.__name__)
            return func(*args, **(kwargs or {}))

    edges = np.linspace(-1, 1, 11)
    counted = []
    for n in (3, 40):
        tensors = [torch.randn(5 + i) for i in range(n)]
        with Ops() as ops:
            T.param_histograms(tensors, edges)
        counted.append([name for name in ops.names if name not in ("view.default", "detach.default", "slice.Tensor")])
    assert counted[0] == counted[1] and len(counted[0]) < 40  # one batched pass, not ~26 operators per tensor


def test_gpu_bookkeeping_trains_the_same_and_checkpoints_less(tiny_source, tmp_path, monkeypatch):
    cfg = TrainConfig(name="tiny", model="ShuffleNetV2", profile="smoke", data_source=tiny_source, num_epochs=2,
                      batch_size=16, num_train=16, num_val=8, num_test=20, device="cpu")
    ref = T.train(cfg, dirs=output_dirs("smoke", root=tmp_path / "ref"), progress=False)
    monkeypatch.setattr(T, "_gpu_fast_path", lambda device: True)  # the CUDA bookkeeping, run on the CPU
    saves = []
    real_save = T._save_checkpoint
    monkeypatch.setattr(T, "_save_checkpoint", lambda path, state: (saves.append(Path(path).name),
                                                                      real_save(path, state)))
    dirs = output_dirs("smoke", root=tmp_path / "fast")
    fast = T.train(cfg, dirs=dirs, progress=False)
    assert strip_seconds(fast["history"]) == strip_seconds(ref["history"]) and fast["test_acc"] == ref["test_acc"]
    # Best weights written once at the end, with the resumable checkpoint (one write each: a process killed before
    # the result is written resumes without a best checkpoint ahead of it), which the finished run deletes.
    assert saves == ["tiny.pt", "tiny.last.pt"]
    assert (dirs.checkpoints / "tiny.pt").exists() and not (dirs.checkpoints / "tiny.last.pt").exists()
    assert any((dirs.runs / "tiny").iterdir()) and "fast_path" not in fast  # a CPU result keeps its keys

    saves.clear()  # stopped early: both checkpoints are written where the call stops, and resuming is exact
    dirs = output_dirs("smoke", root=tmp_path / "resumed")
    assert T.train(cfg, dirs=dirs, progress=False, max_epochs_this_call=1)["status"] == "incomplete"
    assert saves == ["tiny.pt", "tiny.last.pt"]
    resumed = T.train(cfg, dirs=dirs, progress=False)
    assert strip_seconds(resumed["history"]) == strip_seconds(ref["history"])
    assert resumed["test_acc"] == ref["test_acc"]


def test_estimate_names_the_models_timed_without_cuda_graphs_on_a_gpu():
    bench = fake_bench()
    for key, entry in bench["entries"].items():
        entry["cuda_graphs"] = key != "ResNet34"
    assert B.format_estimate(bench).endswith("timed without CUDA graphs, so an upper bound: ResNet34")
    bench["entries"]["ResNet34"]["cuda_graphs"] = True
    assert "upper bound" not in B.format_estimate(bench)
    assert "upper bound" not in B.format_estimate(dict(bench, device_slug="cpu-x86-64", entries={
        k: dict(e, cuda_graphs=False) for k, e in bench["entries"].items()}))


def test_agreement_compares_final_accuracies_and_is_saved_in_the_bench_file(tiny_source, tmp_path, monkeypatch):
    accs = {("naive", 0): [0.1, 0.30], ("naive", 1): [0.2, 0.34], ("fast", 0): [0.1, 0.31], ("fast", 1): [0.3, 0.35]}
    monkeypatch.setattr(B, "naive_run", lambda m, src, dev, *, epochs, seed, **kw: {
        "val_acc": accs["naive", seed], "seconds": 5.0, "num_train": 16, "num_val": 8, "data": "tiny"})
    monkeypatch.setattr(B, "fast_run", lambda m, src, dev, *, epochs, seed, **kw: {
        "val_acc": accs["fast", seed], "seconds": 1.0, "fast_path": None})
    r = B.agreement("CANet_tiny", tiny_source, "cpu", epochs=2, seeds=(0, 1))
    assert r["naive_mean"] == pytest.approx(0.32) and r["fast_mean"] == pytest.approx(0.33)
    assert r["difference"] == pytest.approx(0.01) and r["naive_std"] == pytest.approx(0.02 ** 0.5 * 0.2)
    assert 0.5 < r["p_value"] <= 1.0  # a difference well inside the seeds' spread
    path = tmp_path / "cpu.json"
    B.save_agreement(r, path, "cpu")
    B.save_agreement(dict(r, model="VGG_A_BN"), path, "cpu")  # merged per model
    assert set(read_json(path)["agreement"]) == {"CANet_tiny", "VGG_A_BN"}
    line = next(x for x in B.bench_table(path).splitlines() if x.startswith("- Naive vs fast, CANet_tiny"))
    assert "naive 32.00 ± 2.83%, fast 33.00 ± 2.83% (fast - naive +1.00 points, Welch p = " in line
    # On a GPU the line names how the fast runs stepped (the compiled step is another path than the graphed one).
    data = read_json(path)
    data["agreement"]["CANet_tiny"]["fast_path"] = {"compile": False, "cuda_graphs": True}
    assert "fast (CUDA-graphed step) 33.00 ± 2.83%" in B.agreement_lines(data)[0]
    assert B.fast_path_label({"compile": True, "cuda_graphs": False}) == " (torch.compile'd step)"
    assert B.fast_path_label({"compile": True, "step_graph": True}) == " (whole-step CUDA graph, torch.compile'd)"
    assert B.fast_path_label({"compile": False, "cuda_graphs": False}) == " (eager steps)"
    assert B.agreement("CANet_tiny", tiny_source, "cpu", epochs=2, seeds=(0,))["p_value"] is None


def test_fast_run_trains_with_lib_train_and_publishes_nothing(tiny_source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = B.fast_run("ShuffleNetV2", tiny_source, "cpu", epochs=2, num_train=16, num_val=8)
    assert len(run["val_acc"]) == 2 and run["seconds"] > 0
    assert not (Path(B.REPO) / "results" / "smoke" / "agreement-ShuffleNetV2-s0.json").exists()


def test_cli_agreement_runs_once_per_model_with_missing_only(tiny_source, tmp_path, monkeypatch, capsys):
    from lib.cli import main

    calls = []
    monkeypatch.setattr(B, "agreement", lambda model, *a, **kw: calls.append((model, kw["seeds"])) or {
        "model": model, "kind": "agreement", "epochs": kw["epochs"], "seeds": kw["seeds"], "device": "cpu",
        "date": "2026-11-27", "num_train": 16, "naive_mean": 0.3, "fast_mean": 0.3, "difference": 0.0,
        "model_revision": revision(model)})
    args = ["bench", "--device", "cpu", "--out", str(tmp_path / "cpu.json"), "--data", tiny_source,
            "--agreement", "CANet_tiny", "--epochs", "2"]
    assert main(args + ["--missing-only"]) == 0 and calls == [("CANet_tiny", [0, 1])]  # default seeds 0 1
    assert main(args + ["--missing-only"]) == 0 and len(calls) == 1
    assert "already (--missing-only)" in capsys.readouterr().out.splitlines()[-1]
    assert main(args + ["--seeds", "3"]) == 0 and calls[-1] == ("CANet_tiny", [3])
    data = read_json(tmp_path / "cpu.json")
    del data["agreement"]["CANet_tiny"]["model_revision"]  # run before CANet's blocks were merged
    atomic_write_json(tmp_path / "cpu.json", data)
    assert main(args + ["--missing-only"]) == 0 and len(calls) == 3  # not reused: run again


def test_graph_checks_are_kept_per_model_and_read_from_older_files(tmp_path):
    path = tmp_path / "cpu.json"
    old = {"model": "CANet_tiny", "ok": True, "steps": 3, "torch": torch.__version__, "precision": "fp32"}
    atomic_write_json(path, {"device": device_name("cpu"), "device_slug": "cpu", "entries": {}, "graph_check": old})
    assert B.graph_checks(path) == {"CANet_tiny": old}
    B.save_graph_check(dict(old, model="VGG11", ok=False, max_rel_diff={"grad": 0.5}), path, "cpu")
    data = read_json(path)
    assert "graph_check" not in data and set(data["graph_checks"]) == {"CANet_tiny", "VGG11"}
    (line,) = B.graph_check_lines(path)
    assert "the same within tolerance for CANet_tiny" in line and "DIFFERENT for VGG11" in line


def test_cli_checks_graphs_of_several_models_and_reuses_recorded_checks(tmp_path, monkeypatch, capsys):
    from lib.cli import main

    calls = []
    monkeypatch.setattr(B, "check_cuda_graphs", lambda model, *a, **kw: calls.append(model) or {
        "model": model, "ok": model != "VGG11", "steps": 3, "torch": torch.__version__,
        "model_revision": revision(model), "check_version": B.GRAPH_CHECK_VERSION})
    out = str(tmp_path / "cpu.json")
    assert main(["bench", "--device", "cpu", "--out", out, "--check-graphs", "CANet_tiny"]) == 0
    assert main(["bench", "--device", "cpu", "--out", out, "--check-graphs", "CANet_tiny", "VGG11",
                 "--missing-only"]) == 3  # VGG11's graph differs: exit status 3
    assert calls == ["CANet_tiny", "VGG11"]  # CANet_tiny's recorded check was reused
    assert main(["bench", "--device", "cpu", "--out", out, "--check-graphs", "VGG11", "--missing-only"]) == 3
    assert calls == ["CANet_tiny", "VGG11"] and "recorded in" in capsys.readouterr().out
    assert main(["bench", "--device", "cpu", "--out", out, "--graph-failures"]) == 0
    assert capsys.readouterr().out == "VGG11\n"
    failures = tmp_path / "eager.txt"  # the GPU runner's form: written after this call's checks
    assert main(["bench", "--device", "cpu", "--out", str(tmp_path / "fresh.json"), "--check-graphs", "VGG11",
                 "--graph-failures-file", str(failures)]) == 3
    assert failures.read_text() == "VGG11\n" and calls[-1] == "VGG11"
    checks = B.graph_checks(out)
    B.save_graph_check({k: v for k, v in checks["CANet_tiny"].items() if k != "model_revision"}, out, "cpu")
    assert main(["bench", "--device", "cpu", "--out", out, "--check-graphs", "CANet_tiny", "--missing-only"]) == 0
    assert calls[-1] == "CANet_tiny"  # checked with an older CANet: checked again

    def crash(model, *a, precision, **kw):
        calls.append((model, precision))
        if precision == "bf16":
            raise RuntimeError("capture failed")
        return {"model": model, "ok": True, "steps": 3, "torch": torch.__version__, "check_precision": precision}

    monkeypatch.undo()  # the real check_cuda_graphs, around a comparison that crashes in bf16
    monkeypatch.setattr(B, "_compare_graphed_steps", crash)
    assert main(["bench", "--device", "cpu", "--out", out, "--check-graphs", "ResNet18",
                 "--check-precisions", "fp32", "bf16"]) == 3  # a crashed check counts as failed
    assert calls[-2:] == [("ResNet18", "fp32"), ("ResNet18", "bf16")]
    checks = B.graph_checks(out)
    assert checks["ResNet18"]["ok"] and checks["ResNet18/bf16"]["ok"] is False
    assert "capture failed" in checks["ResNet18/bf16"]["note"] and B.graph_failures(out) == ["ResNet18", "VGG11"]
    assert B.graph_check_as_now(checks["ResNet18/bf16"])  # a crash of this version is not made again each call


def test_agreement_runs_of_a_bn_model_use_the_seed_asked_for(tiny_source, monkeypatch):
    seen = []
    monkeypatch.setattr(T, "train", lambda cfg, **kw: seen.append(cfg.seed) or {"history": [{"val_acc": 0.5}]})
    for seed in (0, 1):
        B.fast_run("VGG_A_BN", tiny_source, "cpu", epochs=1, seed=seed, num_train=16, num_val=8)
    assert seen == [0, 1]  # not the BN protocol's one fixed seed twice


def test_traces_are_recorded_per_variant_and_shown_under_the_table(tmp_path, monkeypatch, capsys):
    from lib.cli import main

    cuda = torch.device("cuda")
    assert B.trace_variants("CANet_tiny", cuda) == ["eager", "graphed", "graphed-per-path", "step-graph"]
    assert B.trace_variants("ResNet18", cuda) == ["eager", "graphed", "step-graph"]
    assert B.trace_variants("CANet_tiny", torch.device("cpu")) == ["eager"]
    calls = []

    def fake_trace(model, *a, cuda_graphs, merged, step_graph, **kw):
        calls.append((model, cuda_graphs, merged, step_graph))
        return {"model": model, "device": "CPU", "steps": 30, "batch_size": 256, "cuda_graphs": cuda_graphs,
                "merged": False, "wall_ms_per_step": 72.25, "device_ms_per_step": None, "ops_per_step": 3696.4,
                "table": "TABLE"}

    monkeypatch.setattr(B, "trace_steps", fake_trace)
    out = tmp_path / "cpu.json"
    args = ["bench", "--device", "cpu", "--out", str(out), "--trace", "CANet_tiny", "--missing-only"]
    assert main(args) == 0 and calls == [("CANet_tiny", False, None, False)]
    record = read_json(out)["traces"]["CANet_tiny:eager"]
    assert "table" not in record and record["model_revision"] == revision("CANet_tiny")
    assert main(args) == 0 and len(calls) == 1  # recorded with this torch and model revision: skipped
    assert "already (--missing-only)" in capsys.readouterr().out
    older = read_json(out)
    del older["traces"]["CANet_tiny:eager"]["trace_version"]  # as recorded before TRACE_VERSION 2
    B.atomic_write_json(out, older)
    assert main(args) == 0 and len(calls) == 2  # made again, beside the variants of this version
    (line,) = B.trace_lines(out)
    assert line.startswith("Profiled training step of CANet_tiny (30 steps of batch 256, ")
    assert line.endswith(": eager 72.25 ms wall, - ms of kernels, 3696 host ops.")
    data = read_json(out)
    data["traces"]["CANet_tiny:graphed-per-path"] = dict(record, variant="graphed-per-path", wall_ms_per_step=9.5,
                                                         device_ms_per_step=7.25)
    assert "; graphed-per-path 9.50 ms wall, 7.25 ms of kernels, 3696 host ops." in B.trace_lines(data)[0]
    data["traces"]["CANet_tiny:step-graph"] = dict(record, variant="step-graph", wall_ms_per_step=7.5,
                                                   device_ms_per_step=7.0, ops_per_step=180, step_graph=True)
    assert B.trace_lines(data)[0].endswith("; step-graph 7.50 ms wall, 7.00 ms of kernels, 180 host ops.")
    data["traces"]["CANet_tiny:step-graph"]["step_graph"] = False  # its capture failed: eager steps, said so
    assert "; step-graph (capture failed: eager steps) 7.50 ms wall" in B.trace_lines(data)[0]
    data["entries"] = {"CANet": fake_entry()}
    assert B.trace_lines(data)[0] in B.bench_table(data)


def test_trace_line_names_the_step_kind_and_the_kernel_time():
    t = {"model": "CANet_tiny", "device": "GPU", "batch_size": 256, "steps": 30, "cuda_graphs": True,
         "wall_ms_per_step": 16.05, "device_ms_per_step": 7.654, "ops_per_step": 732.4, "table": "TABLE"}
    assert B.trace_line(t) == ("[trace] CANet_tiny on GPU, batch 256, 30 steps, CUDA graphs on: 16.05 ms/step wall, "
                               "7.65 ms/step of kernels, 732 host ops/step\nTABLE")
    assert "off: 16.05 ms/step wall, - ms/step of kernels" in B.trace_line(dict(t, cuda_graphs=False,
                                                                                device_ms_per_step=None))


def test_device_name_gives_the_cpu_threads(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert device_name("cpu").startswith("CPU (") and device_name("cpu").endswith(", 1 thread)")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert device_name("cpu").endswith(", 4 threads)")


def test_cpu_model_is_read_from_cpuinfo_else_the_platform(tmp_path, monkeypatch):
    import lib.results as R

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R)  Xeon(R) Platinum 8480+\n"
                    "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n")
    assert R.cpu_model(info) == "Intel(R) Xeon(R) Platinum 8480+"  # the first, whitespace collapsed
    monkeypatch.setattr(R.platform, "processor", lambda: "")
    monkeypatch.setattr(R.platform, "machine", lambda: "aarch64")
    info.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")  # many ARM kernels name no model
    assert R.cpu_model(info) == "aarch64" and R.cpu_model(tmp_path / "absent") == "aarch64"
    monkeypatch.setattr(R, "cpu_model", lambda: "AMD EPYC 9654")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert device_name("cpu") == "CPU (AMD EPYC 9654, 2 threads)"


@pytest.mark.parametrize("bench_file", gpu_bench_files(), ids=lambda p: p.stem)
def test_readme_and_report_show_each_committed_gpu_table_as_rendered_from_its_file(bench_file, monkeypatch):
    # The README's speed table and report.md's are rendered by `python -m lib refresh` (and `report`): both must be
    # what the committed bench file renders now (a merge of a new GPU call without a refresh fails here), whatever
    # this shell exported.
    monkeypatch.setenv(T.COMPILE_ENV, "")  # as after docs/GPU.md's export, with no model compiled
    with B.as_committed():
        table = B.bench_table(bench_file)
    readme = (REPO / "README.md").read_text()
    with B.as_committed():
        assert table in readme and f"Estimated {B.format_estimate(bench_file)}." in readme
    assert B.readme_with_tables(readme, [bench_file], REPO) == readme, "README.md is stale: python -m lib refresh"
    assert table in (REPO / "report.md").read_text()  # its speed section: python -m lib report ... --publish


def test_speed_probe_times_each_variant_and_restores_lib_train(tiny_source, tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("speed_probe", REPO / "scripts" / "speed_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    built = []
    new_model = T.new_model
    monkeypatch.setattr(T, "new_model", lambda cfg, dev: built.append(new_model(cfg, dev)) or built[-1])
    patched = (T.prepare_data, T.new_model)  # what the probe finds (the spy above) and must put back
    out = tmp_path / "probe.jsonl"
    args = [str(out), "CANet_tiny", "--data", tiny_source, "--num-train", "16", "--num-val", "8", "--variants"]
    assert probe.main(args + ["channels_last", "nchw", "streams"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["variant"] for r in rows] == ["channels_last", "nchw", "streams"]
    assert all(r["seconds"] > 0 and r["model"] == "CANet_tiny" and r["device"] == "cpu" for r in rows)
    # On a CPU the blocks ignore the side stream: one stream's pass and the "two streams'" agree exactly.
    assert rows[2]["max_abs_diff_vs_one_stream"] == 0.0 and "max_abs_diff_vs_one_stream" not in rows[0]
    assert len(built) == 3 + 2  # one per timed epoch, and the two models the streams row compares
    conv = [next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).weight for model in built]
    assert conv[0].is_contiguous(memory_format=torch.channels_last) and not conv[0].is_contiguous()
    assert conv[1].is_contiguous()
    assert (T.prepare_data, T.new_model) == patched  # lib.train as it was
    with pytest.raises(SystemExit):
        probe.main(args + ["nhwc"])


def test_speed_probe_compares_the_step_graph_with_eager_steps(tiny_source, tmp_path):
    """The step_graph row: timed with CIFAR10_STEP_GRAPH set for the epoch only, and compared with eager steps from
    the same weights (on a CPU the step runs uncaptured, the same to the bit, MixUp/CutMix batches included)."""
    import importlib.util

    from lib.step_graph import STEP_GRAPH_ENV

    spec = importlib.util.spec_from_file_location("speed_probe", REPO / "scripts" / "speed_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    seen = []
    real_fast_epoch = probe.fast_epoch
    probe.fast_epoch = lambda *a, **kw: seen.append((kw["step_graph"], kw["compile"])) or real_fast_epoch(*a, **kw)
    d = probe.step_graph_difference("CANet_tiny", tiny_source, torch.device("cpu"), False, batch_size=8)
    assert d == {"max_abs_diff_weights": 0.0, "max_abs_diff_step_loss": 0.0, "compared_step_graph": True,
                 "compared_note": ""}
    out = tmp_path / "probe.jsonl"
    args = [str(out), "CANet_tiny", "--data", tiny_source, "--num-train", "16", "--num-val", "8", "--variants"]
    probe.step_graph_difference = lambda *a: {"max_abs_diff_weights": 0.5, "compared_step_graph": False}
    assert probe.main(args + ["step_graph"]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["variant"] == "step_graph" and row["max_abs_diff_weights"] == 0.5 and not row["compared_step_graph"]
    assert row["step_graph"] is False  # the timed epoch: a CPU steps eagerly (lib.train routes CUDA steps only)
    assert seen == [(True, False)] and STEP_GRAPH_ENV not in os.environ


def test_speed_probe_records_a_failed_capture_and_stops(tmp_path, capsys):
    """A step-graph variant whose capture fails: a row with the error, no later variant timed in this process
    (CUDA may be left mid-capture), exit status 1; another variant's error is not swallowed."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("speed_probe", REPO / "scripts" / "speed_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    timed = []

    def failing(model, data, **kw):
        timed.append(kw["step_graph"])
        raise RuntimeError("the whole-step CUDA graph's capture failed (RuntimeError: boom)")

    probe.fast_epoch = failing
    out = tmp_path / "probe.jsonl"
    with pytest.raises(SystemExit):  # on a CPU only with a dry run's sizes (whole epochs there take many minutes)
        probe.main([str(out), "CANet_tiny", "--variants", "step_graph"])
    assert "on a machine without CUDA give --num-train and --num-val" in capsys.readouterr().err and timed == []
    small = ["--num-train", "16", "--num-val", "8"]
    assert probe.main([str(out), "CANet_tiny", *small, "--variants", "step_graph", "step_graph_compiled"]) == 1
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["variant"] == "step_graph" and row["seconds"] is None and row["step_graph"] is False
    assert "capture failed (RuntimeError: boom)" in row["capture_error"] and timed == [True]
    assert "step_graph stopped the probe" in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="boom"):
        probe.main([str(out), "CANet_tiny", *small, "--variants", "nchw"])


def test_missing_steps_names_what_the_missing_only_steps_would_do(tiny_source, tmp_path, monkeypatch, capsys):
    """The runner leaves out its missing-only graph-check and fast-epoch steps when missing_steps finds nothing for
    them: what it finds must be exactly what those steps would measure."""
    current = {"torch": torch.__version__, "check_version": B.GRAPH_CHECK_VERSION}
    bench = {"device": device_name("cpu"), "entries": {
        "CANet_tiny": fake_entry(model="CANet_tiny"),                                  # as now
        "ResNet18": dict(fake_entry(model="ResNet18"), model_revision=0),             # an older model: re-timed
        "VGG_A": dict(fake_entry(model="VGG_A", naive=9.0), model_revision=0),        # kept for its naive epoch
        "probe-VGG_A": {"model": "VGG_A", "kind": "probe", "seconds_per_step": 0.01}},
        "graph_checks": {"CANet_tiny": dict(current, model="CANet_tiny", ok=True,
                                            model_revision=revision("CANet_tiny")),
                         "ResNet18": dict(current, model="ResNet18", ok=False, model_revision=revision("ResNet18")),
                         "VGG_A": dict(current, model="VGG_A", ok=True, model_revision=0)}}
    path = tmp_path / "cpu.json"
    atomic_write_json(path, bench)
    models, probes = ["CANet_tiny", "ResNet18", "VGG_A", "ShuffleNetV2"], ["VGG_A", "VGG_A_BN"]
    steps = B.missing_steps(models, probes, "cpu", path)
    assert steps == {"graph": ["VGG_A", "ShuffleNetV2"], "eager": ["ResNet18"],
                     "fast": ["ResNet18", "ShuffleNetV2", "probe-VGG_A_BN"], "naive_kept": ["VGG_A"]}
    timed = []
    monkeypatch.setattr(B, "fast_epoch", lambda m, *a, **kw: timed.append(m) or {
        "seconds": 0.5, "images_per_s": 1.0, "overhead_seconds": 0.1, "compile_seconds": 0.0, "setup_seconds": 1.0,
        "warmup_seconds": 0.6, "cuda_graphs": False, "compiled": False, "num_train": 16, "num_val": 8, "data": "t"})
    monkeypatch.setattr(B, "probe_step_seconds", lambda m, *a, **kw: timed.append(f"probe-{m}") or {
        "seconds_per_step": 0.01})
    B.run_benchmark([], tiny_source, "cpu", path, fast_only=models, probes=probes, missing_only=True, progress=False)
    assert timed == steps["fast"]
    # On a GPU a recorded graph failure makes that model's graphed timing stale: it is timed again, eagerly.
    monkeypatch.setattr(T, "resolve_device", lambda device: torch.device("cuda"))
    bench["entries"]["ResNet18"] = dict(fake_entry(model="ResNet18"), cuda_graphs=True)
    atomic_write_json(path, bench)
    assert B.missing_steps(["ResNet18", "CANet_tiny"], (), "cuda", path)["fast"] == ["ResNet18", "CANet_tiny"]
    bench["entries"]["ResNet18"]["cuda_graphs"] = False
    bench["entries"]["CANet_tiny"].update(cuda_graphs=True, canet_merged=True)
    atomic_write_json(path, bench)
    assert B.missing_steps(["ResNet18", "CANet_tiny"], (), "cuda", path)["fast"] == []
    # Written for the runner: one file per list, empty where there is nothing; the stale timings the fast step
    # keeps for their naive epochs are named, as that step would.
    monkeypatch.setattr(B, "missing_steps", lambda *a, **kw: {"graph": [], "eager": ["ResNet18"], "fast": ["A", "B"],
                                                              "naive_kept": ["VGG_A"]})
    capsys.readouterr()
    B.write_missing_steps(tmp_path, models, probes)
    assert "[bench] VGG_A: timed otherwise than now, but with its naive epoch" in capsys.readouterr().out
    assert [(tmp_path / f"{n}.txt").read_text() for n in ("graph-missing", "eager-recorded", "fast-missing")] == [
        "", "ResNet18\n", "A B\n"]


def test_runner_first_step_reads_the_data_only_with_cuda_or_for_a_dry_run(tmp_path, monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip("tests the step on a machine without CUDA")
    loaded = []
    monkeypatch.setattr(B, "load_cifar10", lambda: loaded.append(1) or "data")
    monkeypatch.setattr(B, "missing_steps", lambda models, probes: {"graph": [], "eager": [], "fast": list(probes),
                                                                     "naive_kept": []})
    assert B.runner_first_step(False, tmp_path, ["CANet_tiny"], True) == 3 and loaded == []
    assert not list(tmp_path.iterdir()) and f"torch {torch.__version__}" in capsys.readouterr().out
    assert B.runner_first_step(True, tmp_path, ["CANet_tiny"], True) == 3 and loaded == [1]
    assert (tmp_path / "fast-missing.txt").read_text() == " ".join(B.BN_MODELS) + "\n"  # probes=True: the BN models'
    assert (tmp_path / "graph-missing.txt").read_text() == ""
    assert B.runner_first_step(True, None, ["CANet_tiny"], False) == 3 and loaded == [1, 1]  # no folder: no files
    monkeypatch.setattr(B, "missing_steps", lambda *a: {}[0])  # a failure leaves every step to run
    (tmp_path / "graph-missing.txt").unlink()
    assert B.runner_first_step(True, tmp_path, ["CANet_tiny"], False) == 3
    assert "(what is missing not known: KeyError" in capsys.readouterr().out
    assert not (tmp_path / "graph-missing.txt").exists()


def test_the_readme_speed_table_is_replaced_between_its_lines_and_a_missing_place_is_named(tmp_path):
    bench_file = tmp_path / "results" / "bench" / "nvidia-h100.json"
    atomic_write_json(bench_file, {"device": "NVIDIA H100", "device_slug": "nvidia-h100", "entries": {}})
    begin = B.README_TABLE_BEGIN.format(path="results/bench/nvidia-h100.json")
    text = f"# Title\n\nbefore\n\n{begin}\n\n| old | table |\n\n{B.README_TABLE_END}\n\nafter\n"
    new = B.readme_with_tables(text, [bench_file], tmp_path)
    assert new == f"# Title\n\nbefore\n\n{begin}\n\n{B.bench_table(bench_file)}\n{B.README_TABLE_END}\n\nafter\n"
    assert "| old | table |" not in new and B.readme_with_tables(new, [bench_file], tmp_path) == new
    with pytest.raises(ValueError,
                       match="no place for the speed table of results/bench/nvidia-h100.json: put the lines"):
        B.readme_with_tables("# Title\n", [bench_file], tmp_path)
    with pytest.raises(ValueError, match="no place for the speed table"):  # its end line missing
        B.readme_with_tables(f"{begin}\n| old |\n", [bench_file], tmp_path)


def test_speed_verdict_names_each_targets_best_current_ratio_and_the_study_estimates(monkeypatch):
    import copy

    from lib.lanes import lanes_estimate

    for name in B.execution_env_names():
        monkeypatch.delenv(name, raising=False)
    data = copy.deepcopy(json.loads((REPO / "results" / "bench" / "nvidia-h200.json").read_text()))  # a real shape
    tiny = data["entries"]["CANet_tiny"]
    tiny["ratio"] = 26.0
    data["entries"]["CANet_tiny-old"] = dict(tiny, ratio=99.0, model_revision=1)  # an older CANet: left out
    text = B.speed_verdict(data)
    assert "CANet_tiny 26.0x of 25x (CUDA graph): met" in text and "99.0x" not in text
    assert B.bench_table(data).startswith(text + "\n\n| Model |")
    with B.as_runner_compiles(data):
        one, three = B.study_estimate(data, 1), B.study_estimate(data, 3)
    assert f": {one['total_minutes']:.1f} min for one seed (Part 1 {sum(one['part1'].values()) / 60:.1f}," in text
    assert f"{three['total_minutes']:.1f} min for 3 seeds" in text
    with B.as_runner_compiles(data, 3, True):
        laned = lanes_estimate(data, 3, 3, True)
    assert "With 3 runs at once under MPS: at least" in text and f"{laned['per_seed_minutes']:.1f} per seed." in text
    fast = copy.deepcopy(data)  # ten times as fast, no one-off costs: within the 20 minutes
    for entry in fast["entries"].values():
        if entry.get("fast_seconds") is not None:
            entry.update(fast_seconds=entry["fast_seconds"] / 10, fast_overhead_seconds=0.0, setup_seconds=0.0,
                         warmup_seconds=0.0)
        if entry.get("seconds_per_step") is not None:
            entry["seconds_per_step"] /= 10
    assert "target <= 20 min: met" in B.speed_verdict(fast) and "target <= 20 min: met" not in text
    del data["entries"]["VGG11"]  # the estimate lacks a model (a device's first calls): the ratios, and what is missing
    partial = B.speed_verdict(data)
    assert partial.startswith("**Against the targets** (NVIDIA H200): CANet ") and "26.0x of 25x" in partial
    assert partial.endswith("The study's estimate needs VGG11 timed first (`python -m lib bench --fast-only ... "
                            "--probe --missing-only` on this device).") and "min for one seed" not in partial
    for entry in fast["entries"].values():
        entry["ratio"] = None
    assert B.speed_verdict(fast).startswith("**Against the targets** (NVIDIA H200): no naive-vs-fast epoch of a "
                                            "target model yet. The `full` study one run after another")
    del fast["entries"]["VGG11"]
    assert B.speed_verdict(fast) is None and B.bench_table(fast).startswith("| Model |")  # nothing to say
    assert B.speed_verdict(dict(data, device_slug="cpu-x86-64")) is None  # a CPU's file: a dry run


def test_the_committed_renders_do_not_depend_on_the_shells_execution_settings(tmp_path, monkeypatch):
    """docs/GPU.md has users export CIFAR10_COMPILE (and the runner sets more): a refresh in such a shell renders
    README.md and report.md as the committed files say, not as this shell would train."""
    import lib.data
    from lib.report import refresh

    monkeypatch.setattr(lib.data, "SHARED_CANDIDATES", (tmp_path / "no-copy-here.tar.gz",))
    for part in ("results", "figs"):
        shutil.copytree(REPO / part, tmp_path / part)
    for name in ("README.md", "report.md"):
        shutil.copy2(REPO / name, tmp_path / name)
    monkeypatch.setenv(T.COMPILE_ENV, "")
    monkeypatch.setenv(T.CUDA_GRAPHS_ENV, "0")
    assert B.bench_table(tmp_path / "results" / "bench" / "nvidia-h200.json") not in (tmp_path / "README.md").read_text()
    assert refresh(tmp_path) == ["README.md: speed tables of 1 GPU bench file(s), unchanged",
                                 f"report.md: profile {published_profile(REPO / 'report.md')}, unchanged"]
    assert os.environ[T.COMPILE_ENV] == "" and os.environ[T.CUDA_GRAPHS_ENV] == "0"  # put back after


def test_a_speed_up_exactly_at_its_target_meets_it(monkeypatch):
    import copy

    for name in B.execution_env_names():
        monkeypatch.delenv(name, raising=False)
    data = copy.deepcopy(json.loads((REPO / "results" / "bench" / "nvidia-h200.json").read_text()))  # a real shape
    data["entries"]["CANet_tiny"]["ratio"] = 25.0  # the target is 'at least 25x'
    assert "CANet_tiny 25.0x of 25x (CUDA graph): met" in B.speed_verdict(data)
