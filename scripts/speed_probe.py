"""Time lib.bench.fast_epoch under settings the repository does not use, one JSON line per variant.

    python scripts/speed_probe.py OUT.jsonl MODEL [--limit0] [--num-train N] [--num-val N]

Each run of this script times MODEL's fast epoch (as the bench table does) with channels_last (what lib.train
uses) and then with the plain NCHW layout. --limit0 sets torch.backends.cudnn.benchmark_limit = 0 first, so
cuDNN times every algorithm instead of its first ten. cuDNN caches its choice per shape and layout within a
process, so a limit must be compared across processes: run the script once without and once with --limit0.
These are probes for docs/GPU.md ("If a speed-up target is missed"); nothing here changes how the study trains.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import lib.train as T  # noqa: E402
from lib.bench import fast_epoch  # noqa: E402


def nchw(enabled: bool):
    """Make lib.train build its model and loaders in the NCHW layout (enabled) or as it does (not)."""
    T.prepare_data, T.new_model = _ORIGINAL
    if not enabled:
        return
    prepare, new = _ORIGINAL

    def prepare_nchw(cfg, device):
        loaders, info = prepare(cfg, device)
        for loader in loaders:
            loader.channels_last = False
        return loaders, info

    T.prepare_data = prepare_nchw
    T.new_model = lambda cfg, device: new(cfg, device).to(memory_format=torch.contiguous_format)


_ORIGINAL = (T.prepare_data, T.new_model)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("model")
    p.add_argument("--limit0", action="store_true")
    p.add_argument("--data", default="shared")
    p.add_argument("--num-train", type=int)
    p.add_argument("--num-val", type=int)
    a = p.parse_args(argv)
    if a.limit0:
        torch.backends.cudnn.benchmark_limit = 0
    for layout in ("channels_last", "nchw"):
        nchw(layout == "nchw")
        t0 = time.perf_counter()
        r = fast_epoch(a.model, a.data, num_train=a.num_train, num_val=a.num_val)
        row = {"model": a.model, "layout": layout, "cudnn_benchmark_limit": torch.backends.cudnn.benchmark_limit,
               "seconds": r["seconds"], "images_per_s": r["images_per_s"], "cuda_graphs": r["cuda_graphs"],
               "compiled": r["compiled"], "val_acc": r["val_acc"], "wall_seconds": time.perf_counter() - t0,
               "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               "torch": torch.__version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    nchw(False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
