"""Several runs at once on one GPU (lib.lanes): the slowdowns the plan reads, the plan's lanes, the measurement
(on a CPU: two processes that wait for each other), what a result and the report record."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch

import lib.bench as B
import lib.plan as P
import lib.lanes as L
import lib.train as T
from lib.cli import main
from lib.data import resolve_source
from lib.experiments import part1_config
from lib.models import PART1_MODELS, revision
from lib.paths import output_dirs
from lib.results import atomic_write_json, read_json
from conftest import bench_with_compiled_variants, fake_bench, fake_entry, script_copy, write_finished


@pytest.fixture(autouse=True)
def alone(monkeypatch):
    """No lanes or MPS from the environment the tests run in."""
    monkeypatch.delenv(L.LANES_ENV, raising=False)
    monkeypatch.delenv(L.MPS_ENV, raising=False)
    monkeypatch.delenv("CIFAR10_COMPILE", raising=False)


def record(model: str, runs: int, slowdown: float, mps: bool = True, **extra) -> dict:
    """A concurrency measurement with a chosen slowdown (fabricated: these tests check the arithmetic)."""
    return {"key": model, "model": model, "runs": runs, "mps": mps, "seconds": [slowdown] * runs,
            "mean_seconds": slowdown, "max_seconds": slowdown, "solo_seconds": 1.0, "slowdown": slowdown,
            "gain": runs / slowdown,
            "cuda_graphs": True, "compiled": False, "model_revision": revision(model), "device": "NVIDIA H200",
            "date": "2026-11-27T12:00:00+00:00", **extra}


def with_records(bench: dict, *records: dict) -> dict:
    """`bench` with these measurements in its 'concurrency' section."""
    return dict(bench, concurrency={L.concurrency_key(r["key"], r["runs"], r["mps"]): r for r in records})


def test_shared_gpu_is_what_the_runner_says(monkeypatch):
    assert L.shared_gpu() is None
    monkeypatch.setenv(L.LANES_ENV, "1")
    assert L.shared_gpu() is None
    monkeypatch.setenv(L.LANES_ENV, "3")
    assert L.shared_gpu() == {"lanes": 3, "mps": False}
    monkeypatch.setenv(L.MPS_ENV, "1")
    assert L.shared_gpu() == {"lanes": 3, "mps": True}
    monkeypatch.setenv(L.LANES_ENV, "three")
    with pytest.raises(ValueError, match="CIFAR10_LANES must be a whole number"):
        L.shared_gpu()


def test_slowdown_is_the_measured_one_else_no_gain(monkeypatch):
    bench = with_records(fake_bench(), record("CANet_tiny", 3, 1.4), record("ResNet18", 3, 2.5, mps=False),
                         dict(record("VGG11", 3, 1.1), model_revision=revision("VGG11") - 1))
    bench["device_slug"] = "nvidia-h200"
    assert L.slowdown(bench, "CANet_tiny", 1) == 1.0  # alone
    assert L.slowdown(bench, "CANet_tiny", 3) == 3.0  # measured under MPS, but MPS is not on now
    assert L.slowdown(bench, "ResNet18", 3) == 2.5
    monkeypatch.setenv(L.MPS_ENV, "1")
    assert L.slowdown(bench, "CANet_tiny", 3) == 1.4
    assert L.slowdown(bench, "CANet_tiny", 2) == 2.0  # measured at another number of runs
    assert L.slowdown(bench, "ResNet18", 3) == 3.0  # measured time-sliced only
    assert L.slowdown(bench, "VGG11", 3) == 3.0  # measured with an older implementation of the model
    monkeypatch.setenv("CIFAR10_EAGER_MODELS", "CANet_tiny")  # its step would run uncaptured now: not as measured
    assert L.slowdown(bench, "CANet_tiny", 3) == 3.0
    faster = with_records(fake_bench(), record("ResNet18", 3, 0.8))  # below 1 at once: noise
    monkeypatch.delenv("CIFAR10_EAGER_MODELS")
    assert L.slowdown(faster, "ResNet18", 3) == 1.0


def test_lanes_estimate_spreads_the_training_over_the_lanes():
    bench = fake_bench()
    one = B.study_estimate(bench, seeds=3)
    train_s = sum(one["part1"].values()) + sum(one["bn"].values())
    probe_s = sum(one["probe"].values())
    # Unmeasured: every run alone, the same minutes as without lanes.
    est = L.lanes_estimate(bench, seeds=3, runs=3, mps=True)
    assert est["total_minutes"] == pytest.approx(one["total_minutes"])
    assert est["laned"] == [] and set(est["alone"]) == set(PART1_MODELS) | {"VGG_A", "VGG_A_BN"} == set(
        est["unmeasured"])
    assert "no measured gain" not in L.format_lanes_estimate(bench, seeds=3, runs=3, mps=True)
    # Every model but VGG11 measured at 1.5x as long with 3 at once: half its training time; VGG11 measured at
    # 4x (slower together than one after another): alone.
    bench = with_records(bench, *(record(m, 3, 4.0 if m == "VGG11" else 1.5)
                                  for m in PART1_MODELS + ("VGG_A", "VGG_A_BN")))
    bench["device_slug"] = "nvidia-h200"
    vgg11, pair = one["part1"]["VGG11"], sum(one["bn"].values()) / len(B.BN_LRS)  # the lr-1e-3 pair: alone
    est = L.lanes_estimate(bench, seeds=3, runs=3, mps=True)
    assert est["total_minutes"] * 60 == pytest.approx((train_s - vgg11 - pair) * 1.5 / 3 + vgg11 + pair + probe_s)
    assert est["per_seed_minutes"] == pytest.approx(est["total_minutes"] / 3) and est["alone"] == ["VGG11"]
    assert est["unmeasured"] == []
    line = L.format_lanes_estimate(bench, seeds=3, runs=3, mps=True)
    assert line.startswith(f"with 3 runs at once, under MPS: at least {est['total_minutes']:.1f} min for 3 seed(s)")
    assert L.measured_states(bench, 3) == [True] and L.measured_states(bench, 2) == []
    assert line.endswith("trained alone (no measured gain at 3 at once): VGG11")


def test_lanes_estimate_looks_up_the_variant_the_runner_compiles(monkeypatch):
    # The runner trains CANet torch.compile'd (its compiled run is faster): the estimate line must read the compiled
    # variant's measurement at once, as the study estimate reads its epoch, also where CIFAR10_COMPILE is unset.
    monkeypatch.setenv("CIFAR10_COMPILE_MODE", "default")  # the fabricated compiled entries are mode 'default'
    bench = bench_with_compiled_variants()
    bench = with_records(bench, dict(record("CANet", 3, 1.5), key="CANet+compile", compiled=True, cuda_graphs=False))
    assert B.compile_choice(bench) == ["CANet"]
    line = L.format_lanes_estimate(bench, seeds=3, runs=3, mps=True)
    assert "CANet," not in line.split("trained alone")[1] and "CIFAR10_COMPILE" not in os.environ
    with B.as_runner_compiles(bench):
        est = L.lanes_estimate(bench, seeds=3, runs=3, mps=True)
    assert est["laned"] == ["CANet"]
    monkeypatch.setenv("CIFAR10_COMPILE", "")  # set: trained CUDA-graphed, measured alone only
    assert L.format_lanes_estimate(bench, seeds=3, runs=3, mps=True).endswith(
        "trained alone (not measured at 3 at once): " + ", ".join(PART1_MODELS + ("VGG_A", "VGG_A_BN")))


def test_compile_choice_with_lanes_counts_the_variants_measured_at_once(tiny_source, tmp_path, monkeypatch):
    """ResNet18's compiled run is slower alone (111.1 s against 79.5 s), but only it was measured three at once
    (x1.2): in three lanes it takes 111.1 x 1.2 / 3 = 44.4 s of the GPU against 79.5 s alone for the CUDA-graphed
    one, so the choice for lanes compiles it; once the graphed step is measured at once too, it wins again."""
    monkeypatch.setenv("CIFAR10_COMPILE_MODE", "default")  # the fabricated compiled entries are mode 'default'
    compiled_at_once = dict(record("ResNet18", 3, 1.2), key="ResNet18+compile", compiled=True, cuda_graphs=False)
    bench = with_records(bench_with_compiled_variants(), compiled_at_once)
    assert B.compile_choice(bench) == ["CANet"]  # alone: as before
    assert B.compile_choice(bench, lanes=3, mps=True) == ["CANet", "ResNet18"]
    assert B.compile_choice(bench, lanes=3, mps=False) == ["CANet"]  # measured under MPS only
    both = with_records(bench_with_compiled_variants(), compiled_at_once, record("ResNet18", 3, 1.2))
    assert B.compile_choice(both, lanes=3, mps=True) == ["CANet"]
    # lib status: one after another as the runner compiles alone, at once as it compiles with lanes.
    source = resolve_source(tiny_source)
    dirs = output_dirs("full", root=tmp_path)
    est = P.remaining_estimate(dict(bench, device_slug="nvidia-h200"), source, dirs, lanes=3)
    alone = P.remaining_estimate(dict(bench_with_compiled_variants(), device_slug="nvidia-h200"), source, dirs)
    assert est["seconds"] == pytest.approx(alone["seconds"]) and est["mps"] is True
    resnet18 = 111.1  # a compiled run, 3 at once x1.2 / 3, in place of the graphed 79.5 s alone
    assert est["lanes_seconds"] == pytest.approx(alone["seconds"] - 79.5 + resnet18 * 1.2 / 3)
    assert "CIFAR10_COMPILE" not in os.environ


def test_plan_spreads_training_runs_over_lanes_by_their_slowdowns(tiny_source, tmp_path, monkeypatch):
    source = resolve_source(tiny_source)
    dirs = output_dirs("full", root=tmp_path)
    write_finished(dirs, part1_config("CANet_tiny", "full", source))
    monkeypatch.setenv(L.MPS_ENV, "1")
    bench = with_records(fake_bench(), *(record(m, 2, 1.25) for m in PART1_MODELS))
    bench["device_slug"] = "nvidia-h200"
    # A Part 1 run: 79.5 s alone, x 1.25 beside another, x 1.2 margin = 119.25 s; +20 s for each lane's process.
    plan = P.plan_study(["part1"], source, budget_s=300, bench=bench, dirs=dirs, lanes=2)
    # The runs that did not fit, each 119.25 s in a lane, are spare runs for a lane that ends before the longest
    # planned (258.5 s after the lanes start).
    assert plan["lines"] == ["lane p1-CANet_light-s0 p1-CANet_pro-s0", "lane p1-CANet-s0 p1-ShuffleNetV2-s0",
                             "spare 258 p1-MobileNetV2-s0:119 p1-ResNet18-s0:119 p1-ResNet34-s0:119 "
                             "p1-VGG11-s0:119", "costs CANet_tiny CANet_light"]  # 36 s of the 41.5 s left
    assert plan["seconds"] == pytest.approx(20 + 2 * 119.25 + 20 + 2 * 8) and plan["lanes_end_s"] == pytest.approx(
        20 + 2 * 119.25)
    assert plan["slowdowns"]["CANet"] == 1.25
    text = P.format_plan(plan)
    assert "# lanes: up to 2 training processes at once, under MPS" in text and "CANet_light x1.25," in text
    assert ("# spare: a lane whose runs end early takes the first of these that fits before the longest lane ends "
            "(258 s after they start); their estimates in a lane (x slowdown x margin): p1-MobileNetV2-s0 119 s, ")\
        in text
    assert "# skipped p1-MobileNetV2-s0" in text  # still: a spare run may not be taken
    # One run at a time, the same budget takes two runs (20 + 2 x 95.4 s) and eight cost files (20 + 8 x 8 s).
    alone = P.plan_study(["part1"], source, budget_s=300, bench=bench, dirs=dirs)
    assert alone["lines"] == ["train p1-CANet_light-s0 p1-CANet-s0",
                              "costs CANet_tiny CANet_light CANet CANet_pro ShuffleNetV2 MobileNetV2 ResNet18 ResNet34"]
    # Not measured, or slower together than one after another: the runs train alone, as without lanes.
    slower = with_records(fake_bench(), *(record(m, 2, 2.5) for m in PART1_MODELS))
    for other in (fake_bench(), dict(slower, device_slug="nvidia-h200")):
        plan = P.plan_study(["part1"], source, budget_s=300, bench=other, dirs=dirs, lanes=2)
        assert (plan["lines"], plan["seconds"], plan["slowdowns"]) == (alone["lines"], alone["seconds"], {})
    # Some measured: those in lanes first, the others alone after them.
    mixed = with_records(fake_bench(), record("CANet", 2, 1.25), record("ShuffleNetV2", 2, 1.25))
    plan = P.plan_study(["part1"], source, budget_s=400, bench=dict(mixed, device_slug="nvidia-h200"), dirs=dirs,
                        lanes=2)
    # lanes: 20 + 119.25 each; then CANet_light and CANet_pro alone: 20 + 2 x 95.4; MobileNetV2's 95.4 more
    # would pass 400; three cost files (20 + 3 x 8 s) fit.
    assert plan["lines"] == ["lane p1-CANet-s0", "lane p1-ShuffleNetV2-s0",
                             "train p1-CANet_light-s0 p1-CANet_pro-s0", "costs CANet_tiny CANet_light CANet"]
    assert plan["seconds"] == pytest.approx(139.25 + 20 + 2 * 95.4 + 20 + 3 * 8)


def two_models_gain(tiny_source, tmp_path, monkeypatch):
    """(source, dirs, bench) for the planning order: CANet_tiny-s0 done, every Part 1 run 79.5 s alone (fake_bench),
    ResNet18 and ResNet34 measured 1.25x as long two at once under MPS (on now)."""
    source = resolve_source(tiny_source)
    dirs = output_dirs("full", root=tmp_path)
    write_finished(dirs, part1_config("CANet_tiny", "full", source))
    monkeypatch.setenv(L.MPS_ENV, "1")
    bench = dict(with_records(fake_bench(), record("ResNet18", 2, 1.25), record("ResNet34", 2, 1.25)),
                 device_slug="nvidia-h200")
    return source, dirs, bench


def test_the_plan_fits_the_runs_that_gain_first_when_that_covers_more(tiny_source, tmp_path, monkeypatch):
    source, dirs, bench = two_models_gain(tiny_source, tmp_path, monkeypatch)
    # In study order CANet_light (no gain) trains alone first (20 + 95.4 s), and no lane (20 + 119.25 s) fits
    # beside it in 200 s: 79.5 s of runs. The two that gain, first: a lane each, 159 s of runs.
    plan = P.plan_study(["part1"], source, budget_s=200, bench=bench, dirs=dirs, lanes=2)
    # The cost files fill what is left after the lanes: 20 s for the process, 8 s each (their 60 s allowance / 9 x
    # 1.2): five of them here, eight in study order (beside CANet_light alone).
    assert plan["lines"] == ["lane p1-ResNet18-s0", "lane p1-ResNet34-s0",
                             "costs CANet_tiny CANet_light CANet CANet_pro ShuffleNetV2"]
    assert plan["order"] == "gain-first"
    assert P.covered_seconds(plan) == pytest.approx(159.0 + 5 * 60 / 9)
    assert plan["study_order_seconds"] == pytest.approx(79.5 + 8 * 60 / 9)
    assert "# order: gain-first (a run resumable here, then per seed block the runs that gain at 2 at once), 192 s " \
           "of single-run estimates (192 s of them the first seed's block) against 133 s (133 s) in study order" \
           in P.format_plan(plan)
    # With room for everything, study order covers as much: kept.
    plan = P.plan_study(["part1"], source, budget_s=1000, bench=bench, dirs=dirs, lanes=2)
    assert plan["order"] == "study" and "# order" not in P.format_plan(plan) and len(plan["taken"]) == 8 + 9  # + costs


def test_in_the_gain_first_order_a_run_that_gains_waits_for_a_lane_unless_it_is_resumable():
    job = P.Job("train", ("p1-ResNet18-s0",), 79.5, False, model="ResNet18")
    factors = {"ResNet18": 1.9}  # in a lane 20 + 79.5 x 1.9 x 1.2 = 201 s > 170; alone 20 + 95.4 s fits
    alone = P._fit_jobs([job], factors, 170, 1.2, 2, partial=False)
    assert alone["lines"] == ["train p1-ResNet18-s0"]
    waits = P._fit_jobs([job], factors, 170, 1.2, 2, partial=False, gainers_alone=False)
    assert waits["lines"] == [] and "in a lane > 170 s left" in waits["skipped"][0][1]
    resumable = job._replace(epochs_done=20)  # its epochs in a checkpoint here: taken alone rather than lost
    assert P._fit_jobs([resumable], factors, 170, 1.2, 2, partial=False, gainers_alone=False)["lines"] == [
        "train p1-ResNet18-s0"]


def test_spare_runs_are_the_left_out_runs_that_gain_and_fit_the_longest_lane():
    def job(model, seed, seconds=50.0, **kw):
        return P.Job("train", (f"p1-{model}-s{seed}",), seconds, False, model=model, **kw)

    factors = {"ResNet18": 1.25, "ResNet34": 1.25, "VGG11": 2.0}
    # Lanes of 20 + 75 s each in 100 s; left out: ResNet18-s1 (75 s in a lane: spare), ResNet34-s1 (150 s in a
    # lane: longer than the lanes), VGG11 (no gain at 2 at once: alone), an unmeasured run, the costs.
    jobs = [job("ResNet18", 0), job("ResNet34", 0), job("ResNet18", 1), job("ResNet34", 1, 100.0), job("VGG11", 0),
            job("ResNet18", 2, None), P.Job("costs", ("cost-ResNet18",), 60.0, False)]
    plan = P._fit_jobs(jobs, factors, 100, 1.2, 2, partial=False)
    assert plan["lines"] == ["lane p1-ResNet18-s0", "lane p1-ResNet34-s0", "spare 95 p1-ResNet18-s1:75"]
    assert [(j.names[0], s) for j, s in plan["spare"]] == [("p1-ResNet18-s1", pytest.approx(75.0))]
    # One lane trains alone: no spare runs (ResNet18-s1, 90 s in a lane, would fit the 95 s of the first).
    plan = P._fit_jobs([job("ResNet18", 0), job("ResNet18", 1, 60.0)], factors, 100, 1.2, 2, partial=False)
    assert plan["lines"] == ["lane p1-ResNet18-s0"] and plan["spare"] == []
    # Nor without lanes, or in a partial plan.
    assert P._fit_jobs(jobs, {m: 1.0 for m in factors}, 100, 1.2, 1, partial=False)["spare"] == []
    long = P._fit_jobs([job("ResNet18", 0, 500.0)], factors, 100, 1.2, 2, partial=True)
    assert long["partial"] is not None and long["spare"] == [] and "spare" not in P.format_plan(long)


def test_lanes_take_spare_runs_that_fit_each_once(tmp_path):
    queue = tmp_path / "spare.txt"
    queue.write_text("p1-ResNet18-s1:75\np1-ResNet34-s1:150\np1-VGG11-s1:30\n")
    # 100 s before the lanes' planned end: the first that fits, in the plan's order, and gone from the queue.
    assert L.claim_spare(queue, deadline=1100.0, now=1000.0) == ("p1-ResNet18-s1", 75.0)
    assert queue.read_text() == "p1-ResNet34-s1:150\np1-VGG11-s1:30\n"
    assert L.claim_spare(queue, deadline=1100.0, now=1060.0) == ("p1-VGG11-s1", 30.0)
    assert L.claim_spare(queue, deadline=1100.0, now=1000.0) is None  # 150 s would end too late
    assert queue.read_text() == "p1-ResNet34-s1:150\n"
    assert L.claim_spare(tmp_path / "gone.txt", deadline=1e12) is None
    queue.write_text("p1-ResNet18-s1 75\n")
    with pytest.raises(ValueError, match="'p1-ResNet18-s1 75' is not NAME:SECONDS"):
        L.claim_spare(queue, deadline=1e12)
    queue.write_text(":75\n")
    with pytest.raises(ValueError, match="':75' is not NAME:SECONDS"):
        L.claim_spare(queue, deadline=1e12)


def _claim_all(path: str, results, barrier) -> None:
    """A lane: take spare runs until none is left, starting with the others (for the test below)."""
    import time

    barrier.wait(timeout=120)  # after the imports: all claim at once
    while (taken := L.claim_spare(path, deadline=time.time() + 3600)) is not None:
        results.put(taken[0])


def test_lanes_that_take_spare_runs_at_the_same_time_never_take_the_same_one(tmp_path):
    import multiprocessing as mp

    queue = tmp_path / "spare.txt"
    names = [f"p1-CANet_tiny-s{i}" for i in range(400)]
    queue.write_text("".join(f"{n}:1\n" for n in names))
    ctx = mp.get_context("spawn")
    results, barrier = ctx.Queue(), ctx.Barrier(4)
    procs = [ctx.Process(target=_claim_all, args=(str(queue), results, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    taken = [results.get(timeout=60) for _ in names]
    for p in procs:
        p.join(timeout=60)
    assert sorted(taken) == sorted(names) and queue.read_text() == ""


def test_a_lane_trains_the_spare_runs_after_its_own_while_they_fit(tiny_source, tmp_path, monkeypatch, capsys):
    import time

    import lib.train as T

    trained = []
    monkeypatch.setattr(T, "train", lambda cfg, **kw: trained.append(cfg.name) or {"status": "ok", "test_acc": 0.5})
    queue = tmp_path / "spare.txt"
    queue.write_text("p1-ResNet18-s0:30\np1-CANet-s1:5000\nno-such-run:1\np1-CANet_tiny-s1:20\n")
    args = ["run", "--profile", "smoke", "--data", str(tiny_source), "--seeds", "0", "1", "--quiet",
            "--only", "p1-CANet-s0", "--spare", str(queue), "--spare-by", str(time.time() + 600)]
    assert main(args) == 0
    assert trained == ["p1-CANet-s0", "p1-ResNet18-s0", "p1-CANet_tiny-s1"]
    out = capsys.readouterr().out
    assert "spare run p1-ResNet18-s0: estimated 30 s" in out and "no-such-run is no experiment" in out
    assert "spare runs: none left that would end by the plan's end of the lanes" in out
    assert "3 training run(s) (reused ones included) in" in out and queue.read_text() == "p1-CANet-s1:5000\n"
    # Its own runs stopped by the time limit: no spare run either.
    monkeypatch.setattr(T, "train", lambda cfg, **kw: trained.append(cfg.name)
                        or {"status": "incomplete", "epochs_done": 2, "stopped_by": "time_limit"})
    trained.clear()
    queue.write_text("p1-ResNet18-s0:30\n")
    assert main(args + ["--time-limit", "100"]) == 0
    assert trained == ["p1-CANet-s0"] and queue.read_text() == "p1-ResNet18-s0:30\n"
    # A queue it cannot read ends the spare runs, not the lane.
    monkeypatch.setattr(T, "train", lambda cfg, **kw: trained.append(cfg.name) or {"status": "ok"})
    queue.write_text("garbage\n")
    assert main(args) == 0
    assert "spare runs: stopped, the queue cannot be read" in capsys.readouterr().out
    assert main(args[:-2]) == 2  # --spare without --spare-by
    assert "--spare and --spare-by go together" in capsys.readouterr().err


def test_a_run_joins_the_lane_that_holds_its_model_where_it_fits():
    def job(model, seed):
        return P.Job("train", (f"p1-{model}-s{seed}",), 50.0, False, model=model)

    jobs = [job("ResNet18", 0), job("ResNet34", 0), job("ResNet34", 1), job("ResNet18", 1)]
    factors = {"ResNet18": 1.25, "ResNet34": 1.25}
    # By load alone, ResNet34-s1 would take the first lane (a tie) and ResNet18-s1 the second: each model's runs
    # in two processes, which compile and autotune it twice.
    plan = P._fit_jobs(jobs, factors, 400, 1.2, 2, partial=False)
    assert plan["lines"] == ["lane p1-ResNet18-s0 p1-ResNet18-s1", "lane p1-ResNet34-s0 p1-ResNet34-s1"]
    # Where its model's lane has no room, the least loaded one: 20 + 3 x 75 s = 245 s would pass 240.
    plan = P._fit_jobs([job("ResNet18", 0), job("ResNet34", 0), job("ResNet18", 1), job("ResNet18", 2)], factors,
                       240, 1.2, 2, partial=False)
    assert plan["lines"] == ["lane p1-ResNet18-s0 p1-ResNet18-s1", "lane p1-ResNet34-s0 p1-ResNet18-s2"]
    assert plan["seconds"] == pytest.approx(170.0)
    # Nor where it would make the plan longer: ResNet18-s1 beside ResNet18-s0 (20 + 2 x 150 s) would leave the
    # run after the lanes (VGG11 alone, 20 + 72 s) 80 s; beside ResNet34-s0 (20 + 30 + 150 s) it leaves 200 s.
    jobs = [job("ResNet18", 0)._replace(seconds=100.0), job("ResNet34", 0)._replace(seconds=25.0),
            job("ResNet18", 1)._replace(seconds=100.0), job("VGG11", 0)._replace(seconds=60.0)]
    plan = P._fit_jobs(jobs, dict(factors, VGG11=2.0), 400, 1.2, 2, partial=False)
    assert plan["lines"] == ["lane p1-ResNet18-s0", "lane p1-ResNet34-s0 p1-ResNet18-s1", "train p1-VGG11-s0"]


def test_the_gain_first_order_keeps_a_resumable_run_and_the_first_seed_first(tiny_source, tmp_path, monkeypatch):
    source, dirs, bench = two_models_gain(tiny_source, tmp_path, monkeypatch)
    # VGG11-s0 stopped after 40 of 70 epochs on this machine: 2 + 30 x 1.1 = 35 s left, 62 s planned alone.
    cfg = part1_config("VGG11", "full", source)
    Path(dirs.checkpoints).mkdir(parents=True, exist_ok=True)
    torch.save({"config": cfg.to_dict(), "epoch": 39}, Path(dirs.checkpoints) / f"{cfg.name}.last.pt")
    # In 180 s, two lanes (139.25 s) would cover 159 s of runs but leave no room for VGG11's last epochs; with the
    # resumable run first, the lanes do not fit: the plan keeps VGG11 (in study order, beside CANet_light alone).
    plan = P.plan_study(["part1"], source, budget_s=180, bench=bench, dirs=dirs, seeds=[0, 1], lanes=2)
    assert "p1-VGG11-s0" in " ".join(plan["lines"]) and "# p1-VGG11-s0 resumes after epoch 40" in P.format_plan(plan)
    # Seed 1's runs that gain come after seed 0's others: with 400 s, CANet_light-s0 and CANet-s0 train alone
    # beside seed 0's two lanes, not the lanes of seed 1.
    (Path(dirs.checkpoints) / f"{cfg.name}.last.pt").unlink()
    plan = P.plan_study(["part1"], source, budget_s=400, bench=bench, dirs=dirs, seeds=[0, 1], lanes=2)
    assert plan["order"] == "gain-first", P.format_plan(plan)
    assert plan["lines"] == ["lane p1-ResNet18-s0", "lane p1-ResNet34-s0",
                             "spare 139 p1-ResNet18-s1:119 p1-ResNet34-s1:119", "train p1-CANet_light-s0 p1-CANet-s0",
                             "costs CANet_tiny CANet_light CANet"]
    # A run whose checkpoint here cannot be read is no spare run either (a lane would stop at it).
    (Path(dirs.checkpoints) / "p1-ResNet34-s1.last.pt").write_bytes(b"not a checkpoint")
    plan = P.plan_study(["part1"], source, budget_s=400, bench=bench, dirs=dirs, seeds=[0, 1], lanes=2)
    assert "spare 139 p1-ResNet18-s1:119" in plan["lines"], P.format_plan(plan)


def test_the_first_seeds_runs_count_before_more_seconds_of_an_extra_seed(tiny_source, tmp_path, monkeypatch):
    source, dirs, bench = two_models_gain(tiny_source, tmp_path, monkeypatch)
    bench = with_records(bench, *bench["concurrency"].values(), record("CANet", 2, 1.9))
    subset = ["p1-CANet-s0", "p1-ResNet18-s1", "p1-ResNet34-s1"]
    # CANet gains, but not in 200 s in a lane (20 + 79.5 x 1.9 x 1.2 = 201 s): alone (115.4 s) in study order, with
    # no room for a lane beside it. In the gain-first order it waits, and seed 1's two lanes cover 159 s of runs.
    plan = P.plan_study(subset, source, budget_s=200, bench=bench, dirs=dirs, seeds=[0, 1], lanes=2)
    assert (plan["order"], plan["lines"]) == ("study", ["train p1-CANet-s0"]), P.format_plan(plan)
    assert P.covered_seconds(plan, [0, 1]) == P.covered_seconds(plan) == pytest.approx(79.5)
    assert "# order: study (the first seed's block first), 80 s of single-run estimates (80 s of them the first " \
           "seed's block) against 159 s (0 s) gain-first" in P.format_plan(plan)
    # Without the first seed's run in the subset, the seconds decide.
    plan = P.plan_study(subset[1:], source, budget_s=200, bench=bench, dirs=dirs, seeds=[0, 1], lanes=2)
    assert plan["lines"] == ["lane p1-ResNet18-s1", "lane p1-ResNet34-s1"]
    assert P.covered_seconds(plan, [0, 1]) == 0.0 and P.covered_seconds(plan) == pytest.approx(159.0)


def test_the_seconds_a_plan_covers_do_not_depend_on_the_order_of_its_jobs():
    # The same jobs in another order: a plain sum differs in the last bit (0.1 + 0.2 + 0.3 != 0.3 + 0.2 + 0.1),
    # which would decide between two plans that train the same first-seed runs.
    jobs = [P.Job("train", (f"p1-ResNet18-s{i}",), s, False, model="ResNet18") for i, s in enumerate((0.1, 0.2, 0.3))]
    plans = [{"taken": order, "partial": None} for order in (jobs, jobs[::-1])]
    assert P.covered_seconds(plans[0]) == P.covered_seconds(plans[1]) == 0.6
    assert P.covered_seconds(plans[0], [0, 1, 2]) == 0.1 and P.covered_seconds(plans[0], [2, 0]) == 0.3
    # A partial plan's run counts what the call can train of it, for the first seed's block only if it is in it.
    partial = {"partial": jobs[1]._replace(seconds=500.0), "budget_s": 360.0, "margin": 1.2}
    assert P.covered_seconds(partial) == P.covered_seconds(partial, [1, 0]) == 300.0
    assert P.covered_seconds(partial, [0, 1]) == 0.0


def test_a_run_longer_than_the_call_gives_way_to_lanes_that_cover_more(tiny_source, tmp_path, monkeypatch):
    from test_bench import fake_entry

    source = resolve_source(tiny_source)
    dirs = output_dirs("full", root=tmp_path)
    for model in ("CANet_tiny", "CANet_light"):
        write_finished(dirs, part1_config(model, "full", source))
    monkeypatch.setenv(L.MPS_ENV, "1")
    fast = ("ResNet18", "ResNet34", "VGG11")
    bench = dict(with_records(fake_bench(), *(record(m, 3, 1.25) for m in fast)), device_slug="nvidia-h200")
    # CANet-s0 (20 + 95.4 s alone) is first in line and longer than a 110-s call: a partial call covers 79.5 s of
    # it. The runs that gain do not fit a lane (20 + 79.5 x 1.25 x 1.2 = 139.25 s): the partial plan stays.
    plan = P.plan_study(["part1"], source, budget_s=110, bench=bench, dirs=dirs, lanes=3)
    assert plan["partial"].names == ("p1-CANet-s0",) and P.covered_seconds(plan) == pytest.approx(79.5)
    # Faster, they do (2 + 1 + 70 x 0.6 = 45 s alone, 20 + 67.5 s in a lane): three lanes cover 135 s.
    for m in fast:
        bench["entries"][m] = fake_entry(model=m, fast=0.5)
    plan = P.plan_study(["part1"], source, budget_s=110, bench=bench, dirs=dirs, lanes=3)
    assert plan["partial"] is None and plan["order"] == "gain-first"
    assert plan["lines"] == ["lane p1-ResNet18-s0", "lane p1-ResNet34-s0", "lane p1-VGG11-s0"]
    assert P.covered_seconds(plan) == pytest.approx(135.0) and plan["study_order_seconds"] == pytest.approx(79.5)


def test_a_run_too_long_for_a_lane_but_not_alone_trains_alone(tiny_source, tmp_path):
    source = resolve_source(tiny_source)
    dirs = output_dirs("full", root=tmp_path)
    bench = dict(with_records(fake_bench(), *(record(m, 2, 1.9, mps=False) for m in PART1_MODELS)),
                 device_slug="nvidia-h200")
    # In a lane 20 + 79.5 x 1.9 x 1.2 = 201 s > 170; alone 20 + 95.4 s fits (as with lanes=1).
    plan = P.plan_study(["part1"], source, budget_s=170, bench=bench, dirs=dirs, lanes=2)
    assert plan["lines"] == ["train p1-CANet_tiny-s0", "costs CANet_tiny CANet_light CANet CANet_pro"]
    assert plan["slowdowns"] == {}
    assert plan["lines"] == P.plan_study(["part1"], source, budget_s=170, bench=bench, dirs=dirs)["lines"]


def test_jobs_beside_the_lanes_run_after_them_one_at_a_time(tiny_source, tmp_path):
    source = resolve_source(tiny_source)
    dirs = output_dirs("full", root=tmp_path)
    for model in PART1_MODELS:
        write_finished(dirs, part1_config(model, "full", source))
    bench = with_records(fake_bench(), record("VGG_A", 3, 2.0, mps=False), record("VGG_A_BN", 3, 2.0, mps=False))
    plan = P.plan_study(["all"], source, budget_s=2000, bench=bench, dirs=dirs, lanes=3)
    lanes = [line for line in plan["lines"] if line.startswith("lane ")]
    assert len(lanes) == 3 and plan["lines"][:3] == lanes  # the lanes first, together
    assert sorted(n for line in lanes for n in line.split()[1:]) == sorted(
        n for j in plan["taken"] if j.kind == "train" for n in j.names)  # six BN runs, each in one lane
    # the lr-1e-3 pair (which the slices need) trains after the lanes, then the slices, probes, costs
    assert plan["lines"][3:] == ["train bn-VGG_A-lr0.001-s2020 bn-VGG_A_BN-lr0.001-s2020", "slices", "probe",
                                 "costs CANet_tiny CANet_light CANet CANet_pro ShuffleNetV2 MobileNetV2 ResNet18 ResNet34 VGG11"]
    with pytest.raises(ValueError, match="lanes must be at least 1"):
        P.plan_study(["all"], source, bench=fake_bench(), dirs=dirs, lanes=0)


def test_a_run_longer_than_a_call_still_gets_a_call_of_its_own_with_lanes(tiny_source, tmp_path):
    source = resolve_source(tiny_source)
    dirs = output_dirs("full", root=tmp_path)
    bench = fake_bench()
    bench["entries"]["CANet_pro"] = dict(bench["entries"]["CANet_pro"], fast_seconds=10.0)
    for model in ("CANet_tiny", "CANet_light", "CANet"):
        write_finished(dirs, part1_config(model, "full", source))
    plan = P.plan_study(["all"], source, budget_s=570, bench=bench, dirs=dirs, lanes=3)
    assert plan["lines"] == ["train p1-CANet_pro-s0"] and plan["partial"] is not None and plan["lanes"] == 1


def test_cli_plans_and_estimates_with_lanes(tiny_source, tmp_path, capsys):
    path = tmp_path / "bench.json"
    atomic_write_json(path, with_records(fake_bench(), record("CANet", 2, 1.5, mps=False),
                                         record("VGG11", 2, 1.5, mps=False)))
    assert main(["bench", "--out", str(path), "--estimate", "--lanes", "2", "--seeds", "0", "1"]) == 0
    out = capsys.readouterr().out
    assert "with 2 runs at once, time-sliced (no MPS)" in out and "for 2 seed(s)" in out
    assert main(["bench", "--out", str(path), "--plan", "p1-CANet-s0", "p1-VGG11-s0", "--budget", "1000",
                 "--lanes", "2", "--data", str(tiny_source)]) == 0
    assert re.findall(r"^lane .*$", capsys.readouterr().out, re.M) == ["lane p1-CANet-s0", "lane p1-VGG11-s0"]
    with pytest.raises(SystemExit):
        main(["bench", "--out", str(path), "--plan", "all", "--lanes", "0"])
    assert "a whole number >= 1, not '0'" in capsys.readouterr().err


def test_a_plan_that_declines_its_lanes_compiles_and_estimates_as_for_one_run_at_a_time(tiny_source, tmp_path,
                                                                                         monkeypatch, capsys):
    """The compile choice the runner trains with (--compile-choice-file) is the lanes' (ResNet18 compiled: it gains
    three at once) where the plan has lanes, and the choice for one run at a time where it declines them."""
    monkeypatch.setenv("CIFAR10_COMPILE_MODE", "default")  # the fabricated compiled entries are mode 'default'
    monkeypatch.setenv(L.MPS_ENV, "1")
    monkeypatch.setenv("CIFAR10_COMPILE", "")  # the CLI sets it for its plan: put back after the test
    compiled_at_once = dict(record("ResNet18", 3, 1.2), key="ResNet18+compile", compiled=True, cuda_graphs=False)
    path, choice = tmp_path / "bench.json", tmp_path / "compile.txt"
    atomic_write_json(path, dict(with_records(bench_with_compiled_variants(), compiled_at_once),
                                 device_slug="nvidia-h200"))
    plan = ["bench", "--out", str(path), "--lanes", "3", "--lanes-startup", "15", "--compile-choice-file",
            str(choice), "--data", str(tiny_source), "--seeds", "0", "1", "--budget", "400", "--plan"]
    # Two ResNet18 runs: two lanes of 20 + 111.1 x 1.2 x 1.2 = 180 s each, in 400 - 15 s.
    assert main(plan + ["p1-ResNet18-s0", "p1-ResNet18-s1"]) == 0
    out = capsys.readouterr().out
    assert re.findall(r"^lane .*$", out, re.M) == ["lane p1-ResNet18-s0", "lane p1-ResNet18-s1"]
    assert choice.read_text() == "CANet ResNet18\n"
    # One run: no lanes; it trains CUDA-graphed, as one run at a time would, planned at 20 + 79.5 x 1.2 = 115.4 s.
    assert main(plan + ["p1-ResNet18-s0"]) == 0
    out = capsys.readouterr().out
    assert "train p1-ResNet18-s0" in out and "estimated 115 s of 400 s" in out
    assert "one run at a time, for the whole budget" in out and choice.read_text() == "CANet\n"


def test_bench_refuses_a_call_that_asks_for_nothing_and_numbers_out_of_range(capsys):
    assert main(["bench"]) == 2
    assert "bench: nothing to do: name what to time or print (e.g. --models" in capsys.readouterr().err
    assert main(["bench", "--table", "--lanes", "2", "--lanes-startup", "15"]) == 2
    assert "--lanes-startup is the lanes' start-up in a plan's budget: it goes with --plan" in capsys.readouterr().err
    for option, value, says in (("--lanes-startup", "-5", ">= 0"), ("--lanes-startup", "nan", ">= 0"),
                                ("--budget", "-5", "> 0"), ("--margin", "0", "> 0")):
        with pytest.raises(SystemExit):
            main(["bench", "--plan", "all", "--lanes", "2", option, value])
        assert f"argument {option}: must be a number {says}, not '{value}'" in capsys.readouterr().err


def test_measure_concurrency_times_each_model_alone_and_at_once(tiny_source, tmp_path):
    path = tmp_path / "bench.json"
    data = L.measure_concurrency(["CANet_tiny"], 2, str(tiny_source), "cpu", path, num_train=16, num_val=8,
                                 progress=False)
    rec = data["concurrency"]["CANet_tiny/x2/time-sliced"]
    assert rec["runs"] == 2 and rec["mps"] is False and len(rec["seconds"]) == 2 and rec["num_train"] == 16
    assert rec["max_seconds"] == max(rec["seconds"]) and rec["mean_seconds"] <= rec["max_seconds"]
    assert rec["solo_seconds"] > 0 and rec["slowdown"] == pytest.approx(rec["max_seconds"] / rec["solo_seconds"])
    assert rec["gain"] == pytest.approx(2 / rec["slowdown"]) and rec["model_revision"] == revision("CANet_tiny")
    assert read_json(path)["concurrency"] == data["concurrency"]
    # the plan's factor now (at least 1: a tiny CPU epoch's solo time can come out longer than at once, noise)
    assert L.slowdown(path, "CANet_tiny", 2) == pytest.approx(max(1.0, rec["slowdown"]))
    assert "CANet_tiny, 2 runs at once time-sliced (no MPS): an epoch" in "\n".join(L.concurrency_lines(path))
    before = path.stat().st_mtime_ns
    L.measure_concurrency(["CANet_tiny"], 2, str(tiny_source), "cpu", path, num_train=16, num_val=8,
                          missing_only=True, progress=False)
    assert path.stat().st_mtime_ns == before  # measured already: nothing started, nothing written
    with pytest.raises(ValueError, match=r"at least 2 runs at once \(--lanes 2 or more\)"):
        L.measure_concurrency(["CANet_tiny"], 1, str(tiny_source), "cpu", path)


def test_a_lane_process_times_the_variant_the_environment_names(monkeypatch):
    import queue

    class Barrier:
        def wait(self, timeout=None):
            pass

    asked = []

    def fake_fast_epoch(model, *a, compile, step_graph, before_timed, after_timed, **kw):
        asked.append((model, compile, step_graph))
        before_timed(lambda: 1.0)
        after_timed()
        return {"before_timed": 1.0, "seconds": 1.5, "num_train": 16, "batch_size": 8, "cuda_graphs": step_graph,
                "compiled": compile, "compile_mode": None, "canet_merged": None, "step_graph": step_graph,
                "data": "tiny"}

    monkeypatch.setattr(B, "fast_epoch", fake_fast_epoch)
    monkeypatch.setenv(T.STEP_GRAPH_ENV, "CANet_tiny")
    monkeypatch.setenv(T.COMPILE_ENV, "CANet_tiny ResNet18")
    results = queue.Queue()
    L._worker(0, ["CANet_tiny", "ResNet18", "VGG11"], None, "cpu", 16, 8, Barrier(), results)
    assert asked == [("CANet_tiny", True, True), ("ResNet18", True, False), ("VGG11", False, False)]
    got = [results.get_nowait() for _ in asked]
    assert [(i, m, r["solo"], r["at_once"], r["step_graph"]) for i, m, r in got] == [
        (0, "CANet_tiny", 1.0, 1.5, True), (0, "ResNet18", 1.0, 1.5, False), (0, "VGG11", 1.0, 1.5, False)]


def test_concurrency_records_the_whole_step_graph_under_its_key(tiny_source, tmp_path, monkeypatch):
    monkeypatch.setenv(T.STEP_GRAPH_ENV, "CANet_tiny")  # the processes inherit it, as the runner's do
    path = tmp_path / "bench.json"
    data = L.measure_concurrency(["CANet_tiny"], 2, str(tiny_source), "cpu", path, num_train=16, num_val=8,
                                 progress=False)
    (key,) = data["concurrency"]
    assert key == "CANet_tiny+step-graph/x2/time-sliced"  # the variant the plan reads for these runs
    rec = data["concurrency"][key]
    assert rec["key"] == "CANet_tiny+step-graph" and rec["step_graph"] is False  # asked for; a CPU ran eager steps
    assert L.measurement(path, "CANet_tiny", 2, mps=False) == rec  # looked up as lib.bench.key_in_use says


def test_a_killed_process_ends_the_measurement_without_waiting_for_it(tiny_source, tmp_path):
    import multiprocessing
    import os
    import signal
    import threading
    import time

    def kill_one():  # the first worker process, once it is running (before it reaches the barrier)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            children = multiprocessing.active_children()
            if children:
                time.sleep(0.5)
                os.kill(children[0].pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one)
    killer.start()
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="did not complete"):
        L.measure_concurrency(["CANet_tiny"], 2, str(tiny_source), "cpu", tmp_path / "bench.json", num_train=16,
                              num_val=8, progress=False, barrier_timeout_s=300)
    killer.join()
    assert time.monotonic() - t0 < 120  # the other worker was released, not left to its 300 s timeout


def _wait_at(barrier) -> None:
    """A process that waits at a barrier (for the test below; module level, so that spawn can start it)."""
    barrier.wait(120)


def test_a_process_killed_while_waiting_at_the_barrier_ends_the_others():
    import multiprocessing
    import os
    import signal
    import threading
    import time

    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(3), ctx.Queue()  # two processes wait for a third that never comes
    procs = [ctx.Process(target=_wait_at, args=(barrier,), daemon=True) for _ in range(2)]
    for p in procs:
        p.start()
    try:
        deadline = time.monotonic() + 60
        while barrier.n_waiting < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert barrier.n_waiting == 2
        os.kill(procs[0].pid, signal.SIGKILL)
        got = []
        collector = threading.Thread(target=lambda: got.extend(L._collect(procs, results, 2)), daemon=True)
        collector.start()
        collector.join(30)  # an abort of the barrier would hang here: the killed process never wakes
        assert not collector.is_alive() and got == [] and not any(p.is_alive() for p in procs)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()


def test_a_failing_process_ends_the_measurement_with_its_error(tiny_source, tmp_path):
    with pytest.raises(RuntimeError, match=r"did not complete: process \d, CANet_tiny: ValueError: .*empty"):
        L.measure_concurrency(["CANet_tiny"], 2, str(tiny_source), "cpu", tmp_path / "bench.json", num_train=0,
                              num_val=8, progress=False)


def test_a_run_in_a_lane_records_that_it_shared_the_gpu(tiny_source, tmp_path, monkeypatch):
    from lib.train import train

    cfg = part1_config("CANet_tiny", "smoke", resolve_source(tiny_source)).replace(num_epochs=1, num_train=16,
                                                                                   num_val=8, num_test=8)
    dirs = output_dirs("smoke", root=tmp_path)
    monkeypatch.setenv(L.LANES_ENV, "3")
    assert train(cfg, dirs=dirs, progress=False)["shared_gpu"] == {"lanes": 3, "mps": False}
    monkeypatch.delenv(L.LANES_ENV)
    assert "shared_gpu" not in train(cfg, dirs=dirs, progress=False, force=True)


def test_report_says_when_runs_shared_the_gpu(tmp_path):
    from lib.report import collect
    from test_report import p1_result

    dirs = output_dirs("quick", root=tmp_path)
    for seed in (0, 1):
        r = p1_result("CANet", seed, 0.9)
        if seed:
            r["shared_gpu"] = {"lanes": 3, "mps": True}
        atomic_write_json(Path(dirs.results) / f"{r['name']}.json", r)
    times = collect("quick", dirs)["times"]
    assert (times["shared"], times["lanes"], times["mps"]) == (1, [3], "all")
    from lib.report import render_report

    text = Path(render_report("quick", dirs)).read_text()
    assert "1 of the training runs shared the GPU with other runs (3 started\n  at once, under NVIDIA MPS;" in text
    # and the comparison table's context line says so where its time columns are shown
    assert ("(shared: 1 of 2 runs trained 3 at once under MPS, so their times "
            "are those of a shared GPU) | seeds: 0, 1") in text
    from lib.report import shared_gpu_note

    assert shared_gpu_note([{"shared_gpu": {"lanes": 3, "mps": False}}]) == (
        " (shared: 1 of 1 run trained 3 at once time-sliced, so their times are those of a shared GPU)")
    assert shared_gpu_note([{"shared_gpu": None}, {}]) == ""
    r = p1_result("CANet", 2, 0.9)
    atomic_write_json(Path(dirs.results) / f"{r['name']}.json", dict(r, shared_gpu={"lanes": 2, "mps": False}))
    assert collect("quick", dirs)["times"]["mps"] == "some"
    text = Path(render_report("quick", dirs)).read_text()
    assert "2 of the training runs shared the GPU with other runs (2 or 3 started\n  at once, some under NVIDIA MPS, " \
           "some time-sliced;" in text
    assert "(shared: 2 of 3 runs trained 2 or 3 at once (some under MPS), so their" in text


def runner_in_a_copy(tmp_path: Path, tiny_source, **settings) -> tuple[Path, dict, str]:
    """A copy of the repository's tracked files for scripts/gpu_full_study.sh as a CPU dry run on the tests' tiny
    data, its environment (`settings` added) and this CPU's device name as the runner's processes write it."""
    import os
    import shutil
    import subprocess
    import sys

    from lib.paths import REPO

    repo = tmp_path / "repo"
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], check=True, capture_output=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (REPO / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    env = {**os.environ, "OUT": str(tmp_path / "out"), "ALLOW_CPU": "1", "PROFILE": "smoke",
           "DATA": str(tiny_source), "DATA_SRC": str(tiny_source), "GRAPH_CHECK": "0", "PROBE_BENCH": "",
           "PY": sys.executable, "BENCH_ARGS": "--num-train 16 --num-val 8 --workers 0", "TQDM_DISABLE": "1",
           **settings}
    # The bench file as the runner's processes name this CPU (its thread count is part of the name).
    name = subprocess.run([sys.executable, "-c", "import torch; from lib.results import device_name; "
                           "print(device_name(torch.device('cpu')))"], cwd=repo, env=env, check=True,
                          capture_output=True, text=True).stdout.strip()
    return repo, env, name


def dry_run_bench(repo: Path, name: str, setup: dict, **extra) -> None:
    """The runner's bench file in the copy `repo`: each model's fake entry with its `setup` seconds (the estimate
    of a run), measured 1.2x as long two at once (time-sliced), as this CPU (`name`) records them."""
    from test_bench import fake_entry

    bench = {"device": name, "device_slug": B.device_slug("cpu"),
             "entries": {m: dict(fake_entry(model=m, fast=0.5, setup=s, warmup=0.5), device=name,
                                 cuda_graphs=False, compiled=False) for m, s in setup.items()}, **extra}
    atomic_write_json(B.bench_path("cpu", repo),
                      with_records(bench, *(record(m, 2, 1.2, mps=False, device=name) for m in setup)))


def test_gpu_runner_trains_its_lanes_at_once_in_a_cpu_dry_run(tiny_source, tmp_path):
    """The runner's glue (scripts/gpu_full_study.sh) in a copy of the repository: with measured gains in the bench
    file, the plan's two lanes run at once and their results record it; no MPS on a CPU. The estimates are far
    longer than the runs, so a third run fits only in the time the lanes left: the runner's second round."""
    import subprocess

    repo, env, name = runner_in_a_copy(tmp_path, tiny_source, BUDGET_S="540", SEEDS="0 1",
                                       STUDY_MODELS="CANet_tiny ResNet18", LANES="2", GRAPH_CHECK="1", USE_SPARE="0",
                                       KEEP_CHECKPOINTS="p1-CANet_tiny-s0 p1-VGG11-s0")
    # Left on the machine before this call: a checkpoint it does not train, and a killed step's temporary file.
    (repo / "checkpoints" / "smoke").mkdir(parents=True)
    (repo / "checkpoints" / "smoke" / "p1-VGG11-s0.pt").write_bytes(b"an earlier call's")
    (repo / "results" / "smoke").mkdir(parents=True, exist_ok=True)
    (repo / "results" / "smoke" / ".p1-VGG11-s0.json.x1y2.tmp").write_text("{half")
    models = ("CANet_tiny", "ResNet18")
    dry_run_bench(repo, name, {m: 180.0 for m in models},
                  # as a GPU records them (a CPU has no graph to check and records none)
                  graph_checks={m: {"model": m, "ok": True, "torch": torch.__version__, "model_revision": revision(m),
                                    "check_version": B.GRAPH_CHECK_VERSION} for m in models})
    # Each run estimated at about 180 s (x 1.2 slowdown x 1.2 margin + 20 s in a lane): the two lanes fill round 1,
    # whose runs take seconds; round 2 plans the third in what is left (one lane: it trains alone).
    run = subprocess.run(["bash", "scripts/gpu_full_study.sh", "p1-CANet_tiny-s0", "p1-ResNet18-s0",
                          "p1-CANet_tiny-s1"], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    plan = (tmp_path / "out" / "plan.txt").read_text()
    assert "# round 2\n" in plan, plan
    first, second, *later = re.split(r"^# round \d\n", plan, flags=re.M)
    assert re.findall(r"^lane .*$", first, re.M) == ["lane p1-CANet_tiny-s0", "lane p1-ResNet18-s0"], plan
    assert "# skipped p1-CANet_tiny-s1" in first  # in round 2, a lane of its own or alone, as the time left says
    # It is a spare run of round 1's lanes (261 s in a lane, before their planned end 281 s after their start),
    # which USE_SPARE=0 keeps them from taking here, so that round 2 plans it (the next test takes one).
    assert re.search(r"^spare 28\d p1-CANet_tiny-s1:26\d$", first, re.M), plan
    assert "spare run" not in log and "--spare" not in log
    assert re.findall(r"^(?:lane|train) (.*)$", second, re.M) == ["p1-CANet_tiny-s1"], plan
    assert "round 2:" in log and not any(re.findall(r"^(lane|train) ", p, re.M) for p in later)  # nothing left
    third = read_json(repo / "results" / "smoke" / "p1-CANet_tiny-s1.json")
    assert third["status"] == "ok" and third.get("shared_gpu") is None
    assert "2 lanes at once, time-sliced" in log and "MPS:" not in log
    assert "no CUDA device: dry run on the CPU" in log and "exit 3" not in log  # an answer, not a failure
    # The first step read the bench file: every graph check and fast epoch recorded as now, so after the
    # every-call check of CANet_tiny neither the study models' checks nor the fast-epoch step started a process.
    assert "CUDA-graph checks of the study models: all recorded as now" in log
    assert "fast epochs of the study models and the probe steps: all recorded as now" in log
    assert "--check-graphs CANet_tiny --check-precisions" in log and "--missing-only --graph-failures-file" not in log
    assert "--fast-only" not in log and "--graph-failures" not in log
    # The last pack is also kept on the machine, for a next call there (tests/test_bench_merge.py).
    kept = repo / "build" / "gpu-state" / "results.tgz"
    assert kept.read_bytes() == (tmp_path / "out" / "results.tgz").read_bytes()
    with tarfile.open(kept, "r:gz") as tar:  # compressed: the whole study's JSON would pass 16 MB as a plain tar
        assert "results/smoke/p1-CANet_tiny-s1.json" in tar.getnames()
        assert not any(n.startswith("figs/") for n in tar.getnames())  # the committed figs/quick/ are not smoke's
        assert not any(n.endswith(".tmp") for n in tar.getnames())
    # Of KEEP_CHECKPOINTS only what this call trained comes back.
    with tarfile.open(tmp_path / "out" / "checkpoints.tgz.part0", "r:gz") as tar:
        assert tar.getnames() == ["checkpoints/smoke/p1-CANet_tiny-s0.pt"]
    for i, name in enumerate(("p1-CANet_tiny-s0", "p1-ResNet18-s0"), 1):
        assert f"[lane {i}] {name}: ok" in log
        result = read_json(repo / "results" / "smoke" / f"{name}.json")
        assert result["shared_gpu"] == {"lanes": 2, "mps": False} and result["status"] == "ok"


def test_gpu_runner_lanes_take_a_spare_run_that_fits_before_the_planned_end(tiny_source, tmp_path):
    """A lane that ends early trains a run the plan left out for want of time, if its estimate ends before the
    plan's longest lane would (the plan's 'spare' line), and its result records the lanes."""
    import subprocess

    repo, env, name = runner_in_a_copy(tmp_path, tiny_source, BUDGET_S="380", SEEDS="0 1",
                                       STUDY_MODELS="CANet_tiny ResNet18", LANES="2", REPLAN="0")
    dry_run_bench(repo, name, {"CANet_tiny": 180.0, "ResNet18": 125.0})
    # In a lane (x 1.2 x 1.2): CANet_tiny about 261 s + 20, ResNet18 about 182 s + 20, in a plan budget of about
    # 300 s: the second ResNet18 run fits neither lane nor after them, but before the longest lane's end.
    run = subprocess.run(["bash", "scripts/gpu_full_study.sh", "p1-CANet_tiny-s0", "p1-ResNet18-s0",
                          "p1-ResNet18-s1"], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    plan = (tmp_path / "out" / "plan.txt").read_text()
    assert re.findall(r"^(?:lane|train|spare) .*$", plan, re.M)[:2] == ["lane p1-CANet_tiny-s0",
                                                                        "lane p1-ResNet18-s0"], plan
    assert re.search(r"^spare 28\d p1-ResNet18-s1:18\d$", plan, re.M), plan
    assert re.search(r"\[lane \d\] spare run p1-ResNet18-s1: estimated 18\d s", log), log[-3000:]
    assert re.search(r"\[lane \d\] p1-ResNet18-s1: ok", log) and "exit " not in log
    spare = read_json(repo / "results" / "smoke" / "p1-ResNet18-s1.json")
    assert spare["status"] == "ok" and spare["shared_gpu"] == {"lanes": 2, "mps": False}


def test_gpu_runner_plans_no_second_round_after_a_failed_run(tiny_source, tmp_path):
    """A run that crashes stays unfinished: a second round would start it again, so the runner stops planning (PY
    stands in for Python and fails every `lib run`; everything else runs as usual)."""
    import subprocess
    import sys

    from test_bench import fake_entry

    fake_py = tmp_path / "py.sh"
    fake_py.write_text(f'if [[ "$*" == *"-m lib run "* ]]; then echo "lib run crashed"; exit 1; fi\n'
                       f'exec {sys.executable} "$@"\n')
    repo, env, name = runner_in_a_copy(tmp_path, tiny_source, BUDGET_S="400", STUDY_MODELS="CANet_tiny ResNet18",
                                       PY=f"bash {fake_py}")
    # 180 s x 1.2 + 20 s each: the first run fits 400 s, the second only in a later round.
    bench = {"device": name, "device_slug": B.device_slug("cpu"),
             "entries": {m: dict(fake_entry(model=m, fast=0.5, setup=180.0, warmup=0.5), device=name,
                                 cuda_graphs=False, compiled=False) for m in ("CANet_tiny", "ResNet18")}}
    atomic_write_json(B.bench_path("cpu", repo), bench)
    run = subprocess.run(["bash", "scripts/gpu_full_study.sh", "p1-CANet_tiny-s0", "p1-ResNet18-s0"], cwd=repo,
                         env=env, capture_output=True, text=True, timeout=300)
    log = run.stdout + run.stderr
    assert run.returncode == 1, log[-3000:]  # the call says that a step failed; its packing still happened
    assert "lib run crashed" in log and "a step of round 1 failed" in log and "round 2:" not in log, log[-3000:]
    assert "(call status 1)" in log and (tmp_path / "out" / "results.tgz").exists()
    assert "--graph-failures" not in log  # GRAPH_CHECK=0: the failures the first step read (none)
    plan = (tmp_path / "out" / "plan.txt").read_text()
    assert "train p1-CANet_tiny-s0" in plan and "# skipped p1-ResNet18-s0" in plan and "# round" not in plan


def test_gpu_runner_says_when_its_steps_spent_the_budget_before_the_plan(tiny_source, tmp_path):
    """A call whose first steps leave less than the plan needs (here a 60 s budget of which the plan and the runs'
    stop reserve alone ask 45 s) says so and trains nothing, rather than handing the planner a negative budget."""
    import subprocess

    from test_bench import fake_entry

    repo, env, name = runner_in_a_copy(tmp_path, tiny_source, BUDGET_S="60", PACK_RESERVE_S="5", PLAN_S="20",
                                       STUDY_MODELS="CANet_tiny")
    bench = {"device": name, "device_slug": B.device_slug("cpu"),
             "entries": {"CANet_tiny": dict(fake_entry(model="CANet_tiny"), device=name, cuda_graphs=False,
                                            compiled=False)}}
    atomic_write_json(B.bench_path("cpu", repo), bench)
    run = subprocess.run(["bash", "scripts/gpu_full_study.sh", "p1-CANet_tiny-s0"], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=300)
    log = run.stdout + run.stderr
    assert run.returncode == 1 and "budget spent before the plan: nothing trained in this call" in log, log[-3000:]
    assert "planning failed" not in log and "--budget" not in log and "(call status 1)" in log, log[-3000:]


def test_what_is_left_of_the_study_in_gpu_minutes(tiny_source, tmp_path, monkeypatch, capsys):
    import lib.cli as C
    from lib.bn_study import PROBE_SIZES

    source = resolve_source(tiny_source)
    dirs = output_dirs("full", root=tmp_path)
    write_finished(dirs, part1_config("CANet_tiny", "full", source))
    bench = fake_bench()
    # Part 1 runs 79.5 s each, BN runs 28.5 s (the lr-1e-3 pair with the slices' 30 s), probes, the costs' 60 s.
    probes = 2 * PROBE_SIZES["full"]["num_steps"] * 0.01
    left = 8 * 79.5 + 6 * 28.5 + (2 * 28.5 + 30) + probes + 60
    est = P.remaining_estimate(bench, source, dirs)
    assert est["seconds"] == pytest.approx(left) and len(est["jobs"]) == 8 + 6 + 2 + 9 and est["unknown"] == []
    assert est["lanes_seconds"] is None  # nothing measured at once
    # ResNet18 and ResNet34 measured 1.5x as long three at once under MPS: each counts 79.5 x 1.5 / 3 s.
    measured = dict(with_records(bench, record("ResNet18", 3, 1.5), record("ResNet34", 3, 1.5)),
                    device_slug="nvidia-h200")
    est = P.remaining_estimate(measured, source, dirs)
    assert est["mps"] is True and est["lanes_seconds"] == pytest.approx(left - 2 * 79.5 + 2 * 79.5 * 1.5 / 3)
    # A model without a measurement is named, not counted.
    unmeasured = dict(bench, entries={k: e for k, e in bench["entries"].items() if k != "VGG11"})
    est = P.remaining_estimate(unmeasured, source, dirs, seeds=[0, 1])
    assert est["unknown"] == ["p1-VGG11-s0", "p1-VGG11-s1"] and est["seconds"] == pytest.approx(left - 79.5 + 8 * 79.5)
    # `python -m lib status --profile full` prints it per GPU bench file of the checkout.
    path = tmp_path / "nvidia-h200.json"
    atomic_write_json(path, measured)
    monkeypatch.setattr(C, "gpu_bench_files", lambda: [path])
    monkeypatch.setattr(C, "output_dirs", lambda profile, publish=None: dirs)
    assert main(["status", "--profile", "full", "--data", str(tiny_source)]) == 0
    assert (f"left on NVIDIA H100 80GB HBM3 (estimates from {path}): 25 job(s), about {left / 60:.1f} min one run "
            f"after another, at least {(left - 79.5) / 60:.1f} min with 3 runs at once under MPS") in capsys.readouterr().out
    # A bench file that cannot be read: said, and the list still stands.
    path.write_text("{not json")
    assert main(["status", "--profile", "full", "--data", str(tiny_source)]) == 0
    out = capsys.readouterr().out
    assert "17 missing" not in out and f"(no estimate of what is left from {path}: it cannot be read" in out


def test_the_gpu_bench_files_leave_out_the_cpu_ones(tmp_path, monkeypatch):
    import lib.cli as C

    (tmp_path / "results" / "bench").mkdir(parents=True)
    atomic_write_json(tmp_path / "results" / "bench" / "nvidia-h200.json", {"device_slug": "nvidia-h200"})
    atomic_write_json(tmp_path / "results" / "bench" / "cpu-x86-64.json", {"device_slug": "cpu-x86-64"})
    monkeypatch.setattr(C, "REPO", tmp_path)
    assert [p.name for p in C.gpu_bench_files()] == ["nvidia-h200.json"]


def test_the_estimates_are_checked_against_the_finished_runs(tmp_path, monkeypatch, capsys):
    import lib.cli as C

    dirs = output_dirs("full", root=tmp_path)
    bench = with_records(fake_bench(), record("ResNet18", 3, 1.5))  # every model: 2 + 0.5 + epochs x 1.1 s
    device = bench["device"]

    def result(name, model, wall, **extra):
        atomic_write_json(Path(dirs.results) / f"{name}.json", {
            "name": name, "model": model, "device": device, "history": [{}] * 70, "wall_seconds_this_call": wall,
            **extra})

    result("p1-CANet-s0", "CANet", 69.75)  # alone, all 70 epochs in the call: estimate 0.5 + 70 x 1.1 = 77.5 s
    result("p1-ResNet18-s0", "ResNet18", 58.125, shared_gpu={"lanes": 3, "mps": True})  # x1.5, 116.25 s
    result("p1-VGG11-s0", "VGG11", 11.0, epochs_this_call=10)  # resumed: 10 epochs, 0.5 + 11 s
    result("p1-ResNet34-s0", "ResNet34", 50.0, shared_gpu={"lanes": 2, "mps": False})  # slowdown not measured
    result("p1-ShuffleNetV2-s0", "ShuffleNetV2", 50.0, device="NVIDIA A100")  # another device's
    result("p1-MobileNetV2-s0", "MobileNetV2", 50.0, fast_path={"compile": True, "compile_mode": "reduce-overhead"})
    # Trained with the whole step as one CUDA graph, compiled inside: its own bench row, 1.1 + 70 x (0.4 + 0.1) s.
    bench["entries"]["CANet_tiny+step-graph-compiled"] = dict(fake_entry(model="CANet_tiny", fast=0.4),
                                                              compiled=True, compile_mode="default", step_graph=True)
    result("p1-CANet_tiny-s0", "CANet_tiny", 35.5,
           fast_path={"compile": True, "compile_mode": "default", "step_graph": True})
    atomic_write_json(Path(dirs.results) / "bn-VGG_A-lr0.001-s2020.steps.json", [1, 2])  # not a result
    rows = {r["name"]: r for r in P.estimate_check(bench, dirs)}
    assert set(rows) == {"p1-CANet-s0", "p1-ResNet18-s0", "p1-VGG11-s0", "p1-CANet_tiny-s0"}  # not MobileNetV2+compile
    assert rows.pop("p1-CANet_tiny-s0")["estimate"] == pytest.approx(36.1)
    assert rows["p1-CANet-s0"]["estimate"] == pytest.approx(77.5) and rows["p1-CANet-s0"]["ratio"] == pytest.approx(0.9)
    assert rows["p1-ResNet18-s0"]["estimate"] == pytest.approx(116.25) and rows["p1-ResNet18-s0"]["ratio"] == 0.5
    assert rows["p1-VGG11-s0"]["estimate"] == pytest.approx(11.5)
    line = P.format_estimate_check(list(rows.values()), "h200.json")
    assert "actual / estimate 0.50-0.96, median 0.90, over 3 run(s), each its wall time from the first epoch to its " \
           "result, then the estimate" in line and "p1-CANet-s0 70 s of 78 s" in line
    # `python -m lib status --profile full` prints it under what is left.
    path = tmp_path / "nvidia-h200.json"
    atomic_write_json(path, bench)
    monkeypatch.setattr(C, "gpu_bench_files", lambda: [path])
    monkeypatch.setattr(C, "output_dirs", lambda profile, publish=None: dirs)
    assert main(["status", "--profile", "full", "--data", "shared"]) == 0
    assert f"finished runs against the plan's estimates from {path}" in capsys.readouterr().out


def test_a_plan_keeps_the_lanes_start_up_from_its_budget_only_where_it_has_lanes(tiny_source, tmp_path, monkeypatch):
    source, dirs, bench = two_models_gain(tiny_source, tmp_path, monkeypatch)
    # Two lanes: 20 + 79.5 x 1.25 x 1.2 = 139.25 s each. With a budget of 150 s they fit, less 15 s they do not.
    subset = ["p1-ResNet18-s0", "p1-ResNet34-s0"]
    plan = P.plan_study(subset, source, budget_s=160, bench=bench, dirs=dirs, lanes=2, lanes_startup_s=15)
    assert P.lanes_used(plan) == 2 and plan["budget_s"] == 145 and plan["lanes_startup_s"] == 15
    assert "; the budget less 15 s to start the lanes" in P.format_plan(plan)
    # Less 15 s of 150, the lanes do not fit: the plan without lanes, for the whole 150 s (20 + 95.4 s alone).
    plan = P.plan_study(subset, source, budget_s=150, bench=bench, dirs=dirs, lanes=2, lanes_startup_s=15)
    assert plan["lines"] == ["train p1-ResNet18-s0"] and plan["budget_s"] == 150 and P.lanes_used(plan) == 0
    assert plan["lanes_declined"] == 2
    assert "one run at a time, for the whole budget, and nothing started for lanes" in P.format_plan(plan)
    assert plan["lines"] == P.plan_study(subset, source, budget_s=150, bench=bench, dirs=dirs)["lines"]
    # Without a start-up, as before: the lanes have the whole budget.
    assert P.lanes_used(P.plan_study(subset, source, budget_s=150, bench=bench, dirs=dirs, lanes=2)) == 2
    with pytest.raises(ValueError, match="lanes_startup_s must be at least 0"):
        P.plan_study(subset, source, bench=bench, dirs=dirs, lanes=2, lanes_startup_s=-1)


FAKE_PY = r'''# Stands for python on a GPU machine: every step succeeds; the plan is $FAKE_PLAN (under MPS) or
# $FAKE_PLAN_SLICED (without); the MPS test client succeeds unless FAKE_MPS_FAILS=1.
echo "${CIFAR10_MPS:-}|$*" >> "$FAKE_CALLS"
args=("$@")
for i in "${!args[@]}"; do  # the compile choice the plan writes: none
  [[ "${args[i]}" != --compile-choice-file ]] || : > "${args[i + 1]}"
done
case "$*" in
  *"--plan "*) if [[ -n "${CIFAR10_MPS:-}" ]]; then printf '%b\n' "$FAKE_PLAN"
               else printf '%b\n' "$FAKE_PLAN_SLICED"; fi ;;
  *"MPS client ok"*) [[ "${FAKE_MPS_FAILS:-0}" == 0 ]] ;;
esac
'''


@pytest.mark.parametrize("case", ["lanes", "no lanes", "mps fails", "no mps tool"])
def test_the_runner_starts_mps_only_for_a_plan_with_lanes(tmp_path, case):
    """A GPU call with LANES=3 whose bench file holds measurements under MPS plans as under MPS, keeping
    MPS_START_S from the plan's budget (--lanes-startup); it starts the daemon only when the plan has two lanes or
    more, and where it fails to start, plans again for time-sliced lanes (and does not try again in the call's
    later rounds). Python, nvidia-smi and nvidia-cuda-mps-control are stand-ins that record their calls; every
    plan skips a run, so the runner plans a second round (REPLAN=1)."""
    repo = script_copy(tmp_path)
    atomic_write_json(repo / "results" / "bench" / "nvidia-h200.json", with_records(
        dict(fake_bench(), device="NVIDIA H200", device_slug="nvidia-h200"), record("VGG_A", 3, 1.2)))
    bin_dir, calls, mps_calls = tmp_path / "bin", tmp_path / "calls.txt", tmp_path / "mps.txt"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/bash\necho 'NVIDIA H200'\n")
    if case != "no mps tool":
        (bin_dir / "nvidia-cuda-mps-control").write_text(f'#!/bin/bash\necho "$* $(cat)" >> {mps_calls}\n')
    elif shutil.which("nvidia-cuda-mps-control"):
        pytest.skip("this machine has the MPS tool on its PATH")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    (tmp_path / "py.sh").write_text(FAKE_PY)
    skipped = "\\n# skipped p1-VGG_A_BN-s0: estimated 500 s > 100 s left"
    lanes = "lane p1-VGG11-s0\\nlane p1-ResNet18-s0\\nlane p1-ResNet34-s0\\ntrain p1-CANet-s0" + skipped
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PY=f"bash {tmp_path / 'py.sh'}",
               OUT=str(tmp_path / "out"), FAKE_CALLS=str(calls), LANES="3", GRAPH_CHECK="0", COMPILE_CACHE="",
               REPLAN="1", FAKE_PLAN=lanes if case != "no lanes" else "train p1-CANet-s0\\ncosts CANet" + skipped,
               FAKE_PLAN_SLICED="train p1-VGG11-s0 p1-CANet-s0" + skipped,
               FAKE_MPS_FAILS="1" if case == "mps fails" else "0")
    for name in (L.MPS_ENV, L.LANES_ENV, "CUDA_MPS_PIPE_DIRECTORY"):
        env.pop(name, None)
    run = subprocess.run(["bash", "scripts/gpu_full_study.sh", "part1"], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=120)
    log = run.stdout + run.stderr
    assert "done; $OUT holds" in log, log
    made = calls.read_text().splitlines()
    plans = [c for c in made if " --plan part1 " in c]
    runs = [c.split("--only ")[1].split(" --time-limit")[0] for c in made if " --only " in c]  # the trainings
    starts = sum(line.startswith("-d") for line in mps_calls.read_text().splitlines()) if mps_calls.exists() else 0
    under_mps = [p.startswith("1|") and "--lanes 3 --lanes-startup 15 " in p for p in plans]
    # The first plan: as under MPS, its start-up kept from the budget.
    assert under_mps[0], plans
    if case == "lanes":  # each round's lanes under MPS (stopped between them for the run alone)
        assert under_mps == [True, True] and starts == 2 and log.count("MPS: daemon started in ") == 2
        assert sorted(runs) == sorted(["p1-CANet-s0", "p1-ResNet18-s0", "p1-ResNet34-s0", "p1-VGG11-s0"] * 2)
        assert log.count("3 lanes at once under MPS") == 2
    elif case == "no lanes":
        assert under_mps == [True, True] and starts == 0 and "MPS:" not in log and runs == ["p1-CANet-s0"] * 2
    else:  # the daemon did not start: planned again without MPS and its start-up, and so in round 2
        assert under_mps == [True, False, False] and "--lanes-startup" not in plans[1] + plans[2]
        assert starts == (1 if case == "mps fails" else 0)
        assert log.count("not found" if case == "no mps tool" else "could not start") == 1
        assert log.count("planning again, for lanes that time-slice the GPU") == 1
        assert runs == ["p1-VGG11-s0 p1-CANet-s0"] * 2


@pytest.mark.parametrize("setting, timed", [("CANet_tiny,ResNet18", "CANet_tiny ResNet18"),
                                            ("all", "CANet_tiny CANet_light CANet ShuffleNetV2"), ("", None)])
def test_the_runner_times_the_whole_step_graph_rows_where_the_variable_asks(tmp_path, setting, timed):
    """With CIFAR10_STEP_GRAPH exported the runner's measurements take the whole-step graph rows of the models it
    names (`all`: the study's), both variants, before the compile choice and the plan, which read them; without it,
    no such step. Python is a stand-in that records its calls."""
    repo = script_copy(tmp_path)
    calls = tmp_path / "calls.txt"
    (tmp_path / "py.sh").write_text(FAKE_PY)
    env = dict(os.environ, PY=f"bash {tmp_path / 'py.sh'}", OUT=str(tmp_path / "out"), FAKE_CALLS=str(calls),
               LANES="1", GRAPH_CHECK="0", COMPILE_CACHE="", REPLAN="0", FAKE_PLAN_SLICED="train p1-VGG11-s0",
               CIFAR10_STEP_GRAPH=setting)
    run = subprocess.run(["bash", "scripts/gpu_full_study.sh", "part1"], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=120)
    assert "done; $OUT holds" in run.stdout + run.stderr, run.stdout + run.stderr
    made = calls.read_text().splitlines()
    rows = [i for i, c in enumerate(made) if "--step-graph-rows" in c]
    if timed is None:
        assert rows == []
        return
    (i,) = rows
    assert f"-m lib bench --fast-only {timed}" in made[i] and "--missing-only" in made[i]
    assert i < min(j for j, c in enumerate(made) if " --plan part1 " in c)
