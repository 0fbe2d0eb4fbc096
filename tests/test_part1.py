"""Part 1 glue: reading results back (filters, recipe check), the main run, costs joined, notebook tables."""
from __future__ import annotations

import pytest

from lib import part1
from lib.config import NORMS
from lib.data import CLASSES
from lib.experiments import part1_config
from lib.paths import output_dirs
from lib.results import atomic_write_json, read_json


def fake_result(model: str, seed: int = 0, test_acc: float = 0.5, status: str = "ok", **config_overrides) -> dict:
    """A result dict shaped like lib.train's, for a smoke-profile run that was never trained."""
    cfg = part1_config(model, "smoke", "shared", seed, **config_overrides)
    history = [{"epoch": e, "lr": 1e-3, "optimizer": "adamw", "train_loss": 2.0 - e, "train_acc": 0.2 + e / 10,
                "val_loss": 1.9 - e, "val_acc": 0.3 + e / 10, "seconds": s} for e, s in enumerate((4.0, 2.0, 3.0))]
    return {"name": cfg.name, "status": status, "model": model, "seed": seed, "config": cfg.to_dict(),
            "data": {"label": "test data", "sha256": "abc", "num_train_used": 600}, "history": history,
            "best_val_acc": 0.5, "best_epoch": 2, "test_acc": test_acc, "train_seconds": 9.0,
            "per_class_acc": [i / 10 for i in range(10)], "device": "CPU (test)", "profile": "smoke"}


@pytest.fixture
def dirs(tmp_path):
    d = output_dirs("smoke", root=tmp_path)
    d.results.mkdir(parents=True)
    return d


def write(dirs, result: dict, suffix: str = ".json") -> None:
    atomic_write_json(dirs.results / f"{result['name']}{suffix}", result)


def test_load_results_keeps_finished_runs_of_one_recipe(dirs, capsys):
    write(dirs, fake_result("CANet_tiny", 0))
    write(dirs, fake_result("CANet_tiny", 1, status="diverged"))
    write(dirs, fake_result("ResNet18", 0))
    write(dirs, dict(fake_result("ResNet18", 1), status="incomplete"))  # not finished: left out
    write(dirs, fake_result("MobileNetV2", 0), suffix=".weights.json")  # a companion file, not a result
    (dirs.results / "p1-VGG11-s0.json").write_text("{ truncated")  # unreadable: skipped with a message
    left_out = []
    names = [r["name"] for r in part1.load_results(dirs, left_out=left_out)]
    assert names == ["p1-CANet_tiny-s0", "p1-CANet_tiny-s1", "p1-ResNet18-s0"]
    assert "skipping unreadable result" in capsys.readouterr().err
    assert left_out == ["p1-VGG11-s0 (its file cannot be read, not JSON: Expecting property name enclosed in double quotes at line 1 column 3)"]
    assert [r["name"] for r in part1.load_results(dirs, models=["ResNet18"])] == ["p1-ResNet18-s0"]
    # A run of another recipe (here: another learning rate) never enters the same table.
    write(dirs, fake_result("ShuffleNetV2", 0, lr=0.5))
    assert "p1-ShuffleNetV2-s0" not in [r["name"] for r in part1.load_results(dirs)]
    assert "leaving out p1-ShuffleNetV2-s0 (another recipe or data: lr 0.5, not 0.001)" in capsys.readouterr().err
    write(dirs, fake_result("ShuffleNetV2", 0, precision="bf16"))
    part1.load_results(dirs)
    assert "leaving out p1-ShuffleNetV2-s0 (another recipe or data: precision bf16, not auto)" in capsys.readouterr().err


def test_run_part1_says_the_reused_runs_in_one_line_and_trains_only_the_others(dirs, capsys, monkeypatch):
    import lib.train

    trained = []
    monkeypatch.setattr(lib.train, "train", lambda cfg, **kw: trained.append((cfg.name, kw["force"])) or {"new": 1})
    for model, seed in (("CANet_tiny", 0), ("CANet_tiny", 1), ("ResNet18", 0)):
        write(dirs, fake_result(model, seed))
    write(dirs, fake_result("ResNet18", 1, lr=0.5))  # another config: trained again, not reused
    out = part1.run_part1("smoke", "shared", dirs, models=["CANet_tiny", "ResNet18"], seeds=[0, 1],
                          force="p1-ResNet18-s0")
    assert [r.get("name", "new") for r in out] == ["p1-CANet_tiny-s0", "new", "p1-CANet_tiny-s1", "new"]  # by seed
    assert trained == [("p1-ResNet18-s0", True), ("p1-ResNet18-s1", False)]
    lines = [line for line in capsys.readouterr().out.splitlines() if "finished before" in line]
    assert lines == ["p1-CANet_tiny-s0, p1-CANet_tiny-s1: finished before, reused (not trained again; --force, or in "
                     "a notebook force = True or force = [its name], retrains it)"]


def test_main_run_follows_the_marker_and_explains_a_missing_run(dirs):
    write(dirs, fake_result("CANet_tiny", 2))
    with pytest.raises(FileNotFoundError, match="run notebook 01"):
        part1.main_run(dirs)  # no marker: CANet seed 0, which does not exist
    part1.mark_main(dirs, fake_result("CANet_tiny", 2))
    assert part1.main_run(dirs)["name"] == "p1-CANet_tiny-s2"
    with pytest.raises(FileNotFoundError, match="p1-CANet_light-s0.json"):
        part1.main_run(dirs, "CANet_light")
    assert part1.main_run(dirs, "CANet_tiny")["name"] == "p1-CANet_tiny-s2"  # notebook 01's model: its seed
    from lib.results import set_reuse_only

    with pytest.MonkeyPatch.context() as mp:  # a viewing call of notebook 01 leaves the record of the trained run
        mp.setenv("CIFAR10_REUSE_ONLY", "0")
        set_reuse_only(True)
        part1.mark_main(dirs, fake_result("CANet_light", 0))
        assert part1.main_run(dirs)["name"] == "p1-CANet_tiny-s2"
    write(dirs, fake_result("CANet_tiny", 0))
    assert part1.main_run(dirs, "CANet_tiny", 0)["name"] == "p1-CANet_tiny-s0"  # a seed given wins
    # The run on other data than the notebook's: refused (notebook 03 would draw and record it as this data's).
    assert part1.main_run(dirs, "CANet_tiny", 0, "shared")["name"] == "p1-CANet_tiny-s0"
    with pytest.raises(ValueError, match=r"trained on data 'shared', not 'official': set data_source = 'shared'"):
        part1.main_run(dirs, "CANet_tiny", 0, "official")
    # The same data under another name (the shared copy by its path, as a notebook's canonical_source may give it):
    # shown. A result that records no source is not refused.
    from lib.data import SHARED_COPY

    assert part1.main_run(dirs, "CANet_tiny", 0, str(SHARED_COPY))["name"] == "p1-CANet_tiny-s0"
    bare = fake_result("CANet_tiny", 1)
    del bare["config"]["data_source"]
    write(dirs, bare)
    assert part1.main_run(dirs, "CANet_tiny", 1, "official")["name"] == "p1-CANet_tiny-s1"


def test_a_gpu_cost_measurement_is_kept_on_a_cpu(dirs):
    gpu = {"model": "CANet_tiny", "flops": 1, "infer_ips": 9e4, "infer_batch": part1.GPU_COST_BATCH,
           "device_name": "NVIDIA H200"}
    atomic_write_json(part1.cost_path(dirs, "CANet_tiny"), gpu)
    assert part1.compute_costs(dirs, ["CANet_tiny"], device="cpu") == [gpu]  # the report of a GPU study, on a CPU
    assert read_json(part1.cost_path(dirs, "CANet_tiny")) == gpu
    redone = part1.compute_costs(dirs, ["CANet_tiny"], device="cpu", batch_size=2, iters=1)  # asked for: measured
    assert redone[0]["infer_batch"] == 2 and redone[0]["device_name"] != "NVIDIA H200"
    shown = part1.costs_frame(redone)  # notebook 02's view of them
    assert list(shown.index) == ["CANet_tiny"] and shown.loc["CANet_tiny", "parameters (M)"] == 0.4
    assert shown.loc["CANet_tiny", "forward GFLOPs / image"] == pytest.approx(0.136, abs=1e-3)
    assert shown.loc["CANet_tiny", "at batch"] == 2 and shown.loc["CANet_tiny", "device"] == redone[0]["device_name"]
    assert read_json(part1.cost_path(dirs, "CANet_tiny"))["infer_batch"] == 2


def test_reuse_only_shows_any_recorded_cost_and_measures_none(dirs, monkeypatch):
    gpu = {"model": "CANet_tiny", "flops": 1, "infer_ips": 9e4, "infer_batch": part1.GPU_COST_BATCH,
           "device_name": "NVIDIA H200"}
    atomic_write_json(part1.cost_path(dirs, "CANet_tiny"), gpu)
    monkeypatch.setenv("CIFAR10_REUSE_ONLY", "1")
    # A batch of 2 would otherwise re-measure it (the test above); viewing shows what was recorded.
    assert part1.compute_costs(dirs, ["CANet_tiny"], device="cpu", batch_size=2, iters=1) == [gpu]
    with pytest.raises(ValueError, match="reuse_only is on .*measuring the cost of CANet_light would have to run"):
        part1.compute_costs(dirs, ["CANet_tiny", "CANet_light"], device="cpu", batch_size=2, iters=1)
    assert not part1.cost_path(dirs, "CANet_light").exists()


def test_with_costs_joins_the_cost_file_and_the_median_epoch_throughput(dirs):
    atomic_write_json(part1.cost_path(dirs, "CANet_tiny"), {"model": "CANet_tiny", "flops": 123, "infer_ips": 45.0})
    atomic_write_json(part1.cost_path(dirs, "VGG11"), {"model": "VGG11", "flops": 9, "infer_ips": 1.0})
    assert set(part1.load_costs(dirs)) == {"CANet_tiny", "VGG11"}
    costs = part1.load_costs(dirs, models=["CANet_tiny", "ResNet18"])  # notebook 02's models: its table's rows
    assert set(costs) == {"CANet_tiny"}
    tiny, resnet = part1.with_costs([fake_result("CANet_tiny"), fake_result("ResNet18")], costs)
    assert tiny["cost"]["flops"] == 123 and tiny["cost"]["infer_ips"] == 45.0
    assert tiny["cost"]["train_ips"] == pytest.approx(600 / 3.0)  # median of 4, 2, 3 seconds
    assert resnet["cost"]["flops"] is None and resnet["cost"]["train_ips"] == pytest.approx(200.0)


def test_notebook_tables_hold_the_result_values():
    r = fake_result("CANet_tiny", test_acc=0.625)
    runs = part1.runs_frame([r, dict(fake_result("ResNet18"), test_acc=None)])
    assert list(runs.columns) == list(part1.RUN_COLUMNS.values()) and runs["test acc (%)"].tolist()[0] == 62.5
    assert runs["test acc (%)"].isna().tolist() == [False, True] and runs["run"].tolist()[0] == r["name"]
    history = part1.history_frame(r)
    assert history.index.tolist() == [1, 2, 3]  # counted from 1, as in the report and the figures
    assert history.loc[3, "val acc (%)"] == pytest.approx(round(100 * r["history"][2]["val_acc"], 2))
    assert history.loc[3, "val loss"] == pytest.approx(round(r["history"][2]["val_loss"], 4))
    assert history.loc[3, "lr"] == r["history"][2]["lr"] and "optimizer" in history.columns
    per_class = part1.per_class_frame(r)
    assert per_class.index.tolist() == list(CLASSES)
    assert per_class["test accuracy (%)"].tolist() == pytest.approx([10.0 * i for i in range(10)])
    with pytest.raises(ValueError, match="no per-class test accuracy"):
        part1.per_class_frame(dict(r, per_class_acc=None, status="diverged"))
    assert part1.normalization(r) == NORMS["imagenet"]
    assert part1.normalization(fake_result("CANet_tiny", norm="half")) == NORMS["half"]
    assert list(history.columns) == ["lr", "optimizer", "train loss", "train acc (%)", "val loss", "val acc (%)", "seconds"]


def test_a_run_on_other_data_is_left_out_of_the_table(dirs, capsys):
    write(dirs, fake_result("CANet_tiny", 0))
    write(dirs, fake_result("ResNet18", 0))
    other = fake_result("VGG11", 0)
    other["data"] = dict(other["data"], sha256="def")  # the same recipe, other images
    write(dirs, other)
    left_out = []
    assert [r["name"] for r in part1.load_results(dirs, left_out=left_out)] == ["p1-CANet_tiny-s0", "p1-ResNet18-s0"]
    assert left_out == ["p1-VGG11-s0 (another recipe or data: other data)"]
    assert "leaving out p1-VGG11-s0 (another recipe or data: other data)" in capsys.readouterr().err


def test_training_throughput_is_over_the_median_epoch_not_the_mean():
    r = fake_result("CANet_tiny")
    r["history"] = [dict(h, seconds=s) for h, s in zip(r["history"], (4.0, 2.0, 9.0))]  # median 4, mean 5
    (joined,) = part1.with_costs([r], {})
    assert joined["cost"]["train_ips"] == pytest.approx(600 / 4.0)


def test_notebook_tables_round_losses_to_four_decimals():
    r = fake_result("CANet_tiny")
    r["history"][2] = dict(r["history"][2], val_loss=0.123456, train_loss=1.98766)
    history = part1.history_frame(r)
    assert history.loc[3, "val loss"] == 0.1235 and history.loc[3, "train loss"] == 1.9877


def test_per_class_accuracy_is_averaged_over_the_successful_runs_only():
    ok = [fake_result("CANet_tiny", seed) for seed in (1, 0)]
    diverged = dict(fake_result("CANet_tiny", 2, status="diverged"), per_class_acc=[0.0] * 10)
    runs, mean = part1.per_class_by_model(ok + [diverged])["CANet_tiny"]
    assert [r["seed"] for r in runs] == [0, 1]  # by seed; the diverged run left out
    assert mean == pytest.approx([i / 10 for i in range(10)])
