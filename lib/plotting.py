"""The one figure helper: every figure of the study is saved through `savefig`; its provenance line (`caption`);
point labels that do not overlap (`place_labels`); whole-epoch x axes (`epoch_axis`); a notebook shows one it drew
with `show_figure`."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np

from lib.results import atomic_write

DPI = 130
FIGSIZE = (6.4, 4.0)  # default size of a one-panel figure, inches


def new_figure(ncols: int = 1, nrows: int = 1, width: float | None = None, height: float | None = None, **kw):
    """A figure with the study's default size (scaled by the panel grid)."""
    w = width or FIGSIZE[0] * (1 if ncols == 1 else 0.75 * ncols)
    h = height or FIGSIZE[1] * (1 if nrows == 1 else 0.8 * nrows)
    return plt.subplots(nrows, ncols, figsize=(w, h), **kw)


def epoch_axis(*axes, label: str = "epoch") -> None:
    """Label the x axis of each of `axes` 'epoch' (or `label`, e.g. 'training step') and tick it at whole values
    only (a 3-epoch run, or a smoke run's few steps, would otherwise get ticks at 1.25, 1.5, ...)."""
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.set_xlabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def savefig(fig, name: str, figs_dir: Path | str) -> Path:
    """Save `fig` as <figs_dir>/<name>.png (stable name, fixed dpi) and return the path."""
    if not name or "/" in name or name.endswith(".png"):
        raise ValueError(f"figure name {name!r} must be a bare name such as 'p1_training_curves'")
    figs_dir = Path(figs_dir)
    figs_dir.mkdir(parents=True, exist_ok=True)
    # atomic: a reader never sees half a PNG
    return atomic_write(figs_dir / f"{name}.png", lambda tmp: fig.savefig(tmp, dpi=DPI, bbox_inches="tight"))


def show_figure(paths: Sequence[Path | str], name: str) -> None:
    """In a notebook, display the figure `name` among `paths` (what a plot function just returned), or say that
    it was not drawn (its result files are missing); an older PNG of that name in the folder is not shown."""
    from IPython.display import Image, display

    found = [Path(p) for p in paths if Path(p).stem == name]
    if found:
        display(Image(filename=str(found[0])))
    else:
        print(f"{name}: not drawn (its result files are missing)")


def caption(fig, text: str | None) -> None:
    """Draw `text` (where the numbers come from: data, profile, seeds, device) as a small grey caption under the
    figure; savefig's tight bounding box keeps it."""
    if text:
        fig.text(0.5, -0.01, text, ha="center", va="top", fontsize=8, color="0.35", wrap=True)


# Where a point's label may go, in points from the point, tried in this order (then the least crowded one).
_LABEL_OFFSETS = [(6, 6, "left"), (6, -12, "left"), (-6, 6, "right"), (-6, -12, "right"), (6, 17, "left"),
                  (6, -23, "left"), (-6, 17, "right"), (-6, -23, "right"), (6, 28, "left"), (6, -34, "left")]


def place_labels(ax, x, y, labels: Sequence[str], fontsize: int = 8) -> list:
    """Annotate each point (x[i], y[i]) with labels[i] where the text overlaps no label placed before it, no point
    and not the axes' edge (greedy, points from left to right; _LABEL_OFFSETS); else where it overlaps least.
    Call after the axes' scales and limits are set. Returns the annotations."""
    fig = ax.figure
    if not hasattr(fig.canvas, "get_renderer"):  # backends without one: lay the figure out first
        fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax.autoscale_view()
    pts = ax.transData.transform(np.column_stack([x, y])) if len(x) else np.zeros((0, 2))
    pad = 5.0 * fig.dpi / 72  # a marker's half size in pixels
    taken = [(px - pad, py - pad, px + pad, py + pad) for px, py in pts]
    frame = ax.get_window_extent(renderer)
    frame = (frame.x0, frame.y0, frame.x1, frame.y1)

    def overlap(a, b):
        w = min(a[2], b[2]) - max(a[0], b[0])
        h = min(a[3], b[3]) - max(a[1], b[1])
        return max(w, 0.0) * max(h, 0.0)

    annotations = []
    for i in np.argsort(np.asarray(x), kind="stable"):
        best = None  # (clash, candidate index, box)
        for k, (dx, dy, ha) in enumerate(_LABEL_OFFSETS):
            ann = ax.annotate(labels[i], (x[i], y[i]), xytext=(dx, dy), textcoords="offset points", ha=ha,
                              fontsize=fontsize)
            box = ann.get_window_extent(renderer)
            ann.remove()
            box = (box.x0, box.y0, box.x1, box.y1)
            area = (box[2] - box[0]) * (box[3] - box[1])
            clash = sum(overlap(box, other) for other in taken) + area - overlap(box, frame)  # + outside the axes
            if best is None or clash < best[0]:
                best = (clash, k, box)
            if clash == 0:
                break
        dx, dy, ha = _LABEL_OFFSETS[best[1]]
        # A label moved from its usual place (right, above) gets a thin leader line to its point.
        leader = dict(arrowstyle="-", lw=0.5, color="0.5", shrinkA=1, shrinkB=4) if best[1] else None
        annotations.append(ax.annotate(labels[i], (x[i], y[i]), xytext=(dx, dy), textcoords="offset points",
                                       ha=ha, fontsize=fontsize, arrowprops=leader))
        taken.append(best[2])
    return annotations
