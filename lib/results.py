"""Results as files: atomic JSON writes, reading back, environment description, config-matched reuse.

Imports torch only where a function needs it, so that the JSON helpers also serve tools without torch
(lib.bench_merge, which merges bench files on a machine that has only the standard library)."""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from lib.paths import REPO

if TYPE_CHECKING:
    import torch


def _clean(obj):
    """JSON-safe copy: NaN/inf become None (JSON has no NaN), tuples become lists, tensors become numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    torch = sys.modules.get("torch")  # a tensor exists only where torch was imported
    if torch is not None and isinstance(obj, torch.Tensor):
        return _clean(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):  # numpy scalars
        return _clean(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _umask() -> int:
    """The process's file-creation mask (reading it means setting it: set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path | str, write) -> Path:
    """Write `path` whole: `write(tmp)` writes a temp file of a unique name beside it (its suffix `path`'s, for
    writers that read the format from it), which then replaces `path` in one rename; a crash or a failed write never
    leaves half a file, and two processes never write into one temp file. A failed write removes its temp file.
    The data reach the disk before the rename, and the rename before the return (fsync of the file, then of its
    folder): a power cut after the call leaves the new file, and never an empty one in its place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it private (0600); a result file is as any other file
        os.close(fd)
        write(Path(tmp))
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync(path.parent)
    return path


def _fsync(path: Path | str) -> None:
    """Flush a file's (or a folder's entries') data to the disk; a file system that cannot sync a folder is left
    as it is."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if not os.path.isdir(path):
            raise
        return  # a folder that cannot be opened so (some systems): its entries are flushed as the system does
    try:
        os.fsync(fd)
    except OSError:
        if not os.path.isdir(path):  # some file systems refuse it for a folder; a file's data must reach the disk
            raise
    finally:
        os.close(fd)


def atomic_write_text(path: Path | str, text: str) -> Path:
    """`text` into `path`, whole (atomic_write)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: Path | str, obj) -> Path:
    """Write `obj` as JSON to `path` atomically (temp file + rename), so a crash never leaves half a file."""
    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            json.dump(_clean(obj), f, indent=1)
            f.write("\n")
    return atomic_write(path, write)


class JSONFileError(json.JSONDecodeError):
    """read_json's error for a file that is no JSON (a json.JSONDecodeError): its message names the file, a git
    merge conflict left in it, and what to do."""

    def __init__(self, msg: str, doc: str, pos: int, path: Path | str = ""):
        super().__init__(msg, doc, pos)
        self.path = path

    def __reduce__(self):
        return self.__class__, (self.msg, self.doc, self.pos, self.path)

    @property
    def reason(self) -> str:
        """'Expecting value at line 3 column 1', with '(a git merge conflict left in it)' where it holds one, or 'the
        file is empty'."""
        if not self.doc.strip() and self.msg == "Expecting value":
            return "the file is empty"
        conflict = " (a git merge conflict left in it)" if "\n<<<<<<< " in "\n" + self.doc else ""
        return f"{self.msg} at line {self.lineno} column {self.colno}{conflict}"

    def __str__(self) -> str:
        return (f"{self.path} cannot be read as JSON: {self.reason}; restore it (`git checkout -- {self.path}` where "
                f"it is committed), or move it aside and run what wrote it again")


def read_json(path: Path | str):
    """Read a JSON file written by atomic_write_json; JSONFileError (a ValueError) where it is no JSON."""
    raw = Path(path).read_bytes()
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:  # binary junk: said as where the text stops being text
        raise JSONFileError(f"not UTF-8 text ({err.reason})", raw[:err.start].decode("utf-8"), err.start,
                            path) from None
    except json.JSONDecodeError as err:
        raise JSONFileError(err.msg, err.doc, err.pos, path) from None


def read_json_or_note(path: Path | str, unreadable: list[str]) -> dict | None:
    """The JSON object (a result) in `path`, or None with 'file name (why)' added to `unreadable` where it cannot be
    read as one (a report leaves such a result out and says so; `lib run` trains its experiment again and replaces
    the file)."""
    obj, why = read_json_object(path)
    if why is not None:
        unreadable.append(f"{Path(path).name} ({why})")
    return obj


def read_json_object(path: Path | str) -> tuple[dict | None, str | None]:
    """(the JSON object in `path`, None), or (None, why it cannot be read as one, in a few words)."""
    try:
        obj = read_json(path)
    except (OSError, ValueError) as err:
        return None, unreadable_why(err)
    if not isinstance(obj, dict):
        return None, f"a JSON {json_kind(obj)}, not an object"
    return obj, None


def json_kind(obj) -> str:
    """JSON's name for the kind of a parsed value that is not an object: 'list', 'string', 'null', ..."""
    return {list: "list", str: "string", bool: "boolean", type(None): "null", dict: "object"}.get(type(obj), "number")


def unreadable_why(err: OSError | ValueError) -> str:
    """Why read_json could not read a file, in a few words: 'not JSON: Expecting value at line 1 column 1',
    'IsADirectoryError: Is a directory'."""
    if isinstance(err, JSONFileError):
        return f"not JSON: {err.reason}"
    return f"{type(err).__name__}: {getattr(err, 'strerror', None) or err}"


# What the study writes into the repository itself (published results, figures, the report): a change there is
# not a change of the code that computes, so it does not make a commit '+dirty' (every publishing run, and the GPU
# runner's bench step, rewrite these before the next run records its commit).
STUDY_OUTPUTS = ("results", "figs", "report.md")


def git_commit(root: Path | str = REPO) -> str:
    """The repository's commit (with '+dirty' when tracked files other than STUDY_OUTPUTS differ from it), or
    'unknown'."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."]
                               + [f":(exclude){p}" for p in STUDY_OUTPUTS], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model as Linux names it ('model name' in /proc/cpuinfo), else the processor or machine type that
    platform reports (e.g. 'x86_64')."""
    try:
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_name(device: torch.device | str) -> str:
    """Human name of a device: the GPU model, or the CPU's model with its thread count (results recorded until
    2026-11-28 name the architecture instead, 'CPU (x86_64, 2 threads)'; two CPU models' kernels round differently,
    so a CPU run is reproduced bit for bit only on the same model)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"CPU ({cpu_model()}, {threads} thread{'' if threads == 1 else 's'})"


def is_cpu_device(name: str | None) -> bool:
    """Whether a recorded device name (device_name's, e.g. 'CPU (AMD EPYC, 2 threads)' or 'NVIDIA H200') is a
    CPU's; a record without one counts as a CPU's (runs before devices were recorded ran on the CPU)."""
    return not name or str(name).startswith("CPU")


def trained_on(result: dict) -> list:
    """The devices that trained a result: its `devices` (a run resumed on other machines), else its `device`."""
    return result.get("devices") or [result.get("device")]


def environment_info(device: torch.device | str) -> dict:
    """What produced a result: device, library versions, git commit."""
    import torch
    import torchvision

    return {"device": device_name(device), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version(), "git_commit": git_commit()}


REUSE_ONLY_ENV = "CIFAR10_REUSE_ONLY"  # 1/true/yes/on: compute nothing, only read finished results
_ON = ("1", "true", "yes", "on")
_OFF = ("", "0", "false", "no", "off")


def set_reuse_only(on: bool | None) -> None:
    """Switch this process (and the processes it starts) to reading finished results only (True), or back
    (False); None leaves the setting as it is ($CIFAR10_REUSE_ONLY, off when unset).

    The notebooks' `reuse_only` parameter calls it, so a parameter that names a configuration nobody ran stops
    with its name instead of starting hours of training; `python -m lib study --reuse-only` passes it on.
    `python -m lib bench` times its own epochs and does not look at it."""
    if on is not None:
        os.environ[REUSE_ONLY_ENV] = "1" if on else "0"


def reuse_only() -> bool:
    """Whether this process may only read finished results (set_reuse_only, or CIFAR10_REUSE_ONLY=1); a value that
    is neither on nor off is an error (the switch that stops computing must not be read as off by a typo)."""
    value = os.environ.get(REUSE_ONLY_ENV, "").strip().lower()
    if value not in _ON + _OFF:
        raise ValueError(f"{REUSE_ONLY_ENV}={os.environ[REUSE_ONLY_ENV]!r}: use 1 (only read finished results; also "
                         f"true, yes, on) or 0 (compute what is missing; also false, no, off, or unset)")
    return value in _ON


def refuse_if_reuse_only(what: str, where: Path | str, forced: bool = False) -> None:
    """Raise ValueError when reuse_only() is on: `what` (e.g. 'training p1-CANet-s0') would have to run
    because no finished result in `where` matches its configuration, or because `forced` (force = True)."""
    if reuse_only():
        why = ("force asks to compute it again" if forced else
               f"no finished result in {where} matches its configuration")
        raise ValueError(
            f"reuse_only is on ({REUSE_ONLY_ENV}={os.environ.get(REUSE_ONLY_ENV)}), and {what} would have to run: "
            f"{why}. Check the parameters (profile, data_source, seeds, models, num_epochs, precision, publish, force) "
            f"against the results you meant to show, or set reuse_only = False and run the setup cell again "
            f"(elsewhere: unset {REUSE_ONLY_ENV}) to compute it.")


def forced_names(force, names, what: str) -> set[str]:
    """Which of the experiments `names` a `force` setting recomputes: every one for True, none for False or None,
    and for an experiment name or a list of them (a notebook's `force = ["p1-ResNet18-s1"]`, to re-run one
    experiment and reuse the rest) those named. A name that is not among `names` is a ValueError listing them,
    since a typo would otherwise recompute nothing without a word; `what` says whose experiments they are."""
    names = list(names)
    if force is True:
        return set(names)
    if not force:
        return set()
    wanted = [force] if isinstance(force, str) else list(force)
    if unknown := [n for n in wanted if n not in names]:
        raise ValueError(f"force names {', '.join(map(repr, unknown))}, not among the experiments of {what}: "
                         f"{', '.join(names)} (force = True recomputes all of them)")
    return set(wanted)


def say_reused(*names: str, trained: bool = False) -> None:
    """Say that these finished results were reused, not computed again (training runs: `trained`), and how to
    redo them: the only sign that a notebook cell or `lib run` did no work."""
    verb, redo = ("trained", "retrains it") if trained else ("computed", "computes it again")
    print(f"{', '.join(names)}: finished before, reused (not {verb} again; --force, or in a notebook force = True or "
          f"force = [its name], {redo})")


_noted_unreadable: set[str] = set()  # result files reusable_result found unreadable (noted once per process)


def reusable_result(path: Path | str, config: dict, config_cls=None) -> dict | None:
    """The result at `path` if its recorded config equals `config`, else None.

    With `config_cls` (a dataclass with from_dict), both sides are normalised through it first, so a
    result written before a new field (with a default) was added still matches.
    """
    path = Path(path)
    if not path.exists():
        return None
    result, why = read_json_object(path)
    if result is None:  # unreadable: recomputed rather than trusted, and said once per file and process
        if str(path) not in _noted_unreadable:
            _noted_unreadable.add(str(path))
            print(f"note: {path} cannot be read as a result ({why}): its "
                  f"experiment counts as not done, and running it replaces the file (a committed one: `git "
                  f"checkout -- {path}` brings it back first)")
        return None
    stored = result.get("config")
    if config_cls is not None:
        try:
            return result if config_cls.from_dict(stored) == config_cls.from_dict(config) else None
        except (TypeError, ValueError):
            return None
    return result if _same_source(_clean(stored)) == _same_source(_clean(config)) else None


def rerun_marker(dirs, name: str) -> Path:
    """<checkpoints>/<name>.rerun.json: written by lib.train.train when a run with force starts training over a
    finished result of the same run (its config inside), deleted when it finishes."""
    return Path(dirs.checkpoints) / f"{name}.rerun.json"


def rerun_pending(cfg, dirs) -> bool:
    """Whether a re-run with force of cfg's finished run stopped part-way in `dirs`: its marker, of cfg's config,
    beside its resumable checkpoint. Then the finished result is not reused (reusable_run): training the run,
    with or without force, goes on with the re-run or starts it over, and its result replaces the finished one.
    (A resumable checkpoint beside a finished result without the marker, e.g. of a run interrupted here whose result
    came from another machine, leaves the result standing.)"""
    marker = rerun_marker(dirs, cfg.name)
    if not marker.exists() or not (Path(dirs.checkpoints) / f"{cfg.name}.last.pt").exists():
        return False
    try:
        return read_json(marker).get("config") == cfg.to_dict()
    except (OSError, ValueError, AttributeError):
        return False


def reusable_run(cfg, dirs) -> dict | None:
    """The finished result of the training run `cfg` (a lib.config.TrainConfig) in `dirs` that lib.train.train
    reuses: its result file, of the same config, and for a run that records per-step series (record_steps: the BN
    protocol) a readable <name>.steps.json beside it (the report's loss band and gradient range need it: without
    one the run is trained again), unless a re-run of it with force stopped part-way (rerun_pending). None
    otherwise."""
    found = reusable_result(Path(dirs.results) / f"{cfg.name}.json", cfg.to_dict(), type(cfg))
    if found is not None and getattr(cfg, "record_steps", False):
        try:
            read_json(Path(dirs.results) / f"{cfg.name}.steps.json")
        except (OSError, ValueError):
            return None
    return None if found is not None and rerun_pending(cfg, dirs) else found


def _same_source(config):
    """A plain config dict with its data_source recorded as TrainConfig records it ('shared' for the workplace's
    JPEG copy wherever a checkout kept it), so plain configs compare as the dataclass ones do."""
    from lib.config import _canonical_source_name

    if isinstance(config, dict) and isinstance(config.get("data_source"), str):
        return dict(config, data_source=_canonical_source_name(config["data_source"]))
    return config
