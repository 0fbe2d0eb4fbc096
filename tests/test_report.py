"""The rendered report: numbers come from the result files, figures are linked only when they exist,
win/tie wording follows lib.stats. Result files are fabricated here in lib.train's documented format."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from lib.experiments import bn_config, part1_config
from lib.paths import output_dirs
from lib.report import NOT_RUN, ORIGINAL_REPORT, UNREADABLE, published_profile, render_report
from lib.results import atomic_write_json, read_json
from lib.stats import compare, comparison_table

DATA = {"kind": "image-folder", "label": "JPEG-q75 copy (fake.tar.gz)", "sha256": "ab" * 32,
        "archive_sha256": "cd" * 32, "num_train_used": 1000, "num_val_used": 200, "num_test_used": 500}
ENV = {"device": "CPU (x86_64, 2 threads)", "torch": "2.4.0", "torchvision": "0.19.0", "python": "3.12.1",
       "git_commit": "abc123"}
# test accuracy per seed; CANet vs ResNet18 is a clear win, CANet vs CANet_tiny a tie, VGG11 has one seed
ACCS = {"CANet": [0.900, 0.910, 0.920], "ResNet18": [0.800, 0.810, 0.790], "CANet_tiny": [0.905, 0.915, 0.900],
        "VGG11": [0.850]}
PARAMS = {"CANet": 6_289_574, "ResNet18": 11_173_962, "CANet_tiny": 396_155, "VGG11": 128_807_306}


def p1_result(model: str, seed: int, acc: float, num_epochs: int | None = 3) -> dict:
    """A Part 1 result as lib.train.train writes it (3 epochs; num_epochs=None: the profile's, the recipe's own)."""
    cfg = part1_config(model, "quick", "/data/fake.tar.gz", seed,
                       **({"num_epochs": num_epochs} if num_epochs is not None else {}))
    history = [{"epoch": e, "lr": 1e-3 * 0.96 ** e, "optimizer": "adamw" if e < 2 else "sgd",
                "train_loss": 2.0 - e / 3, "train_acc": 0.3 + e / 10, "val_loss": 1.9 - e / 4,
                "val_acc": acc - 0.01 + e / 100, "seconds": 10.0 + e} for e in range(3)]  # best: acc + 0.01
    conf = np.full((10, 10), 2)
    np.fill_diagonal(conf, 30)
    conf[3, 5] = 9  # cat -> dog: the most frequent mistake
    return {"name": cfg.name, "status": "ok", "message": "", "config": cfg.to_dict(), "model": model,
            "profile": "quick", "seed": seed, "num_params": PARAMS[model], "data": DATA, **ENV, "history": history,
            "best_val_acc": acc + 0.01, "best_epoch": 2, "test_acc": acc, "test_loss": 0.5,
            "per_class_acc": [0.5 + c / 20 for c in range(10)], "confusion": conf.tolist(), "train_seconds": 33.0,
            "peak_mem_mb": None, "checkpoint": None}


def bn_result(model: str, lr: float, best: float) -> tuple[dict, dict]:
    """A BN-protocol result and its per-step series."""
    cfg = bn_config(model, lr, "quick", "/data/fake.tar.gz")
    # The best epoch is not the last: a table that read the last epoch's accuracy would show best - 0.05
    history = [{"epoch": e, "lr": lr, "optimizer": "adam", "train_loss": 1.5, "train_acc": 0.5, "val_loss": 1.4,
                "val_acc": best - 0.05 * e, "seconds": 5.0} for e in range(2)]
    result = {"name": cfg.name, "status": "ok", "config": cfg.to_dict(), "model": model, "profile": "quick",
              "seed": cfg.seed, "num_params": ORIGINAL_REPORT["params"][model], "data": DATA, **ENV, "history": history,
              "best_val_acc": best, "best_epoch": 0, "test_acc": best - 0.01, "train_seconds": 10.0}
    width = 0.2 if model == "VGG_A_BN" else 0.5
    steps = {"loss": [2.0 - 0.1 * i + width * (lr > 5e-4) for i in range(10)],
             "grad_max": [0.1] * 10, "grad_min": [-0.1] * 10}
    return result, steps


@pytest.fixture
def study_dirs(tmp_path):
    """A quick-profile output folder with fabricated Part 1, cost and Part 2 result files and two figures."""
    dirs = output_dirs("quick", root=tmp_path)
    for model, accs in ACCS.items():
        for seed, acc in enumerate(accs):
            r = p1_result(model, seed, acc)
            atomic_write_json(Path(dirs.results) / f"{r['name']}.json", r)
    for model in ("CANet", "ResNet18"):
        atomic_write_json(Path(dirs.results) / f"cost-{model}.json",
                          {"model": model, "flops": 2_142_028_976 if model == "CANet" else 1_110_845_440,
                           "params": PARAMS[model], "infer_ips": 1234.5, "infer_batch": 64, "precision": "fp32",
                           "device": "cpu", "device_name": ENV["device"]})
    atomic_write_json(Path(dirs.results) / "part1-main.json", {"model": "CANet", "seed": 0, "name": "p1-CANet-s0"})
    for model, best in (("VGG_A", 0.7012), ("VGG_A_BN", 0.8123)):
        for lr in (1e-3, 1e-4):
            r, steps = bn_result(model, lr, best if lr == 1e-3 else best - 0.05)
            atomic_write_json(Path(dirs.results) / f"{r['name']}.json", r)
            atomic_write_json(Path(dirs.results) / f"{r['name']}.steps.json", steps)
    figs = Path(dirs.figs)
    figs.mkdir(parents=True)
    for name in ("p1_acc_vs_params", "p1_curves_CANet"):
        (figs / f"{name}.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return dirs


def _table_row(text: str, model: str) -> str:
    """The model's row of the (first) comparison table: the table under the header that starts with 'model |
    parameters | test accuracy'."""
    rows, inside = [], False
    for line in text.splitlines():
        if line.startswith("| model | parameters | test accuracy"):
            inside = True
        elif not line.startswith("|"):
            inside = False
        elif inside and line.startswith(f"| {model} |"):
            rows.append(line)
    assert rows, f"no table row for {model}"
    return rows[0]


def test_every_table_number_comes_from_the_results(study_dirs):
    text = render_report("quick", study_dirs).read_text()
    for model, accs in ACCS.items():
        row = _table_row(text, model)
        pct = 100 * np.array(accs)
        cell = f"{pct.mean():.2f} ± {pct.std(ddof=1):.2f}" if len(accs) > 1 else f"{pct.mean():.2f}"
        assert cell in row
        assert f"{PARAMS[model]:,}" in row
        assert f"{ORIGINAL_REPORT['test_acc'][model]:.2f}" in row  # the original's number beside ours
        assert f"(n={len(accs)})" in row
    assert "2.14G" in _table_row(text, "CANet") and "1,234 (batch 64)" in _table_row(text, "CANet")
    for model in ("MobileNetV2", "ShuffleNetV2", "ResNet34", "CANet_light", "CANet_pro"):
        assert NOT_RUN in _table_row(text, model)
    # Every table states its context; the recipe is read from the results' config.
    assert text.count("profile: quick") >= 2 and "JPEG-q75 copy (fake.tar.gz)" in text and "seeds: 0, 1, 2" in text
    n_p1 = sum(len(v) for v in ACCS.values())  # each p1_result trained 33 s
    assert f"seeds: 0, 1, 2 | runtime: {n_p1} runs, {33 * n_p1 / 60:.1f} min of training in all" in text
    assert "3 epochs, batch 256" in text and "ab" * 32 in text
    # Part 2: ours, the original's, and the runs that are missing.
    assert "81.23%" in text and "70.12%" in text and "84.29%" in text and "75.81%" in text
    lr_rows = [line for line in text.splitlines() if line.startswith("| 0.002 |")]
    assert lr_rows and NOT_RUN in lr_rows[0]
    assert "cat -> dog (9," in text  # the most frequent confusion, from the confusion matrix
    assert "This report is rendered from the `quick` profile** (a run for trying the project" in text  # build/
    # The conclusion quotes the main model over its seeds, not only the run shown in the curves.
    assert "reaches a test accuracy of 91.00 ± 1.00% over 3 seeds (0, 1, 2;" in text


def test_time_columns_of_runs_whose_epoch_times_differ_by_the_machines_load_are_marked(study_dirs):
    # CANet_tiny's seed 0 ran on a loaded machine: 10x slower epochs than seeds 1 and 2.
    for seed, acc in enumerate(ACCS["CANet_tiny"]):
        r = p1_result("CANet_tiny", seed, acc)
        slow = 10.0 if seed == 0 else 1.0
        r["history"] = [dict(h, seconds=h["seconds"] * slow) for h in r["history"]]
        atomic_write_json(Path(study_dirs.results) / f"{r['name']}.json", r)
    text = render_report("quick", study_dirs).read_text()
    cells = _table_row(text, "CANet_tiny").split(" | ")
    assert cells[6] == "12.00 ‡" and cells[7].endswith(" ‡")  # median of 10, 10, 11, 11, 12, 12, 100, 110, 120
    assert "‡" not in _table_row(text, "CANet")  # its three runs: the same times
    assert ("‡: the runs' own median epoch times (s, by seed) differ more than 2-fold (CANet_tiny s0 110.0, s1 11.0, "
            "s2 11.0): probably the machine's load") in text


def test_time_columns_of_a_model_trained_on_another_device_are_marked(study_dirs):
    for model, seed in (("VGG11", 0), ("CANet", 2)):  # all of VGG11's runs; one of CANet's three
        r = dict(p1_result(model, seed, ACCS[model][seed]), device="NVIDIA H200", peak_mem_mb=1234.0)
        atomic_write_json(Path(study_dirs.results) / f"{r['name']}.json", r)
    text = render_report("quick", study_dirs).read_text()
    for model in ("VGG11", "CANet"):
        cells = _table_row(text, model).split(" | ")
        assert cells[6].endswith(" §") and cells[7].endswith(" §")
        assert cells[9] == "1,234 |"  # a GPU run: the peak GPU memory column is there
    assert _table_row(text, "ResNet18").endswith("| - |") and "| peak GPU memory (MiB) |" in text
    assert "§" not in _table_row(text, "CANet_tiny") and "§" not in _table_row(text, "ResNet18")
    assert ("§: trained on another device than most of the table (CANet: NVIDIA H200 (seed 2); VGG11: NVIDIA H200 "
            "(seed 0)), so the marked time columns do not compare with the others'. With the recipe's precision "
            "`auto`, the GPU runs trained with bf16 autocast and the CPU runs in fp32: their accuracies come from "
            "different arithmetic too.") in text
    assert "device: CPU (x86_64, 2 threads); NVIDIA H200 |" in text  # the context line names both
    for model, seed in (("VGG11", 0), ("CANet", 2)):  # another CPU: only the time columns differ
        r = dict(p1_result(model, seed, ACCS[model][seed]), device="CPU (AMD EPYC, 2 threads)")
        atomic_write_json(Path(study_dirs.results) / f"{r['name']}.json", r)
    text = render_report("quick", study_dirs).read_text()
    assert ("(seed 0)), so the marked time columns do not compare with the others'. No run of this table trained "
            "on a GPU, so it has no peak GPU memory column.*") in text
    assert "different arithmetic" not in text


def test_conclusion_of_a_one_seed_main_model(study_dirs):
    atomic_write_json(Path(study_dirs.results) / "part1-main.json", {"model": "VGG11", "seed": 0, "name": "p1-VGG11-s0"})
    text = render_report("quick", study_dirs).read_text()
    conclusion = text.split("## Conclusion", 1)[1]
    assert "- VGG11 (seed 0, profile quick) reaches 85.00% test\n  accuracy here;\n  the original report gives 85.75%" \
        in conclusion
    assert "over 1 seeds" not in text and "± nan" not in text


def test_learning_rates_are_listed_in_ascending_order(study_dirs):
    text = render_report("quick", study_dirs).read_text()
    lrs = [float(line.split(" | ")[0][2:]) for line in text.splitlines() if re.match(r"\| 0\.\d+ \|", line)]
    assert lrs == sorted(lrs) and len(lrs) == 4  # the accuracy table: every protocol lr, run or not
    grad = [line.split(" | ")[1] for line in text.splitlines() if line.startswith("| Standard | 0.")]
    assert grad == ["0.0001", "0.001"]
    assert "learning rates run (0.0001, 0.001)" in text


def test_only_existing_figures_are_linked(study_dirs):
    path = render_report("quick", study_dirs)
    text = path.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(links) == ["figs/p1_acc_vs_params.png", "figs/p1_curves_CANet.png"]
    for link in links:
        assert (path.parent / link).is_file()
    assert "Figure `p1_filters` has not been produced yet" in text
    assert "Figure `p2_santurkar` has not been produced yet" in text


def test_the_published_profiles_never_link_each_others_figures(tmp_path):
    quick, full = output_dirs("quick", publish=True, root=tmp_path), output_dirs("full", root=tmp_path)
    assert (quick.figs, full.figs) == (tmp_path / "figs" / "quick", tmp_path / "figs")
    assert quick.report == full.report == tmp_path / "report.md"  # one committed report: whichever was rendered
    full.figs.mkdir(parents=True)
    (full.figs / "p1_filters.png").write_bytes(b"a full-study figure")
    text = render_report("quick", quick).read_text()  # quick has none of its own yet: it shows none
    assert "Figure `p1_filters` has not been produced yet" in text and "figs/p1_filters.png" not in text
    assert "Until the full profile's results are complete, this report is rendered from the `quick`" in text
    quick.figs.mkdir(parents=True)
    (quick.figs / "p2_santurkar.png").write_bytes(b"a quick figure")
    full.report.unlink()  # (no results in either folder: render_report keeps a report of other results otherwise)
    text = render_report("full", full).read_text()
    assert "(figs/p1_filters.png)" in text and "Figure `p2_santurkar` has not been produced yet" in text
    full.report.unlink()
    assert render_report("quick", quick).read_text().count("(figs/quick/p2_santurkar.png)") == 1


def test_the_attention_spread_of_the_main_run_is_tabled(study_dirs):
    assert "How much each gate varies within one image" not in render_report("quick", study_dirs).read_text()
    blocks = [{"block": i, "sa": 0.5, "gate_a": 0.5 / r, "se": 0.3, "gate_b": 0.01} for i, r in enumerate((10, 20, 40))]
    record = {"name": "attention-p1-CANet-s0", "run": "p1-CANet-s0", "model": "CANet", "profile": "quick",
              "best_epoch": 2, "num_images": 256, "data": "JPEG-q75 copy", "device": "CPU (test)", "blocks": blocks}
    path = Path(study_dirs.results) / "attention-p1-CANet-s0.json"
    atomic_write_json(path, record)
    text = render_report("quick", study_dirs).read_text()
    assert ("How much each gate varies within one image (max - min, the mean over 256 test images of p1-CANet-s0, the "
            "validation-selected epoch 3 (counting from 1), eval mode):") in text  # best_epoch counts from 0
    assert "| 1 | 0.5 | 0.025 | 0.3 | 0.01 |" in text
    assert ("Within an image, the gate the block's output puts on path a varies 20x less than SA's map (the median "
            "over the 3 blocks; 10x to 40x).") in text
    atomic_write_json(path, dict(record, best_epoch=1))  # of other weights than the result selected: left out
    assert "How much each gate varies" not in render_report("quick", study_dirs).read_text()


def test_win_and_tie_wording_follows_the_statistics(study_dirs):
    pct = {m: [100 * a for a in accs] for m, accs in ACCS.items()}
    # Preconditions: the fabricated numbers give one win, one tie, one undetermined comparison.
    assert compare(pct["CANet"], pct["ResNet18"]).verdict == "better"
    assert compare(pct["CANet"], pct["CANet_tiny"]).verdict == "tied"
    assert compare(pct["CANet"], pct["VGG11"]).verdict == "undetermined"
    text = render_report("quick", study_dirs).read_text()
    assert "CANet is better than ResNet18" in text
    assert "CANet and CANet_tiny are tied" in text
    assert "CANet vs VGG11 cannot be decided from one seed" in text
    assert "better than CANet_tiny" not in text and "CANet_tiny is better" not in text
    assert "1 model(s) are worse than it, 0 better, 1 tied" in text
    # The two tests together (VGG11's comparison is none): whether the win survives Holm's correction for them.
    p = compare(pct["CANet"], pct["ResNet18"]).p
    assert ("These are 2 Welch tests, each judged at p < 0.05 on its own (not corrected for their number); with "
            f"Holm's correction for the 2, {int(2 * p < 0.05)} of the 1 differences called significant stay so") in text


def test_empty_folder_renders_not_run_rows(tmp_path):
    dirs = output_dirs("full", root=tmp_path)
    text = render_report("full", dirs).read_text()
    assert "Until the full profile's results are complete" not in text  # the full profile needs no warning
    # but says that it is incomplete, and how to see what is missing
    assert ("> **This report is incomplete**: the folder holds 0 of the 29 experiments of the\n> `full` study (data "
            "`shared`, seeds 0: the seeds found so far in its results\n> and notebook runs); the other 29 show as") in text
    assert "`python -m lib status --profile\n> full --data shared --seeds 0` lists them" in text
    for model in ORIGINAL_REPORT["test_acc"]:
        assert NOT_RUN in _table_row(text, model)
        assert f"| {ORIGINAL_REPORT['params'][model]:,} (spec) |" in _table_row(text, model)  # the spec's count
    assert '"(spec)" marks the\nspecification\'s count of a model neither run nor measured' in text  # explained
    assert not re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    # A model not run but measured (its cost file: no training) shows the measured count, FLOPs and throughput.
    atomic_write_json(dirs.results / "cost-CANet_pro.json", {
        "model": "CANet_pro", "flops": 8_545_500_000, "params": 25_128_842, "infer_ips": 23.4, "infer_batch": 64,
        "precision": "fp32", "device": "cpu", "device_name": "CPU (x86_64, 2 threads)"})
    text = render_report("full", dirs).read_text()
    assert _table_row(text, "CANet_pro") == ("| CANet_pro | 25,128,842 | not run | - | 93.56 | 8.55G | - | - | "
                                             "23 (batch 64) |")  # no GPU run: no peak GPU memory column
    assert "| CANet_pro | 128 | 216 | 25,128,842 | 25,128,842 |" in text  # the architecture table too


def test_recorded_compute_adds_training_probe_and_slice_seconds(study_dirs):
    from lib.report import collect

    before = collect("quick", study_dirs)["times"]
    n_p1 = sum(len(a) for a in ACCS.values())
    assert before["n"] == n_p1 + 4 and before["gpu"] == 0.0  # 10 Part 1 runs, 4 BN runs, all on the CPU
    assert before["cpu"] == pytest.approx(33.0 * n_p1 + 10.0 * 4)
    atomic_write_json(Path(study_dirs.results) / "slice-VGG_A-s2020.json",
                      {"alpha": [-1.0, 0.0, 1.0], "loss": [3.0, 1.0, 2.5], "seconds": 7.5,
                       "environment": {"device": "NVIDIA H100 80GB HBM3"}})
    after = collect("quick", study_dirs)["times"]
    assert after["n"] == before["n"] + 1 and after["gpu"] == pytest.approx(7.5) and after["cpu"] == before["cpu"]


def test_reference_is_the_canet_variant_with_the_most_seeds(study_dirs):
    from lib.report import reference_model

    assert "Against CANet:" in render_report("quick", study_dirs).read_text()  # 3 seeds each: CANet first
    for seed in (1, 2):  # CANet keeps one seed: comparisons against it would decide nothing
        (Path(study_dirs.results) / f"p1-CANet-s{seed}.json").unlink()
    text = render_report("quick", study_dirs).read_text()
    assert ("Against CANet_tiny (the CANet variant with the most seeds: 3 against CANet's 1; a model with fewer seeds "
            "decides fewer comparisons):") in text and "CANet_tiny vs CANet cannot be decided from one seed" in text
    assert reference_model(None) is None
    for name in Path(study_dirs.results).glob("p1-CANet*.json"):  # no CANet variant at all: the table's first
        name.unlink()
    text = render_report("quick", study_dirs).read_text()
    assert "(no CANet variant has a result here: the first model of the table):" in text


def test_commit_line_names_where_a_resumed_run_started(study_dirs):
    path = Path(study_dirs.results) / "p1-VGG11-s0.json"
    r = p1_result("VGG11", 0, ACCS["VGG11"][0])
    atomic_write_json(path, dict(r, git_commit_start="0ld000", git_commit="n3w111"))
    line = next(l for l in render_report("quick", study_dirs).read_text().splitlines() if "git commit(s)" in l)
    assert "0ld000 -> n3w111" in line and "abc123" in line  # the other results started and ended at abc123
    assert "abc123 ->" not in line


def test_speed_section_shows_the_gpu_bench_files_only(tmp_path, monkeypatch):
    import lib.report as R

    bench = tmp_path / "results" / "bench"
    entry = {"model": "CANet", "recipe": "part1", "batch_size": 256, "naive_seconds": 14.0, "fast_seconds": 2.8,
             "ratio": 5.0, "fast_images_per_s": 16000.0, "cuda_graphs": True, "date": "2026-11-27T02:00:00+00:00",
             "fast_overhead_seconds": 0.3, "setup_seconds": 5.0, "warmup_seconds": 9.0, "compile_seconds": 4.0, "model_revision": 2}
    atomic_write_json(bench / "nvidia-h200.json", {"device": "NVIDIA H200", "device_slug": "nvidia-h200",
                                                   "entries": {"CANet": entry}})
    atomic_write_json(bench / "cpu-x86-64.json", {"device": "CPU (dry run)", "entries": {"CANet": entry}})
    ((device, table),) = R.gpu_bench_tables(tmp_path)
    assert device == "NVIDIA H200" and "| CANet | part1 (256) | CUDA graph | 14.00 | 2.80 | 5.0x (missed) |" in table
    monkeypatch.setattr(R, "gpu_bench_tables", lambda root=None: [(device, table)])
    text = render_report("quick", output_dirs("quick", root=tmp_path)).read_text()
    assert "## Speed on a GPU" in text and "Device: NVIDIA H200" in text and "CPU (dry run)" not in text
    monkeypatch.setattr(R, "gpu_bench_tables", lambda root=None: [])
    assert "## Speed on a GPU" not in render_report("quick", output_dirs("quick", root=tmp_path)).read_text()


def _probe_summary(stuck: bool, fallback_enabled: bool = False, exit_step: int | None = 3) -> dict:
    """A bn_summary-shaped dict with the two probe runs, ten probes each (steps 0, 10, ..., 90): VGG_A's stuck check
    fired or not, and it left the chance-level plateau at `exit_step` (None: never); VGG_A_BN at step 2."""
    steps = list(range(0, 100, 10))

    def probe(model, loss):
        stats = {"min": 0.1, "max": 2.0, "mean": 1.0, "median": 1.0}
        return {"label": "Standard" if model == "VGG_A" else "Standard + BatchNorm", "lr": 0.1, "lr_fallback": False,
                "num_steps": 100, "num_probes": 10, "etas": [0.1, 0.2, 0.3, 0.4], "beta": stats, "gpred_max": stats,
                "loss_band_width": stats, "final_train_loss": {"mean": loss}, "probe_nonfinite": 0, "seconds": 90.0,
                "device": "CPU (x86_64, 2 threads)", "data_order_sha256": "x", "data": "JPEG-q75 copy (fake.tar.gz)",
                "profile": "quick", "batch_size": 128, "probe_every": 10, "fallback_enabled": fallback_enabled,
                "num_train_used": 10_000, "git_commit": "p" + model, "train_nonfinite": 0,
                "plateau_exit_step": exit_step if model == "VGG_A" else 2,
                "series": {"step": steps, "beta": [1.0] * 10, "gpred_max": [1.0] * 10, "loss_band_width": [1.0] * 10},
                "stuck_check": {"step": 33, "mean_loss": 2.3022 if stuck and model == "VGG_A" else 1.9,
                                "threshold": 2.2, "stuck": stuck and model == "VGG_A"}}
    return {"protocol": {}, "slice": {}, "missing": [], "same_data_order": True,
            "probe": {m: probe(m, 2.23 if m == "VGG_A" else 1.39) for m in ("VGG_A", "VGG_A_BN")}}


def test_a_probe_run_that_never_left_the_plateau_is_said_beside_its_numbers():
    from lib.report import part2_caveats, part2_findings, part2_markdown

    stuck = _probe_summary(stuck=True, exit_step=None)
    (caveat,) = part2_caveats(stuck)
    assert "Standard (VGG_A)'s probe run it never left the chance-level plateau" in caveat
    assert "final training loss 2.23" in caveat and "2.302 at step 33" in caveat and "does not fall back" in caveat
    assert "does not test the paper's claim" in caveat
    assert "**Caveat:** " + caveat in part2_markdown(stuck)
    # A loss above chance level is a network diverging, not one on the plateau: said so.
    stuck["probe"]["VGG_A"]["final_train_loss"]["mean"] = 3.41
    stuck["probe"]["VGG_A"]["stuck_check"]["mean_loss"] = 4.249
    (caveat,) = part2_caveats(stuck)
    assert "its training loss stayed above the chance level (ln 10 = 2.303; final training loss 3.41): it diverged" \
           in caveat and "Its stuck check found it above the plateau, not training (mean training loss 4.249" in caveat
    probe_lines = [s for s in part2_findings(stuck) if s.startswith("Probe")]
    assert len(probe_lines) == 3 and all("Standard did not train" in s for s in probe_lines)
    diverged = _probe_summary(stuck=True, exit_step=None)
    diverged["probe"]["VGG_A"]["train_nonfinite"] = 7
    assert "its training loss became non-finite (7 steps)" in part2_caveats(diverged)[0]
    # Both left the plateau before the second probe: nothing to say, stuck check or not.
    for healthy in (_probe_summary(stuck=False), _probe_summary(stuck=True, exit_step=9)):
        assert part2_caveats(healthy) == [] and "Caveat" not in part2_markdown(healthy)
        assert not any("chance" in s or "see the caveat" in s for s in part2_findings(healthy))


def test_part2_context_lines_give_run_sizes_and_runtime(study_dirs):
    from lib.bn_study import bn_summary
    from lib.report import part2_context

    summary = bn_summary(study_dirs)
    line = part2_context(summary, kind="protocol")
    # 2 networks x 2 learning rates of the fixture, 2 epochs each on 1,000 images, 10 s of training per run
    assert "(fake.tar.gz) | 1,000 training images; per run 2 epochs at batch 128, fp32 | profile: quick" in line
    assert "runtime: 4 runs, 40 s of training in all" in line and "seed: 2020" in line
    assert "| code: abc123 | runtime" in line  # the commit the runs were written with
    assert f"| device: {ENV['device']} |" in line
    # A partial study (the lr-1e-3 runs not yet trained) still says where and on what its runs trained.
    for path in Path(study_dirs.results).glob("bn-*-lr0.001-*.json"):
        path.unlink()
    line = part2_context(bn_summary(study_dirs), kind="protocol")
    assert f"| device: {ENV['device']} |" in line and "data: " + DATA["label"] in line
    assert "runtime: 2 runs, 20 s of training in all" in line
    # A run trained beside others on one GPU (the runner's lanes): its time is a shared GPU's, and the line says so.
    lane_run = next(Path(study_dirs.results).glob("bn-VGG_A-*.json"))
    atomic_write_json(lane_run, dict(read_json(lane_run), shared_gpu={"lanes": 3, "mps": True}))
    line = part2_context(bn_summary(study_dirs), kind="protocol")
    assert (f"| device: {ENV['device']} (shared: 1 of 2 runs trained 3 at once under MPS, so their times are those "
            f"of a shared GPU) |") in line
    summary.update(_probe_summary(stuck=False))
    line = part2_context(summary, kind="probe")
    assert "| 10,000 training images; 100 steps at batch 128, a probe every 10 steps at 4 step sizes" in line
    assert "| code: pVGG_A; pVGG_A_BN | runtime" in line
    summary["probe"]["VGG_A"]["git_commit"] += "+dirty"
    line = part2_context(summary, kind="probe")
    assert "| code: pVGG_A+dirty; pVGG_A_BN (+dirty: with changes not committed; see the note on `+dirty` further down) |" in line
    assert "in fp32 (the paper: 15,000 steps, 8 step sizes, 0.05 to 0.4 at lr 0.1) |" in line and "runtime: 2 runs, 3.0 min in all" in line
    # Nothing recorded: said so, not formatted as numbers.
    empty = {"protocol": {"VGG_A": {"best_val_acc": {}}}, "probe": {}, "slice": {}}
    assert "| - training images; per run - epochs at batch - |" in part2_context(empty)
    assert part2_context(empty).endswith("| runtime: 0 runs, not recorded")


def test_near_chance_models_are_flagged(study_dirs):
    for seed in range(3):
        r = p1_result("ResNet18", seed, 0.20 + seed / 100)
        atomic_write_json(Path(study_dirs.results) / f"{r['name']}.json", r)
    text = render_report("quick", study_dirs).read_text()
    assert "ResNet18 stays below\n25% test accuracy (chance: 10%)" in text
    assert "CANet stays below" not in text and "VGG11 stays below" not in text
    # CANet is better than it: the conclusion's count says that one of those barely started learning.
    assert "model(s) are worse than it (1 of them barely started learning in this profile)," in text


def test_report_is_not_replaced_by_an_empty_one(tmp_path):
    dirs = output_dirs("full", root=tmp_path)
    Path(dirs.report).parent.mkdir(parents=True, exist_ok=True)
    Path(dirs.report).write_text("# rendered from the quick profile\n")
    with pytest.raises(FileNotFoundError, match="no full-profile results in .*would replace"):
        render_report("full", dirs)
    assert Path(dirs.report).read_text() == "# rendered from the quick profile\n"
    Path(dirs.report).unlink()  # an empty report may replace an empty report of the same folder
    assert "No Part 1 result yet" in render_report("full", dirs).read_text()
    assert "No Part 1 result yet" in render_report("full", dirs).read_text()


def test_commits_of_probes_and_slices_are_listed_and_dirty_ones_explained(study_dirs):
    from lib.report import collect

    r = p1_result("VGG11", 0, 0.85)
    atomic_write_json(Path(study_dirs.results) / f"{r['name']}.json", dict(r, git_commit="def456+dirty"))
    atomic_write_json(Path(study_dirs.results) / "slice-VGG_A-s2020.json",
                      {"config": {}, "loss": [2.0, 1.0, 2.0], "seconds": 5.0,
                       "environment": dict(ENV, git_commit="slice789", device="CPU (x86_64, 1 threads)")})
    cost = Path(study_dirs.results) / "cost-CANet.json"
    atomic_write_json(cost, dict(read_json(cost), git_commit="cost321"))  # the FLOPs and inference columns' code
    found = collect("quick", study_dirs)
    assert found["commits"] == "abc123; def456+dirty; slice789; cost321"
    assert found["devices"] == "CPU (x86_64, 2 threads); CPU (x86_64, 1 threads)"
    text = render_report("quick", study_dirs).read_text()
    assert "A commit marked\n  `+dirty` ran with uncommitted changes" in text
    assert '"A -> B"' not in text  # no resumed run here


def test_a_probe_run_that_left_the_plateau_late_is_compared_from_then_on():
    from lib.report import part2_caveats, part2_findings

    summary = _probe_summary(stuck=False, exit_step=75)  # probes at 0..70 (8 of 10) before it
    summary["probe"]["VGG_A"]["series"].update(beta=[1.0] * 8 + [30.0, 50.0], gpred_max=[0.1] * 8 + [5.0, 7.0],
                                               loss_band_width=[0.01] * 8 + [2.0, 2.0])
    summary["probe"]["VGG_A_BN"]["series"].update(beta=[20.0] * 8 + [10.0, 12.0],
                                                  gpred_max=[9.0] * 8 + [3.0, float("nan")],
                                                  loss_band_width=[3.0] * 8 + [1.0, 1.0])
    (caveat,) = part2_caveats(summary)
    assert "Standard (VGG_A) left the chance-level plateau (ln 10 = 2.303) only at step 75 of 100" in caveat
    assert "The first 8 of the 10 probes describe a network that had not started" in caveat
    assert "stuck check" not in caveat and "does not test" not in caveat
    findings = part2_findings(summary)
    def from_step_75(lines):  # the probe findings over the late probes (the paper-direction line names them too)
        return [s for s in lines if "from step 75 on" in s and not s.startswith("Santurkar")]

    late = from_step_75(findings)
    # VGG_A_BN's gradient change has one finite late value: too few to compare.
    assert late == ["Too few probes from step 75 on (fewer than two per network) to compare the networks where "
                    "both train."]
    # The count of measures then takes the probes over all of them, and says so.
    assert any(s.startswith("Santurkar") and "beta-smoothness (over all probes): " in s for s in findings)
    summary["probe"]["VGG_A_BN"]["series"]["gpred_max"][-1] = 4.0
    late = from_step_75(part2_findings(summary))
    # The count of measures pointing the paper's way says which probes its probe measures are taken over.
    assert any(s.startswith("Santurkar") and "beta-smoothness (from step 75 on): smaller" in s
               for s in part2_findings(summary))
    assert late == [
        "Probe (effective beta-smoothness), from step 75 on (2 probes of each network, both training): median 11 with "
        "BN vs 40 without (smaller with BN).",
        "Probe (largest gradient change ||g - g'|| over the step sizes), from step 75 on (2 probes of each network, "
        "both training): median 3.5 with BN vs 6 without (smaller with BN).",
        "Probe (loss-landscape band width), from step 75 on (2 probes of each network, both training): median 1 with "
        "BN vs 2 without (smaller with BN)."]
    assert all("before step 75 Standard had not started training" in s for s in findings
               if s.startswith("Probe (") and "from step" not in s)
    # One run per network: medians within 10% of each other get no direction (40 vs 38 and 40 vs 44.5).
    for bn_beta, said in (([38.0, 38.0], "median 38 with BN vs 40 without (about the same with and without BN, "
                                         "within 10%)."),
                          ([44.5, 44.5], "median 44.5 with BN vs 40 without (larger with BN).")):
        summary["probe"]["VGG_A_BN"]["series"]["beta"][-2:] = bn_beta
        assert from_step_75(part2_findings(summary))[0].endswith(said)
    summary["probe"]["VGG_A"]["stuck_check"].update(stuck=True, mean_loss=2.25)
    assert "Its stuck check found it on the plateau (mean training loss 2.25 at step 33" in part2_caveats(summary)[0]


def test_plateau_exit_step():
    from lib.bn_study import plateau_exit_step

    losses = [2.30] * 20 + [2.0] * 20
    assert plateau_exit_step(losses, 2.2, window=10) == 23  # steps 14..23: six at 2.30, four at 2.0 -> mean 2.18
    assert plateau_exit_step([2.30] * 40, 2.2) is None
    assert plateau_exit_step([float("nan")] * 10 + [1.0] * 10, 2.2, window=10) == 19


def test_the_full_profile_states_whether_its_sanity_bars_are_met(study_dirs):
    from lib.report import sanity_bars

    assert "sanity bars" not in render_report("quick", study_dirs).read_text()  # held to the full profile only
    text = render_report("full", study_dirs).read_text()  # the fixture's CANet runs depart from their recipe
    assert "section 8): **not judged**, since these runs depart from the recipe (--num-epochs 3)." in text
    for model, accs in ACCS.items():  # the same runs trained as the recipe says
        for seed, acc in enumerate(accs):
            r = p1_result(model, seed, acc, num_epochs=None)
            atomic_write_json(Path(study_dirs.results) / f"{r['name']}.json", r)
    text = render_report("full", study_dirs).read_text()
    bars = text.split("The sanity bars the `full` profile's results are held to:", 1)[1]
    # CANet 90.0 / 91.0 / 92.0% over seeds 0-2; at lr 1e-3 VGG-A 69.12%, with BN 80.23% (the fixture's test_acc)
    assert "- CANet's test accuracy is 91.00 ± 1.00% (seeds 0, 1, 2; mean ± sample standard deviation); the bar is " \
           "at least 90%" in bars and "STUDY.md section 8): **met**." in bars
    assert "- At lr 1e-3 VGG-A with BN reaches 80.23% test accuracy, without 69.12% (+11.11 points); the bar is BN " \
           "clearly above, taken as at least 2 points (our convention: one run each, so there is no spread to judge " \
           "by): **met**." in bars
    # Below the bars: missed; without the runs: said.
    for seed, acc in enumerate((0.88, 0.89, 0.90)):
        r = p1_result("CANet", seed, acc, num_epochs=None)
        atomic_write_json(Path(study_dirs.results) / f"{r['name']}.json", r)
    r, _ = bn_result("VGG_A", 1e-3, 0.80)
    atomic_write_json(Path(study_dirs.results) / f"{r['name']}.json", r)
    text = render_report("full", study_dirs).read_text()
    assert "is 89.00 ± 1.00% (seeds" in text and "(+1.23 points)" in text and text.count("**missed**") == 2
    assert sanity_bars(None, {"protocol": {}}) == [
        "CANet (bar: at least 90% test accuracy): not run yet.",
        "VGG-A with and without BN at lr 1e-3 (bar: BN at least 2 points higher in test accuracy): VGG_A and VGG_A_BN "
        "not run yet."]
    assert sanity_bars(None, {"protocol": {"VGG_A_BN": {"status": {"0.001": "ok"}, "test_acc": {"0.001": 0.8}}}})[1] \
        .endswith("): VGG_A not run yet.")
    # A diverged CANet seed is said and misses the bar, though the other seeds pass it; a diverged BN run is named.
    for seed, acc in enumerate((0.92, 0.93)):
        r = p1_result("CANet", seed, acc, num_epochs=None)
        atomic_write_json(Path(study_dirs.results) / f"{r['name']}.json", r)
    r = dict(p1_result("CANet", 2, 0.93, num_epochs=None), status="diverged", test_acc=None)
    atomic_write_json(Path(study_dirs.results) / f"{r['name']}.json", r)
    r, _ = bn_result("VGG_A", 1e-3, 0.70)
    atomic_write_json(Path(study_dirs.results) / f"{r['name']}.json", dict(r, status="diverged"))
    text = render_report("full", study_dirs).read_text()
    assert ("- CANet's test accuracy is 92.50 ± 0.71% (seeds 0, 1; mean ± sample standard deviation); the bar is at "
            "least 90% (a 30-epoch SGD sketch reached 90.0% on the JPEG copy, STUDY.md section 8); 1 other seed "
            "diverged, so the recipe does not reliably reach it: **missed**.") in text
    assert "| 0, 1 (n=2; 1 diverged) |" in text  # the table's seeds column
    assert ("(+11.23 points) (VGG_A diverged: its test accuracy is that of the epoch validation chose before); the "
            "bar") in text
    table = comparison_table([dict(p1_result("CANet", 0, 0.9), status="diverged", test_acc=None)])
    assert sanity_bars(table, {"protocol": {m: {"status": {"0.001": "ok" if m == "VGG_A" else "diverged"},
                                                "test_acc": {"0.001": 0.7 if m == "VGG_A" else None}}
                                            for m in ("VGG_A", "VGG_A_BN")}}) == [
        "CANet (bar: at least 90% test accuracy): every run diverged (1): **missed**.",
        "VGG-A with and without BN at lr 1e-3 (bar: BN at least 2 points higher in test accuracy): VGG_A_BN ran "
        "without a test accuracy (diverged in its first epoch)."]
    r = p1_result("CANet", 0, 0.8999996)  # rounds to the bar: the unrounded value is shown
    bar = sanity_bars(comparison_table([r]), {})[0]
    assert "is 90.00% (seed 0; just below 90% before rounding); the bar" in bar and bar.endswith("**missed**.")
    # A run of another recipe than the rest of the folder's is named in the report.
    odd = p1_result("ResNet18", 5, 0.5, num_epochs=None)
    odd["config"]["precision"] = "fp32"
    atomic_write_json(Path(study_dirs.results) / f"{odd['name']}.json", odd)
    text = render_report("full", study_dirs).read_text()
    assert ("Left out of the table (results in `results` trained with another recipe or data than the others, "
            "which do\nnot compare with them, or files that cannot be read; retrain them, or move them away): "
            "p1-ResNet18-s5 (another recipe or data: precision fp32, not auto).") in text


def test_a_result_file_that_cannot_be_read_is_left_out_and_named_or_stops_with_the_file(study_dirs):
    """A damaged result (a truncated file, a git merge conflict in a committed one) does not stop the report: it is
    left out and named with why. A file the report cannot do without (a cost file) stops it with a clear error."""
    from lib.results import JSONFileError

    results = Path(study_dirs.results)
    (results / "p1-VGG11-s0.json").write_text('{"name": "p1-VGG11-s0", ')  # VGG11's only seed
    (results / "bn-VGG_A-lr0.001-s2020.steps.json").write_text('<<<<<<< HEAD\n{}\n=======\n{}\n>>>>>>> other\n')
    (results / "bn-VGG_A_BN-lr0.0001-s2020.json").write_bytes(b"\x89PNG\r\n")
    (results / "probe-VGG_A-s2020.json").write_text("{}\n}")
    (results / "bn-VGG_A_BN-lr0.001-s2020.steps.json").write_text("[1, 2]")  # JSON, but no result
    text = render_report("quick", study_dirs).read_text()
    assert NOT_RUN in _table_row(text, "VGG11")  # not counted as run
    assert "p1-VGG11-s0 (its file cannot be read, not JSON: Expecting property name enclosed in double quotes at " \
           "line 1 column 25)." in text
    assert ("Left out, as their files cannot be read (`python -m lib run` trains them again and replaces the files; "
            "or restore\ncommitted ones with `git checkout`): bn-VGG_A-lr0.001-s2020.steps.json (not JSON: Expecting "
            "value at line 1 column 1 (a git merge conflict left in it)), probe-VGG_A-s2020.json (not JSON: Extra data "
            "at line 2 column 1), bn-VGG_A_BN-lr0.0001-s2020.json (not JSON: not UTF-8 text (invalid start byte) at "
            "line 1 column 1), bn-VGG_A_BN-lr0.001-s2020.steps.json (a JSON list, not an object).") in text
    assert f"| Standard | {UNREADABLE} |" in text and f"| Standard + BatchNorm | {NOT_RUN} |" in text  # the probes
    lr_rows = [line for line in text.splitlines() if line.startswith("| 0.0001 |")]
    assert lr_rows and lr_rows[0].startswith("| 0.0001 | 65.12% |")  # VGG-A's run is still shown
    assert lr_rows[0].count(UNREADABLE) == 1 and NOT_RUN not in lr_rows[0]  # VGG-A + BN's: left out, not "not run"
    (results / "cost-CANet.json").write_text("")
    with pytest.raises(JSONFileError, match=re.escape(f"{results / 'cost-CANet.json'} cannot be read as JSON: the "
                                                      f"file is empty; restore it (`git checkout --")):
        render_report("quick", study_dirs)


def test_a_complete_full_study_renders_without_the_incomplete_banner(tmp_path, monkeypatch):
    import lib.plan as plan

    monkeypatch.setattr(plan, "study_status", lambda *a, **k: [("done", "p1-CANet-s0", ""), ("done", "cost-VGG11", "")])
    text = render_report("full", output_dirs("full", root=tmp_path)).read_text()
    assert "This report is incomplete" not in text and "## Part 1" in text
    monkeypatch.setattr(plan, "study_status", lambda *a, **k: [("done", "p1-CANet-s0", ""), ("missing", "x", "")])
    assert "holds 1 of the 2 experiments" in render_report("full", output_dirs("full", root=tmp_path)).read_text()


def test_the_incomplete_banner_counts_the_seeds_the_notebooks_ran_with(tmp_path):
    dirs = output_dirs("full", root=tmp_path)
    atomic_write_json(dirs.results / "study.json", {"notebooks": {"02_baselines": {"parameters": {"seeds": [0, 1, 2]}},
                                                                  "03_visualize": {"parameters": {}}}})
    text = render_report("full", dirs).read_text()
    assert "holds 0 of the 47 experiments of the\n> `full` study (data `shared`, seeds 0, 1, 2: the seeds found" in text


def test_a_smaller_data_copy_is_said_in_the_context_line():
    from lib.report import context_line

    full = {"label": "JPEG-q75 copy", "num_train_used": 45000, "complete": True, "num_train": 50000, "num_test": 10000}
    smaller = dict(full, num_train_used=180, complete=False, num_train=200, num_test=200)
    assert "smaller copy" not in context_line([{"data": full, "seed": 0}])
    assert context_line([{"data": full, "seed": 0}]).endswith("| seeds: 0 | runtime: 1 run, not recorded")
    line = context_line([{"data": smaller, "seed": 0, "profile": "quick"}])
    assert line.startswith("data: JPEG-q75 copy (180 training images; a smaller copy than CIFAR-10: 200 of 50,000 "
                           "training and 200 of 10,000 test images) | profile: quick")


def test_the_recipe_lines_follow_the_optimiser_switch(tmp_path):
    dirs = output_dirs("quick", root=tmp_path)
    for epochs, said in ((1, "- SGD (momentum 0.9) at lr 0.001 throughout: the recipe's AdamW phase, int(0.8 x\n  1) = 0 "
                              "epochs, is empty."),
                         (2, "AdamW at lr 0.001 for epoch 1, then SGD (momentum 0.9) from\n  epoch 2"),
                         (3, "AdamW at lr 0.001 for epochs 1-2, then SGD")):
        r = p1_result("CANet", 0, 0.5)
        r["config"]["num_epochs"] = epochs
        atomic_write_json(Path(dirs.results) / f"{r['name']}.json", r)
        text = render_report("quick", dirs).read_text()
        assert said in text, text.split("### Optimisation strategy")[1][:400]


def test_the_findings_say_how_many_measures_point_the_papers_way_and_why_not():
    from lib.report import paper_direction

    summary = _probe_summary(stuck=False)  # medians 1.0 for every measure of both probe runs: about the same
    summary["probe"]["VGG_A"].update(beta={"median": 2.0, "max": 3.0}, gpred_max={"median": 0.5, "max": 1.0})
    summary["protocol"] = {"VGG_A": {"best_val_acc_lr1e3": 0.17}}
    # band 0.4 with BN vs 0.1 without: larger; gradient range 0.02 vs 0.03: smaller; probe beta 1 vs 2:
    # smaller; gradient change 1 vs 0.5: larger; band width 1 vs 1: about the same.
    line = paper_direction(summary, 0.1, 0.4, 0.03, 0.02)
    # Only the paper's own three measures are counted; the two proxies are said beside the count.
    assert ("each of their measures would be smaller with BN; here 1 of the 3 is smaller with BN (beta-smoothness: "
            "smaller, gradient change: larger, probe band width: about the same). This study's proxies, about which "
            "the paper predicts nothing (a band across learning rates mostly reflects how fast each run trains), are "
            "not counted: loss band across learning rates: larger, gradient range at lr 1e-3: smaller.") in line
    assert ("not counted: loss band across learning rates: larger, gradient range at lr 1e-3: smaller. In the "
            "protocol runs the network without BN barely started learning (best validation accuracy 17.00% at lr "
            "1e-3)") in line and line.endswith("the proxies cannot speak to the claim in this profile; the full "
                                               "profile's can.")
    summary["protocol"]["VGG_A"]["best_val_acc_lr1e3"] = 0.7  # trained: nothing to explain away
    assert "barely" not in paper_direction(summary, 0.1, 0.4, 0.03, 0.02)
    assert paper_direction({"probe": {}, "protocol": {}}, 0.1, 0.4, None, None) is None  # one measure: no line
    # Measures whose runs have not finished are named, not silently left out.
    line = paper_direction(summary, 0.1, 0.4, None, None)
    assert line.endswith("not counted: loss band across learning rates: larger. Not available yet, as their runs "
                         "have not finished: gradient range at lr 1e-3.")
    assert "Not available yet" not in paper_direction(summary, 0.1, 0.4, 0.03, 0.02)
    line = paper_direction({"probe": {}, "protocol": {}}, 0.1, 0.4, 0.03, 0.02)
    assert line.startswith("Santurkar et al.'s own measures (the probe runs) are not available yet.")
    assert line.endswith("not counted: loss band across learning rates: larger, gradient range at lr 1e-3: smaller. "
                         "Not available yet, as their runs have not finished: beta-smoothness, gradient change, probe "
                         "band width.")


def test_a_loss_band_over_fewer_learning_rates_says_which():
    from lib.report import band_rates

    band = lambda *lrs: {"loss_band": {"lrs": list(lrs)}}  # noqa: E731
    assert band_rates(band("0.0001", "0.0005", "0.001", "0.002"), band("0.0001", "0.0005", "0.001", "0.002")) == ""
    assert band_rates(band("0.0001", "0.002"), band("0.0001", "0.002")) == \
        " (over lr 0.0001, 0.002: not all 4 learning rates have run)"
    assert band_rates(band("0.0001", "0.002"), band("0.0001", "0.0005", "0.001", "0.002")) == \
        " (over lr 0.0001, 0.002 without BN, 0.0001, 0.0005, 0.001, 0.002 with: not all 4 learning rates have run)"
    assert band_rates({}, band("0.0001")) == ""


def test_per_class_over_seeds_and_what_makes_a_comparison_with_the_original_unfair():
    from lib.report import per_class_over_seeds, unlike_original

    runs = [p1_result("CANet", seed, 0.5) for seed in range(3)]
    runs[0]["per_class_acc"] = [0.9] + [0.5] * 8 + [0.05]  # seed 0: truck worst
    runs[1]["per_class_acc"] = runs[2]["per_class_acc"] = [0.5] * 3 + [0.1] + [0.5] * 6  # cat worst
    got = per_class_over_seeds(runs + [p1_result("VGG11", 0, 0.3)], "CANet")
    assert got["seeds"] == [0, 1, 2] and got["best"][0] == "airplane" and got["worst"][0] == "cat"
    assert got["worst"][1] == pytest.approx((0.5 + 0.1 + 0.1) / 3)
    assert per_class_over_seeds(runs[:1], "CANet") is None  # one seed: the seed's own line says it
    assert unlike_original("full", 70, 45_000, "official CIFAR-10") == ""
    assert unlike_original("quick", 8, 5000, "JPEG-q75 copy") == (
        " (not comparable: the quick profile, 8 epochs on 5,000 training images and the JPEG-q75 copy)")
    assert unlike_original("full", 70, 45_000, "JPEG-q75 copy") == " (not comparable: the JPEG-q75 copy)"


def test_weight_spread_per_group_says_what_the_se_group_pools():
    from lib.report import weight_spread

    hist = lambda values: {"edges": [0.0, 1.0, 2.0], "counts": values}  # noqa: E731
    history = [{"epoch": 0, "se": hist([5, 5]), "sa": hist([10, 0])}, {"epoch": 7, "se": hist([9, 1]),
                                                                       "sa": hist([10, 0])}]
    se, sa = weight_spread(history)
    assert (se["group"], se["first_epoch"], se["last_epoch"]) == ("se", 1, 8)
    assert se["std_first"] == pytest.approx(0.5) and se["std_last"] == pytest.approx(0.3)  # bin centres 0.5, 1.5
    assert "mixing scales" in se["note"] and sa["note"] == "" and sa["std_last"] == 0


def test_the_se_kernels_and_their_mixing_scales_are_reported_apart(study_dirs):
    from lib.report import se_scales, weight_spread

    hist = lambda values: {"edges": [0.0, 1.0, 2.0], "counts": values}  # noqa: E731
    scales = [[1.0, 1.0, 1.0]] * 6
    late = [[0.5, 1.0, 1.5]] * 3 + [[1.5, 1.0, 0.5]] * 2 + [[0.9, 1.2, 1.8]]
    history = [{"epoch": 0, "se_kernels": hist([5, 5]), "se_scales": scales, "sa": hist([10, 0])},
               {"epoch": 2, "se_kernels": hist([9, 1]), "se_scales": late, "sa": hist([10, 0])}]
    se, _ = weight_spread(history)
    assert se["group"] == "se_kernels" and se["note"] == "the 1-D kernels; their mixing scales below"
    assert se["std_last"] == pytest.approx(0.3)
    got = se_scales(history)
    assert (got["first_epoch"], got["last_epoch"]) == (1, 3) and got["mean_first"] == [1.0, 1.0, 1.0]
    assert got["mean_last"] == pytest.approx([0.9, 6.2 / 6, 7.3 / 6]) and got["last"] == late
    assert se_scales([{"epoch": 0, "se": hist([1, 1])}]) is None  # an older, pooled file
    resumed = [{"epoch": 0, "se": hist([1, 9])}] + history  # a run resumed across the change: its kernels apart
    assert [w["group"] for w in weight_spread(resumed)] == ["se_kernels", "sa"]
    assert weight_spread(resumed)[0]["first_epoch"] == 1 and weight_spread(resumed)[0]["std_first"] == 0.5
    atomic_write_json(Path(study_dirs.results) / "p1-CANet-s0.weights.json", history)
    text = render_report("quick", study_dirs).read_text()
    assert ("se_kernels (the 1-D kernels; their mixing scales below) 0.5 at epoch 1 and 0.3 at epoch 3;" in text)
    assert ("SE's mixing scales of its kernels 3 / 5 / 7 (each initialised to 1), the mean over the 6 blocks:\n"
            "1 / 1 / 1 at epoch 1 and 0.9 / 1.03 / 1.22 at epoch\n3; per block at epoch 3:\nblock 0 0.5 / 1 / 1.5; ") in text
    assert "block 5 0.9 / 1.2 / 1.8." in text


def test_a_published_quick_report_shows_the_full_results_finished_so_far(study_dirs, monkeypatch):
    import lib.plan as plan

    quick = output_dirs("quick", publish=True, root=Path(study_dirs.results).parent.parent.parent)
    for src in Path(study_dirs.results).glob("*.json"):  # the fixture's quick results, published
        atomic_write_json(Path(quick.results) / src.name, read_json(src))
    text = render_report("quick", quick).read_text()
    assert "## The full profile so far" not in text and "shown apart, in" not in text  # no results/full yet
    full = output_dirs("full", root=Path(quick.results).parent.parent)
    r = p1_result("CANet", 0, 0.9123, num_epochs=None)
    r.update(profile="full", config=part1_config("CANet", "full", "/data/fake.tar.gz", 0).to_dict(),
             device="NVIDIA H200", git_commit="fff999+dirty")
    atomic_write_json(Path(full.results) / f"{r['name']}.json", r)
    for model, best in (("VGG_A", 0.7512), ("VGG_A_BN", 0.8456)):
        b, steps = bn_result(model, 1e-3, best)
        b.update(profile="full", device="NVIDIA H200")
        atomic_write_json(Path(full.results) / f"{b['name']}.json", b)
        atomic_write_json(Path(full.results) / f"{b['name']}.steps.json", steps)
    seen = {}
    monkeypatch.setattr(plan, "study_status", lambda profile, source, dirs, seeds, **k: seen.update(
        profile=profile, seeds=list(seeds)) or [("done", "p1-CANet-s0", ""), ("missing", "p1-CANet-s1", "")])
    text = render_report("quick", quick).read_text()
    assert seen == {"profile": "full", "seeds": [0, 1, 2]}  # counted for the quick study's seeds
    assert 'The full profile\'s results finished so far are shown apart, in "The full profile so far"' in text
    assert '- The full profile\'s findings so far, on its own runs: "The full profile so far" below.' in text
    before, section = text.split("## The full profile so far", 1)
    section = section.split("## Speed on a GPU")[0]
    assert "91.23" not in before and "84.56%" not in before  # the quick parts keep their own numbers
    assert "holds 1 of the 2\nexperiments of the full study with seeds 0, 1, 2" in section
    row = _table_row(section, "CANet")
    assert "| 91.23 | 0 (n=1) | 93.50 |" in row and "| ResNet18 |" in section and NOT_RUN in _table_row(section, "VGG11")
    assert "| 0.001 | 75.12% | 74.12% | 84.56% | 83.56% | 75.81% / 84.29% |" in section
    assert "| 0.0001 | not run | - | not run | - | - |" in section
    assert "profile: full | device: NVIDIA H200" in section
    assert ("- CANet's test accuracy is 91.23% (seed 0); the bar is at least 90% (a 30-epoch SGD sketch reached "
            "90.0% on the JPEG copy, STUDY.md section 8): **met**.") in section
    assert "(+9.44 points)" in section and "git commit(s): fff999+dirty; abc123; devices: NVIDIA H200." in section
    assert "A commit marked `+dirty` ran with uncommitted changes" in section  # explained where a full one is dirty
    assert "sanity bars" not in before  # the quick profile's own results are not held to them
    # The tables the findings speak of (the gradient range at lr 1e-3), not the slices.
    assert "**Gradient range of the last linear layer per step**" in section and "1-D loss slice" not in section
    assert "gradient range has median" in section
    # A run of another recipe is said, not dropped silently; a complete study says how to render its report.
    odd = dict(r, name="p1-ResNet18-s0", model="ResNet18", seed=0,
               config=dict(r["config"], model="ResNet18", precision="fp32", name="p1-ResNet18-s0"))
    atomic_write_json(Path(full.results) / "p1-ResNet18-s0.json", odd)
    section = render_report("quick", quick).read_text().split("## The full profile so far", 1)[1]
    assert "or move them away):\np1-ResNet18-s0 (another recipe or data: precision fp32, not auto)." in section
    monkeypatch.setattr(plan, "study_status", lambda *a, **k: [("done", "p1-CANet-s0", "")])
    section = render_report("quick", quick).read_text().split("## The full profile so far", 1)[1]
    assert "All 1 experiments of the full study with seeds 0, 1, 2 are in\n`results/full/`: `bash scripts/main.sh " \
           "--profile full" in section and "still to run" not in section
    # Cost files alone are nothing to show.
    for f in Path(full.results).glob("*.json"):
        f.unlink()
    atomic_write_json(Path(full.results) / "cost-CANet.json", {"model": "CANet", "flops": 1, "params": 1})
    text = render_report("quick", quick).read_text()
    assert "## The full profile so far" not in text and "shown apart, in" not in text


def test_the_committed_report_is_the_render_of_the_committed_results(tmp_path, monkeypatch):
    """report.md says the numbers of the committed result files as this code renders them (the speed section's
    bench files included): a result, template or wording change without a re-render fails here. Rendered as on a
    machine without the workplace's JPEG copy: the full study's count needs no data."""
    import shutil

    import lib.data
    from lib.paths import REPO

    monkeypatch.setattr(lib.data, "SHARED_CANDIDATES", (tmp_path / "no-copy-here.tar.gz",))
    committed = (REPO / "report.md").read_text()
    profile = published_profile(REPO / "report.md")
    for part in ("results", "figs"):
        shutil.copytree(REPO / part, tmp_path / part)
    dirs = output_dirs(profile, publish=True, root=tmp_path)
    assert render_report(profile, dirs).read_text() == committed, \
        f"report.md is stale: python -m lib report --profile {profile}{' --publish' if profile != 'full' else ''}"


def test_refresh_renders_the_report_in_its_published_profile_and_needs_a_rendered_report(tmp_path):
    from lib.report import refresh

    (tmp_path / "README.md").write_text("# no GPU bench file here\n")
    with pytest.raises(FileNotFoundError, match="report.md is missing or not a rendered report"):
        refresh(tmp_path)
    (tmp_path / "report.md").write_text("# written by hand\n")
    assert published_profile(tmp_path / "report.md") is None and published_profile(tmp_path / "nope.md") is None
    with pytest.raises(FileNotFoundError, match="not a rendered report"):
        refresh(tmp_path)
    dirs = output_dirs("quick", publish=True, root=tmp_path)

    def write_p1(model: str, acc: float) -> None:
        result = p1_result(model, 0, acc)
        atomic_write_json(Path(dirs.results) / f"{result['name']}.json", result)

    write_p1("CANet", 0.5)
    render_report("quick", dirs)  # the speed section from the bench files under tmp_path: none
    assert published_profile(tmp_path / "report.md") == "quick"
    rendered = (tmp_path / "report.md").read_text()
    assert refresh(tmp_path) == ["README.md: speed tables of 0 GPU bench file(s), unchanged",
                                 "report.md: profile quick, unchanged"]
    write_p1("ResNet18", 0.6)
    assert refresh(tmp_path)[1] == "report.md: profile quick, changed"
    assert (tmp_path / "report.md").read_text() != rendered and "ResNet18" in (tmp_path / "report.md").read_text()


def test_report_of_another_profile_over_the_committed_one_says_how_to_get_it_back(tmp_path, monkeypatch, capsys):
    from lib import cli

    monkeypatch.setattr(cli, "output_dirs", lambda profile, publish=None: output_dirs(profile, publish, root=tmp_path))
    for profile in ("quick", "smoke"):
        result = p1_result("CANet", 0, 0.5)
        atomic_write_json(Path(output_dirs(profile, True, tmp_path).results) / f"{result['name']}.json", result)
    assert cli.main(["report", "--profile", "quick", "--publish"]) == 0
    assert "note:" not in capsys.readouterr().out  # no report there before
    assert cli.main(["report", "--profile", "smoke", "--publish"]) == 0
    assert published_profile(tmp_path / "report.md") == "smoke"
    assert (f"note: {tmp_path / 'report.md'} was the quick profile's report; `python -m lib report --profile quick "
            f"--publish` renders it again") in capsys.readouterr().out
    assert cli.main(["report", "--profile", "smoke", "--publish"]) == 0
    assert "note:" not in capsys.readouterr().out  # the same profile again


def test_each_figure_note_is_shown_under_its_figures_in_the_report_and_the_notebooks(tmp_path):
    """One text per figure (lib.figure_notes), shown by both the report and the notebooks, and in the report only
    under figures that were drawn."""
    from lib.figure_notes import NOTES
    from lib.paths import REPO
    from lib.report import figure_note

    template = (REPO / "lib" / "report_template.md").read_text()
    generator = (REPO / "scripts" / "make_notebooks.py").read_text()
    assert all(f'note("{key}"' in template and f'NOTES["{key}"]' in generator for key in NOTES)
    dirs = output_dirs("quick", publish=True, root=tmp_path)
    assert figure_note(dirs, "p1_ridge", "p1_ridge_se", "p1_ridge_sa") == ""  # none drawn: nothing to read
    Path(dirs.figs).mkdir(parents=True)
    (Path(dirs.figs) / "p1_ridge_sa.png").write_bytes(b"png")
    assert figure_note(dirs, "p1_ridge", "p1_ridge_se", "p1_ridge_sa") == "**How to read them.** " + NOTES["p1_ridge"]
    assert figure_note(dirs, "p1_filters") == ""
    (Path(dirs.figs) / "p1_filters.png").write_bytes(b"png")
    assert figure_note(dirs, "p1_filters").startswith("**How to read it.** The 3x3 RGB filters of block 0")
    with pytest.raises(KeyError):
        figure_note(dirs, "p1_no_such_figure")


def test_two_seeds_whose_epoch_times_differ_more_than_twofold_are_marked():
    import pandas as pd

    from lib.report import uneven_times

    table = pd.DataFrame([{"model": "CANet", "run_epoch_seconds": [(0, 10.0), (1, 25.0)]},  # 2.5-fold: marked
                          {"model": "ResNet18", "run_epoch_seconds": [(0, 10.0), (1, 19.0)]},  # 1.9-fold: not
                          {"model": "VGG11", "run_epoch_seconds": [(0, 10.0)]}])  # one run: nothing to compare
    assert uneven_times(table) == {"CANet": [(0, 10.0), (1, 25.0)]}


def test_bn_wins_only_the_learning_rates_where_its_accuracy_is_higher():
    from lib.report import part2_findings

    summary = {"protocol": {"VGG_A": {"best_val_acc": {"0.0001": 0.5, "0.001": 0.6, "0.002": 0.4}},
                            "VGG_A_BN": {"best_val_acc": {"0.0001": 0.5, "0.001": 0.7, "0.002": 0.3}}},
               "probe": {}, "slice": {}}
    assert "BN has the higher best validation accuracy at 1 of the 3 learning rates run (0.001)." \
        in part2_findings(summary)  # a tie at 0.0001 is no win


def test_the_probes_from_the_plateau_exit_on_include_the_one_at_that_step():
    from lib.report import part2_findings

    summary = _probe_summary(stuck=False, exit_step=70)  # probes at 0, 10, ..., 90: 70, 80 and 90 from then on
    summary["probe"]["VGG_A"]["series"]["beta"] = [1.0] * 7 + [30.0, 40.0, 50.0]
    late = [s for s in part2_findings(summary) if s.startswith("Probe (effective beta-smoothness), from step 70")]
    assert late == ["Probe (effective beta-smoothness), from step 70 on (3 probes of each network, both training): "
                    "median 1 with BN vs 40 without (smaller with BN)."]


def test_runs_that_recorded_no_device_count_as_cpu_time(study_dirs):
    from lib.report import collect

    before = collect("quick", study_dirs)["times"]
    r = p1_result("ResNet18", 2, ACCS["ResNet18"][2])
    del r["device"]
    atomic_write_json(Path(study_dirs.results) / f"{r['name']}.json", r)
    after = collect("quick", study_dirs)["times"]
    assert after["n"] == before["n"] and after["gpu"] == 0.0
    assert after["cpu"] == pytest.approx(before["cpu"]) and after["total"] == pytest.approx(before["total"])


def test_without_a_marker_the_main_run_is_canets_lowest_seed(study_dirs):
    from lib.report import collect

    (Path(study_dirs.results) / "part1-main.json").unlink()
    assert collect("quick", study_dirs)["main"]["name"] == "p1-CANet-s0"
    atomic_write_json(Path(study_dirs.results) / "part1-main.json", {"model": "CANet", "seed": 7, "name": "p1-CANet-s7"})
    assert collect("quick", study_dirs)["main"]["name"] == "p1-CANet-s0"  # a marker of a run not here: the same


def test_runs_of_which_only_some_trained_under_mps_say_so():
    from lib.report import shared_gpu_note

    runs = [{"shared_gpu": {"lanes": 3, "mps": True}}, {"shared_gpu": {"lanes": 3, "mps": False}}, {}]
    assert shared_gpu_note(runs) == (" (shared: 2 of 3 runs trained 3 at once (some under MPS), so their times are "
                                     "those of a shared GPU)")
    assert " under MPS," in shared_gpu_note(runs[:1]) and " time-sliced," in shared_gpu_note(runs[1:])


def test_the_incomplete_banner_counts_partial_and_damaged_experiments_as_not_done(tmp_path, monkeypatch):
    import lib.plan as plan

    monkeypatch.setattr(plan, "study_status", lambda *a, **k: [("done", "p1-CANet-s0", ""),
                                                               ("partial", "p1-CANet-s1", ""),
                                                               ("damaged", "p1-CANet-s2", "")])
    assert "holds 1 of the 3 experiments" in render_report("full", output_dirs("full", root=tmp_path)).read_text()


def test_models_tied_with_a_near_chance_reference_are_not_counted_as_beaten(study_dirs):
    from lib.report import collect

    for seed, acc in enumerate((0.20, 0.21, 0.22)):  # CANet (the reference) and ResNet18 both barely learned: a tie
        for model, shift in (("CANet", 0.0), ("ResNet18", 0.001)):
            r = p1_result(model, seed, acc + shift)
            atomic_write_json(Path(study_dirs.results) / f"{r['name']}.json", r)
    info = collect("quick", study_dirs)
    assert info["near_chance"] == ["CANet", "ResNet18"]
    assert info["verdicts"]["tied"] == 1 and info["verdicts"]["better"] == 0
    assert info["verdicts"]["better_near_chance"] == 0


def test_a_folder_with_only_part2_results_replaces_a_report_of_another_folder(tmp_path):
    dirs = output_dirs("full", root=tmp_path)
    Path(dirs.report).parent.mkdir(parents=True, exist_ok=True)
    Path(dirs.report).write_text("# rendered from the quick profile\n")
    atomic_write_json(Path(dirs.results) / "slice-VGG_A-s2020.json",
                      {"alpha": [-1.0, 0.0, 1.0], "loss": [3.0, 1.0, 2.5], "seconds": 7.5,
                       "environment": {"device": "NVIDIA H100 80GB HBM3"}})
    assert "rendered from the quick profile" not in render_report("full", dirs).read_text()


def test_a_missing_data_label_is_not_taken_for_the_official_data():
    from lib.report import unlike_original

    assert unlike_original("full", 70, 45_000, None) == " (not comparable: the data recorded in the result files)"


def test_the_fallback_note_says_from_which_lr_to_which_and_why():
    from lib.report import fallback_note

    why = {"from_lr": 0.1, "to_lr": 0.01,
           "stuck_check": {"step": 400, "window": 100, "mean_loss": 2.3031, "threshold": 2.2}}
    summary = {"probe": {"VGG_A": {"lr": 0.01, "fallback_why": why}, "VGG_A_BN": {"lr": 0.01}}}
    assert fallback_note(summary) == (
        "Both networks were probed at lr 0.01, not 0.1: at 0.1 VGG-A did not train (its mean training loss 2.303 over "
        "the 100 steps before step 400, above the threshold 2.2), so, as BN_METHODS.md says, both ran again at the "
        "lower lr, with the step sizes scaled by the same factor.")
    why["stuck_check"]["mean_loss"] = None  # the loss went non-finite
    assert "(its training loss became non-finite before step 400)" in fallback_note(summary)
    assert fallback_note({"probe": {"VGG_A": {"lr": 0.1}}}) == ""


def test_the_comparison_table_lists_the_models_by_parameter_count(study_dirs):
    text = render_report("quick", study_dirs).read_text()
    table = text.split("| model | parameters |", 1)[1].split("\n\n", 1)[0]  # the first comparison table
    models = [line.split(" | ")[0][2:] for line in table.splitlines()[2:]]
    params = {**ORIGINAL_REPORT["params"], **PARAMS}
    assert sorted(models) == sorted(ORIGINAL_REPORT["test_acc"])  # the nine Part 1 models, run or not
    assert [params[m] for m in models] == sorted(params[m] for m in models)


def test_the_gradient_table_takes_the_largest_max_and_the_smallest_min():
    from lib.report import part2_tables

    grad = {"0.001": {"range": {"median": 0.2, "max": 0.3}, "grad_max": {"min": 0.01, "max": 0.25},
                      "grad_min": {"min": -0.05, "max": -0.01}}}
    headers, rows = part2_tables({"protocol": {"VGG_A": {"grad_range": grad}}})["grad"]
    assert headers[-2:] == ["largest max", "smallest min"]
    assert rows == [["Standard", "0.001", "0.2", "0.3", "0.25", "-0.05"]]


def test_a_confusions_share_is_of_the_true_class_images():
    from lib.report import confusions

    conf = np.full((10, 10), 2)
    np.fill_diagonal(conf, 30)
    conf[3, 5], conf[3, 0] = 9, 8  # 61 cat images (row 3), 55 predicted dog (column 5)
    top = confusions({"confusion": conf.tolist()}, top=2)
    assert [(c["true"], c["pred"], c["count"]) for c in top] == [("cat", "dog", 9), ("cat", "airplane", 8)]
    assert top[0]["pct_of_true"] == pytest.approx(100 * 9 / 61)


def test_data_that_records_no_completeness_is_not_called_a_smaller_copy():
    from lib.report import context_line

    older = {"label": "JPEG-q75 copy", "num_train_used": 45000, "num_train": 50000, "num_test": 10000}
    assert "smaller copy" not in context_line([{"data": older, "seed": 0}])


def test_the_accuracy_table_notes_a_status_other_than_ok():
    from lib.report import part2_tables

    entry = {"best_val_acc": {"0.001": 0.7012, "0.0001": 0.6}, "test_acc": {"0.001": 0.69, "0.0001": 0.59},
             "status": {"0.001": "ok", "0.0001": "diverged"}}
    _, rows = part2_tables({"protocol": {"VGG_A": entry}})["accuracy"]
    by_lr = {row[0]: row[1:3] for row in rows}
    assert by_lr["0.001"] == ["70.12%", "69.00%"] and by_lr["0.0001"] == ["60.00% (diverged)", "59.00%"]


def test_bn_below_the_network_without_bn_misses_the_bar():
    from lib.report import sanity_bars

    protocol = {m: {"status": {"0.001": "ok"}, "test_acc": {"0.001": acc}}
                for m, acc in (("VGG_A", 0.80), ("VGG_A_BN", 0.75))}
    line = sanity_bars(None, {"protocol": protocol})[1]
    assert "VGG-A with BN reaches 75.00% test accuracy, without 80.00% (-5.00 points)" in line
    assert line.endswith("**missed**.")
