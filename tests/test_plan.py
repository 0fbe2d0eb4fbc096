"""Planning the GPU calls (lib.plan): the study as jobs, first fit into a call's budget, runs longer than a call,
the costs and slices jobs, `lib run --only` as the runner calls it, the runner script's settings, `lib status`."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

import lib.plan as P
import lib.train as T
from conftest import fake_bench, fake_entry, write_finished
from lib.config import PROFILES
from lib.data import resolve_source
from lib.experiments import BN_MODELS, bn_config, bn_experiments, part1_config
from lib.models import PART1_MODELS
from lib.paths import REPO, output_dirs
from lib.results import atomic_write_json, read_json, rerun_marker

pytestmark = pytest.mark.usefixtures("one_thread")


def test_plan_takes_unfinished_jobs_that_fit_first_fit_in_study_order(tiny_source, tmp_path):
    source = resolve_source(tiny_source)
    dirs = output_dirs("full", root=tmp_path)
    write_finished(dirs, part1_config("CANet_tiny", "full", source))
    # Per Part 1 run 79.5 s x 1.2 = 95.4 s (+20 s for the first `train` process); per BN run 28.5 x 1.2 = 34.2 s.
    plan = P.plan_study(["all"], source, budget_s=250, bench=fake_bench(), dirs=dirs)
    assert plan["lines"] == ["train p1-CANet_light-s0 p1-CANet-s0 bn-VGG_A-lr0.002-s2020"]
    assert plan["seconds"] == pytest.approx(115.4 + 95.4 + 34.2)
    assert [j.names for j in plan["done"]] == [("p1-CANet_tiny-s0",)]
    skipped = dict((j.names[0], why) for j, why in plan["skipped"])
    assert skipped["p1-CANet_pro-s0"] == "estimated 95 s > 39 s left"
    assert "probe-VGG_A-s2020" in skipped
    text = P.format_plan(plan)
    assert text.splitlines()[1] == plan["lines"][0] and "# already done: p1-CANet_tiny-s0" in text


def test_a_run_longer_than_a_call_gets_a_call_of_its_own_and_resumes_in_the_next(tiny_source, tmp_path):
    source = resolve_source(tiny_source)
    dirs = output_dirs("full", root=tmp_path)
    bench = fake_bench()
    bench["entries"]["CANet_pro"] = fake_entry(model="CANet_pro", fast=10.0)  # 2 + 70 x 10.1 = 709 s > the budget
    write_finished(dirs, part1_config("CANet_tiny", "full", source))
    # Not first in line: skipped, so that it does not take the leftovers of a call with other work.
    plan = P.plan_study(["all"], source, budget_s=570, bench=bench, dirs=dirs)
    assert plan["partial"] is None and "p1-CANet_pro-s0" not in " ".join(plan["lines"])
    assert "runs over two calls once it is the first unfinished job" in dict(
        (j.names[0], why) for j, why in plan["skipped"])["p1-CANet_pro-s0"]
    # First in line: the whole call is its own, and the runner's time limit stops it resumably.
    for model in ("CANet_light", "CANet"):
        write_finished(dirs, part1_config(model, "full", source))
    plan = P.plan_study(["all"], source, budget_s=570, bench=bench, dirs=dirs)
    assert plan["lines"] == ["train p1-CANet_pro-s0"] and plan["partial"].names == ("p1-CANet_pro-s0",)
    assert "# partial p1-CANet_pro-s0: about 709 s left to train" in P.format_plan(plan)
    # A later round of the same call (partial=False): whole runs only; it plans what fits after the long one.
    plan = P.plan_study(["all"], source, budget_s=570, bench=bench, dirs=dirs, partial=False)
    assert plan["partial"] is None and "p1-CANet_pro-s0" not in " ".join(plan["lines"]) and plan["taken"]
    why = dict((j.names[0], why) for j, why in plan["skipped"])["p1-CANet_pro-s0"]
    assert why.startswith("estimated 871 s >") and "two calls" not in why
    # The stopped run's checkpoint on this (warm) machine: only its 20 remaining epochs are estimated.
    cfg = part1_config("CANet_pro", "full", source)
    Path(dirs.checkpoints).mkdir(parents=True, exist_ok=True)
    torch.save({"config": cfg.to_dict(), "epoch": 49}, Path(dirs.checkpoints) / f"{cfg.name}.last.pt")
    plan = P.plan_study(["all"], source, budget_s=570, bench=bench, dirs=dirs)
    assert plan["partial"] is None and plan["taken"][0].epochs_done == 50
    assert plan["taken"][0].seconds == pytest.approx(2.0 + 20 * 10.1)
    assert plan["lines"][0].startswith("train p1-CANet_pro-s0 ")  # and whatever fits after it
    assert "# p1-CANet_pro-s0 resumes after epoch 50" in P.format_plan(plan)


def test_jobs_run_the_first_seed_of_the_whole_study_before_the_extra_seeds(tiny_source, tmp_path):
    source = resolve_source(tiny_source)
    jobs = P.study_jobs(fake_bench(), source, output_dirs("full", root=tmp_path), seeds=(0, 1, 2))
    names = [j.names[0] for j in jobs]
    assert len(jobs) == 3 * 9 + 6 + 1 + 1 + 9  # Part 1 x 3 seeds, six BN runs, the pair + slices, probes, 9 costs
    assert [n.rsplit("-s", 1)[1] for n in names[:9]] == ["0"] * 9
    assert names[9].startswith("bn-") and jobs[16].kind == "probe"
    assert [j.kind for j in jobs[17:26]] == ["costs"] * 9 and names[26] == "p1-CANet_tiny-s1"
    assert [n.rsplit("-s", 1)[1] for n in names[26:]] == ["1"] * 9 + ["2"] * 9
    plan = P.plan_study(["p1-CANet-s2"], source, budget_s=1000, bench=fake_bench(), seeds=(0, 1, 2),
                        dirs=output_dirs("full", root=tmp_path))
    assert plan["lines"] == ["train p1-CANet-s2"]


def test_the_slices_job_is_done_only_with_slices_of_the_selected_epochs(tiny_source, tmp_path):
    from lib import bn_study

    source = resolve_source(tiny_source)
    dirs = output_dirs("full", root=tmp_path)
    pair = [c for c in bn_experiments("full", source) if c.lr == 1e-3]
    for c in pair:
        write_finished(dirs, c)  # with its per-step series
        atomic_write_json(dirs.results / f"{c.name}.json", {"name": c.name, "config": c.to_dict(), "best_epoch": 7,
                                                             "test_loss": 1.25})
    job = lambda: next(j for j in P.study_jobs(fake_bench(), source, dirs) if j.kind == "bn-slices")
    assert not job().done and job().force  # trained elsewhere, not sliced: retrain the pair (its weights) and slice
    for model in BN_MODELS:
        cfg = bn_study.slice_config("full", source, dirs, model)
        assert cfg["checkpoint_epoch"] == 7 and cfg["num_images"] == bn_study.SLICE_IMAGES["full"]
        atomic_write_json(bn_study.slice_path(dirs, model, bn_study.BN_SEED), {"config": cfg})
    assert job().done
    # The run retrained, the same epoch selected: other weights (another test loss), so the slices are not theirs.
    atomic_write_json(dirs.results / f"{pair[0].name}.json", {"name": pair[0].name, "config": pair[0].to_dict(),
                                                                "best_epoch": 7, "test_loss": 1.5})
    assert not job().done and job().force
    # Another epoch selected: the slice file exists but is of other weights.
    atomic_write_json(dirs.results / f"{pair[0].name}.json", {"name": pair[0].name, "config": pair[0].to_dict(),
                                                                "best_epoch": 9, "test_loss": 1.25})
    assert not job().done and job().force


def test_the_probe_job_is_estimated_from_its_steps_and_done_only_with_both_networks(tiny_source, tmp_path):
    from lib import bn_study

    source = resolve_source(tiny_source)
    dirs = output_dirs("full", root=tmp_path)
    job = lambda: next(j for j in P.study_jobs(fake_bench(probe=0.01), source, dirs) if j.kind == "probe")
    configs = bn_study.probe_configs("full", source)
    assert [c.num_steps for c in configs] == [4000, 4000]
    assert job().seconds == pytest.approx(2 * 0.01 * 4000)  # seconds per step x steps, for both networks
    assert not job().done
    atomic_write_json(configs[0].result_path(dirs), {"config": configs[0].to_dict()})
    assert not job().done  # VGG_A probed, VGG_A_BN not yet
    atomic_write_json(configs[1].result_path(dirs), {"config": configs[1].to_dict()})
    assert job().done


def test_plan_measures_the_costs_on_the_gpu_until_every_model_has_a_gpu_cost_file(tiny_source, tmp_path):
    from lib.part1 import CPU_COST_BATCH, GPU_COST_BATCH, cost_path

    source = resolve_source(tiny_source)
    dirs = output_dirs("full", root=tmp_path)
    plan = P.plan_study(["costs"], source, budget_s=1000, bench=fake_bench(), dirs=dirs)
    assert plan["lines"] == [f"costs {' '.join(PART1_MODELS)}"]  # one process for all
    assert plan["seconds"] == pytest.approx(P.COSTS_ALLOWANCE_S * 1.2 + 20)
    assert P.plan_study(["part1"], source, budget_s=5000, bench=fake_bench(), dirs=dirs)["lines"][-1] == \
        f"costs {' '.join(PART1_MODELS)}"
    # A model's share of the allowance each: a call with 40 s left measures three (20 s for the process).
    share = P.COSTS_ALLOWANCE_S / len(PART1_MODELS) * 1.2
    plan = P.plan_study(["costs"], source, budget_s=20 + 3 * share + 1, bench=fake_bench(), dirs=dirs)
    assert plan["lines"] == [f"costs {' '.join(PART1_MODELS[:3])}"] and len(plan["skipped"]) == 6
    assert P.plan_study(["cost-VGG11"], source, budget_s=1000, bench=fake_bench(), dirs=dirs)["lines"] == [
        "costs VGG11"]
    gpu = {"infer_batch": GPU_COST_BATCH, "device_name": "NVIDIA H200"}
    for i, model in enumerate(PART1_MODELS):  # the last two measured on a CPU: not the GPU measurement yet
        cost = dict(gpu, infer_batch=CPU_COST_BATCH) if i == len(PART1_MODELS) - 1 else gpu
        cost = dict(cost, device_name="CPU (x86_64, 2 threads)") if i == len(PART1_MODELS) - 2 else cost
        atomic_write_json(cost_path(dirs, model), dict(cost, model=model))
    assert P.plan_study(["costs"], source, budget_s=1000, bench=fake_bench(), dirs=dirs)["lines"] == [
        f"costs {' '.join(PART1_MODELS[-2:])}"]
    for model in PART1_MODELS[-2:]:
        atomic_write_json(cost_path(dirs, model), dict(gpu, model=model))
    plan = P.plan_study(["costs"], source, budget_s=1000, bench=fake_bench(), dirs=dirs)
    assert plan["lines"] == [] and [j.kind for j in plan["done"]] == ["costs"] * len(PART1_MODELS)
    # Another profile (a CPU dry run of the runner): any cost file counts, as `lib status` says.
    smoke = output_dirs("smoke", root=tmp_path)
    atomic_write_json(cost_path(smoke, "VGG11"), {"model": "VGG11", "infer_batch": CPU_COST_BATCH})
    plan = P.plan_study(["costs"], source, budget_s=1000, bench=fake_bench(), dirs=smoke, profile="smoke")
    assert plan["lines"] == [f"costs {' '.join(PART1_MODELS[:-1])}"]


def test_the_costs_job_does_not_keep_a_run_longer_than_a_call_from_its_call(tiny_source, tmp_path):
    source = resolve_source(tiny_source)
    bench = fake_bench()
    bench["entries"]["CANet_pro"] = fake_entry(model="CANet_pro", fast=10.0)  # 709 s: longer than the call
    plan = P.plan_study(["costs", "p1-CANet_pro-s1"], source, budget_s=570, bench=bench, seeds=(0, 1),
                        dirs=output_dirs("full", root=tmp_path))
    assert plan["lines"] == ["train p1-CANet_pro-s1"] and plan["partial"].names == ("p1-CANet_pro-s1",)


def test_run_costs_measures_costs_and_trains_nothing(tiny_source, monkeypatch, capsys):
    import lib.part1 as part1
    from lib.cli import main

    monkeypatch.setattr(T, "train", lambda cfg, **kw: pytest.fail(f"trained {cfg.name}"))
    asked = []
    monkeypatch.setattr(part1, "compute_costs", lambda dirs, models, force=False: asked.append((models, force)) or [
        {"model": "CANet_tiny", "flops": 136.3e6, "infer_ips": 51234.0, "infer_batch": 1024, "device_name": "GPU X"}])
    assert main(["run", "--profile", "smoke", "--data", str(tiny_source), "--costs", "--models", "CANet_tiny",
                 "--quiet"]) == 0
    assert asked == [(["CANet_tiny"], False)]
    assert "cost CANet_tiny: 136.3 MFLOP/image, 51,234 images/s at batch 1024 on GPU X" in capsys.readouterr().out


def test_run_refuses_only_names_that_its_options_do_not_produce(tiny_source, capsys):
    from lib.cli import main
    assert main(["run", "--profile", "smoke", "--data", str(tiny_source), "--only", "p1-CANet-s1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "p1-CANet-s1" in err and "--seeds" in err and "p1-CANet-s0" in err
    assert main(["run", "--profile", "smoke", "--data", str(tiny_source), "--part2", "--only", "p1-CANet-s0"]) == 2
    assert "and --part1 beside --part2 or another part" in capsys.readouterr().err


def test_run_trains_only_names_in_the_order_given(tiny_source, monkeypatch):
    from lib.cli import main
    trained = []
    monkeypatch.setattr(T, "train", lambda cfg, **kw: trained.append(cfg.name) or {"status": "ok", "test_acc": 0.5})
    order = ["p1-CANet-s1", "bn-VGG_A-lr0.001-s2020", "p1-CANet_tiny-s0", "p1-CANet-s1"]
    assert main(["run", "--profile", "smoke", "--data", str(tiny_source), "--part1", "--part2", "--seeds", "0", "1",
                 "1", "--only", *order, "--quiet"]) == 0
    assert trained == order[:3]  # the plan's (seed-major) order, each experiment once


def test_run_starts_nothing_more_once_its_time_limit_stopped_a_run(tiny_source, monkeypatch, capsys):
    from lib.cli import main
    calls = []

    def fake_train(cfg, **kw):
        calls.append((cfg.name, kw["stop_by"] is not None))
        return {"name": cfg.name, "status": "incomplete", "epochs_done": 3, "stopped_by": stopped_by}

    monkeypatch.setattr(T, "train", fake_train)
    stopped_by = "time_limit"
    assert main(["run", "--profile", "smoke", "--data", str(tiny_source), "--only", "p1-CANet-s0",
                 "p1-CANet_tiny-s0", "--time-limit", "100", "--quiet"]) == 0
    assert calls == [("p1-CANet-s0", True)]  # the second is not started: it would overrun the call
    out = capsys.readouterr().out
    assert "time limit reached after 3 epoch(s) of p1-CANet-s0; not started: p1-CANet_tiny-s0" in out
    # --max-epochs-this-call stopped the first, not the time limit: the second gets its epochs too.
    calls.clear()
    stopped_by = "max_epochs_this_call"
    assert main(["run", "--profile", "smoke", "--data", str(tiny_source), "--only", "p1-CANet-s0",
                 "p1-CANet_tiny-s0", "--time-limit", "100", "--max-epochs-this-call", "3", "--quiet"]) == 0
    assert calls == [("p1-CANet-s0", True), ("p1-CANet_tiny-s0", True)]
    out = capsys.readouterr().out
    assert "time limit" not in out and out.count("stopped by --max-epochs-this-call 3 after epoch 3") == 2
    for bad in ("0", "-5", "nan", "inf"):  # a limit that is no number of seconds ahead: refused before anything
        with pytest.raises(SystemExit) as exit_info:
            main(["run", "--profile", "smoke", "--data", str(tiny_source), "--time-limit", bad])
        assert exit_info.value.code == 2 and "--time-limit: must be a number > 0" in capsys.readouterr().err


def test_plan_retrains_the_lr_1e3_pair_when_its_slices_are_missing(tiny_source, tmp_path):
    source = resolve_source(tiny_source)
    dirs = output_dirs("full", root=tmp_path)
    for model in ("VGG_A", "VGG_A_BN"):
        write_finished(dirs, bn_config(model, 1e-3, "full", source))
    plan = P.plan_study(["bn-VGG_A-lr0.001-s2020", "probe"], source, budget_s=1000, bench=fake_bench(), dirs=dirs)
    assert plan["lines"] == ["train-force bn-VGG_A-lr0.001-s2020 bn-VGG_A_BN-lr0.001-s2020", "slices", "probe"]
    from lib.bn_study import slice_config

    for model in ("VGG_A", "VGG_A_BN"):  # slices of the pair's selected weights
        atomic_write_json(Path(dirs.results) / f"slice-{model}-s2020.json",
                          {"config": slice_config("full", source, dirs, model)})
    plan = P.plan_study(["part2"], source, budget_s=1000, bench=fake_bench(), dirs=dirs)
    assert len(plan["lines"]) == 1 and len(plan["lines"][0].split()) == 1 + 6  # the six other BN runs
    assert plan["done"][0].names == ("bn-VGG_A-lr0.001-s2020", "bn-VGG_A_BN-lr0.001-s2020")
    with pytest.raises(ValueError, match="unknown study subset"):
        P.plan_study(["p1-Nope-s0"], source, bench=fake_bench(), dirs=dirs)
    assert P.plan_study(["all"], source, bench=None, dirs=dirs)["lines"] == [  # no training to estimate
        "costs CANet_tiny CANet_light CANet CANet_pro ShuffleNetV2 MobileNetV2 ResNet18 ResNet34 VGG11"]


def test_gpu_script_is_valid_bash():
    script = REPO / "scripts" / "gpu_full_study.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


@pytest.mark.parametrize("setting, says", [("BUDGET_S=9m", "BUDGET_S=9m must be a whole number of seconds"),
                                           ("LANES=0", "LANES=0 must be a whole number of training processes"),
                                           ("PLAN_MARGIN=1,2", "PLAN_MARGIN=1,2 must be a number above 0, such as 1.2"),
                                           ("PARTIAL=yes", "PARTIAL=yes must be 0 or 1"),
                                           ("GPU_STATE=yes", "GPU_STATE=yes must be 0 or 1"),
                                           ("USE_SPARE=no", "USE_SPARE=no must be 0 or 1"),
                                           ("MPS=1", "MPS=1 must be auto or 0"),
                                           ("REPLAN_MIN_S=090", "REPLAN_MIN_S=090 must be a whole number"),
                                           ("PLAN_MARGIN=.", "PLAN_MARGIN=. must be a number above 0, such as 1.2"),
                                           ("PLAN_MARGIN=0.0", "PLAN_MARGIN=0.0 must be a number above 0"),
                                           ("MPS_START_S=-5", "MPS_START_S=-5 must be a whole number of seconds"),
                                           ("PROFILE=ful", "PROFILE=ful must be smoke, quick or full"),
                                           ("SEEDS=0,1", "SEEDS=0,1 must be Part 1 seeds, whole numbers separated"),
                                           ("SEEDS=0 b", "SEEDS=0 b must be Part 1 seeds"),
                                           ("BUDGET_S=40", "BUDGET_S=40 leaves nothing to run"),
                                           ("COMPILE_MODELS=CANet;rm", "COMPILE_MODELS=CANet;rm must be auto, none"),
                                           ("SEEDS= 0  1 2 ", None),
                                           ("PLAN_MARGIN=1.05", None), ("PLAN_MARGIN=1.", None), ("PLAN_MARGIN=.9", None)])
def test_gpu_script_refuses_a_bad_setting_before_it_starts(tmp_path, setting, says):
    name, value = setting.split("=", 1)
    env = dict(os.environ, OUT=str(tmp_path / "out"), PY="false", STATE_DIR=str(tmp_path / "state"),
               **{name: value})
    run = subprocess.run(["bash", str(REPO / "scripts" / "gpu_full_study.sh"), "all"], env=env, capture_output=True,
                         text=True, timeout=60)
    if says is None:  # a good value passes the checks: here the script stops at the missing torch instead
        assert run.returncode != 2 and "this script is for the GPU machine" in run.stdout
        return
    assert run.returncode == 2 and says in run.stderr
    assert not (tmp_path / "out").exists()  # nothing started


@pytest.mark.parametrize("args, rc, says", [
    (["--help"], 0, "bash scripts/gpu_full_study.sh --merge DIR"),
    (["-h"], 0, "Inside BUDGET_S seconds:"),
    (["--mrege", "/tmp/x"], 2, "unknown option --mrege"),
    (["part1", "--budget", "60"], 2, "unknown option --budget"),
    (["--merge"], 2, "usage: "),
    (["all", "--merge", "x"], 2, "--merge DIR comes first and alone")])
def test_gpu_script_answers_help_and_refuses_options_before_anything(tmp_path, args, rc, says):
    """Nothing runs for --help or a mistyped option, not even step 0's merge of a previous call's pack."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "results.tgz").write_bytes(b"not read")
    env = dict(os.environ, OUT=str(tmp_path / "out"), PY="false", STATE_DIR=str(state))
    run = subprocess.run(["bash", str(REPO / "scripts" / "gpu_full_study.sh"), *args], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == rc and says in (run.stdout if rc == 0 else run.stderr)
    assert not (tmp_path / "out").exists()


def test_gpu_script_exit_status_says_whether_the_call_ran(tmp_path):
    """The log is piped through tee; the call's exit status is still its own: 1 where nothing could run."""
    env = dict(os.environ, OUT=str(tmp_path / "out"), PY="false", STATE_DIR=str(tmp_path / "state"))
    run = subprocess.run(["bash", str(REPO / "scripts" / "gpu_full_study.sh"), "all"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 1 and "the first step failed" in run.stdout and "(call status 1)" in run.stdout
    assert (tmp_path / "out" / "log.txt").read_text() == run.stdout


def test_the_runner_first_step_refuses_an_unknown_subset_before_anything(capsys):
    from lib.bench import runner_first_step

    assert runner_first_step(False, None, subset=["p1-CANet-s00"], seeds=[0, 1, 2]) == 2
    out = capsys.readouterr().out
    assert "unknown study subset(s) ['p1-CANet-s00']" in out and "torch" not in out  # nothing else done
    assert runner_first_step(False, None, subset=["p1-CANet-s2"], seeds=[0, 1, 2]) in (0, 3)  # a seed asked for
    assert runner_first_step(False, None, subset=["p1-CANet-s2"], seeds=[0]) == 2  # not one of the call's seeds


def test_status_lists_done_resumable_and_missing_experiments(tiny_source, tmp_path, monkeypatch, capsys):
    from lib import bn_study
    from lib.cli import main
    from lib.part1 import cost_path

    source = resolve_source(tiny_source)
    dirs = output_dirs("smoke", root=tmp_path)
    write_finished(dirs, part1_config("CANet_tiny", "smoke", source))
    cfg = part1_config("CANet", "smoke", source)
    Path(dirs.checkpoints).mkdir(parents=True, exist_ok=True)
    torch.save({"config": cfg.to_dict(), "epoch": 0}, Path(dirs.checkpoints) / f"{cfg.name}.last.pt")
    plain_pair, bn_pair = [c for c in bn_experiments("smoke", source) if c.lr == 1e-3]
    write_finished(dirs, plain_pair)  # of the lr-1e-3 pair one is trained, the other resumable
    torch.save({"config": bn_pair.to_dict(), "epoch": 0}, Path(dirs.checkpoints) / f"{bn_pair.name}.last.pt")
    plain_probe = bn_study.probe_configs("smoke", source)[0]
    atomic_write_json(plain_probe.result_path(dirs), {"config": plain_probe.to_dict()})  # one of the two probes
    atomic_write_json(cost_path(dirs, "VGG11"), {"model": "VGG11"})
    rows = {name: (state, detail) for state, name, detail in P.study_status("smoke", source, dirs)}
    assert len(rows) == 9 + 8 + 1 + 2 + 9  # Part 1 (one seed), BN protocol, slices, probes, cost files
    assert rows["p1-CANet_tiny-s0"] == ("done", "") and rows["p1-ResNet18-s0"] == ("missing", "")
    assert rows["p1-CANet-s0"] == ("partial", f"1 of {PROFILES['smoke'].num_epochs} epochs in its checkpoint here")
    assert rows["bn-VGG_A-lr0.001-s2020"][0] == "done" and rows["bn-VGG_A-lr0.002-s2020"][0] == "missing"
    assert rows["bn-VGG_A_BN-lr0.001-s2020"] == ("partial", f"1 of {PROFILES['smoke'].bn_epochs} epochs in its "
                                                             f"checkpoint here")
    assert rows["loss slices"] == ("missing", "")
    tiny = part1_config("CANet_tiny", "smoke", source)  # finished, and a re-run with --force stopped part-way
    torch.save({"config": tiny.to_dict(), "epoch": 0}, Path(dirs.checkpoints) / f"{tiny.name}.last.pt")
    assert ("done", tiny.name, "") in P.study_status("smoke", source, dirs, details=False)  # no re-run marker
    atomic_write_json(rerun_marker(dirs, tiny.name), {"config": tiny.to_dict()})
    assert ("partial", tiny.name, f"1 of {tiny.num_epochs} epochs in its checkpoint here, a re-run with --force: "
                                  f"lib run goes on with it and replaces the finished result") in \
        P.study_status("smoke", source, dirs)
    (Path(dirs.checkpoints) / f"{tiny.name}.last.pt").unlink()
    write_finished(dirs, bn_pair)  # the pair trained, its slices not taken: the pair is retrained for them
    rows = {name: (state, detail) for state, name, detail in P.study_status("smoke", source, dirs)}
    assert rows["loss slices"] == ("missing", "they need the pair's best checkpoints (retrained when gone)")
    assert [rows[c.name][0] for c in bn_study.probe_configs("smoke", source)] == ["done", "missing"]
    bn_probe = bn_study.probe_configs("smoke", source)[1]  # an interrupted probe run (at the fallback lr)
    ckpt = bn_study.probe_checkpoint_path(dirs, bn_probe.model, bn_probe.seed)
    torch.save({"kind": "probe", "config": bn_probe.replace(lr=bn_study.FALLBACK_LR).to_dict(), "step": 3}, ckpt)
    rows = {name: (state, detail) for state, name, detail in P.study_status("smoke", source, dirs)}
    assert rows[bn_probe.name] == ("partial", f"3 of {bn_probe.num_steps} steps in its checkpoint here")
    torch.save({"kind": "probe", "config": bn_probe.replace(num_steps=99).to_dict(), "step": 3}, ckpt)
    assert ("missing", bn_probe.name, "") in P.study_status("smoke", source, dirs)  # another config's: replaced
    ckpt.write_bytes(b"\0" * 10)
    state, detail = {name: (st, d) for st, name, d in P.study_status("smoke", source, dirs)}[bn_probe.name]
    assert state == "damaged" and "cannot be read" in detail and "delete it (the run then starts over)" in detail
    ckpt.unlink()
    assert rows["cost-VGG11"] == ("done", "") and rows["cost-CANet"] == ("missing", "")
    # A result file that does not count says why: unreadable or of an older config (replaced), other data (kept).
    (Path(dirs.results) / "p1-ShuffleNetV2-s0.json").write_text('{"config": ')  # cut off
    mobile = part1_config("MobileNetV2", "smoke", source)
    atomic_write_json(Path(dirs.results) / f"{mobile.name}.json",
                      {"status": "ok", "config": dict(mobile.to_dict(), lr=0.5)})
    resnet = part1_config("ResNet34", "smoke", source)
    atomic_write_json(Path(dirs.results) / f"{resnet.name}.json",
                      {"status": "ok", "config": dict(resnet.to_dict(), data_source="official")})
    rows = {name: (state, detail) for state, name, detail in P.study_status("smoke", source, dirs)}
    assert rows["p1-ShuffleNetV2-s0"] == ("missing", "its result file cannot be read as one: lib run trains it "
                                                     "again and replaces the file")
    assert rows[mobile.name] == ("missing", "its result file is of another config (older code or recipe): lib run "
                                            "trains it again and replaces it")
    assert rows[resnet.name] == ("missing", f"its result here was trained otherwise, data_source (official there, "
                                            f"{resnet.data_source} here): lib run keeps it unless --force")
    assert rows["p1-ResNet18-s0"] == ("missing", "")  # no file
    # A BN protocol run whose per-step series is damaged is not done (lib.train would train it again).
    (Path(dirs.results) / f"{plain_pair.name}.steps.json").write_text("<<<<<<< HEAD\n")
    rows = {name: (state, detail) for state, name, detail in P.study_status("smoke", source, dirs)}
    assert rows[plain_pair.name] == ("missing", f"its per-step series ({plain_pair.name}.steps.json) is missing or "
                                                f"cannot be read: lib run trains it again and replaces both files")
    write_finished(dirs, plain_pair)
    # A study run with --num-epochs / --precision: its own Part 1 configurations (the finished run is another one).
    rows = {name: state for state, name, _ in P.study_status("smoke", source, dirs, num_epochs=1)}
    assert rows["p1-CANet_tiny-s0"] == "missing" and rows["bn-VGG_A-lr0.001-s2020"] == "done"
    # ... whose run stops at a checkpoint of the profile's epochs (lib.train keeps it): said, with what to do.
    canet = {name: (state, detail) for state, name, detail in P.study_status("smoke", source, dirs, num_epochs=1)}
    assert canet[cfg.name] == ("missing", f"{Path(dirs.checkpoints) / 'p1-CANet-s0.last.pt'} holds 1 epoch(s) of "
                                          f"p1-CANet-s0 trained with other options: num_epochs "
                                          f"({PROFILES['smoke'].num_epochs} there, 1 here): give those options to go "
                                          f"on with it, or --force to start over")
    write_finished(dirs, part1_config("CANet_tiny", "smoke", source, precision="bf16", num_epochs=1))
    assert ("done", "p1-CANet_tiny-s0", "") in P.study_status("smoke", source, dirs, precision="bf16", num_epochs=1)
    # A finished run's line says what it reached, where and how long it trained.
    result = Path(dirs.results) / "p1-CANet_tiny-s0.json"
    atomic_write_json(result, dict(read_json(result), test_acc=0.8536, device="NVIDIA H200", train_seconds=120.4,
                                   shared_gpu={"lanes": 3, "mps": True}))
    assert ("done", "p1-CANet_tiny-s0", "test 85.36%, NVIDIA H200, 120 s training, 3 lanes") in P.study_status(
        "smoke", source, dirs, precision="bf16", num_epochs=1)
    assert ("done", "p1-CANet_tiny-s0", "") in P.study_status("smoke", source, dirs, precision="bf16", num_epochs=1,
                                                              details=False)  # states only (the report's banner)
    atomic_write_json(result, dict(read_json(result), shared_gpu=None))
    assert P.done_detail(result) == "test 85.36%, NVIDIA H200, 120 s training"
    assert P.done_detail(result.with_name("no-such-run.json")) == ""
    odd = result.with_name("odd.json")  # a hand-edited file: what cannot be read as such is left out
    atomic_write_json(odd, {"test_acc": "high", "device": 3, "train_seconds": None, "shared_gpu": True})
    assert P.done_detail(odd) == ""
    atomic_write_json(odd, [1, 2])
    assert P.done_detail(odd) == ""
    # The command line: a count, then what is not done (everything with --all); nothing is computed.
    monkeypatch.setattr(P, "study_status", lambda *a, **k: [("done", "p1-X-s0", ""),
                                                            ("partial", "p1-Y-s0", "3 of 8 epochs in its checkpoint")])
    assert main(["status", "--profile", "smoke", "--data", str(tiny_source)]) == 0
    out = capsys.readouterr().out
    assert "1 of 2 done, 1 partial, 0 missing" in out and "partial  p1-Y-s0  (3 of" in out and "p1-X-s0" not in out
    main(["status", "--profile", "smoke", "--data", str(tiny_source), "--all"])
    assert "done     p1-X-s0" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the script on a machine without CUDA")
def test_gpu_script_stops_without_cuda_before_reading_the_data(tmp_path):
    """The first step's one Python start tests CUDA before it reads the data: on a CPU without ALLOW_CPU=1 the
    script stops there, with its reason, even where the data would not load (a path that does not exist)."""
    import sys

    missing = tmp_path / "no-such-data.tar.gz"
    env = dict(os.environ, OUT=str(tmp_path / "out"), PY=sys.executable, DATA=str(missing), DATA_SRC=str(missing),
               STATE_DIR=str(tmp_path / "state"), ALLOW_CPU="0")
    run = subprocess.run(["bash", str(REPO / "scripts" / "gpu_full_study.sh"), "all"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert "no CUDA device: this script is for the GPU machine (ALLOW_CPU=1: a dry run on the CPU)" in run.stdout
    assert "first step failed" not in run.stdout and "Cifar10(" not in run.stdout
    # With ALLOW_CPU=1 it reads the data, which fails here: a different reason, and nothing runs either.
    run = subprocess.run(["bash", str(REPO / "scripts" / "gpu_full_study.sh"), "all"], env=dict(env, ALLOW_CPU="1"),
                         capture_output=True, text=True, timeout=120)
    assert "the first step failed" in run.stdout and "lib bench" not in run.stdout


def test_status_says_when_missing_experiments_have_results_on_other_data(tiny_source, tmp_path, monkeypatch,
                                                                          capsys):
    import lib.cli as C
    from lib.cli import main

    source = resolve_source(tiny_source)
    dirs = output_dirs("smoke", root=tmp_path)
    monkeypatch.setattr(C, "output_dirs", lambda profile, publish=None: dirs)
    for model in ("CANet_tiny", "ResNet18"):
        write_finished(dirs, part1_config(model, "smoke", "shared"))  # the study of the JPEG copy
    assert main(["status", "--profile", "smoke", "--data", str(tiny_source)]) == 0
    out, err = capsys.readouterr()
    assert "0 of 29 done" in out and "missing  p1-CANet_tiny-s0" in out  # not this data's
    assert (f"note: 2 of these experiments have a result in {dirs.results} trained on other data (2 on shared), not "
            f"counted for --data {source}: give --data shared to see that study") in err
    write_finished(dirs, part1_config("CANet_tiny", "smoke", source))
    main(["status", "--profile", "smoke", "--data", str(tiny_source)])
    assert "note: 1 of these experiments" in capsys.readouterr().err  # the finished one replaced its file
    main(["status", "--profile", "smoke", "--data", "shared"])
    assert "note: 1 of these" in capsys.readouterr().err  # and now CANet_tiny is the other data's


def test_run_says_when_it_reused_a_finished_result(tiny_source, tmp_path, monkeypatch, capsys):
    import lib.cli as C
    from lib.cli import main

    dirs = output_dirs("smoke", root=tmp_path)
    monkeypatch.setattr(C, "output_dirs", lambda profile, publish=None: dirs)
    source = resolve_source(tiny_source)
    cfg = part1_config("CANet_tiny", "smoke", source)
    atomic_write_json(dirs.results / f"{cfg.name}.json", {"name": cfg.name, "config": cfg.to_dict(), "status": "ok",
                                                          "test_acc": 0.5})
    args = ["run", "--profile", "smoke", "--data", str(tiny_source), "--only", "p1-CANet_tiny-s0", "--quiet",
            "--num-epochs", "1"]
    assert main(args[:-2]) == 0  # (the same run: its epochs are the profile's)
    out = capsys.readouterr().out
    assert "p1-CANet_tiny-s0: finished before, reused (not trained again; --force, or in a notebook force = True or " \
           "force = [its name], retrains it)\np1-CANet_tiny-s0: ok, test acc 50.00%" in out
    assert main(args + ["--force"]) == 0 and "finished before" not in capsys.readouterr().out  # trained (1 epoch)
    # Notebooks (lib.part1.run_part1 and the BN protocol call lib.train.train) say it too, quiet or not.
    from lib.part1 import run_part1

    run_part1("smoke", source, dirs, ["CANet_tiny"], num_epochs=1, progress=False)
    assert "p1-CANet_tiny-s0: finished before, reused" in capsys.readouterr().out
    # A notebook re-runs one experiment by its name and reuses the others; a name it does not run is refused.
    before = (dirs.results / f"{cfg.name}.json").stat().st_mtime_ns
    run_part1("smoke", source, dirs, ["CANet_tiny"], seeds=[0, 1], num_epochs=1, progress=False)  # trains s1
    capsys.readouterr()
    run_part1("smoke", source, dirs, ["CANet_tiny"], seeds=[0, 1], num_epochs=1, progress=False,
              force=["p1-CANet_tiny-s1"])
    out = capsys.readouterr().out
    assert "p1-CANet_tiny-s0: finished before, reused" in out and "p1-CANet_tiny-s1: finished before" not in out
    assert (dirs.results / f"{cfg.name}.json").stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="force names 'p1-CANet_tiny-s2', not among the experiments of these models "
                                         "and seeds: p1-CANet_tiny-s0, p1-CANet_tiny-s1 "):
        run_part1("smoke", source, dirs, ["CANet_tiny"], seeds=[0, 1], force="p1-CANet_tiny-s2")


def test_a_damaged_checkpoint_is_listed_and_left_out_not_a_stop(tiny_source, tmp_path, monkeypatch, capsys):
    import lib.cli as C
    from lib.cli import main

    source = resolve_source(tiny_source)
    dirs = output_dirs("smoke", root=tmp_path)
    Path(dirs.checkpoints).mkdir(parents=True, exist_ok=True)
    (Path(dirs.checkpoints) / "p1-ResNet18-s0.last.pt").write_bytes(b"not a checkpoint")  # a partial copy
    pair = [c for c in bn_experiments("smoke", source) if c.lr == 1e-3][0]
    (Path(dirs.checkpoints) / f"{pair.name}.last.pt").write_bytes(b"\x80\x02 truncated")
    rows = {name: (state, detail) for state, name, detail in P.study_status("smoke", source, dirs)}
    for name in ("p1-ResNet18-s0", pair.name):
        assert rows[name][0] == "damaged" and "cannot be read" in rows[name][1] and "delete it" in rows[name][1]
    assert rows["p1-CANet-s0"] == ("missing", "")
    plan = P.plan_study(["part1"], source, budget_s=5000, bench=fake_bench(), dirs=dirs, profile="smoke")
    assert "p1-ResNet18-s0" not in " ".join(plan["lines"]) and "p1-CANet-s0" in " ".join(plan["lines"])
    assert "# skipped p1-ResNet18-s0: checkpoint " in P.format_plan(plan)
    plan = P.plan_study(["part2"], source, budget_s=5000, bench=fake_bench(), dirs=dirs, profile="smoke")
    assert "slices" not in plan["lines"] and pair.name not in " ".join(plan["lines"]) and plan["lines"]  # the others
    assert f"# skipped {pair.name} " in P.format_plan(plan) and "cannot be read" in P.format_plan(plan)
    monkeypatch.setattr(C, "output_dirs", lambda profile, publish=None: dirs)
    assert main(["status", "--profile", "smoke", "--data", str(tiny_source)]) == 0
    out = capsys.readouterr().out
    assert "0 of 29 done, 0 partial, 2 damaged, 27 missing" in out and "  damaged  p1-ResNet18-s0  (checkpoint" in out
    # The other run of the pair finished: still left out (the slices need both), only the damaged one named.
    other = [c for c in bn_experiments("smoke", source) if c.lr == 1e-3][1]
    write_finished(dirs, other)
    plan = P.plan_study(["part2"], source, budget_s=5000, bench=fake_bench(), dirs=dirs, profile="smoke")
    assert "slices" not in plan["lines"] and f"{pair.name}: checkpoint" in P.format_plan(plan)
    assert f"{other.name}: checkpoint" not in P.format_plan(plan)
    rows = {name: state for state, name, _ in P.study_status("smoke", source, dirs)}
    assert (rows[pair.name], rows[other.name], rows["loss slices"]) == ("damaged", "done", "missing")


def test_force_is_all_none_or_the_named_experiments():
    from lib.results import forced_names

    names = ["p1-CANet-s0", "p1-CANet-s1"]
    assert forced_names(True, names, "x") == set(names)
    assert forced_names(False, names, "x") == forced_names(None, names, "x") == forced_names([], names, "x") == set()
    assert forced_names("p1-CANet-s1", names, "x") == forced_names(("p1-CANet-s1",), names, "x") == {"p1-CANet-s1"}
    with pytest.raises(ValueError, match=r"force names 'p1-CANet-s2', not among the experiments of x: p1-CANet-s0, "
                                         r"p1-CANet-s1 \(force = True recomputes all of them\)"):
        forced_names(["p1-CANet-s1", "p1-CANet-s2"], names, "x")
