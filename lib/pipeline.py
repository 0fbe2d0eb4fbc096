"""The study's main job: execute the numbered notebooks headless (papermill), in order, then render the report.

    run_study("smoke", data_source="shared")         # all four notebooks, then report.md
    run_study("quick", notebooks=["01", "04"])      # a subset (the report is rendered from all results present)

Executed copies (with outputs) go to <root>/build/<profile>/executed/ (never committed), whatever the
output folders are. A failing cell stops the study with a StudyError naming the notebook and the cell.
Each finished notebook is recorded (parameters, wall time) in <results>/study.json, which the report's
reproducibility section reads.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

from lib.paths import REPO, OutputDirs, output_dirs
from lib.results import atomic_write_json, read_json

NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = ("01_train_canet", "02_baselines", "03_visualize", "04_batchnorm")
KERNEL_NAME = "python3"
STUDY_FILE = "study.json"
CLI_PARAMETERS = ("models", "model", "num_epochs", "precision")  # notebook parameters `lib study` has options for
GPU_PROFILE = "full"  # its training is meant for a GPU: without one, the study renders only once all is there (below)


class StudyError(RuntimeError):
    """A notebook of the study failed; the message names the notebook, the cell and the error."""


def select_notebooks(notebooks: Sequence[str] | None = None) -> list[str]:
    """Resolve '01', '01_train_canet' or '01_train_canet.ipynb' to notebook names, in study order."""
    if not notebooks:
        return list(NOTEBOOKS)
    chosen = set()
    for item in notebooks:
        key = Path(str(item)).name.removesuffix(".ipynb")
        matches = [n for n in NOTEBOOKS if n == key or n.split("_", 1)[0] == key.zfill(2)]
        if not matches:
            raise ValueError(f"unknown notebook {item!r}: choose from {', '.join(NOTEBOOKS)} (or their numbers 01-04)")
        chosen.update(matches)
    return [n for n in NOTEBOOKS if n in chosen]


def notebook_models(extra: dict) -> dict[str, list[str]]:
    """The Part 1 models notebooks 01 (the CANet variant `model`, default CANet) and 02 (`models`, default all
    nine) train, by notebook number."""
    from lib.models import PART1_MODELS
    from lib.part1 import DEFAULT_MAIN_MODEL

    models = extra.get("models") or PART1_MODELS
    return {"01": [extra.get("model") or DEFAULT_MAIN_MODEL],
            "02": [models] if isinstance(models, str) else list(models)}


def part1_configs_of(source: str, names: Sequence[str], seeds: Sequence[int], extra: dict, profile: str) -> dict:
    """{run name: TrainConfig} of the Part 1 runs these notebooks train, with their num_epochs and precision
    overrides, in notebook order."""
    from lib import part1

    models, wanted = notebook_models(extra), {}
    for name in (n for n in names if n[:2] in models):
        for cfg in part1.configs(profile, source, models[name[:2]], seeds, extra.get("num_epochs"),
                                 extra.get("precision")):
            wanted.setdefault(cfg.name, cfg)
    return wanted


def work_missing(source: str, dirs: OutputDirs, names: Sequence[str], seeds: Sequence[int] = (0,),
                 extra_params: dict | None = None, force: bool = False, profile: str = GPU_PROFILE,
                 reuse_only: bool = False) -> list[str]:
    """What these notebooks would compute themselves with `profile` in `dirs`: the Part 1 runs of 01 (the CANet
    variant `model`, default CANet) and 02 (the Part 1 `models`, default all nine) for `seeds`, with their
    `num_epochs` and `precision` overrides, that have no matching result (all of them with `force`); with the
    `full` profile, 02's cost files that are not a GPU measurement (cost-<model>; other profiles measure them in seconds, no
    training), or with `reuse_only` (which shows any recorded one) those that do not exist; 04's BN protocol runs,
    loss slices and probe runs. Notebook 03 computes nothing of the kind: it shows a run that exists, or fails
    saying which is missing."""
    from lib import part1
    from lib.plan import gpu_cost_file, select_jobs, source_name, study_jobs
    from lib.experiments import bn_experiments
    from lib.results import reusable_run

    extra = extra_params or {}
    models = notebook_models(extra)
    wanted = part1_configs_of(source, names, seeds, extra, profile)
    missing = [n for n, cfg in wanted.items() if force or reusable_run(cfg, dirs) is None]
    if any(name.startswith("02") for name in names):
        if reuse_only:
            missing += [f"cost-{m}" for m in models["02"] if force or not part1.cost_path(dirs, m).exists()]
        elif profile == GPU_PROFILE:
            missing += [f"cost-{m}" for m in models["02"] if force or not gpu_cost_file(dirs, m)]
    if any(name.startswith("04") for name in names):
        for job in select_jobs(study_jobs(None, source, dirs, seeds, profile), ["part2", "probe"]):
            # The lr-1e-3 pair: its runs without a result (none where the job only lacks the slices: job.force),
            # then the slices, which are never done while a run of the pair is not (they start from its result).
            if job.kind == "bn-slices" and not force and not job.done:
                pair = [] if job.force else [c for c in bn_experiments(profile, source_name(source))
                                             if c.name in job.names]
                missing += [c.name for c in pair if reusable_run(c, dirs) is None] + ["loss slices"]
            elif force or not job.done:
                missing += list(job.names)
    return missing


def executed_dir(profile: str, root: Path | str | None = None) -> Path:
    """Where executed copies of the notebooks go: <root>/build/<profile>/executed (ignored by git)."""
    return (Path(root) if root is not None else REPO) / "build" / profile / "executed"


@contextlib.contextmanager
def kernel_for_this_python(where: Path) -> Iterator[None]:
    """Make the kernel named 'python3' run this interpreter (sys.executable) while the block runs.

    A 'python3' kernelspec elsewhere (user folder, another environment) could start a Python without this
    project's packages; a spec written under `where` and put first on JUPYTER_PATH wins over all others.
    """
    spec_dir = Path(where) / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    # The kernel's own log at ERROR: ipykernel warns on every start that its sockets (on localhost, here) are not
    # encrypted, four alarming lines per main job; the notebooks' own warnings still reach their cells' outputs.
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                     "--IPKernelApp.log_level=ERROR"],
            "display_name": f"Python 3 ({sys.executable})", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(where)] + ([old] if old else []))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = old


def notebook_parameters(path: Path) -> set[str]:
    """Names declared in the notebook's `parameters` cell."""
    import papermill

    return set(papermill.inspect_notebook(str(path)))


def _failure_message(name: str, out_path: Path, err) -> str:
    """A clear message from papermill's PapermillExecutionError: notebook, cell, error, first source lines."""
    source = "\n".join("    " + line for line in str(getattr(err, "source", "")).splitlines()[:6])
    return (f"notebook {name}.ipynb failed in cell {err.cell_index} (execution count {err.exec_count}; "
            f"the cell numbering counts papermill's injected-parameters cell): {err.ename}: {err.evalue}\n"
            f"  cell source:\n{source}\n"
            f"  the executed copy with the full traceback is {out_path}")


def _record(dirs: OutputDirs, name: str, params: dict, seconds: float, command: str, other: dict) -> None:
    """Add a finished notebook (parameters, wall time) and the command that ran it to <results>/study.json."""
    path = Path(dirs.results) / STUDY_FILE
    record = read_json(path) if path.exists() else {}
    record.setdefault("notebooks", {})[name] = {
        "parameters": params, "seconds": round(seconds, 1),
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command, "other_parameters": other}  # other: what the command line cannot express (tests)
    for key in ("command", "other_parameters"):  # older files kept the latest call's here: derivable, stale
        record.pop(key, None)
    atomic_write_json(path, record)


def study_command(profile: str, data_source: str | None, publish: bool, notebooks, seeds,
                  extra_params: dict | None = None, force: bool = False, reuse_only: bool = False) -> str:
    """The `python -m lib study ...` command line equivalent to these arguments (for the report)."""
    parts = ["python", "-m", "lib", "study", "--profile", profile]
    if data_source:
        parts += ["--data", str(data_source)]
    if publish:
        parts.append("--publish")
    if notebooks:
        parts += ["--notebooks", *[n.split("_", 1)[0] for n in select_notebooks(notebooks)]]
    parts += ["--seeds", *[str(s) for s in seeds]]
    extra = extra_params or {}
    if force:
        parts.append("--force")
    if reuse_only:
        parts.append("--reuse-only")
    if extra.get("model"):
        parts += ["--model", str(extra["model"])]
    if extra.get("models"):
        parts += ["--models", *extra["models"]]
    if extra.get("num_epochs"):
        parts += ["--num-epochs", str(extra["num_epochs"])]
    if extra.get("precision"):
        parts += ["--precision", str(extra["precision"])]
    return shlex.join(parts)


# Notebook parameters that `python -m lib study` sets from its own options (besides CLI_PARAMETERS).
_STUDY_OPTIONS = ("profile", "data_source", "publish", "force", "seeds", "seed", "root", "reuse_only")


def notebook_commands(study: dict) -> list[dict]:
    """The commands that produced the notebooks recorded in a study.json, in running order:
    [{'command', 'notebooks': [names], 'other': {notebook parameters no option expresses}}]; notebooks run
    by one command share an entry. A notebook recorded without its command (older files)
    gets one rebuilt from its recorded parameters, for it alone."""
    out = []
    for name, entry in sorted((study.get("notebooks") or {}).items()):
        params = entry.get("parameters") or {}
        command, other = entry.get("command"), entry.get("other_parameters")
        if command is None:
            command = study_command(params.get("profile", "smoke"), params.get("data_source"),
                                    bool(params.get("publish")), [name], params.get("seeds") or [0],
                                    {k: params[k] for k in CLI_PARAMETERS if params.get(k)},
                                    bool(params.get("force")), bool(params.get("reuse_only")))
            other = {k: v for k, v in params.items() if k not in _STUDY_OPTIONS + CLI_PARAMETERS}
            if params.get("root") is not None:
                other["root"] = params["root"]
        same = [c for c in out if c["command"] == command and c["other"] == (other or {})]
        if same:
            same[0]["notebooks"].append(name)
        else:
            out.append({"command": command, "notebooks": [name], "other": other or {}})
    return out


def runs_beyond_notebooks(study: dict, p1: Sequence[dict], publish: bool) -> list[str]:
    """`python -m lib run` commands for the Part 1 runs in `p1` that no recorded notebook call trained
    (notebook 01: its model x seeds; notebook 02: its models x seeds), e.g. extra seeds of some models.
    Models with the same extra seeds share a command; [] when the notebooks cover every run."""
    from lib import part1
    from lib.models import PART1_MODELS

    notebooks = study.get("notebooks") or {}
    covered = set()  # (model, seed) pairs the notebooks trained; their defaults where no model was given
    for name in ("01_train_canet", "02_baselines"):
        params = (notebooks.get(name) or {}).get("parameters")
        if params is not None:
            models = notebook_models(params)[name[:2]]
            covered |= {(m, int(seed)) for m in models for seed in params.get("seeds") or [0]}
    extra = {(r["model"], int(r["seed"])) for r in p1} - covered
    groups: dict[tuple, list[str]] = {}
    for model in sorted({m for m, _ in extra}, key=lambda m: (list(PART1_MODELS) + [m]).index(m)):
        groups.setdefault(tuple(sorted(seed for m, seed in extra if m == model)), []).append(model)
    out = []
    # The data source as the notebooks were given it ('shared'), else as the run's config recorded it.
    given = [(e.get("parameters") or {}).get("data_source") for e in notebooks.values()]
    for seeds, models in groups.items():
        r = next(r for r in p1 if r["model"] == models[0])
        source = next((g for g in given if g), None) or r["config"]["data_source"]
        parts = ["python", "-m", "lib", "run", "--profile", str(r["profile"]),
                 "--data", str(source)] + (["--publish"] if publish else [])
        options = part1.recipe_options(r["config"])  # the table's runs share one recipe (part1._same_recipe)
        out.append(shlex.join(parts + ["--models", *models, "--seeds", *map(str, seeds), *options]))
    return out


def run_study(profile: str, data_source: str | None = None, publish: bool | None = None,
              notebooks: Sequence[str] | None = None, seeds: Sequence[int] = (0,), force: bool = False,
              extra_params: dict | None = None, root: Path | str | None = None, log_output: bool = False,
              progress_bar: bool = False, command: str | None = None, allow_cpu_training: bool = False,
              reuse_only: bool = False) -> Path:
    """Execute the notebooks headless in order with these parameters, then render the report; return its path.

    `data_source`: None = $CIFAR10_SOURCE or 'official'. `extra_params` (e.g. models, model, num_epochs) go
    to the notebooks that declare them. `root` relocates every output (tests). Raises StudyError when a cell
    fails (nothing after it runs).

    The `full` profile without a CUDA device renders what the GPU trained (docs/GPU.md) and trains nothing:
    if its notebooks would train an experiment or measure a cost file (work_missing), StudyError names
    them before any notebook runs, unless `allow_cpu_training` (hours to days on a CPU). `reuse_only` does the
    same for any profile and device, and passes `reuse_only` to the notebooks, whose compute then refuses to start
    (lib.results.refuse_if_reuse_only): they only read finished results and draw from them (to view a committed
    study without starting hours of training by a wrong parameter). Such a run is not recorded in study.json: its
    record keeps the commands and times of the calls that computed the results.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from lib.config import get_profile
    from lib.data import canonical_source
    from lib.report import render_report
    from lib.results import reuse_only as env_reuse_only

    get_profile(profile)  # a clear error for an unknown profile before any kernel starts
    source = canonical_source(data_source)
    dirs = output_dirs(profile, publish=publish or None, root=root)
    names = select_notebooks(notebooks)
    reuse_only = reuse_only or env_reuse_only()  # CIFAR10_REUSE_ONLY=1 exported: the same as --reuse-only
    if any(n.startswith("03") for n in names) and not any(n.startswith("01") for n in names):
        # Notebook 03 shows a finished run that notebook 01 trained: missing, or on other data, it would stop there,
        # after the notebooks before it ran. Say so first.
        from lib.part1 import main_run

        model = (extra_params or {}).get("model")
        try:
            main_run(dirs, model, seeds[0] if model and seeds else None, source)
        except (FileNotFoundError, ValueError) as err:
            raise StudyError(f"notebook 03 would stop: {err}") from None
    if reuse_only:
        missing = work_missing(source, dirs, names, seeds, extra_params, force, profile=profile, reuse_only=True)
        if missing:
            raise StudyError(
                f"--reuse-only: these notebooks would train or measure {len(missing)} experiment(s) or cost file(s) "
                f"that have no matching result in {dirs.results}: {', '.join(missing)}. Check the options (profile, data, seeds, "
                f"models, --publish) against the results you meant to show, or leave out --reuse-only to compute "
                f"them.")
    else:  # what the notebooks would compute, for the checks below
        missing = work_missing(source, dirs, names, seeds, extra_params, force, profile=profile)
        if progress_bar or log_output:  # a progress bar counts cells: say what the long ones will be
            print(f"[study] to compute: {len(missing)} experiment(s) or cost file(s): "
                  f"{', '.join(missing)}; the rest is reused" if missing else
                  "[study] nothing to compute: every experiment of these notebooks has a result (reused)", flush=True)
    if not reuse_only and profile == GPU_PROFILE and not allow_cpu_training and missing:
        import torch

        if not torch.cuda.is_available():
            raise StudyError(
                f"the {profile} profile would train or measure {len(missing)} experiment(s) or cost file(s) on this "
                f"machine's CPU (no CUDA device): {', '.join(missing)}. It is meant for a GPU: run them there "
                f"(docs/GPU.md, scripts/gpu_full_study.sh; cost files: its `costs` job), merge the results, and run "
                f"this again to render the notebooks and report from them; or pass --allow-cpu-training to compute "
                f"them here (hours to days for training).")
    if not reuse_only and any(not name.startswith("cost-") for name in missing):  # cost files need no data
        from lib.data import load_cifar10

        load_cifar10(source)  # missing or corrupt data: one clear error (DataError) before any kernel starts
    if not reuse_only and not force:  # an override would stop in a notebook: say so before the first one starts
        from lib.train import keep_advice, override_clash

        wanted = part1_configs_of(source, names, seeds, extra_params or {}, profile)
        if any(name.startswith("04") for name in names):  # the BN protocol's runs, on other data in the folder
            from lib.experiments import bn_experiments

            wanted.update((c.name, c) for c in bn_experiments(profile, source))
        clash = {n: changed for n, cfg in wanted.items() if (changed := override_clash(cfg, dirs))}
        if clash:
            raise StudyError(
                f"these notebooks would replace finished results of the same runs in {dirs.results}, which differ "
                "only in " + "; ".join(f"{n}: {', '.join(c)}" for n, c in clash.items()) + ". To keep them, "
                f"{keep_advice(profile, Path(dirs.results), 'those result files')}; or pass --force to replace them")
    params = {"profile": profile, "data_source": source, "publish": bool(publish), "force": bool(force),
              "seeds": [int(s) for s in seeds], "root": str(root) if root is not None else None,
              "reuse_only": True if reuse_only else None, **(extra_params or {})}
    out_dir = executed_dir(profile, root)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = command or study_command(profile, data_source, bool(publish), notebooks, seeds, extra_params, force,
                                       reuse_only)
    other = {k: v for k, v in (extra_params or {}).items() if k not in CLI_PARAMETERS}
    if root is not None:  # the command line has no option for it
        other["root"] = str(root)
    with kernel_for_this_python(out_dir.parent / "jupyter"):
        for name in names:
            src = NOTEBOOK_DIR / f"{name}.ipynb"
            if not src.exists():
                raise StudyError(f"notebook {src} does not exist")
            declared = notebook_parameters(src)
            nb_params = {k: v for k, v in params.items() if k in declared}
            if "seed" in declared and params.get("model") and "seed" not in params:
                nb_params["seed"] = params["seeds"][0]  # notebook 03 shows the run 01 trained first for that model
            out_path = out_dir / f"{name}.ipynb"
            t0 = time.perf_counter()
            try:
                papermill.execute_notebook(str(src), str(out_path), parameters=nb_params, kernel_name=KERNEL_NAME,
                                           cwd=str(NOTEBOOK_DIR), progress_bar=progress_bar,
                                           log_output=log_output)
            except PapermillExecutionError as err:
                raise StudyError(_failure_message(name, out_path, err)) from None
            seconds = time.perf_counter() - t0
            if not reuse_only:  # a viewing run computed nothing: the record keeps the call that did
                _record(dirs, name, nb_params, seconds, command, other)
            if log_output or progress_bar:
                print(f"[study] {name}: done in {seconds:.0f} s ({out_path})", flush=True)
    return render_report(profile, dirs)
