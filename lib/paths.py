"""Where a run writes its results, figures, report, checkpoints and logs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class OutputDirs:
    """The folders of one profile's run."""

    results: Path  # result JSON files and per-step series (small, committed for published runs)
    figs: Path  # PNG figures
    report: Path  # the rendered report.md
    checkpoints: Path  # model checkpoints (never committed)
    runs: Path  # TensorBoard logs (never committed)


def output_dirs(profile: str, publish: bool | None = None, root: Path | str | None = None) -> OutputDirs:
    """Folders for `profile`.

    `full` (or any profile with publish=True) writes to the committed places: results/<profile>/,
    figs/, report.md. `smoke` and `quick` default to the ignored build/<profile>/ so that trying
    the project never overwrites the committed study. `root` relocates everything (tests).
    """
    base = Path(root) if root is not None else REPO
    publish = (profile == "full") if publish is None else publish
    if publish:
        return OutputDirs(base / "results" / profile, base / "figs", base / "report.md",
                          base / "checkpoints" / profile, base / "runs" / profile)
    b = base / "build" / profile
    return OutputDirs(b / "results", b / "figs", b / "report.md", b / "checkpoints", b / "runs")
