"""Part 2 figures, drawn only from the files lib/bn_study.py and lib/train.py wrote (no training here).

Names (stable, saved through lib.plotting.savefig): p2_accuracy_lr1e-3, p2_loss_band, p2_grad_range,
p2_santurkar, p2_grad_diff_eta, p2_loss_slice. A figure whose input files are missing is skipped.

Smoothing: per-step curves (section A, one value per training step) get a centred moving average of
STEP_WINDOW steps, probe curves (one value per probe) of PROBE_WINDOW probes; the raw band or curve
is always drawn underneath, lighter, so the smoothing hides nothing.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lib.bn_study import LABELS, _as_float_array, loss_band, probe_path, protocol_steps, slice_path
from lib.data import source_label
from lib.experiments import BN_LRS, BN_MODELS, BN_SEED, bn_name
from lib.paths import OutputDirs
from lib.plotting import caption, epoch_axis, new_figure, savefig
from lib.report import join_distinct
from lib.results import read_json

STEP_WINDOW = 25  # steps (Adam protocol: 352 steps per epoch on the full data)
PROBE_WINDOW = 5  # probes
COLORS = {"VGG_A": "tab:blue", "VGG_A_BN": "tab:red"}  # Standard / Standard + BatchNorm, in every figure


def window_for(n: int, window: int) -> int:
    """The smoothing window actually used for a series of n values: at most a tenth of the series, so that
    short (smoke/quick) series are not flattened and their edges not pulled towards the middle, and odd, so that
    the average is centred (an even one would lag by half a value)."""
    width = max(1, min(int(window), n // 10))
    return width if width % 2 else width - 1


def smoothing_label(n: int, window: int, unit: str) -> str:
    """How a line of n values was smoothed, in words: '9-step moving average', or 'not smoothed' (window 1)."""
    width = window_for(n, window)
    return f"{width}-{unit} moving average" if width > 1 else "not smoothed"


def smooth(values, window: int) -> np.ndarray:
    """Centred moving average (window_for(len, window) wide) that ignores NaN/inf (NaN where a window has
    no finite value)."""
    v = _as_float_array(values)
    window = window_for(len(v), window)
    if window == 1 or len(v) == 0:
        return v
    finite = np.isfinite(v)
    kernel = np.ones(window)
    total = np.convolve(np.where(finite, v, 0.0), kernel, mode="same")
    count = np.convolve(finite.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def lr_tag(lr: float) -> str:
    """Short learning-rate text for file names: 1e-3, 5e-4, 0.1 -> 1e-1."""
    mantissa, exponent = f"{lr:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _positive(v: np.ndarray) -> np.ndarray:
    """Non-positive values masked (NaN) so a log axis never sees them."""
    return np.where(v > 0, v, np.nan)


def log_y_if_wide(ax, *arrays, ratio: float = 10.0) -> bool:
    """Log y-axis when the positive finite values span more than `ratio` (else a log axis only hides detail)."""
    v = np.concatenate([_as_float_array(np.ravel(a)) for a in arrays]) if arrays else np.array([])
    v = v[np.isfinite(v) & (v > 0)]
    wide = v.size > 0 and v.max() / v.min() > ratio
    if wide:
        ax.set_yscale("log")
    return wide


def _distinct(values) -> str:
    """Distinct values joined with '/' ('' when there are none)."""
    return join_distinct(values, empty="", sep="/")


def _recorded(record: dict, key: str):
    """A field of a result file: top level, else its environment (the device it ran on, where its config may say
    'auto'), else its config (protocol runs keep profile, seed and device at the top; probe runs and slices in
    their config and environment)."""
    for where in (record, record.get("environment") or {}, record.get("config") or {}):
        if where.get(key) is not None:
            return where[key]
    return None


def runs_caption(records, length) -> str:
    """Where the result files behind a figure come from: data, training images (per point, for loss slices),
    profile, seed, `length(record)` (e.g. '3 epochs per run'; None: left out) and device; parts without a
    recorded value are left out."""
    records = list(records)
    data = [r.get("data") or {} for r in records]
    images = _distinct(f"{d['num_train_used']:,}" for d in data if d.get("num_train_used"))
    per_point = _distinct(_recorded(r, "num_images") for r in records)  # loss slices: images per loss value
    profile, seed = (_distinct(_recorded(r, key) for r in records) for key in ("profile", "seed"))
    parts = [_distinct(d.get("label") for d in data)
             or _distinct(source_label(_recorded(r, "data_source")) for r in records if _recorded(r, "data_source")),
             f"{images} training images" if images else "", f"{per_point} training images per point" if per_point else "",
             f"profile {profile}" if profile else "", f"seed {seed}" if seed else "",
             _distinct(length(r) for r in records), _distinct(_recorded(r, "device") for r in records)]
    return " | ".join(part for part in parts if part)


def protocol_caption(runs) -> str:
    """runs_caption of BN-protocol results: their epochs per run."""
    return runs_caption(runs, lambda r: f"{len(r['history'])} epochs per run" if r.get("history") else None)


def probe_caption(probes) -> str:
    """runs_caption of probe runs (their steps) or loss slices."""
    return runs_caption(probes, lambda r: f"{r['steps_done']} steps" if r.get("steps_done") else None)


def _protocol_runs(dirs: OutputDirs, pairs, seed: int) -> list[dict]:
    """The result files of the protocol runs (model, lr) that exist."""
    paths = [Path(dirs.results) / f"{bn_name(m, lr, seed)}.json" for m, lr in pairs]
    return [read_json(p) for p in paths if p.exists()]


def plot_accuracy(dirs: OutputDirs, lr: float = 1e-3, seed: int = BN_SEED) -> Path | None:
    """Validation accuracy and loss per epoch at `lr`, BN vs no-BN (two panels)."""
    runs = {}
    for model in BN_MODELS:
        path = Path(dirs.results) / f"{bn_name(model, lr, seed)}.json"
        if path.exists():
            runs[model] = read_json(path)
    if not runs:
        return None
    fig, (ax_acc, ax_loss) = new_figure(ncols=2)
    for model, run in runs.items():
        hist = run.get("history", [])
        epochs = [h["epoch"] + 1 for h in hist]
        best = run.get("best_val_acc")
        label = LABELS[model] + (f" (best {100 * best:.2f}%)" if best is not None else "")
        ax_acc.plot(epochs, [100 * h["val_acc"] for h in hist], "o-", ms=3, color=COLORS[model], label=label)
        ax_loss.plot(epochs, [h["val_loss"] for h in hist], "o-", ms=3, color=COLORS[model], label=LABELS[model])
    ax_acc.set(ylabel="validation accuracy (%)", title=f"VGG-A, Adam lr {lr:g}")
    ax_loss.set(ylabel="validation loss", title=f"VGG-A, Adam lr {lr:g}")
    epoch_axis(ax_acc, ax_loss)
    ax_acc.legend(fontsize=8)
    ax_loss.legend(fontsize=8)
    caption(fig, protocol_caption(runs.values()))
    fig.tight_layout()
    return savefig(fig, f"p2_accuracy_lr{lr_tag(lr)}", dirs.figs)


def plot_loss_band(dirs: OutputDirs, lrs=BN_LRS, seed: int = BN_SEED) -> Path | None:
    """Per-step min/max of the training loss over the protocol's learning rates, BN and no-BN in one plot."""
    bands = {m: protocol_steps(dirs, m, lrs, seed) for m in BN_MODELS}
    bands = {m: s for m, s in bands.items() if s}
    if not bands:
        return None
    fig, ax = new_figure()
    found_lrs, edges = set(), []
    for model, steps in bands.items():
        band = loss_band([s["loss"] for s in steps.values()])
        found_lrs |= set(steps)
        edges += [band.lo, band.hi]
        c = COLORS[model]
        ignored = f", {band.num_ignored} non-finite ignored" if band.num_ignored else ""
        ax.fill_between(band.steps, _positive(band.lo), _positive(band.hi), color=c, alpha=0.25, lw=0,
                        label=f"{LABELS[model]} ({len(steps)} lrs{ignored})")
        ax.plot(band.steps, _positive(smooth(band.lo, STEP_WINDOW)), color=c, lw=1)
        ax.plot(band.steps, _positive(smooth(band.hi, STEP_WINDOW)), color=c, lw=1)
    log_y_if_wide(ax, *edges)
    epoch_axis(ax, label="training step")
    ax.set(ylabel="training loss",
           title="Loss band over Adam learning rates " + ", ".join(f"{lr:g}" for lr in sorted(found_lrs)))
    ax.legend(fontsize=8)
    ax.text(0.01, 0.01, f"shaded: raw per-step min/max; lines: {smoothing_label(len(band.steps), STEP_WINDOW, 'step')}",
            transform=ax.transAxes, fontsize=7, color="0.4")
    caption(fig, protocol_caption(_protocol_runs(dirs, [(m, lr) for m, steps in bands.items() for lr in steps], seed)))
    fig.tight_layout()
    return savefig(fig, "p2_loss_band", dirs.figs)


def plot_grad_range(dirs: OutputDirs, lr: float = 1e-3, seed: int = BN_SEED) -> Path | None:
    """Max and min of the last Linear layer's weight gradient per step at `lr`, BN vs no-BN."""
    series = {m: protocol_steps(dirs, m, [lr], seed).get(lr) for m in BN_MODELS}
    series = {m: s for m, s in series.items() if s}
    if not series:
        return None
    fig, ax = new_figure()
    for model, s in series.items():
        gmax, gmin = _as_float_array(s["grad_max"]), _as_float_array(s["grad_min"])
        steps = np.arange(len(gmax))
        c = COLORS[model]
        ax.fill_between(steps, gmin, gmax, color=c, alpha=0.2, lw=0)
        ax.plot(steps, smooth(gmax, STEP_WINDOW), color=c, lw=1, label=f"{LABELS[model]}: max")
        ax.plot(steps, smooth(gmin, STEP_WINDOW), color=c, lw=1, ls="--", label=f"{LABELS[model]}: min")
    ax.axhline(0, color="0.5", lw=0.5)
    epoch_axis(ax, label="training step")
    ax.set(ylabel="last-layer weight gradient",
           title=f"Gradient range of the last Linear layer (Adam lr {lr:g})")
    ax.legend(fontsize=8)
    caption(fig, protocol_caption(_protocol_runs(dirs, [(m, lr) for m in series], seed)))
    fig.tight_layout()
    return savefig(fig, "p2_grad_range", dirs.figs)


def _probe_results(dirs: OutputDirs, seed: int) -> dict[str, dict]:
    """{model: probe result} for the probe files that exist."""
    out = {}
    for model in BN_MODELS:
        path = probe_path(dirs, model, seed)
        if path.exists():
            out[model] = read_json(path)
    return out


def plot_santurkar(dirs: OutputDirs, seed: int = BN_SEED) -> Path | None:
    """The paper's Fig. 4: loss landscape band (log y), gradient predictiveness band, effective beta-smoothness."""
    probes = _probe_results(dirs, seed)
    if not probes:
        return None
    fig, axes = new_figure(ncols=3, width=14, height=4)
    ax_loss, ax_pred, ax_beta = axes
    lr_note = set()
    for model, r in probes.items():
        p, c, label = r["probes"], COLORS[model], LABELS[model]
        steps = np.asarray(p["step"])
        lr_note.add(f"lr {r['lr']:g}" + (" (fallback)" if r.get("lr_fallback") else ""))
        lo, hi = _as_float_array(p["loss_min"]), _as_float_array(p["loss_max"])
        ax_loss.fill_between(steps, _positive(lo), _positive(hi), color=c, alpha=0.3, lw=0, label=label)
        glo, ghi = _as_float_array(p["gpred_min"]), _as_float_array(p["gpred_max"])
        ax_pred.fill_between(steps, glo, ghi, color=c, alpha=0.3, lw=0, label=label)
        for ax, edges in ((ax_loss, (_positive(lo), _positive(hi))), (ax_pred, (glo, ghi))):
            for edge in edges:  # thin edge lines keep a narrow band visible
                ax.plot(steps, edge, color=c, lw=0.7)
        beta = _as_float_array(p["beta"])
        ax_beta.plot(steps, beta, color=c, lw=0.6, alpha=0.4)
        ax_beta.plot(steps, smooth(beta, PROBE_WINDOW), color=c, lw=1.5, label=label)
        bad = int(r.get("probe_nonfinite", 0))
        if bad:
            ax_loss.plot([], [], " ", label=f"{label}: {bad} non-finite probe values ignored")
    ax_loss.set_yscale("log")  # as the paper plots the band (BN_METHODS.md B.1); the edges are made positive above
    epoch_axis(ax_loss, ax_pred, ax_beta, label="training step")
    ax_loss.set(ylabel="loss along the gradient", title="(a) loss landscape")
    ax_pred.set(ylabel=r"$\|g - g_\eta\|_2$", title="(b) gradient predictiveness")
    ax_beta.set(ylabel=r"max$_\eta$ $\|g - g_\eta\| / \|\eta g\|$",
                title=r"(c) effective $\beta$-smoothness")
    for ax in axes:
        ax.legend(fontsize=8)
    r0 = next(iter(probes.values()))
    etas = r0["etas"]
    fig.suptitle(f"VGG-A, SGD {', '.join(sorted(lr_note))}, batch {r0['config']['batch_size']}; "
                 f"eta in {etas[0]:g}..{etas[-1]:g} ({len(etas)} values), probe every "
                 f"{r0['config']['probe_every']} steps; beta line: "
                 f"{smoothing_label(len(r0['probes']['step']), PROBE_WINDOW, 'probe')}",
                 fontsize=9)
    caption(fig, probe_caption(probes.values()))
    fig.tight_layout()
    return savefig(fig, "p2_santurkar", dirs.figs)


def plot_grad_diff_eta(dirs: OutputDirs, seed: int = BN_SEED) -> Path | None:
    """The paper's Fig. 11a: ||g - g_eta|| against eta at the first and the last probe."""
    probes = _probe_results(dirs, seed)
    if not probes:
        return None
    fig, ax = new_figure()
    for model, r in probes.items():
        p, c = r["probes"], COLORS[model]
        gd = [_as_float_array(row) for row in p["gdiff_eta"]]
        for idx, ls in ((0, "--"), (len(gd) - 1, "-")):
            ax.plot(r["etas"], gd[idx], ls, marker="o", ms=3, color=c,
                    label=f"{LABELS[model]}, step {p['step'][idx]}")
    ax.set(xlabel=r"step size $\eta$", ylabel=r"$\|g - g_\eta\|_2$",
           title="Gradient change along the gradient, first and last probe")
    ax.legend(fontsize=8)
    caption(fig, probe_caption(probes.values()))
    fig.tight_layout()
    return savefig(fig, "p2_grad_diff_eta", dirs.figs)


def plot_loss_slice(dirs: OutputDirs, seed: int = BN_SEED) -> Path | None:
    """Filter-normalised 1-D loss slices around the trained networks, BN vs no-BN."""
    slices = {m: slice_path(dirs, m, seed) for m in BN_MODELS}
    slices = {m: read_json(p) for m, p in slices.items() if p.exists()}
    if not slices:
        return None
    fig, ax = new_figure()
    for model, s in slices.items():
        ax.plot(s["alpha"], _positive(_as_float_array(s["loss"])), color=COLORS[model], label=LABELS[model])
    log_y_if_wide(ax, *[s["loss"] for s in slices.values()])
    any_slice = next(iter(slices.values()))
    ax.set(xlabel=r"$\alpha$ (filter-normalised direction)", ylabel="training loss (eval mode)",
           title=f"1-D loss slice around the lr {1e-3:g} checkpoints ({any_slice['config']['num_images']} images)")
    ax.legend(fontsize=8)
    caption(fig, probe_caption(slices.values()))
    fig.tight_layout()
    return savefig(fig, "p2_loss_slice", dirs.figs)


def plot_all(dirs: OutputDirs) -> list[Path]:
    """Every Part 2 figure whose input files exist; returns the paths written."""
    import matplotlib.pyplot as plt

    paths = []
    for plot in (plot_accuracy, plot_loss_band, plot_grad_range, plot_santurkar, plot_grad_diff_eta,
                 plot_loss_slice):
        path = plot(dirs)
        plt.close("all")
        if path is not None:
            paths.append(path)
    return paths
