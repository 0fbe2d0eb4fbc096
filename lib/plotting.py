"""The one figure helper: every figure of the study is saved through `savefig`."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

DPI = 130
FIGSIZE = (6.4, 4.0)  # default size of a one-panel figure, inches


def new_figure(ncols: int = 1, nrows: int = 1, width: float | None = None, height: float | None = None, **kw):
    """A figure with the study's default size (scaled by the panel grid)."""
    w = width or FIGSIZE[0] * (1 if ncols == 1 else 0.75 * ncols)
    h = height or FIGSIZE[1] * (1 if nrows == 1 else 0.8 * nrows)
    return plt.subplots(nrows, ncols, figsize=(w, h), **kw)


def savefig(fig, name: str, figs_dir: Path | str) -> Path:
    """Save `fig` as <figs_dir>/<name>.png (stable name, fixed dpi) and return the path."""
    if not name or "/" in name or name.endswith(".png"):
        raise ValueError(f"figure name {name!r} must be a bare name such as 'p1_training_curves'")
    figs_dir = Path(figs_dir)
    figs_dir.mkdir(parents=True, exist_ok=True)
    path = figs_dir / f"{name}.png"
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight")
    tmp.replace(path)  # atomic: a reader never sees half a PNG
    return path
