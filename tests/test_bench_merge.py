"""Merging copies of a bench file (lib.bench_merge) and the GPU runner's use of it: `--merge` after a call, and a
call that merges the previous call's pack kept on the machine before it starts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from lib.bench_merge import main as merge_main
from lib.bench_merge import merge_bench, merge_bench_file
from lib.paths import REPO
from lib.results import atomic_write_json, read_json
from conftest import script_copy

DEV = "NVIDIA H200"


def rec(date: str, **fields) -> dict:
    return {"date": f"2026-11-{date}+00:00", **fields}


def bench(updated: str, **sections) -> dict:
    return {"device": DEV, "device_slug": "nvidia-h200", "updated": f"2026-11-{updated}+00:00", **sections}


def test_records_are_joined_and_the_later_measurement_of_a_key_wins_in_either_order():
    first = bench("27T10:00:00", entries={"CANet": rec("27T10:00:00", fast=2.8), "VGG_A": rec("27T09:00:00", fast=0.8)},
                  concurrency={"VGG_A/x3/mps": rec("27T09:30:00", slowdown=1.24)})
    second = bench("28T01:40:00", entries={"CANet": rec("28T01:36:26", fast=2.74)},
                   bookkeeping={"CANet_tiny": rec("28T01:39:00", ms=133.1)})
    for ours, theirs in ((first, second), (second, first)):
        merged, changes = merge_bench(ours, theirs)
        assert merged["entries"] == {"CANet": second["entries"]["CANet"], "VGG_A": first["entries"]["VGG_A"]}
        assert merged["concurrency"] == first["concurrency"] and merged["bookkeeping"] == second["bookkeeping"]
        assert merged["updated"] == second["updated"]  # top-level values from the later file
    _, changes = merge_bench(first, second)
    assert sorted(changes) == ["bookkeeping/CANet_tiny: added", "entries/CANet: replaced by the later measurement"]
    _, changes = merge_bench(second, first)  # the earlier CANet record does not replace the later one
    assert sorted(changes) == ["concurrency/VGG_A/x3/mps: added", "entries/VGG_A: added"]
    assert merge_bench(first, first) == (first, [])


def test_records_without_a_date_count_as_oldest_and_other_devices_are_refused():
    dated = bench("28T00:00:00", entries={"CANet": rec("28T00:00:00", fast=1.7)})
    undated = bench("27T00:00:00", entries={"CANet": {"fast": 9.9}})
    assert merge_bench(dated, undated)[0]["entries"]["CANet"]["fast"] == 1.7
    assert merge_bench(undated, dated)[0]["entries"]["CANet"]["fast"] == 1.7
    with pytest.raises(ValueError, match="different devices: 'NVIDIA H200' and 'NVIDIA H100"):
        merge_bench(dated, dict(dated, device="NVIDIA H100 80GB HBM3"))


def test_merge_bench_file_writes_only_what_changes_and_the_cli_says_what_is_wrong(tmp_path, capsys):
    dest, src = tmp_path / "dest" / "nvidia-h200.json", tmp_path / "src.json"
    atomic_write_json(src, bench("28T00:00:00", entries={"CANet": rec("28T00:00:00", fast=1.7)}))
    assert merge_bench_file(dest, src) == ["nvidia-h200.json: new file"] and read_json(dest) == read_json(src)
    before = dest.stat().st_mtime_ns
    assert merge_bench_file(dest, src) == [] and dest.stat().st_mtime_ns == before  # nothing to write
    assert merge_main([str(dest)]) == 2 and "usage" in capsys.readouterr().err
    assert merge_main([str(dest), str(tmp_path / "nope.json")]) == 1
    assert "no bench file at" in capsys.readouterr().err
    src.write_text("{not json")
    assert merge_main([str(dest), str(src)]) == 1 and f"{src} into {dest}" in capsys.readouterr().err
    assert read_json(dest)["entries"]["CANet"]["fast"] == 1.7  # left as it was


def test_bench_merge_needs_no_torch():
    """The runner's --merge runs with the system Python of a machine that may lack the repository's environment."""
    code = "import sys, lib.bench_merge; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60).returncode == 0


def pack(path: Path, files: dict[str, str | dict]) -> Path:
    """A results.tgz as the runner packs it (a results.tar, uncompressed, as it did before): {relative path: text or
    JSON}."""
    src = path.parent / f"{path.stem}-files"
    for name, content in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(content if isinstance(content, str) else json.dumps(content))
    with tarfile.open(path, "w:gz" if path.suffix == ".tgz" else "w") as tar:
        for name in files:
            tar.add(src / name, arcname=name)
    return path


def test_runner_merge_keeps_the_bench_records_of_both_calls(tmp_path):
    """Call 2 ran on a machine that started bare: its bench file lacks call 1's record. Merging call 1, then call
    2, keeps both records; result files and figures are replaced by the call's."""
    repo = script_copy(tmp_path)
    call1 = bench("28T01:42:00", entries={"CANet": rec("28T01:36:00", fast=1.71)})
    call2 = bench("28T01:50:00", entries={"VGG_A": rec("28T01:49:00", fast=0.8)})
    (tmp_path / "c1").mkdir()
    (tmp_path / "c2").mkdir()
    # Call 1 packed as the calls of 2026-11-27/28 did (uncompressed results.tar), call 2 as the runner does now.
    pack(tmp_path / "c1" / "results.tar", {"results/bench/nvidia-h200.json": call1, "figs/a.png": "one"})
    pack(tmp_path / "c2" / "results.tar", {"figs/a.png": "stale"})  # beside a results.tgz: not read
    pack(tmp_path / "c2" / "results.tgz", {"results/bench/nvidia-h200.json": call2, "figs/a.png": "two",
                                           "results/full/bn-VGG_A-lr0.001-s2020.json": {"status": "ok"}})
    env = dict(os.environ, PY=sys.executable, REFRESH="0")  # the copy has no README or report (a test below)
    for call in ("c1", "c2"):
        run = subprocess.run(["bash", "scripts/gpu_full_study.sh", "--merge", str(tmp_path / call)], cwd=repo,
                             env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
    assert "merged: results/full/bn-VGG_A-lr0.001-s2020.json" in run.stdout.splitlines()
    merged = read_json(repo / "results" / "bench" / "nvidia-h200.json")
    assert merged["entries"] == {**call1["entries"], **call2["entries"]}
    assert (repo / "figs" / "a.png").read_text() == "two"
    assert read_json(repo / "results" / "full" / "bn-VGG_A-lr0.001-s2020.json") == {"status": "ok"}
    # A bench file of another device and one that is not JSON: each refused and left out, the rest merged, the
    # checkpoints unpacked; the exit status says that something was left out.
    (tmp_path / "c3").mkdir()
    pack(tmp_path / "c3" / "results.tgz", {"results/bench/nvidia-h200.json": dict(call1, device="NVIDIA H100"),
                                           "results/full/p1-CANet-s0.json": {"status": "ok"}})
    ckpt = tmp_path / "c3" / "ckpt"
    (ckpt / "checkpoints" / "full").mkdir(parents=True)
    (ckpt / "checkpoints" / "full" / "p1-CANet-s0.pt").write_text("weights")
    with tarfile.open(tmp_path / "c3" / "checkpoints.tgz.part0", "w:gz") as tar:
        tar.add(ckpt / "checkpoints", arcname="checkpoints")
    run = subprocess.run(["bash", "scripts/gpu_full_study.sh", "--merge", str(tmp_path / "c3")], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "different devices" in run.stderr
    assert read_json(repo / "results" / "bench" / "nvidia-h200.json") == merged
    assert read_json(repo / "results" / "full" / "p1-CANet-s0.json") == {"status": "ok"}
    assert (repo / "checkpoints" / "full" / "p1-CANet-s0.pt").read_text() == "weights"
    (tmp_path / "c4").mkdir()
    pack(tmp_path / "c4" / "results.tgz", {"results/bench/nvidia-h200.json": "[]"})
    run = subprocess.run(["bash", "scripts/gpu_full_study.sh", "--merge", str(tmp_path / "c4")], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "not a bench file" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("state", ["fresh", "off", "old"])
def test_a_call_first_merges_the_previous_calls_pack_on_this_machine(tmp_path, state):
    """The checkout of a second call on a warm machine is the other machine's working tree, without the first
    call's results: the runner merges the first call's pack (kept in build/gpu-state/) before anything else,
    unless GPU_STATE=0 or the pack is older than 30 minutes (not this session's). PY fails every step but the
    merge, so the call stops at its first step, after the merge."""
    repo = script_copy(tmp_path)
    here = bench("27T20:00:00", entries={"VGG_A": rec("27T19:00:00", fast=0.8)})
    atomic_write_json(repo / "results" / "bench" / "nvidia-h200.json", here)
    last_call = bench("28T01:42:00", entries={"CANet": rec("28T01:36:00", fast=1.71)})
    kept = pack(repo / "build" / "gpu-state" / "results.tgz", {"results/bench/nvidia-h200.json": last_call,
                                                                "results/full/p1-CANet_tiny-s0.json": {"status": "ok"}})
    if state == "old":
        an_hour_ago = kept.stat().st_mtime - 3600
        os.utime(kept, (an_hour_ago, an_hour_ago))
    fake_py = tmp_path / "py.sh"
    fake_py.write_text(f'if [[ "$*" == "-m lib.bench_merge "* ]]; then exec {sys.executable} "$@"; fi\nexit 1\n')
    env = dict(os.environ, PY=f"bash {fake_py}", OUT=str(tmp_path / "out"), GPU_STATE="0" if state == "off" else "1")
    run = subprocess.run(["bash", "scripts/gpu_full_study.sh", "all"], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=60)
    log = run.stdout + run.stderr
    assert "the first step failed" in log, log  # where PY stopped it (the log's tee exits 0)
    entries = read_json(repo / "results" / "bench" / "nvidia-h200.json")["entries"]
    if state == "fresh":
        assert "merged the previous call's results on this machine (build/gpu-state/results.tgz, 2 files)" in log
        assert entries == {**here["entries"], **last_call["entries"]}
        assert read_json(repo / "results" / "full" / "p1-CANet_tiny-s0.json") == {"status": "ok"}
    else:
        assert "previous call" not in log and entries == here["entries"]
        assert not (repo / "results" / "full").exists()


def cache_tgz(path: Path, files: dict[str, bytes]) -> Path:
    """An inductor-cache.tgz as the runner packs it: {path inside the cache folder: content}, members './NAME'."""
    src = path.parent / f"{path.name}-files"
    for name, content in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(content)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src, arcname=".")
    return path


def cache_members(path: Path) -> set[str]:
    with tarfile.open(path) as tar:
        return {m.name.removeprefix("./") for m in tar.getmembers() if m.isfile()}


def merge_call(repo: Path, call: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/gpu_full_study.sh", "--merge", str(call)], cwd=repo,
                          env=dict(os.environ, **{"PY": sys.executable, "REFRESH": "0", **env}), capture_output=True,
                          text=True, timeout=60)


def test_merge_unites_the_calls_compile_cache_with_the_carried_one(tmp_path):
    """--merge keeps a call's inductor-cache.tgz at COMPILE_CACHE (default .carry/inductor-cache.tgz, which the next
    call carries), united with the cache there (a call on a fresh machine started from that, not from the previous
    call's), the call's files winning; the call's alone where the union is over COMPILE_CACHE_MAX_MIB; a damaged
    archive of the call's is refused and the carried one left; COMPILE_CACHE='' leaves everything."""
    repo = script_copy(tmp_path)
    carried = repo / ".carry" / "inductor-cache.tgz"
    (tmp_path / "c1").mkdir()
    pack(tmp_path / "c1" / "results.tgz", {"figs/a.png": "one"})
    cache_tgz(tmp_path / "c1" / "inductor-cache.tgz", {"fxgraph/ab/entry": b"graph", "fxgraph/cd/x": b"call 1"})
    run = merge_call(repo, tmp_path / "c1")
    assert run.returncode == 0, run.stderr
    assert "merged: .carry/inductor-cache.tgz (torch.compile's cache of the call, with the carried one;" in run.stdout
    assert cache_members(carried) == {"fxgraph/ab/entry", "fxgraph/cd/x"}
    (tmp_path / "c2").mkdir()  # a call on a fresh machine: call 1's cache unknown to it
    pack(tmp_path / "c2" / "results.tgz", {"figs/a.png": "c2"})
    cache_tgz(tmp_path / "c2" / "inductor-cache.tgz", {"fxgraph/ef/entry": b"graph 2", "fxgraph/cd/x": b"call 2"})
    assert merge_call(repo, tmp_path / "c2").returncode == 0
    assert cache_members(carried) == {"fxgraph/ab/entry", "fxgraph/cd/x", "fxgraph/ef/entry"}
    with tarfile.open(carried) as tar:
        assert tar.extractfile("./fxgraph/cd/x").read() == b"call 2"
    (tmp_path / "c3").mkdir()  # the union over the limit: the call's alone
    pack(tmp_path / "c3" / "results.tgz", {"figs/a.png": "c3"})
    cache_tgz(tmp_path / "c3" / "inductor-cache.tgz", {"fxgraph/gh/big": os.urandom(600 * 1024)})
    cache_tgz(carried, {"fxgraph/ab/old": os.urandom(600 * 1024)})
    run = merge_call(repo, tmp_path / "c3", COMPILE_CACHE_MAX_MIB="1")
    assert run.returncode == 0 and "alone: with the carried one it is over COMPILE_CACHE_MAX_MIB" in run.stdout
    assert cache_members(carried) == {"fxgraph/gh/big"}
    (tmp_path / "c4").mkdir()  # damaged in transit: refused, the carried cache kept
    pack(tmp_path / "c4" / "results.tgz", {"figs/a.png": "c4"})
    whole = (tmp_path / "c3" / "inductor-cache.tgz").read_bytes()
    (tmp_path / "c4" / "inductor-cache.tgz").write_bytes(whole[:len(whole) // 2])
    before = carried.read_bytes()
    run = merge_call(repo, tmp_path / "c4")
    assert run.returncode == 1 and "cannot read" in run.stderr and carried.read_bytes() == before
    carried.unlink()
    run = merge_call(repo, tmp_path / "c1", COMPILE_CACHE="")
    assert run.returncode == 0 and "inductor-cache" not in run.stdout and not carried.exists()


@pytest.mark.parametrize("case", ["read only", "compiled", "triton", "carried too large", "too large", "damaged"])
def test_a_call_unpacks_the_carried_compile_cache_and_brings_it_back_where_it_grew(tmp_path, case):
    """The carried cache is unpacked into TORCHINDUCTOR_CACHE_DIR before step 1 (a damaged one not at all: nothing
    cut short); at its end, a call whose steps wrote to the cache (a compile) brings the cache back without Triton's
    folder; only what it wrote where the whole is over COMPILE_CACHE_MAX_MIB; nothing where even that is (said in
    the log); a call that wrote nothing brings none back (the carried one stays). PY fails every step but the merge
    (the call stops at step 1); before failing it writes what a compile would."""
    repo = script_copy(tmp_path)
    old = {"fxgraph/ab/old": b"old graph"}
    if case == "carried too large":
        old["fxgraph/ab/oldbig"] = os.urandom(2 * 1024 * 1024)
    if case == "damaged":  # cut within its second member: the first one would unpack whole, the second cut short
        old["fxgraph/zz/pad"] = os.urandom(200 * 1024)
    carried = cache_tgz(repo / ".carry" / "inductor-cache.tgz", old)
    if case == "damaged":
        whole = carried.read_bytes()
        carried.write_bytes(whole[:3 * len(whole) // 4])
    big = os.urandom(2 * 1024 * 1024).hex()  # 4 MiB of incompressible text, over a 1 MiB limit
    write = {"read only": "", "damaged": "",
             "compiled": 'echo new > "$TORCHINDUCTOR_CACHE_DIR/fxgraph/cd/new"',
             "carried too large": 'echo new > "$TORCHINDUCTOR_CACHE_DIR/fxgraph/cd/new"',
             "triton": 'mkdir -p "$TORCHINDUCTOR_CACHE_DIR/triton/0"; '
                       'echo new > "$TORCHINDUCTOR_CACHE_DIR/fxgraph/cd/new"; '
                       f'echo {big} > "$TORCHINDUCTOR_CACHE_DIR/triton/0/kernel.cubin"',
             "too large": f'echo {big} > "$TORCHINDUCTOR_CACHE_DIR/fxgraph/cd/big"'}[case]
    fake_py = tmp_path / "py.sh"
    fake_py.write_text(f'if [[ "$*" == "-m lib.bench_merge "* ]]; then exec {sys.executable} "$@"; fi\n'
                       f'mkdir -p "$TORCHINDUCTOR_CACHE_DIR/fxgraph/cd"; {write}\nexit 1\n')
    out = tmp_path / "out"
    env = dict(os.environ, PY=f"bash {fake_py}", OUT=str(out), COMPILE_CACHE_MAX_MIB="1")
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    run = subprocess.run(["bash", "scripts/gpu_full_study.sh", "all"], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=60)
    log = run.stdout + run.stderr
    assert "the first step failed" in log, log
    cache = repo / "build" / "torchinductor"
    back = out / "inductor-cache.tgz"
    if case == "damaged":
        assert "could not unpack torch.compile's cache .carry/inductor-cache.tgz" in log
        assert not (cache / "fxgraph" / "ab").exists() and not (cache / "fxgraph" / "zz").exists()
        assert not back.exists()
        return
    assert f"torch.compile's cache of earlier calls unpacked (.carry/inductor-cache.tgz, {carried.stat().st_size} " \
           "bytes)" in log
    assert (cache / "fxgraph" / "ab" / "old").read_bytes() == b"old graph"
    if case == "read only":
        assert not back.exists()
    elif case == "too large":
        assert not back.exists() and "too large to come back" in log
    elif case == "carried too large":
        assert cache_members(back) == {"fxgraph/cd/new"} and "only what this call wrote" in log
    else:
        assert cache_members(back) == {"fxgraph/ab/old", "fxgraph/cd/new"}  # never Triton's folder
        assert "torch.compile's cache packed (" in log and "only what" not in log


def test_merge_renders_the_readme_speed_table_and_the_report_again(tmp_path):
    """After merging a call, --merge runs `python -m lib refresh`: README.md's speed table and report.md show the
    merged bench file (a newer, faster CANet_tiny epoch here); the README outside its table is left as it was."""
    import shutil

    from lib.bench import README_TABLE_BEGIN, README_TABLE_END, bench_table

    repo = tmp_path / "repo"
    for part in ("lib", "scripts", "results", "figs"):
        shutil.copytree(REPO / part, repo / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("README.md", "report.md"):
        shutil.copy2(REPO / name, repo / name)
    bench_path = repo / "results" / "bench" / "nvidia-h200.json"
    call = read_json(bench_path)
    tiny = dict(call["entries"]["CANet_tiny"], fast_seconds=0.61, date="2026-12-01T00:00:00+00:00")
    tiny["ratio"] = tiny["naive_seconds"] / tiny["fast_seconds"]
    call = dict(call, entries={"CANet_tiny": tiny}, updated="2026-12-01T00:00:00+00:00")
    (tmp_path / "c1").mkdir()
    pack(tmp_path / "c1" / "results.tgz", {"results/bench/nvidia-h200.json": call})
    env = dict(os.environ, PY=sys.executable, REFRESH_PY=sys.executable)
    run = subprocess.run(["bash", "scripts/gpu_full_study.sh", "--merge", str(tmp_path / "c1")], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "refresh: README.md: speed tables of 1 GPU bench file(s), changed" in run.stdout
    from lib.report import published_profile

    assert f"refresh: report.md: profile {published_profile(REPO / 'report.md')}, changed" in run.stdout
    table = bench_table(bench_path)
    assert "| CANet_tiny | part1 (256) | CUDA graph | 15.98 | 0.61 | 26.2x (met) | 25x |" in table
    readme, before = (repo / "README.md").read_text(), (REPO / "README.md").read_text()
    begin = README_TABLE_BEGIN.format(path="results/bench/nvidia-h200.json")
    assert table in readme and table in (repo / "report.md").read_text()
    assert readme.split(begin)[0] == before.split(begin)[0]
    assert readme.split(README_TABLE_END)[1] == before.split(README_TABLE_END)[1]


def test_merge_keeps_the_calls_log_under_the_next_free_name_of_the_day(tmp_path):
    """--merge copies the call's log.txt to results/bench/logs/<device>-<date>-callN.log: the device as nvidia-smi
    named it in the log (whatever bench files the pack holds: it packs the committed ones too), the date the call
    started, N the day's next free number (a 'callN-probe.log' takes N too); the same log merged twice is kept once;
    a log without either gets 'unknown-device' and today's date."""
    import datetime

    repo = script_copy(tmp_path)
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    logs = repo / "results" / "bench" / "logs"
    logs.mkdir(parents=True)
    (logs / "nvidia-h100-80gb-hbm3-2026-11-27-call1-probe.log").write_text("an earlier call\n")
    head = "[gpu_full_study +0s] subset: all; seeds 0; CANet blocks: auto; started 2026-11-27T23:58:01Z\n"
    smi = "NVIDIA H100 80GB HBM3, 81559 MiB, 550.54\n[lane 1] NVIDIA H200, 143771 MiB, 1\n"
    calls = []
    for i, text in enumerate((head + smi, head + smi + "more\n", "a dry run\n")):
        call = tmp_path / f"c{i}"
        call.mkdir()
        pack(call / "results.tgz", {"results/bench/nvidia-h200.json": bench("28T01:42:00", entries={})})
        (call / "log.txt").write_text(text)
        calls.append(call)
    run = merge_call(repo, calls[0])
    assert run.returncode == 0, run.stderr
    assert (logs / "nvidia-h100-80gb-hbm3-2026-11-27-call2.log").read_text() == head + smi
    assert ("log: results/bench/logs/nvidia-h100-80gb-hbm3-2026-11-27-call2.log (commit it with the results)"
            in run.stdout)
    run = merge_call(repo, calls[0])  # merged again: kept once
    assert run.returncode == 0 and "already holds this call's log" in run.stdout
    assert merge_call(repo, calls[1]).returncode == 0
    run = merge_call(repo, calls[2])
    assert run.returncode == 0 and f"unknown-device-{today}-call1.log (no GPU named in it: a dry run's, not to be " \
                                   f"committed)" in run.stdout
    assert sorted(p.name for p in logs.iterdir()) == sorted(
        ["nvidia-h100-80gb-hbm3-2026-11-27-call1-probe.log", "nvidia-h100-80gb-hbm3-2026-11-27-call2.log",
         "nvidia-h100-80gb-hbm3-2026-11-27-call3.log", f"unknown-device-{today}-call1.log"])
    (calls[2] / "log.txt").unlink()
    run = merge_call(repo, calls[2])
    assert run.returncode == 0 and "log: no log.txt in" in run.stdout


def test_merge_does_not_build_an_environment_to_render_the_readme_and_report(tmp_path):
    """Without REFRESH_PY and without the project's .venv, --merge merges, then says how to render README.md and
    report.md instead of creating a 6-GB environment in passing."""
    repo = script_copy(tmp_path)
    (tmp_path / "c1").mkdir()
    pack(tmp_path / "c1" / "results.tgz", {"results/full/p1-CANet-s0.json": {"status": "ok"}})
    run = merge_call(repo, tmp_path / "c1", REFRESH="1", VENV=str(tmp_path / "no-venv"))
    assert run.returncode == 1 and read_json(repo / "results" / "full" / "p1-CANet-s0.json") == {"status": "ok"}
    assert f"no {tmp_path / 'no-venv'}/bin/python (bash scripts/setup_env.sh makes it, or set REFRESH_PY" in run.stderr
    assert not (tmp_path / "no-venv").exists() and not (repo / ".venv").exists()
