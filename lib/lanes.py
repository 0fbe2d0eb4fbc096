"""Several training runs at once on one GPU ("lanes"): what it gains, measured; what the results then record.

A CUDA-graphed step of the study's small models leaves most of a large GPU idle: on the H200, CANet_tiny's
step is 7.8 ms of ~730 small kernels at batch 256 (results/bench/nvidia-h200.json, traces). Runs in separate
processes can share the GPU. Without NVIDIA's Multi-Process Service (MPS) the GPU time-slices between the
processes (only each one's host-side gaps are filled); under MPS their kernels run side by side. Which of the
two happens, and what it gains for each model, is measured here, not assumed:

    measure_concurrency(["CANet_tiny"], runs=3, source)  # -> the bench file's "concurrency" section
    slowdown(bench, "CANet_tiny", 3)      # an epoch's seconds with 3 runs at once / alone (unmeasured: 3)
    lanes_estimate(bench, seeds=3, runs=3)  # the full study's minutes with 3 runs at once

Each measurement starts `runs` processes that set up and warm up the model, then wait for each other; one of
them times an epoch alone while the others wait, then all time an epoch at once and wait until the last is done
(lib.bench.fast_epoch's before_timed). So both times come from the same processes, seconds apart; the slowdown
is the slowest process's epoch over the solo one.

The GPU runner (scripts/gpu_full_study.sh, LANES=3) starts MPS where the machine allows it (CIFAR10_MPS=1 then),
measures, lets lib.plan.plan_study spread the training runs of the models with a measured gain over the lanes
at these slowdowns (the others train alone, after the lanes), and starts one `python -m lib run` per lane
(CIFAR10_LANES set).
A result trained so records `shared_gpu` (lib.train), because its epoch times are those of a shared GPU.
"""
from __future__ import annotations

import datetime as _dt
import multiprocessing as mp
import os
import queue as _queue
import statistics
from pathlib import Path
from typing import Iterable, Sequence

import torch

LANES_ENV = "CIFAR10_LANES"  # set by the GPU runner while its lanes train: how many runs it started at once
MPS_ENV = "CIFAR10_MPS"      # "1": the runner's MPS daemon serves the GPU (kernels of the processes overlap)
BARRIER_TIMEOUT_S = 900.0    # a process that waits longer for the others gives up (one died without a word)


def mps_on() -> bool:
    """Whether the GPU runner said that an MPS daemon serves this machine's GPU (CIFAR10_MPS=1)."""
    return os.environ.get(MPS_ENV, "").strip() == "1"


def shared_gpu() -> dict | None:
    """What a result records when its run shared the GPU with other lanes: {'lanes', 'mps'}; None alone."""
    try:
        lanes = int(os.environ.get(LANES_ENV, "1") or 1)
    except ValueError:
        raise ValueError(f"{LANES_ENV} must be a whole number of runs at once, not {os.environ[LANES_ENV]!r}")
    return {"lanes": lanes, "mps": mps_on()} if lanes > 1 else None


def claim_spare(path: Path | str, deadline: float, now: float | None = None) -> tuple[str, float] | None:
    """Take the first run of a lane queue (lib.plan's 'spare' runs: one 'NAME:SECONDS' per line, written by the GPU
    runner) whose estimated seconds end by `deadline` (time.time() seconds) and remove it from the file; None when
    none fits (or the file is gone). Lanes that end at the same moment each take a different run: the file is
    read and rewritten under an exclusive lock (PATH.lock), the rewrite atomic. A line that is not NAME:SECONDS
    raises ValueError naming it."""
    import fcntl
    import time

    path = Path(path)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not path.exists():
            return None
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        entries = [_spare_entry(path, line) for line in lines]
        left = deadline - (time.time() if now is None else now)
        for i, (name, seconds) in enumerate(entries):
            if seconds <= left:
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text("".join(f"{line}\n" for line in lines[:i] + lines[i + 1:]))
                os.replace(tmp, path)
                return name, seconds
        return None


def _spare_entry(path: Path, line: str) -> tuple[str, float]:
    """(name, seconds) of a lane queue's line NAME:SECONDS; ValueError naming the file and line otherwise."""
    name, _, seconds = line.rpartition(":")
    try:
        if name:
            return name, float(seconds)
    except ValueError:
        pass
    raise ValueError(f"{path}: {line!r} is not NAME:SECONDS (a spare run and its estimate)")


def concurrency_key(variant: str, runs: int, mps: bool) -> str:
    """Key of a measurement in the bench file's 'concurrency': <bench key>/x<runs>/<mps|time-sliced>."""
    return f"{variant}/x{runs}/{'mps' if mps else 'time-sliced'}"


def concurrency_records(bench) -> dict:
    """The bench file's (path or dict) 'concurrency' section."""
    from lib.bench import load_bench

    return load_bench(bench).get("concurrency", {}) if bench is not None else {}


def measurement(bench, model: str, runs: int, mps: bool | None = None, key: str | None = None) -> dict | None:
    """The measurement of `model` (the variant lib.run trains now: lib.bench.key_in_use; or the bench key `key`)
    at `runs` at once, under MPS or time-sliced as `mps` says (default: as now, mps_on()), if it timed the step as
    lib.run would train it now (lib.bench.timed_as_now); None otherwise."""
    from lib.bench import key_in_use, load_bench, timed_as_now

    if bench is None:
        return None
    data = load_bench(bench)
    mps = mps_on() if mps is None else mps
    record = concurrency_records(data).get(concurrency_key(key or key_in_use(model), runs, mps))
    if not record or record.get("slowdown") is None:
        return None
    cpu = str(data.get("device_slug", "cpu")).startswith("cpu")
    return record if timed_as_now(record, torch.device("cpu" if cpu else "cuda")) else None


def slowdown(bench, model: str, runs: int, mps: bool | None = None, key: str | None = None) -> float:
    """An epoch's seconds with `runs` runs at once over its seconds alone, as measured (of the variant lib.run
    trains now, or of the bench key `key`); `runs` (no gain: the runs might as well run one after another) where
    nothing usable was measured."""
    if runs <= 1:
        return 1.0
    record = measurement(bench, model, runs, mps, key)
    return record_slowdown(record) if record is not None else float(runs)


def record_slowdown(record: dict) -> float:
    """A concurrency measurement's slowdown as estimates use it: at least 1 (below would be noise)."""
    return max(1.0, float(record["slowdown"]))


def seconds_at_once(items: Iterable[tuple[float, float]], runs: int) -> float:
    """The seconds of (seconds alone, slowdown at `runs` at once) items with perfectly balanced lanes: an item
    that gains at once (slowdown < runs) counts seconds x slowdown / runs, any other its seconds (it trains alone)."""
    return sum(s * f / runs if f < runs else s for s, f in items)


def lanes_estimate(bench, seeds: int = 1, runs: int = 1, mps: bool | None = None) -> dict:
    """The full study's time with `runs` lanes, split as lib.plan.plan_study splits it: the training runs (Part 1
    x seeds, the BN protocol but its lr-1e-3 pair) of models with a measured gain at their slowdown, spread
    evenly over the lanes; the runs of the other models, the pair and the probes alone. Like study_estimate,
    without the plan's margin and process start-ups, and with perfectly balanced lanes: a lower bound of what
    the plan fits. {'total_minutes', 'per_seed_minutes', 'runs', 'mps', 'laned': models that train in lanes,
    'alone': models without a measured gain, 'unmeasured': those of them not measured at `runs` at once,
    'missing': not timed alone}."""
    from lib.bench import load_bench, study_estimate
    from lib.experiments import BN_LRS

    bench = load_bench(bench)  # read once for all the models' slowdowns
    est = study_estimate(bench, seeds)
    lanes_s = {**est["part1"], **{m: s * (len(BN_LRS) - 1) / len(BN_LRS) for m, s in est["bn"].items()}}
    alone_s = sum(s / len(BN_LRS) for s in est["bn"].values()) + sum(est["probe"].values())  # the pair, probes
    factor = {m: slowdown(bench, m, runs, mps) for m in lanes_s}
    laned = [m for m in lanes_s if factor[m] < runs]
    total = seconds_at_once(((lanes_s[m], factor[m]) for m in lanes_s), runs) + alone_s
    return {"total_minutes": total / 60, "per_seed_minutes": total / 60 / max(seeds, 1), "runs": runs,
            "mps": mps_on() if mps is None else mps, "laned": laned,
            "alone": [m for m in lanes_s if m not in laned],
            "unmeasured": [m for m in lanes_s if m not in laned and measurement(bench, m, runs, mps) is None],
            "missing": est["missing"]}


def measured_states(bench, runs: int) -> list[bool]:
    """The MPS states (False: time-sliced, True: MPS) of the bench file's measurements at `runs` at once."""
    return sorted({r["mps"] for r in concurrency_records(bench).values() if r.get("runs") == runs})


def format_lanes_estimate(bench, seeds: int = 1, runs: int = 1, mps: bool | None = None) -> str:
    """lanes_estimate as one line (for `python -m lib bench --estimate --lanes N`), the models compiled as the GPU
    runner compiles them with `runs` lanes (lib.bench.as_runner_compiles: the variants measured at once)."""
    from lib.bench import as_runner_compiles, load_bench

    bench = load_bench(bench)
    with as_runner_compiles(bench, runs, mps) as chosen:
        e = lanes_estimate(bench, seeds, runs, mps)
    how = "under MPS" if e["mps"] else "time-sliced (no MPS)"
    line = (f"with {runs} runs at once, {how}: at least {e['total_minutes']:.1f} min for {seeds} seed(s), "
            f"{e['per_seed_minutes']:.1f} min per seed")
    if chosen:
        line += f"; torch.compile'd as the GPU runner chooses for {runs} at once: {', '.join(chosen)}"
    if measured := [m for m in e["alone"] if m not in e["unmeasured"]]:
        line += f"; trained alone (no measured gain at {runs} at once): {', '.join(measured)}"
    if e["unmeasured"]:
        line += f"; trained alone (not measured at {runs} at once): {', '.join(e['unmeasured'])}"
    if e["missing"]:
        line += f"; INCOMPLETE, not measured alone: {', '.join(e['missing'])}"
    return line


def concurrency_lines(bench) -> list[str]:
    """One sentence per concurrency measurement in a bench file (path or dict), then the study's estimate (one
    seed) for each number of runs at once and MPS state measured."""
    lines, measured = [], set()
    for r in concurrency_records(bench).values():
        if r.get("slowdown") is None:
            continue
        how = "under MPS" if r["mps"] else "time-sliced (no MPS)"
        lines.append(f"{r['key']}, {r['runs']} runs at once {how}: an epoch {r['solo_seconds']:.2f} s alone, "
                     f"{r['max_seconds']:.2f} s for all at once (each {r['mean_seconds']:.2f} s on average; "
                     f"{r['slowdown']:.2f}x as long; all together {r['gain']:.2f}x the images per second of one "
                     f"run; {r['device']}, {r['date'][:10]}).")
        measured.add((r["runs"], r["mps"]))
    return lines + [f"Estimated full study {format_lanes_estimate(bench, 1, runs, mps)}."
                    for runs, mps in sorted(measured)]


# ------------------------------------------------------------------------------------------- measuring it

def _worker(index: int, models: Sequence[str], source, device: str, num_train, num_val, barrier, results,
            timeout_s: float = BARRIER_TIMEOUT_S) -> None:
    """One of the processes of measure_concurrency: per model, set up and warm up, wait for the others, (index 0:
    time an epoch alone while the others wait,) then time an epoch with all of them and wait until all are done,
    so that no process sets up or warms up the next model while others are still timed. Puts (index, model,
    dict) on `results`; on an error it breaks the barrier, so that the others stop too."""
    from lib.bench import _release, fast_epoch
    from lib.train import compiled_by_env, resolve_device, step_graph_requested

    def meet(time_epoch) -> float | None:
        barrier.wait(timeout_s)  # all warmed up
        solo = time_epoch() if index == 0 else None  # the others wait, launching nothing
        barrier.wait(timeout_s)  # then fast_epoch's timed epoch, all at once
        return solo

    for model in models:
        try:  # after the timed epoch all wait until the last is done: nothing else runs beside the timed epochs
            r = fast_epoch(model, source, device, num_train=num_train, num_val=num_val,
                           compile=compiled_by_env(model), step_graph=step_graph_requested(model),
                           before_timed=meet, after_timed=lambda: barrier.wait(timeout_s))
        except Exception as err:  # reported by the parent; the barrier releases the others
            barrier.abort()
            results.put((index, model, {"error": f"{type(err).__name__}: {err}"}))
            return
        results.put((index, model, {"solo": r["before_timed"], "at_once": r["seconds"], **{k: r[k] for k in (
            "num_train", "batch_size", "cuda_graphs", "compiled", "compile_mode", "canet_merged", "step_graph",
            "data")}}))
        _release(resolve_device(device))


def _collect(procs, results, expected: int):
    """(index, model, dict) items from the workers until `expected` came or every worker ended. A worker that
    ended without finishing (killed: out of memory, a crash) ends the others too: they could wait for it at the
    barrier for good (aborting the barrier is no way out: a multiprocessing barrier's abort waits for every
    process that sleeps in it to wake, and a killed one never does)."""
    while expected > 0:
        try:
            yield results.get(timeout=1.0)
            expected -= 1
        except _queue.Empty:
            if any(p.exitcode not in (None, 0) for p in procs):
                for p in procs:
                    if p.is_alive():
                        p.terminate()
                    p.join(timeout=5)
            if not any(p.is_alive() for p in procs):
                while True:  # what the last ones put before they ended
                    try:
                        yield results.get(timeout=0.5)
                    except _queue.Empty:
                        return


def measure_concurrency(models: Sequence[str], runs: int, data_source: str | None = None, device: str = "auto",
                        out_path: Path | str | None = None, *, num_train: int | None = None,
                        num_val: int | None = None, missing_only: bool = False, progress: bool = True,
                        barrier_timeout_s: float = BARRIER_TIMEOUT_S) -> dict:
    """Time each model's `full`-recipe epoch alone and with `runs` processes at once (module docstring); merge
    each measurement into the bench file's 'concurrency' as soon as it is complete. missing_only skips models
    with a usable measurement at this `runs` and MPS state. Returns the file's content.

    The slowdown is the slowest process's epoch over the solo one: runs at once are done when the last is (the
    mean of the processes' epochs is recorded too)."""
    from lib.bench import _merge_write, bench_path, key_in_use
    from lib.data import canonical_source, load_cifar10
    from lib.models import revision
    from lib.results import device_name, read_json
    from lib.train import resolve_device

    if runs < 2:
        raise ValueError(f"a concurrency measurement needs at least 2 runs at once (--lanes 2 or more), got {runs}")
    dev = resolve_device(device)
    path = Path(out_path) if out_path is not None else bench_path(dev)
    source = canonical_source(data_source)
    mps = mps_on()
    known = read_json(path) if path.exists() else None
    todo = [m for m in dict.fromkeys(models)
            if not (missing_only and known is not None and measurement(known, m, runs, mps) is not None)]
    if not todo:
        return known
    data = _merge_write(path, dev)  # before the processes start: a file of another device is an error now
    load_cifar10(source)  # decoded once into the cache here, not by every process at once
    ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children
    barrier, results = ctx.Barrier(runs), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(i, todo, source, str(dev), num_train, num_val, barrier, results,
                                                barrier_timeout_s), daemon=True) for i in range(runs)]
    for p in procs:
        p.start()
    got: dict[str, dict[int, dict]] = {m: {} for m in todo}
    errors = []
    try:
        for index, model, r in _collect(procs, results, runs * len(todo)):
            if "error" in r:
                errors.append(f"process {index}, {model}: {r['error']}")
                continue
            got[model][index] = r
            if len(got[model]) < runs:
                continue
            each = [got[model][i]["at_once"] for i in range(runs)]
            solo, first = got[model][0]["solo"], got[model][0]
            key = key_in_use(model)
            record = {"key": key, "model": model, "runs": runs, "mps": mps, "seconds": each,
                      "mean_seconds": statistics.fmean(each), "max_seconds": max(each), "solo_seconds": solo,
                      "slowdown": max(each) / solo, "gain": runs * solo / max(each),
                      "batch_size": first["batch_size"], "num_train": first["num_train"], "data": first["data"],
                      "cuda_graphs": first["cuda_graphs"], "compiled": first["compiled"],
                      "model_revision": revision(model), "device": device_name(dev), "torch": torch.__version__,
                      "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                      **({"compile_mode": first["compile_mode"]} if first["compiled"] else {}),
                      **({"step_graph": first["step_graph"]} if "+step-graph" in key else {}),
                      **({"canet_merged": first["canet_merged"]} if first.get("canet_merged") is not None else {})}
            data = _merge_write(path, dev, sections={"concurrency": {concurrency_key(key, runs, mps): record}})
            if progress:
                print(f"[bench] {concurrency_lines({'concurrency': {key: record}})[0]}", flush=True)
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
    missing = [m for m in todo if len(got[m]) < runs]
    if missing:
        raise RuntimeError(f"the concurrency measurement of {', '.join(missing)} did not complete: "
                           f"{'; '.join(errors) or 'a process ended without a word (killed? out of memory?)'}")
    return data
