"""Attention extraction and the Part 1 figures, on an untrained CANet_tiny and fabricated result files."""
import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from lib.attention import attention_maps, first_layer_filter_groups, first_layer_filters, load_trained
from lib.config import NORMS
from lib.models import build
from lib.part1_plots import (_pick_rows, plot_accuracy_vs_cost, plot_attention, plot_confusion, plot_filters,
                             plot_per_class_heatmap, plot_training_curves, plot_weight_ridges, run_caption)
from lib.stats import comparison_table

SA_SIZES = [32, 32, 16, 16, 8, 4]  # output size of CANet's six blocks on 32x32 inputs
SE_WIDTHS = [16, 16, 32, 32, 64, 64]  # CANet_tiny: w = 16


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build("CANet_tiny")


def fake_result(model="CANet_tiny", seed=0, num_params=396_155, num_epochs=6, acc=0.6, rng=None):
    """A result dict in lib.train's format (history with an AdamW -> SGD switch at int(0.8 * epochs))."""
    rng = rng or np.random.default_rng(seed)
    switch = int(0.8 * num_epochs)
    history = [{"epoch": e, "lr": 1e-3 * 0.96 ** e, "optimizer": "adamw" if e < switch else "sgd",
                "train_loss": 2.0 - 0.1 * e, "train_acc": 0.3 + 0.05 * e, "val_loss": 1.9 - 0.12 * e,
                "val_acc": 0.35 + 0.04 * e + 0.01 * (e % 2), "seconds": 1.0} for e in range(num_epochs)]
    best = max(range(num_epochs), key=lambda e: history[e]["val_acc"])
    conf = rng.integers(0, 20, size=(10, 10)) + np.diag(rng.integers(50, 90, size=10))
    return {"name": f"{model}_s{seed}", "model": model, "seed": seed, "profile": "smoke", "status": "ok",
            "num_params": num_params, "data": {"label": "test images", "num_train_used": 512},
            "device": "CPU (test)", "history": history, "best_epoch": best,
            "best_val_acc": history[best]["val_acc"], "test_acc": acc,
            "per_class_acc": (np.diag(conf) / conf.sum(1)).tolist(), "confusion": conf.tolist(),
            "cost": {"flops": 2.0 * num_params * 40}}


def fake_weights_history(num_epochs, rng):
    """<name>.weights.json format of the runs before SE's mixing scales were recorded apart: per epoch {'epoch',
    'se'|'sa'|'unit_transform': {'edges', 'counts'}} (now 'se_kernels' instead of 'se', and 'se_scales')."""
    out = []
    for e in range(num_epochs):
        entry = {"epoch": e}
        for group, n in (("se", 108), ("sa", 332), ("unit_transform", 5000)):
            counts, edges = np.histogram(rng.normal(0, 0.1 + 0.01 * e, size=n), bins=40)
            entry[group] = {"edges": edges.tolist(), "counts": counts.tolist()}
        out.append(entry)
    return out


def assert_png(path, tmp_path, name):
    assert path == tmp_path / f"{name}.png"
    assert path.stat().st_size > 5_000
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) > 200


# ---------------------------------------------------------------------------------------------------------
# lib.attention

def test_attention_maps_shapes_values_and_hooks_removed(tiny):
    x = torch.randn(3, 3, 32, 32)
    tiny.train()
    maps = attention_maps(tiny, x)
    assert [tuple(m.shape) for m in maps["sa"]] == [(3, s, s) for s in SA_SIZES]
    assert [tuple(w.shape) for w in maps["se"]] == [(3, c) for c in SE_WIDTHS]
    assert tuple(maps["logits"].shape) == (3, 10)
    for t in maps["sa"] + maps["se"]:
        assert bool(((t > 0) & (t < 1)).all())
    # The maps differ between images (they depend on the input, not only on the weights).
    assert not torch.allclose(maps["sa"][0][0], maps["sa"][0][1])
    assert all(len(m._forward_hooks) == 0 for m in tiny.modules())
    assert tiny.training  # mode restored
    tiny.eval()
    assert torch.allclose(maps["logits"], tiny(x), atol=1e-5)  # logits are the eval-mode forward
    # The gates the first block's output uses, computed by hand: u_a = U(SA(a)), u_b = U(SE(b)).
    with torch.no_grad():
        block = tiny.blocks[0]
        a, b = block.path_a(x), block.path_b(x)
        u_a, u_b = block.unit_transform(block.sa(a)), block.unit_transform(block.se(b))
    assert torch.allclose(maps["gate_a"][0], u_a.mean(1), atol=1e-6)
    assert torch.allclose(maps["gate_b"][0], u_b.mean((2, 3)), atol=1e-6)
    assert [tuple(m.shape) for m in maps["gate_a"]] == [(3, s, s) for s in SA_SIZES]
    assert [tuple(w.shape) for w in maps["gate_b"]] == [(3, c) for c in SE_WIDTHS]


def test_attention_spread_is_recorded_for_the_report(tiny, tiny_source, tmp_path):
    from lib.attention import attention_path, attention_spread, save_attention_spread
    from lib.experiments import part1_config
    from lib.paths import output_dirs
    from lib.results import atomic_write_json, read_json

    maps = {"sa": [torch.tensor([[[0.2, 0.9]], [[0.5, 0.5]]])], "gate_a": [torch.tensor([[[0.5, 0.52]], [[0.4, 0.5]]])],
            "se": [torch.tensor([[0.1, 0.3, 0.2], [0.0, 1.0, 0.5]])], "gate_b": [torch.tensor([[0.5, 0.5], [0.1, 0.2]])]}
    spread = attention_spread(maps)[0]  # per image max - min, then the mean over the two images
    assert spread["block"] == 0 and spread["sa"] == pytest.approx((0.7 + 0.0) / 2)
    assert spread["gate_a"] == pytest.approx((0.02 + 0.1) / 2) and spread["se"] == pytest.approx((0.2 + 1.0) / 2)
    assert spread["gate_b"] == pytest.approx((0.0 + 0.1) / 2)
    cfg = part1_config("CANet_tiny", "smoke", tiny_source, 0)
    result = {"name": cfg.name, "model": "CANet_tiny", "profile": "smoke", "config": cfg.to_dict(), "best_epoch": 1,
              "data": {"label": "tiny"}}
    dirs = output_dirs("smoke", root=tmp_path)
    returned = save_attention_spread(tiny, result, dirs, num_images=20)  # 20 of the tiny copy's 50 test images
    path = attention_path(dirs, result)
    rec = read_json(path)
    assert returned == rec  # what it wrote
    assert path.name == "attention-p1-CANet_tiny-s0.json" and rec["run"] == cfg.name and rec["num_images"] == 20
    assert [b["block"] for b in rec["blocks"]] == list(range(6)) and rec["best_epoch"] == 1
    assert all(0 <= b[k] < 1 for b in rec["blocks"] for k in ("sa", "gate_a", "se", "gate_b"))
    # In batches (eval mode): the same numbers as all images at once.
    from lib import part1
    from lib.augment import to_float_normalized

    X, _ = part1.sample_test_images(result, n=20)
    x = to_float_normalized(torch.from_numpy(X).permute(0, 3, 1, 2).contiguous(), *NORMS["imagenet"])
    # A record of the same run, epoch and images is reused (a re-render rewrites nothing); force measures again.
    atomic_write_json(path, dict(rec, device="elsewhere"))
    assert save_attention_spread(tiny, result, dirs, num_images=20) == dict(rec, device="elsewhere")
    assert save_attention_spread(tiny, result, dirs, num_images=10)["num_images"] == 10  # other images: measured
    assert save_attention_spread(tiny, dict(result, best_epoch=2), dirs, num_images=10)["best_epoch"] == 2
    batched = save_attention_spread(tiny, result, dirs, num_images=20, batch_size=6, force=True)["blocks"]
    for a, b in zip(batched, attention_spread(attention_maps(tiny, x))):
        assert a == pytest.approx(b, rel=1e-5)
    from lib.report import attention_markdown  # as notebook 03 and the report show it

    text = attention_markdown(dirs, dict(result, seed=0, train_seconds=90.0))
    assert "| block | SA map | gate on path a (U, mean over channels) |" in text and "of p1-CANet_tiny-s0" in text
    assert "| seed: 0 | runtime: 1 run, 90 s of training in all*" in text


class Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def test_attention_hooks_removed_even_when_forward_fails():
    model = build("CANet_tiny")
    model.head = Boom()  # fails after every block's hooks have run
    with pytest.raises(RuntimeError, match="boom"):
        attention_maps(model, torch.randn(2, 3, 32, 32))
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_attention_maps_rejects_non_canet():
    with pytest.raises(ValueError, match="CANet"):
        attention_maps(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.randn(1, 3, 32, 32))


def test_first_layer_filters(tiny):
    w = first_layer_filters(tiny)
    assert tuple(w.shape) == (48, 3, 3, 3)  # 16 filters of path_a, 16 of path_b, 16 of the shortcut
    assert torch.equal(w[:16], tiny.blocks[0].path_a[0].weight.detach())
    assert torch.equal(w[16:32], tiny.blocks[0].path_b[0].weight.detach())
    assert torch.equal(w[32:], tiny.blocks[0].shortcut[0].weight.detach())
    other = nn.Sequential(nn.Conv2d(3, 8, 5), nn.ReLU(), nn.Conv2d(8, 4, 3))
    assert tuple(first_layer_filters(other).shape) == (8, 3, 5, 5)
    assert list(first_layer_filter_groups(other)) == ["0"]
    with pytest.raises(ValueError, match="3 RGB"):
        first_layer_filters(nn.Sequential(nn.Conv2d(1, 4, 3)))


def test_load_trained_missing_checkpoint_says_how_to_retrain(tmp_path, capsys):
    from lib.attention import trained_or_none

    result = fake_result()
    result.update(name="no_such_run_for_tests", checkpoint=str(tmp_path / "gone.pt"))
    with pytest.raises(FileNotFoundError, match=r"python -m lib run") as err:
        load_trained(result)
    assert "gone.pt" in str(err.value) and "not committed" in str(err.value)
    assert "`python -m lib run --profile smoke --data <data> --models CANet_tiny --seeds 0` (without --publish" in str(
        err.value)  # this fake result records no config: the data source is left for the user to fill in
    result["config"] = {"data_source": "shared"}
    with pytest.raises(FileNotFoundError, match="--profile smoke --data shared --models CANet_tiny --seeds 0`"):
        load_trained(result)
    result["config"]["num_epochs"] = 1  # trained with an override (the profile's is another): the command says so
    with pytest.raises(FileNotFoundError, match="--models CANet_tiny --seeds 0 --num-epochs 1`"):
        load_trained(result)
    result["config"]["precision"] = "bf16"  # and another precision than the recipe's
    with pytest.raises(FileNotFoundError, match="--models CANet_tiny --seeds 0 --num-epochs 1 --precision bf16`"):
        load_trained(result)
    del result["config"]["precision"]
    # The notebook's form: None and the reason, so the figures of the result files are still drawn.
    assert trained_or_none(result) is None
    assert capsys.readouterr().out.startswith("The figures that need the trained weights are skipped: no checkpoint")


def test_load_trained_round_trip(tiny, tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"config": None, "model": tiny.state_dict()}, path)
    result = dict(fake_result(), checkpoint=str(path))
    model = load_trained(result)
    assert not model.training
    for (k, a), b in zip(tiny.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    torch.save({"config": {"name": "other", "model": "CANet_tiny"}, "model": tiny.state_dict()}, path)
    with pytest.raises(ValueError, match="different run"):
        load_trained(dict(result, config={"name": "this", "model": "CANet_tiny"}))
    from lib.attention import trained_or_none

    with pytest.raises(ValueError, match="different run"):  # another run's weights are an error, not a skip
        trained_or_none(dict(result, config={"name": "this", "model": "CANet_tiny"}))


def test_load_trained_takes_the_checkpoint_of_the_selected_weights_only(tiny, tmp_path, capsys):
    """Of the candidate files the first whose run, epoch and validation accuracy are the result's; a retraining
    stopped part-way, or one that did not reproduce the run, is refused with the reason."""
    from lib.attention import NotTheSelectedWeights, trained_or_none

    result = dict(fake_result(), config={"name": "this", "model": "CANet_tiny"})
    result.update(best_epoch=4, best_val_acc=0.5)
    stale, good = tmp_path / "stale.pt", tmp_path / "good.pt"
    state = {"config": result["config"], "model": tiny.state_dict(), "epoch": 4, "val_acc": 0.5}
    torch.save(dict(state, epoch=2), stale)  # stopped part-way: its best epoch so far was 2
    torch.save(state, good)
    with pytest.raises(ValueError, match=r"stale.pt holds epoch 2, but the result selected epoch 4 \(a retraining "
                                         r"stopped part-way\?\).*train the run again"):
        load_trained(dict(result, checkpoint=str(stale)))
    assert not load_trained(dict(result, checkpoint=str(good)), checkpoint=stale).training  # skips the stale one
    torch.save(dict(state, val_acc=0.48), stale)  # the same epoch selected, other weights
    with pytest.raises(NotTheSelectedWeights, match="validation accuracy 0.4800, not the result's 0.5000"):
        load_trained(dict(result, checkpoint=str(stale)))
    # The notebook's form skips the figures of the weights, saying why (the run's own checkpoint, not reproduced).
    assert trained_or_none(dict(result, checkpoint=str(stale))) is None
    assert "not the result's 0.5000" in capsys.readouterr().out
    # The full profile's weights come from the GPU call, not from a retraining here.
    with pytest.raises(FileNotFoundError, match="KEEP_CHECKPOINTS .*--merge DIR"):
        load_trained(dict(result, profile="full", checkpoint=str(tmp_path / "gone.pt"), name="no_such_run_for_tests"))


# ---------------------------------------------------------------------------------------------------------
# lib.part1_plots

def test_plot_training_curves(tmp_path):
    result = fake_result()
    assert_png(plot_training_curves(result, tmp_path), tmp_path, "p1_curves_CANet_tiny")
    assert_png(plot_training_curves(result, tmp_path, name="p1_curves_x"), tmp_path, "p1_curves_x")
    assert "profile smoke" in run_caption(result) and "seed 0" in run_caption(result)
    with pytest.raises(ValueError, match="no history"):
        plot_training_curves(dict(result, history=[]), tmp_path)


def comparison_results():
    rng = np.random.default_rng(1)
    specs = [("CANet_tiny", 396_155, 0.80), ("ResNet18", 11_173_962, 0.85), ("VGG11", 128_807_306, 0.78)]
    return [fake_result(m, s, p, acc=acc + 0.01 * s, rng=rng) for m, p, acc in specs for s in range(2)]


def test_point_labels_do_not_overlap():
    # Four models within a factor of five in FLOPs and two points of accuracy (CANet_light, ResNet18, ResNet34
    # and CANet in the quick profile): their labels must not cover each other.
    from lib.plotting import place_labels

    fig, ax = plt.subplots(figsize=(9, 6))
    x, y = np.array([5.3e8, 1.1e9, 2.3e9, 2.1e9, 1.6e6]), np.array([51.9, 55.1, 52.1, 51.3, 20.8])
    ax.errorbar(x, y, fmt="o")
    ax.set_xscale("log")
    ax.margins(x=0.15, y=0.12)
    labels = ["CANet_light (n=3)", "ResNet18 (n=3)", "ResNet34 (n=3)", "CANet (n=3)", "ShuffleNetV2 (n=3)"]
    anns = place_labels(ax, x, y, labels)
    renderer = fig.canvas.get_renderer()
    boxes = [a.get_window_extent(renderer) for a in anns]
    assert sorted(a.get_text() for a in anns) == sorted(labels) and len(ax.texts) == len(labels)
    frame = ax.get_window_extent(renderer)
    for i in range(len(boxes)):
        assert frame.x0 <= boxes[i].x0 and boxes[i].x1 <= frame.x1, anns[i].get_text()  # inside the axes
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (anns[i].get_text(), anns[j].get_text())
    plt.close(fig)


def test_plot_accuracy_vs_cost(tmp_path):
    table = comparison_table(comparison_results())
    paths = plot_accuracy_vs_cost(table, tmp_path, subtitle="fabricated results")
    assert len(paths) == 2
    assert_png(paths[0], tmp_path, "p1_acc_vs_params")
    assert_png(paths[1], tmp_path, "p1_acc_vs_flops")
    # Without FLOPs only the parameters figure is drawn.
    no_flops = table.assign(flops=math.nan)
    (tmp_path / "p1_acc_vs_flops.png").unlink()
    assert [p.name for p in plot_accuracy_vs_cost(no_flops, tmp_path)] == ["p1_acc_vs_params.png"]
    assert not (tmp_path / "p1_acc_vs_flops.png").exists()


def test_plot_per_class_heatmap_and_confusion(tmp_path):
    results = comparison_results()
    assert_png(plot_per_class_heatmap(results, tmp_path), tmp_path, "p1_per_class")
    assert_png(plot_confusion(results[0], tmp_path), tmp_path, "p1_confusion_CANet_tiny")
    with pytest.raises(ValueError, match="per_class_acc"):
        plot_per_class_heatmap([dict(results[0], per_class_acc=None)], tmp_path)
    with pytest.raises(ValueError, match="confusion"):
        plot_confusion(dict(results[0], confusion=None), tmp_path)


def test_plot_filters(tiny, tmp_path):
    assert_png(plot_filters(tiny, tmp_path), tmp_path, "p1_filters")


def test_plot_weight_ridges(tmp_path):
    import json

    history = fake_weights_history(20, np.random.default_rng(2))  # > 15: rows get subsampled
    paths = plot_weight_ridges(history, tmp_path)
    for p, group in zip(paths, ("se", "sa", "unit_transform")):
        assert_png(p, tmp_path, f"p1_ridge_{group}")
    # The stored file's path works too.
    f = tmp_path / "run.weights.json"
    f.write_text(json.dumps(history[:3]))
    assert len(plot_weight_ridges(f, tmp_path / "from_file")) == 3
    with pytest.raises(ValueError, match="CANet"):
        plot_weight_ridges([{"epoch": 0}], tmp_path)


def test_the_se_ridge_shows_the_kernels_where_they_are_recorded_apart(tmp_path):
    history = fake_weights_history(4, np.random.default_rng(3))
    for h in history[2:]:  # a run resumed across the change: its later epochs have the kernels apart
        h["se_kernels"] = h.pop("se")
        h["se_scales"] = [[1.0, 1.1, 0.9]] * 6
    paths = plot_weight_ridges(history, tmp_path)
    assert [p.name for p in paths] == ["p1_ridge_se.png", "p1_ridge_sa.png", "p1_ridge_unit_transform.png"]
    plotted = []
    import lib.part1_plots as P

    real = P._ridge
    P_ridge = lambda entries, group, *a: plotted.append((group, [h["epoch"] for h in entries])) or real(  # noqa: E731
        entries, group, *a)
    try:
        P._ridge = P_ridge
        plot_weight_ridges(history, tmp_path / "again")
    finally:
        P._ridge = real
    assert plotted[0] == ("se_kernels", [2, 3])  # the pooled epochs are not drawn beside them
    assert [g for g, _ in plotted] == ["se_kernels", "sa", "unit_transform"]


def test_pick_rows_spreads_epochs():
    rows = _pick_rows(70, 15)
    assert len(rows) == 15 and rows[0] == 0 and rows[-1] == 69 and rows == sorted(set(rows))
    assert _pick_rows(4, 15) == [0, 1, 2, 3]


def test_plot_attention(tiny, tmp_path):
    rng = np.random.default_rng(3)
    X = rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    y = np.array([0, 0, 1, 2, 3, 4, 5, 6])
    paths = plot_attention(tiny, X, y, tmp_path, *NORMS["imagenet"], n_images=4, model_name="CANet_tiny")
    assert_png(paths[0], tmp_path, "p1_attention_sa")
    assert_png(paths[1], tmp_path, "p1_attention_se")
    assert all(len(m._forward_hooks) == 0 for m in tiny.modules())
    with pytest.raises(ValueError, match="uint8"):
        plot_attention(tiny, X.astype(np.float32), y, tmp_path, *NORMS["imagenet"])


def test_show_figure_displays_what_was_drawn_and_says_what_was_not(tmp_path, monkeypatch, capsys):
    import IPython.display

    from lib.plotting import show_figure

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    drawn = tmp_path / "p2_loss_band.png"
    drawn.write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "p2_santurkar.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # an older file, not drawn by this call
    show_figure([drawn], "p2_loss_band")
    assert len(shown) == 1 and shown[0].filename == str(drawn)
    show_figure([drawn], "p2_santurkar")
    assert len(shown) == 1 and "p2_santurkar: not drawn (its result files are missing)" in capsys.readouterr().out


def test_epoch_axes_tick_whole_epochs_only():
    from lib.plotting import epoch_axis, new_figure

    fig, ax = new_figure()
    ax.plot([1, 2, 3], [0.2, 0.5, 0.4])  # a 3-epoch run: matplotlib alone ticks 1.25, 1.5, ...
    epoch_axis(ax)
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ax.get_xlabel() == "epoch" and ticks == [1.0, 2.0, 3.0]


def test_a_checkpoint_is_looked_for_in_the_published_and_the_build_folders():
    from lib.paths import output_dirs

    result = dict(fake_result(), name="no_such_run_for_tests")
    with pytest.raises(FileNotFoundError) as err:
        load_trained(result)
    for publish in (True, False):  # a smoke run published (results/smoke/...) or not (build/smoke/...)
        assert str(output_dirs("smoke", publish=publish).checkpoints / "no_such_run_for_tests.pt") in str(err.value)


def test_the_lr_panel_is_logarithmic_only_where_the_rates_span_tenfold():
    from lib.part1_plots import lr_axis

    for lrs, scale in (([1e-3 * 0.96 ** e for e in range(70)], "log"), ([1e-3 * 0.96 ** e for e in range(8)], "linear")):
        fig, ax = plt.subplots()
        lr_axis(ax, lrs)
        assert ax.get_yscale() == scale and ax.get_ylabel() == ("lr (log scale)" if scale == "log" else "lr")
        plt.close(fig)
