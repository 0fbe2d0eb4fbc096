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
    report.md, and figs/ (the full study's) or figs/<profile>/ (a published smoke or quick run's, so that the
    figures of two profiles never mix: a report links only its own profile's, however far each study got).
    `smoke` and `quick` default to the ignored build/<profile>/ so that trying the project never overwrites the
    committed study. `root` relocates everything (tests).
    """
    base = Path(root) if root is not None else REPO
    publish = (profile == "full") if publish is None else publish
    if publish:
        figs = base / "figs" if profile == "full" else base / "figs" / profile
        return OutputDirs(base / "results" / profile, figs, base / "report.md",
                          base / "checkpoints" / profile, base / "runs" / profile)
    b = base / "build" / profile
    return OutputDirs(b / "results", b / "figs", b / "report.md", b / "checkpoints", b / "runs")


def gpu_bench_files(root: Path | str | None = None) -> list[Path]:
    """The bench files under <root>/results/bench that are not a CPU's (<device-slug>.json, sorted by name): a CPU's
    are dry runs of the GPU runner."""
    folder = (Path(root) if root is not None else REPO) / "results" / "bench"
    return [p for p in sorted(folder.glob("*.json")) if not p.stem.startswith("cpu")]
