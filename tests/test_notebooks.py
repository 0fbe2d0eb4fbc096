"""The four notebooks execute headless (lib.pipeline.run_study, papermill) in the smoke profile on tiny data,
write their results and figures, and the rendered report links only figures that exist.

The study run is the expensive part (all nine Part 1 models for one epoch, both BN networks at four learning
rates, the probes and slices on tiny data): it runs once per module and the tests below inspect it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from conftest import make_image_folder, write_finished

from lib.experiments import BN_LRS, BN_MODELS, bn_name
from lib.models import PART1_MODELS
from lib.paths import output_dirs
from lib.pipeline import (NOTEBOOK_DIR, NOTEBOOKS, StudyError, executed_dir, notebook_commands, run_study,
                          runs_beyond_notebooks, select_notebooks, study_command)

P1_FIGURES = ["p1_curves_CANet", "p1_acc_vs_params", "p1_acc_vs_flops", "p1_per_class", "p1_filters",
              "p1_ridge_se", "p1_ridge_sa", "p1_ridge_unit_transform", "p1_attention_sa", "p1_attention_se",
              "p1_confusion_CANet"]
P2_FIGURES = ["p2_accuracy_lr1e-3", "p2_loss_band", "p2_grad_range", "p2_santurkar", "p2_grad_diff_eta",
              "p2_loss_slice"]
# Keep CI cheap: 3 training images and 1 test image per class (27 train / 3 validation after the split),
# one epoch per Part 1 model, a two-image inference timing, probes on batches of 8 (the smoke probe's
# batch of 64 needs more images than this folder has).
SMOKE_PARAMS = {"num_epochs": 1, "cost_batch": 2, "cost_iters": 1,
                "probe_overrides": {"num_train": None, "batch_size": 8}}
LINK = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Run all four notebooks once on a tiny image folder into a temporary root; return (root, report path)."""
    source = make_image_folder(tmp_path_factory.mktemp("micro_cifar"), n_train=3, n_test=1)
    root = tmp_path_factory.mktemp("study")
    with pytest.MonkeyPatch.context() as mp:  # module scope: set the private data cache here too
        mp.setenv("CIFAR10_ROOT", str(tmp_path_factory.getbasetemp() / "data_root"))
        # One intra-op thread in the kernels: on a loaded 2-core runner two OpenMP threads per process
        # thrash (measured here: a CANet_tiny step 8x slower), and these tensors are too small to gain.
        mp.setenv("OMP_NUM_THREADS", "1")
        report = run_study("smoke", data_source=str(source), root=root, extra_params=SMOKE_PARAMS)
    return root, report


def test_notebooks_are_committed_thin_and_without_outputs():
    for name in NOTEBOOKS:
        nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in nb.cells[0].metadata.get("tags", []), f"{name}: the first cell must be `parameters`"
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has outputs"
        for c in code:  # no long function in a notebook: anything reusable lives in lib
            for fn in re.split(r"\n(?=def )", c.source)[1:]:
                assert len(fn.splitlines()) <= 10, f"{name}: a function longer than 10 lines"


def test_the_generator_writes_the_committed_notebooks(tmp_path):
    """scripts/make_notebooks.py is where notebooks are edited: regenerating must give the committed files."""
    import subprocess
    import sys

    from lib.paths import REPO

    subprocess.run([sys.executable, str(REPO / "scripts" / "make_notebooks.py"), str(tmp_path)], check=True,
                   capture_output=True)
    for name in NOTEBOOKS:
        made = (tmp_path / "notebooks" / f"{name}.ipynb").read_text()
        assert made == (NOTEBOOK_DIR / f"{name}.ipynb").read_text(), f"{name}: edit scripts/make_notebooks.py"


def test_select_notebooks_and_command():
    assert select_notebooks(None) == list(NOTEBOOKS)
    assert select_notebooks(["04", "01_train_canet.ipynb"]) == ["01_train_canet", "04_batchnorm"]
    with pytest.raises(ValueError, match="unknown notebook '07'"):
        select_notebooks(["07"])
    cmd = study_command("quick", "shared", True, ["1", "4"], [0, 1], {"num_epochs": 3})
    assert cmd == ("python -m lib study --profile quick --data shared --publish --notebooks 01 04 --seeds 0 1 "
                   "--num-epochs 3")
    assert study_command("quick", "shared", True, None, [0], reuse_only=True).endswith("--seeds 0 --reuse-only")
    assert study_command("quick", "shared", False, None, [0], {"precision": "bf16"}).endswith(
        "--seeds 0 --precision bf16")


def test_notebook_commands_group_one_call_and_rebuild_old_records():
    one_call = "python -m lib study --profile quick --notebooks 02 03 --seeds 0 1"
    study = {"notebooks": {
        # An older record without its command: rebuilt from its parameters, for that notebook alone.
        "01_train_canet": {"parameters": {"profile": "quick", "data_source": "shared", "publish": True, "force": False,
                                          "seeds": [0], "root": None, "model": "CANet_tiny", "num_images": 4}},
        "02_baselines": {"parameters": {}, "command": one_call, "other_parameters": {}},
        "03_visualize": {"parameters": {}, "command": one_call, "other_parameters": {}},
        "04_batchnorm": {"parameters": {}, "command": one_call, "other_parameters": {"probe_overrides": {"x": 1}}},
        "05_later": {"parameters": {}, "command": one_call, "other_parameters": {}},  # not adjacent: joins 02-03
    }}
    assert notebook_commands(study) == [
        {"command": "python -m lib study --profile quick --data shared --publish --notebooks 01 --seeds 0 "
                    "--model CANet_tiny", "notebooks": ["01_train_canet"], "other": {"num_images": 4}},
        {"command": one_call, "notebooks": ["02_baselines", "03_visualize", "05_later"], "other": {}},
        {"command": one_call, "notebooks": ["04_batchnorm"], "other": {"probe_overrides": {"x": 1}}},
    ]
    assert notebook_commands({}) == []


def test_runs_beyond_notebooks_lists_the_runs_no_notebook_call_trained():
    def run(model, seed):
        return {"model": model, "seed": seed, "profile": "quick", "config": {"data_source": "/abs/copy.tar.gz"}}

    p1 = [run(m, s) for m in ("CANet", "ResNet18", "CANet_tiny") for s in (0, 1, 2)] + [run("VGG11", 0)]
    study = {"notebooks": {"01_train_canet": {"parameters": {"seeds": [0], "model": "CANet_tiny",
                                                              "data_source": "shared"}},
                           "02_baselines": {"parameters": {"seeds": [0], "models": ["CANet", "ResNet18", "VGG11"]}}}}
    assert runs_beyond_notebooks(study, p1, publish=True) == [
        "python -m lib run --profile quick --data shared --publish --models CANet_tiny CANet ResNet18 --seeds 1 2"]
    study["notebooks"]["02_baselines"]["parameters"] = {"seeds": [0, 1, 2]}  # all nine models by default
    assert runs_beyond_notebooks(study, p1, publish=False) == []
    del study["notebooks"]["02_baselines"]  # notebook 01 alone: CANet_tiny seed 0 only
    assert runs_beyond_notebooks(study, p1, publish=False)[-1].endswith("--models VGG11 --seeds 0")
    del study["notebooks"]["01_train_canet"]["parameters"]["data_source"]  # else: as the run's config recorded it
    assert "--data /abs/copy.tar.gz" in runs_beyond_notebooks(study, p1, publish=False)[0]
    for r in p1:  # runs of another precision and number of epochs than the profile's: the command says so
        r["config"].update(precision="bf16", num_epochs=2, profile="quick")
    assert runs_beyond_notebooks(study, p1, publish=False)[-1].endswith(
        "--models VGG11 --seeds 0 --num-epochs 2 --precision bf16")


def test_every_notebook_finishes_and_writes_its_results(study):
    root, _ = study
    dirs = output_dirs("smoke", root=root)
    results = Path(dirs.results)
    for name in NOTEBOOKS:  # papermill raised on any failing cell; the executed copies exist
        assert (executed_dir("smoke", root) / f"{name}.ipynb").is_file()
    for model in PART1_MODELS:
        r = json.loads((results / f"p1-{model}-s0.json").read_text())
        assert r["status"] == "ok" and len(r["history"]) == 1 and 0.0 <= r["test_acc"] <= 1.0
        cost = json.loads((results / f"cost-{model}.json").read_text())
        assert cost["flops"] > 0 and cost["params"] == r["num_params"] and cost["infer_batch"] == 2
    assert json.loads((results / "part1-main.json").read_text())["model"] == "CANet"
    assert (results / "p1-CANet-s0.weights.json").is_file()
    for model in BN_MODELS:
        for lr in BN_LRS:
            assert (results / f"{bn_name(model, lr)}.json").is_file()
            assert (results / f"{bn_name(model, lr)}.steps.json").is_file()
        assert (results / f"probe-{model}-s2020.json").is_file()
    recorded = json.loads((results / "study.json").read_text())
    assert sorted(recorded["notebooks"]) == list(NOTEBOOKS)
    (one,) = notebook_commands(recorded)  # one call ran all four: one command, with what it could not express
    assert one["notebooks"] == list(NOTEBOOKS) and one["command"].startswith("python -m lib study --profile smoke")
    assert one["other"] == dict({k: v for k, v in SMOKE_PARAMS.items() if k != "num_epochs"}, root=str(root))


def test_every_figure_is_written(study):
    root, _ = study
    figs = Path(output_dirs("smoke", root=root).figs)
    missing = [f for f in P1_FIGURES + P2_FIGURES if not (figs / f"{f}.png").is_file()]
    assert not missing, f"figures not written: {missing}"
    # Notebook 03 also records the main run's attention spread for the report.
    assert (Path(output_dirs("smoke", root=root).results) / "attention-p1-CANet-s0.json").is_file()


def test_report_links_only_existing_figures(study):
    root, report = study
    assert report == Path(output_dirs("smoke", root=root).report)
    text = report.read_text()
    links = LINK.findall(text)
    assert links, "the report embeds no figure"
    for link in links:
        assert not Path(link).is_absolute() and (report.parent / link).is_file(), link
    linked = {Path(link).stem for link in links}
    assert set(P1_FIGURES + P2_FIGURES) <= linked
    assert "has not been produced yet" not in " ".join(line for line in text.splitlines()
                                                       if any(f in line for f in P1_FIGURES + P2_FIGURES))
    assert "This report is rendered from the `smoke` profile** (a run for trying the project" in text  # build/
    assert "Until the full profile's results are complete" not in text
    assert "How much each gate varies within one image" in text  # notebook 03's attention-spread record
    comparison = text.split("### Results: the comparison")[1].split("\n#")[0]  # the section, up to the next heading
    # 9 columns, 10 where a run trained on a GPU (peak GPU memory)
    rows = [line for line in comparison.splitlines() if line.startswith("| ") and line.count(" | ") in (8, 9)]
    assert len(rows) == 1 + len(PART1_MODELS) and not any("not run" in r for r in rows)


def test_a_notebook_with_reuse_only_refuses_to_train_a_configuration_without_result(study, tmp_path, capfd):
    """The notebooks' `reuse_only` parameter reaches the compute: notebook 01 asked for a configuration nobody ran
    (two epochs; the study ran one) stops in its training cell with the run's name, training nothing."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from lib.pipeline import KERNEL_NAME, kernel_for_this_python

    root, _ = study
    dirs = output_dirs("smoke", root=root)
    source = json.loads((dirs.results / "p1-CANet-s0.json").read_text())["config"]["data_source"]
    before = sorted(p.name for p in dirs.results.iterdir())
    params = {"profile": "smoke", "data_source": source, "root": str(root), "num_epochs": 2, "reuse_only": True}
    with kernel_for_this_python(tmp_path / "jupyter"), pytest.raises(PapermillExecutionError) as err:
        papermill.execute_notebook(str(NOTEBOOK_DIR / "01_train_canet.ipynb"), str(tmp_path / "01.ipynb"),
                                   parameters=params, kernel_name=KERNEL_NAME, cwd=str(NOTEBOOK_DIR),
                                   progress_bar=False)
    assert err.value.ename == "ValueError" and "reuse_only is on" in err.value.evalue
    assert "without encryption" not in capfd.readouterr().err  # the kernel's start-up warning, silenced
    assert "training p1-CANet-s0 would have to run" in err.value.evalue
    assert sorted(p.name for p in dirs.results.iterdir()) == before
    assert json.loads((dirs.results / "p1-CANet-s0.json").read_text())["config"]["num_epochs"] == 1
    # A whole reuse-only study call re-renders from the results and leaves the record of the calls that made them.
    record = (dirs.results / "study.json").read_text()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        run_study("smoke", data_source=source, root=root, notebooks=["01"], reuse_only=True,
                  extra_params={"num_epochs": 1})
    assert (dirs.results / "study.json").read_text() == record
    assert sorted(p.name for p in dirs.results.iterdir()) == before


def test_a_failing_cell_names_the_notebook_and_the_cell(tmp_path, tiny_source):
    # Notebook 03 on a folder whose CANet result has no weight histograms (a result cut short by hand): a cell
    # fails. (Without any result, the study says so before notebook 03 starts: the named-model test.)
    from lib.data import canonical_source
    from lib.experiments import part1_config
    from lib.results import atomic_write_json

    cfg = part1_config("CANet", "smoke", canonical_source(tiny_source))
    atomic_write_json(output_dirs("smoke", root=tmp_path).results / f"{cfg.name}.json",
                      {"name": cfg.name, "config": cfg.to_dict(), "model": "CANet", "seed": 0, "status": "ok"})
    with pytest.raises(StudyError) as err:
        run_study("smoke", data_source=tiny_source, notebooks=["03"], root=tmp_path)
    msg = str(err.value)
    assert "03_visualize.ipynb failed in cell" in msg and "FileNotFoundError" in msg, msg
    assert not (tmp_path / "build" / "smoke" / "report.md").exists()


def test_bad_data_stops_the_study_before_any_notebook_starts(tmp_path, monkeypatch):
    from lib.data import DataError

    source = make_image_folder(tmp_path / "copy", n_train=3, n_test=1)
    image = next((source / "train").rglob("*.png"))
    image.write_bytes(image.read_bytes()[:60])  # truncated
    monkeypatch.setenv("CIFAR10_ROOT", str(tmp_path / "data_root"))
    with pytest.raises(DataError, match=rf"{image.name} cannot be read"):
        run_study("smoke", data_source=str(source), notebooks=["01"], root=tmp_path / "out")
    assert not executed_dir("smoke", tmp_path / "out").exists()
    # Also where the folder holds the run trained on other data: the data is the first error, not the override.
    from lib.data import canonical_source
    from lib.experiments import part1_config
    from lib.results import atomic_write_json

    dirs = output_dirs("smoke", root=tmp_path / "out")
    cfg = part1_config("CANet", "smoke", "official")
    atomic_write_json(dirs.results / f"{cfg.name}.json", {"name": cfg.name, "config": cfg.to_dict(), "status": "ok"})
    assert canonical_source(str(source)) != "official"
    with pytest.raises(DataError, match=rf"{image.name} cannot be read"):
        run_study("smoke", data_source=str(source), notebooks=["01"], root=tmp_path / "out")


def test_the_full_profile_without_a_gpu_names_what_it_would_train_and_runs_nothing(tmp_path, tiny_source,
                                                                                   monkeypatch):
    import torch

    from lib.experiments import part1_config
    from lib.part1 import GPU_COST_BATCH, cost_path
    from lib.pipeline import work_missing
    from lib.results import atomic_write_json

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(StudyError) as err:
        run_study("full", data_source=tiny_source, notebooks=["01"], root=tmp_path)
    assert "on this machine's CPU (no CUDA device): p1-CANet-s0." in str(err.value)
    assert "--allow-cpu-training" in str(err.value) and not executed_dir("full", tmp_path).exists()

    dirs = output_dirs("full", root=tmp_path)
    cfg = part1_config("CANet", "full", tiny_source)
    atomic_write_json(dirs.results / f"{cfg.name}.json", {"name": cfg.name, "config": cfg.to_dict()})
    assert work_missing(tiny_source, dirs, ["01_train_canet", "03_visualize"]) == []  # trained: render only
    assert work_missing(tiny_source, dirs, ["03_visualize"], seeds=(0, 1)) == []  # 03 shows, never trains
    assert work_missing(tiny_source, dirs, ["01_train_canet"], force=True) == ["p1-CANet-s0"]
    assert work_missing(tiny_source, dirs, ["01_train_canet"], seeds=(0, 1)) == ["p1-CANet-s1"]
    # Another number of epochs is another config, which would replace the GPU's result of the same name.
    assert work_missing(tiny_source, dirs, ["01_train_canet"], extra_params={"num_epochs": 1}) == [
        "p1-CANet-s0"]
    assert work_missing(tiny_source, dirs, ["01_train_canet"], extra_params={"precision": "bf16"}) == ["p1-CANet-s0"]
    two = {"models": ["CANet", "VGG11"]}
    assert work_missing(tiny_source, dirs, ["02_baselines"], extra_params=two) == [
        "p1-VGG11-s0", "cost-CANet", "cost-VGG11"]  # cost files not measured on a GPU would be measured here
    for model, device in (("CANet", "NVIDIA H200"), ("VGG11", "CPU (x86_64, 2 threads)")):
        atomic_write_json(cost_path(dirs, model), {"model": model, "infer_batch": GPU_COST_BATCH, "device_name": device})
    assert work_missing(tiny_source, dirs, ["02_baselines"], extra_params=two) == ["p1-VGG11-s0", "cost-VGG11"]
    # --reuse-only: any profile, any device; any recorded cost file is shown (a CPU's too), a missing one is named.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(StudyError, match=r"--reuse-only: .* 1 experiment.*: p1-VGG11-s0\. Check the opt"):
        run_study("full", data_source=tiny_source, notebooks=["01", "02"], root=tmp_path, extra_params=two,
                  reuse_only=True)
    monkeypatch.setenv("CIFAR10_REUSE_ONLY", "1")  # exported: the same as --reuse-only
    with pytest.raises(StudyError, match=r"--reuse-only: .* 1 experiment.*: p1-VGG11-s0\. Check the opt"):
        run_study("full", data_source=tiny_source, notebooks=["01", "02"], root=tmp_path, extra_params=two)
    monkeypatch.delenv("CIFAR10_REUSE_ONLY")
    assert not executed_dir("full", tmp_path).exists()
    smoke = output_dirs("smoke", root=tmp_path)  # other profiles measure their cost files themselves (seconds)
    assert work_missing(tiny_source, smoke, ["02_baselines"], extra_params=two, profile="smoke") == [
        "p1-CANet-s0", "p1-VGG11-s0"]
    assert work_missing(tiny_source, smoke, ["02_baselines"], extra_params=two, profile="smoke", reuse_only=True) == [
        "p1-CANet-s0", "p1-VGG11-s0", "cost-CANet", "cost-VGG11"]
    part2 = work_missing(tiny_source, dirs, ["04_batchnorm"])
    assert len(part2) == len(BN_MODELS) * len(BN_LRS) + 1 + len(BN_MODELS)  # the BN protocol, slices, probe runs
    assert all(not n.startswith(("p1-", "cost-")) for n in part2) and "loss slices" in part2
    # The lr-1e-3 pair trained, its slices not taken: the slices are named, not the runs that are there.
    from lib.experiments import bn_experiments
    for cfg in bn_experiments("full", tiny_source):
        if cfg.lr == 1e-3:
            write_finished(dirs, cfg)  # its result and per-step series
    assert work_missing(tiny_source, dirs, ["04_batchnorm"]) == [n for n in part2 if "lr0.001" not in n]


def test_a_study_of_a_named_model_shows_its_first_seed_in_notebook_03(tmp_path, tiny_source, monkeypatch, capsys):
    import papermill

    import lib.report

    calls = {}
    monkeypatch.setattr(papermill, "execute_notebook",
                        lambda src, out, parameters, **kw: calls.__setitem__(Path(src).stem, parameters))
    monkeypatch.setattr(lib.report, "render_report", lambda profile, dirs: None)
    monkeypatch.setenv("CIFAR10_ROOT", str(tmp_path / "data_root"))
    run_study("smoke", data_source=tiny_source, notebooks=["01", "03"], seeds=[2, 1], root=tmp_path,
              extra_params={"model": "CANet_tiny"}, progress_bar=True)
    assert calls["01_train_canet"]["seeds"] == [2, 1] and calls["01_train_canet"]["model"] == "CANet_tiny"
    # Progress bars count cells: what the long cells will train is said first.
    assert ("[study] to compute: 2 experiment(s) or cost file(s): p1-CANet_tiny-s2, p1-CANet_tiny-s1; the rest is "
            "reused") in capsys.readouterr().out
    assert calls["03_visualize"]["seed"] == 2 and calls["03_visualize"]["model"] == "CANet_tiny"
    assert "seed" not in calls["01_train_canet"]
    calls.clear()
    # Notebook 03 alone needs the run it shows (no marker: CANet seed 0), on the study's data: said before it starts.
    with pytest.raises(StudyError, match="notebook 03 would stop: no result p1-CANet-s0.json"):
        run_study("smoke", data_source=tiny_source, notebooks=["02", "03"], seeds=[2], root=tmp_path)
    assert calls == {}
    from lib.data import canonical_source
    from lib.experiments import part1_config
    from lib.results import atomic_write_json

    dirs = output_dirs("smoke", root=tmp_path)
    for source in ("official", canonical_source(tiny_source)):
        cfg = part1_config("CANet", "smoke", source)
        atomic_write_json(dirs.results / f"{cfg.name}.json", {"name": cfg.name, "config": cfg.to_dict()})
        if source == "official":
            with pytest.raises(StudyError, match="notebook 03 would stop: p1-CANet-s0.json .* was trained on data "
                                                 "'official'"):
                run_study("smoke", data_source=tiny_source, notebooks=["03"], seeds=[2], root=tmp_path)
    run_study("smoke", data_source=tiny_source, notebooks=["03"], seeds=[2], root=tmp_path)  # no model: the marker's
    assert "seed" not in calls["03_visualize"]
    record = json.loads((output_dirs("smoke", root=tmp_path).results / "study.json").read_text())
    assert all(c["other"] == {"root": str(tmp_path)} for c in notebook_commands(record))  # seed is the study's own


def test_a_study_with_an_override_stops_before_replacing_a_finished_run(tmp_path, tiny_source):
    import shutil

    from lib.experiments import bn_experiments, part1_config
    from lib.results import atomic_write_json

    dirs = output_dirs("smoke", root=tmp_path)
    cfg = part1_config("CANet", "smoke", tiny_source)  # the smoke recipe's run, finished
    atomic_write_json(dirs.results / f"{cfg.name}.json", {"name": cfg.name, "status": "ok", "config": cfg.to_dict()})
    for extra, what in (({"num_epochs": 1}, "num_epochs (2 there, 1 here)"),
                        ({"precision": "bf16"}, "precision (auto there, bf16 here)")):
        with pytest.raises(StudyError, match=rf"would replace finished results .* p1-CANet-s0: {re.escape(what)}\. "
                                             r"To keep them, move those result files out of .* first; or pass "
                                             r"--force"):
            run_study("smoke", data_source=tiny_source, notebooks=["01"], root=tmp_path, extra_params=extra)
    # The same run on other data, and a BN protocol run on other data (notebook 04).
    bn = bn_experiments("smoke", tiny_source)[0]
    atomic_write_json(dirs.results / f"{bn.name}.json", {"name": bn.name, "status": "ok", "config": bn.to_dict()})
    other = str(tmp_path / "another-copy")
    shutil.copytree(tiny_source, other)
    for notebook, name in (("01", cfg.name), ("04", bn.name)):
        with pytest.raises(StudyError, match=rf"would replace finished results .* {name}: data_source "
                                             rf"\({re.escape(str(tiny_source))} there, {re.escape(other)} here\)"):
            run_study("smoke", data_source=other, notebooks=[notebook], root=tmp_path)
    assert not executed_dir("smoke", tmp_path).exists()
