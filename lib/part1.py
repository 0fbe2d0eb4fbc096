"""Part 1 orchestration for the notebooks: train the comparison, read its results back, measure costs.

Thin glue between lib.experiments / lib.train (compute), lib.cost (FLOPs, throughput) and
lib.stats (the table). Everything it produces is a file under dirs.results:

- p1-<model>-s<seed>.json      written by lib.train (plus .weights.json for CANets)
- cost-<model>.json            `compute_costs`: FLOPs, parameters, inference images/s, device
- part1-main.json              `mark_main`: which run notebook 01 trained (notebook 03 visualises it)
"""
from __future__ import annotations

import json
import shlex
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Sequence

from lib.config import TrainConfig, same_data_source
from lib.experiments import part1_experiments, part1_name
from lib.models import PART1_MODELS
from lib.paths import OutputDirs
from lib.results import (atomic_write_json, environment_info, forced_names, is_cpu_device, read_json,
                         refuse_if_reuse_only, reusable_run, reuse_only, say_reused, unreadable_why)

MAIN_FILE = "part1-main.json"
DEFAULT_MAIN_MODEL = "CANet"
# Inference throughput batch: 1024 on a GPU as issue 6 asks; a CPU run of that size takes minutes for
# the big models, so CPU uses a smaller batch (recorded in the cost file, with a note).
GPU_COST_BATCH, CPU_COST_BATCH = 1024, 64
GPU_COST_ITERS, CPU_COST_ITERS = 20, 3


def run_part1(profile: str, data_source: str, dirs: OutputDirs, models: Sequence[str] | None = None,
              seeds: Sequence[int] = (0,), force: bool | str | Sequence[str] = False, num_epochs: int | None = None,
              progress: bool = True, precision: str | None = None) -> list[dict]:
    """Train (or reuse) every (model, seed) of the Part 1 comparison; return the result dicts in order.

    `force`: True retrains every run, a run name or a list of them (e.g. 'p1-ResNet18-s1') retrains just those
    (lib.results.forced_names). `num_epochs` overrides the profile's epoch count (used by the notebook test to
    stay cheap), `precision` the recipe's 'auto' (see `configs`). The runs reused are said in one line.
    """
    from lib.train import train  # imported here: the trainer pulls in tensorboard, which is slow to import

    cfgs = configs(profile, data_source, models, seeds, num_epochs, precision)
    redo = forced_names(force, [c.name for c in cfgs], "these models and seeds")
    reused = {c.name: found for c in cfgs if c.name not in redo and (found := reusable_run(c, dirs)) is not None}
    if reused:
        say_reused(*reused, trained=True)
    return [reused.get(cfg.name) or train(cfg, dirs=dirs, force=cfg.name in redo, progress=progress) for cfg in cfgs]


def configs(profile: str, data_source: str, models: Sequence[str] | None = None, seeds: Sequence[int] = (0,),
            num_epochs: int | None = None, precision: str | None = None) -> list[TrainConfig]:
    """lib.experiments.part1_experiments (seed-major), with `num_epochs` overriding the profile's epochs and
    `precision` the recipe's 'auto' (bf16 autocast on a GPU, fp32 on a CPU): 'bf16' is bf16 autocast on every
    device (on a CPU with AMX-bf16, CANet and ResNet epochs 1.6-3.2x faster than fp32: README), 'fp32' true fp32
    everywhere. Either override is another configuration under the same run names: lib.train.train replaces a
    finished result of the same run with another number of epochs or precision only when forced."""
    cfgs = part1_experiments(profile, data_source, seeds=[int(s) for s in seeds], models=models)
    if num_epochs:
        cfgs = [c.replace(num_epochs=int(num_epochs)) for c in cfgs]
    return [c.replace(precision=precision) for c in cfgs] if precision else cfgs


def recipe_options(config: dict) -> list[str]:
    """The `python -m lib run`/`study` options that reproduce a Part 1 run's departures from its profile's
    recipe: --num-epochs where its epochs differ, --precision where it is not the recipe's 'auto'."""
    from lib.config import PROFILES

    out = []
    profile, epochs = config.get("profile"), config.get("num_epochs")
    if epochs and profile in PROFILES and epochs != PROFILES[profile].num_epochs:
        out += ["--num-epochs", str(epochs)]
    if config.get("precision", "auto") != "auto":
        out += ["--precision", str(config["precision"])]
    return out


def _is_result_file(path: Path) -> bool:
    """A run's main result file (not its .steps.json / .weights.json companions)."""
    return path.suffix == ".json" and not path.name.endswith((".steps.json", ".weights.json"))


def load_results(dirs: OutputDirs, prefix: str = "p1-", models: Sequence[str] | None = None,
                 left_out: list[str] | None = None) -> list[dict]:
    """Every finished result (status 'ok' or 'diverged') named <prefix>*.json in dirs.results, sorted by name.

    `models` keeps only the results of those models. Part 1 results of another recipe or data than most of them
    are left out (_same_recipe), and so is a file that cannot be read (with a message; `lib run` trains its
    experiment again); `left_out` (a list) gets a description of each, for the report.
    """
    results = []
    for path in sorted(Path(dirs.results).glob(f"{prefix}*.json")):
        if not _is_result_file(path):
            continue
        try:
            r = read_json(path)
        except (OSError, ValueError) as err:
            why = unreadable_why(err)
            print(f"lib.part1: skipping unreadable result {path}: {why}", file=sys.stderr)
            if left_out is not None:
                left_out.append(f"{path.stem} (its file cannot be read, {why})")
            continue
        if isinstance(r, dict) and r.get("status") in ("ok", "diverged") and (not models or r.get("model") in models):
            results.append(r)
    # Part 1 runs go into one comparison table: only runs of one recipe and data may sit together.
    return _same_recipe(results, left_out) if prefix == "p1-" else results


def _recipe_key(result: dict) -> str:
    """What must be equal for two runs to sit in one table: the config without name/model/seed, and the data."""
    cfg = result.get("config", {})
    try:
        cfg = TrainConfig.from_dict(cfg).to_dict()  # canonical form (e.g. the data source name)
    except (TypeError, ValueError):
        pass
    cfg = {k: v for k, v in cfg.items() if k not in ("name", "model", "seed")}
    return json.dumps([cfg, (result.get("data") or {}).get("sha256")], sort_keys=True)


def _same_recipe(results: list[dict], left_out: list[str] | None = None) -> list[dict]:
    """Keep the runs that share the most common recipe and data; warn about the others (never mix them), and add
    them to `left_out` as 'name (how it differs)'."""
    if not results:
        return results
    keys = [_recipe_key(r) for r in results]
    common = Counter(keys).most_common(1)[0][0]
    dropped = [f"{r['name']} (another recipe or data: {_recipe_difference(k, common)})"
               for r, k in zip(results, keys) if k != common]
    if left_out is not None:
        left_out += dropped
    if dropped:
        print(f"lib.part1: leaving out {', '.join(dropped)}: trained with another recipe or data than the "
              f"other results in this folder (rerun them, or move them away)", file=sys.stderr)
    return [r for r, k in zip(results, keys) if k == common]


def _recipe_difference(key: str, common: str) -> str:
    """How the recipe key of a run differs from the common one, in words: 'precision bf16, not auto'."""
    (cfg, data), (ref, ref_data) = json.loads(key), json.loads(common)
    parts = [f"{k} {cfg.get(k)}, not {ref.get(k)}" for k in sorted(set(cfg) | set(ref)) if cfg.get(k) != ref.get(k)]
    return "; ".join(parts + (["other data"] if data != ref_data else []))


# --------------------------------------------------------------------------------------------- the main run

def mark_main(dirs: OutputDirs, result: dict) -> Path:
    """Record which run notebook 01 trained (<results>/part1-main.json), so notebook 03 and the report use it.
    Under reuse_only (a viewing call) the record is left as it is, as study.json keeps the call that trained."""
    path = Path(dirs.results) / MAIN_FILE
    if reuse_only():
        return path
    return atomic_write_json(path, {"model": result["model"], "seed": result["seed"], "name": result["name"]})


def main_run(dirs: OutputDirs, model: str | None = None, seed: int | None = None,
             data_source: str | None = None) -> dict:
    """The result to visualise: `model`/`seed` if given, else the run recorded by notebook 01, else CANet seed 0.
    Without a seed, the recorded run's seed where `model` is None or the recorded model, else seed 0. With
    `data_source` (canonical, as the configs record it), a run trained on other data is refused: its figures would
    be drawn and recorded as this data's."""
    marker = Path(dirs.results) / MAIN_FILE
    recorded = read_json(marker) if marker.exists() else {}
    if model is None or model == recorded.get("model"):
        model = recorded.get("model", DEFAULT_MAIN_MODEL)
        seed = recorded.get("seed", 0) if seed is None else seed
    seed = 0 if seed is None else seed
    path = Path(dirs.results) / f"{part1_name(model, int(seed))}.json"
    if not path.exists():
        raise FileNotFoundError(f"no result {path.name} in {dirs.results}: run notebook 01 (model={model!r}, "
                                f"seeds=[{seed}]) with the same profile and output folder first")
    result = read_json(path)
    trained_on = (result.get("config") or {}).get("data_source")
    if data_source is not None and trained_on is not None and not same_data_source(trained_on, data_source):
        raise ValueError(f"{path.name} in {dirs.results} was trained on data {trained_on!r}, not {data_source!r}: set "
                         f"data_source = {trained_on!r} (--data {shlex.quote(trained_on)}) to show it, or run "
                         f"notebook 01 with data {data_source!r} (model={model!r}, seeds=[{seed}]) into another output "
                         f"folder first")
    return result


def weight_history(dirs: OutputDirs, result: dict) -> list[dict]:
    """The per-epoch SE / SA / unit_transform weight histograms of `result` (<results>/<name>.weights.json), and
    SE's mixing scales per block where the run recorded them (lib.train.weight_histograms)."""
    path = Path(dirs.results) / f"{result['name']}.weights.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: weight histograms are written for CANet runs "
                                f"of at least one epoch; {result['name']} has none")
    return read_json(path)


def sample_test_images(result: dict, n: int = 8):
    """`n` test images of the run's data source, a fixed seeded sample across classes:
    (uint8 NHWC numpy (n, 32, 32, 3), int64 labels). Image-folder copies are stored class by class, so the
    first n images would all be airplanes."""
    from lib.data import load_cifar10, subset

    data = load_cifar10(result["config"]["data_source"])
    return subset(data.X_test, data.y_test, n)


def headline(result: dict) -> str:
    """One sentence with the selected model's numbers and their context (profile, data, device, seed)."""
    if result.get("test_acc") is None:
        return f"{result['name']}: status {result.get('status')}, no test accuracy ({result.get('message', '')})"
    data = (result.get("data") or {}).get("label", "?")
    return (f"{result['model']} (seed {result['seed']}, profile {result.get('profile')}, {data}, "
            f"{result.get('device')}): best validation accuracy {100 * result['best_val_acc']:.2f}% at epoch "
            f"{result['best_epoch'] + 1} of {len(result['history'])}; test accuracy of that model "
            f"{100 * result['test_acc']:.2f}%.")


# --------------------------------------------------------------------------------------------- tables for the notebooks

RUN_COLUMNS = {"name": "run", "status": "status", "best_val_acc": "best val acc (%)", "test_acc": "test acc (%)",
               "train_seconds": "training (s)"}  # result field: the notebook table's column
PERCENT_FIELDS = ("best_val_acc", "test_acc", "train_acc", "val_acc")  # fractions in the result files


def _readable(df, rename: dict[str, str]):
    """`df` as the notebooks show it: accuracies in percent (2 decimals), losses to 4 decimals, seconds to 1,
    columns renamed by `rename` (fields not in it keep their names)."""
    df = df.copy()
    for col in df.columns:
        if col in PERCENT_FIELDS:
            df[col] = (df[col].astype(float) * 100).round(2)
        elif col.endswith("loss"):
            df[col] = df[col].astype(float).round(4)
        elif col.endswith("seconds"):
            df[col] = df[col].astype(float).round(1)
    return df.rename(columns=rename)


def runs_frame(results: Sequence[dict]):
    """One row per run: name, status, best validation and test accuracy (%), training seconds."""
    import pandas as pd

    df = pd.DataFrame([{k: r.get(k) for k in RUN_COLUMNS} for r in results], columns=list(RUN_COLUMNS))
    return _readable(df, RUN_COLUMNS)


def history_frame(result: dict):
    """The run's per-epoch history (lr, optimiser, train / validation loss and accuracy in %, seconds), by epoch
    counted from 1 as the report and the figures count them (result files store them from 0)."""
    import pandas as pd

    df = pd.DataFrame(result["history"])
    df["epoch"] += 1
    names = {"train_loss": "train loss", "train_acc": "train acc (%)", "val_loss": "val loss",
             "val_acc": "val acc (%)", "seconds": "seconds"}
    return _readable(df.set_index("epoch"), names)


def per_class_frame(result: dict):
    """Test accuracy (%) per CIFAR-10 class of the selected checkpoint."""
    import pandas as pd

    from lib.data import CLASSES

    if not result.get("per_class_acc"):
        raise ValueError(f"{result['name']} has no per-class test accuracy (status {result.get('status')!r}): "
                         f"it was not tested; retrain it")
    acc = pd.Series(result["per_class_acc"], index=pd.Index(CLASSES, name="class"), name="test accuracy (%)")
    return acc.mul(100).round(2).to_frame()


def per_class_by_model(results) -> dict[str, tuple[list[dict], list[float]]]:
    """Per model, its tested runs (status 'ok' with per_class_acc, by seed) and their per-class test accuracy
    averaged over them (fractions, in CLASSES order): what the per-class figure shows."""
    import numpy as np

    by_model: dict[str, list[dict]] = {}
    for r in results:
        if r.get("status", "ok") == "ok" and r.get("per_class_acc") is not None:
            by_model.setdefault(r["model"], []).append(r)
    return {m: (sorted(runs, key=lambda r: r.get("seed", 0)),
                np.mean([r["per_class_acc"] for r in runs], axis=0).tolist()) for m, runs in by_model.items()}


def normalization(result: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the run normalised its images with (its config's `norm`)."""
    from lib.config import NORMS

    return NORMS[result["config"]["norm"]]


# --------------------------------------------------------------------------------------------- costs

def cost_path(dirs: OutputDirs, model: str) -> Path:
    """Where the cost measurement of `model` is stored."""
    return Path(dirs.results) / f"cost-{model}.json"


def cost_is_reused(old: dict, device_name: str, batch_size: int, gpu: bool) -> bool:
    """Whether compute_costs keeps the recorded cost file `old` instead of measuring on this device: measured on the
    same device at the same batch, a GPU measurement seen from a CPU at the CPU batch, or anything under
    reuse_only (shown as measured, on whichever device that was)."""
    same = old.get("device_name") == device_name and old.get("infer_batch") == batch_size
    return same or reuse_only() or (not gpu and batch_size == CPU_COST_BATCH and is_gpu_cost(old))


def compute_costs(dirs: OutputDirs, models: Sequence[str] | None = None, device: str = "auto",
                  batch_size: int | None = None, iters: int | None = None, force: bool = False) -> list[dict]:
    """FLOPs, parameters and inference images/s per model -> <results>/cost-<model>.json (reused unless force).

    Batch 1024 on a GPU; on a CPU a smaller default batch (CPU_COST_BATCH), which the file states. A
    stored measurement is reused when it was taken on the same device with the same batch size, and a GPU
    measurement (the GPU runner's, at GPU_COST_BATCH) is kept on a CPU: the report of a profile trained on a
    GPU is rendered on a CPU machine, whose numbers would not describe that run.
    """
    import torch

    from lib.cost import cost_summary

    models = list(models) if models else list(PART1_MODELS)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    gpu = dev.type == "cuda"
    batch_size = batch_size or (GPU_COST_BATCH if gpu else CPU_COST_BATCH)
    iters = iters or (GPU_COST_ITERS if gpu else CPU_COST_ITERS)
    env = environment_info(dev)
    out = []
    for model in models:
        path = cost_path(dirs, model)
        if not force and path.exists():
            old = read_json(path)
            if cost_is_reused(old, env["device"], batch_size, gpu):
                out.append(old)  # reuse_only: shown as measured, on whichever device that was (the file says)
                continue
        refuse_if_reuse_only(f"measuring the cost of {model}", path.parent, forced=force and path.exists())
        summary = cost_summary(model, dev, batch_size=batch_size, iters=iters, warmup=1 if not gpu else 5)
        summary.update(device_name=env["device"], iters=iters, torch=env["torch"], git_commit=env["git_commit"])
        if batch_size != GPU_COST_BATCH:
            summary["note"] = (f"inference measured at batch {batch_size} on {env['device']} "
                               f"(not the GPU batch {GPU_COST_BATCH}): numbers are not comparable to GPU ones")
        atomic_write_json(path, summary)
        out.append(summary)
    return out


def is_gpu_cost(cost: dict) -> bool:
    """Whether a cost file's content was measured on a GPU at the GPU batch (not on a CPU at that batch)."""
    return cost.get("infer_batch") == GPU_COST_BATCH and not is_cpu_device(cost.get("device_name"))


def load_costs(dirs: OutputDirs, models: Sequence[str] | None = None) -> dict[str, dict]:
    """model -> its cost file's contents, for every cost-*.json in dirs.results (of `models` only, where given: a
    comparison table lists the models that have a cost file, run or not)."""
    paths = sorted(Path(dirs.results).glob("cost-*.json"))
    return {p.stem[len("cost-"):]: read_json(p) for p in paths if not models or p.stem[len("cost-"):] in models}


def costs_frame(costs: Sequence[dict]):
    """The cost measurements as a readable table (a pandas DataFrame indexed by model): parameters in millions,
    forward GFLOPs per image, inference images/s with its batch and arithmetic, and the device."""
    import pandas as pd

    rows = [{"model": c["model"], "parameters (M)": round(c["params"] / 1e6, 2),
             "forward GFLOPs / image": round(c["flops"] / 1e9, 3),
             "inference images/s": round(c["infer_ips"], 1),
             "at batch": c.get("infer_batch"), "precision": c.get("precision"),
             "device": c.get("device_name") or c.get("device")} for c in costs]
    return pd.DataFrame(rows).set_index("model")


def with_costs(results: Sequence[dict], costs: dict[str, dict]) -> list[dict]:
    """Copies of `results` with the 'cost' dict lib.stats.comparison_table reads.

    flops / infer_ips come from the model's cost file; train_ips is training images per second of the run
    (num_train_used / median epoch seconds, the epoch time including its validation pass); peak_mem_mb is the
    run's peak GPU memory (None on CPU).
    """
    out = []
    for r in results:
        c = costs.get(r["model"], {})
        secs = [h["seconds"] for h in r.get("history", []) if h.get("seconds")]
        n_train = (r.get("data") or {}).get("num_train_used")
        train_ips = n_train / statistics.median(secs) if secs and n_train else None
        out.append(dict(r, cost={"flops": c.get("flops"), "infer_ips": c.get("infer_ips"), "train_ips": train_ips,
                                 "train_images": n_train, "peak_mem_mb": r.get("peak_mem_mb")}))
    return out


def part1_table(dirs: OutputDirs, models: Sequence[str] | None = None, results: Sequence[dict] | None = None,
                costs: dict[str, dict] | None = None):
    """lib.stats.comparison_table of `results` (default: the Part 1 results of `models` in dirs.results), with
    `costs` (default: the cost files in dirs.results)."""
    from lib.stats import comparison_table

    results = list(results) if results is not None else load_results(dirs, models=models)
    if not results:
        raise FileNotFoundError(f"no Part 1 results (p1-*.json) in {dirs.results}: train the models first")
    return comparison_table(with_costs(results, costs if costs is not None else load_costs(dirs)))

