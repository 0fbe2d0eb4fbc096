"""Time lib.bench.fast_epoch under settings the repository does not train with, one JSON line per variant.

    python scripts/speed_probe.py OUT.jsonl MODEL [--variants channels_last nchw streams] [--limit0]

Each variant times MODEL's fast epoch as the bench table does (the CUDA-graphed step; the same process, one after
another):
- channels_last: what lib.train does;
- nchw: the model and the batches in the plain NCHW layout;
- streams: a CANet's merged blocks run path b and its channel attention on a second CUDA stream
  (lib.models.canet.set_side_stream); on CUDA the row also gives the largest difference of its outputs and
  gradients from one stream's, in fp32 on one batch (it should be 0 or rounding).
--limit0 sets torch.backends.cudnn.benchmark_limit = 0 first, so cuDNN times every algorithm instead of its first
ten. cuDNN keeps its choice per shape and layout for the process, so compare a limit across processes: run the
script once without and once with --limit0. These are probes for docs/GPU.md ("If a speed-up target is missed");
nothing here changes how the study trains.
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
from lib.experiments import recipe_config  # noqa: E402
from lib.models import set_side_stream  # noqa: E402

VARIANTS = ("channels_last", "nchw", "streams")
_ORIGINAL = (T.prepare_data, T.new_model)


def use_variant(variant: str) -> None:
    """Make lib.train build its model and loaders as `variant` says (channels_last: as it does)."""
    T.prepare_data, T.new_model = _ORIGINAL
    prepare, new = _ORIGINAL
    if variant == "nchw":
        def prepare_nchw(cfg, device):
            loaders, info = prepare(cfg, device)
            for loader in loaders:
                loader.channels_last = False
            return loaders, info

        T.prepare_data = prepare_nchw
        T.new_model = lambda cfg, device: new(cfg, device).to(memory_format=torch.contiguous_format)
    elif variant == "streams":
        T.new_model = lambda cfg, device: set_side_stream(new(cfg, device), _side_stream(device))


def _side_stream(device: torch.device):
    """A second CUDA stream on `device` (None on a CPU, where the blocks ignore it)."""
    return torch.cuda.Stream(device) if device.type == "cuda" else None


def streams_difference(model_name: str, data_source: str, device: torch.device) -> float:
    """Largest absolute difference between one forward and backward pass (fp32, training mode, one random batch)
    of `model_name` on one stream and on two (set_side_stream), over the outputs and all gradients."""
    cfg = recipe_config(model_name, data_source, str(device))
    x = torch.randn(64, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    results = []
    for stream in (None, _side_stream(device)):
        model = set_side_stream(_ORIGINAL[1](cfg, device), stream).train()
        out = model(x)
        out.square().sum().backward()
        results.append([out.detach()] + [p.grad for p in model.parameters() if p.grad is not None])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return max((a - b).abs().max().item() for a, b in zip(*results))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="JSON-lines file to append one row per variant to")
    p.add_argument("model")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=["channels_last", "nchw"])
    p.add_argument("--limit0", action="store_true", help="cudnn.benchmark_limit = 0 (cuDNN tries every algorithm)")
    p.add_argument("--data", default="shared")
    p.add_argument("--num-train", type=int)
    p.add_argument("--num-val", type=int)
    a = p.parse_args(argv)
    if a.limit0:
        torch.backends.cudnn.benchmark_limit = 0
    try:
        for variant in a.variants:
            use_variant(variant)
            t0 = time.perf_counter()
            r = fast_epoch(a.model, a.data, num_train=a.num_train, num_val=a.num_val)
            row = {"model": a.model, "variant": variant, "cudnn_benchmark_limit": torch.backends.cudnn.benchmark_limit,
                   "seconds": r["seconds"], "images_per_s": r["images_per_s"], "cuda_graphs": r["cuda_graphs"],
                   "compiled": r["compiled"], "fast_path_note": r["fast_path_note"], "val_acc": r["val_acc"],
                   "wall_seconds": time.perf_counter() - t0,
                   "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                   "torch": torch.__version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            if variant == "streams":
                row["max_abs_diff_vs_one_stream"] = streams_difference(a.model, a.data, T.resolve_device("auto"))
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    finally:
        use_variant("channels_last")
    return 0


if __name__ == "__main__":
    sys.exit(main())
