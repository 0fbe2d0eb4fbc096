"""The rendered report: report.md from lib/report_template.md and the result files of one output folder.

`render_report(profile, dirs)` reads the files under dirs.results (Part 1 p1-*.json, cost-*.json,
part1-main.json, the Part 2 files through lib.bn_study.bn_summary, study.json), those of results/full/ for a
published smoke or quick report (its section on the full profile so far) and the GPU bench files of
results/bench/ (the speed section), and checks dirs.figs for which figures exist. Every number in the report
comes from those files, except ORIGINAL_REPORT: the original report's numbers as STUDY.md states them, shown
beside ours and labelled as such. Wording that
ranks models comes from lib.stats (a Welch test over seeds); other comparisons state the numbers and
their direction only. The helpers below (tables, context lines) are also what notebooks 02 and 04 show.
"""
from __future__ import annotations

import inspect
import math
import os
import re
import shlex
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from lib.bn_study import LABELS, STUCK_LOSS
from lib.config import NORMS
from lib.data import CLASSES, OFFICIAL_LABEL
from lib.experiments import BN_LRS, BN_MODELS, BN_SEED
from lib.models import CANET_VARIANTS, PART1_MODELS
from lib.paths import REPO, OutputDirs, output_dirs
from lib.results import atomic_write_text, is_cpu_device, read_json, trained_on

TEMPLATE = Path(__file__).with_name("report_template.md")

# The original report's numbers (STUDY.md sections 2, 3 and 6): test accuracy (%) of one run per model on
# the official CIFAR-10 with the 70-epoch recipe; exact parameter counts of the specified architectures;
# Part 2's best validation accuracy (%) at lr 1e-3. Spec facts, not results of this repository.
ORIGINAL_REPORT = {
    "test_acc": {"CANet_tiny": 88.66, "CANet_light": 91.56, "CANet": 93.50, "CANet_pro": 93.56,
                 "ShuffleNetV2": 62.66, "MobileNetV2": 84.14, "ResNet18": 93.00, "ResNet34": 93.56,
                 "VGG11": 85.75},
    "params": {"CANet_tiny": 396_155, "CANet_light": 1_576_244, "CANet": 6_289_574, "CANet_pro": 25_128_842,
               "ShuffleNetV2": 352_042, "MobileNetV2": 2_236_682, "ResNet18": 11_173_962,
               "ResNet34": 21_282_122, "VGG11": 128_807_306, "VGG_A": 9_750_922, "VGG_A_BN": 9_756_426},
    "bn_best_val_acc_lr1e-3": {"VGG_A": 75.81, "VGG_A_BN": 84.29},
    "setting": "one run per model, one seed, official CIFAR-10, 70 epochs",  # Part 1's
    "bn_setting": "one run per network and learning rate, official CIFAR-10, 50 epochs",  # Part 2's
}
NOT_RUN = "not run"
UNREADABLE = "left out (file unreadable)"  # a result file that cannot be read: named, with why, under the table
# What a run's precision setting (lib.config.PRECISIONS) computes, in the report's words.
PRECISION_WORDS = {"auto": "bf16 autocast on a GPU, fp32 on a CPU", "bf16": "bf16 autocast on every device",
                   "fp32": "fp32 on every device, TF32 off on a GPU"}
# Which notebook draws which figure (for the 'not produced yet' lines).
FIGURE_SOURCES = {"p1_curves": "01", "p1_acc": "02", "p1_per_class": "02", "p1_filters": "03", "p1_ridge": "03",
                  "p1_attention": "03", "p1_confusion": "03", "p2_": "04"}


# --------------------------------------------------------------------------------------------- formatting

def fmt_int(n) -> str:
    """1234567 -> '1,234,567' ('-' for a missing value)."""
    return "-" if _missing(n) else f"{int(n):,}"


def fmt_count(n) -> str:
    """12345678 -> '12.35M' ('-' for a missing value)."""
    if _missing(n):
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def fmt_pct(frac, digits: int = 2) -> str:
    """0.9350 -> '93.50%' ('-' for a missing value)."""
    return "-" if _missing(frac) else f"{100 * frac:.{digits}f}%"


def fmt_num(x, digits: int = 3) -> str:
    """A float with `digits` significant digits ('-' for a missing value)."""
    return "-" if _missing(x) else f"{x:.{digits}g}"


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and not math.isfinite(x))


def fmt_seconds(s) -> str:
    """Seconds as '42 s', '12.3 min' or '2.05 h'."""
    if _missing(s):
        return "-"
    if s < 120:
        return f"{s:.0f} s"
    return f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub markdown table (cells converted with str, '|' escaped)."""
    def cell(v):
        return str(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _unique(values) -> list:
    """Distinct non-missing values in first-seen order."""
    out = []
    for v in values:
        if v is not None and v not in out:
            out.append(v)
    return out


def join_distinct(values, empty: str = "unknown", sep: str = "; ") -> str:
    """The distinct non-missing values in first-seen order, joined with `sep` (`empty` when there are none)."""
    values = [str(v) for v in _unique(values)]
    return sep.join(values) if values else empty


def commit_span(result: dict) -> str | None:
    """The commit a result was written with; 'A -> B' where its training started at another commit A."""
    start, end = result.get("git_commit_start"), result.get("git_commit")
    return f"{start} -> {end}" if start and end and start != end else end


def runtime_text(count: int, noun: str, seconds: Sequence, what: str = "of training in all") -> str:
    """'9 runs, 12.3 min of training in all', '1 run, ...' (`noun` singular; the seconds recorded, 'not recorded'
    where none was)."""
    recorded = [s for s in seconds if s]
    return (f"{count} {noun}{'' if count == 1 else 's'}, "
            + (f"{fmt_seconds(sum(recorded))} {what}" if recorded else "not recorded"))


def context_line(results: Sequence[dict], seeds: Sequence[int] | None = None) -> str:
    """Data source, profile, device(s), seeds and training time of a set of results, as one line."""
    if not results:
        return "no results yet"
    data = join_distinct((r.get("data") or {}).get("label") for r in results)
    smaller = [d for d in ((r.get("data") or {}) for r in results) if d.get("complete") is False]
    n_train = join_distinct(fmt_int((r.get("data") or {}).get("num_train_used")) for r in results)
    size = f"{n_train} training images"
    if smaller:  # a copy with fewer images than CIFAR-10's (README: used as it is, and said)
        size += (f"; a smaller copy than CIFAR-10: {join_distinct(fmt_int(d.get('num_train')) for d in smaller)} "
                 f"of 50,000 training and {join_distinct(fmt_int(d.get('num_test')) for d in smaller)} of 10,000 "
                 f"test images")
    seeds = sorted(_unique(int(r["seed"]) for r in results if r.get("seed") is not None)) if seeds is None else seeds
    runtime = runtime_text(len(results), "run", [r.get("train_seconds") for r in results])
    return (f"data: {data} ({size}) | profile: {join_distinct(r.get('profile') for r in results)} | "
            f"device: {join_distinct(d for r in results for d in trained_on(r))}"
            f"{shared_gpu_note(results)} | "
            f"seeds: {', '.join(map(str, seeds)) or '-'} | runtime: {runtime}")


def gpu_sharing(results: Sequence[dict]) -> dict:
    """How many of `results` trained beside other runs on one GPU (lib.lanes: `shared_gpu`): {'shared' (count),
    'lanes' (the numbers of runs at once), 'mps' ('all', 'some' or 'none' of them under MPS)}."""
    shared = [r["shared_gpu"] for r in results if isinstance(r.get("shared_gpu"), dict)]
    return {"shared": len(shared), "lanes": sorted({s["lanes"] for s in shared if isinstance(s.get("lanes"), int)}),
            "mps": "all" if shared and all(s.get("mps") for s in shared) else
                   "some" if any(s.get("mps") for s in shared) else "none"}


def shared_gpu_note(results: Sequence[dict]) -> str:
    """' (shared: 11 of 11 runs trained 3 at once under MPS, so their times are those of a shared GPU)' for
    results of which some trained beside others on one GPU (gpu_sharing); '' when none did."""
    sharing = gpu_sharing(results)
    if not sharing["shared"]:
        return ""
    lanes = " or ".join(map(str, sharing["lanes"])) or "several"
    mps = {"all": " under MPS", "some": " (some under MPS)"}.get(sharing["mps"], " time-sliced")
    return (f" (shared: {sharing['shared']} of {len(results)} run{'s' if len(results) != 1 else ''} trained "
            f"{lanes} at once{mps}, so their times are those of a shared GPU)")


# --------------------------------------------------------------------------------------------- Part 1

def _acc_cell(row) -> str:
    """Mean ± std (n) of a comparison_table row, or why there is no number."""
    if row["n_seeds"] == 0:
        return f"diverged ({row['n_diverged']} run{'s' if row['n_diverged'] != 1 else ''})"
    if row["n_seeds"] >= 2:
        return f"{row['test_acc_mean']:.2f} ± {row['test_acc_std']:.2f}"
    return f"{row['test_acc_mean']:.2f}"


def _over_seeds(table, model: str) -> str | None:
    """'47.07 ± 0.38% over 3 seeds (0, 1, 2; mean ± sample standard deviation)' for a model with at least two
    successful seeds, else None."""
    rows = [row for _, row in table.iterrows() if row["model"] == model]
    if not rows or rows[0]["n_seeds"] < 2:
        return None
    row = rows[0]
    return (f"{_acc_cell(row)}% over {row['n_seeds']} seeds ({', '.join(str(s) for s in row['seeds'])}; "
            f"mean ± sample standard deviation)")


TIME_SPREAD = 2.0  # runs of one model whose median epoch times differ more than this factor are marked TIME_MARK
TIME_MARK = "‡"


def uneven_times(table) -> dict[str, list[tuple[int, float]]]:
    """model -> [(seed, its run's median epoch time in s)], for the models whose runs differ more than
    TIME_SPREAD-fold: on a shared machine probably the load of the moment, not the model, set those times."""
    if table is None:
        return {}
    out = {}
    for _, row in table.iterrows():
        secs = [s for _, s in row["run_epoch_seconds"] if math.isfinite(s) and s > 0]
        if len(secs) >= 2 and max(secs) / min(secs) > TIME_SPREAD:
            out[row["model"]] = list(row["run_epoch_seconds"])
    return out


DEVICE_MARK = "§"


def other_devices(results: Sequence[dict]) -> dict[str, str]:
    """model -> its runs' device(s), for the models with a run off the device most of `results` ran on: in a table
    that mixes devices, their time columns do not compare with the others' ({} when all share one device)."""
    counts = Counter(r.get("device") for r in results if r.get("device"))
    if len(counts) < 2:
        return {}
    main = counts.most_common(1)[0][0]  # first seen among equals
    off: dict[str, dict] = {}
    for r in results:
        if r.get("device") and r["device"] != main:
            off.setdefault(r["model"], {}).setdefault(r["device"], []).append(int(r.get("seed", -1)))
    return {m: "; ".join(f"{d} (seed {', '.join(map(str, sorted(s)))})" for d, s in devs.items())
            for m, devs in off.items()}


def _params_cell(count: int, spec: int | None) -> str:
    """A built model's parameter count, with the specification's where they differ."""
    return fmt_int(count) + ("" if spec in (None, count) else f" (spec: {fmt_int(spec)})")


def _infer_cell(ips, batch: int | None) -> str:
    """Inference images/s, with the batch it was measured at; '-' when not measured."""
    return "-" if _missing(ips) else f"{ips:,.0f}" + (f" (batch {batch})" if batch else "")


def comparison_rows(table, costs: dict | None = None, devices: dict[str, str] | None = None) -> list[list]:
    """One row per Part 1 model (run or not), sorted by parameters: ours beside the original report's numbers.
    Time columns of a model in uneven_times carry TIME_MARK, those of a model in `devices` (other_devices)
    DEVICE_MARK."""
    rows_by_model = {row["model"]: row for _, row in table.iterrows()} if table is not None else {}
    order = sorted(set(PART1_MODELS) | set(rows_by_model),
                   key=lambda m: (rows_by_model[m]["params"] if m in rows_by_model
                                  else ORIGINAL_REPORT["params"].get(m, 0), m))
    uneven = uneven_times(table)
    out = []
    for m in order:
        orig_acc = ORIGINAL_REPORT["test_acc"].get(m)
        orig = "-" if orig_acc is None else f"{orig_acc:.2f}"
        spec = ORIGINAL_REPORT["params"].get(m)
        cost = (costs or {}).get(m) or {}
        if m not in rows_by_model:  # not trained: its cost file (no training needed) or the specification counts it
            params = _params_cell(cost["params"], spec) if cost.get("params") else f"{fmt_int(spec)} (spec)"
            flops = fmt_count(cost["flops"]) if cost.get("flops") else "-"
            out.append([m, params, NOT_RUN, "-", orig, flops, "-", "-",
                        _infer_cell(cost.get("infer_ips"), cost.get("infer_batch")), "-"])
            continue
        row = rows_by_model[m]
        params = _params_cell(row["params"], spec)
        seeds = ", ".join(str(s) for s in row["seeds"]) if row["n_seeds"] else "-"
        infer = _infer_cell(row["infer_ips"], cost.get("infer_batch"))
        mark = (f" {TIME_MARK}" if m in uneven else "") + (f" {DEVICE_MARK}" if m in (devices or {}) else "")
        diverged = f"; {row['n_diverged']} diverged" if row["n_seeds"] and row["n_diverged"] else ""
        out.append([m, params, _acc_cell(row), f"{seeds} (n={row['n_seeds']}{diverged})", orig, fmt_count(row["flops"]),
                    "-" if _missing(row["epoch_seconds"]) else f"{row['epoch_seconds']:.2f}{mark}",
                    "-" if _missing(row["train_ips"]) else f"{row['train_ips']:,.0f}{mark}", infer,
                    "-" if _missing(row["peak_mem_mb"]) else f"{row['peak_mem_mb']:,.0f}"])
    return out


COMPARISON_HEADERS = ("model", "parameters", "test accuracy (%), this repo: mean ± std over seeds",
                      "seeds", "test accuracy (%), original report", "forward FLOPs / image",
                      "epoch time (s, median)", "training images/s", "inference images/s",
                      "peak GPU memory (MiB)")


def cost_devices(costs: dict | None) -> str:
    """Where the inference throughput was measured (device and batch), from the cost files."""
    if not costs:
        return "no cost measurements yet"
    return join_distinct(f"{c.get('device_name', c.get('device'))} at batch {c.get('infer_batch')}, {c.get('precision')}"
                 for c in costs.values())


def comparison_markdown(table, results: Sequence[dict], costs: dict | None = None) -> str:
    """The comparison table (markdown) with its context line: data source, profile, device, seeds."""
    uneven = uneven_times(table)
    spread = "; ".join(f"{m} {', '.join(f's{seed} {s:.1f}' for seed, s in runs)}" for m, runs in uneven.items())
    note = (f" {TIME_MARK}: the runs' own median epoch times (s, by seed) differ more than {TIME_SPREAD:g}-fold "
            f"({spread}): probably the machine's load, so the marked time columns do not compare models."
            if uneven else "")
    devices = other_devices(results)
    if devices:
        note += (f" {DEVICE_MARK}: trained on another device than most of the table "
                 f"({'; '.join(f'{m}: {d}' for m, d in devices.items())}), so the marked time columns do not compare "
                 f"with the others'.")
        kinds = {is_cpu_device(r["device"]) for r in results if r.get("device")}
        if len(kinds) == 2 and any((r.get("config") or {}).get("precision", "auto") == "auto" for r in results):
            note += (" With the recipe's precision `auto`, the GPU runs trained with bf16 autocast and the CPU runs "
                     "in fp32: their accuracies come from different arithmetic too.")
    headers, rows = COMPARISON_HEADERS, comparison_rows(table, costs, devices)
    if all(row[-1] == "-" for row in rows):  # no run trained on a GPU: a column of dashes says nothing
        headers, rows = headers[:-1], [row[:-1] for row in rows]
        note += " No run of this table trained on a GPU, so it has no peak GPU memory column."
    return (markdown_table(headers, rows) +
            f"\n\n*{context_line(results)}. Inference throughput: {cost_devices(costs)}. Original report: "
            f"{ORIGINAL_REPORT['setting']}.{note}*")


# The sanity bars the full profile's results are held to (issue: "CANet test accuracy at least 90%; VGG-A-BN
# clearly above VGG-A at lr 1e-3"). 90%: a 30-epoch SGD sketch of CANet reached 90.0% on the JPEG copy (STUDY.md
# section 8). "Clearly" is taken as at least 2 points of test accuracy: a convention of ours, since the protocol
# trains one run per network and lr (no spread to judge a difference by); Part 1's seeds spread by 0.4-3 points in
# the quick profile; STUDY.md's anchors differ by 8.8 points.
CANET_BAR_PCT = 90.0
BN_BAR_POINTS = 2.0
SIMILAR_RATIO = 1.1  # Part 2 magnitudes (one run per network) within 10% of each other are not called larger/smaller
NEAR_CHANCE = 0.25  # accuracies below this (chance: 0.10) are flagged as runs that have barely started learning


def below_near_chance(acc) -> bool:
    """Whether an accuracy (a fraction) is below NEAR_CHANCE."""
    return not _missing(acc) and acc < NEAR_CHANCE


def near_chance_models(table) -> list[str]:
    """Part 1 models whose mean test accuracy over seeds stays below NEAR_CHANCE."""
    if table is None:
        return []
    return [row["model"] for _, row in table.iterrows()
            if row["n_seeds"] and below_near_chance(row["test_acc_mean"] / 100)]


REFERENCE_ORDER = ("CANet", "CANet_light", "CANet_pro", "CANet_tiny")  # the study's subject first


def reference_model(table) -> str | None:
    """The model the ranking compares against: the CANet variant with the most seeds (a one-seed model
    decides no comparison), CANet first among equals, then CANet_light, CANet_pro, CANet_tiny; without a
    CANet variant, the first model with a result."""
    if table is None or not len(table):
        return None
    seeds = dict(zip(table["model"], table["n_seeds"]))
    variants = [m for m in REFERENCE_ORDER if m in seeds]
    if not variants:
        return str(table["model"].iloc[0])
    return max(variants, key=lambda m: (seeds[m], -REFERENCE_ORDER.index(m)))


def reference_why(table) -> str:
    """Why the ranking's reference is not CANet, in words ('' where it is): a reader expects the main model."""
    ref = reference_model(table)
    if ref is None or ref == "CANet":
        return ""
    seeds = dict(zip(table["model"], table["n_seeds"]))
    if ref not in REFERENCE_ORDER:
        return " (no CANet variant has a result here: the first model of the table)"
    if "CANet" not in seeds:
        return f" (CANet has no result here; {ref} is the CANet variant with the most seeds)"
    return (f" (the CANet variant with the most seeds: {seeds[ref]} against CANet's {seeds['CANet']}; a model with "
            f"fewer seeds decides fewer comparisons)")


def ranking(table) -> list[str]:
    """lib.stats.ranking_sentences against the reference model ([] when fewer than two models ran)."""
    from lib.stats import ranking_sentences

    ref = reference_model(table)
    if ref is None or len(table) < 2:
        return []
    return ranking_sentences(table, reference=ref)


def ranking_note(table) -> str:
    """lib.stats.holm_sentence against the reference model ('' when fewer than two comparisons were tested)."""
    from lib.stats import holm_sentence

    ref = reference_model(table)
    return holm_sentence(table, reference=ref) if ref is not None and len(table) >= 2 else ""


def verdict_counts(table) -> dict:
    """How many comparisons with the reference model are better / worse / tied / undetermined (lib.stats.compare),
    and of the models the reference is better than, how many barely started learning (near_chance_models)."""
    from lib.stats import comparisons

    ref = reference_model(table)
    counts = {"better": 0, "worse": 0, "tied": 0, "undetermined": 0, "incomparable": 0, "better_near_chance": 0}
    near = set(near_chance_models(table))
    for _, row, v in comparisons(table, ref) if ref is not None else []:
        counts[v.verdict if v is not None else "incomparable"] += 1
        # 'better': the reference is better than this model; one that barely started learning is said apart
        counts["better_near_chance"] += v is not None and v.verdict == "better" and row["model"] in near
    return counts


def _hist_std(h: dict) -> float:
    """Standard deviation of the values a histogram {'edges', 'counts'} describes (bin centres)."""
    edges, counts = np.asarray(h["edges"], float), np.asarray(h["counts"], float)
    centres = (edges[:-1] + edges[1:]) / 2
    mean = (centres * counts).sum() / max(counts.sum(), 1)
    return float(np.sqrt(((centres - mean) ** 2 * counts).sum() / max(counts.sum(), 1)))


def attention_markdown(dirs: OutputDirs, main: dict | None) -> str | None:
    """The attention-spread record of the main run (lib.attention.save_attention_spread, written by notebook 03
    where the run's checkpoint is) as a table with its context and one sentence; None without a record of the
    run's selected weights."""
    from lib.attention import attention_path

    path = attention_path(dirs, main) if main else None
    if path is None or not path.exists():
        return None
    rec = read_json(path)
    if rec.get("run") != main["name"] or rec.get("best_epoch") != main.get("best_epoch") or not rec.get("blocks"):
        return None  # a record of other weights (the run was trained again since)
    rows = [[b["block"], fmt_num(b["sa"], 3), fmt_num(b["gate_a"], 3), fmt_num(b["se"], 3), fmt_num(b["gate_b"], 3)]
            for b in rec["blocks"]]
    ratios = [b["sa"] / b["gate_a"] for b in rec["blocks"] if b["gate_a"] > 0]
    table = markdown_table(("block", "SA map", "gate on path a (U, mean over channels)", "SE weights",
                            "gate on path b (U, mean over positions)"), rows)
    sentence = (f"\n\nWithin an image, the gate the block's output puts on path a varies {np.median(ratios):.0f}x "
                f"less than SA's map (the median over the {len(ratios)} blocks; {min(ratios):.0f}x to "
                f"{max(ratios):.0f}x)." if ratios else "")
    return (f"How much each gate varies within one image (max - min, the mean over {rec['num_images']} test images "
            f"of {rec['run']}, the validation-selected epoch {rec['best_epoch'] + 1} (counting from 1), eval mode):\n\n{table}\n\n"
            f"*data: {rec.get('data')} | profile: {rec.get('profile')} | device: {rec.get('device')} | seed: "
            f"{main.get('seed', '-')} | runtime: {runtime_text(1, 'run', [main.get('train_seconds')])}*{sentence}")


def weight_spread(history: list[dict]) -> list[dict]:
    """Per weight group: the spread (std) of its weights at the first and the last recorded epoch (SE's kernels
    alone where the history has them apart, else the older pooled 'se' group)."""
    out = []
    apart = any("se_kernels" in h for h in history)
    for group in ("se_kernels" if apart else "se", "sa", "unit_transform"):
        entries = [h for h in history if group in h]
        if entries:
            out.append({"group": group, "first_epoch": entries[0]["epoch"] + 1, "last_epoch": entries[-1]["epoch"] + 1,
                        "std_first": _hist_std(entries[0][group]), "std_last": _hist_std(entries[-1][group]),
                        "note": WEIGHT_GROUP_NOTES.get(group, "")})
    return out


# What a group's spread mixes (lib.train.WEIGHT_GROUPS pools every parameter of a module but SE's mixing scales;
# the results written before those were recorded apart pool them too, in one 'se' group).
WEIGHT_GROUP_NOTES = {"se": "the 1-D kernels and their mixing scales, initialised to 1, pooled: the spread includes "
                            "the gap between the two",
                      "se_kernels": "the 1-D kernels; their mixing scales below"}


def se_scales(history: list[dict]) -> dict | None:
    """SE's mixing scales (lib.train.SE_SCALES) at the first and the last epoch that recorded them: {'first_epoch',
    'last_epoch', 'mean_first', 'mean_last' (per kernel size, the mean over blocks), 'last' (per block)}, epochs
    counted from 1; None where the history has none (non-CANet runs, or results from before they were recorded)."""
    entries = [h for h in history if h.get("se_scales")]
    if not entries:
        return None
    first, last = (np.asarray(entries[i]["se_scales"], float) for i in (0, -1))
    return {"first_epoch": entries[0]["epoch"] + 1, "last_epoch": entries[-1]["epoch"] + 1,
            "mean_first": first.mean(0).tolist(), "mean_last": last.mean(0).tolist(), "last": last.tolist()}


def unlike_original(profile: str | None, epochs, num_train, data_label: str | None) -> str:
    """Why runs of `profile` (`epochs` epochs on `num_train` training images of the data labelled `data_label`)
    cannot be set beside the original report's numbers as like for like: ' (not comparable: ...)', or '' where
    recipe and data are the original's (the full profile on official CIFAR-10)."""
    why = []
    if profile != "full":
        images = fmt_int(num_train) if isinstance(num_train, (int, float)) else num_train
        why.append(f"the {profile} profile, {epochs} epochs on {images} training images")
    if data_label != OFFICIAL_LABEL:
        why.append(f"the {data_label or 'data recorded in the result files'}")
    return f" (not comparable: {' and '.join(why)})" if why else ""


def per_class_over_seeds(results: Sequence[dict], model: str) -> dict | None:
    """`model`'s per-class test accuracy averaged over its finished seeds, as the per-class figure shows it
    (lib.part1.per_class_by_model): {'seeds': [...], 'best': (class, acc), 'worst': (class, acc)}; None with
    fewer than two seeds."""
    from lib.part1 import per_class_by_model

    runs, mean = per_class_by_model(r for r in results if r.get("model") == model).get(model, ([], []))
    if len(runs) < 2:
        return None
    ranked = sorted(zip(CLASSES, mean), key=lambda t: -t[1])
    return {"seeds": [r["seed"] for r in runs], "best": ranked[0], "worst": ranked[-1]}


def confusions(result: dict, top: int = 3) -> list[dict]:
    """The `top` most frequent mistakes (true -> predicted) of a run's test confusion matrix."""
    conf = np.asarray(result.get("confusion") or [], dtype=float)
    if conf.shape != (len(CLASSES), len(CLASSES)):
        return []
    off = conf.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None)[:top]
    out = []
    for idx in order:
        t, p = divmod(int(idx), len(CLASSES))
        if off[t, p] > 0:
            out.append({"true": CLASSES[t], "pred": CLASSES[p], "count": int(off[t, p]),
                        "pct_of_true": 100 * off[t, p] / max(conf[t].sum(), 1)})
    return out


# --------------------------------------------------------------------------------------------- Part 2

def _lr_key(lr: float) -> str:
    return f"{lr:g}"


def _median_max(stats: dict | None) -> str:
    """'median / max' of a lib.bn_study._finite_stats dict ('-' when missing)."""
    return "-" if not stats else f"{fmt_num(stats['median'])} / {fmt_num(stats['max'])}"


def part2_tables(summary: dict) -> dict:
    """Part 2's tables (headers + rows) from lib.bn_study.bn_summary's dict; missing runs show as 'not run', runs
    whose result file cannot be read as UNREADABLE."""
    proto = summary.get("protocol", {})
    a, b = (proto.get(m, {}) for m in BN_MODELS)
    acc_rows = []
    for lr in sorted(BN_LRS):  # ascending for the reader (BN_LRS keeps the original protocol's run order)
        k = _lr_key(lr)
        orig = ORIGINAL_REPORT["bn_best_val_acc_lr1e-3"] if lr == 1e-3 else {}
        cells = [k]
        for e in (a, b):
            if k not in e.get("best_val_acc", {}):
                cells += [UNREADABLE if k in e.get("unreadable", ()) else NOT_RUN, "-"]
                continue
            status = e.get("status", {}).get(k)
            note = "" if status in (None, "ok") else f" ({status})"
            cells += [fmt_pct(e["best_val_acc"][k]) + note, fmt_pct(e.get("test_acc", {}).get(k))]
        cells.append(" / ".join(f"{orig[m]:.2f}%" for m in BN_MODELS) if orig else "-")
        acc_rows.append(cells)
    band_rows, grad_rows = [], []
    for m in BN_MODELS:
        e = proto.get(m, {})
        band = e.get("loss_band")
        band_rows.append([LABELS.get(m, m), m] + ([NOT_RUN] * 5 if not band else [
            band["num_runs"], fmt_int(band["num_steps"]), fmt_num(band["mean_width"]), fmt_num(band["median_width"]),
            fmt_num(band["mean_width_last_tenth"])]))
        for k, g in sorted((e.get("grad_range") or {}).items(), key=lambda kv: float(kv[0])):
            rng = g.get("range") or {}
            grad_rows.append([LABELS.get(m, m), k, fmt_num(rng.get("median")), fmt_num(rng.get("max")),
                              fmt_num((g.get("grad_max") or {}).get("max")),
                              fmt_num((g.get("grad_min") or {}).get("min"))])
    probe_rows = []
    for m in BN_MODELS:
        p = summary.get("probe", {}).get(m)
        if not p:
            probe_rows.append([LABELS.get(m, m), UNREADABLE if m in summary.get("probe_unreadable", ()) else NOT_RUN]
                              + ["-"] * 6)
            continue
        lr = f"{p['lr']:g}" + (" (fallback)" if p.get("lr_fallback") else "")
        probe_rows.append([p["label"], lr, f"{p['num_probes']} probes over {p['num_steps']} steps",
                           _median_max(p.get("loss_band_width")), _median_max(p.get("gpred_max")),
                           _median_max(p.get("beta")),
                           fmt_num((p.get("final_train_loss") or {}).get("mean")), p.get("probe_nonfinite", 0)])
    slice_rows = [[LABELS.get(m, m), fmt_num(summary["slice"][m]["loss_at_0"]),
                   " / ".join(fmt_num(v) for v in summary["slice"][m]["loss_at_pm1"]),
                   fmt_num(summary["slice"][m]["loss_max"])] for m in BN_MODELS if m in summary.get("slice", {})]
    return {
        "accuracy": (["learning rate", "VGG-A: best val acc", "VGG-A: test acc", "VGG-A + BN: best val acc",
                      "VGG-A + BN: test acc", "original report: best val acc (VGG-A / VGG-A + BN)"], acc_rows),
        "band": (["network", "model", "runs (learning rates)", "steps", "mean band width (loss, nats)",
                  "median band width", "mean width, last tenth of the steps"], band_rows),
        "grad": (["network", "learning rate", "median range (max - min)", "largest range", "largest max",
                  "smallest min"], grad_rows),
        "probe": (["network", "SGD lr", "probes", "loss-landscape band width (median / max)",
                   "gradient predictiveness max ||g - g'|| (median / max)", "effective beta-smoothness (median / max)",
                   "final training loss (mean of the last 5% of steps)", "non-finite probe values"], probe_rows),
        "slice": (["network", "loss at the trained weights", "loss at alpha = -1 / +1", "largest loss on the slice"],
                  slice_rows),
    }


def part2_context(summary: dict, profile: str | None = None, kind: str = "protocol") -> str:
    """Data source, run sizes, profile, device, seed and runtime of the Part 2 runs behind one table, as one line.
    kind: 'protocol' (the accuracy, band and gradient tables), 'probe' or 'slice'."""
    proto = list(summary.get("protocol", {}).values())
    probe = list(summary.get("probe", {}).values())
    slices = list(summary.get("slice", {}).values())
    entries = {"protocol": proto, "probe": probe, "slice": slices}[kind] or proto + probe

    def distinct(values, unit: str = "") -> str:  # '-' where nothing was recorded
        return join_distinct((f"{v:,}" if isinstance(v, int) else v for v in values if v is not None), "-") + unit

    profile = profile or join_distinct((e.get("profile") for e in proto + probe), "see the result files")
    seconds = [e.get("train_seconds" if kind == "protocol" else "seconds") for e in entries]
    if kind == "protocol":
        runs = sum(len(e.get("best_val_acc", {})) for e in proto)
        size = (f"{distinct(e.get('num_train_used') for e in proto)} training images; per run "
                f"{distinct(n for e in proto for n in e.get('epochs', []))} epochs at batch "
                f"{distinct(e.get('batch_size') for e in proto)}")
        if arithmetic := _unique(a for e in proto for a in e.get("arithmetic", [])):  # none: no protocol run read
            size += f", {join_distinct(arithmetic)}"
        what = runtime_text(runs, "run", seconds)
    elif kind == "probe":
        from lib.bn_study import ETA_MULTIPLIERS, PAPER_PROBE_STEPS, PROBE_LR

        size = (f"{distinct(e.get('num_train_used') for e in probe)} training images; "
                f"{distinct(e.get('num_steps') for e in probe)} steps at batch {distinct(e.get('batch_size') for e in probe)}, "
                f"a probe every {distinct(e.get('probe_every') for e in probe)} steps at "
                f"{distinct(len(e['etas']) for e in probe if e.get('etas'))} step sizes "
                f"({distinct(', '.join(f'{v:g}' for v in e['etas']) for e in probe if e.get('etas'))}), in fp32 "
                f"(the paper: {PAPER_PROBE_STEPS:,} steps, {len(ETA_MULTIPLIERS)} step sizes, "
                f"{min(ETA_MULTIPLIERS) * PROBE_LR:g} to {max(ETA_MULTIPLIERS) * PROBE_LR:g} at lr {PROBE_LR:g})")
        what = runtime_text(len(probe), "run", seconds, "in all")
    else:
        size = f"{distinct(e.get('num_images') for e in slices)} training images per point"
        what = runtime_text(len(slices), "slice", seconds, "in all")
    commits = join_distinct(c for e in entries for c in e.get("commits") or [e.get("git_commit")])
    dirty = " (+dirty: with changes not committed; see the note on `+dirty` further down)" if "+dirty" in commits else ""
    # Protocol runs trained beside others on one GPU (the GPU runner's lanes) say so: their times are a shared GPU's.
    shared = shared_gpu_note([{"shared_gpu": s} for e in entries for s in e.get("shared_gpu", [])])
    return (f"data: {join_distinct(e.get('data') for e in proto + probe)} | {size} | profile: {profile} | "
            f"device: {join_distinct(d for e in entries for d in e.get('devices') or [e.get('device')])}{shared} | "
            f"seed: {BN_SEED} (the original protocol's "
            f"seed, every run) | code: {commits}{dirty} | runtime: {what}")


PART2_CONTEXT_KIND = {"accuracy": "protocol", "band": "protocol", "grad": "protocol", "probe": "probe",
                      "slice": "slice"}


def part2_markdown(summary: dict, profile: str | None = None, keys: Sequence[str] | None = None) -> str:
    """Part 2's tables as markdown (those of `keys` of part2_tables, default all), each followed by its context
    line (part2_context) and, under the probe table, the caveat of part2_caveats when there is one."""
    titles = {"accuracy": "Validation and test accuracy per learning rate",
              "band": "Loss band over the learning rates (per step: max - min of the training loss)",
              "grad": "Gradient range of the last linear layer per step",
              "probe": "Santurkar et al. measurements along the gradient",
              "slice": "Filter-normalised 1-D loss slice"}
    parts = []
    for key, (headers, rows) in part2_tables(summary).items():
        if rows and (keys is None or key in keys):
            ctx = part2_context(summary, profile, PART2_CONTEXT_KIND[key])
            caveat = "".join(f"\n\n**Caveat:** {c}" for c in part2_caveats(summary)) if key == "probe" else ""
            if key == "probe" and (note := fallback_note(summary)):
                caveat = f"\n\n{note}{caveat}"
            parts.append(f"**{titles[key]}**\n\n" + markdown_table(headers, rows) + f"\n\n*{ctx}*{caveat}\n\n")
    return "\n".join(parts)


def fallback_note(summary: dict) -> str:
    """One sentence where the probe runs fell back to a lower learning rate (BN_METHODS.md: the network without BN
    does not train at lr 0.1): from which lr to which, and the stuck check that decided it; '' otherwise."""
    why = next((p["fallback_why"] for p in summary.get("probe", {}).values() if p.get("fallback_why")), None)
    if why is None:
        return ""
    check = why.get("stuck_check") or {}
    seen = (f"its training loss became non-finite before step {check.get('step')}" if _missing(check.get("mean_loss"))
            else f"its mean training loss {fmt_num(check.get('mean_loss'), 4)} over the {check.get('window')} steps "
                 f"before step {check.get('step')}, above the threshold {fmt_num(check.get('threshold'))}")
    return (f"Both networks were probed at lr {fmt_num(why.get('to_lr'))}, not {fmt_num(why.get('from_lr'))}: at "
            f"{fmt_num(why.get('from_lr'))} VGG-A did not train ({seen}), so, as BN_METHODS.md says, both ran again "
            f"at the lower lr, with the step sizes scaled by the same factor.")


EARLY_PROBE_SHARE = 0.1  # probes before the later plateau exit: a caveat from this share of the probes on


def plateau_phase(summary: dict) -> dict | None:
    """Whether the probe comparison mixes networks that had not started training (lib.bn_study.plateau_exit_step
    of each probe run; entries written without it are not judged). Returns None when both left the chance-level
    plateau before EARLY_PROBE_SHARE of the probes (or before the second probe), else {'never': models that never
    left it, 'start': the later exit step, 'late_model': the model that left it then, 'early': probes before it,
    'total': probes}."""
    probes = {m: summary.get("probe", {}).get(m) for m in BN_MODELS}
    if not all(probes.values()) or not all("plateau_exit_step" in p for p in probes.values()):
        return None
    never = [m for m, p in probes.items() if p["plateau_exit_step"] is None]
    if never:
        return {"never": never, "start": None, "late_model": None, "early": None, "total": None}
    late_model = max(probes, key=lambda m: probes[m]["plateau_exit_step"])
    start = probes[late_model]["plateau_exit_step"]
    steps = (probes[late_model].get("series") or {}).get("step") or []
    early = sum(1 for step in steps if step < start)
    if early < 2 or early < EARLY_PROBE_SHARE * len(steps):
        return None
    return {"never": [], "start": start, "late_model": late_model, "early": early, "total": len(steps)}


def part2_caveats(summary: dict) -> list[str]:
    """Why the probe comparison cannot be read as the paper's, or only in part (plateau_phase): a network that
    never left the chance-level plateau, or one that left it only after a share of the probes; with what its
    stuck check recorded and why no lower learning rate replaced it."""
    phase = plateau_phase(summary)
    if phase is None:
        return []
    out = []
    for m in phase["never"] or [phase["late_model"]]:
        p = summary["probe"][m]
        label = f"{p.get('label', m)} ({m})"
        stuck = p.get("stuck_check") or {}
        check = ""
        if stuck.get("stuck") and not p.get("lr_fallback"):
            why = ("this profile does not fall back to a lower learning rate (too few steps to tell a network that "
                   "does not train from one that has not started)" if not p.get("fallback_enabled", True)
                   else "the fallback run did not replace it")
            where = ("above the plateau, not training" if _above_chance(stuck.get("mean_loss"))
                     else "on the plateau")
            check = (f" Its stuck check found it {where} (mean training loss "
                     f"{fmt_num(stuck.get('mean_loss'), 4)} at step {stuck.get('step')}, threshold "
                     f"{fmt_num(stuck.get('threshold'))}), and {why}.")
        if m in phase["never"]:
            if p.get("train_nonfinite"):
                what = f"its training loss became non-finite ({p['train_nonfinite']} steps)"
            elif _above_chance(final := (p.get("final_train_loss") or {}).get("mean")):
                what = (f"its training loss stayed above the chance level (ln 10 = 2.303; final training loss "
                        f"{fmt_num(final)}): it diverged rather than sat on the chance-level plateau")
            else:
                what = f"it never left the chance-level plateau (ln 10 = 2.303; final training loss {fmt_num(final)})"
            out.append(f"In {label}'s probe run {what}.{check} Its probe numbers describe a network that is not "
                       f"training, so this table's comparison does not test the paper's claim that BN makes the "
                       f"landscape smoother.")
        else:
            out.append(f"{label} left the chance-level plateau (ln 10 = 2.303) only at step {phase['start']} of "
                       f"{p.get('num_steps')} (10-step mean training loss below "
                       f"{fmt_num(stuck.get('threshold', STUCK_LOSS))}).{check} The "
                       f"first {phase['early']} of the {phase['total']} probes describe a network that had not started "
                       f"training, so the medians over all probes mix two phases; the findings compare the probes "
                       f"from step {phase['start']} on apart, where both networks train.")
    return out


def _above_chance(loss) -> bool:
    """A mean training loss clearly above chance level (ln 10, 5% margin): a network diverging, not one on the
    plateau (which sits at about ln 10)."""
    return loss is not None and math.isfinite(loss) and loss > 1.05 * math.log(10)


def _late_probe_medians(summary: dict, start: int, min_probes: int = 2) -> dict | None:
    """{model: {key: median, 'num_probes': n}} over each network's probes at steps >= start; None unless both
    have at least `min_probes` finite values of every key there."""
    out = {}
    for m in BN_MODELS:
        series = (summary.get("probe", {}).get(m) or {}).get("series") or {}
        keep = [i for i, step in enumerate(series.get("step", [])) if step >= start]
        out[m] = {"num_probes": len(keep)}
        for key in ("beta", "gpred_max", "loss_band_width"):
            v = np.asarray([series[key][i] for i in keep] if key in series else [], dtype=float)
            v = v[np.isfinite(v)]
            if v.size < min_probes:
                return None
            out[m][key] = float(np.median(v))
    return out


def recipe_departures(results: Sequence[dict], model: str) -> list[str]:
    """The options by which `model`'s runs among `results` depart from their profile's recipe
    (lib.part1.recipe_options: --num-epochs, --precision), each once."""
    from lib.part1 import recipe_options

    options = (" ".join(recipe_options(r.get("config") or {})) for r in results if r.get("model") == model)
    return _unique(o for o in options if o)


def sanity_bars(table, summary: dict, departures: Sequence[str] = ()) -> list[str]:
    """Whether the results meet the full profile's sanity bars (CANET_BAR_PCT, BN_BAR_POINTS), one sentence each,
    with the numbers they are judged on. CANet runs that depart from the recipe (`departures`: recipe_departures)
    are not judged."""
    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**missed**"

    out = []
    rows = [row for _, row in table.iterrows() if row["model"] == "CANet"] if table is not None else []
    if rows and rows[0]["n_seeds"] > 0:
        row = rows[0]
        seeds = ", ".join(str(s) for s in row["seeds"])
        diverged = row["n_diverged"]
        # A diverged seed is a run of the recipe that did not reach the bar: it is not left out of the verdict.
        why = (f"; {diverged} other seed{'s' if diverged > 1 else ''} diverged, so the recipe does not reliably reach "
               f"it" if diverged else "")
        mean = row["test_acc_mean"]
        edge = (f"; just {'below' if mean < CANET_BAR_PCT else 'above'} {CANET_BAR_PCT:g}% before rounding"
                if f"{mean:.2f}" == f"{CANET_BAR_PCT:.2f}" and mean != CANET_BAR_PCT else "")
        out.append(f"CANet's test accuracy is {_acc_cell(row)}% (seed{'s' if row['n_seeds'] > 1 else ''} {seeds}"
                   f"{'; mean ± sample standard deviation' if row['n_seeds'] > 1 else ''}"
                   f"{edge}); the bar is at least {CANET_BAR_PCT:g}% (a "
                   f"30-epoch SGD sketch reached 90.0% on the JPEG copy, STUDY.md section 8)"
                   f"{why}: " + (f"**not judged**, since these runs depart from the recipe "
                                 f"({'; '.join(departures)})." if departures else
                                 f"{verdict(mean >= CANET_BAR_PCT and not diverged)}."))
    elif rows:
        out.append(f"CANet (bar: at least {CANET_BAR_PCT:g}% test accuracy): every run diverged "
                   f"({rows[0]['n_diverged']}): **missed**.")
    else:
        out.append(f"CANet (bar: at least {CANET_BAR_PCT:g}% test accuracy): not run yet.")
    protocol = summary.get("protocol", {})
    tests = [((protocol.get(m) or {}).get("test_acc") or {}).get(_lr_key(1e-3)) for m in BN_MODELS]
    status = {m: ((protocol.get(m) or {}).get("status") or {}).get(_lr_key(1e-3)) for m in BN_MODELS}
    diverged = [m for m in BN_MODELS if status[m] == "diverged"]
    if None not in tests:
        plain, bn = (100 * t for t in tests)
        said = (f" ({' and '.join(diverged)} diverged: {'its' if len(diverged) == 1 else 'their'} test accuracy is "
                f"that of the epoch validation chose before)" if diverged else "")
        out.append(f"At lr 1e-3 VGG-A with BN reaches {bn:.2f}% test accuracy, without {plain:.2f}% "
                   f"({bn - plain:+.2f} points){said}; the bar is BN clearly above, taken as at least "
                   f"{BN_BAR_POINTS:g} points (our convention: one run each, so there is no spread to judge by): "
                   f"{verdict(bn - plain >= BN_BAR_POINTS)}.")
    else:
        state = f"{' and '.join(m for m in BN_MODELS if status[m] is None)} not run yet"
        if all(status[m] is not None for m in BN_MODELS):  # both ran: one diverged before any epoch was kept
            without = [m for m, t in zip(BN_MODELS, tests) if t is None]
            state = (f"{' and '.join(without)} ran without a test accuracy"
                     f"{' (diverged in its first epoch)' if set(without) <= set(diverged) else ''}")
        out.append(f"VGG-A with and without BN at lr 1e-3 (bar: BN at least {BN_BAR_POINTS:g} points higher in test "
                   f"accuracy): {state}.")
    return out


def part2_findings(summary: dict) -> list[str]:
    """Plain sentences comparing BN with no BN, stating the numbers and their direction only."""
    proto, probe = summary.get("protocol", {}), summary.get("probe", {})
    a, b = proto.get("VGG_A", {}), proto.get("VGG_A_BN", {})
    out = []

    def direction(x, y, more: str, less: str) -> str:
        return "equal" if x == y else (more if x > y else less)

    def with_bn(x, y, more: str, less: str) -> str:
        """'<more|less> with BN' for magnitudes of one run each (x with BN, y without; bn_direction)."""
        said = bn_direction(x, y)
        if said is None:
            return "not comparable (a value is not finite)"
        if said == "about the same":
            return f"about the same with and without BN, within {100 * (SIMILAR_RATIO - 1):.0f}%"
        return f"{direction(x, y, more, less)} with BN"

    va, vb = a.get("best_val_acc_lr1e3"), b.get("best_val_acc_lr1e3")
    if va is not None and vb is not None:
        out.append(f"At lr 1e-3 the best validation accuracy is {fmt_pct(vb)} with BN and {fmt_pct(va)} without "
                   f"({100 * (vb - va):+.2f} points with BN: {direction(vb, va, 'higher', 'lower')}; one run per "
                   f"setting, so this is not a test of significance). The original report "
                   f"({ORIGINAL_REPORT['bn_setting']}): "
                   f"{ORIGINAL_REPORT['bn_best_val_acc_lr1e-3']['VGG_A_BN']:.2f}% with BN, "
                   f"{ORIGINAL_REPORT['bn_best_val_acc_lr1e-3']['VGG_A']:.2f}% without"
                   + unlike_original(join_distinct((e.get("profile") for e in (a, b)), ""),
                                     join_distinct((n for e in (a, b) for n in e.get("epochs", [])), "-"),
                                     join_distinct((fmt_int(e.get("num_train_used")) for e in (a, b)), "-"),
                                     join_distinct((e.get("data") for e in (a, b)), "")) + ".")
    shared = sorted((k for k in a.get("best_val_acc", {}) if k in b.get("best_val_acc", {})
                     and a["best_val_acc"][k] is not None and b["best_val_acc"][k] is not None), key=float)
    if len(shared) > 1:
        wins = [k for k in shared if b["best_val_acc"][k] > a["best_val_acc"][k]]
        out.append(f"BN has the higher best validation accuracy at {len(wins)} of the {len(shared)} learning rates "
                   f"run{(' (' + ', '.join(wins) + ')') if wins else ''}.")
    wa, wb = ((e.get("loss_band") or {}).get("mean_width") for e in (a, b))
    if wa is not None and wb is not None:
        out.append(f"The loss band over learning rates is {with_bn(wb, wa, 'wider', 'narrower')}: mean "
                   f"width {fmt_num(wb)} vs {fmt_num(wa)} without{band_rates(a, b)}. It is a proxy (runs at different "
                   f"learning rates differ in where they are, not only in how the landscape around them looks).")
    ga = ((a.get("grad_range") or {}).get(_lr_key(1e-3)) or {}).get("range") or {}
    gb = ((b.get("grad_range") or {}).get(_lr_key(1e-3)) or {}).get("range") or {}
    if ga.get("median") is not None and gb.get("median") is not None:
        more = with_bn(gb["median"], ga["median"], "larger", "smaller")
        out.append(f"At lr 1e-3 the last layer's per-step gradient range has median {fmt_num(gb['median'])} with "
                   f"BN and {fmt_num(ga['median'])} without ({more}).")
    low = []
    for m in BN_MODELS:
        lrs = [k for k, acc in sorted(proto.get(m, {}).get("best_val_acc", {}).items(), key=lambda kv: float(kv[0]))
               if below_near_chance(acc)]
        if lrs:
            low.append(f"{LABELS.get(m, m)} at lr {' and '.join([', '.join(lrs[:-1]), lrs[-1]] if len(lrs) > 1 else lrs)}")
    if low:
        out.append(f"Runs whose best validation accuracy stays below {fmt_pct(NEAR_CHANCE, 0)} (chance: 10%): "
                   f"{'; '.join(low)}. They have barely started learning in this profile, so their differences "
                   f"say more about how fast a network starts than about what it reaches.")
    pa, pb = probe.get("VGG_A"), probe.get("VGG_A_BN")
    phase = plateau_phase(summary)
    if phase is None:
        stuck = ""
    elif phase["never"]:
        stuck = (" (see the caveat under the probe table: "
                 + " and ".join(LABELS.get(m, m) for m in phase["never"]) + " did not train)")
    else:
        stuck = (f" (over all probes; see the caveat under the probe table: before step {phase['start']} "
                 f"{LABELS.get(phase['late_model'], phase['late_model'])} had not started training)")
    if pa and pb:
        for key, what in PROBE_FINDINGS:
            if pa.get(key) and pb.get(key):
                out.append(f"Probe ({what}): median {fmt_num(pb[key]['median'])} with BN vs "
                           f"{fmt_num(pa[key]['median'])} without "
                           f"({with_bn(pb[key]['median'], pa[key]['median'], 'larger', 'smaller')}); "
                           f"max {fmt_num(pb[key]['max'])} vs {fmt_num(pa[key]['max'])}{stuck}.")
        if phase is not None and phase["start"] is not None:
            late = _late_probe_medians(summary, phase["start"])
            if late is None:
                out.append(f"Too few probes from step {phase['start']} on (fewer than two per network) to compare "
                           f"the networks where both train.")
            else:
                a_late, b_late = late["VGG_A"], late["VGG_A_BN"]
                for key, what in PROBE_FINDINGS:
                    out.append(f"Probe ({what}), from step {phase['start']} on ({b_late['num_probes']} probes of each "
                               f"network, both training): median {fmt_num(b_late[key])} with BN vs "
                               f"{fmt_num(a_late[key])} without "
                               f"({with_bn(b_late[key], a_late[key], 'larger', 'smaller')}).")
        out.append("The probe lines compare one probe run per network (one seed): they give directions, not tests "
                   "of significance.")
    if (line := paper_direction(summary, wa, wb, ga.get("median"), gb.get("median"))) is not None:
        out.append(line)
        if summary.get("same_data_order") is not None:
            out.append("Both probe runs saw the same mini-batches in the same order: "
                       f"{'yes' if summary['same_data_order'] else 'NO (the comparison is confounded)'}.")
    return out


# The probe's measures in the findings, by summary key: each a per-probe number (over its step sizes), of which the
# findings give the median and the max over the probes.
PROBE_FINDINGS = (("beta", "effective beta-smoothness"),
                  ("gpred_max", "largest gradient change ||g - g'|| over the step sizes"),
                  ("loss_band_width", "loss-landscape band width"))


def band_rates(a: dict, b: dict) -> str:
    """'' where both networks' loss bands span all of BN_LRS, else which learning rates each spans (bn_summary's
    protocol entries without BN (a) and with (b)), to follow 'without' in a finding."""
    la, lb = ((e.get("loss_band") or {}).get("lrs") for e in (a, b))
    if la is None or lb is None or (la == lb and len(la) == len(BN_LRS)):
        return ""
    over = f"lr {', '.join(la)}" if la == lb else f"lr {', '.join(la)} without BN, {', '.join(lb)} with"
    return f" (over {over}: not all {len(BN_LRS)} learning rates have run)"


def bn_direction(x, y) -> str | None:
    """A magnitude with BN (x) against without (y), one run each: 'about the same' where both are positive and
    within SIMILAR_RATIO of each other, else 'larger', 'smaller' or 'equal'; None where one is missing or not
    finite."""
    if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
        return None
    if x > 0 and y > 0 and max(x, y) / min(x, y) <= SIMILAR_RATIO:
        return "about the same"
    return "equal" if x == y else ("larger" if x > y else "smaller")


def paper_direction(summary: dict, band_a, band_b, grad_a, grad_b) -> str | None:
    """How many of the paper's own measures point the way Santurkar et al. found, each smaller with BN: the probe's
    effective beta-smoothness, gradient change and band width (medians where both networks train, else over all
    probes). The loss band over learning rates (band_a without BN, band_b with) and the last layer's gradient range
    at lr 1e-3 (grad_a, grad_b) are this study's proxies, about which the paper predicts nothing: said beside the
    count, not in it; where the network without BN barely started learning in the protocol run at lr 1e-3, says
    what that does to them. None with fewer than two measures in all."""
    probe = summary.get("probe", {})
    pa, pb = probe.get("VGG_A") or {}, probe.get("VGG_A_BN") or {}
    phase = plateau_phase(summary)
    late = _late_probe_medians(summary, phase["start"]) if phase and phase["start"] is not None else None
    # Each measure named with what it is taken over: the probes' medians from the step both networks train on, if
    # the one without BN sat on a plateau first (the probe table's caveat), else over all probes.
    basis = (f" (from step {phase['start']} on)" if late is not None else
             " (over all probes)" if phase and phase["start"] is not None else "")  # too few late probes
    measures = [f"{what}{basis}" for what in ("beta-smoothness", "gradient change", "probe band width")]
    proxies = ["loss band across learning rates", "gradient range at lr 1e-3"]
    pairs = []
    for key, what in zip(("beta", "gpred_max", "loss_band_width"), measures):
        if late is not None:
            pairs.append((what, late["VGG_A_BN"][key], late["VGG_A"][key]))
        elif pa.get(key) and pb.get(key):
            pairs.append((what, pb[key]["median"], pa[key]["median"]))
    proxy_pairs = [(proxies[0], band_b, band_a), (proxies[1], grad_b, grad_a)]

    def directions(items) -> dict:
        return {what: d for what, x, y in items if (d := bn_direction(x, y)) is not None and x > 0 and y > 0}

    said, proxy_said = directions(pairs), directions(proxy_pairs)
    if len(said) + len(proxy_said) < 2:
        return None
    available = {what for what, x, y in pairs + proxy_pairs if x is not None and y is not None}
    missing = [what for what in measures + proxies if what not in available]
    agree = sum(v == "smaller" for v in said.values())
    if said:
        line = (f"Santurkar et al. find the landscape smoother with BN; on that reading each of their measures would "
                f"be smaller with BN; here {agree} of the {len(said)} {'is' if agree == 1 else 'are'} smaller with "
                f"BN (" + ", ".join(f"{what}: {v}" for what, v in said.items()) + ").")
    else:
        line = "Santurkar et al.'s own measures (the probe runs) are not available yet."
    if proxy_said:
        line += (" This study's proxies, about which the paper predicts nothing (a band across learning rates "
                 "mostly reflects how fast each run trains), are not counted: "
                 + ", ".join(f"{what}: {v}" for what, v in proxy_said.items()) + ".")
        acc = (summary.get("protocol", {}).get("VGG_A") or {}).get("best_val_acc_lr1e3")
        if any(v != "smaller" for v in proxy_said.values()) and acc is not None and below_near_chance(acc):
            line += (f" In the protocol runs the network without BN barely started learning (best validation "
                     f"accuracy {fmt_pct(acc)} at lr 1e-3): a network that hardly moves from its initial weights has "
                     f"a narrow loss band and small gradients, so the proxies cannot speak to the claim in this "
                     f"profile; the full profile's can.")
    if missing:
        line += f" Not available yet, as their runs have not finished: {', '.join(missing)}."
    return line


# --------------------------------------------------------------------------------------------- assembling

def _rel(path: Path, start: Path) -> str:
    """`path` relative to the folder `start`, with forward slashes (links that render on GitHub)."""
    return Path(os.path.relpath(path, start)).as_posix()


def figure_markdown(dirs: OutputDirs, name: str, alt: str) -> str:
    """An image link to <dirs.figs>/<name>.png relative to the report, or a line saying it is not produced yet."""
    path = Path(dirs.figs) / f"{name}.png"
    if path.is_file():
        return f"![{alt}]({_rel(path, Path(dirs.report).parent)})"
    nb = next((v for k, v in FIGURE_SOURCES.items() if name.startswith(k)), None)
    where = f" (notebook {nb} draws it)" if nb else ""
    return f"*Figure `{name}` has not been produced yet{where}.*"


def figure_note(dirs: OutputDirs, key: str, *names: str) -> str:
    """'**How to read it.** ...': lib.figure_notes.NOTES[key], the text the notebooks show under the same figure,
    for the figures `names` (default: key); '' where none of them has been drawn (the report says so already)."""
    from lib.figure_notes import NOTES

    text = NOTES[key]  # a KeyError names a template typo
    figures = names or (key,)
    if not any((Path(dirs.figs) / f"{name}.png").is_file() for name in figures):
        return ""
    return f"**How to read {'them' if len(figures) > 1 else 'it'}.** {text}"


def _main_result(dirs: OutputDirs, results: list[dict]) -> dict | None:
    """The run notebook 01 recorded (part1-main.json), else CANet seed 0, else the first CANet result."""
    from lib.part1 import MAIN_FILE

    marker = Path(dirs.results) / MAIN_FILE
    if marker.exists():
        name = read_json(marker).get("name")
        found = [r for r in results if r.get("name") == name]
        if found:
            return found[0]
    canets = [r for r in results if r["model"] in CANET_VARIANTS]
    preferred = [r for r in canets if r["model"] == "CANet"] or canets
    return sorted(preferred, key=lambda r: r["seed"])[0] if preferred else None


def _recipe(result: dict | None) -> dict | None:
    """The training configuration of a run, with the derived numbers the report states."""
    if result is None:
        return None
    from lib.config import TrainConfig

    cfg = TrainConfig.from_dict(result["config"])
    mean, std = NORMS[cfg.norm]
    return {"cfg": cfg, "mean": mean, "std": std, "switch_epoch": cfg.switch_epoch, "data": result.get("data") or {},
            "final_lr": (result["history"][-1]["lr"] if result.get("history") else None)}


def _times(p1: list[dict], bn: list[dict], summary: dict) -> dict:
    """Compute time of the study from the result files, split into GPU and CPU."""
    rows = [(r.get("device") or "", r.get("train_seconds") or 0.0, "training") for r in p1 + bn]
    rows += [(p.get("device") or "", p.get("seconds") or 0.0, kind) for kind in ("probe", "slice")
             for p in summary.get(kind, {}).values()]
    gpu = sum(s for d, s, _ in rows if not is_cpu_device(d))
    cpu = sum(s for d, s, _ in rows if is_cpu_device(d))
    return {"gpu": gpu, "cpu": cpu, "total": gpu + cpu, "n": len(rows), **gpu_sharing(p1 + bn)}


def gpu_bench_tables(root: Path | None = None) -> list[tuple[str, str]]:
    """(device, markdown table) of every GPU bench file in <root>/results/bench (CPU ones are dry runs)."""
    from lib.bench import as_committed, bench_table
    from lib.paths import gpu_bench_files

    benches = [read_json(p) for p in gpu_bench_files(root)]
    with as_committed():  # the bench file as the GPU runner reads it by default, whatever this shell exported
        return [(data.get("device", "?"), bench_table(data)) for data in benches]


def study_progress(profile: str, dirs: OutputDirs, p1: Sequence[dict], bn: Sequence[dict], study: dict,
                   seeds: Sequence[int] = ()) -> dict | None:
    """How much of the study of `profile` the folder holds (lib.plan.study_status): {'done', 'total', 'missing'
    (names), 'seeds', 'data' (shell-quoted)}, for the data source of its results (else the JPEG copy's, 'shared')
    and the seeds its notebooks were run with (study.json), its Part 1 results have and `seeds` name (else 0).
    None where that data source is a path this machine does not have: the report still renders."""
    from lib.data import DataError
    from lib.plan import study_status

    sources = _unique((r.get("config") or {}).get("data_source") for r in list(p1) + list(bn))
    source = sources[0] if sources else "shared"
    recorded = [int(s) for nb in (study.get("notebooks") or {}).values() if isinstance(nb, dict)
                for s in (nb.get("parameters") or {}).get("seeds") or []]
    seeds = sorted(set(recorded) | {int(r["seed"]) for r in p1 if r.get("seed") is not None}
                   | {int(s) for s in seeds}) or [0]
    try:
        rows = study_status(profile, source, dirs, seeds, details=False)
    except DataError:
        return None
    return {"done": sum(state == "done" for state, _, _ in rows), "total": len(rows), "seeds": seeds,
            "data": shlex.quote(source), "missing": [name for state, name, _ in rows if state != "done"]}


def provenance(runs: Sequence[dict], summary: dict, costs: dict) -> dict:
    """{'versions', 'commits', 'devices'} of training runs, the probes and slices of a bn_summary and cost files,
    each as one string of the distinct values."""
    others = [e for kind in ("probe", "slice") for e in summary.get(kind, {}).values()]
    return {"versions": join_distinct(f"torch {r.get('torch')}, torchvision {r.get('torchvision')}, "
                                      f"Python {r.get('python')}" for r in runs),
            "commits": join_distinct([commit_span(r) for r in runs] + [e.get("git_commit") for e in others]
                                     + [c.get("git_commit") for c in costs.values()]),
            "devices": join_distinct([d for r in runs for d in trained_on(r)]
                                     + [d for e in others for d in trained_on(e)])}


def full_so_far(root: Path, seeds: Sequence[int]) -> dict | None:
    """The full profile's finished results under `root` (its results/full/), for a published smoke or quick report
    while the full study is unfinished (the GPU trains it a few experiments per lent session): {'results_dir',
    'progress' (study_progress, counted for `seeds` too), 'comparison' (Part 1's table, or None), 'left_out' (Part 1
    runs of another recipe, as load_results says them), 'part2' (the accuracy, loss-band, gradient-range and probe
    tables: those part2_findings speaks of), 'findings' (part2_findings), 'sanity' (sanity_bars), and provenance's
    'versions', 'commits', 'devices'}. None where that folder holds no Part 1, protocol or probe result."""
    dirs = output_dirs("full", root=root)
    if not Path(dirs.results).is_dir():
        return None
    p1, left_out, bn, costs, table, summary, study = load_folder(dirs)
    if not p1 and not bn and not any(Path(dirs.results).glob("probe-*.json")):  # cost files alone: nothing to show
        return None
    return {"results_dir": _rel(Path(dirs.results), root),
            "progress": study_progress("full", dirs, p1, bn, study, seeds),
            "comparison": comparison_markdown(table, p1, costs) if p1 else None, "left_out": left_out,
            "part2": part2_markdown(summary, "full", keys=("accuracy", "band", "grad", "probe")),
            "findings": part2_findings(summary), "unreadable_bn": summary.get("unreadable", []),
            "sanity": sanity_bars(table, summary, recipe_departures(p1, "CANet")),
            **provenance(p1 + bn, summary, costs)}


def load_folder(dirs: OutputDirs) -> tuple:
    """What a report reads from a results folder: (Part 1 results, the runs left out of them (load_results), BN
    protocol results, cost files, the comparison table or None, bn_summary, study.json or {})."""
    from lib.bn_study import bn_summary
    from lib.part1 import load_costs, load_results, part1_table

    results_dir = Path(dirs.results)
    left_out: list[str] = []
    p1 = load_results(dirs, left_out=left_out)
    bn = load_results(dirs, prefix="bn-")
    costs = load_costs(dirs)
    table = part1_table(dirs, results=p1, costs=costs) if p1 else None
    summary = (bn_summary(dirs) if results_dir.exists()
               else {"protocol": {}, "probe": {}, "slice": {}, "missing": [], "unreadable": []})
    study = read_json(results_dir / "study.json") if (results_dir / "study.json").exists() else {}
    return p1, left_out, bn, costs, table, summary, study


def collect(profile: str, dirs: OutputDirs) -> dict:
    """Everything the template needs, from the files in dirs.results (and which figures exist in dirs.figs); the
    speed section's from the GPU bench files of the repository the folder is published in (a build's: this one)."""
    from lib.pipeline import notebook_commands, runs_beyond_notebooks
    from lib.stats import ranking_sentences

    results_dir = Path(dirs.results)
    p1, left_out, bn, costs, table, summary, study = load_folder(dirs)
    main = _main_result(dirs, p1)
    weights_path = results_dir / f"{main['name']}.weights.json" if main else None
    weights = read_json(weights_path) if weights_path and weights_path.exists() else None
    alpha = inspect.signature(ranking_sentences).parameters["alpha"].default
    everything = p1 + bn
    # Published output lives in <root>/results/<profile>/ (lib.paths), a build in <root>/build/<profile>/results.
    root = results_dir.parent.parent if results_dir.parent.name == "results" else REPO
    publish = " --publish" if results_dir.parent.name == "results" and profile != "full" else ""
    report_dir = Path(dirs.report).parent
    return {
        "profile": profile,
        "is_full": profile == "full", "published": bool(publish),
        "results_dir": _rel(results_dir, report_dir),
        "fig": lambda name, alt: figure_markdown(dirs, name, alt),
        "note": lambda key, *names: figure_note(dirs, key, *names),
        "original": ORIGINAL_REPORT,
        "canet_variants": CANET_VARIANTS,
        "table": table, "main": main,
        "recipe": _recipe(main or (p1[0] if p1 else None)),
        "comparison": comparison_markdown(table, p1, costs) if p1 else None,
        "comparison_empty": comparison_markdown(None, [], costs),
        "left_out": left_out,
        # Counted by the runs' results, else by the cost files (an architecture's count needs no training).
        "params_by_model": dict({m: c["params"] for m, c in (costs or {}).items() if c.get("params")},
                                **({row["model"]: row["params"] for _, row in table.iterrows()} if table is not None
                                   else {})),
        "ranking": ranking(table) if table is not None else [],
        "ranking_note": ranking_note(table) if table is not None else "",
        "near_chance": near_chance_models(table), "near_chance_pct": fmt_pct(NEAR_CHANCE, 0),
        "verdicts": verdict_counts(table) if table is not None else None,
        "reference": reference_model(table) if table is not None else None,
        "reference_why": reference_why(table) if table is not None else "",
        "alpha": alpha,
        "main_context": context_line([main]) if main else None,
        "main_over_seeds": _over_seeds(table, main["model"]) if main and table is not None else None,
        "per_class": (sorted(zip(CLASSES, main["per_class_acc"]), key=lambda t: -t[1])
                      if main and main.get("per_class_acc") else None),
        "per_class_seeds": per_class_over_seeds(p1, main["model"]) if main else None,
        "unlike_original": unlike_original(main.get("profile"), (main.get("config") or {}).get("num_epochs"),
                                           (main.get("config") or {}).get("num_train"),
                                           (main.get("data") or {}).get("label")) if main else "",
        "confusions": confusions(main) if main else [],
        "weight_spread": weight_spread(weights) if weights else [],
        "se_scales": se_scales(weights) if weights else None,
        "attention_spread": attention_markdown(dirs, main),
        "part2": part2_markdown(summary, join_distinct((r.get("profile") for r in bn), empty="") or None) or None,
        "part2_findings": part2_findings(summary),
        "sanity": sanity_bars(table, summary, recipe_departures(p1, "CANet")) if profile == "full" else [],
        "progress": study_progress(profile, dirs, p1, bn, study) if profile == "full" else None,
        # A published smoke/quick report also shows what the unfinished full study has so far (<root>/results/full).
        "full_so_far": full_so_far(root, sorted({int(r["seed"]) for r in p1
                                                                     if r.get("seed") is not None}))
        if publish else None,
        "bn_params": {m: [fmt_int(n) for n in _unique(r["num_params"] for r in bn if r["model"] == m)]
                      for m in BN_MODELS},
        "study": study,
        "precision_words": PRECISION_WORDS,
        "command": f"python -m lib study --profile {profile}{publish}",  # shown when no notebook is recorded
        "commands": notebook_commands(study),
        "extra_runs": runs_beyond_notebooks(study, p1, bool(publish)) if study else [],
        "report_command": f"python -m lib report --profile {profile}{publish}",
        "notebook_seconds": {k: v.get("seconds") for k, v in (study.get("notebooks") or {}).items()},
        **provenance(everything, summary, costs),
        "data_sources": _unique(((r.get("data") or {}).get("label"), (r.get("data") or {}).get("sha256"),
                                 (r.get("data") or {}).get("archive_sha256")) for r in everything),
        "p1_seeds": {m: sorted(int(r["seed"]) for r in p1 if r["model"] == m) for m in _unique(r["model"] for r in p1)},
        "times": _times(p1, bn, summary),
        "bench": gpu_bench_tables(root),
        "missing_bn": summary.get("missing", []), "unreadable_bn": summary.get("unreadable", []),
        "fmt_pct": fmt_pct, "fmt_num": fmt_num, "fmt_int": fmt_int, "fmt_seconds": fmt_seconds,
    }


def render_report(profile: str, dirs: OutputDirs) -> Path:
    """Render dirs.report (report.md) from the template and the result files of `dirs` (collect); return its path."""
    import jinja2

    path = Path(dirs.report)
    results = Path(dirs.results)
    empty = not any(next(results.glob(f"{p}*.json"), None) for p in ("p1-", "bn-", "probe-", "slice-"))
    # The header names the results folder a report was rendered from (report_template.md).
    if empty and path.exists() and f"`{_rel(results, path.parent)}/`" not in path.read_text():
        raise FileNotFoundError(
            f"no {profile}-profile results in {results}: rendering would replace {path} (rendered from the "
            f"results of another folder) with an empty report. Run the study of that profile first (README; docs/GPU.md for full), "
            f"or delete {path.name} to render the empty skeleton.")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE.parent)), trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    text = env.get_template(TEMPLATE.name).render(**collect(profile, dirs))
    text = "\n".join(line.rstrip() for line in text.splitlines()).strip() + "\n"
    while "\n\n\n" in text:  # template conditionals leave blank runs; one blank line is enough in markdown
        text = text.replace("\n\n\n", "\n\n")
    return atomic_write_text(path, text)


def published_profile(report: Path | str) -> str | None:
    """The profile a report.md was rendered from, as its header names it (report_template.md); None where the
    file does not exist or has no such header (not a rendered report)."""
    path = Path(report)
    found = re.search(r"profile \*\*(\w+)\*\*", path.read_text()) if path.exists() else None
    return found.group(1) if found else None


def refresh(root: Path | str | None = None) -> list[str]:
    """Render again what is rendered from the committed result files under `root` (the repository): README.md's
    speed table of each GPU bench file (between the lib.bench.README_TABLE_* lines) and report.md, in the
    profile it was published from (the full profile's figures are the notebooks': `scripts/main.sh --profile
    full` draws them). What a GPU call's merge changes. Returns what it did, as lines to print."""
    from lib.bench import readme_with_tables
    from lib.paths import gpu_bench_files

    base = Path(root) if root is not None else REPO
    report = base / "report.md"
    profile = published_profile(report)
    if profile is None:
        raise FileNotFoundError(f"{report} is missing or not a rendered report: render it once with python -m lib "
                                f"report --profile quick --publish (or scripts/main.sh --profile full)")
    before = report.read_text()
    render_report(profile, output_dirs(profile, publish=True, root=base))
    done = [f"report.md: profile {profile}, " + ("changed" if report.read_text() != before else "unchanged")]
    # Then the README: a bench file without its place there (a new device) stops here, with the report done.
    readme, benches = base / "README.md", gpu_bench_files(base)
    text = readme.read_text()
    new = readme_with_tables(text, benches, base)
    if new != text:
        atomic_write_text(readme, new)
    return [f"README.md: speed tables of {len(benches)} GPU bench file(s), "
            + ("changed" if new != text else "unchanged")] + done
