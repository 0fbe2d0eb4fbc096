"""Training: recipe schedule, learning on a fixed batch, result files, reuse, resume, divergence."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lib.train as T
from lib.config import TrainConfig
from lib.experiments import bn_config, part1_config
from lib.models import build
from lib.paths import output_dirs


def tiny_cfg(source, **kw) -> TrainConfig:
    """A seconds-long CPU run of CANet_tiny on the tests' tiny image folder."""
    base = dict(name="tiny", model="CANet_tiny", profile="smoke", data_source=source, num_epochs=3,
                batch_size=32, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def strip_seconds(history):
    """History rows without wall-clock times (the only thing allowed to differ between two runs)."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_recipe_schedule_epoch_by_epoch():
    cfg = part1_config("CANet", "full")
    assert cfg.num_epochs == 70 and cfg.batch_size == 256 and cfg.label_smoothing == 0.1
    assert cfg.weight_decay == 1e-3 and cfg.switch_epoch == 56  # int(0.8 * 70)
    kinds = [T.optimizer_at(cfg, e) for e in range(70)]
    assert kinds == ["adamw"] * 56 + ["sgd"] * 14
    for e in range(70):  # ExponentialLR(0.96) once per epoch, continuing across the switch
        assert T.lr_at(cfg, e) == pytest.approx(1e-3 * 0.96 ** e, rel=1e-12)
    bn = bn_config("VGG_A", 1e-3, "full")
    assert {T.optimizer_at(bn, e) for e in range(bn.num_epochs)} == {"adam"}
    assert T.lr_at(bn, 49) == pytest.approx(1e-3)


def test_switch_creates_sgd_at_reached_lr():
    cfg = part1_config("CANet_tiny", "smoke").replace(num_epochs=10)
    sgd = T.make_optimizer(T.optimizer_at(cfg, 8), build("CANet_tiny").parameters(), cfg, T.lr_at(cfg, 8),
                           torch.device("cpu"))
    assert isinstance(sgd, torch.optim.SGD)
    g = sgd.param_groups[0]
    assert g["momentum"] == 0.9 and g["weight_decay"] == 1e-3 and g["lr"] == pytest.approx(1e-3 * 0.96 ** 8)


def test_split_data_holds_out_a_tenth_and_subsets_each_part(tiny_source):
    full = T.split_data(tiny_cfg(tiny_source))
    assert (len(full.y_train), len(full.y_val), len(full.y_test)) == (72, 8, 50)  # 80 training images: 10% held out
    assert full.X_train.shape == (72, 32, 32, 3) and full.X_train.dtype == "uint8"
    train_rows = {x.tobytes() for x in full.X_train}
    assert not any(x.tobytes() in train_rows for x in full.X_val)  # validation images are not trained on
    small = T.split_data(tiny_cfg(tiny_source, num_train=20, num_val=4, num_test=6))
    assert (len(small.y_train), len(small.y_val), len(small.y_test)) == (20, 4, 6)
    with pytest.raises(ValueError, match="validation set of tiny is empty"):
        T.split_data(tiny_cfg(tiny_source, num_val=0))


def test_the_loaders_normalise_with_the_recipes_constants(tiny_source):
    """Part 1: ImageNet's mean and std (STUDY.md); Part 2: 0.5 / 0.5; the same for training, validation and test."""
    assert part1_config("CANet", "full").norm == "imagenet" and bn_config("VGG_A", 1e-3, "full").norm == "half"
    for norm, mean, std in (("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                            ("half", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))):
        loaders, _ = T.prepare_data(tiny_cfg(tiny_source, norm=norm), torch.device("cpu"))
        for loader in loaders:
            assert loader._mean.flatten().tolist() == pytest.approx(mean)
            assert loader._std.flatten().tolist() == pytest.approx(std)


def test_new_model_weights_depend_on_the_seed_only_and_copy_state_is_a_snapshot(tiny_source):
    cpu = torch.device("cpu")
    a, b = T.new_model(tiny_cfg(tiny_source, seed=3), cpu), T.new_model(tiny_cfg(tiny_source, seed=3), cpu)
    c = T.new_model(tiny_cfg(tiny_source, seed=4), cpu)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    first = next(iter(sa))
    assert not torch.equal(sa[first], sc[first])
    conv = next(m.weight for m in a.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.is_contiguous(memory_format=torch.channels_last)
    snapshot = T.copy_state(a)
    assert set(snapshot) == set(sa)  # buffers too (BatchNorm running statistics)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(1.0)
        for name, buf in a.named_buffers():
            if buf.dtype.is_floating_point:
                buf.add_(1.0)
    after = a.state_dict()
    assert all(torch.equal(snapshot[k] + 1.0, after[k]) for k in snapshot if snapshot[k].dtype.is_floating_point)


def test_epoch_row_divides_the_device_sums_by_the_images_seen():
    stats = {"loss_sum": torch.tensor(30.0), "correct": torch.tensor(12.0), "n": 20}
    row = T.epoch_row(4, 1e-3, "adamw", stats, {"loss": 0.5, "acc": 0.75}, 2.5)
    assert row == {"epoch": 4, "lr": 1e-3, "optimizer": "adamw", "train_loss": 1.5, "train_acc": 0.6,
                   "val_loss": 0.5, "val_acc": 0.75, "seconds": 2.5}


def test_a_few_steps_lower_the_loss_and_change_weights():
    torch.manual_seed(0)
    model = build("CANet_tiny")
    X, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    cfg = part1_config("CANet_tiny", "smoke")
    opt = T.make_optimizer("adamw", model.parameters(), cfg, 1e-3, torch.device("cpu"))
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_result_file_contents_and_reuse(tiny_source, tmp_path, monkeypatch):
    dirs = output_dirs("smoke", root=tmp_path)
    cfg = tiny_cfg(tiny_source, num_epochs=2)
    result = T.train(cfg, dirs=dirs, progress=False)
    on_disk = json.loads((dirs.results / "tiny.json").read_text())
    assert on_disk["config"] == cfg.to_dict() and on_disk["status"] == "ok"
    for key in ("name", "model", "num_params", "data", "device", "torch", "git_commit", "seed", "history",
                "best_val_acc", "test_acc", "train_seconds", "per_class_acc", "confusion"):
        assert key in on_disk, key
    assert on_disk["num_params"] == 396_155 and on_disk["data"]["kind"] == "image-folder"
    assert on_disk["data"]["num_train_used"] == 72 and on_disk["data"]["num_val_used"] == 8
    assert [r["epoch"] for r in on_disk["history"]] == [0, 1]
    assert {"lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"} <= set(on_disk["history"][0])
    assert 0.0 <= on_disk["test_acc"] <= 1.0 and len(on_disk["per_class_acc"]) == 10
    assert sum(map(sum, on_disk["confusion"])) == 50  # the whole (tiny) test set, once
    assert on_disk["best_val_acc"] == max(r["val_acc"] for r in on_disk["history"])
    assert (dirs.checkpoints / "tiny.pt").exists() and not (dirs.checkpoints / "tiny.last.pt").exists()
    assert any((dirs.runs / "tiny").iterdir())  # TensorBoard event file
    assert result["test_acc"] == on_disk["test_acc"]

    # Same config: reused without training; another config: trained again.
    def boom(*a, **k):
        raise AssertionError("should have reused the result")

    monkeypatch.setattr(T, "_train_epoch", boom)
    assert T.train(cfg, dirs=dirs, progress=False)["history"] == on_disk["history"]
    with pytest.raises(AssertionError, match="reused"):
        T.train(cfg.replace(seed=1), dirs=dirs, progress=False)
    with pytest.raises(AssertionError, match="reused"):
        T.train(cfg, dirs=dirs, progress=False, force=True)
    # reuse_only (the notebooks' viewing switch): the finished result is read back, anything else refuses to train.
    from lib.results import reuse_only, set_reuse_only

    monkeypatch.setenv("CIFAR10_REUSE_ONLY", "0")  # restored after the test, whatever set_reuse_only writes
    set_reuse_only(True)
    assert T.train(cfg, dirs=dirs, progress=False)["history"] == on_disk["history"]
    for other, force, why in ((cfg.replace(seed=1), False, "no finished result in .* matches"),
                              (cfg, True, "force asks to compute it again")):
        with pytest.raises(ValueError, match=rf"reuse_only is on .*training tiny would have to run: {why}.*"
                                             r"reuse_only = False"):
            T.train(other, dirs=dirs, progress=False, force=force)
    set_reuse_only(None)  # None (the notebooks' default) leaves the setting as it is
    with pytest.raises(ValueError, match="reuse_only is on"):
        T.train(cfg.replace(seed=1), dirs=dirs, progress=False)
    for value, on in (("yes", True), ("On", True), ("false", False), ("0", False), ("", False)):
        monkeypatch.setenv("CIFAR10_REUSE_ONLY", value)
        assert reuse_only() is on, value
    set_reuse_only(False)
    with pytest.raises(AssertionError, match="reused"):
        T.train(cfg.replace(seed=1), dirs=dirs, progress=False)


def test_resume_after_interruption_equals_uninterrupted_run(tiny_source, tmp_path):
    # 4 epochs crosses the AdamW -> SGD switch (epoch 3), so the optimiser state is part of the test.
    cfg = tiny_cfg(tiny_source, num_epochs=4)
    full = T.train(cfg, dirs=output_dirs("smoke", root=tmp_path / "a"), progress=False)
    dirs_b = output_dirs("smoke", root=tmp_path / "b")
    part = T.train(cfg, dirs=dirs_b, progress=False, max_epochs_this_call=2)
    assert part["status"] == "incomplete" and (dirs_b.checkpoints / "tiny.last.pt").exists()
    assert part["stopped_by"] == "max_epochs_this_call"  # not the time limit (lib run starts the next run)
    resumed = T.train(cfg, dirs=dirs_b, progress=False)
    assert [r["optimizer"] for r in full["history"]] == ["adamw"] * 3 + ["sgd"]
    assert strip_seconds(resumed["history"]) == strip_seconds(full["history"])
    assert resumed["test_acc"] == full["test_acc"]
    assert (full["epochs_this_call"], resumed["epochs_this_call"]) == (4, 2)  # what lib.plan.estimate_check reads
    assert "devices" not in resumed  # one machine trained it all


def test_a_forced_rerun_stopped_part_way_goes_on_without_force(tiny_source, tmp_path, capsys):
    """A re-run with force deletes the finished run's checkpoints, marks the re-run and trains it again; stopped
    part-way, the finished result is no longer reused (by train, run_part1, the plan and the guards alike): the same
    run without force goes on with the re-run and ends as an uninterrupted run would. A resumable checkpoint beside
    a finished result without the marker (say, a run interrupted here whose result came from another machine) leaves
    the result standing."""
    from lib.results import atomic_write_json, rerun_marker, rerun_pending, reusable_run

    cfg = tiny_cfg(tiny_source, num_epochs=3)
    dirs = output_dirs("smoke", root=tmp_path)
    first = T.train(cfg, dirs=dirs, progress=False)
    assert not rerun_marker(dirs, "tiny").exists() and reusable_run(cfg, dirs) == first
    part = T.train(cfg, dirs=dirs, progress=False, force=True, max_epochs_this_call=1)
    assert part["status"] == "incomplete" and rerun_pending(cfg, dirs) and reusable_run(cfg, dirs) is None
    assert json.loads((dirs.results / "tiny.json").read_text())["epochs_this_call"] == 3  # still the finished one
    capsys.readouterr()
    done = T.train(cfg, dirs=dirs)
    assert (f"[tiny] resuming after epoch 1 of 3 ({dirs.checkpoints / 'tiny.last.pt'}): a re-run with force, whose "
            f"result replaces the finished one" in capsys.readouterr().out)
    assert done["epochs_this_call"] == 2 and strip_seconds(done["history"]) == strip_seconds(first["history"])
    assert json.loads((dirs.results / "tiny.json").read_text())["epochs_this_call"] == 2  # the re-run's result
    assert not rerun_marker(dirs, "tiny").exists() and T.train(cfg, dirs=dirs, progress=False) == done  # reused
    # Without the marker a same-config checkpoint beside the result does not replace it.
    T._save_checkpoint(dirs.checkpoints / "tiny.last.pt", {"config": cfg.to_dict(), "epoch": 0})
    assert not rerun_pending(cfg, dirs) and T.train(cfg, dirs=dirs, progress=False) == done
    # A marker of another config, or one without its checkpoint, changes nothing either.
    atomic_write_json(rerun_marker(dirs, "tiny"), {"config": cfg.replace(seed=5).to_dict()})
    assert not rerun_pending(cfg, dirs)
    atomic_write_json(rerun_marker(dirs, "tiny"), {"config": cfg.to_dict()})
    assert rerun_pending(cfg, dirs)
    (dirs.checkpoints / "tiny.last.pt").unlink()  # "to keep that result instead, delete the checkpoint"
    assert not rerun_pending(cfg, dirs) and reusable_run(cfg, dirs) == done


def test_a_run_resumed_on_another_machine_names_both(tiny_source, tmp_path, monkeypatch, capsys):
    """The first call's epochs on one device, the rest on another: the result's `devices` lists both (its report
    context line too), with a note when the run resumes; `device` is the last call's."""
    from lib.report import context_line

    cfg = tiny_cfg(tiny_source, num_epochs=3)
    dirs = output_dirs("smoke", root=tmp_path)
    monkeypatch.setattr(T, "device_name", lambda device: "CPU (machine A)")
    T.train(cfg, dirs=dirs, progress=False, max_epochs_this_call=2)
    monkeypatch.setattr(T, "device_name", lambda device: "CPU (machine B)")
    done = T.train(cfg, dirs=dirs, progress=True)
    assert done["devices"] == ["CPU (machine A)", "CPU (machine B)"]
    assert "its first 2 epoch(s) trained on CPU (machine A), the rest trains on CPU (machine B)" in capsys.readouterr().out
    assert "device: CPU (machine A); CPU (machine B)" in context_line([done])


def test_resume_after_the_optimiser_switch_restores_sgd_and_reads_the_checkpoint_on_the_cpu(tiny_source, tmp_path,
                                                                                           monkeypatch):
    # Switch at int(0.4 x 5) = 2: the call stops after epoch 2, the first SGD one, so SGD's momentum is restored.
    cfg = tiny_cfg(tiny_source, num_epochs=5, switch_frac=0.4)
    full = T.train(cfg, dirs=output_dirs("smoke", root=tmp_path / "a"), progress=False)
    dirs = output_dirs("smoke", root=tmp_path / "b")
    assert T.train(cfg, dirs=dirs, progress=False, max_epochs_this_call=3)["status"] == "incomplete"
    state = T.read_checkpoint(dirs.checkpoints / "tiny.last.pt")
    assert state["optimizer_kind"] == "sgd" and any("momentum_buffer" in s for s in state["optimizer"]["state"].values())
    reads = []
    real = T.read_checkpoint
    monkeypatch.setattr(T, "read_checkpoint", lambda path, *a, **k: reads.append((Path(path).name, a, k)) or real(
        path, *a, **k))
    resumed = T.train(cfg, dirs=dirs, progress=False)
    assert [r["optimizer"] for r in full["history"]] == ["adamw"] * 2 + ["sgd"] * 3
    assert strip_seconds(resumed["history"]) == strip_seconds(full["history"]) and resumed["test_acc"] == full["test_acc"]
    # Read where it was saved (the CPU), not onto the training device: on CUDA, map_location=device made the CPU
    # random state a CUDA tensor, which torch.set_rng_state refuses (TypeError), so every resume there failed.
    assert ("tiny.last.pt", (), {}) in reads


def test_the_fast_path_never_leaves_a_best_checkpoint_ahead_of_the_resumable_one(tiny_source, tmp_path, monkeypatch):
    # The CUDA fast path writes the resumable checkpoint at most every LAST_CKPT_EVERY_S: a process killed after the
    # last epoch (here: while reading the best checkpoint for the test pass) must resume without training again,
    # and not find best.pt newer than the epochs it would replay (which ended in a RuntimeError).
    monkeypatch.setattr(T, "_gpu_fast_path", lambda device: True)
    monkeypatch.setattr(T, "LAST_CKPT_EVERY_S", 1e9)
    cfg = tiny_cfg(tiny_source, num_epochs=3)
    dirs = output_dirs("smoke", root=tmp_path)
    real = T.read_checkpoint

    def killed(path, *a, **k):
        if Path(path).name == "tiny.pt":
            raise KeyboardInterrupt("killed after the last epoch")
        return real(path, *a, **k)

    monkeypatch.setattr(T, "read_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        T.train(cfg, dirs=dirs, progress=False)
    best, last = real(dirs.checkpoints / "tiny.pt"), real(dirs.checkpoints / "tiny.last.pt")
    assert last["epoch"] == 2 and best["epoch"] == last["best"]["epoch"] <= last["epoch"]
    monkeypatch.setattr(T, "read_checkpoint", real)
    done = T.train(cfg, dirs=dirs, progress=False)
    assert done["status"] == "ok" and done["epochs_this_call"] == 0 and len(done["history"]) == 3


def test_a_resumed_optimiser_uses_this_devices_kernels(tiny_source, tmp_path, monkeypatch):
    cfg = tiny_cfg(tiny_source, num_epochs=2)
    dirs = output_dirs("smoke", root=tmp_path)
    T.train(cfg, dirs=dirs, progress=False, max_epochs_this_call=1)
    path = dirs.checkpoints / "tiny.last.pt"
    state = T.read_checkpoint(path)
    for group in state["optimizer"]["param_groups"]:  # as a checkpoint written on CUDA records them
        group["fused"] = True
    torch.save(state, path)
    made = []
    real = T.make_optimizer
    monkeypatch.setattr(T, "make_optimizer", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    assert T.train(cfg, dirs=dirs, progress=False)["status"] == "ok"
    assert made and all(g["fused"] is None for opt in made for g in opt.param_groups)  # the CPU's: not fused


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_run_on_cuda_resumes_from_its_checkpoint(tiny_source, tmp_path):
    cfg = tiny_cfg(tiny_source, num_epochs=2, device="cuda")
    dirs = output_dirs("smoke", root=tmp_path)
    assert T.train(cfg, dirs=dirs, progress=False, max_epochs_this_call=1)["status"] == "incomplete"
    done = T.train(cfg, dirs=dirs, progress=False)
    assert done["status"] == "ok" and done["epochs_this_call"] == 1 and len(done["history"]) == 2


@pytest.mark.parametrize("gpu_bookkeeping", [False, True])
def test_a_time_limit_stops_resumably_and_the_next_call_goes_on(tiny_source, tmp_path, monkeypatch, gpu_bookkeeping):
    # gpu_bookkeeping: the CUDA fast path's, which writes the resumable checkpoint only every 120 s or on a stop.
    monkeypatch.setattr(T, "_gpu_fast_path", lambda device: gpu_bookkeeping)
    cfg = tiny_cfg(tiny_source, num_epochs=2)
    dirs = output_dirs("smoke", root=tmp_path)
    assert T.resume_epoch(cfg, dirs) == 0
    assert T.train(cfg, dirs=dirs, progress=False, stop_by=time.perf_counter() - 1) == {
        "name": "tiny", "status": "incomplete", "epochs_done": 0,
        "stopped_by": "time_limit"}  # out of time before it began: nothing run
    # An hour left, but an epoch is judged to need more (its time x STOP_MARGIN + the reserve): stop after one.
    monkeypatch.setattr(T, "STOP_RESERVE_S", 3600.0)
    part = T.train(cfg, dirs=dirs, progress=False, stop_by=time.perf_counter() + 3600)
    assert part == {"name": "tiny", "status": "incomplete", "epochs_done": 1, "stopped_by": "time_limit"}
    assert T.resume_epoch(cfg, dirs) == 1 and T.resume_epoch(cfg.replace(seed=1), dirs) == 0
    assert not (dirs.results / "tiny.json").exists()
    done = T.train(cfg, dirs=dirs, progress=False, stop_by=time.perf_counter() + 3600)  # the last epoch: no stop
    assert done["status"] == "ok" and len(done["history"]) == 2 and done["test_acc"] is not None
    assert T.resume_epoch(cfg, dirs) == 0  # finished: the resumable checkpoint is gone
    monkeypatch.setattr(T, "STOP_RESERVE_S", 10.0)
    later = T.train(cfg.replace(seed=1), dirs=dirs, progress=False, stop_by=time.perf_counter() + 3600)
    assert later["status"] == "ok" and len(later["history"]) == 2  # a limit far away changes nothing


def test_a_checkpoint_of_other_options_is_kept_and_a_stale_one_replaced_with_a_note(tiny_source, tmp_path, capsys):
    cfg = tiny_cfg(tiny_source, num_epochs=2)
    dirs = output_dirs("smoke", root=tmp_path)
    T.train(cfg, dirs=dirs, progress=False, max_epochs_this_call=1)
    ckpt = dirs.checkpoints / "tiny.last.pt"
    before = ckpt.read_bytes()
    # Other epochs (--num-epochs) or precision: the user's options, whose epochs the same options would resume.
    with pytest.raises(ValueError, match=r"holds 1 epoch\(s\) of tiny trained with other options: num_epochs \(2 "
                                         r"there, 3 here\).*use its options again.*--force"):
        T.train(cfg.replace(num_epochs=3), dirs=dirs, progress=False)
    assert ckpt.read_bytes() == before and T.resume_epoch(cfg, dirs) == 1 and not (dirs.results / "tiny.json").exists()
    # Anything else (here the learning rate: older code or another recipe): stale, replaced, and said so.
    capsys.readouterr()
    fresh = T.train(cfg.replace(lr=cfg.lr / 2), dirs=dirs, progress=False)
    assert fresh["status"] == "ok" and len(fresh["history"]) == 2
    assert f"note: {ckpt} (1 epoch(s)) was written by another configuration of tiny (lr (" in capsys.readouterr().out
    # With force, the user's other options replace the checkpoint too.
    T.train(cfg, dirs=dirs, progress=False, max_epochs_this_call=1)
    forced = T.train(cfg.replace(num_epochs=3), dirs=dirs, progress=False, force=True, max_epochs_this_call=1)
    assert forced["status"] == "incomplete" and T.resume_epoch(cfg.replace(num_epochs=3), dirs) == 1


def test_a_checkpoint_on_other_data_is_one_of_the_users_options(tiny_source):
    cfg = tiny_cfg(tiny_source, num_epochs=2)
    state = {"config": cfg.replace(data_source="official").to_dict(), "epoch": 0}
    changed, chosen = T.checkpoint_clash(state, cfg)
    assert chosen and changed == [f"data_source (official there, {cfg.to_dict()['data_source']} here)"]
    assert T.clash_summary(Path("tiny.last.pt"), state, cfg).startswith(
        "tiny.last.pt holds 1 epoch(s) of tiny trained with other options: data_source (official there")
    assert T.checkpoint_clash({"config": cfg.replace(seed=9).to_dict()}, cfg) == (["seed (9 there, 0 here)"], False)


def test_each_epoch_trains_at_its_lr_the_first_best_epoch_is_kept_and_per_class_acc_is_per_true_class(
        tiny_source, tmp_path, monkeypatch):
    cfg = tiny_cfg(tiny_source, num_epochs=3, num_train=20, num_val=4, num_test=6)  # 1 step an epoch; SGD from 2
    lrs, real_epoch = [], T._train_epoch

    def spy(model, head, optimizer, *a, **k):
        lrs.append({g["lr"] for g in optimizer.param_groups})
        return real_epoch(model, head, optimizer, *a, **k)

    val_accs = iter([0.25, 0.5, 0.5])  # a tie: the first epoch that reached the best is the one kept
    conf = torch.zeros(10, 10, dtype=torch.long)  # rows: true class; the test pass
    conf[0, 0], conf[0, 1], conf[1, 1], conf[2, 1] = 3, 1, 1, 1

    seen = []  # (images evaluated, the model's weights then) per call: validation each epoch, then the test

    def fake_evaluate(model, loader, cfg, device, num_classes=10):
        seen.append((len(loader.y), [p.detach().clone() for p in model.parameters()]))
        acc = next(val_accs, None)
        if acc is None:
            return {"loss": 1.0, "acc": 4 / 6, "confusion": conf}
        return {"loss": 1.0, "acc": acc, "confusion": torch.zeros(10, 10, dtype=torch.long)}

    monkeypatch.setattr(T, "_train_epoch", spy)
    monkeypatch.setattr(T, "evaluate", fake_evaluate)
    # A stand-in for CANet_tiny (seconds per step on a busy CPU): this is about the bookkeeping, not the network.
    small = lambda name: torch.nn.Sequential(torch.nn.AvgPool2d(8), torch.nn.Flatten(),  # noqa: E731
                                             torch.nn.Linear(48, 10))
    monkeypatch.setattr(T, "build", small)
    monkeypatch.setattr(T, "model_summary", lambda name, batch_size=1: name)
    result = T.train(cfg, dirs=output_dirs("smoke", root=tmp_path), progress=False)
    assert [len(s) for s in lrs] == [1, 1, 1]
    assert [s.pop() for s in lrs] == pytest.approx([T.lr_at(cfg, e) for e in range(3)], rel=1e-12)
    assert [r["optimizer"] for r in result["history"]] == ["adamw", "adamw", "sgd"]
    assert result["best_epoch"] == 1 and result["best_val_acc"] == 0.5
    assert result["per_class_acc"] == pytest.approx([0.75, 1.0, 0.0] + [0.0] * 7)
    assert result["confusion"] == conf.tolist()
    assert [n for n, _ in seen] == [4, 4, 4, 6]  # the validation images each epoch, the test images once
    best, last, tested = seen[1][1], seen[2][1], seen[3][1]
    assert all(torch.equal(a, b) for a, b in zip(tested, best))  # the test pass: the best epoch's weights
    assert not all(torch.equal(a, b) for a, b in zip(tested, last))


def test_resumed_result_records_the_commit_it_started_with(tiny_source, tmp_path, monkeypatch):
    cfg = tiny_cfg(tiny_source, num_epochs=2)
    dirs = output_dirs("smoke", root=tmp_path)
    monkeypatch.setattr(T, "git_commit", lambda: "aaaa1111")
    T.train(cfg, dirs=dirs, progress=False, max_epochs_this_call=1)
    monkeypatch.setattr(T, "git_commit", lambda: "bbbb2222")
    monkeypatch.setattr(T, "environment_info", lambda device: {"device": "cpu", "git_commit": "bbbb2222"})
    done = T.train(cfg, dirs=dirs, progress=False)
    assert (done["git_commit_start"], done["git_commit"]) == ("aaaa1111", "bbbb2222")
    fresh = T.train(cfg.replace(seed=1), dirs=dirs, progress=False)
    assert fresh["git_commit_start"] == "bbbb2222"


def _scalars(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tensorboard_shows_each_epoch_once_after_a_resume(tiny_source, tmp_path):
    cfg = tiny_cfg(tiny_source, num_epochs=3)
    dirs = output_dirs("smoke", root=tmp_path)
    T.train(cfg, dirs=dirs, progress=False, max_epochs_this_call=1)
    # A call that logged epoch 1 to TensorBoard but died before its checkpoint: epoch 1 is replayed on resume.
    # (Event files are read in name order, whose first key is the second of creation: one writer per second.)
    from torch.utils.tensorboard import SummaryWriter
    time.sleep(1.05)
    crashed = SummaryWriter(str(dirs.runs / "tiny"))
    fake = {"train_loss": 9.0, "train_acc": 0.0, "val_loss": 9.0, "val_acc": -1.0, "lr": 0.0, "seconds": 0.0}
    T._log_epoch(crashed, build("CANet_tiny"), fake, torch.full((3,), 9.0), torch.zeros(3), 1, 3)
    crashed.add_scalar("test/acc", -1.0, 9)  # as if it had died after the test evaluation
    crashed.close()
    time.sleep(1.05)
    result = T.train(cfg, dirs=dirs, progress=False)
    val = _scalars(dirs.runs / "tiny", "epoch/val_acc")
    assert [step for step, _ in val] == [2, 5, 8]  # 3 steps per epoch, each epoch at its last step
    assert [v for _, v in val] == pytest.approx([r["val_acc"] for r in result["history"]])
    assert [v for _, v in _scalars(dirs.runs / "tiny", "epoch/epoch")] == [0, 1, 2]
    assert len(_scalars(dirs.runs / "tiny", "step/train_loss")) == 9
    assert 9.0 not in [v for _, v in _scalars(dirs.runs / "tiny", "step/train_loss")]
    assert _scalars(dirs.runs / "tiny", "test/acc") == [(9, pytest.approx(result["test_acc"]))]


def test_record_steps_writes_per_step_series(tiny_source, tmp_path):
    dirs = output_dirs("smoke", root=tmp_path)
    cfg = tiny_cfg(tiny_source, model="VGG_A", num_epochs=1, optimizer="adam", lr_gamma=1.0, augment=False,
                   label_smoothing=0.0, norm="half", record_steps=True)
    T.train(cfg, dirs=dirs, progress=False)
    steps = json.loads((dirs.results / "tiny.steps.json").read_text())
    assert len(steps["loss"]) == len(steps["grad_max"]) == len(steps["grad_min"]) == 3  # ceil(72 / 32)
    assert all(lo <= hi for lo, hi in zip(steps["grad_min"], steps["grad_max"]))


class NaNAfter(torch.nn.Module):
    """Wraps a model; its outputs become NaN from the `after`-th training call on (a divergence on demand)."""

    def __init__(self, model, after):
        super().__init__()
        self.model, self.after, self.calls = model, after, 0

    def forward(self, x):
        out = self.model(x)
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                out = out * float("nan")
        return out


def test_nan_loss_stops_with_a_diverged_result(tiny_source, tmp_path, monkeypatch, capsys):
    real_build = T.build
    monkeypatch.setattr(T, "build", lambda name: NaNAfter(real_build(name), after=4))  # 3 steps/epoch
    dirs = output_dirs("smoke", root=tmp_path)
    result = T.train(tiny_cfg(tiny_source, num_epochs=3), dirs=dirs, progress=False)
    assert result["status"] == "diverged" and "non-finite" in result["message"]
    assert "epoch 1, step 4" in result["message"]
    assert len(result["history"]) == 1  # the healthy first epoch is kept
    assert result["test_acc"] is not None  # the best (epoch 0) checkpoint is still evaluated
    assert json.loads((dirs.results / "tiny.json").read_text())["status"] == "diverged"
    assert "DIVERGED" in capsys.readouterr().out


def test_bad_config_values_are_rejected():
    with pytest.raises(ValueError, match="unknown optimizer"):
        TrainConfig(name="x", model="CANet", optimizer="rmsprop")
    with pytest.raises(ValueError, match="profile"):
        part1_config("CANet", "huge")
    with pytest.raises(ValueError, match="Part 1"):
        part1_config("VGG_A")


def test_the_workplace_copy_is_recorded_as_shared_wherever_a_checkout_kept_it(tmp_path, monkeypatch):
    from lib.bn_study import ProbeConfig
    from lib.results import atomic_write_json, reusable_result

    elsewhere = "/some/other/checkout/../shared/data/cifar10-jpeg75.tar.gz"
    for source in (elsewhere, "/gpu/machine/repo/.carry/cifar10-jpeg75.tar.gz"):
        assert TrainConfig(name="x", model="CANet", data_source=source).data_source == "shared"
        assert ProbeConfig(model="VGG_A", profile="smoke", data_source=source).data_source == "shared"
    for source in ("/my/copy/cifar10-jpeg75.tar.gz", "/x/shared/data/other.tar.gz", "official"):
        assert TrainConfig(name="x", model="CANet", data_source=source).data_source == source
    # A copy that exists here under such a path was named on purpose: it is trained on, not swapped.
    mine = tmp_path / "shared" / "data" / "cifar10-jpeg75.tar.gz"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"")
    assert TrainConfig(name="x", model="CANet", data_source=str(mine)).data_source == str(mine)
    # A byte-identical copy there is the workplace copy held twice (CI machines may hold /work/shared besides the
    # clone's ../shared): recorded as 'shared', so results trained on it are reused.
    import lib.data as D

    theirs = tmp_path / "b" / ".carry" / "cifar10-jpeg75.tar.gz"
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"the same bytes")
    mine.write_bytes(b"the same bytes")
    monkeypatch.setattr(D, "SHARED_CANDIDATES", (tmp_path / "absent.tar.gz", theirs))
    assert TrainConfig(name="x", model="CANet", data_source=str(mine)).data_source == "shared"
    mine.write_bytes(b"other bytes, len")
    assert TrainConfig(name="x", model="CANet", data_source=str(mine)).data_source == str(mine)
    # Plain (non-dataclass) configs, e.g. the loss slices', compare the same way.
    atomic_write_json(tmp_path / "slice.json", {"config": {"run": "r", "data_source": elsewhere}})
    assert reusable_result(tmp_path / "slice.json", {"run": "r", "data_source": "shared"}) is not None
    assert reusable_result(tmp_path / "slice.json", {"run": "r", "data_source": "/my/copy.tar.gz"}) is None


def test_every_committed_result_matches_a_config_of_this_code():
    """Each committed run, BN-protocol run and probe run is what this checkout would reuse: its recorded config
    equals the one the code builds now (so notebooks and `lib run` read it back instead of retraining and
    overwriting it), wherever the checkout lives (CI clones elsewhere: the JPEG copy is recorded by name)."""
    from lib import bn_study
    from lib.experiments import bn_experiments, part1_experiments
    from lib.models import PART1_MODELS
    from lib.paths import REPO
    from lib.results import reusable_result

    checked = 0
    for folder in sorted(p for p in (REPO / "results").iterdir() if p.name in ("smoke", "quick", "full")):
        profile = folder.name
        configs = {c.name: c for c in part1_experiments(profile, "shared", seeds=(0, 1, 2), models=PART1_MODELS)
                   + bn_experiments(profile, "shared")}
        for path in sorted(folder.glob("p1-*.json")) + sorted(folder.glob("bn-*.json")):
            if path.name.endswith((".steps.json", ".weights.json")):
                continue
            cfg = configs[path.stem]
            assert reusable_result(path, cfg.to_dict(), TrainConfig) is not None, f"{path} is stale"
            checked += 1
        for cfg in bn_study.probe_configs(profile, "shared"):
            path = cfg.result_path(output_dirs(profile, publish=True))
            if path.exists():
                recorded = json.loads(path.read_text())["config"]
                fallback = cfg.replace(lr=bn_study.FALLBACK_LR)
                assert any(reusable_result(path, c.to_dict(), bn_study.ProbeConfig) for c in (cfg, fallback)), \
                    f"{path} is stale: recorded {recorded}"
                checked += 1
    assert checked >= 30  # the quick profile's 24 Part 1 runs, 8 BN runs and 2 probes
    # As written, not only as read: a recorded path of the copy is recognised only where the checkout sits beside
    # it or the path is gone, so a clone elsewhere on a machine that has it would take such a run for another recipe.
    recorded = {path: json.loads(path.read_text()) for path in (REPO / "results").glob("*/*.json")}
    configs = {p: r.get("config") for p, r in recorded.items() if isinstance(r, dict)}
    paths = [str(p) for p, c in configs.items() if isinstance(c, dict) and c.get("data_source") not in (None, "shared",
                                                                                                     "official")]
    assert paths == [], f"results recording the data as a path, not by name: {paths}"


def test_evaluate_counts_the_confusion_matrix_as_bincount_does():
    from lib.loader import BatchLoader

    g = torch.Generator().manual_seed(0)
    X = torch.randint(0, 256, (37, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (37,), generator=g)
    loader = BatchLoader(X, y, 8, mean=(0.5,) * 3, std=(0.25,) * 3)  # five batches, the last one partial
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    cfg = TrainConfig(name="x", model="CANet_tiny", device="cpu", label_smoothing=0.0)
    res = T.evaluate(model, loader, cfg, torch.device("cpu"))
    with torch.no_grad():
        pred = torch.cat([model(b.x).argmax(1) for b in loader])
    expected = torch.bincount(y * 10 + pred, minlength=100).view(10, 10)
    assert torch.equal(res["confusion"], expected) and res["acc"] == pytest.approx(float((pred == y).float().mean()))


def test_evaluate_uses_the_running_statistics_and_restores_the_training_mode():
    from lib.loader import BatchLoader

    g = torch.Generator().manual_seed(0)
    X = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (10,), generator=g)
    loader = BatchLoader(X, y, 4, mean=(0.5,) * 3, std=(0.25,) * 3)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 10))
    model[1].running_mean.fill_(0.7)
    model[1].running_var.fill_(3.0)  # far from any batch's statistics: batch statistics would give other outputs
    cfg = TrainConfig(name="x", model="CANet_tiny", device="cpu", label_smoothing=0.0)
    res = T.evaluate(model.train(), loader, cfg, torch.device("cpu"))
    assert model.training and float(model[1].running_mean[0]) == pytest.approx(0.7)  # mode back, stats untouched
    with torch.no_grad():
        out = torch.cat([model.eval()(b.x) for b in loader])
    assert res["loss"] == pytest.approx(float(F.cross_entropy(out, y)), rel=1e-5)
    assert res["acc"] == pytest.approx(float((out.argmax(1) == y).float().mean()))


def test_the_training_metrics_weigh_each_batch_by_its_images():
    """Loss and accuracy of an epoch over 8 + 8 + 4 images (a partial last batch), with weights that do not move:
    the means over all 20 images, not over the batches' means."""
    from lib.loader import BatchLoader

    g = torch.Generator().manual_seed(1)
    X = torch.randint(0, 256, (20, 3, 4, 4), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (20,), generator=g)
    loader = BatchLoader(X, y, 8, mean=(0.5,) * 3, std=(0.25,) * 3)  # no shuffle, no augmentation, no mixing
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 10))
    cfg = TrainConfig(name="x", model="CANet_tiny", device="cpu", label_smoothing=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    stats = T._train_epoch(model, model[1], opt, loader, cfg, torch.device("cpu"), 0, False)
    with torch.no_grad():
        out = torch.cat([model(b.x) for b in loader])
    assert stats["n"] == 20
    assert float(stats["loss_sum"]) / 20 == pytest.approx(float(F.cross_entropy(out, y, label_smoothing=0.1)),
                                                          rel=1e-5)
    assert float(stats["correct"]) / 20 == pytest.approx(float((out.argmax(1) == y).float().mean()))


def test_the_optimisers_take_the_recipes_hyperparameters():
    cfg = part1_config("CANet_tiny", "smoke")
    params = [torch.nn.Parameter(torch.zeros(2))]
    for kind, cls in (("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)):
        opt = T.make_optimizer(kind, params, cfg, 0.05, torch.device("cpu"))
        group = opt.param_groups[0]
        assert type(opt) is cls and group["lr"] == 0.05 and group["weight_decay"] == cfg.weight_decay == 1e-3
        if kind == "sgd":
            assert group["momentum"] == cfg.momentum == 0.9 and not group["nesterov"]
    with pytest.raises(ValueError, match="unknown optimizer kind 'rmsprop'"):
        T.make_optimizer("rmsprop", params, cfg, 0.05, torch.device("cpu"))


def test_tensorboard_writer_queues_an_epochs_events_and_writes_them_all(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = T.tensorboard_writer(tmp_path / "run")
    for i in range(500):  # more than SummaryWriter's default queue of 10
        writer.add_scalar("step/train_loss", 1.0 / (i + 1), i)
    writer.close()
    acc = EventAccumulator(str(tmp_path / "run"), size_guidance={"scalars": 0}).Reload()
    values = [e.value for e in acc.Scalars("step/train_loss")]
    assert len(values) == 500 and values[0] == 1.0 and values[-1] == pytest.approx(1 / 500)


def test_a_damaged_checkpoint_is_a_clear_error(tiny_source, tmp_path):
    dirs = output_dirs("smoke", root=tmp_path)
    cfg = tiny_cfg(tiny_source, num_epochs=2)
    path = dirs.checkpoints / f"{cfg.name}.last.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 half a zip file")  # e.g. copied in part
    for call in (lambda: T.resume_epoch(cfg, dirs), lambda: T.train(cfg, dirs=dirs, progress=False)):
        with pytest.raises(ValueError, match=r"checkpoint .*tiny.last.pt cannot be read \(RuntimeError: .*delete it"):
            call()
    best = dirs.checkpoints / f"{cfg.name}.pt"  # the best epoch's weights: deleting them alone does not help
    best.write_bytes(b"PK\x03\x04 half a zip file")
    with pytest.raises(ValueError, match=r"tiny.pt cannot be read .*retrain its run with --force \(deleting it alone"):
        T.read_checkpoint(best)


def test_a_lost_best_checkpoint_stops_the_resume_instead_of_an_untested_result(tiny_source, tmp_path):
    """The resumable checkpoint names a best epoch whose weights are gone (deleted, as a damaged file): the run
    cannot be tested when it ends, so it stops before training on and says what to do; no result is written."""
    dirs = output_dirs("smoke", root=tmp_path)
    cfg = tiny_cfg(tiny_source, num_epochs=2)
    T.train(cfg, dirs=dirs, progress=False, max_epochs_this_call=1)
    (dirs.checkpoints / f"{cfg.name}.pt").unlink()
    with pytest.raises(ValueError, match=r"tiny.pt is missing: it held the weights of epoch 1, the best on validation "
                                         r"so far.*--force, or delete .*tiny.last.pt too"):
        T.train(cfg, dirs=dirs, progress=False)
    assert not (dirs.results / f"{cfg.name}.json").exists() and (dirs.checkpoints / f"{cfg.name}.last.pt").exists()


def test_a_result_file_that_is_no_json_object_is_recomputed_with_a_note(tmp_path, capsys):
    from lib.results import reusable_result

    for i, text in enumerate(("[]", "null", "{ truncated")):
        path = tmp_path / f"r{i}.json"
        path.write_text(text)
        assert reusable_result(path, {"name": "x"}) is None
        assert reusable_result(path, {"name": "x"}) is None  # noted once
    out = capsys.readouterr().out
    assert out.count("cannot be read as a result") == 3 and "(a JSON list, not an object)" in out
    assert "(a JSON null, not an object)" in out and "not JSON:" in out and "git checkout -- " in out


def test_bf16_precision_trains_under_bf16_autocast_on_a_cpu(tiny_source, tmp_path, monkeypatch):
    dtypes = {}
    real_new_model = T.new_model

    def new_model(cfg, device):  # record the dtype the first convolution computes in, per training mode
        model = real_new_model(cfg, device)
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda m, i, out: dtypes.setdefault(m.training, out.dtype) and None)
        return model

    monkeypatch.setattr(T, "new_model", new_model)
    dirs = output_dirs("smoke", root=tmp_path)
    result = T.train(tiny_cfg(tiny_source, num_epochs=1, precision="bf16"), dirs=dirs, progress=False)
    assert result["status"] == "ok" and result["config"]["precision"] == "bf16"
    assert dtypes == {True: torch.bfloat16, False: torch.bfloat16}  # training steps and evaluation
    weights = T.read_checkpoint(result["checkpoint"])["model"]  # autocast computes in bf16, the weights stay fp32
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float32}
    assert torch.isfinite(torch.tensor(result["history"][0]["train_loss"]))
    dtypes.clear()
    # A Part 1 run of the smoke recipe (2 epochs), then the same run overridden (the CLI's --num-epochs/--precision).
    cfg = tiny_cfg(tiny_source, num_epochs=2, name="tiny-auto", tags=("part1",))
    auto = T.train(cfg, dirs=dirs, progress=False)
    assert dtypes == {True: torch.float32, False: torch.float32}  # the recipe's 'auto' is fp32 on a CPU
    # Another precision or number of epochs of the same run does not silently replace its finished result.
    path = dirs.results / "tiny-auto.json"
    with pytest.raises(ValueError, match=r"differs from this one only in precision \(auto there, bf16 here\): "
                                         r"training it would replace that result.*--force \(with `--only tiny-auto`"):
        T.train(cfg.replace(precision="bf16"), dirs=dirs, progress=False)
    assert T.overridden_result(path, cfg.replace(num_epochs=1, precision="fp32")) == [
        "num_epochs (2 there, 1 here)", "precision (auto there, fp32 here)"]
    assert T.overridden_result(path, cfg.replace(num_epochs=1, seed=5)) == []  # another run: stale, retrained
    assert T.overridden_result(path, cfg.replace(num_epochs=1, tags=())) == []  # not a Part 1 run (BN protocol)
    assert T.overridden_result(path, cfg) == [] and T.overridden_result(tmp_path / "none.json", cfg) == []
    assert json.loads(path.read_text())["history"] == auto["history"]  # untouched
    forced = T.train(cfg.replace(precision="bf16", num_epochs=1), dirs=dirs, progress=False, force=True)
    assert json.loads(path.read_text())["config"]["precision"] == "bf16" == forced["config"]["precision"]
    # The recipe's own run replaces an override's result (the GPU runner trains the recipe over a test run).
    assert T.overridden_result(path, cfg) == []
    # A forced override run stopped part-way resumes from its checkpoint (the old result is still beside it).
    T.train(cfg, dirs=dirs, progress=False)  # the recipe's result again
    part = T.train(cfg.replace(num_epochs=3), dirs=dirs, progress=False, force=True, max_epochs_this_call=1)
    assert part["status"] == "incomplete" and T.resume_epoch(cfg.replace(num_epochs=3), dirs) == 1
    done = T.train(cfg.replace(num_epochs=3), dirs=dirs, progress=False)
    assert done["status"] == "ok" and len(done["history"]) == 3


def test_the_precision_hint_names_bf16_on_a_cpu_with_amx_only(tmp_path):
    amx, plain = tmp_path / "amx", tmp_path / "plain"
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n\n")
    plain.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert T.cpu_has_amx_bf16(amx) and not T.cpu_has_amx_bf16(plain) and not T.cpu_has_amx_bf16(tmp_path / "none")
    cpu, cfg = torch.device("cpu"), part1_config("CANet_tiny", "quick")
    assert "--precision bf16" in T.precision_hint(cfg, cpu, amx)
    assert T.precision_hint(cfg, cpu, plain) is None
    assert T.precision_hint(cfg.replace(precision="fp32"), cpu, amx) is None  # an explicit choice: no hint
    assert T.precision_hint(bn_config("VGG_A", 1e-3, "quick"), cpu, amx) is None  # Part 2 has no such option
    assert T.precision_hint(cfg, torch.device("meta"), amx) is None  # not a CPU


def test_tqdm_disable_turns_off_the_bars_but_not_the_epoch_lines(tiny_source, tmp_path, monkeypatch, capsys):
    # The GPU runner sets TQDM_DISABLE=1: three lanes' bars would fill its log (and the tool's tail of it).
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    T.train(tiny_cfg(tiny_source, num_epochs=1), dirs=output_dirs("smoke", root=tmp_path / "a"))
    with_bars = capsys.readouterr()
    assert "tiny epoch 1/1:" in with_bars.err and "[tiny] epoch 1/1" in with_bars.out
    monkeypatch.setenv("TQDM_DISABLE", "1")
    T.train(tiny_cfg(tiny_source, num_epochs=1), dirs=output_dirs("smoke", root=tmp_path / "b"))
    without = capsys.readouterr()
    assert "tiny epoch 1/1:" not in without.err and "[tiny] epoch 1/1" in without.out
    assert T.bars_disabled(False) is True
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert T.bars_disabled(True) is False


def test_a_finished_run_on_other_data_is_not_replaced_without_force(tiny_source, tmp_path, capsys):
    import shutil

    other = tmp_path / "other-copy"
    shutil.copytree(tiny_source, other)
    dirs = output_dirs("smoke", root=tmp_path / "out")
    cfg = tiny_cfg(tiny_source, num_epochs=1)  # not a Part 1 run: the guard covers every run
    # (with the precision hint as well: one does not stand for the other)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T, "precision_hint", lambda cfg, device: "hint: a precision hint")
        mp.setattr(T, "_hinted", set())
        T.train(cfg.replace(data_source=str(other)), dirs=output_dirs("smoke", root=tmp_path / "o2"), progress=True)
    assert "hint: a precision hint" in capsys.readouterr().out
    T._noted_copies.discard(str(other))
    T.train(cfg.replace(data_source=str(other), seed=5), dirs=output_dirs("smoke", root=tmp_path / "o2"),
            progress=False)
    assert "note: image-folder copy other-copy is a smaller copy than CIFAR-10 (80 of 50,000 training and 50 of " \
           "10,000 test images): used as it is" in capsys.readouterr().out  # the tiny copy: 8 + 5 images a class
    first = T.train(cfg, dirs=dirs, progress=False)
    path = dirs.results / "tiny.json"
    moved = cfg.replace(data_source=str(other))
    assert T.overridden_result(path, moved) == [f"data_source ({tiny_source} there, {other} here)"]
    with pytest.raises(ValueError, match=r"differs from this one only in data_source .*To keep it, move the result "
                                         r"file out of .* first; or replace it with --force"):
        T.train(moved, dirs=dirs, progress=False)
    assert json.loads(path.read_text())["history"] == first["history"]  # untouched
    # Other data and another recipe option: still the same run, still kept.
    assert T.overridden_result(path, moved.replace(precision="bf16")) == [
        f"data_source ({tiny_source} there, {other} here)", "precision (auto there, bf16 here)"]
    # Anything else that differs (another seed): another run, stale, retrained as before.
    assert T.overridden_result(path, moved.replace(seed=3)) == []
    # Data that cannot be read: that is the error, before the refusal above, and --force deletes nothing for it.
    from lib.data import DataError

    broken = tmp_path / "broken-copy"
    shutil.copytree(tiny_source, broken)
    next((broken / "train").rglob("*.png")).write_bytes(b"not an image")
    best = dirs.checkpoints / "tiny.pt"
    assert best.is_file()
    for force in (False, True):
        with pytest.raises(DataError):
            T.train(cfg.replace(data_source=str(broken)), dirs=dirs, progress=False, force=force)
        assert best.is_file()
    forced = T.train(moved, dirs=dirs, progress=False, force=True)
    assert json.loads(path.read_text())["config"]["data_source"] == str(other) == forced["config"]["data_source"]
    # The advice names build/ where the result is a published one of smoke/quick, not for full.
    assert "train into build/quick/ instead (leave out --publish)" in T.keep_advice(
        "quick", output_dirs("quick", publish=True).results)
    assert "build/" not in T.keep_advice("full", output_dirs("full", publish=True).results)


def test_result_files_are_written_whole_and_readable_as_any_other_file(tmp_path):
    import stat

    from lib.results import atomic_write_json, read_json

    old = os.umask(0o022)
    try:
        path = atomic_write_json(tmp_path / "r.json", {"a": float("nan"), "b": [1, 2]})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's private 0600
    assert read_json(path) == {"a": None, "b": [1, 2]} and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_a_written_file_reaches_the_disk_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    from lib import results

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.fstat(fd).st_ino)) or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", str(b))) or real_replace(a, b))
    path = results.atomic_write_text(tmp_path / "r.md", "x")
    # The file's data (the temp file keeps its inode through the rename), the rename, then the folder's entry.
    assert events == [("fsync", path.stat().st_ino), ("replace", str(path)), ("fsync", tmp_path.stat().st_ino)]

    def no_sync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", no_sync)
    with pytest.raises(OSError, match="Input/output"):  # a file that cannot be synced is not put in place
        results.atomic_write_text(tmp_path / "r.md", "y")
    assert (tmp_path / "r.md").read_text() == "x" and [p.name for p in tmp_path.iterdir()] == ["r.md"]


def test_checkpoints_figures_and_text_are_written_whole_through_one_temp_file_each(tmp_path):
    """lib.results.atomic_write under checkpoints, figures and the report: the temp file has the target's suffix
    (writers that read the format from it) and a unique name; a failed write leaves the old file and no temp."""
    import matplotlib.pyplot as plt

    from lib.plotting import savefig
    from lib.results import atomic_write, atomic_write_text

    seen = []
    atomic_write(tmp_path / "a.txt", lambda tmp: seen.append(tmp.name) or tmp.write_text("old"))
    atomic_write(tmp_path / "a.txt", lambda tmp: seen.append(tmp.name) or tmp.write_text("new"))
    assert seen[0] != seen[1] and all(n.startswith(".a.txt.") and n.endswith(".tmp.txt") for n in seen)

    def half_written(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "a.txt", half_written)
    assert (tmp_path / "a.txt").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    atomic_write_text(tmp_path / "report.md", "# r\n")
    T._save_checkpoint(tmp_path / "ck" / "x.last.pt", {"epoch": 3})
    assert T.read_checkpoint(tmp_path / "ck" / "x.last.pt") == {"epoch": 3}
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    png = savefig(fig, "f", tmp_path / "figs")
    plt.close(fig)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # matplotlib wrote a PNG (from the temp name's suffix)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.txt", "f.png", "report.md", "x.last.pt"]


def test_weight_histograms_keep_the_se_kernels_apart_from_their_mixing_scales():
    model = build("CANet_tiny")
    with torch.no_grad():
        model.blocks[2].se.scales.copy_(torch.tensor([0.5, 1.25, 2.0]))
    hists = T.weight_histograms(model)
    assert set(hists) == {"se_kernels", "se_scales", "sa", "unit_transform"}
    assert sum(hists["se_kernels"]["counts"]) == 6 * (3 + 5 + 7)  # six blocks' 1-D kernels, no scale among them
    kernels = torch.cat([c.weight.detach().flatten() for b in model.blocks for c in b.se.convs])
    assert hists["se_kernels"]["edges"][0] == pytest.approx(float(kernels.min()))
    assert hists["se_kernels"]["edges"][-1] == pytest.approx(float(kernels.max()))
    assert hists["se_scales"] == [[1.0, 1.0, 1.0]] * 2 + [[0.5, 1.25, 2.0]] + [[1.0, 1.0, 1.0]] * 3
    sa = sum(p.numel() for b in model.blocks for p in b.sa.parameters())
    assert sum(hists["sa"]["counts"]) == sa
    assert set(T.weight_histograms(build("ResNet18"))) == set()  # no attention modules: nothing recorded
