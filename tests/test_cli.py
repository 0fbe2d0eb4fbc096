"""`python -m lib`: bad input ends in one `error:` line and exit status 2 (no traceback), model names are checked
before the data, the help names the Part 1 models. In-process through lib.cli.main; nothing trains or downloads."""
from __future__ import annotations

import urllib.error

import pytest
import torch

from lib import cli
from lib.data import DataError
from lib.paths import REPO, output_dirs


@pytest.fixture(autouse=True)
def private_outputs(tmp_path, monkeypatch):
    """Outputs under tmp_path, data source 'official' unless an option says otherwise, tracebacks hidden."""
    monkeypatch.setattr(cli, "output_dirs", lambda profile, publish=None: output_dirs(profile, publish, root=tmp_path))
    monkeypatch.delenv("CIFAR10_SOURCE", raising=False)
    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)


def input_error(capsys, argv) -> str:
    """Run the CLI on bad input; return its stderr after checking the status and the absent traceback."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize("argv, suggestion", [
    (["run", "--models", "resnet18"], "(did you mean ResNet18?)"),
    (["study", "--models", "CANet", "mobilenetv2"], "(did you mean MobileNetV2?)"),
    (["study", "--model", "canet"], "(did you mean CANet?)"),
    (["bench", "--models", "vgg_a_bn"], "(did you mean VGG_A_BN?)"),
    (["bench", "--trace", "CANet_tine"], "(did you mean CANet_tiny?)"),
])
def test_unknown_model_is_named_before_the_data(capsys, tmp_path, argv, suggestion):
    err = input_error(capsys, argv + ["--data", str(tmp_path / "no-data-here")])
    assert suggestion in err and "no-data-here" not in err
    assert "choose from CANet_tiny, CANet_light, CANet" in err


def test_models_of_another_part_and_known_names(capsys, tmp_path, tiny_source):
    err = input_error(capsys, ["run", "--models", "VGG_A", "--data", str(tmp_path / "none")])
    assert "'VGG_A' is not a Part 1 model" in err and "VGG11" in err
    # known names pass the check; --only then finds no experiment of these options (the data is resolved, not read)
    err = input_error(capsys, ["run", "--models", "CANet_tiny", "ResNet18", "--only", "p1-VGG11-s0",
                               "--data", tiny_source])
    assert "--only names no experiment" in err and "p1-ResNet18-s0" in err


def test_bad_input_ends_in_one_error_line(capsys, tmp_path, monkeypatch):
    err = input_error(capsys, ["run", "--models", "CANet_huge"])
    assert "'CANet_huge' (did you mean CANet_light?) is not a Part 1 model" in err
    err = input_error(capsys, ["run", "--data", str(tmp_path / "x" / "nope"), "--models", "CANet_tiny"])
    assert "does not exist" in err
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not an archive")
    err = input_error(capsys, ["run", "--data", str(junk), "--models", "CANet_tiny", "--quiet"])
    assert "cannot read archive" in err and err.count("\n") <= 1  # one line (tarfile's reason lists each method)
    err = input_error(capsys, ["study", "--notebooks", "05"])
    assert "unknown notebook '05'" in err
    err = input_error(capsys, ["bench", "--table", "--out", str(tmp_path / "missing.json"), "--device", "cpu"])
    assert f"bench file {tmp_path / 'missing.json'} does not exist" in err
    # A bench file that is none: said before anything is read or measured, whatever reads it.
    for content, why in (("{bad", "not JSON: Expecting property name"), ("[]", "a JSON list, not an object"),
                         ('{"device": "x", "entries": 5}', "'entries' not a section of records"),
                         ("{}", "no 'device' name")):
        (bad := tmp_path / "bad.json").write_text(content)
        for action in (["--table"], ["--estimate"], ["--plan", "all"], ["--models", "CANet_tiny"]):
            err = input_error(capsys, ["bench", *action, "--out", str(bad), "--device", "cpu"])
            assert f"{bad} cannot be read as a bench file ({why}" in err and "--out" in err, (content, action)
    err = input_error(capsys, ["bench", "--table", "--out", str(tmp_path), "--device", "cpu"])
    assert f"{tmp_path} cannot be read as a bench file (IsADirectoryError: Is a directory)" in err
    if not torch.cuda.is_available():
        err = input_error(capsys, ["bench", "--table", "--device", "cuda"])
        assert "device 'cuda' was asked for but CUDA is not available on this machine: use 'auto' or 'cpu'" in err


def test_offline_official_names_the_data_root(capsys, tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    root = tmp_path / "elsewhere"
    monkeypatch.setenv("CIFAR10_ROOT", str(root))
    err = input_error(capsys, ["run", "--data", "official", "--models", "CANet_tiny", "--quiet"])
    assert "could not be downloaded" in err and f"downloads the official archive into {root})" in err
    assert "data/ folder" not in err and "checksums" not in err
    # torchvision downloads only when the copy there fails its checksums: a broken copy is named, not just the network
    (root / "cifar-10-python.tar.gz").write_bytes(b"half a download")
    err = input_error(capsys, ["run", "--data", "official", "--models", "CANet_tiny", "--quiet"])
    assert (f"could not be downloaded (no network?); {root / 'cifar-10-python.tar.gz'} in {root} failed torchvision's "
            f"checksums (incomplete or corrupt): delete it before copying a good download there") in err
    a_file = tmp_path / "root-file"
    a_file.write_text("")
    monkeypatch.setenv("CIFAR10_ROOT", str(a_file))
    err = input_error(capsys, ["run", "--data", "official", "--models", "CANet_tiny", "--quiet"])
    assert f"the data root {a_file} (where the official download and the decoded cache live" in err
    assert "is a file, not a folder: set CIFAR10_ROOT to a writable folder" in err


def test_missing_relative_source_names_each_path_once(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the current directory and the repository root are the same candidate
    monkeypatch.setenv("CIFAR10_ROOT", str(tmp_path / "root"))
    err = input_error(capsys, ["run", "--data", "shraed", "--models", "CANet_tiny"])
    assert f"(looked for {REPO / 'shraed'})" in err
    assert f"downloads the official archive into {tmp_path / 'root'})" in err


def test_traceback_for_bugs_and_on_request(capsys, tmp_path, monkeypatch):
    argv = ["run", "--data", str(tmp_path / "nope"), "--models", "CANet_tiny"]
    input_error(capsys, argv)
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    with pytest.raises(DataError, match="does not exist"):
        cli.main(argv)

    def bug(args):
        raise RuntimeError("a bug")

    monkeypatch.setenv(cli.TRACEBACK_ENV, "0")
    monkeypatch.setattr(cli, "cmd_report", bug)
    with pytest.raises(RuntimeError, match="a bug"):  # not an input error: its traceback stays
        cli.main(["report"])

    def outside(args):
        import numpy as np

        np.zeros(2).reshape(3)  # numpy's ValueError: raised outside lib/, so a bug, not bad input

    monkeypatch.setattr(cli, "cmd_report", outside)
    with pytest.raises(ValueError, match="reshape"):
        cli.main(["report"])


def test_help_names_the_part1_models(capsys):
    from lib.models import PART1_MODELS

    for command in ("run", "study"):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--help"])
        assert exit_info.value.code == 0
        out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
        assert f"default: all nine: {' '.join(PART1_MODELS)})" in out


def test_run_num_epochs_overrides_the_part1_epochs_only(capsys, tiny_source, monkeypatch):
    import lib.train
    from lib.config import PROFILES

    trained = []
    monkeypatch.setattr(lib.train, "train", lambda cfg, **kw: trained.append(cfg) or {"status": "ok", "test_acc": 0.5})
    assert cli.main(["run", "--profile", "smoke", "--data", tiny_source, "--models", "CANet_tiny", "--part2",
                     "--num-epochs", "1", "--quiet"]) == 0
    p1 = [c for c in trained if c.name.startswith("p1-")]
    bn = [c for c in trained if c.name.startswith("bn-")]
    assert [c.num_epochs for c in p1] == [1]
    assert len(bn) == 8 and {c.num_epochs for c in bn} == {PROFILES["smoke"].bn_epochs}  # the BN protocol's own
    for command in ("run", "study"):
        assert "--num-epochs must be positive, not 0" in input_error(
            capsys, [command, "--profile", "smoke", "--data", tiny_source, "--models", "CANet_tiny", "--num-epochs", "0"])


def test_run_precision_overrides_the_part1_runs_only(capsys, tiny_source, monkeypatch):
    import lib.train

    trained = []
    monkeypatch.setattr(lib.train, "train", lambda cfg, **kw: trained.append(cfg) or {"status": "ok", "test_acc": 0.5})
    assert cli.main(["run", "--profile", "smoke", "--data", tiny_source, "--models", "CANet_tiny", "--part2",
                     "--precision", "bf16", "--quiet"]) == 0
    assert [c.precision for c in trained if c.name.startswith("p1-")] == ["bf16"]
    assert {c.precision for c in trained if c.name.startswith("bn-")} == {"auto"}  # the BN protocol's own
    # Without Part 1 they would change nothing: refused before the data is read, the runs untouched.
    trained.clear()
    for option in (["--precision", "bf16"], ["--num-epochs", "3"]):
        err = input_error(capsys, ["run", "--profile", "smoke", "--data", "no-such-folder", "--part2"] + option)
        assert f"{option[0]} changes only the Part 1 runs" in err and "add --part1" in err
    err = input_error(capsys, ["run", "--profile", "smoke", "--data", "no-such-folder", "--probe",
                               "--precision", "bf16", "--num-epochs", "3"])
    assert "--precision and --num-epochs change only the Part 1 runs" in err
    assert trained == []
    for command in ("run", "study", "status"):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--profile", "smoke", "--precision", "fp16"])
        assert exit_info.value.code == 2
        assert "invalid choice: 'fp16'" in capsys.readouterr().err



def test_bad_seeds_and_counts_are_refused_before_anything_runs(capsys):
    seeds = "a seed is a whole number from 0 to 4294967295"  # what every generator the study seeds takes
    for argv, message in ((["run", "--seeds", "-1"], f"{seeds}, not '-1'"),
                          (["status", "--seeds", "x"], f"{seeds}, not 'x'"),
                          (["study", "--seeds", str(2**32)], f"{seeds}, not '4294967296'"),
                          (["run", "--max-epochs-this-call", "0"], "must be a whole number >= 1, not '0'"),
                          (["bench", "--models", "CANet", "--workers", "-1"], "--workers: must be a whole number >= 0"),
                          (["bench", "--models", "CANet", "--num-train", "0"], "--num-train: must be a whole number >= 1"),
                          (["bench", "--agreement", "CANet", "--epochs", "0"], "--epochs: must be a whole number >= 1"),
                          (["bench", "--table", "--device", "gpu"], "--device: must be 'auto', 'cpu', 'cuda' or 'cuda:N', "
                                                                    "not 'gpu'")):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_run_refuses_the_full_profiles_work_on_a_cpu_unless_allowed(capsys, tiny_source, monkeypatch, tmp_path):
    import torch

    import lib.train
    from lib.paths import output_dirs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cli, "output_dirs", lambda profile, publish=None: output_dirs(profile, root=tmp_path))
    trained = []
    monkeypatch.setattr(lib.train, "train", lambda cfg, **kw: trained.append(cfg) or {"status": "ok", "test_acc": 0.5})
    err = input_error(capsys, ["run", "--profile", "full", "--data", tiny_source, "--models", "CANet_tiny", "--probe"])
    assert "would compute 3 experiment(s) or file(s) on this machine's CPU (no CUDA device): p1-CANet_tiny-s0, " \
           "probe-VGG_A-s2020, probe-VGG_A_BN-s2020" in err and "--allow-cpu-training" in err
    assert "cost-CANet_tiny" in input_error(capsys, ["run", "--profile", "full", "--data", tiny_source, "--costs",
                                                     "--models", "CANet_tiny"])
    assert trained == []
    # A cost file compute_costs would keep (this CPU's, at its batch) is not work: nothing to refuse.
    from lib.part1 import CPU_COST_BATCH, cost_path
    from lib.results import atomic_write_json, environment_info

    atomic_write_json(cost_path(output_dirs("full", root=tmp_path), "CANet_tiny"), {
        "model": "CANet_tiny", "flops": 1e8, "params": 396_155, "infer_ips": 99.0, "infer_batch": CPU_COST_BATCH,
        "device_name": environment_info(torch.device("cpu"))["device"]})
    assert cli.main(["run", "--profile", "full", "--data", tiny_source, "--costs", "--models", "CANet_tiny"]) == 0
    out = capsys.readouterr().out
    assert "cost CANet_tiny: 100.0 MFLOP/image, 99 images/s at batch 64" in out
    assert "\n1 cost file(s) in " in out and "training run" not in out  # not "0 experiment(s)"
    assert cli.main(["run", "--profile", "full", "--data", tiny_source, "--models", "CANet_tiny", "--quiet",
                     "--allow-cpu-training"]) == 0
    assert [c.name for c in trained] == ["p1-CANet_tiny-s0"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # with a GPU: no question asked
    assert cli.main(["run", "--profile", "full", "--data", tiny_source, "--models", "CANet_tiny", "--quiet"]) == 0


def test_argparse_errors_are_one_line_naming_the_help(capsys):
    for argv, where, what in ((["run", "--profile", "bogus"], "python -m lib run --help", "invalid choice: 'bogus'"),
                              (["bogus"], "python -m lib --help", "invalid choice: 'bogus'"),
                              (["status", "--bogus", "x"], "python -m lib status --help",
                               "unrecognized arguments: --bogus x")):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and "usage:" not in err
        assert err.startswith("error: ") and what in err and f"`{where}` lists the options" in err


def test_main_sh_names_itself_in_the_study_commands_errors_and_help(capsys, monkeypatch):
    with pytest.raises(SystemExit):
        cli.main(["study", "--bogus"])
    assert "`python -m lib study --help` lists the options" in capsys.readouterr().err
    monkeypatch.setenv(cli.STUDY_PROG_ENV, "bash scripts/main.sh")  # as scripts/main.sh runs it
    with pytest.raises(SystemExit):
        cli.main(["study", "--bogus"])
    assert "error: unrecognized arguments: --bogus (`bash scripts/main.sh --help` lists the options)" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["study", "--help"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("usage: bash scripts/main.sh [-h]")
    assert 'CIFAR10_STUDY_PROG="bash scripts/main.sh" exec' in (REPO / "scripts" / "main.sh").read_text()


def test_study_says_what_its_progress_bars_count_unless_verbose(capsys, monkeypatch, tmp_path):
    import lib.pipeline

    monkeypatch.setattr(lib.pipeline, "run_study", lambda *a, **kw: tmp_path / "report.md")
    assert cli.main(["study", "--profile", "smoke", "--notebooks", "04"]) == 0
    out = capsys.readouterr().out
    assert "[study] one progress bar per notebook, counting its cells" in out and "--verbose streams" in out
    assert cli.main(["study", "--profile", "smoke", "--notebooks", "04", "--verbose"]) == 0
    assert "progress bar" not in capsys.readouterr().out


@pytest.mark.parametrize("name, value, says", [
    ("CIFAR10_CUDA_GRAPHS", "off", "use 0 (CUDA training steps without CUDA graphs) or 1"),
    ("CIFAR10_COMPILE", "yes", "'yes' is no model: name models separated by spaces or commas (or all)"),
    ("CIFAR10_STEP_GRAPH", "CANet_tiny,CANet_tiyn", "'CANet_tiyn' is no model"),
    ("CIFAR10_EAGER_MODELS", "all", "'all' is no model: name models separated by spaces or commas, e.g."),
    ("CIFAR10_COMPILE_MODE", "turbo", "torch.compile's modes are default, reduce-overhead, max-autotune"),
    ("CIFAR10_REUSE_ONLY", "maybe", "use 1 (only read finished results; also true, yes, on) or 0"),
    ("CIFAR10_CANET_MERGED", "maybe", "use 1 (merged blocks), 0 (as specified, per path) or auto")])
def test_a_nonsense_execution_setting_is_refused_before_anything_runs(capsys, monkeypatch, tmp_path, name, value,
                                                                     says):
    """A typo in the variables that choose how runs execute (or whether they may run at all) must not quietly
    change what runs, e.g. CIFAR10_CUDA_GRAPHS=off leaving the graphs on or CIFAR10_REUSE_ONLY=maybe training."""
    from lib.results import reuse_only
    from lib.train import check_execution_env, compiled_by_env, graphs_enabled_for

    monkeypatch.setenv(name, value)
    assert cli.main(["status", "--profile", "smoke", "--data", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {name}={value!r}: ") and says in err and err.count("\n") == 1
    with pytest.raises(ValueError, match=name):
        check_execution_env()
    if name in ("CIFAR10_CUDA_GRAPHS", "CIFAR10_EAGER_MODELS"):  # also where the library reads it
        with pytest.raises(ValueError, match=name):
            graphs_enabled_for("CANet")
    elif name == "CIFAR10_COMPILE":
        with pytest.raises(ValueError, match=name):
            compiled_by_env("CANet")
    elif name == "CIFAR10_REUSE_ONLY":
        with pytest.raises(ValueError, match=name):
            reuse_only()


@pytest.mark.parametrize("name, value", [("CIFAR10_CUDA_GRAPHS", "0"), ("CIFAR10_CUDA_GRAPHS", ""),
                                         ("CIFAR10_COMPILE", "CANet, CANet_tiny"), ("CIFAR10_STEP_GRAPH", "all"),
                                         ("CIFAR10_COMPILE_MODE", "max-autotune"), ("CIFAR10_REUSE_ONLY", "Off"),
                                         ("CIFAR10_REUSE_ONLY", "yes"), ("CIFAR10_EAGER_MODELS", "VGG11 ResNet18")])
def test_meaningful_execution_settings_pass_the_check(monkeypatch, name, value):
    from lib.train import check_execution_env

    monkeypatch.setenv(name, value)
    check_execution_env()


def test_a_model_or_seed_named_twice_is_one_run(monkeypatch):
    seen = {}
    monkeypatch.setattr(cli, "cmd_run", lambda args: seen.update(vars(args)) or 0)
    assert cli.main(["run", "--profile", "smoke", "--models", "CANet_tiny", "ResNet18", "CANet_tiny",
                     "--seeds", "1", "0", "1"]) == 0
    assert seen["models"] == ["CANet_tiny", "ResNet18"] and seen["seeds"] == [1, 0]


def test_a_mistyped_model_is_reported_before_torch_is_imported():
    """Importing torch takes seconds: `run`/`study` check the names first (without CIFAR10_* variables, whose
    check needs torch)."""
    import os
    import subprocess
    import sys

    code = ("import sys; from lib import cli; rcs = [cli.main(['run', '--models', 'CANet_tnyi']), "
            "cli.main(['study', '--model', 'ResNet18'])]; print(rcs, 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIFAR10_")}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[2, 2] False", done.stderr
    assert "--models: 'CANet_tnyi' (did you mean CANet_tiny?) is not a Part 1 model" in done.stderr
    assert "--model: 'ResNet18' is not a CANet variant; choose from CANet_tiny, CANet_light, CANet, CANet_pro" in \
        done.stderr


def test_an_interrupt_ends_in_one_message_that_says_the_command_goes_on(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_run", interrupted)
    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
    assert cli.main(["run", "--models", "CANet_tiny"]) == 130
    err = capsys.readouterr().err
    assert "interrupted: finished experiments are kept; the same command goes on from there" in err
    assert "Traceback" not in err
    assert cli.main(["run", "--models", "CANet_tiny", "--force"]) == 130  # --force would start the run over
    assert ("the same command starts the interrupted run over; without --force an interrupted training run goes on "
            "from the last epoch it saved" in capsys.readouterr().err)
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")  # the GPU runner's logs keep the traceback
    with pytest.raises(KeyboardInterrupt):
        cli.main(["run", "--models", "CANet_tiny"])
