"""Part 1 figures: training curves, accuracy vs cost, per-class accuracy, confusion, filters, weight ridges, attention.

Every function only reads what it is given (result dicts / files from lib.train, the comparison table of
lib.stats, a trained model) and saves one or more PNGs through lib.plotting.savefig under a stable name,
returning the saved Path (or list of Paths). Figures are closed after saving; in a notebook show them with
`IPython.display.Image(path)`. Each accepts `subtitle`, a caption drawn under the figure (data source,
profile, device, seeds); for single-run figures it defaults to `run_caption(result)`.

Epochs are shown 1-based (epoch 1 is the first), matching the training log.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
import torch.nn.functional as F
from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

from lib.attention import attention_maps, first_layer_filter_groups
from lib.augment import to_float_normalized
from lib.data import CLASSES
from lib.part1 import per_class_by_model
from lib.plotting import caption, epoch_axis, new_figure, place_labels, savefig
from lib.results import read_json
from lib.stats import pareto_front

# What each weight group of lib.train.WEIGHT_GROUPS holds (titles of the ridge plots); 'se' is the pooled group of
# results written before the mixing scales were recorded apart. group -> figure name: RIDGE_FIGURES.
WEIGHT_GROUP_TITLES = {
    "se_kernels": "SE (channel attention): the 1-D conv kernels 3/5/7 (without their mixing scales)",
    "se": "SE (channel attention): 1-D conv kernels 3/5/7 and their mixing scales, pooled",
    "sa": "SA (spatial attention): conv weights on [mean, max] maps",
    "unit_transform": "unit_transform: the shared 1x1 conv gate (both layers)",
}
RIDGE_FIGURES = {"se_kernels": "p1_ridge_se", "se": "p1_ridge_se", "sa": "p1_ridge_sa",
                 "unit_transform": "p1_ridge_unit_transform"}
MAX_RIDGE_ROWS = 15
CORRECT, WRONG = "#1a7f37", "#c62828"  # title colours: prediction right / wrong


# ---------------------------------------------------------------------------------------------------------
# Small helpers

def run_caption(result: dict) -> str:
    """One line saying where a result comes from: data source, profile, seed, device, epochs."""
    data = result.get("data") or {}
    parts = [data.get("label") or data.get("source") or "data source unknown"]
    if data.get("num_train_used"):
        parts.append(f"{data['num_train_used']:,} training images")
    if result.get("profile"):
        parts.append(f"profile {result['profile']}")
    if result.get("seed") is not None:
        parts.append(f"seed {result['seed']}")
    if result.get("history"):
        parts.append(f"{len(result['history'])} epochs")
    if result.get("device"):
        parts.append(str(result["device"]))
    return " | ".join(parts)


def _save(fig, name: str, figs_dir) -> Path:
    """Save through the one figure helper, then free the figure."""
    try:
        return savefig(fig, name, figs_dir)
    finally:
        plt.close(fig)


def _history(result: dict) -> list[dict]:
    """The per-epoch history of a result, or a clear error when there is none."""
    history = result.get("history") or []
    if not history:
        raise ValueError(f"result {result.get('name', '?')!r} has no history (no finished epoch): nothing to plot")
    return history


# ---------------------------------------------------------------------------------------------------------
# Training curves

def lr_axis(ax, lrs) -> None:
    """The learning-rate panel's y axis: log where the rates span 10x or more (the recipe's 70 epochs: 16x), linear
    otherwise (a short run's few percent would crowd a log axis with minor-tick labels such as 9.95e-4)."""
    wide = min(lrs) > 0 and max(lrs) / min(lrs) >= 10
    if wide:
        ax.set_yscale("log")
    else:
        ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.set(title="learning rate", ylabel="lr (log scale)" if wide else "lr")


def plot_training_curves(result: dict, figs_dir, name: str | None = None, subtitle: str | None = None) -> Path:
    """lr, train/val loss and val accuracy per epoch of one run -> 'p1_curves_<model>'."""
    history = _history(result)
    epochs = np.array([h["epoch"] for h in history]) + 1
    opts = [h.get("optimizer") for h in history]
    # First epoch of a new optimiser (the recipe's AdamW -> SGD switch), read from the history itself.
    switches = [(epochs[i], opts[i - 1], opts[i]) for i in range(1, len(opts)) if opts[i] != opts[i - 1]]
    marker = "o" if len(epochs) <= 20 else None

    fig, axes = new_figure(ncols=3, width=14, height=4.0, layout="constrained")
    ax_lr, ax_loss, ax_acc = axes
    lrs = [h["lr"] for h in history]
    ax_lr.plot(epochs, lrs, marker=marker, ms=3, color="tab:purple")
    lr_axis(ax_lr, lrs)

    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker=marker, ms=3, label="train (augmented, mixed)")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], marker=marker, ms=3, label="validation")
    ax_loss.set(title="loss (label-smoothed cross-entropy)", ylabel="loss")
    ax_loss.legend(fontsize=8)

    val_acc = 100 * np.array([h["val_acc"] for h in history])
    ax_acc.plot(epochs, val_acc, marker=marker, ms=3, color="tab:green", label="validation")
    ax_acc.set(title="validation accuracy", ylabel="accuracy (%)")
    epoch_axis(ax_lr, ax_loss, ax_acc)
    best = result.get("best_epoch")
    if best is not None and result.get("best_val_acc") is not None:
        bx, by = best + 1, 100 * result["best_val_acc"]
        ax_acc.scatter([bx], [by], marker="*", s=160, color="gold", edgecolor="black", zorder=5,
                       label=f"best epoch {bx}: val {by:.2f}%")
        if result.get("test_acc") is not None:
            ax_acc.plot([], [], " ", label=f"test accuracy of that model: {100 * result['test_acc']:.2f}%")
    ax_acc.legend(fontsize=8, loc="best")

    for ax in axes:
        ax.grid(alpha=0.3)
        for x, old, new in switches:
            ax.axvline(x - 0.5, color="0.3", ls="--", lw=1)
            ax.axvspan(x - 0.5, epochs[-1] + 0.5, color="0.5", alpha=0.08, lw=0)
    if switches:  # labelled once, on the lr panel; the shaded span marks it on all three
        x, old, new = switches[0]
        ax_lr.text(x - 0.5, 0.98, f" {old} -> {new}", transform=ax_lr.get_xaxis_transform(), fontsize=8,
                   va="top", ha="left", color="0.25")
    status = "" if result.get("status", "ok") == "ok" else f" [{result['status']}]"
    fig.suptitle(f"Training of {result.get('model', '?')} ({result.get('name', '')}){status}", fontsize=12)
    caption(fig, subtitle if subtitle is not None else run_caption(result))
    return _save(fig, name or f"p1_curves_{result.get('model', 'model')}", figs_dir)


# ---------------------------------------------------------------------------------------------------------
# Comparison across models

def _acc_vs(ax, table: pd.DataFrame, col: str, xlabel: str) -> None:
    """Scatter mean test accuracy against `col` (log x) with std bars, labels and the Pareto front."""
    t = table[np.isfinite(table[col].astype(float)) & np.isfinite(table["test_acc_mean"].astype(float))]
    x, y = t[col].astype(float).to_numpy(), t["test_acc_mean"].astype(float).to_numpy()
    n = t["n_seeds"].to_numpy()
    std = t["test_acc_std"].astype(float).to_numpy()
    yerr = np.where((n > 1) & np.isfinite(std), std, 0.0)
    front = np.array(pareto_front(x, y), dtype=bool)
    for on, color, label in ((False, "0.45", "model"), (True, "tab:red", "on the Pareto front")):
        sel = front == on
        if sel.any():
            ax.errorbar(x[sel], y[sel], yerr=yerr[sel], fmt="o", ms=7, color=color, ecolor=color, capsize=3,
                        label=label, zorder=3)
    order = np.argsort(x[front])
    ax.step(x[front][order], y[front][order], where="post", color="tab:red", ls="--", lw=1, alpha=0.7, zorder=2)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    # Within about a decade there may be no major tick at all: then label the 2x and 5x minor ticks too.
    narrow = len(x) > 0 and np.log10(x.max() / x.min()) < 1.5
    ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    ax.xaxis.set_minor_formatter(EngFormatter(sep="") if narrow else NullFormatter())
    ax.set(xlabel=xlabel, ylabel="test accuracy (%)")
    ax.margins(x=0.2, y=0.12)  # room for labels right of the last points
    ax.grid(alpha=0.3, which="both")
    labels = [f"{model}{f' (n={ni})' if ni != 1 else ''}" for model, ni in zip(t["model"], n)]
    place_labels(ax, x, y, labels)
    ax.legend(fontsize=8, loc="best")


def plot_accuracy_vs_cost(table: pd.DataFrame, figs_dir, subtitle: str | None = None) -> list[Path]:
    """Test accuracy vs parameters and vs FLOPs (log x, Pareto front) -> ['p1_acc_vs_params', 'p1_acc_vs_flops'].

    `table` is lib.stats.comparison_table's DataFrame; the FLOPs figure is skipped when no row has FLOPs.
    """
    missing = {"model", "params", "n_seeds", "test_acc_mean", "test_acc_std"} - set(table.columns)
    if missing:
        raise ValueError(f"table lacks columns {sorted(missing)}: pass lib.stats.comparison_table(results)")
    if not np.isfinite(table["test_acc_mean"].astype(float)).any():
        raise ValueError("no model in the table has a test accuracy (all runs diverged or none finished)")
    bars = "error bars: ±1 std over seeds (n = seeds, where more than one)"
    text = f"{bars}\n{subtitle}" if subtitle else bars
    paths = []
    specs = [("params", "p1_acc_vs_params", "parameters (log scale)", "Test accuracy vs number of parameters")]
    if "flops" in table.columns and np.isfinite(table["flops"].astype(float)).any():
        specs.append(("flops", "p1_acc_vs_flops", "forward FLOPs per 32x32 image (log scale, 2 x MACs)",
                      "Test accuracy vs forward FLOPs"))
    for col, name, xlabel, title in specs:
        fig, ax = new_figure(width=7.5, height=4.8, layout="constrained")
        _acc_vs(ax, table, col, xlabel)
        ax.set_title(title)
        caption(fig, text)
        paths.append(_save(fig, name, figs_dir))
    return paths


def plot_per_class_heatmap(results: Sequence[dict], figs_dir, subtitle: str | None = None) -> Path:
    """Models x classes heatmap of per-class test accuracy (%), mean over seeds, models by params -> 'p1_per_class'."""
    by_model = per_class_by_model(results)
    if not by_model:
        raise ValueError("no result with per_class_acc (status 'ok') was given: train the models first")
    rows, labels = [], []
    for model, (runs, mean) in sorted(by_model.items(), key=lambda kv: (kv[1][0][0].get("num_params", 0), kv[0])):
        acc = 100 * np.asarray(mean)
        if len(acc) != len(CLASSES):
            raise ValueError(f"{model}: per_class_acc has {len(acc)} values, expected {len(CLASSES)}")
        rows.append(acc)
        params = runs[0].get("num_params")
        p = f"{params / 1e6:.2f}M params, " if params else ""
        labels.append(f"{model} ({p}{len(runs)} seed{'s' if len(runs) > 1 else ''})")
    df = pd.DataFrame(rows, index=labels, columns=list(CLASSES))
    fig, ax = new_figure(width=11, height=1.6 + 0.5 * len(df), layout="constrained")
    sns.heatmap(df, annot=True, fmt=".1f", cmap="viridis", vmin=max(0.0, math.floor(df.values.min() / 10) * 10),
                vmax=100, linewidths=0.5, cbar_kws={"label": "test accuracy (%)"}, ax=ax, annot_kws={"fontsize": 8})
    ax.set(xlabel="true class", ylabel="")
    ax.set_title("Per-class test accuracy (%), mean over seeds; models sorted by parameters")
    ax.tick_params(axis="x", rotation=30)
    caption(fig, subtitle)
    return _save(fig, "p1_per_class", figs_dir)


def plot_confusion(result: dict, figs_dir, subtitle: str | None = None, name: str | None = None) -> Path:
    """Row-normalised test confusion matrix (%) of one run, with class names -> 'p1_confusion_<model>'."""
    conf = result.get("confusion")
    if conf is None:
        raise ValueError(f"result {result.get('name', '?')!r} has no confusion matrix (no test evaluation; "
                         f"status {result.get('status')!r})")
    conf = np.asarray(conf, dtype=float)
    if conf.shape != (len(CLASSES), len(CLASSES)):
        raise ValueError(f"confusion must be {len(CLASSES)}x{len(CLASSES)}, got {conf.shape}")
    pct = 100 * conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
    fig, ax = new_figure(width=7.8, height=6.4, layout="constrained")
    sns.heatmap(pct, annot=True, fmt=".0f", cmap="Blues", vmin=0, vmax=100, square=True, linewidths=0.3,
                xticklabels=CLASSES, yticklabels=CLASSES, cbar_kws={"label": "% of the true class"}, ax=ax,
                annot_kws={"fontsize": 8})
    ax.set(xlabel="predicted class", ylabel="true class")
    ax.tick_params(axis="x", rotation=45)
    acc = f", test accuracy {100 * result['test_acc']:.2f}%" if result.get("test_acc") is not None else ""
    ax.set_title(f"Confusion matrix of {result.get('model', '?')} on {int(conf.sum()):,} test images{acc}\n"
                 "(each row sums to 100%)", fontsize=11)
    caption(fig, subtitle if subtitle is not None else run_caption(result))
    return _save(fig, name or f"p1_confusion_{result.get('model', 'model')}", figs_dir)


# ---------------------------------------------------------------------------------------------------------
# What the network learned

def _filter_mosaic(w: torch.Tensor, ncols: int, pad: int = 1) -> np.ndarray:
    """(out, 3, k, k) filters -> one RGB mosaic image, each filter min-max scaled to [0, 1] on its own."""
    out, _, k, _ = w.shape
    flat = w.reshape(out, -1)
    lo, hi = flat.min(1).values, flat.max(1).values
    w = (w - lo[:, None, None, None]) / (hi - lo).clamp(min=1e-12)[:, None, None, None]
    nrows = math.ceil(out / ncols)
    mosaic = np.full((nrows * (k + pad) + pad, ncols * (k + pad) + pad, 3), 0.75)  # grey grid lines
    for i in range(out):
        r, c = divmod(i, ncols)
        y, x = pad + r * (k + pad), pad + c * (k + pad)
        mosaic[y:y + k, x:x + k] = w[i].permute(1, 2, 0).numpy()
    return mosaic


def plot_filters(model: torch.nn.Module, figs_dir, name: str = "p1_filters", subtitle: str | None = None,
                 model_name: str | None = None) -> Path:
    """First-layer conv filters as RGB tiles, each min-max scaled on its own -> 'p1_filters'."""
    groups = first_layer_filter_groups(model)
    fig, axes = new_figure(ncols=len(groups), width=4.6 * len(groups), height=4.4, layout="constrained",
                           squeeze=False)
    for ax, (label, w) in zip(axes[0], groups.items()):
        ncols = math.ceil(math.sqrt(w.shape[0]))
        ax.imshow(_filter_mosaic(w, ncols), interpolation="nearest")
        ax.set_title(f"{label}: {w.shape[0]} filters, {w.shape[2]}x{w.shape[3]}", fontsize=10)
        ax.axis("off")
    fig.suptitle(f"First-layer convolution filters of {model_name or type(model).__name__} "
                 "(RGB, each filter min-max scaled to [0, 1])", fontsize=11)
    caption(fig, subtitle)
    return _save(fig, name, figs_dir)


def _pick_rows(n: int, k: int) -> list[int]:
    """At most k indices spread evenly over range(n), always including the first and the last."""
    return sorted(set(np.linspace(0, n - 1, min(n, k)).round().astype(int).tolist()))


def plot_weight_ridges(weights_history, figs_dir, subtitle: str | None = None,
                       max_rows: int = MAX_RIDGE_ROWS) -> list[Path]:
    """Ridge plots of the SE / SA / unit_transform weight histograms per epoch -> ['p1_ridge_se', 'p1_ridge_sa', ...].

    `weights_history` is the list stored in <results>/<name>.weights.json (or that file's path). Like
    TensorBoard's histogram view: one density per epoch, later epochs in front (lower); at most
    `max_rows` epochs, chosen evenly. Groups absent from the history (non-CANet models) are skipped. p1_ridge_se
    shows SE's kernels where the history has them apart ('se_kernels'), else the older pooled 'se' group.
    """
    if isinstance(weights_history, (str, Path)):
        weights_history = read_json(weights_history)
    if not weights_history:
        raise ValueError("weights_history is empty: pass the list from <results>/<name>.weights.json")
    paths = []
    for group, title in WEIGHT_GROUP_TITLES.items():
        entries = [h for h in weights_history if group in h]
        if not entries or (group == "se" and any("se_kernels" in h for h in weights_history)):
            continue
        entries = [entries[i] for i in _pick_rows(len(entries), max_rows)]
        paths.append(_ridge(entries, group, title, figs_dir, subtitle))
    if not paths:
        raise ValueError(f"no weight group of {list(WEIGHT_GROUP_TITLES)} in weights_history: "
                         "these histograms exist for CANet runs only")
    return paths


def _ridge(entries: list[dict], group: str, title: str, figs_dir, subtitle: str | None) -> Path:
    """One ridge plot of `group` over the given epochs."""
    curves = []
    for h in entries:
        edges, counts = np.asarray(h[group]["edges"], float), np.asarray(h[group]["counts"], float)
        widths = np.diff(edges)
        dens = counts / max(counts.sum(), 1) / np.where(widths > 0, widths, 1)
        # Close each curve at zero on the outer edges so that the fill is a proper ridge.
        xs = np.concatenate([[edges[0]], (edges[:-1] + edges[1:]) / 2, [edges[-1]]])
        curves.append((h["epoch"] + 1, xs, np.concatenate([[0], dens, [0]]), int(counts.sum())))
    peak = max(c[2].max() for c in curves) or 1.0
    n = len(curves)
    height = 2.2  # a ridge at the global peak is 2.2 rows tall: neighbours overlap like TensorBoard's view
    fig, ax = new_figure(width=7.5, height=1.8 + 0.38 * n, layout="constrained")
    cmap = plt.get_cmap("viridis")
    for i, (epoch, xs, ys, _) in enumerate(curves):
        base = n - 1 - i  # first epoch at the top (back), last at the bottom (front)
        color = cmap(i / max(n - 1, 1))
        ax.fill_between(xs, base, base + height * ys / peak, color=color, alpha=0.75, lw=0, zorder=2 * i)
        ax.plot(xs, base + height * ys / peak, color="white", lw=0.8, zorder=2 * i + 1)
    ax.set_yticks(range(n), [f"{c[0]}" for c in reversed(curves)])
    ax.set_ylim(-0.3, n - 1 + height + 0.2)
    ax.set(xlabel="weight value", ylabel="epoch")
    ax.axvline(0, color="0.5", lw=0.6, ls=":", zorder=0)
    ax.set_title(f"{title}\ndistribution per epoch ({curves[-1][3]:,} weights; density over bins spanning each "
                 f"epoch's own range, offset per epoch)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    caption(fig, subtitle)
    return _save(fig, RIDGE_FIGURES[group], figs_dir)


# ---------------------------------------------------------------------------------------------------------
# Attention on real images

def _examples(images_uint8, labels, n: int):
    """Up to n images (NHWC uint8 numpy) and labels, preferring distinct classes in the given order."""
    X = images_uint8.cpu().numpy() if isinstance(images_uint8, torch.Tensor) else np.asarray(images_uint8)
    y = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if X.ndim != 4 or X.dtype != np.uint8 or 3 not in (X.shape[1], X.shape[-1]):
        raise ValueError(f"images_uint8 must be uint8 images (N, 32, 32, 3) or (N, 3, 32, 32), got {X.dtype} {X.shape}")
    if X.shape[-1] != 3:
        X = X.transpose(0, 2, 3, 1)
    if len(X) != len(y) or len(X) == 0:
        raise ValueError(f"need at least one image and one label per image, got {len(X)} images, {len(y)} labels")
    chosen, seen = [], set()
    for i, c in enumerate(y.tolist()):  # first pass: one image per class
        if c not in seen and len(chosen) < n:
            chosen.append(i)
            seen.add(c)
    chosen += [i for i in range(len(y)) if i not in chosen][: n - len(chosen)]
    return X[chosen], y[chosen]


def plot_attention(model: torch.nn.Module, images_uint8, labels, figs_dir, mean, std, n_images: int = 6,
                   subtitle: str | None = None, model_name: str | None = None) -> list[Path]:
    """What SA and SE do on real test images -> ['p1_attention_sa', 'p1_attention_se'].

    SA: each image with the spatial map of the first, middle and last block overlaid (bilinear upsampling
    to 32x32, over the image in grey; colours min-max scaled per map, the map's range is printed, and the range
    of the gate the block's output puts on path a, unit_transform's output averaged over channels).
    SE: the channel weights of the last two blocks per image, channels sorted by their mean weight over
    the shown images. Both show what SA and SE pass on to unit_transform (lib.attention.attention_maps).
    `images_uint8`: NHWC (or NCHW) uint8 images; mean/std: the normalisation the model was trained with.
    """
    X, y = _examples(images_uint8, labels, n_images)
    x = to_float_normalized(torch.from_numpy(np.ascontiguousarray(X)).permute(0, 3, 1, 2).contiguous(), mean, std)
    maps = attention_maps(model, x)
    pred = maps["logits"].argmax(1).numpy()
    names = [(CLASSES[t], CLASSES[p], t == p) for t, p in zip(y.tolist(), pred.tolist())]
    model_name = model_name or type(model).__name__
    return [_attention_sa(X, maps["sa"], maps["gate_a"], names, model_name, figs_dir, subtitle),
            _attention_se(maps["se"], names, model_name, figs_dir, subtitle)]


def _attention_sa(X, sa_maps, gates, names, model_name, figs_dir, subtitle) -> Path:
    """Image + SA maps of the first / middle / last block, one row per image; each map's range and that of the
    block's output gate on path a (`gates`: attention_maps' 'gate_a')."""
    nb = len(sa_maps)
    picked = sorted({0, nb // 2, nb - 1})
    n = len(X)
    fig, axes = new_figure(ncols=1 + len(picked), nrows=n, width=2.0 * (1 + len(picked)), height=2.05 * n + 0.6,
                           layout="constrained", squeeze=False)
    for r in range(n):
        true, pred, ok = names[r]
        axes[r, 0].imshow(X[r], interpolation="nearest")
        gray = X[r].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (32, 32) luminance
        axes[r, 0].set_title(f"true {true}\npred {pred}", fontsize=9, color=CORRECT if ok else WRONG)
        for c, b in enumerate(picked, start=1):
            m = sa_maps[b][r]  # (H, W) sigmoid gate of block b
            up = F.interpolate(m[None, None], size=X.shape[1:3], mode="bilinear", align_corners=False)[0, 0]
            lo, hi = float(m.min()), float(m.max())
            ax = axes[r, c]
            ax.imshow(gray, cmap="gray", vmin=0, vmax=255, interpolation="nearest")  # grey keeps the map legible
            ax.imshow(((up - lo) / max(hi - lo, 1e-8)).numpy(), cmap="inferno", alpha=0.6, vmin=0, vmax=1,
                      interpolation="nearest")
            g = gates[b][r]
            ax.text(1, 31, f"SA {lo:.3f}-{hi:.3f}\nU  {float(g.min()):.3f}-{float(g.max()):.3f}", color="white",
                    fontsize=6.5, va="bottom", family="monospace",
                    bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "lw": 0})
            if r == 0:
                ax.set_title(f"SA, block {b}\n({m.shape[0]}x{m.shape[1]} map, bilinear)", fontsize=9)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"Spatial attention (SA) of {model_name}: what SA passes on to unit_transform U (bright) and damps "
                 f"(dark)\n(colours scaled per map; numbers: the SA gate's min-max, and that of the gate the block's "
                 f"output puts on this path, U's output averaged over channels)", fontsize=9)
    caption(fig, subtitle)
    return _save(fig, "p1_attention_sa", figs_dir)


def _attention_se(se_weights, names, model_name, figs_dir, subtitle) -> Path:
    """Channel weights of the last two blocks: heatmap (images x sorted channels) and sorted curves per image."""
    blocks = list(range(len(se_weights)))[-2:]
    fig, axes = new_figure(ncols=2, nrows=len(blocks), width=11, height=3.0 * len(blocks) + 0.8,
                           layout="constrained", squeeze=False, gridspec_kw={"width_ratios": [2.2, 1]})
    row_labels = [f"{t} -> {p}" for t, p, _ in names]
    colors = plt.get_cmap("tab10")
    for r, b in enumerate(blocks):
        w = se_weights[b].numpy()  # (B, C)
        order = np.argsort(-w.mean(0))  # channels most passed on average first
        ax = axes[r, 0]
        im = ax.imshow(w[:, order], aspect="auto", cmap="magma", interpolation="nearest")
        fig.colorbar(im, ax=ax, label="SE weight (sigmoid)", pad=0.01)
        ax.set_yticks(range(len(row_labels)), row_labels, fontsize=8)
        for tick, (_, _, ok) in zip(ax.get_yticklabels(), names):
            tick.set_color(CORRECT if ok else WRONG)
        top = ", ".join(str(c) for c in order[:5])
        ax.set_xlabel(f"channel, sorted by mean weight over these images (top: {top})", fontsize=9)
        ax.set_xticks([])
        ax.set_title(f"block {b}: SE channel weights ({w.shape[1]} channels), true -> predicted class", fontsize=10)
        ax2 = axes[r, 1]
        for i in range(len(w)):
            ax2.plot(np.sort(w[i])[::-1], color=colors(i % 10), lw=1.2, label=row_labels[i])
        ax2.set(xlabel="rank of the channel in this image", ylabel="SE weight")
        ax2.set_title(f"block {b}: weights sorted per image", fontsize=10)
        ax2.grid(alpha=0.3)
        if r == 0:
            ax2.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"Channel attention (SE) of {model_name}: which channels SE passes on to unit_transform most "
                 f"(whose 1x1 convolutions then mix the channels)", fontsize=11)
    caption(fig, subtitle)
    return _save(fig, "p1_attention_se", figs_dir)
