"""Timing: the original's naive pipeline against the repository's own, one epoch each, and what follows.

    run_benchmark(["CANet", "CANet_tiny"], "shared")   # -> results/bench/<device-slug>.json (merged)
    bench_table("results/bench/nvidia-h100-80gb-hbm3.json")   # markdown for the README
    estimate_study_minutes(read_json(path))            # the whole `full` study on that device, one seed

Both pipelines train one epoch of the recipe a model has in the study (lib.experiments.recipe_config: Part 1
models the Part 1 recipe, batch 256; VGG_A / VGG_A_BN the BN protocol, Adam 1e-3, batch 128) on the
45,000-image training split, with validation on the 5,000-image split:

- lib.naive.naive_epoch mirrors the ORIGINAL (per-image PIL transforms in a 4-worker DataLoader, fp32,
  deterministic cuDNN, a host sync per step, validation every 50 iterations: that module's doc). It is the
  reference; it is meant to be naive.
- fast_epoch is what lib.train does per epoch (same functions: prepare_data, step_model_for,
  _train_epoch, evaluate), timed after a warm-up epoch. One-off costs (CUDA-graph capture or compile,
  data to the device) and the per-epoch bookkeeping of lib.train (TensorBoard, checkpoints) are
  measured and reported separately, so the study estimate can add them.

Also recorded in the bench file: the CUDA-graph checks (check_cuda_graphs), the naive-vs-fast accuracy run
(agreement), profiles of a step (trace_steps), the bookkeeping by part (bookkeeping_parts) and the probe runs'
steps. lib.plan plans the GPU calls from the file; lib.lanes measures and plans several runs at once.

Bench file (one per device, results/bench/<device-slug>.json): {"device", "device_slug", "updated", "graph_check",
"entries": {key: entry}}. An entry per model (key = model name) has: model, recipe, batch_size, num_train, num_val,
data, device, torch, date, naive_seconds, naive_images_per_s, naive_val_passes, naive_workers, naive_val_transforms
('train' | 'eval'; absent: 'eval'), naive_dataset ('files' | 'arrays', lib.naive.naive_datasets; absent: 'arrays',
the only kind before 2026-11-28) (absent for fast-only entries), fast_seconds, fast_images_per_s,
fast_overhead_seconds (bookkeeping per epoch), fast_overhead_warm (True: timed on its second call; absent: on its
first), compile_seconds (one-off capture/compile), setup_seconds (one-off per run: data to the device, model,
CUDA-graph capture), warmup_seconds (the first, untimed epoch; a torch.compile is paid there), cuda_graphs,
compiled, canet_merged (CANets only: their blocks ran merged), earlier_in_process (CUDA, from 2026-11-27 on: whether
the same process had run the model's full-batch steps before, so that cuDNN's autotuning was not part of the
one-off; absent before), compile_cache (compiled entries, from 2026-11-28 on: the compile's lookups in torch.compile's
on-disk caches, lib.train.compile_cache_counts; hits only: its compile was mostly a cache read, from_compile_cache),
ratio (naive_seconds / fast_seconds, None without a naive time). Entries timed with torch.compile (`--compile`, or
`--also-compiled` beside the naive epoch of the same process) have the key compile_key(model, mode): <model>+compile for the default mode, <model>+compile-<mode> for another
(lib.train.compile_mode), and a compile_mode field. Entries timed with the whole step as one CUDA graph (an
experiment, lib.step_graph: `--also-step-graph`, `--also-step-graph-compiled`) have the key step_graph_key(model,
compiled) (<model>+step-graph, <model>+step-graph-compiled) and a step_graph field (False: the epoch ran eager
steps, on a CPU or after a failed capture); the study estimate reads them only for the models CIFAR10_STEP_GRAPH
names (key_in_use), the compile choice never. Probe
entries (key probe-<model>): model, kind='probe', seconds_per_step, num_steps, probe_every, device, torch, date.
The top-level "agreement" maps a model to its side-by-side accuracy run (agreement(): naive vs lib.train over a
few epochs of the recipe, per seed); "concurrency" holds each model's epoch alone and with several runs at once on
the GPU (lib.lanes.measure_concurrency; lib.plan.plan_study's lanes read it); "bookkeeping" a model's per-epoch
bookkeeping part by part (bookkeeping_parts).
"""
from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import gc
import os
import platform
import re
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from lib.augment import mixed_loss
from lib.bench_merge import bench_file_problem
from lib.config import PROFILES, TrainConfig
from lib.data import load_cifar10, canonical_source
from lib.lanes import concurrency_lines
from lib.experiments import BN_LRS, BN_MODELS, recipe_config, recipe_name
from lib.models import CANET_VARIANTS, PART1_MODELS, last_linear, revision, set_merged
from lib.models.canet import blocks_merged, merged_on_cuda
from lib.naive import NAIVE_VAL_EVERY, NAIVE_VAL_TRANSFORMS, naive_epoch, naive_run
from lib.paths import REPO, output_dirs
from lib.results import atomic_write_json, device_name, read_json, unreadable_why
from lib.train import backend_flags, sync

# Speed-up targets of the issue (naive / fast epoch time on one H100).
RATIO_TARGETS = {"CANet": 15.0, "CANet_tiny": 25.0}
STUDY_TARGET_MINUTES = 20.0
PROBE_BENCH_STEPS = 200  # timed probe-run steps: ten probes at the full profile's probe_every=20


# ---------------------------------------------------------------------------------------------------------
# Shared helpers

def device_slug(device: torch.device | str) -> str:
    """File-name form of the device: 'nvidia-h100-80gb-hbm3', 'cpu-x86-64'."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-{platform.machine()}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@contextlib.contextmanager
def _timed_variant(model: str = "", *, step_graph: bool = False, cuda_graphs: bool | None = None):
    """For the block, lib.train steps the variant the arguments choose, whatever the shell exported: nothing
    torch.compile'd by CIFAR10_COMPILE (cfg.compile decides), the whole-step graph for `model` only where
    `step_graph`, CUDA graphs on or off as `cuda_graphs` says (None: as the environment says)."""
    import lib.train as T

    with contextlib.ExitStack() as stack:
        stack.enter_context(_env(T.COMPILE_ENV, ""))
        stack.enter_context(_env(T.STEP_GRAPH_ENV, model if step_graph else ""))
        if cuda_graphs is not None:
            stack.enter_context(_env(T.CUDA_GRAPHS_ENV, "1" if cuda_graphs else "0"))
        yield


def bench_path(device: torch.device | str, root: Path | str | None = None) -> Path:
    """results/bench/<device-slug>.json under `root` (default: the repository)."""
    return Path(root if root is not None else REPO) / "results" / "bench" / f"{device_slug(device)}.json"


@contextlib.contextmanager
def _env(name: str, value: str):
    """Set an environment variable for the block."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def execution_env_names() -> tuple[str, ...]:
    """The environment variables that choose how this machine would train (torch.compile, its mode, CUDA graphs,
    models trained eagerly, the whole-step graph, MPS, CANet's block form): the estimates and the table's compile
    choice read them."""
    from lib.lanes import MPS_ENV
    from lib.models.canet import MERGED_ENV
    from lib.train import COMPILE_ENV, COMPILE_MODE_ENV, CUDA_GRAPHS_ENV, EAGER_MODELS_ENV, STEP_GRAPH_ENV

    return COMPILE_ENV, COMPILE_MODE_ENV, CUDA_GRAPHS_ENV, EAGER_MODELS_ENV, STEP_GRAPH_ENV, MPS_ENV, MERGED_ENV


@contextlib.contextmanager
def as_committed():
    """For the block, none of execution_env_names set: a bench file then renders (bench_table, its estimates) as
    the GPU runner reads it by default, the same in the committed README.md and report.md whatever a shell
    exported (docs/GPU.md has users export CIFAR10_COMPILE)."""
    saved = {name: os.environ.pop(name) for name in execution_env_names() if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def fast_run(model_name: str, data_source: str | None = None, device: str = "auto", *, epochs: int = 3,
             seed: int = 0, num_train: int | None = None, num_val: int | None = None) -> dict:
    """The same short run with lib.train.train itself (into a temporary folder; nothing is published).
    Returns per-epoch val_acc, seconds and the result's fast_path."""
    import lib.train as T

    dev = T.resolve_device(device)
    cfg = recipe_config(model_name, data_source, str(dev), num_train, num_val, seed)
    # seed: the BN protocol's configs have one fixed seed; here every seed is its own run.
    cfg = cfg.replace(num_epochs=epochs, seed=seed, name=f"agreement-{model_name}-s{seed}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = T.train(cfg, dirs=output_dirs("smoke", root=Path(tmp)), force=True, progress=False)
    return {"val_acc": [row["val_acc"] for row in result["history"]], "seconds": time.perf_counter() - t0,
            "fast_path": result.get("fast_path")}


def agreement(model_name: str, data_source: str | None = None, device: str = "auto", *, epochs: int = 3,
              seeds: Sequence[int] = (0, 1), num_train: int | None = None, num_val: int | None = None,
              num_workers: int = 4) -> dict:
    """Side by side: `epochs` epochs of the recipe with the naive pipeline and with lib.train, for each seed;
    the final validation accuracies of the two, their means, spreads and difference (fast - naive).
    Both train the same recipe on the same split; their random draws (order, augmentation, initial weights)
    differ, so the seeds' spread is the noise the difference is judged against."""
    import math

    from lib.stats import summarize, welch_test
    from lib.train import resolve_device

    dev = resolve_device(device)
    naive = [naive_run(model_name, data_source, device, epochs=epochs, seed=s, num_train=num_train,
                       num_val=num_val, num_workers=num_workers) for s in seeds]
    fast = [fast_run(model_name, data_source, device, epochs=epochs, seed=s, num_train=num_train,
                     num_val=num_val) for s in seeds]
    sn, sf = summarize(r["val_acc"][-1] for r in naive), summarize(r["val_acc"][-1] for r in fast)
    p = welch_test([r["val_acc"][-1] for r in fast], [r["val_acc"][-1] for r in naive])["p"]
    nan_to_none = lambda v: None if math.isnan(v) else v  # JSON has no NaN
    return {"model": model_name, "model_revision": revision(model_name), "kind": "agreement", "epochs": epochs,
            "seeds": list(seeds), "device": device_name(dev), "torch": torch.__version__, "date": _now(),
            "data": naive[0]["data"],
            "num_train": naive[0]["num_train"], "num_val": naive[0]["num_val"],
            "naive_val_acc": [r["val_acc"] for r in naive], "fast_val_acc": [r["val_acc"] for r in fast],
            "naive_seconds": [r["seconds"] for r in naive], "fast_seconds": [r["seconds"] for r in fast],
            "fast_path": fast[0]["fast_path"], "naive_mean": sn["mean"], "fast_mean": sf["mean"],
            "naive_std": nan_to_none(sn["std"]), "fast_std": nan_to_none(sf["std"]),
            "difference": sf["mean"] - sn["mean"], "p_value": nan_to_none(p)}


# ---------------------------------------------------------------------------------------------------------
# (b) The repository's own epoch

def fast_epoch(model_name: str, data_source: str | None = None, device: str = "auto", *,
               num_train: int | None = None, num_val: int | None = None, warmup_epochs: int = 1,
               seed: int = 0, compile: bool = False, step_graph: bool = False, before_timed=None,
               after_timed=None) -> dict:
    """Time one epoch of lib.train's `full`-profile training + validation for `model_name`, after warm-up.

    Returns seconds (what lib.train records as an epoch's `seconds`), images_per_s, overhead_seconds (the
    rest of lib.train's per-epoch work: TensorBoard logging, weight histograms, checkpoints), compile_seconds
    (CUDA-graph capture; torch.compile is paid in the warm-up epoch and counted there), setup_seconds (data
    to the device, model, capture) and warmup_seconds (the first epoch, with cuDNN's autotuning).
    compile=True times the cfg.compile variant (torch.compile on CUDA) instead of the CUDA-graph step;
    step_graph=True the whole step as one CUDA graph (lib.step_graph; around the compiled model with compile=True).
    before_timed(time_epoch), if given, is called after the warm-up, just before the timed epoch, with a
    function that trains and times one more epoch (returning its seconds); what it returns is the result's
    `before_timed`. after_timed(), if given, is called right after the timed epoch, before the bookkeeping is
    timed (lib.lanes: processes wait for each other at both, and one times a solo epoch before).
    """
    import lib.train as T

    dev = T.resolve_device(device)
    cfg = recipe_config(model_name, data_source, str(dev), num_train, num_val, seed).replace(compile=compile)
    load_cifar10(cfg.data_source)  # decoded once into the cache here, so setup_seconds is a cache read
    cuda = dev.type == "cuda"
    # Only the `compile` and `step_graph` arguments choose the variant timed, whatever CIFAR10_COMPILE and
    # CIFAR10_STEP_GRAPH say.
    with backend_flags(deterministic=False, benchmark=cuda, cudnn_tf32=True, matmul_tf32=cuda), \
            _timed_variant(model_name, step_graph=step_graph):
        sync(dev)
        t0 = time.perf_counter()
        (train_loader, val_loader, _), info = T.prepare_data(cfg, dev)
        model = T.new_model(cfg, dev)
        head = last_linear(model)
        optimizer = T.make_optimizer(T.optimizer_at(cfg, 0), model.parameters(), cfg, T.lr_at(cfg, 0), dev)
        step_model, fast_info = T.step_model_for(model, cfg, dev, train_loader)
        sync(dev)
        setup_seconds = time.perf_counter() - t0

        warmup_seconds = None  # the first epoch: cuDNN autotuning, first calls, a lazy compile
        for epoch in range(warmup_epochs):
            t0 = time.perf_counter()
            T._train_epoch(step_model, head, optimizer, train_loader, cfg, dev, epoch, False)
            T.evaluate(model, val_loader, cfg, dev)
            sync(dev)
            if epoch == 0:
                warmup_seconds = time.perf_counter() - t0

        def timed_epoch(epoch: int):
            """One epoch, timed over exactly the span lib.train records as an epoch's `seconds`."""
            t0 = time.perf_counter()
            stats = T._train_epoch(step_model, head, optimizer, train_loader, cfg, dev, epoch, False)
            losses = stats["step_loss"].cpu()
            val = T.evaluate(model, val_loader, cfg, dev)
            sync(dev)
            return time.perf_counter() - t0, stats, losses, val

        epoch = warmup_epochs
        hooked = before_timed(lambda: timed_epoch(epoch + 1)[0]) if before_timed is not None else None
        seconds, stats, losses, val = timed_epoch(epoch)
        if after_timed is not None:
            after_timed()

        row = T.epoch_row(epoch, T.lr_at(cfg, epoch), T.optimizer_at(cfg, epoch), stats, val, seconds)
        overhead = _bookkeeping_seconds(T, model, optimizer, dev, row, losses, stats["step_acc"], len(train_loader))
    n = info["num_train_used"]
    return {"seconds": seconds, "images_per_s": n / seconds, "num_train": n, "num_val": info["num_val_used"],
            "batch_size": cfg.batch_size, "overhead_seconds": overhead,
            # torch.compile compiles lazily, in the warm-up epoch: its cost is that epoch's extra time.
            "compile_seconds": (max(0.0, (warmup_seconds or seconds) - seconds) if fast_info["compile"]
                                else fast_info["compile_seconds"]),
            "setup_seconds": setup_seconds, "compiled": fast_info["compile"],
            "compile_mode": fast_info.get("compile_mode"),
            "warmup_seconds": warmup_seconds if warmup_seconds is not None else seconds,
            "cuda_graphs": fast_info["cuda_graphs"], "fast_path_note": fast_info["note"],
            "step_graph": bool(fast_info.get("step_graph")),  # the whole step as one CUDA graph (lib.step_graph)
            "earlier_in_process": fast_info.get("earlier_in_process"),
            "compile_cache": fast_info.get("compile_cache"),
            "canet_merged": blocks_merged(model, train_loader.X[:1]), "train_loss": row["train_loss"],
            "val_acc": row["val_acc"], "data": info.get("label"), "before_timed": hooked}


def trace_steps(model_name: str, data_source: str | None = None, device: str = "auto", *, steps: int = 30,
                cuda_graphs: bool = True, row_limit: int = 15, batch_size: int | None = None,
                merged: bool | None = None, step_graph: bool = False) -> dict:
    """Where a fast training step's time goes: one epoch of `steps` full batches of lib.train's own loop
    (loader, augmentation, step, metrics) under torch.profiler, after a warm-up epoch of the same length.

    Returns wall_ms_per_step, device_ms_per_step (the kernels' own time; far below the wall time means the
    host launching the work is the bottleneck), ops_per_step (operator calls on the host) and `table`, the
    profiler's top operators by device time (by host time on a CPU). cuda_graphs=False times eager steps;
    step_graph=True the whole step as one CUDA graph (lib.step_graph, around the eager model: its host calls are
    those outside the graph; `step_graph` in the result says whether the capture held, on a CPU False);
    merged: CANet's blocks merged (True), as specified (False), or as built (None: by device, CIFAR10_CANET_MERGED).
    batch_size: the recipe's unless given (tests on a tiny image folder).
    """
    import lib.train as T
    from torch.profiler import ProfilerActivity, profile

    dev = T.resolve_device(device)
    cfg = recipe_config(model_name, data_source, str(dev))
    cfg = cfg.replace(batch_size=batch_size or cfg.batch_size)
    cfg = cfg.replace(num_train=steps * cfg.batch_size)  # `steps` full batches per epoch
    cuda = dev.type == "cuda"
    with backend_flags(deterministic=False, benchmark=cuda, cudnn_tf32=True, matmul_tf32=cuda), \
            _timed_variant(model_name, step_graph=step_graph, cuda_graphs=cuda_graphs):
        (train_loader, _, _), _ = T.prepare_data(cfg, dev)
        model = T.new_model(cfg, dev) if merged is None else set_merged(T.new_model(cfg, dev), merged)
        optimizer = T.make_optimizer(T.optimizer_at(cfg, 0), model.parameters(), cfg, T.lr_at(cfg, 0), dev)
        step_model, info = T.step_model_for(model, cfg, dev, train_loader)
        head = last_linear(model)
        T._train_epoch(step_model, head, optimizer, train_loader, cfg, dev, 0, False)
        sync(dev)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            t0 = time.perf_counter()
            T._train_epoch(step_model, head, optimizer, train_loader, cfg, dev, 1, False)
            sync(dev)
            wall = time.perf_counter() - t0
    n_steps = len(train_loader)
    events = prof.key_averages()
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    # The kernels' own time, counted as the profiler's table counts it: device events only, without the
    # annotated ranges (a graph replay's range would count its kernels twice).
    device_us = sum(e.self_device_time_total for e in events
                    if e.device_type != torch.autograd.DeviceType.CPU and not getattr(e, "is_user_annotation", False))
    host_ops = sum(e.count for e in events if e.key.startswith("aten::"))
    merged_used = bool(blocks_merged(model, train_loader.X[:1]))
    return {"model": model_name, "device": device_name(dev), "steps": n_steps, "batch_size": cfg.batch_size,
            "cuda_graphs": info["cuda_graphs"], "step_graph": bool(info.get("step_graph")), "merged": merged_used,
            "wall_ms_per_step": 1e3 * wall / n_steps,
            "device_ms_per_step": device_us / 1e3 / n_steps if cuda else None,
            "ops_per_step": host_ops / n_steps, "table": events.table(sort_by=sort, row_limit=row_limit)}


# name -> trace_steps' (cuda_graphs, merged, step_graph)
TRACE_VARIANTS = {"eager": (False, None, False), "graphed": (True, None, False),
                  "graphed-per-path": (True, False, False), "step-graph": (True, None, True)}


def trace_variants(model_name: str, dev: torch.device) -> list[str]:
    """The trace variants (TRACE_VARIANTS keys) that tell something on `dev`: eager on a CPU; eager and
    CUDA-graphed on CUDA, for a CANet also graphed with its blocks as specified (per path), the A/B of
    AttResBlock._forward_merged, and last the whole step as one CUDA graph (lib.step_graph: how many host calls
    remain outside it, and whether the step then still waits for them)."""
    from lib.models import CANET_VARIANTS

    if dev.type != "cuda":
        return ["eager"]
    return ["eager", "graphed"] + (["graphed-per-path"] if model_name in CANET_VARIANTS else []) + ["step-graph"]


# Traces of an older version are made again (--missing-only): 2, the step-graph variant, timed in the same call as
# the others, after the shortcut BatchNorm's dense copy (lib.models.canet._dense_like), which the traces of version 1
# (2026-11-27) predate: the variants' kernel times are then comparable.
TRACE_VERSION = 2


def trace_as_now(record: dict | None) -> bool:
    """recorded_as_now, and of the current TRACE_VERSION (what `--trace --missing-only` reuses)."""
    return recorded_as_now(record) and record.get("trace_version", 1) >= TRACE_VERSION


def trace_key(model_name: str, variant: str) -> str:
    """Key of a trace in the bench file's 'traces': <model>:<variant>."""
    return f"{model_name}:{variant}"


def save_trace(t: dict, variant: str, path: Path | str, device: torch.device | str) -> dict:
    """Record a trace_steps result (without its operator table, which the log keeps) under the bench file's
    'traces' (merged, atomic)."""
    record = {k: v for k, v in t.items() if k != "table"}
    record.update(variant=variant, model_revision=revision(t["model"]), torch=torch.__version__, date=_now(),
                  trace_version=TRACE_VERSION)
    return _merge_write(Path(path), torch.device(device), sections={"traces": {trace_key(t["model"], variant): record}})


def _trace_failed(t: dict) -> str:
    """' (capture failed: eager steps)' for a whole-step-graph trace whose steps ran eager, else ''."""
    asked = TRACE_VARIANTS.get(t["variant"], (None, None, False))[2]
    return " (capture failed: eager steps)" if asked and not t.get("step_graph") else ""


def trace_lines(bench) -> list[str]:
    """One sentence per traced model of a bench file (path or dict): ms per step, wall and kernels, per variant."""
    by_model: dict[str, list[dict]] = {}
    for t in load_bench(bench).get("traces", {}).values():
        by_model.setdefault(t["model"], []).append(t)
    lines = []
    for model, traces in by_model.items():
        order = list(TRACE_VARIANTS)
        traces.sort(key=lambda t: order.index(t["variant"]) if t["variant"] in order else 99)
        parts = [f"{t['variant']}{_trace_failed(t)} {t['wall_ms_per_step']:.2f} ms wall, "
                 f"{_fmt(t.get('device_ms_per_step'), '.2f')} ms of kernels, {t['ops_per_step']:.0f} host ops"
                 for t in traces]
        stale = " (model rev " + str(traces[0].get("model_revision", 1)) + ")" if stale_revision(traces[0]) else ""
        lines.append(f"Profiled training step of {model}{stale} ({traces[0]['steps']} steps of batch "
                     f"{traces[0]['batch_size']}, {traces[0]['date'][:10]}, per step): {'; '.join(parts)}.")
    return lines


def trace_line(t: dict) -> str:
    """A trace_steps result in words, followed by its operator table."""
    return (f"[trace] {t['model']} on {t['device']}, batch {t['batch_size']}, {t['steps']} steps, CUDA graphs "
            f"{'on' if t['cuda_graphs'] else 'off'}{', the whole step as one graph' if t.get('step_graph') else ''}"
            f"{', CANet blocks merged' if t.get('merged') else ''}: "
            f"{t['wall_ms_per_step']:.2f} ms/step wall, "
            f"{_fmt(t['device_ms_per_step'], '.2f')} ms/step of kernels, {t['ops_per_step']:.0f} host ops/step\n"
            f"{t['table']}")


def _bookkeeping_seconds(T, model, optimizer, dev, row, losses, step_acc, steps_per_epoch) -> float:
    """Seconds of lib.train's per-epoch work besides training and validation, as it does it on `dev`, for
    the epoch whose history row (lib.train.epoch_row) is `row`.

    TensorBoard (per-step scalars, every parameter's histogram), the weight histograms and the best
    checkpoint every epoch (an upper bound: it is written only when validation improves); the resumable
    checkpoint every epoch, or on the GPU fast path its cost spread over LAST_CKPT_EVERY_S. The TensorBoard
    events are queued as lib.train queues them (tensorboard_writer); their writing to disk happens in the
    writer's thread while the next epoch trains, so it is not timed here (lib.train does not wait for it).
    The per-epoch part is timed the second time it runs (as for the epoch itself, first calls, e.g. of the
    histogram kernels, are a one-off). Entries record it as fast_overhead_warm; those without (every entry of
    the H200 calls of 2026-11-27) timed the first.
    """
    fast = T._gpu_fast_path(dev)
    with tempfile.TemporaryDirectory() as tmp:
        writer = T.tensorboard_writer(tmp)
        epoch, epoch_seconds, accs = row["epoch"], row["seconds"], step_acc.cpu()
        for rep in range(2):  # the second is timed
            calls = _bookkeeping_calls(T, model, optimizer, writer, row, losses, accs, epoch + rep, steps_per_epoch,
                                       Path(tmp), fast)
            t0 = time.perf_counter()
            # As lib.train runs them: _log_epoch is the 'scalars' and 'histograms' parts.
            T._log_epoch(writer, model, dict(row, epoch=epoch + rep), losses, accs, epoch + rep, steps_per_epoch)
            calls["weight_histograms"]()
            calls["best_copy"]()
            sync(dev)
            seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        calls["last_checkpoint"]()
        last = time.perf_counter() - t0
        writer.close()
    return seconds + (last * min(1.0, epoch_seconds / T.LAST_CKPT_EVERY_S) if fast else last)


# lib.train's bookkeeping after every epoch, in its order; the resumable checkpoint ('last_checkpoint') follows it
# every epoch off CUDA, at most every LAST_CKPT_EVERY_S on the GPU fast path.
EVERY_EPOCH_PARTS = ("scalars", "histograms", "weight_histograms", "best_copy")


def _bookkeeping_calls(T, model, optimizer, writer, row, losses, accs, epoch: int, steps: int, tmp: Path,
                       fast: bool) -> dict:
    """lib.train's bookkeeping of `epoch` as callables by part (EVERY_EPOCH_PARTS, then 'last_checkpoint'), the
    files into `tmp`: for _bookkeeping_seconds (all together) and bookkeeping_parts (one by one). On the GPU fast
    path the best weights are copied on the device (written once at the end), elsewhere written every time."""
    def best():
        if fast:
            T.copy_state(model)
        else:
            T._save_checkpoint(tmp / "best.pt", {"model": model.state_dict(), "epoch": epoch})

    return {"scalars": lambda: T._log_scalars(writer, dict(row, epoch=epoch), losses, accs, epoch, steps),
            "histograms": lambda: T._log_histograms(writer, model, (epoch + 1) * steps - 1),
            "weight_histograms": lambda: T.weight_histograms(model),
            "best_copy": best,
            "last_checkpoint": lambda: T._save_checkpoint(tmp / "last.pt", {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch})}


TRAIN_SPLIT = 45_000  # images of the full training split (lib.train.split_data): the steps an epoch logs


def bookkeeping_parts(model_name: str, data_source: str | None = None, device: str = "auto", *, reps: int = 3,
                      steps_per_epoch: int | None = None) -> dict:
    """Where lib.train's per-epoch bookkeeping goes for `model_name` on `device`, part by part, in ms (the median of
    `reps` repetitions, after an untimed one): 'scalars' (the per-step and per-epoch TensorBoard scalars of an
    epoch of `steps_per_epoch` steps, default the full split's), 'histograms' (every parameter's TensorBoard
    histogram), 'histogram_counting' (of that, counting them: param_histograms, on the device on CUDA; None off
    CUDA), 'weight_histograms' (the result's SE/SA/unit_transform histograms), 'best_copy' (the best weights:
    a copy on the device on CUDA, a checkpoint write elsewhere) and 'last_checkpoint' (the resumable checkpoint's
    write: every epoch off CUDA, at most every LAST_CKPT_EVERY_S on it). Each part is timed alone: after the
    TensorBoard events queued before it are written ('parts_alone'; the records of 2026-11-28 were not, so their
    counting ran beside the writer's thread), and until the device is done with it.
    No data and no training: the model's initial weights, after one optimiser step (so that the optimiser holds
    its state). Returns them with 'per_epoch_ms' (what runs every epoch on this device), the model's number of
    parameter tensors, device, torch, model_revision and date."""
    import math
    import statistics

    import lib.train as T

    dev = T.resolve_device(device)
    cfg = recipe_config(model_name, data_source, str(dev))
    steps = steps_per_epoch or math.ceil(TRAIN_SPLIT / cfg.batch_size)
    model = T.new_model(cfg, dev)
    optimizer = T.make_optimizer(T.optimizer_at(cfg, 0), model.parameters(), cfg, T.lr_at(cfg, 0), dev)
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()
    fast = T._gpu_fast_path(dev)
    losses, accs = torch.rand(steps), torch.rand(steps)  # lib.train logs them from the host
    row = {"train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0, "val_acc": 0.5, "lr": cfg.lr, "seconds": 1.0}
    with tempfile.TemporaryDirectory() as tmp:
        writer = T.tensorboard_writer(tmp)
        edges = np.asarray(writer.default_bins, dtype=np.float64)

        def one(epoch: int) -> dict:
            out = {}

            def timed(part: str, fn) -> None:
                # TensorBoard's writer thread checksums (in pure Python) and writes the events queued by the part
                # before: left busy, it would hold the interpreter's lock during the next part (on the 2-core CPU
                # the counting right after queuing CANet_tiny's 126 histograms took 65-108 ms, after a flush 29-38).
                writer.flush()
                sync(dev)
                t0 = time.perf_counter()
                fn()
                sync(dev)
                out[part] = 1e3 * (time.perf_counter() - t0)

            calls = _bookkeeping_calls(T, model, optimizer, writer, row, losses, accs, epoch, steps, Path(tmp), fast)
            for part, fn in calls.items():
                timed(part, fn)
                if part == "histograms" and fast:  # of that, the counting on the device
                    timed("histogram_counting", lambda: T.param_histograms(list(model.parameters()), edges))
            return out

        one(0)  # first calls (histogram kernels, the writer's first events) are a one-off
        runs = [one(epoch) for epoch in range(1, reps + 1)]
        writer.close()
    ms = {part: statistics.median(r[part] for r in runs) for part in runs[0]}
    every_epoch = EVERY_EPOCH_PARTS + (() if fast else ("last_checkpoint",))
    return {"model": model_name, "device": device_name(dev), "torch": torch.__version__,
            "model_revision": revision(model_name), "date": _now(), "reps": reps, "steps_per_epoch": steps,
            "parts_alone": True,
            "num_param_tensors": sum(1 for _ in model.parameters()),
            "ms": dict(ms, histogram_counting=ms.get("histogram_counting")),
            "per_epoch_ms": sum(ms[part] for part in every_epoch)}


def save_bookkeeping(record: dict, path: Path | str, device: torch.device | str) -> dict:
    """Record a bookkeeping_parts result under the bench file's 'bookkeeping' (merged, atomic)."""
    return _merge_write(Path(path), torch.device(device), sections={"bookkeeping": {record["model"]: record}})


def bookkeeping_lines(bench) -> list[str]:
    """One sentence per model of a bench file's 'bookkeeping' section."""
    lines = []
    for r in load_bench(bench).get("bookkeeping", {}).values():
        ms = r["ms"]
        counting = ""
        if ms.get("histogram_counting") is not None:
            beside = "" if r.get("parts_alone") else ", timed right after queuing the histograms for TensorBoard's thread"
            counting = f" (counting {ms['histogram_counting']:.1f}{beside})"
        lines.append(f"Per-epoch bookkeeping of {r['model']} ({r['num_param_tensors']} parameter tensors, "
                     f"{r['date'][:10]}), ms: {r['per_epoch_ms']:.1f} every epoch: scalars of {r['steps_per_epoch']} "
                     f"steps {ms['scalars']:.1f}, parameter histograms {ms['histograms']:.1f}{counting}, weight "
                     f"histograms {ms['weight_histograms']:.1f}, best weights {ms['best_copy']:.1f}; the resumable "
                     f"checkpoint {ms['last_checkpoint']:.1f}.")
    return lines


# ---------------------------------------------------------------------------------------------------------
# Probe runs (Part 2, Santurkar et al.) and the CUDA-graph check

def probe_step_seconds(model_name: str, data_source: str | None = None, device: str = "auto", *,
                       num_steps: int = PROBE_BENCH_STEPS, **overrides) -> dict:
    """Seconds per step of the `full` probe run of `model_name` (probes included), timed over `num_steps` after
    an untimed warm-up of one probe interval. `overrides` change the probe config (tests shrink it)."""
    from lib.bn_study import _train_with_probes, probe_configs
    from lib.train import resolve_device

    dev = resolve_device(device)
    cfg = next(c for c in probe_configs("full", canonical_source(data_source)) if c.model == model_name)
    cfg = cfg.replace(device=str(dev), fallback=False, **overrides)
    _train_with_probes(cfg.replace(num_steps=cfg.probe_every), progress=False)
    result = _train_with_probes(cfg.replace(num_steps=num_steps), progress=False)
    return {"seconds_per_step": result["seconds_per_step"], "num_steps": result["steps_done"],
            "probe_every": cfg.probe_every, "batch_size": cfg.batch_size, "num_etas": len(cfg.eta_multipliers)}


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


GRAPH_CHECK_TOLERANCE = {"fp32": {"out": 1e-3, "grad": 1e-3, "param": 1e-4},
                         "bf16": {"out": 2e-2, "grad": 5e-2, "param": 1e-2}}
# 2: dropout is off while the eager and graphed steps are compared, and checked apart (_dropout_check). Version 1
# compared with dropout on, so the two drew different masks: VGG11 and MobileNetV2 "failed" on the H200.
GRAPH_CHECK_VERSION = 2
DROPOUT_FRESH_MIN = 1e-3  # relative change between two replays with dropout on that counts as fresh masks


def _dropouts(model: nn.Module) -> list[nn.Module]:
    """The model's dropout layers (torchvision's VGG11 and MobileNetV2 have them; CANet and the ResNets not)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]


def _dropout_check(step_model, x: torch.Tensor, cfg: TrainConfig, dev: torch.device) -> dict:
    """Two replays of the graphed forward on the same batch, dropout on: a graph must draw fresh masks each
    replay (CUDA graphs advance the generator's offset per replay), so the outputs differ; equal outputs mean
    every step would train with the masks of the capture."""
    import lib.train as T

    takes_graph = getattr(step_model, "takes_fast_route", lambda _: True)(x)
    outs = []
    for _ in range(2):
        with T.autocast_for(cfg, dev):
            outs.append(step_model(x).float().detach().clone())
    diff = _rel_diff(outs[1], outs[0])
    # Different masks change the outputs by tens of percent; kernels' rounding noise would be far below 1e-3.
    return {"fresh_masks_per_replay": takes_graph and diff > DROPOUT_FRESH_MIN, "replay_rel_diff": diff,
            "replayed": takes_graph}


def _graphed_step(model: nn.Module, cfg: TrainConfig, dev: torch.device, loader):
    """lib.train's CUDA-graphed training step for `model` (graphs on, nothing compiled, not the whole-step graph,
    whatever the environment says), and step_model_for's info."""
    import lib.train as T

    with _timed_variant(cuda_graphs=True):
        return T.step_model_for(model, cfg, dev, loader)


def check_cuda_graphs(model_name: str = "CANet_tiny", data_source: str | None = None, device: str = "auto", *,
                      steps: int = 3, num_train: int | None = None, precision: str = "fp32") -> dict:
    """_compare_graphed_steps, with a check that crashes (a capture or replay error) recorded as failed, with
    the reason in `note`."""
    if precision not in GRAPH_CHECK_TOLERANCE:
        raise ValueError(f"graph-check precision must be one of {', '.join(GRAPH_CHECK_TOLERANCE)}, got {precision!r}")
    try:
        return _compare_graphed_steps(model_name, data_source, device, steps=steps, num_train=num_train,
                                      precision=precision)
    except Exception as err:  # any failure of the graphed path counts against it
        return {"model": model_name, "ok": False, "steps": 0, "torch": torch.__version__, "date": _now(),
                "check_precision": precision, "model_revision": revision(model_name),
                "check_version": GRAPH_CHECK_VERSION,
                **({"canet_merged": merged_on_cuda()} if model_name in CANET_VARIANTS else {}),
                "note": f"the check crashed: {type(err).__name__}: {err}"}


def _compare_graphed_steps(model_name: str, data_source: str | None, device: str, *, steps: int,
                           num_train: int | None, precision: str) -> dict:
    """Train `steps` identical steps with the eager and the CUDA-graphed model from the same weights and
    compare outputs, gradients and the weights after (CUDA only; elsewhere ok=None). A graph that replays
    stale inputs or misses a buffer update shows up as a large difference.

    Both run with deterministic cuDNN without autotuning, so that they launch the same kernels and agree to
    rounding: with autotuning the two may pick different convolution algorithms, and in bf16 that noise
    grows over a deep network and AdamW steps (a first measurement on an H200, bf16 and autotuned: 0.8% in
    the outputs, 13% in the gradients), which would hide a real fault or fail a correct graph.
    precision 'fp32' (TF32 off) is the strict check; 'bf16' checks the capture under autocast that training
    uses (a looser tolerance, GRAPH_CHECK_TOLERANCE, in case bf16 kernels are not bit-reproducible)."""
    import lib.train as T

    dev = T.resolve_device(device)
    result = {"model": model_name, "ok": None, "steps": 0, "device": device_name(dev), "torch": torch.__version__,
              "date": _now(), "check_precision": precision, "model_revision": revision(model_name),
              "check_version": GRAPH_CHECK_VERSION}
    if dev.type != "cuda":
        return dict(result, note=f"CUDA graphs run on CUDA only; nothing to check on {dev.type}")
    if model_name in CANET_VARIANTS:
        result["canet_merged"] = merged_on_cuda()  # the graph checked is of the blocks as they are built now
    cfg = recipe_config(model_name, data_source, str(dev), num_train).replace(precision=precision)
    tolerance = GRAPH_CHECK_TOLERANCE[precision]
    result["precision"] = ("fp32, TF32 off" if precision == "fp32" else "bf16 autocast") + ", deterministic cuDNN"
    per_step = []
    with backend_flags(deterministic=True, benchmark=False, cudnn_tf32=False, matmul_tf32=False):
        (train_loader, _, _), _ = T.prepare_data(cfg, dev)
        eager = T.new_model(cfg, dev)
        dropouts = _dropouts(eager)
        if dropouts:  # the two would draw different masks: checked apart, then off for the comparison
            step_d, info = _graphed_step(copy.deepcopy(eager).train(), cfg, dev, train_loader)
            if not info["cuda_graphs"]:
                return dict(result, ok=False, note=info["note"])
            train_loader.set_epoch(0)
            result["dropout"] = dict(_dropout_check(step_d, next(iter(train_loader)).x, cfg, dev),
                                     layers=len(dropouts), off_while_compared=True)
            del step_d
            for m in dropouts:
                m.p = 0.0
        graphed_model = copy.deepcopy(eager)
        step_g, info = _graphed_step(graphed_model, cfg, dev, train_loader)
        if not info["cuda_graphs"]:
            return dict(result, ok=False, note=info["note"])
        kind = T.optimizer_at(cfg, 0)
        runs = [(eager, eager, T.make_optimizer(kind, eager.parameters(), cfg, cfg.lr, dev)),
                (step_g, graphed_model, T.make_optimizer(kind, graphed_model.parameters(), cfg, cfg.lr, dev))]
        worst = {"out": 0.0, "grad": 0.0, "param": 0.0}
        train_loader.set_epoch(0)
        for batch in train_loader:
            if result["steps"] == steps or batch.x.shape[0] != cfg.batch_size:
                break
            outs, grads = [], []
            for runner, model, optimizer in runs:
                runner.train()
                with T.autocast_for(cfg, dev):
                    out = runner(batch.x)
                out = out.float()
                loss = mixed_loss(out, batch.y, batch.y_b, batch.lam, label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                outs.append(out.detach().clone())
                grads.append(torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None]))
                optimizer.step()
            per_step.append({"out": _rel_diff(outs[1], outs[0]), "grad": _rel_diff(grads[1], grads[0])})
            for key in ("out", "grad"):
                worst[key] = max(worst[key], per_step[-1][key])
            result["steps"] += 1
        params = [torch.cat([p.detach().flatten().float() for p in m.parameters()]) for m in (eager, graphed_model)]
        worst["param"] = _rel_diff(params[1], params[0])
        # BatchNorm's running statistics (what evaluation uses): recorded, not yet held to a tolerance (no GPU has
        # measured it; a graph that stopped updating them would show here while outputs and gradients agree).
        buffers = [torch.cat([b.detach().flatten().float() for b in m.buffers() if b.is_floating_point()]
                             or [torch.zeros(0, device=dev)]) for m in (eager, graphed_model)]
        worst["buffer"] = _rel_diff(buffers[1], buffers[0])
    ok = (result["steps"] == steps and all(worst[k] <= tolerance[k] for k in tolerance)
          and result.get("dropout", {}).get("fresh_masks_per_replay", True))
    return dict(result, ok=ok, max_rel_diff=worst, per_step=per_step, tolerance=tolerance,
                capture_seconds=info["compile_seconds"])


# ---------------------------------------------------------------------------------------------------------
# The benchmark file

def _now() -> str:
    """UTC time, ISO format to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _release(dev: torch.device) -> None:
    """Free the last model's memory (graphs, optimiser state) before the next one is measured."""
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def _merge_write(path: Path, dev: torch.device, entries: dict | None = None, drop: Sequence[str] = (),
                 sections: dict | None = None, **top) -> dict:
    """Merge `entries` (and top-level keys; `drop` removes top-level keys; `sections` = {section: {key: record}}
    into those top-level dicts) into the bench file at `path`; atomic write; returns the content. With nothing
    to merge, only checks that the file is this device's and writes nothing (its `updated` stays the time of
    its last measurement)."""
    name = device_name(dev)
    data = read_json(path) if path.exists() else {"device": name, "device_slug": device_slug(dev), "entries": {}}
    if data.get("device") != name:
        raise ValueError(f"{path} holds measurements of {data.get('device')!r}, not of this device ({name!r}): "
                         f"write to another file (out_path) or delete it")
    if not (entries or sections or drop or top):
        return data
    data["entries"].update(entries or {})
    for section, records in (sections or {}).items():
        data[section] = dict(data.get(section) or {}, **records)
    for key in drop:
        data.pop(key, None)
    data.update(top, updated=_now())
    atomic_write_json(path, data)
    return data


def graph_check_key(model: str, precision: str = "fp32") -> str:
    """Key of a model's graph check in the bench file's 'graph_checks': the model (fp32), <model>/bf16."""
    return model if precision == "fp32" else f"{model}/{precision}"


def graph_checks(bench) -> dict:
    """{graph_check_key: check_cuda_graphs result} of a bench file (path or dict). Files written before the
    checks were per model hold one (fp32) under 'graph_check'; it is read as its model's."""
    data = load_bench(bench)
    old = data.get("graph_check")
    checks = {old["model"]: old} if old and old.get("model") else {}
    return dict(checks, **data.get("graph_checks", {}))


def graph_failures(bench) -> list[str]:
    """Models with a graph check (any precision) whose graphed step differed from the eager one."""
    return sorted({c["model"] for c in graph_checks(bench).values() if c.get("ok") is False})


def save_graph_check(check: dict, path: Path | str, device: torch.device | str) -> dict:
    """Record a check_cuda_graphs result under the bench file's 'graph_checks' (merged, atomic)."""
    path = Path(path)
    known = graph_checks(path) if path.exists() else {}
    key = graph_check_key(check["model"], check.get("check_precision", "fp32"))
    return _merge_write(path, torch.device(device), graph_checks=dict(known, **{key: check}), drop=("graph_check",))


def save_agreement(result: dict, path: Path | str, device: torch.device | str) -> dict:
    """Record an agreement() result under the bench file's 'agreement' -> model (merged, atomic)."""
    return _merge_write(Path(path), torch.device(device), sections={"agreement": {result["model"]: result}})


def fast_path_label(fast_path: dict | None) -> str:
    """How lib.train stepped a run, from its result's fast_path: ' (torch.compile'd step)', ' (CUDA-graphed
    step)', ' (whole-step CUDA graph)', ' (eager steps)'; '' where not recorded (a CPU run has none)."""
    if not fast_path:
        return ""
    if fast_path.get("step_graph"):
        return " (whole-step CUDA graph" + (", torch.compile'd)" if fast_path.get("compile") else ")")
    if fast_path.get("compile"):
        return " (torch.compile'd step)"
    return " (CUDA-graphed step)" if fast_path.get("cuda_graphs") else " (eager steps)"


def agreement_lines(bench) -> list[str]:
    """One sentence per side-by-side accuracy run in a bench file (path or dict), naming how the fast runs
    stepped (a compiled step is not the CUDA-graphed one this compares)."""
    lines = []
    for r in load_bench(bench).get("agreement", {}).values():
        spread = lambda std: "" if std is None else f" ± {100 * std:.2f}"
        p = "" if r.get("p_value") is None else f", Welch p = {r['p_value']:.2f}"
        lines.append(f"Naive vs fast, {r['model']}, {r['epochs']} epochs of the recipe, seeds "
                     f"{', '.join(map(str, r['seeds']))}: final validation accuracy naive "
                     f"{100 * r['naive_mean']:.2f}{spread(r.get('naive_std'))}%, fast"
                     f"{fast_path_label(r.get('fast_path'))} {100 * r['fast_mean']:.2f}"
                     f"{spread(r.get('fast_std'))}% (fast - naive {100 * r['difference']:+.2f} points{p}; "
                     f"{r['num_train']} training images, {r['device']}, {r['date'][:10]}).")
    return lines


def compile_key(model: str, mode: str = "default") -> str:
    """Bench key of `model`'s torch.compile'd entry in compile mode `mode`."""
    return f"{model}+compile" if mode == "default" else f"{model}+compile-{mode}"


def step_graph_key(model: str, compiled: bool = False) -> str:
    """Bench key of `model`'s entry timed with the whole step as one CUDA graph (lib.step_graph), around the
    torch.compile'd model where `compiled`."""
    return f"{model}+step-graph" + ("-compiled" if compiled else "")


def timed_as_now(entry: dict, dev: torch.device) -> bool:
    """Whether a bench entry timed the training step the way this process would: not if the model's
    implementation changed since (lib.models.revision), and an uncompiled CUDA entry timed without CUDA graphs
    is out of date once they are on for its model (the first H200 call ran eagerly because its graph check
    failed), and the other way round (lib.train.graphs_enabled_for); a CANet entry whose blocks ran merged or per
    path otherwise than CIFAR10_CANET_MERGED builds them now (canet_merged; entries without it ran merged).
    missing_only re-times such entries."""
    from lib.train import graphs_enabled_for

    if stale_revision(entry):
        return False  # timed with an older implementation of the model (lib.models.REVISIONS)
    if dev.type == "cuda" and not same_block_form(entry):
        return False  # its blocks ran merged and CIFAR10_CANET_MERGED now says per path, or the other way round
    if entry.get("compiled") or "compile_mode" in entry or entry.get("step_graph") or dev.type != "cuda":
        return True
    return bool(entry.get("cuda_graphs")) == graphs_enabled_for(entry["model"])


def same_block_form(record: dict) -> bool:
    """Whether a CANet bench entry or graph check ran its blocks in the form CIFAR10_CANET_MERGED builds on CUDA
    now (canet_merged; records without it ran merged); True for other models."""
    return record.get("model") not in CANET_VARIANTS or record.get("canet_merged", True) == merged_on_cuda()


def naive_as_now(entry: dict) -> bool:
    """Whether an entry's naive epoch validated as naive_epoch does now (NAIVE_VAL_TRANSFORMS; entries from
    before the field validated on plain images) and read the data as it does now (naive_dataset_as_now)."""
    return entry.get("naive_val_transforms", "eval") == NAIVE_VAL_TRANSFORMS and naive_dataset_as_now(entry)


def naive_dataset_as_now(entry: dict) -> bool:
    """Whether an entry's naive epoch read its data set as lib.naive reads it now (naive_dataset): the image files of
    an image-folder copy, the arrays of the official data (entries without the field read arrays)."""
    official = str(entry.get("data", "")).startswith("official")
    return entry.get("naive_dataset", "arrays") == ("arrays" if official else "files")


def _missing_only_skip(have: dict, key: str, with_naive: bool, dev: torch.device) -> str | None:
    """Why run_benchmark with missing_only does not time `key` again (`have`: the bench file's entries): 'as now'
    (timed_as_now, and its naive epoch as now where one is wanted), 'naive kept' (a fast-only measurement would
    drop the naive epoch taken beside it: re-timed only with both); None: it is timed."""
    entry = have.get(key)
    if entry is None:
        return None
    if timed_as_now(entry, dev) and (not with_naive or (entry.get("naive_seconds") is not None
                                                         and naive_as_now(entry))):
        return "as now"
    if not with_naive and entry.get("naive_seconds") is not None:
        return "naive kept"
    return None


def missing_steps(models: Sequence[str], probes: Sequence[str] = (), device: str = "auto",
                  path: Path | str | None = None) -> dict:
    """What the GPU runner's two missing-only steps before its plan would do, read from the bench file alone
    (no GPU work), so that the runner can leave out a step with nothing to do (a Python start each): 'graph',
    the models whose fp32 graph check `--check-graphs MODELS --missing-only` would make; 'eager', the models whose
    recorded check failed (CIFAR10_EAGER_MODELS for the steps after it); 'fast', the keys `--fast-only MODELS
    [--probe] --missing-only` would time, with 'eager' training eagerly."""
    from lib.train import EAGER_MODELS_ENV, resolve_device

    dev = resolve_device(device)
    path = Path(path) if path is not None else bench_path(dev)
    data = read_json(path) if path.exists() else {}
    checks = graph_checks(data)
    eager = graph_failures(data)
    have = data.get("entries", {})
    with _env(EAGER_MODELS_ENV, " ".join(eager)):
        skips = {m: _missing_only_skip(have, m, False, dev) for m in models}
    return {"graph": [m for m in models if not graph_check_as_now(checks.get(graph_check_key(m)))],
            "eager": eager, "fast": [m for m in models if skips[m] is None]
            + [f"probe-{m}" for m in probes if f"probe-{m}" not in have],
            "naive_kept": [m for m in models if skips[m] == "naive kept"]}


def write_missing_steps(folder: Path | str, models: Sequence[str], probes: Sequence[str] = ()) -> dict:
    """missing_steps on this machine's bench file, written for the GPU runner as eager-recorded.txt,
    fast-missing.txt and, last (the runner trusts the others only where it exists), graph-missing.txt in `folder`
    (names separated by spaces; an empty file: none). Says which entries the fast step would keep though stale."""
    steps = missing_steps(models, probes)
    for key in steps["naive_kept"]:  # as run_benchmark says it, where the runner now leaves that step out
        print(f"[bench] {key}: timed otherwise than now, but with its naive epoch; re-time it with --models")
    for name, key in (("eager-recorded", "eager"), ("fast-missing", "fast"), ("graph-missing", "graph")):
        Path(folder, f"{name}.txt").write_text(" ".join(steps[key]) + ("\n" if steps[key] else ""))
    return steps


def runner_first_step(allow_cpu: bool, folder: Path | str | None, models: Sequence[str] = (),
                      probes: bool = False, subset: Sequence[str] = (), seeds: Sequence[int] = (0,),
                      profile: str = "full") -> int:
    """The GPU runner's first step, in one Python start (each imports torch: 5-13 s on the GPU machine): check the
    call's study `subset` (its words besides 'bench': lib.plan.select_jobs' names, for `seeds` and `profile`), print
    the versions, test CUDA, decode the data once into the cache (CIFAR10_SOURCE: the runner's DATA) and, with a
    `folder`, write what its missing-only steps would measure there (write_missing_steps; on an error, nothing,
    and every step runs). Returns 0, 2 for a subset with an unknown word (said; nothing else done: a typo is
    caught before the GPU minutes of the steps before the plan), or 3 without CUDA, having read the data only if
    `allow_cpu` (a dry run)."""
    import torchvision

    from lib.plan import select_jobs, study_jobs

    if subset:
        try:
            # The experiments' names do not depend on the data source: 'official', whatever the call reads.
            select_jobs(study_jobs(None, "official", seeds=seeds, profile=profile), subset)
        except ValueError as err:
            print(f"error: {err}", flush=True)
            return 2
    print("torch", torch.__version__, "torchvision", torchvision.__version__, flush=True)
    cuda = torch.cuda.is_available()
    if cuda or allow_cpu:
        print(load_cifar10())
        if folder is not None:
            try:
                write_missing_steps(folder, models, BN_MODELS if probes else ())
            except Exception as err:  # the steps then run as they would without it
                print(f"(what is missing not known: {type(err).__name__}: {err})")
    return 0 if cuda else 3


def run_benchmark(models: Sequence[str] = (), data_source: str | None = None, device: str = "auto",
                  out_path: Path | str | None = None, *, fast_only: Sequence[str] = (), probes: Sequence[str] = (),
                  num_train: int | None = None, num_val: int | None = None, num_workers: int = 4,
                  missing_only: bool = False, probe_steps: int = PROBE_BENCH_STEPS,
                  probe_overrides: dict | None = None, compile: bool = False, also_compiled: Sequence[str] = (),
                  also_step_graph: Sequence[str] = (), also_step_graph_compiled: Sequence[str] = (),
                  step_graph_rows: bool = False, progress: bool = True) -> dict:
    """Time naive and fast epochs of `models` (only fast for `fast_only`, probe steps for `probes`) in this
    process; merge each entry into the bench file as soon as it is measured. Returns the file's content.

    missing_only skips what the file already has (a later call on the same device adds the rest), except
    entries whose step was timed otherwise than it would be now (timed_as_now) and naive epochs that validated or
    read the data otherwise (naive_as_now).
    compile=True times the torch.compile variant of the fast epoch instead, under compile_key(model, mode)
    (the study estimate and the plan read it for the models that CIFAR10_COMPILE names, see compile_choice).
    also_compiled: models whose compiled fast epoch is timed too, after all the others, against the naive
    epoch this process measured (one naive epoch serves both rows of the table; models not in `models`
    join them). also_step_graph, also_step_graph_compiled: likewise, with the whole step as one CUDA graph (an
    experiment, lib.step_graph), around the eager or the compiled model, under step_graph_key(model, compiled).
    step_graph_rows: the `fast_only` models' two whole-step-graph rows instead of their plain ones (fast epochs
    only: what the plan and the estimate read for the runs CIFAR10_STEP_GRAPH names, compiled inside or not as
    CIFAR10_COMPILE will say; the GPU runner times them before its compile choice, so both).
    """
    from lib.train import compile_mode, resolve_device

    dev = resolve_device(device)
    path = Path(out_path) if out_path is not None else bench_path(dev)
    have = read_json(path).get("entries", {}) if (missing_only and path.exists()) else {}
    source = canonical_source(data_source)
    base = {"device": device_name(dev), "torch": torch.__version__}
    data = _merge_write(path, dev)
    mode = compile_mode()
    extra = list(also_compiled) + list(also_step_graph) + list(also_step_graph_compiled)
    models = list(models) + [m for m in dict.fromkeys(extra) if m not in models]  # each needs its naive epoch
    fast_variants = [(False, True), (True, True)] if step_graph_rows else [(compile, False)]
    jobs = ([(m, True, compile, False) for m in models]
            + [(m, False, c, g) for m in fast_only if m not in models for c, g in fast_variants]
            + [(m, True, True, False) for m in also_compiled if not compile]
            + [(m, True, False, True) for m in also_step_graph]
            + [(m, True, True, True) for m in also_step_graph_compiled])
    naive_of = {}  # model -> the naive measurement of this process
    for model_name, with_naive, compiled, step_graph in jobs:
        key = (step_graph_key(model_name, compiled) if step_graph else compile_key(model_name, mode) if compiled
               else model_name)
        skip = _missing_only_skip(have, key, with_naive, dev)
        if skip == "naive kept":
            print(f"[bench] {key}: timed otherwise than now, but with its naive epoch; re-time it with --models")
        if skip:
            continue
        cfg = recipe_config(model_name, source, str(dev), num_train, num_val)
        entry = dict(base, model=model_name, recipe=recipe_name(cfg), batch_size=cfg.batch_size,
                     model_revision=revision(model_name))
        if with_naive:
            if model_name not in naive_of:
                naive_of[model_name] = naive_epoch(model_name, source, str(dev), num_train=num_train,
                                                   num_val=num_val, num_workers=num_workers)
            naive = naive_of[model_name]
            entry.update(naive_seconds=naive["seconds"], naive_images_per_s=naive["images_per_s"],
                         naive_val_passes=naive["val_passes"], naive_workers=num_workers,
                         naive_val_transforms=naive["val_transforms"], naive_dataset=naive["dataset"])
        fast = fast_epoch(model_name, source, str(dev), num_train=num_train, num_val=num_val, compile=compiled,
                          step_graph=step_graph)
        entry.update(num_train=fast["num_train"], num_val=fast["num_val"], data=fast["data"],
                     fast_seconds=fast["seconds"], fast_images_per_s=fast["images_per_s"],
                     fast_overhead_seconds=fast["overhead_seconds"], fast_overhead_warm=True,
                     compile_seconds=fast["compile_seconds"],
                     setup_seconds=fast["setup_seconds"], warmup_seconds=fast["warmup_seconds"],
                     cuda_graphs=fast["cuda_graphs"], compiled=fast["compiled"], date=_now(),
                     # True: this process had run the model's full-batch steps before (e.g. its CUDA-graphed epoch
                     # before the compiled one), so cuDNN's autotuning was not part of this entry's one-off.
                     **({"earlier_in_process": fast["earlier_in_process"]}
                        if fast.get("earlier_in_process") is not None else {}),
                     **({"canet_merged": fast["canet_merged"]} if fast.get("canet_merged") is not None else {}),
                     # A compiled entry: its compile's lookups in torch.compile's on-disk caches (hits: read back).
                     **({"compile_cache": fast["compile_cache"]} if fast.get("compile_cache") is not None else {}),
                     **({"compile_mode": fast.get("compile_mode") or mode} if compiled else {}),
                     **({"step_graph": bool(fast.get("step_graph"))} if step_graph else {}))
        entry["ratio"] = entry["naive_seconds"] / fast["seconds"] if with_naive else None
        data = _merge_write(path, dev, {key: entry})
        _release(dev)
        if progress:
            naive_txt = f"naive {entry['naive_seconds']:.2f} s, " if with_naive else ""
            ratio_txt = f", {entry['ratio']:.1f}x" if with_naive else ""
            print(f"[bench] {key}: {naive_txt}fast {fast['seconds']:.2f} s/epoch "
                  f"(+{fast['overhead_seconds']:.2f} s bookkeeping, {fast['compile_seconds']:.1f} s capture/compile)"
                  f"{ratio_txt}", flush=True)
    for model_name in probes:
        key = f"probe-{model_name}"
        if key in have:
            continue
        overrides = dict(probe_overrides or {})
        if num_train is not None:  # a reduced run (tests): at least one full batch
            overrides.setdefault("num_train", num_train)
            overrides.setdefault("batch_size", min(num_train, 128))
        probe = probe_step_seconds(model_name, source, str(dev), num_steps=probe_steps, **overrides)
        data = _merge_write(path, dev, {key: dict(base, model=model_name, kind="probe", date=_now(), **probe)})
        if progress:
            print(f"[bench] {key}: {probe['seconds_per_step'] * 1e3:.1f} ms/step", flush=True)
    return data


# ---------------------------------------------------------------------------------------------------------
# Reading it: the README table and the study estimate

def load_bench(bench) -> dict:
    """A bench dict from a dict or a path; ValueError, saying why, for a file that is no bench file (a folder,
    broken JSON, another JSON document: lib.bench_merge.bench_file_problem). A missing file: FileNotFoundError."""
    if isinstance(bench, dict):
        return bench
    try:
        data = read_json(bench)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as err:  # a folder, unreadable, or not JSON (json's errors are ValueErrors)
        problem = unreadable_why(err)
    else:
        problem = bench_file_problem(data)
        if not problem:
            return data
    raise ValueError(f"{bench} cannot be read as a bench file ({problem}): name another with --out, or move it "
                     f"aside to measure into a new one")


def run_seconds(entry: dict, num_epochs: int) -> float:
    """Estimated seconds of one training run: setup + the warm-up epoch's extra + num_epochs x (epoch + bookkeeping)."""
    extra_first = max(0.0, entry["warmup_seconds"] - entry["fast_seconds"])
    return entry["setup_seconds"] + extra_first + num_epochs * (entry["fast_seconds"] + entry["fast_overhead_seconds"])


def _epochs_of(model: str) -> int:
    """Epochs of `model`'s runs in the full study (the BN protocol's for VGG_A / VGG_A_BN)."""
    full = PROFILES["full"]
    return full.bn_epochs if model in BN_MODELS else full.num_epochs


def key_in_use(model: str) -> str:
    """The bench key that times `model` as `python -m lib run` trains it in this environment: its whole-step graph
    key where CIFAR10_STEP_GRAPH names the model (compiled inside where CIFAR10_COMPILE names it too), else its
    compiled key (in lib.train.compile_mode()) where CIFAR10_COMPILE names it, else the model's name."""
    from lib.train import compile_mode, compiled_by_env, step_graph_requested

    if step_graph_requested(model):
        return step_graph_key(model, compiled_by_env(model))
    return compile_key(model, compile_mode()) if compiled_by_env(model) else model


def entry_in_use(entries: dict, model: str) -> dict | None:
    """entries[key_in_use(model)] if it holds a fast measurement, else None (a model to be compiled whose
    compiled run was not measured has no estimate: its compile time is unknown)."""
    entry = entries.get(key_in_use(model), {})
    return entry if entry.get("fast_seconds") is not None else None


def compile_choice(bench, lanes: int = 1, mps: bool | None = None) -> list[str]:
    """Models whose torch.compile'd run (in lib.train.compile_mode()) is estimated faster than their
    CUDA-graphed one on the bench's device, one-off compile time included (a whole `full` run: run_seconds
    over its epochs). Both variants must be measured; the GPU runner exports the answer as CIFAR10_COMPILE. For
    a model whose runs train as one whole-step graph (CIFAR10_STEP_GRAPH names it), its two step-graph rows are
    weighed instead: the graph around the compiled model against the graph around the eager one.

    With `lanes` > 1 (runs trained that many at once, under MPS as `mps` says, default as now), a variant with a
    measured gain at that many at once counts its run's seconds x its slowdown / lanes, as the plan and
    lib.lanes.lanes_estimate count it, a variant without one its seconds alone: the variant that takes the GPU
    for less time wins, e.g. a compiled step measured three at once over a CUDA-graphed one that is a little
    faster alone but has no measurement at once. That compares what the plan will do with each variant (an
    unmeasured one trains alone), not what the variants could do: a measurement of the other variant at once may
    reverse it. The whole run, its one-off compile included, counts at the epoch's measured slowdown, as in the
    plan's estimates (three compiles at once were not timed)."""
    from lib.lanes import seconds_at_once, slowdown
    from lib.train import compile_mode, step_graph_requested

    data = load_bench(bench)
    entries = data.get("entries", {})
    chosen = []
    for model in PART1_MODELS + BN_MODELS:
        if step_graph_requested(model):  # its runs train as one whole-step graph: compiled inside it or not
            key, ckey = step_graph_key(model, False), step_graph_key(model, True)
        else:
            key, ckey = model, compile_key(model, compile_mode())
        plain, compiled = entries.get(key, {}), entries.get(ckey, {})
        if plain.get("fast_seconds") is None or compiled.get("fast_seconds") is None or not compiled.get("compiled"):
            continue  # not both measured, or a CPU measurement (where nothing is compiled)
        cost = {k: seconds_at_once([(run_seconds(entry, _epochs_of(model)),
                                     slowdown(data, model, lanes, mps, key=k))], lanes)
                for k, entry in ((key, plain), (ckey, compiled))}
        if cost[ckey] < cost[key]:
            chosen.append(model)
    return chosen


def study_estimate(bench, seeds: int = 1) -> dict:
    """Seconds of the `full` study on the bench's device: {part1: {model: s}, bn: {model: s}, probe: {model: s},
    total_seconds, total_minutes, target_minutes, missing: [keys without a measurement]}.

    Part 1: the nine models x `seeds` runs of PROFILES['full'].num_epochs epochs; the BN protocol: VGG_A and
    VGG_A_BN at each of the BN_LRS for bn_epochs; the probe runs: both networks for the probe's num_steps.
    One-off costs (setup, compile/capture, the first epoch's autotuning) are counted per run. Each model's
    time is that of the variant `python -m lib run` trains here (entry_in_use: compiled where CIFAR10_COMPILE
    names it).
    """
    from lib.bn_study import PROBE_SIZES

    entries = load_bench(bench).get("entries", {})
    out = {"part1": {}, "bn": {}, "probe": {}, "missing": []}
    for m in PART1_MODELS + BN_MODELS:
        group, runs = ("bn", len(BN_LRS)) if m in BN_MODELS else ("part1", seeds)
        if (e := entry_in_use(entries, m)) is not None:
            out[group][m] = runs * run_seconds(e, _epochs_of(m))
        else:
            out["missing"].append(key_in_use(m))
    for m in BN_MODELS:
        key = f"probe-{m}"
        if key in entries:
            out["probe"][m] = PROBE_SIZES["full"]["num_steps"] * entries[key]["seconds_per_step"]
        else:
            out["missing"].append(key)
    total = sum(sum(out[k].values()) for k in ("part1", "bn", "probe"))
    return dict(out, total_seconds=total, total_minutes=total / 60, target_minutes=STUDY_TARGET_MINUTES)


def estimate_study_minutes(bench, seeds: int = 1) -> float:
    """Minutes of the whole `full` study (one seed by default) from measured epoch times; error if any is missing."""
    est = study_estimate(bench, seeds)
    if est["missing"]:
        models = [k for k in est["missing"] if not k.startswith("probe-") and "+" not in k]
        compiled = [k.split("+compile")[0] for k in est["missing"] if "+compile" in k]
        graphed = list(dict.fromkeys(k.split("+step-graph")[0] for k in est["missing"] if "+step-graph" in k))
        raise ValueError(f"the bench file lacks measurements for {', '.join(est['missing'])}: run "
                         f"`python -m lib bench --fast-only {' '.join(models) or '...'} --probe --missing-only`"
                         + (f" and `python -m lib bench --fast-only {' '.join(compiled)} --compile --missing-only`"
                            if compiled else "")
                         + (f" and `python -m lib bench --fast-only {' '.join(graphed)} --step-graph-rows "
                            "--missing-only`" if graphed else "") + " on the same device first")
    return est["total_minutes"]


@contextlib.contextmanager
def as_runner_compiles(bench, lanes: int = 1, mps: bool | None = None):
    """For the block, the models compiled as the GPU runner compiles them by default: CIFAR10_COMPILE set to
    compile_choice(bench, lanes, mps) unless the environment sets it. Yields the choice, or None where the
    environment's setting holds. Estimates (format_estimate, lib.lanes.format_lanes_estimate) look models up
    under it."""
    from lib.train import COMPILE_ENV

    chosen = compile_choice(bench, lanes, mps) if COMPILE_ENV not in os.environ else None
    with _env(COMPILE_ENV, " ".join(chosen)) if chosen is not None else contextlib.nullcontext():
        yield chosen


def format_estimate(bench, seeds: int = 1) -> str:
    """Human-readable study estimate with its parts. Without CIFAR10_COMPILE in the environment, the models are
    compiled as the GPU runner chooses by default (compile_choice: where the bench file shows a compiled run
    faster), and the line names them."""
    data = load_bench(bench)
    with as_runner_compiles(data) as chosen:
        est = study_estimate(data, seeds)
        entries = data.get("entries", {})
        eager = [m for m in PART1_MODELS + BN_MODELS if (e := entry_in_use(entries, m)) is not None
                 and not e.get("compiled") and not e.get("cuda_graphs")]
    parts = ", ".join(f"{name} {sum(est[key].values()) / 60:.1f} min" for key, name in
                      (("part1", "Part 1"), ("bn", "BN protocol"), ("probe", "probes")))
    line = (f"full study on {data.get('device')}, {seeds} seed(s): {est['total_minutes']:.1f} min "
            f"({parts}; target <= {STUDY_TARGET_MINUTES:g} min: "
            f"{'met' if est['total_minutes'] <= STUDY_TARGET_MINUTES else 'missed'})")
    if chosen:
        line += f"; torch.compile'd as the GPU runner chooses for one run at a time: {', '.join(chosen)}"
    if est["missing"]:
        line += f"; INCOMPLETE, not measured: {', '.join(est['missing'])}"
    if str(data.get("device_slug", "")).startswith("cpu"):
        return line
    if eager:  # timed without CUDA graphs on a GPU (the graph check had failed): slower than the study runs
        line += f"; timed without CUDA graphs, so an upper bound: {', '.join(eager)}"
    return line


def _fmt(value, spec: str) -> str:
    """Format a number, or a dash for a missing one."""
    return "-" if value is None else format(value, spec)


def stale_revision(entry: dict) -> bool:
    """Whether a bench record (a timing, a graph check, an agreement run) was made with an older
    implementation of its model than this checkout's (lib.models.revision; records without one: 1)."""
    return entry.get("model_revision", 1) != revision(entry["model"])


def recorded_as_now(record: dict | None) -> bool:
    """Whether a recorded graph check, trace or bookkeeping record can stand for one made now: made with this
    torch version and this revision of its model (what --missing-only reuses)."""
    return record is not None and record.get("torch") == torch.__version__ and not stale_revision(record)


def graph_check_as_now(record: dict | None) -> bool:
    """recorded_as_now, and for a CANet made with its blocks in the form CIFAR10_CANET_MERGED builds now (a check
    of the merged graph does not vouch for the per-path one); a failed check of an older GRAPH_CHECK_VERSION is
    made again (version 1 compared with dropout on: a model with dropout could not pass)."""
    return (recorded_as_now(record) and same_block_form(record)
            and (record.get("ok") is not False or record.get("check_version", 1) >= GRAPH_CHECK_VERSION))


def _step_label(entry: dict) -> str:
    """How the fast epoch ran its training steps: 'compiled', 'CUDA graph' or 'eager'; ', CANet blocks per path'
    where a CANet's blocks ran as specified instead of merged (canet_merged); ', model rev N' where the model's
    implementation changed since (stale_revision)."""
    kind = "compiled" if entry.get("compiled") else "CUDA graph" if entry.get("cuda_graphs") else "eager"
    if entry.get("step_graph"):
        kind = "whole-step graph" + (", compiled" if entry.get("compiled") else "")
    return (kind + (", CANet blocks per path" if entry.get("canet_merged") is False else "")
            + (f", model rev {entry.get('model_revision', 1)}" if stale_revision(entry) else ""))


def from_compile_cache(entry: dict) -> bool:
    """Whether a compiled entry's compile read its graphs from torch.compile's on-disk cache (compile_cache: hits,
    no misses or bypasses): its one-off cost is then not that of a fresh compile."""
    lookups = entry.get("compile_cache") or {}
    fresh = sum(v for k, v in lookups.items() if k.endswith(("_miss", "_bypass")))
    return bool(entry.get("compiled")) and lookups.get("fxgraph_hit", 0) + lookups.get("aot_hit", 0) > 0 and not fresh


def _row_label(entry: dict) -> str:
    """A bench table row's name: the model, and how its fast epoch was compiled if it was."""
    mode = entry.get("compile_mode") or "default"
    if "step_graph" in entry:  # asked for (a step_graph_key entry); False: eager steps (a CPU, a failed capture)
        return entry["model"] + (" (whole-step CUDA graph" + (", torch.compile" if "compile_mode" in entry else "")
                                 + ("" if entry["step_graph"] else " asked for, ran eager steps") + ")")
    return entry["model"] + (f" (torch.compile{'' if mode == 'default' else ', ' + mode})" if entry.get("compiled")
                             else " (torch.compile asked for, ran uncompiled)" if "compile_mode" in entry else "")


def speed_verdict(bench, seeds: int = 3, lanes: int = 3) -> str | None:
    """The targets in one paragraph: each target model's best current speed-up (rows of an older model revision
    left out), the study's estimate one run at a time for one seed and for `seeds`, and with `lanes` runs at once
    in each MPS state measured (lib.lanes.lanes_estimate, a lower bound); the models compiled as the GPU runner
    chooses. Where a measurement the estimate needs is missing (a device's first calls), it names them instead of
    the estimate. None for a CPU's bench file (a dry run: the targets are a GPU's) or one with nothing to say."""
    from lib.lanes import lanes_estimate, measured_states

    data = load_bench(bench)
    if str(data.get("device_slug", "")).startswith("cpu"):
        return None
    rows = [e for e in data.get("entries", {}).values() if e.get("model") in RATIO_TARGETS
            and e.get("ratio") is not None and not stale_revision(e)]
    parts = []
    for model, target in RATIO_TARGETS.items():
        if best := max((e for e in rows if e["model"] == model), key=lambda e: e["ratio"], default=None):
            how = "torch.compile'd" if best.get("compiled") and not best.get("step_graph") else _step_label(best)
            parts.append(f"{model} {best['ratio']:.1f}x of {target:g}x ({how}): "
                         f"{'met' if best['ratio'] >= target else 'missed'}")
    with as_runner_compiles(data):
        one, more = study_estimate(data, 1), study_estimate(data, seeds)
    if not parts and one["missing"]:
        return None
    text = (f"**Against the targets** ({data.get('device')}): "
            + ("; ".join(parts) if parts else "no naive-vs-fast epoch of a target model yet") + ".")
    if one["missing"]:
        return text + (f" The study's estimate needs {', '.join(one['missing'])} timed first (`python -m lib bench "
                       f"--fast-only ... --probe --missing-only` on this device).")
    once = (sum(one["bn"].values()) + sum(one["probe"].values())) / 60
    verdict = "met" if one["total_minutes"] <= STUDY_TARGET_MINUTES else "missed"
    text += (f" The `full` study one run after another, by the estimate below: {one['total_minutes']:.1f} min for "
             f"one seed (Part 1 {one['total_minutes'] - once:.1f}, the BN protocol and the probes, which do not "
             f"repeat per seed, {once:.1f}; target <= {STUDY_TARGET_MINUTES:g} min: {verdict}), "
             f"{more['total_minutes']:.1f} min for {seeds} seeds")
    for mps in measured_states(data, lanes):
        with as_runner_compiles(data, lanes, mps):
            one_l, more_l = lanes_estimate(data, 1, lanes, mps), lanes_estimate(data, seeds, lanes, mps)
        if one_l["missing"]:
            continue
        text += (f". With {lanes} runs at once{' under MPS' if mps else ', time-sliced'}: at least "
                 f"{one_l['total_minutes']:.1f} min for one seed "
                 f"({'met' if one_l['total_minutes'] <= STUDY_TARGET_MINUTES else 'missed'}), at least "
                 f"{more_l['total_minutes']:.1f} min for {seeds} seeds, {more_l['per_seed_minutes']:.1f} per seed")
    return text + "."


def superseded(entry: dict) -> bool:
    """Whether a bench entry is one the GPU runner will never time again: torch.compile'd in a mode other than
    lib.train.compile_mode()'s and with an older implementation of its model (stale_revision). The bench file keeps
    it; the table names it under itself instead of showing it (its notes about how it was timed would otherwise
    describe only it)."""
    from lib.train import compile_mode

    return (bool(entry.get("compiled")) and stale_revision(entry) and not entry.get("step_graph")
            and (entry.get("compile_mode") or "default") != compile_mode())


def bench_table(bench) -> str:
    """Markdown table of a bench file (path or dict): per model naive and fast s/epoch, speed-up and target."""
    data = load_bench(bench)
    old, entries = [], []
    for e in data.get("entries", {}).values():
        if e.get("kind") != "probe":
            (old if superseded(e) else entries).append(e)
    order = {m: i for i, m in enumerate(PART1_MODELS + BN_MODELS)}
    entries.sort(key=lambda e: (e.get("naive_seconds") is None, order.get(e["model"], 99), "step_graph" in e,
                                bool(e.get("compiled"))))
    summary = speed_verdict(data)
    lines = [summary, ""] if summary else []
    lines += ["| Model | Recipe (batch) | Fast step | Naive s/epoch | Fast s/epoch | Speed-up | Target "
              "| Fast images/s | Bookkeeping s/epoch | One-off s |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for e in entries:
        target = RATIO_TARGETS.get(e["model"])
        ratio = e.get("ratio")
        verdict = "" if ratio is None or target is None else (" (met)" if ratio >= target else " (missed)")
        one_off = None if e.get("setup_seconds") is None else (
            e["setup_seconds"] + max(0.0, (e.get("warmup_seconds") or 0.0) - (e.get("fast_seconds") or 0.0)))
        # Timed after the same process had trained the model (earlier_in_process): cuDNN's autotuning was paid then.
        later = "*" if e.get("earlier_in_process") and one_off is not None else ""
        later += "†" if from_compile_cache(e) and one_off is not None else ""
        lines.append(f"| {_row_label(e)} "
                     f"| {e.get('recipe', '?')} ({e.get('batch_size', '?')}) | {_step_label(e)} "
                     f"| {_fmt(e.get('naive_seconds'), '.2f')} | {_fmt(e.get('fast_seconds'), '.2f')} "
                     f"| {_fmt(ratio, '.1f')}{'x' if ratio is not None else ''}{verdict} "
                     f"| {_fmt(target, '.0f')}{'x' if target else ''} | {_fmt(e.get('fast_images_per_s'), ',.0f')} "
                     f"| {_fmt(e.get('fast_overhead_seconds'), '.2f')} | {_fmt(one_off, '.1f')}{later} |")
    probes = [e for e in data.get("entries", {}).values() if e.get("kind") == "probe"]
    if probes:
        lines.append("")
        lines.append("Probe runs (Santurkar et al.): " + "; ".join(
            f"{e['model']} {1e3 * e['seconds_per_step']:.1f} ms/step" for e in probes) + ".")
    stale = sorted({e["model"] for e in entries if stale_revision(e)}, key=lambda m: order.get(m, 99))
    if stale:
        now = "; ".join(f"{', '.join(m for m in stale if revision(m) == r)} at rev {r}"
                        for r in sorted({revision(m) for m in stale}))
        lines += ["", f"Rows marked 'model rev N' were timed with an older implementation of their model than this "
                      f"checkout's (lib.models.REVISIONS: {now} now); the GPU runner's next `bench` call on this "
                      "device re-times them (`--missing-only`)."]
    if old:
        lines += ["", "Left out of the table, as the GPU runner no longer measures them (an older implementation of "
                      "the model, in a torch.compile mode it no longer uses; kept in the bench file): "
                  + ", ".join(f"{_row_label(e)}, model rev {e.get('model_revision', 1)}, {e.get('date', '?')[:10]}"
                              for e in old) + "."]
    sample = entries[0] if entries else {}
    naive = [e for e in entries if e.get("naive_seconds") is not None]
    plain = [_row_label(e) for e in naive if e.get("naive_val_transforms", "eval") != NAIVE_VAL_TRANSFORMS]
    val_txt = ("validation images through the training transforms, as the original validated on augmented images; "
               if NAIVE_VAL_TRANSFORMS == "train" else "")
    if plain:
        val_txt += (f"the naive epochs of the rows {', '.join(plain)} were timed before that, with plain validation "
                    f"images (so they are a lower bound); ")
    val_txt += ("the images read as we read the original's torchvision dataset: an image-folder copy's files opened "
                "and decoded one by one (ImageFolder), the official data's arrays from memory; ")
    arrays = [_row_label(e) for e in naive if not naive_dataset_as_now(e)]
    if arrays:
        which = ("every naive epoch here" if len(arrays) == len(naive)
                 else f"the naive epochs of the rows {', '.join(arrays)}")
        val_txt += (f"{which} read decoded arrays from memory instead (timed before 2026-11-28, when lib.naive began "
                    f"to read the files: a lower bound of the original's cost); ")
    dates = sorted(e.get("date", "")[:10] for e in data.get("entries", {}).values() if e.get("date"))
    torches = sorted({e.get("torch") for e in data.get("entries", {}).values() if e.get("torch")})
    lines += ["", f"Device: {data.get('device')}; torch {', '.join(torches) or '?'}; measured "
              f"{dates[0] if dates else '?'}{' to ' + dates[-1] if dates and dates[-1] != dates[0] else ''}; "
              f"data: {sample.get('data', '?')}, {sample.get('num_train', '?')} training + "
              f"{sample.get('num_val', '?')} validation images per epoch (the full profile's epoch; speed "
              f"measurements, not study runs).", "",
              f"- Naive: the original's pipeline (per-image PIL transforms, {sample.get('naive_workers', 4)} "
              f"DataLoader workers, fp32, deterministic cuDNN, validation every {NAIVE_VAL_EVERY} iterations and at "
              f"the end of the epoch; {val_txt}PyTorch's default optimiser kernels, a host sync per step; CANet's "
              f"blocks per path, as specified; timed as the first epoch of a fresh pipeline after two untimed "
              f"steps, so its DataLoader workers start within it, once for training and at every validation pass, "
              f"as the original's did; by our reading its end-of-epoch passes are one validation pass).",
              "- Fast: lib.train's epoch (training + validation), warm (after a whole untimed epoch), CANet's blocks "
              "merged." + (" Whole-step CUDA graph rows: the training step (forward, loss, backward, optimiser step "
                           "and metrics) captured as one CUDA graph (lib/step_graph.py, an experiment; the study "
                           "trains so only where CIFAR10_STEP_GRAPH names the model), around the torch.compile'd "
                           "model where so labelled." if any("step_graph" in e for e in entries) else ""),
              "- Speed-up: naive s/epoch / fast s/epoch, both without bookkeeping and one-off costs, which are shown "
              "apart; one epoch each, in one process (a naive epoch of one model varies between calls: the call "
              "logs in results/bench/logs/ hold each call's). "
              "Fast images/s: training images / fast s/epoch (validation included).",
              "- Targets: the project's goals for its GPU path, set for one H100: an epoch of CANet at least "
              f"{RATIO_TARGETS['CANet']:g}x as fast as the naive one, of CANet_tiny at least "
              f"{RATIO_TARGETS['CANet_tiny']:g}x, and the whole `full` study in at most {STUDY_TARGET_MINUTES:g} "
              "minutes per seed. Where a model has a CUDA-graph and a torch.compile row, the "
              "study trains the variant `--compile-choice` picks (the faster whole run, one-off costs included), "
              "not the better ratio.",
              "- Bookkeeping: lib.train's per-epoch logging and checkpoints. One-off: data to the device, model, "
              "CUDA-graph capture or compile and the first epoch's extra time (cuDNN autotuning), per run; *: timed "
              "after the same process had trained the model, so without the autotuning (a lower bound)"
              + ("; †: compiled from torch.compile's on-disk cache of an earlier compile (the GPU runner carries it "
                 "between sessions), so the one-off is mostly a cache read, not a compile"
                 if any(from_compile_cache(e) for e in entries) else "") + ".",
              "", "- Estimated " + format_estimate(data) + "."]
    rest = (agreement_lines(data) + trace_lines(data) + bookkeeping_lines(data) + concurrency_lines(data)
            + graph_check_lines(data))
    lines += [f"- {line}" for line in rest]
    return "\n".join(lines) + "\n"


# Where README.md shows a bench file's table: between these two lines, written by `python -m lib refresh`.
README_TABLE_BEGIN = "<!-- speed table of {path}: written by `python -m lib refresh`; do not edit by hand -->"
README_TABLE_END = "<!-- end of the speed table -->"


def readme_with_tables(text: str, bench_files: Sequence[Path], root: Path) -> str:
    """`text` (README.md's) with the block of each bench file (paths under `root`) replaced by its bench_table as it
    renders now (as_committed). A file without its block, or a block without its end line, is a ValueError that says what to add."""
    for path in bench_files:
        rel = Path(path).relative_to(root).as_posix()
        begin = README_TABLE_BEGIN.format(path=rel)
        start = text.find(begin)
        end = text.find(README_TABLE_END, start) if start >= 0 else -1
        if start < 0 or end < 0:
            raise ValueError(f"README.md has no place for the speed table of {rel}: put the lines "
                             f"{begin!r} and {README_TABLE_END!r} where it goes (a blank line between them), then "
                             f"run python -m lib refresh again")
        with as_committed():  # as the GPU runner reads the file by default, whatever this shell exported
            table = bench_table(path)
        text = text[:start + len(begin)] + "\n\n" + table + "\n" + text[end:]
    return text


def graph_check_lines(bench) -> list[str]:
    """The CUDA-graph checks of a bench file in words: which models' graphed steps matched the eager ones."""
    lines = []
    checks = [c for c in graph_checks(bench).values() if c.get("ok") is not None]
    for precision in sorted({c.get("precision", "bf16, autotuned") for c in checks}):
        group = [c for c in checks if c.get("precision", "bf16, autotuned") == precision]
        same = [c["model"] + (" (bit-identical)" if not any((c.get("max_rel_diff") or {"?": 1}).values()) else "")
                for c in group if c["ok"]]
        line = (f"CUDA-graph step vs eager step ({precision}, {group[0].get('steps')} steps from the same "
                f"weights): " + (f"the same within tolerance for {', '.join(same)}" if same else "none the same"))
        for c in group:
            if not c["ok"]:
                redo = ("; checked by version 1, which compared with dropout on (the eager and the graphed step "
                        "draw different masks): checked again by the next GPU call"
                        if c.get("check_version", 1) < GRAPH_CHECK_VERSION and not c.get("note") else "")
                line += (f"; DIFFERENT for {c['model']} ({c.get('note') or 'max relative differences '}"
                         f"{'' if c.get('note') else c.get('max_rel_diff')}{redo})")
            elif c.get("dropout"):
                line += (f"; {c['model']}'s dropout off while compared, a replay drawing fresh masks checked apart "
                         f"(relative change between two replays {c['dropout']['replay_rel_diff']:.2f})")
        lines.append(line + ".")
    return lines
