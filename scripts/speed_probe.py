"""Time lib.bench.fast_epoch under settings the repository does not train with, one JSON line per variant.

    python scripts/speed_probe.py OUT.jsonl MODEL [--variants channels_last nchw streams step_graph
                                                  step_graph_compiled] [--limit0]

Each variant times MODEL's fast epoch as the bench table does (the CUDA-graphed step; the same process, one after
another):
- channels_last: what lib.train does;
- nchw: the model and the batches in the plain NCHW layout;
- streams: a CANet's merged blocks run path b and its channel attention on a second CUDA stream
  (lib.models.canet.set_side_stream); the row also gives the largest difference of the two-stream model's outputs
  and gradients from one stream's, on one full batch in fp32 (TF32 off, deterministic cuDNN), where the two-stream
  model runs as the timed epoch does: through its captured CUDA graphs on CUDA (0 or rounding if it is right).
- step_graph: the whole training step (forward, loss, backward, optimiser step, metrics) as one CUDA graph
  (lib.step_graph.StepGraph, CIFAR10_STEP_GRAPH); step_graph_compiled: the same around the torch.compile'd model
  (mode 'default'); the row's `step_graph` says whether the timed epoch ran so (False: see `fast_path_note`). Each
  row also gives the largest differences of weights and per-step losses after two epochs of three full batches
  and a partial one (the learning rate changing between them) from eager steps, in fp32 (TF32 off, deterministic
  cuDNN): 0 where the captured step is right (compiled: the rounding of fused kernels, which Adam's normalised
  steps can make as large as the learning rate for weights whose gradients are near 0).
--limit0 sets torch.backends.cudnn.benchmark_limit = 0 first, so cuDNN times every algorithm instead of its first
ten. cuDNN keeps its choice per shape and layout for the process, so compare a limit across processes: run the
script once without and once with --limit0. These are probes for docs/GPU.md ("If a speed-up target is missed");
nothing here changes how the study trains. (The rows of its first version, in
results/bench/probes/nvidia-h200-2026-11-28-layout.jsonl, name the variant `layout`.)
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
from lib.bench import _timed_variant, fast_epoch  # noqa: E402
from lib.experiments import recipe_config  # noqa: E402
from lib.models import last_linear, set_side_stream  # noqa: E402
from lib.step_graph import StepGraph  # noqa: E402

VARIANTS = ("channels_last", "nchw", "streams", "step_graph", "step_graph_compiled")
STEP_GRAPH_VARIANTS = {"step_graph": False, "step_graph_compiled": True}  # variant -> torch.compile'd inside


def use_variant(variant: str, original: tuple) -> None:
    """Make lib.train build its model and loaders as `variant` says, wrapping `original`, lib.train's
    (prepare_data, new_model) as they were before the probe (channels_last: puts them back)."""
    prepare, new = original
    T.prepare_data, T.new_model = original
    if variant == "nchw":
        def prepare_nchw(cfg, device, data=None):
            loaders, info = prepare(cfg, device, data)
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


def streams_difference(model_name: str, data_source: str, device: torch.device, new_model) -> float:
    """Largest absolute difference between one training forward and backward pass of `model_name` (built by
    `new_model`, as lib.train.new_model) on one stream, eagerly, and on two streams (set_side_stream) through
    lib.train's CUDA-graphed step (eagerly on a CPU), on one random full batch: fp32 with TF32 off and
    deterministic cuDNN, over the outputs and every gradient."""
    cfg = recipe_config(model_name, data_source, str(device)).replace(precision="fp32")
    with T.backend_flags(deterministic=True, benchmark=False, cudnn_tf32=False, matmul_tf32=False):
        x = torch.randn(cfg.batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
        one = new_model(cfg, device).train()
        two = set_side_stream(new_model(cfg, device), _side_stream(device)).train()
        runners = [one, T.GraphedForward(two, x, cfg) if device.type == "cuda" else two]
        results = []
        for runner, model in zip(runners, (one, two)):
            out = runner(x)
            out.float().square().mean().backward()
            results.append([out.detach().float()] + [p.grad for p in model.parameters() if p.grad is not None])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return max((a - b).abs().max().item() for a, b in zip(*results))


def step_graph_difference(model_name: str, data_source: str, device: torch.device, compiled: bool,
                          batch_size: int | None = None) -> dict:
    """Largest absolute differences between `model_name` trained by eager steps and by lib.train's whole-step
    graph (CIFAR10_STEP_GRAPH, torch.compile'd inside where `compiled`) from the same weights on the same batches:
    two epochs of three full batches and a partial one, the learning rate of the recipe's first two epochs, fp32
    with TF32 off and deterministic cuDNN. Over the floating-point weights and buffers, and the per-step losses;
    `compared_step_graph` says whether the second run did go through the whole-step graph (False: it fell back,
    see `compared_note`). On a CPU the same step runs uncaptured (StepGraph(capture=False)). batch_size: the
    recipe's unless given."""
    base = recipe_config(model_name, data_source, str(device)).replace(precision="fp32", compile=compiled)
    base = base.replace(batch_size=batch_size or base.batch_size)
    cfg = base.replace(num_train=3 * base.batch_size + 8, num_val=base.batch_size)
    with T.backend_flags(deterministic=True, benchmark=False, cudnn_tf32=False, matmul_tf32=False), \
            _timed_variant(model_name, step_graph=True):  # compiled as `compiled` says (cfg.compile)
        (train_loader, _, _), _ = T.prepare_data(cfg, device)
        eager, graphed = T.new_model(cfg, device), T.new_model(cfg, device)
        graphed.load_state_dict(eager.state_dict())
        losses, info = [], {}
        for model, route in ((eager, False), (graphed, True)):
            optimizer = T.make_optimizer(T.optimizer_at(cfg, 0), model.parameters(), cfg, T.lr_at(cfg, 0), device)
            step_model = model
            if route and device.type == "cuda":
                step_model, info = T.step_model_for(model, cfg, device, train_loader)
            elif route:
                step_model = StepGraph(model, last_linear(model), (cfg.batch_size, *train_loader.X.shape[1:]),
                                       label_smoothing=cfg.label_smoothing, record_steps=cfg.record_steps,
                                       autocast=lambda: T.autocast_for(cfg, device), capture=False)
            torch.manual_seed(0)  # dropout's masks: the same draws for both (the warm-up's are undone)
            per_epoch = []
            for epoch in range(2):
                for group in optimizer.param_groups:
                    group["lr"] = T.lr_at(cfg, epoch)
                stats = T._train_epoch(step_model, last_linear(model), optimizer, train_loader, cfg, device, epoch,
                                       False)
                per_epoch.append(stats["step_loss"].cpu())
            losses.append(torch.cat(per_epoch))
    pairs = [(a, b) for a, b in zip(eager.state_dict().values(), graphed.state_dict().values())
             if a.is_floating_point()]
    return {"max_abs_diff_weights": max((a - b).abs().max().item() for a, b in pairs),
            "max_abs_diff_step_loss": (losses[0] - losses[1]).abs().max().item(),
            "compared_step_graph": isinstance(step_model, StepGraph) and not step_model.failed,
            "compared_note": info.get("note", "")}


def emit(row: dict, out: str) -> None:
    """Append a row to the JSON-lines file and print it."""
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


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
    if not torch.cuda.is_available() and (a.num_train is None or a.num_val is None):
        p.error("this probe times GPU epochs (45,000 training images): on a machine without CUDA give --num-train and "
                "--num-val (e.g. --num-train 16 --num-val 8, with a small --data copy) for a dry run, whose times "
                "mean nothing")
    if a.limit0:
        torch.backends.cudnn.benchmark_limit = 0
    original = (T.prepare_data, T.new_model)
    try:
        for variant in a.variants:
            use_variant(variant, original)
            t0 = time.perf_counter()
            try:
                r = fast_epoch(a.model, a.data, num_train=a.num_train, num_val=a.num_val,
                               compile=STEP_GRAPH_VARIANTS.get(variant, False),
                               step_graph=variant in STEP_GRAPH_VARIANTS)
            except RuntimeError as err:
                if variant not in STEP_GRAPH_VARIANTS:
                    raise
                # a failed whole-step capture (lib.step_graph.CaptureFailed) leaves CUDA mid-capture: an answer,
                # recorded, and the last variant this process can time
                row = {"model": a.model, "variant": variant, "seconds": None, "step_graph": False,
                       "capture_error": str(err), "wall_seconds": time.perf_counter() - t0,
                       "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                       "torch": torch.__version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
                emit(row, a.out)
                print(f"speed_probe: {variant} stopped the probe (variants after it not timed): {err}", flush=True)
                return 1
            row = {"model": a.model, "variant": variant, "cudnn_benchmark_limit": torch.backends.cudnn.benchmark_limit,
                   "seconds": r["seconds"], "images_per_s": r["images_per_s"], "cuda_graphs": r["cuda_graphs"],
                   "compiled": r["compiled"], "step_graph": r["step_graph"], "fast_path_note": r["fast_path_note"],
                   "val_acc": r["val_acc"],
                   "wall_seconds": time.perf_counter() - t0,
                   "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                   "torch": torch.__version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            if variant == "streams":
                try:  # a capture that fails with two streams is an answer too
                    row["max_abs_diff_vs_one_stream"] = streams_difference(a.model, a.data,
                                                                           T.resolve_device("auto"), original[1])
                except Exception as err:
                    row.update(max_abs_diff_vs_one_stream=None, difference_error=f"{type(err).__name__}: {err}")
            if variant in STEP_GRAPH_VARIANTS:
                try:  # a capture that fails is an answer too
                    row.update(step_graph_difference(a.model, a.data, T.resolve_device("auto"),
                                                     STEP_GRAPH_VARIANTS[variant]))
                except Exception as err:
                    row.update(max_abs_diff_weights=None, difference_error=f"{type(err).__name__}: {err}")
            emit(row, a.out)
    finally:
        use_variant("channels_last", original)
    return 0


if __name__ == "__main__":
    sys.exit(main())
