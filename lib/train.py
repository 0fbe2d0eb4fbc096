"""Training: one importable function that trains a model from a frozen TrainConfig and writes its result.

Data stays on the training device as uint8 and is augmented a whole batch at a time (lib.loader); per-step
metrics are accumulated on the device and read back once per epoch, so the GPU never waits for the host.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import pickle
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from lib.config import NORMS, TrainConfig
from lib.data import load_cifar10, study_split, subset, to_device_tensors
from lib.lanes import shared_gpu
from lib.augment import mixed_accuracy, mixed_loss
from lib.loader import BatchLoader
from lib.models import build, last_linear
from lib.paths import OutputDirs, output_dirs
from lib.results import (atomic_write, atomic_write_json, device_name, environment_info, git_commit, read_json,
                         refuse_if_reuse_only, rerun_marker, rerun_pending, reusable_result, reusable_run,
                         reuse_only, say_reused)
from lib.step_graph import STEP_GRAPH_ENV, StepGraph

# Parameters whose per-epoch distributions the visualisation notebook draws (CANet attention modules). SE's mixing
# scales (three per block, initialised to 1) are recorded apart, as their values (SE_SCALES): pooled with the
# kernels they made a second mode at 1 (results written before 2026-11-28's twenty-third session have one 'se'
# group, kernels and scales pooled; lib.report and lib.part1_plots read both).
WEIGHT_GROUPS = {"se_kernels": ".se.convs.", "sa": ".sa.", "unit_transform": ".unit_transform."}
SE_SCALES = ".se.scales"
HIST_BINS = 40
# GPU fast path (CUDA only; CPU runs take none of its branches), see docs/GPU.md.
CUDA_GRAPHS_ENV = "CIFAR10_CUDA_GRAPHS"  # "0" runs CUDA training steps eagerly (no CUDA graphs)
EAGER_MODELS_ENV = "CIFAR10_EAGER_MODELS"  # models whose CUDA training steps run eagerly (their graph check failed)
# Models whose CUDA training steps run torch.compile'd instead of CUDA-graphed: names separated by spaces or
# commas, or "all" (the GPU runner sets it from the benchmark, see docs/GPU.md). Like the CUDA graphs, an
# execution choice, not part of the experiment: the result records it in `fast_path`, its config does not.
COMPILE_ENV = "CIFAR10_COMPILE"
COMPILE_MODE_ENV = "CIFAR10_COMPILE_MODE"  # torch.compile's mode (default "reduce-overhead"; or "default", ...)
GRAPHED_COMPILE_MODES = ("reduce-overhead", "max-autotune")  # torch.compile modes that replay CUDA graphs
LAST_CKPT_EVERY_S = 120.0  # CUDA: the resumable checkpoint is written at most this often (see _gpu_fast_path)
# train(stop_by=...): the next epoch is started only if STOP_MARGIN x the last epoch's time (bookkeeping
# included) + STOP_RESERVE_S (the checkpoint written on stopping, the test pass after the last epoch) end in time.
STOP_MARGIN = 1.25
STOP_RESERVE_S = 10.0


# ---------------------------------------------------------------------------------------------------------
# Pure schedule functions (tested epoch by epoch against the recipe)

def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate of `epoch`: ExponentialLR(gamma) stepped once per epoch, continuing across the switch."""
    return cfg.lr * cfg.lr_gamma ** epoch


def optimizer_at(cfg: TrainConfig, epoch: int) -> str:
    """Which optimiser runs `epoch`: 'adamw' then 'sgd' from int(0.8 * num_epochs) in the Part 1 recipe."""
    if cfg.optimizer == "adamw_sgd":
        return "adamw" if epoch < cfg.switch_epoch else "sgd"
    return cfg.optimizer


def make_optimizer(kind: str, params, cfg: TrainConfig, lr: float, device: torch.device):
    """A fresh optimiser of `kind` ('adamw' | 'sgd' | 'adam'); fused kernels on CUDA."""
    fused = {"fused": True} if device.type == "cuda" else {}
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, **fused)
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay, **fused)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **fused)
    raise ValueError(f"unknown optimizer kind {kind!r}")


# ---------------------------------------------------------------------------------------------------------
# Helpers

def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else as given. ValueError (bad input, said clearly) for a
    name torch does not know and for a CUDA device on a machine without CUDA."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a device name: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available on this machine: use 'auto' "
                         f"or 'cpu'")
    return dev


def sync(device: torch.device) -> None:
    """Wait for the device, so that a host clock read after it covers the queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def backend_flags(deterministic: bool, benchmark: bool, cudnn_tf32: bool, matmul_tf32: bool):
    """Set the cuDNN / TF32 switches for the block and restore them after (lib.bench times the naive and the fast
    pipeline in one process)."""
    old = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
           torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = deterministic, benchmark
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn_tf32, matmul_tf32
    try:
        yield
    finally:
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
         torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) = old


def autocast_for(cfg: TrainConfig, device: torch.device, cache_enabled: bool = True):
    """bf16 autocast on CUDA (precision auto/bf16), nothing (fp32) otherwise."""
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if use_bf16:
        extra = {} if cache_enabled else {"cache_enabled": False}  # CUDA-graph capture needs the cache off
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, **extra)
    return contextlib.nullcontext()


CPUINFO = Path("/proc/cpuinfo")
_hinted = set()  # hints already printed by this process
_noted_copies = set()  # data sources this process has said are smaller copies


@functools.lru_cache(maxsize=None)  # a property of the machine: read once per file
def cpu_has_amx_bf16(cpuinfo: Path | str = CPUINFO) -> bool:
    """Whether this CPU has AMX with bf16 tiles (Linux's cpuinfo flag amx_bf16): its bf16 matrix units make bf16
    autocast training several times faster than fp32. False where cpuinfo cannot be read (other systems)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    return any(line.startswith("flags") and "amx_bf16" in line.split() for line in text.splitlines())


def precision_hint(cfg: TrainConfig, device: torch.device, cpuinfo: Path | str = CPUINFO) -> str | None:
    """A one-line hint for a Part 1 run that trains in fp32 on a CPU with AMX-bf16, where --precision bf16
    (notebook parameter precision = "bf16") trains several times faster; None otherwise."""
    if device.type != "cpu" or cfg.precision != "auto" or "part1" not in cfg.tags or not cpu_has_amx_bf16(cpuinfo):
        return None
    return ("hint: this CPU has AMX-bf16 units: CANet and ResNet runs train 1.6-3.2x faster per epoch in bf16 "
            "(python -m lib run/study --precision bf16, or the notebooks' precision = \"bf16\"; README); that is "
            "another configuration of the same runs (kept apart from fp32 results: another folder)")


def model_summary(name: str, batch_size: int = 1) -> str:
    """The torchinfo summary of a model for one 32x32 image, as text."""
    import torchinfo

    stats = torchinfo.summary(build(name), input_size=(batch_size, 3, 32, 32), verbose=0, device="cpu",
                              col_names=("output_size", "num_params"), depth=3)
    return str(stats)


class Split(NamedTuple):
    """The uint8 arrays a run trains, validates and tests on, and the data's info."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    info: dict


def split_data(cfg: TrainConfig, data=None) -> Split:
    """Load, split and subset the data as `cfg` says (arrays on the host); error for an empty part. `data`: the
    loaded set (default load_cifar10(cfg.data_source)); lib.naive passes one whose X_train holds the images'
    indices, to read the same images from their files."""
    data = load_cifar10(cfg.data_source) if data is None else data
    X_tr, y_tr, X_val, y_val = study_split(data)
    X_tr, y_tr = subset(X_tr, y_tr, cfg.num_train)
    X_val, y_val = subset(X_val, y_val, cfg.num_val)
    X_te, y_te = subset(data.X_test, data.y_test, cfg.num_test)
    for what, n in (("training", len(y_tr)), ("validation", len(y_val)), ("test", len(y_te))):
        if n == 0:
            raise ValueError(f"the {what} set of {cfg.name} is empty ({data.info.get('label')}): use a larger data "
                             f"copy or larger num_train/num_val/num_test")
    return Split(X_tr, y_tr, X_val, y_val, X_te, y_te, data.info)


def prepare_data(cfg: TrainConfig, device: torch.device, data=None):
    """Load (unless `data` is the loaded set), split and subset the data as `cfg` says, move it to `device`; returns
    (loaders, data info)."""
    X_tr, y_tr, X_val, y_val, X_te, y_te, info = split_data(cfg, data)
    mean, std = NORMS[cfg.norm]
    cl = True  # channels_last: faster on CUDA (tensor cores) and ~2x faster for mkldnn convs on CPU
    train_loader = BatchLoader(*to_device_tensors(X_tr, y_tr, device), cfg.batch_size, shuffle=True,
                               augment=cfg.augment, erase_p=cfg.erase_p, mixup_p=cfg.mixup_p if cfg.augment else 0.0,
                               cutmix_p=cfg.cutmix_p if cfg.augment else 0.0, mix_alpha=cfg.mix_alpha, mean=mean,
                               std=std, seed=cfg.seed, channels_last=cl,
                               drop_last=len(y_tr) % cfg.batch_size == 1)  # BatchNorm cannot train on 1 image
    eval_bs = 1024 if device.type == "cuda" else 500
    val_loader = BatchLoader(*to_device_tensors(X_val, y_val, device), eval_bs, mean=mean, std=std, channels_last=cl)
    test_loader = BatchLoader(*to_device_tensors(X_te, y_te, device), eval_bs, mean=mean, std=std, channels_last=cl)
    info = dict(info, num_train_used=len(y_tr), num_val_used=len(y_val), num_test_used=len(y_te))
    return (train_loader, val_loader, test_loader), info


def new_model(cfg: TrainConfig, device: torch.device) -> nn.Module:
    """cfg.model with its seed's initial weights (they depend on the seed only), on `device`, channels_last."""
    torch.manual_seed(cfg.seed)
    return build(cfg.model).to(device).to(memory_format=torch.channels_last)


def copy_state(model: nn.Module) -> dict:
    """A copy of the model's state that stays where the model is (a state_dict shares the live tensors)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def epoch_row(epoch: int, lr: float, opt_kind: str, train_stats: dict, val: dict, seconds: float) -> dict:
    """An epoch's entry of the result's history, from _train_epoch's device sums and evaluate's numbers."""
    n = train_stats["n"]
    return {"epoch": epoch, "lr": lr, "optimizer": opt_kind, "train_loss": float(train_stats["loss_sum"]) / n,
            "train_acc": float(train_stats["correct"]) / n, "val_loss": val["loss"], "val_acc": val["acc"],
            "seconds": seconds}


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader, cfg: TrainConfig, device: torch.device,
             num_classes: int = 10) -> dict:
    """Loss, accuracy and confusion matrix (rows: true class, columns: predicted) on an un-augmented loader."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
    for batch in loader:
        with autocast_for(cfg, device):
            out = model(batch.x)
        loss_sum += F.cross_entropy(out.float(), batch.y, reduction="sum", label_smoothing=cfg.label_smoothing)
        # index_add_, not bincount: CUDA's bincount reads the largest value back to the host (a sync per batch).
        cell = batch.y * num_classes + out.argmax(1)
        confusion.index_add_(0, cell, torch.ones_like(cell))
    model.train(was_training)
    confusion = confusion.view(num_classes, num_classes).cpu()
    n = int(confusion.sum())
    return {"loss": float(loss_sum) / n, "acc": float(confusion.diagonal().sum()) / n, "confusion": confusion}


def weight_histograms(model: nn.Module) -> dict:
    """Per group of WEIGHT_GROUPS (SE's kernels, SA, unit_transform) a histogram of all its weights: {'edges': [...],
    'counts': [...]}; and 'se_scales', SE's mixing scales per block as they are ([[s_3, s_5, s_7], ...], for the
    kernel sizes in order)."""
    hists = {}
    for group, key in WEIGHT_GROUPS.items():
        values = [p.detach().float().flatten() for n, p in model.named_parameters() if key in f".{n}"]
        if not values:
            continue
        v = torch.cat(values).cpu().numpy()
        counts, edges = np.histogram(v, bins=HIST_BINS)
        hists[group] = {"edges": edges.tolist(), "counts": counts.tolist()}
    scales = [p.detach().float().cpu().tolist() for n, p in model.named_parameters() if f".{n}".endswith(SE_SCALES)]
    if scales:
        hists["se_scales"] = scales
    return hists


def read_checkpoint(path: Path | str, device: torch.device | str = "cpu", mmap: bool = False) -> dict:
    """torch.load of one of lib.train's checkpoints; a file that cannot be read is a ValueError that says so and
    what to do (writes are atomic, so this is a damaged disk or a file copied in part)."""
    try:
        return torch.load(path, map_location=device, weights_only=False, mmap=mmap)
    except torch.cuda.OutOfMemoryError:
        raise  # a full GPU, not a damaged file
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, ValueError) as err:
        what = ("delete it (the run then starts over) or retrain the run with --force"
                if Path(path).name.endswith(".last.pt") else
                "retrain its run with --force (deleting it alone does not help: the weights of the run's best epoch "
                "can only be made again by training the run again)")
        raise ValueError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err}): it is damaged or "
                         f"incomplete; {what}") from err


def missing_best_error(best_ckpt: Path, last_ckpt: Path, epoch: int) -> ValueError:
    """A run whose best epoch so far has no weights on disk cannot be tested when it ends: what to do."""
    return ValueError(f"{best_ckpt} is missing: it held the weights of epoch {epoch + 1}, the best on validation "
                      f"so far, which the test pass needs. Retrain the run with --force, or delete {last_ckpt} "
                      f"too (the run then starts over)")


def _save_checkpoint(path: Path, state: dict) -> None:
    """torch.save atomically (temp file + rename)."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


# ---------------------------------------------------------------------------------------------------------
# GPU fast path (CUDA only: on a CPU none of this runs)

def _gpu_fast_path(device: torch.device) -> bool:
    """Cheaper per-epoch bookkeeping on CUDA: best weights kept on the device and written once, the resumable
    checkpoint at most every LAST_CKPT_EVERY_S, parameter histograms counted on the device.

    Why: a GPU epoch takes about a second, while writing model + optimiser state and histogramming every
    parameter on the CPU cost 2-16 s per epoch on the project's CPU machine (VGG11: 9 s of TensorBoard
    histograms + 7 s of checkpoint writing; CANet: 2 s of histograms).
    """
    return device.type == "cuda"


class _Forward(nn.Module):
    """model(x) as a module of its own, so that make_graphed_callables patches this forward, not the model's."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped model's forward."""
        return self.model(x)


class _FullBatchForward(nn.Module):
    """`model`, whose training forward for full batches of one shape goes through a faster callable (set by
    the subclass as self._fast); other shapes (an epoch's last, partial batch), eval mode and no-grad calls
    run `model` eagerly. Both paths share the same parameters and buffers."""

    def __init__(self, model: nn.Module, batch_shape: tuple[int, ...]):
        super().__init__()
        self.model = model
        self.batch_shape = tuple(batch_shape)
        self._fast = [model]  # in a list: not a registered submodule (its parameters are model's)

    def takes_fast_route(self, x: torch.Tensor) -> bool:
        """Whether `x` is a full training batch (training mode, gradients on, the captured shape)."""
        return self.model.training and torch.is_grad_enabled() and tuple(x.shape) == self.batch_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The fast callable for a full training batch; the eager model otherwise."""
        return self._fast[0](x) if self.takes_fast_route(x) else self.model(x)


class GraphedForward(_FullBatchForward):
    """`model` whose training forward and backward replay captured CUDA graphs for full batches.

    torch.cuda.make_graphed_callables captures one forward and one backward graph for the batch shape
    (B, C, H, W): a step then launches two graphs instead of hundreds of kernels (small models are
    launch-bound).
    """

    def __init__(self, model: nn.Module, sample_x: torch.Tensor, cfg: TrainConfig):
        super().__init__(model, sample_x.shape)
        with autocast_for(cfg, sample_x.device, cache_enabled=False):
            self._fast = [torch.cuda.make_graphed_callables(_Forward(model), (sample_x,), allow_unused_input=True)]


def compile_cache_counts() -> dict[str, int]:
    """Lookups in torch.compile's on-disk caches by this process so far: Inductor's compiled graphs (`fxgraph_*`)
    and AOTAutograd's forward/backward pairs (`aot_*`), hits, misses and bypasses (a graph the cache cannot hold,
    compiled afresh; torch._dynamo's counters, zeros where none were made). A hit skips the lowering, code
    generation and kernel compilation of that graph."""
    from torch._dynamo.utils import counters

    return {f"{short}_{what}": counters[group][f"{name}_{what}"] for short, group, name in
            (("fxgraph", "inductor", "fxgraph_cache"), ("aot", "aot_autograd", "autograd_cache"))
            for what in ("hit", "miss", "bypass")}


class CompiledForward(_FullBatchForward):
    """`model` whose training steps on full batches run torch.compile'd (kernels fused by Inductor; compiled
    lazily, at the first full batch). Only one shape and one mode are ever compiled, so the partial last
    batch and the evaluation passes cause no recompilation. If the first compiled call fails, the steps run
    eagerly from then on (they compute the same thing, only slower) and `info` says so.

    At the second full batch (the first step's backward, compiled lazily, is then done) `info['compile_cache']`
    records the on-disk cache lookups of the compile (compile_cache_counts, this module's share): hits mean
    that the compile time was mostly a cache read, e.g. of the cache the GPU runner carries between sessions."""

    def __init__(self, model: nn.Module, batch_shape: tuple[int, ...], mode: str = "default",
                 info: dict | None = None):
        super().__init__(model, batch_shape)
        self.info = info if info is not None else {}
        self.mode = mode
        self._cache_before = compile_cache_counts()
        self._fast = [torch.compile(model, mode=None if mode == "default" else mode, dynamic=False)]
        self._proven = False
        self._cache_recorded = False

    def _call_fast(self, x: torch.Tensor) -> torch.Tensor:
        """The compiled model; in the modes that replay CUDA graphs each call starts a new step of Inductor's
        CUDA-graph trees (the previous step's outputs are done with: the training loop reads them within its
        step)."""
        if self.mode in GRAPHED_COMPILE_MODES and self._fast[0] is not self.model:
            torch.compiler.cudagraph_mark_step_begin()
        return self._fast[0](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """As _FullBatchForward; the first compiled call falls back to eager steps on any error."""
        if not self.takes_fast_route(x):
            return self.model(x)
        if self._proven:
            if not self._cache_recorded and self._fast[0] is not self.model:
                now = compile_cache_counts()
                self.info["compile_cache"] = {k: now[k] - self._cache_before.get(k, 0) for k in now}
                self._cache_recorded = True
            return self._call_fast(x)
        try:
            out = self._call_fast(x)
        except Exception as err:  # Inductor/Dynamo failures have many types; eager is always correct
            self._fast = [self.model]
            self.info.update(compile=False, note=f"torch.compile failed, eager steps: {type(err).__name__}: {err}")
            print(f"[CompiledForward] {self.info['note']}")
            out = self.model(x)
        self._proven = True
        return out


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


def _names_in_env(name: str) -> set[str]:
    """Model names in an environment variable (separated by spaces or commas; 'all' where the variable takes it),
    or a clear error for a word that is no model: a typo would otherwise silently choose nothing."""
    from lib.models import list_models

    names = set(os.environ.get(name, "").replace(",", " ").split())
    known = set(list_models()) | ({"all"} if name != EAGER_MODELS_ENV else set())
    if unknown := sorted(names - known):
        raise ValueError(f"{name}={os.environ[name]!r}: {', '.join(map(repr, unknown))} is no model: name models "
                         f"separated by spaces or commas{' (or all)' if 'all' in known else ''}, e.g. "
                         f"{name}=\"CANet CANet_tiny\", or unset it")
    return names


def _cuda_graphs_setting() -> str:
    """CIFAR10_CUDA_GRAPHS: '1' (the default, also when unset or empty) or '0'; anything else is an error."""
    value = os.environ.get(CUDA_GRAPHS_ENV, "").strip() or "1"
    if value not in ("0", "1"):
        raise ValueError(f"{CUDA_GRAPHS_ENV}={os.environ[CUDA_GRAPHS_ENV]!r}: use 0 (CUDA training steps without "
                         f"CUDA graphs) or 1 (with them, the default), or unset it")
    return value


def check_execution_env() -> None:
    """Raise a clear ValueError for a value of the variables that choose how the training steps run (lib.bench.
    execution_env_names) or whether anything may run (CIFAR10_REUSE_ONLY) that means nothing: the CLI checks them
    before it starts, so that a typo does not quietly change the runs, e.g. CIFAR10_CUDA_GRAPHS=off leaving the
    graphs on, or CIFAR10_REUSE_ONLY=maybe training."""
    from lib.models.canet import merged_from_env

    for name in (COMPILE_ENV, STEP_GRAPH_ENV, EAGER_MODELS_ENV):
        _names_in_env(name)
    _cuda_graphs_setting()
    compile_mode()
    merged_from_env()
    reuse_only()


def _named_in_env(name: str, model: str) -> bool:
    """Whether the environment variable `name` names `model` or says 'all'."""
    names = _names_in_env(name)
    return "all" in names or model in names


def graphs_enabled_for(model: str) -> bool:
    """Whether an uncompiled CUDA training step of `model` is CUDA-graphed: CIFAR10_CUDA_GRAPHS is not '0' and
    CIFAR10_EAGER_MODELS does not name it (the GPU runner names the models whose graph check failed)."""
    return _cuda_graphs_setting() != "0" and model not in _names_in_env(EAGER_MODELS_ENV)


def compiled_by_env(model: str) -> bool:
    """Whether the CIFAR10_COMPILE environment variable (names separated by spaces or commas, or 'all')
    names `model`."""
    return _named_in_env(COMPILE_ENV, model)


def compile_mode() -> str:
    """torch.compile's mode for the training steps: CIFAR10_COMPILE_MODE (default 'reduce-overhead': fused
    kernels replayed as CUDA graphs), except that where CIFAR10_CUDA_GRAPHS=0 turned CUDA graphs off the
    modes that replay them become their graph-free versions ('reduce-overhead' -> 'default',
    'max-autotune' -> 'max-autotune-no-cudagraphs').

    Why not 'default': on an H200 (2026-11-27) CANet's compiled epoch without CUDA graphs took 7.1 s, its
    CUDA-graphed eager epoch 2.8 s: the launches, not the kernels, were the cost (results/bench/logs/)."""
    mode = os.environ.get(COMPILE_MODE_ENV, "").strip() or "reduce-overhead"
    if mode not in COMPILE_MODES:
        raise ValueError(f"{COMPILE_MODE_ENV}={mode!r}: torch.compile's modes are {', '.join(COMPILE_MODES)} "
                         "(default reduce-overhead)")
    if mode in GRAPHED_COMPILE_MODES and _cuda_graphs_setting() == "0":
        return {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}[mode]
    return mode


def step_graph_requested(model: str) -> bool:
    """Whether CIFAR10_STEP_GRAPH (names separated by spaces or commas, or 'all') names `model` and CUDA graphs are
    on for it (graphs_enabled_for: CIFAR10_CUDA_GRAPHS=0 and CIFAR10_EAGER_MODELS win): its CUDA training steps then
    run as one captured graph each (lib.step_graph.StepGraph, an experiment), torch.compile'd inside where
    compile_requested."""
    return _named_in_env(STEP_GRAPH_ENV, model) and graphs_enabled_for(model)


def compile_requested(cfg: TrainConfig) -> bool:
    """Whether cfg's CUDA training steps are to be torch.compile'd: cfg.compile, or CIFAR10_COMPILE names the model."""
    return cfg.compile or compiled_by_env(cfg.model)


_STEPS_BUILT: set[str] = set()  # models whose full-batch CUDA training steps step_model_for set up in this process


def step_model_for(model: nn.Module, cfg: TrainConfig, device: torch.device, train_loader: BatchLoader):
    """(module that runs the training steps, info): on CUDA, torch.compile'd where compile_requested(cfg),
    else CUDA-graphed (graphs_enabled_for: CIFAR10_CUDA_GRAPHS=0 turns that off, CIFAR10_EAGER_MODELS for
    single models); `model` itself on a CPU. Either way only full training batches take the fast route.
    info says which and what it cost (a compile is paid lazily, in the first epoch)."""
    info = {"compile": False, "cuda_graphs": False, "compile_seconds": 0.0, "note": ""}
    if device.type != "cuda":
        return model, info
    if train_loader.num_samples < cfg.batch_size:
        info["note"] = "fewer images than one batch: eager steps"
        return model, info
    # A run of a model whose full-batch steps this process ran before (the GPU runner's `lib run --only A B` trains
    # its runs in one process) reuses cuDNN's autotuning of their shapes and, compiled, Dynamo's compiled code (a
    # CUDA graph is captured anew for each model): its one-off is smaller.
    info["earlier_in_process"] = cfg.model in _STEPS_BUILT
    _STEPS_BUILT.add(cfg.model)
    batch_shape = (cfg.batch_size, *train_loader.X.shape[1:])
    if step_graph_requested(cfg.model):  # an experiment (lib/step_graph.py): captured lazily, at the first batch
        compiled = compile_requested(cfg)
        info.update(compile=compiled, cuda_graphs=True, step_graph=True)
        if compiled:
            info["compile_mode"] = "default"  # torch.compile's own CUDA graphs off: the graph is StepGraph's
        return StepGraph(model, last_linear(model), batch_shape, label_smoothing=cfg.label_smoothing,
                         record_steps=cfg.record_steps, autocast=lambda: autocast_for(cfg, device, cache_enabled=False),
                         compiled=compiled, info=info), info
    if compile_requested(cfg):
        info.update(compile=True, compile_mode=compile_mode())
        return CompiledForward(model, batch_shape, info["compile_mode"], info), info
    if not graphs_enabled_for(cfg.model):
        why = (f"{CUDA_GRAPHS_ENV}=0" if _cuda_graphs_setting() == "0"
               else f"{EAGER_MODELS_ENV} names {cfg.model}")
        info["note"] = f"{why}: eager steps"
        return model, info
    t0 = time.perf_counter()
    model.train()  # the graph records the mode it is captured in (BatchNorm: batch statistics)
    # The capture's warm-up runs real forward passes, which would move the BatchNorm running statistics.
    saved = copy_state(model)
    try:
        sample = torch.randn(batch_shape, device=device)
        if train_loader.channels_last:
            sample = sample.contiguous(memory_format=torch.channels_last)
        step_model = GraphedForward(model, sample, cfg)
        torch.cuda.synchronize(device)
    except Exception as err:  # best effort: the eager step computes the same thing, only slower
        info["note"] = f"CUDA-graph capture failed, eager steps: {type(err).__name__}: {err}"
        print(f"[{cfg.name}] {info['note']}")
        step_model = model
    finally:
        model.load_state_dict(saved)
    info["cuda_graphs"] = step_model is not model
    info["compile_seconds"] = time.perf_counter() - t0
    return step_model, info


TB_MAX_QUEUE = 4096  # TensorBoard events held for the writer's thread (SummaryWriter's default: 10)


def tensorboard_writer(logdir: Path | str, purge_step: int | None = None):
    """SummaryWriter for a run: with a queue that holds an epoch's events (352 per-step scalars, one
    histogram per parameter), so that logging them does not wait for the writer's thread to serialise and
    write each one; it writes them while the next epoch trains. Measured on the project's 2-core CPU: an
    epoch's 126 CANet_tiny histograms took 0.29 s with the default queue of 10 (mostly waiting on the
    queue), 0.16 s with this one; the per-step scalars 51 ms and 13 ms."""
    from torch.utils.tensorboard import SummaryWriter  # imported here: slow import, not needed for reuse

    return SummaryWriter(str(logdir), purge_step=purge_step, max_queue=TB_MAX_QUEUE)


HIST_PASS_VALUES = 1 << 24  # values histogrammed per batched pass (16M; its temporaries take about 50 bytes a value)
HIST_PIECE_VALUES = 1 << 16  # the statistics are reduced over pieces of at most this many values, then per tensor


def _piece_lengths(sizes: list[int]) -> list[int]:
    """Each size cut into pieces of at most HIST_PIECE_VALUES (a size 0 as one empty piece)."""
    return [min(HIST_PIECE_VALUES, n - s) for n in sizes for s in range(0, max(n, 1), HIST_PIECE_VALUES)]


def _histogram_pass(parts: list[torch.Tensor], edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts (len(parts), B) of flat `parts` and statistics per piece (pieces, 5: min, max, sum, sum of squares,
    number of non-finite values), in one pass over their concatenated values: about twenty kernels whatever
    their number. The counts are added at (part, bin). The statistics are segment reductions over pieces
    (_piece_lengths): on CUDA each segment is reduced by one thread block, so pieces spread a large tensor over
    the GPU."""
    num_bins, rows = edges.numel() - 1, len(parts)
    v = torch.cat(parts).double()
    sizes = [p.numel() for p in parts]
    row = torch.repeat_interleave(torch.arange(rows, device=v.device), torch.tensor(sizes, device=v.device),
                                  output_size=v.numel())
    # np.histogram's bins are [e_i, e_i+1), the last one closed; values outside [e_0, e_B] are not counted.
    idx = (torch.bucketize(v, edges, right=True) - 1).clamp_(0, num_bins - 1)
    inside = ((v >= edges[0]) & (v <= edges[-1])).double()
    counts = torch.zeros(rows * num_bins, dtype=torch.float64, device=v.device)
    counts.index_add_(0, row * num_bins + idx, inside)
    pieces = torch.tensor(_piece_lengths(sizes), device=v.device)

    def per_piece(values: torch.Tensor, reduce: str) -> torch.Tensor:
        return torch.segment_reduce(values, reduce, lengths=pieces, unsafe=True)  # unsafe: no check, no sync

    stats = torch.stack([per_piece(v, "min"), per_piece(v, "max"), per_piece(v, "sum"), per_piece(v * v, "sum"),
                         per_piece((~torch.isfinite(v)).double(), "sum")], dim=1)
    return counts.view(rows, num_bins), stats


def param_histograms(tensors: list[torch.Tensor], edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each tensor, np.histogram(values, edges) counts (a row of the first result, int64 (N, B)) and [min,
    max, sum, sum of squares, all finite] (a row of the second, float64 (N, 5)).

    Counted where the tensors live, in batched passes of at most HIST_PASS_VALUES values (a larger tensor is
    split over passes), each copied to the host once; the passes' parts and pieces are combined per tensor there.
    On CUDA the device is waited for only at those copies (and the copies of a few sizes to it)."""
    edges_on_device = torch.from_numpy(np.asarray(edges, dtype=np.float64)).to(tensors[0].device)
    parts, owner = [], []  # flat parts of at most HIST_PASS_VALUES values; a tensor's parts are consecutive
    for i, t in enumerate(tensors):
        flat = t.detach().reshape(-1)
        for start in range(0, max(flat.numel(), 1), HIST_PASS_VALUES):
            parts.append(flat[start:start + HIST_PASS_VALUES])
            owner.append(i)
    passes, size = [[]], 0
    for part in parts:
        if passes[-1] and size + part.numel() > HIST_PASS_VALUES:
            passes.append([])
            size = 0
        passes[-1].append(part)
        size += part.numel()
    counted = [tuple(x.cpu().numpy() for x in _histogram_pass(p, edges_on_device)) for p in passes]
    part_counts, piece_stats = (np.concatenate(c) for c in zip(*counted))
    piece_owner = np.repeat(owner, [len(_piece_lengths([p.numel()])) for p in parts])
    first_part, first_piece = (np.flatnonzero(np.diff(o, prepend=-1)) for o in (np.asarray(owner), piece_owner))
    counts = np.add.reduceat(part_counts, first_part, axis=0).astype(np.int64)
    vmin = np.minimum.reduceat(piece_stats[:, 0], first_piece)
    vmax = np.maximum.reduceat(piece_stats[:, 1], first_piece)
    vsum, vsq, non_finite = np.add.reduceat(piece_stats[:, 2:], first_piece, axis=0).T
    return counts, np.stack([vmin, vmax, vsum, vsq, (non_finite == 0).astype(np.float64)], axis=1)


def _trim_histogram(counts: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TensorBoard's bucket layout (as summary.make_histogram): the support's buckets, right limits only."""
    cum = np.cumsum(counts > 0)
    start, end = np.searchsorted(cum, [0, cum[-1] - 1], side="right")
    start, end = int(start), int(end) + 1
    counts = counts[start - 1:end] if start > 0 else np.concatenate([[0], counts[:end]])
    return counts, edges[start:end + 1]


def _add_param_histograms_on_device(writer, model: nn.Module, step: int) -> None:
    """writer.add_histogram of every finite parameter, with the counting done on the parameters' device in
    batched passes (param_histograms)."""
    named = list(model.named_parameters())
    edges = np.asarray(writer.default_bins, dtype=np.float64)
    counts, stats = param_histograms([p for _, p in named], edges)
    for (name, p), row, (vmin, vmax, vsum, vsq, finite) in zip(named, counts, stats):
        if not finite:
            continue
        row, limits = _trim_histogram(row, edges)
        writer.add_histogram_raw(name, vmin, vmax, p.numel(), vsum, vsq, limits.tolist(), row.tolist(),
                                 global_step=step)


# ---------------------------------------------------------------------------------------------------------

def checkpoint_written_for(state: dict, cfg: TrainConfig) -> bool:
    """Whether a resumable checkpoint's state was written by a run of `cfg` (else it starts afresh)."""
    try:
        return TrainConfig.from_dict(state["config"]) == cfg
    except (TypeError, ValueError, KeyError):  # written by an older version of TrainConfig
        return False


def _same_config(a: dict | None, b: dict | None) -> bool:
    """Whether two recorded configs describe the same run (normalised through TrainConfig when possible)."""
    if not a or not b:
        return True  # nothing to compare against
    try:
        return TrainConfig.from_dict(a) == TrainConfig.from_dict(b)
    except (TypeError, ValueError):
        return a == b


OTHER_RUN = "was written by a different run"


def not_the_selected_weights(state: dict, result: dict) -> str | None:
    """Why a best checkpoint's state is not the one `result` selected (None when it is, as far as recorded):
    another run's config, another epoch (a retraining stopped part-way) or another validation accuracy (a
    retraining that did not reproduce the run). lib.attention's figures and lib.bn_study's slices use it."""
    if not _same_config(state.get("config"), result.get("config")):
        return f"{OTHER_RUN} (configs differ)"
    epoch, best = state.get("epoch"), result.get("best_epoch")
    if epoch is not None and best is not None and epoch != best:
        return f"holds epoch {epoch}, but the result selected epoch {best} (a retraining stopped part-way?)"
    acc, best_acc = state.get("val_acc"), result.get("best_val_acc")
    if acc is not None and best_acc is not None and abs(float(acc) - float(best_acc)) > 1e-9:
        return (f"has validation accuracy {float(acc):.4f}, not the result's {float(best_acc):.4f} (a retraining "
                f"that did not reproduce the run)")
    return None


def resume_epoch(cfg: TrainConfig, dirs: OutputDirs | None = None) -> int:
    """Epochs of cfg's run that train() would not repeat: those its resumable checkpoint in `dirs` holds
    (0 without one, or for one written by another config). The checkpoint is memory-mapped, not read."""
    path = Path((dirs or output_dirs(cfg.profile)).checkpoints) / f"{cfg.name}.last.pt"
    if not path.exists():
        return 0
    state = read_checkpoint(path, mmap=True)
    return state["epoch"] + 1 if checkpoint_written_for(state, cfg) else 0


OVERRIDES = ("num_epochs", "precision")  # what `--num-epochs` and `--precision` change in a Part 1 run's recipe


def overridden_result(path: Path, cfg: TrainConfig) -> list[str]:
    """The fields, with their values there and here, in which the finished result at `path` differs from `cfg`,
    when training `cfg` would replace the result of the same run trained otherwise, which is never done without
    force: the same run on other data (`data_source`: `--data`), or a Part 1 run that departs from its profile's
    recipe (`--num-epochs`, `--precision`: OVERRIDES) over one with another number of epochs or precision. []
    otherwise: no such result, one that differs in anything else (stale, retrained as before), or a run of the
    recipe itself over an override's result on the same data (which it replaces, as the GPU runner needs)."""
    from lib.part1 import recipe_options

    try:
        old = read_json(path)
        recorded = TrainConfig.from_dict(old["config"]).to_dict()
    except (OSError, ValueError, TypeError, KeyError):
        return []
    if old.get("status") not in ("ok", "diverged"):
        return []
    wanted = cfg.to_dict()
    changed = [k for k in wanted if recorded.get(k) != wanted[k]]
    if not changed or not set(changed) <= {*OVERRIDES, "data_source"}:
        return []
    if "data_source" not in changed and ("part1" not in cfg.tags or not recipe_options(wanted)):
        return []
    return [f"{k} ({recorded[k]} there, {wanted[k]} here)" for k in changed]


def checkpoint_clash(state: dict, cfg: TrainConfig) -> tuple[list[str], bool]:
    """How a resumable checkpoint's state, written by another configuration of cfg's run, differs from `cfg`: the
    fields with their values there and here, and whether they are all ones the user chooses per call (the data,
    `--num-epochs`, `--precision`), so that training cfg would throw away epochs that the same options would
    resume (train refuses that without force). ([], False) for a checkpoint whose config cannot be read (older
    code: stale, trained afresh)."""
    try:
        recorded = TrainConfig.from_dict(state["config"]).to_dict()
    except (TypeError, ValueError, KeyError):
        return [], False
    wanted = cfg.to_dict()
    changed = [k for k in wanted if recorded.get(k) != wanted[k]]
    return ([f"{k} ({recorded.get(k)} there, {wanted[k]} here)" for k in changed],
            bool(changed) and set(changed) <= {*OVERRIDES, "data_source"})


def clash_summary(path: Path, state: dict, cfg: TrainConfig) -> str:
    """'' unless `state`, the resumable checkpoint of cfg's run at `path`, was written with other options the user
    chooses per call (checkpoint_clash): then '<path> holds N epoch(s) of <run> trained with other options: ...'."""
    changed, chosen = checkpoint_clash(state, cfg)
    return (f"{path} holds {_epochs_in(state)} of {cfg.name} trained with other options: {', '.join(changed)}"
            if chosen else "")


def _epochs_in(state: dict) -> str:
    """'N epoch(s)' of a resumable checkpoint's state."""
    return f"{state['epoch'] + 1} epoch(s)" if isinstance(state.get("epoch"), int) else "epochs"


def kept_checkpoint(cfg: TrainConfig, dirs: OutputDirs) -> str:
    """clash_summary of cfg's resumable checkpoint in `dirs` ('' without one, or for one that cannot be read): the
    epochs that train(cfg) without force keeps rather than starting over (`lib status` says so)."""
    path = Path(dirs.checkpoints) / f"{cfg.name}.last.pt"
    try:
        return clash_summary(path, read_checkpoint(path, mmap=True), cfg) if path.exists() else ""
    except ValueError:  # damaged: resume_epoch's callers say so
        return ""


def keep_advice(profile: str, results: Path, files: str = "the result file") -> str:
    """How to train a run without replacing a finished result of it in the folder `results`."""
    published = Path(output_dirs(profile, publish=True).results).resolve() == Path(results).resolve()
    other = f"train into build/{profile}/ instead (leave out --publish), or " if published and profile != "full" \
        else ""
    return f"{other}move {files} out of {results} first"


def override_clash(cfg: TrainConfig, dirs: OutputDirs) -> list[str]:
    """overridden_result for cfg's result in dirs, unless cfg has a resumable checkpoint there (a forced override
    stopped part-way goes on): what training cfg without force would refuse to replace."""
    changed = overridden_result(Path(dirs.results) / f"{cfg.name}.json", cfg)
    return changed if changed and not resume_epoch(cfg, dirs) else []


def train(cfg: TrainConfig, *, dirs: OutputDirs | None = None, force: bool = False, progress: bool = True,
          max_epochs_this_call: int | None = None, stop_by: float | None = None) -> dict:
    """Train `cfg.model` as `cfg` says; return the result dict (also written to <results>/<cfg.name>.json).

    A finished result with the same config is reused unless `force`. An interrupted run resumes from
    its last checkpoint (model, optimiser, epoch, history; the data order is a function of (seed, epoch)).
    `max_epochs_this_call` stops (resumably) after that many epochs and returns {'status': 'incomplete',
    'stopped_by': 'max_epochs_this_call'} ('time_limit' where `stop_by` stopped it):
    long suites can be split across sessions this way. `stop_by` (a time.perf_counter() value) stops the same
    way before an epoch that would not end by then, judged by the last epoch's time with a margin (so from
    the second epoch of a call on; none is started once stop_by has passed): the GPU runner's calls end at a
    fixed time, and a run longer than one call goes on in the next one (resume_epoch).
    """
    dirs = dirs or output_dirs(cfg.profile)
    result_path = Path(dirs.results) / f"{cfg.name}.json"
    if not force and (found := reusable_run(cfg, dirs)) is not None:
        say_reused(cfg.name, trained=True)  # whatever `progress` is
        return found
    refuse_if_reuse_only(f"training {cfg.name}", result_path.parent, forced=force)
    device = resolve_device(cfg.device)
    # The data first (on the CPU, cached after its first load): missing or corrupt data is the error to fix first,
    # and --force deletes nothing before the data loads (the checkpoints of the run it replaces stay until this one
    # can train).
    data = load_cifar10(cfg.data_source)
    if data.info.get("complete") is False and data.info.get("source") not in _noted_copies:  # once per copy
        _noted_copies.add(data.info.get("source"))
        print(f"note: {data.info.get('label') or data.info.get('source')} is a smaller copy than CIFAR-10 "
              f"({data.info.get('num_train'):,} of 50,000 training and {data.info.get('num_test'):,} of 10,000 test "
              f"images): used as it is; results and the report say so")
    if not force and (changed := override_clash(cfg, dirs)):
        raise ValueError(f"{result_path} holds a finished run of {cfg.name} that differs from this one only in "
                         f"{', '.join(changed)}: training it would replace that result. To keep it, "
                         f"{keep_advice(cfg.profile, result_path.parent)}; or replace it with --force (with `--only "
                         f"{cfg.name}` to force this run alone; notebooks: force = True)")
    sharing = shared_gpu()  # other runs training beside this one (the GPU runner's lanes), read before training
    if progress and not _hinted and (hint := precision_hint(cfg, device)):  # once per process
        _hinted.add(hint)
        print(hint)
    last_ckpt = Path(dirs.checkpoints) / f"{cfg.name}.last.pt"
    best_ckpt = Path(dirs.checkpoints) / f"{cfg.name}.pt"
    (train_loader, val_loader, test_loader), data_info = prepare_data(cfg, device, data)
    model = new_model(cfg, device)  # before anything is deleted, too (it raises for an unknown model)
    marker = rerun_marker(dirs, cfg.name)
    if force:
        for p in (last_ckpt, best_ckpt):
            p.unlink(missing_ok=True)
        if reusable_result(result_path, cfg.to_dict(), TrainConfig) is not None:  # a re-run over a finished result
            atomic_write_json(marker, {"config": cfg.to_dict()})  # its epochs are not thrown away by a reuse
    elif not last_ckpt.exists():
        marker.unlink(missing_ok=True)  # stale (its re-run's checkpoint was deleted)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.backends.cudnn.benchmark = True
        # TF32 only where the config does not ask for true fp32 (the result records cfg.precision).
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.precision != "fp32"

    num_params = sum(p.numel() for p in model.parameters())
    head = last_linear(model)

    # State that a checkpoint restores.
    start_epoch, history, weight_hists, steps = 0, [], [], {"loss": [], "grad_max": [], "grad_min": []}
    best = {"val_acc": -1.0, "epoch": -1}
    opt_kind = optimizer_at(cfg, 0)
    optimizer = make_optimizer(opt_kind, model.parameters(), cfg, lr_at(cfg, 0), device)
    commit_at_start = git_commit()  # a resumed run keeps the commit its first epoch ran with
    here = device_name(device)
    devices = []  # the devices whose calls trained this run's epochs, in order (a resume may be on another machine)
    if last_ckpt.exists():
        # Read on the CPU: load_state_dict moves the weights and optimiser state to the device, and the CPU random
        # state must stay a CPU tensor (torch.set_rng_state refuses a CUDA one, which map_location=device made).
        state = read_checkpoint(last_ckpt)
        if checkpoint_written_for(state, cfg):
            model.load_state_dict(state["model"])
            opt_kind = state["optimizer_kind"]
            optimizer = make_optimizer(opt_kind, model.parameters(), cfg, lr_at(cfg, 0), device)
            chosen = [{k: g.get(k) for k in ("fused", "foreach")} for g in optimizer.param_groups]
            optimizer.load_state_dict(state["optimizer"])
            for group, kernels in zip(optimizer.param_groups, chosen):  # this device's kernels, not the writer's
                group.update(kernels)
                for p in group["params"] if kernels["fused"] else ():  # fused kernels keep 'step' on the device
                    if torch.is_tensor(step := optimizer.state.get(p, {}).get("step")):
                        optimizer.state[p]["step"] = step.to(device=p.device, dtype=torch.float32)
            start_epoch, history, best = state["epoch"] + 1, state["history"], state["best"]
            weight_hists, steps = state["weight_hists"], state["steps"]
            commit_at_start = state.get("git_commit_start", "unknown")  # older checkpoints did not record it
            devices = list(state.get("devices") or [])  # older checkpoints did not record them
            if devices and here not in devices and progress:
                print(f"[{cfg.name}] note: its first {start_epoch} epoch(s) trained on {', '.join(devices)}, the "
                      f"rest trains on {here}: the result names both (their epoch times, and between a CPU and a "
                      f"GPU their arithmetic, differ)")
            torch.set_rng_state(state["rng_cpu"].cpu())
            if device.type == "cuda" and state.get("rng_cuda") is not None:  # dropout's masks go on from there
                torch.cuda.set_rng_state(state["rng_cuda"].cpu(), device)
            if best["epoch"] >= 0 and not best_ckpt.exists():  # before training on: the run could not be tested
                raise missing_best_error(best_ckpt, last_ckpt, best["epoch"])
            if progress:
                print(f"[{cfg.name}] resuming after epoch {start_epoch} of {cfg.num_epochs} ({last_ckpt})"
                      + (": a re-run with force, whose result replaces the finished one" if rerun_pending(cfg, dirs)
                         else ""))
        elif clash := clash_summary(last_ckpt, state, cfg):  # the user's other options: their epochs are kept
            raise ValueError(f"{clash}. Training this configuration would start afresh and replace them. To go on "
                             f"with that run, use its options again; to keep it, "
                             f"{keep_advice(cfg.profile, last_ckpt.parent, 'the checkpoint')}; or replace it with "
                             f"--force (notebooks: force = True)")
        else:  # another configuration otherwise: stale (older code or recipe), replaced
            changed, _ = checkpoint_clash(state, cfg)
            print(f"note: {last_ckpt} ({_epochs_in(state)}) was written by another configuration of {cfg.name}"
                  + (f" ({', '.join(changed)})" if changed else " (older code)")
                  + ": not resumed; this run starts at epoch 1 and replaces it")

    steps_per_epoch = len(train_loader)
    writer = tensorboard_writer(Path(dirs.runs) / cfg.name, purge_step=start_epoch * steps_per_epoch)
    if start_epoch == 0:
        writer.add_text("model/summary", "```\n" + model_summary(cfg.model) + "\n```")
        writer.add_text("config", "```\n" + "\n".join(f"{k}: {v}" for k, v in cfg.to_dict().items()) + "\n```")
    step_model, fast_info = step_model_for(model, cfg, device, train_loader)
    fast = _gpu_fast_path(device)
    pending_best, last_saved = None, time.perf_counter()  # fast path: best weights not yet written

    def save_resumable(epoch: int) -> None:
        """The pending best checkpoint (if any), then the resumable one after `epoch`: the best one never lags
        behind the resumable one, and is never ahead of it."""
        nonlocal pending_best, last_saved
        if pending_best is not None:
            _save_checkpoint(best_ckpt, pending_best)
            pending_best = None
        _save_checkpoint(last_ckpt, {"config": cfg.to_dict(), "model": model.state_dict(),
                                     "optimizer": optimizer.state_dict(), "optimizer_kind": opt_kind,
                                     "epoch": epoch, "history": history, "best": best,
                                     "weight_hists": weight_hists, "steps": steps, "rng_cpu": torch.get_rng_state(),
                                     "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                                     "git_commit_start": commit_at_start, "devices": devices})
        last_saved = time.perf_counter()

    status, message = "ok", ""
    run_start = time.perf_counter()
    epochs_done_now = 0
    out_of_time = stop_by is not None and time.perf_counter() >= stop_by  # not even one epoch
    for epoch in range(start_epoch, cfg.num_epochs):
        if out_of_time or (max_epochs_this_call is not None and epochs_done_now >= max_epochs_this_call):
            writer.close()
            if progress and out_of_time:
                print(f"[{cfg.name}] stopped before epoch {epoch + 1}/{cfg.num_epochs}: it would end after the "
                      f"time limit; the next run resumes here")
            return {"name": cfg.name, "status": "incomplete", "epochs_done": epoch,
                    "stopped_by": "time_limit" if out_of_time else "max_epochs_this_call"}
        epoch_start = time.perf_counter()
        kind = optimizer_at(cfg, epoch)
        if kind != opt_kind:  # the recipe's switch: a fresh SGD starting at the lr reached so far
            opt_kind, optimizer = kind, make_optimizer(kind, model.parameters(), cfg, lr_at(cfg, epoch), device)
        lr = lr_at(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        train_stats = _train_epoch(step_model, head, optimizer, train_loader, cfg, device, epoch, progress)
        losses = train_stats["step_loss"].cpu()
        val = evaluate(model, val_loader, cfg, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        row = epoch_row(epoch, lr, opt_kind, train_stats, val, seconds)
        if cfg.record_steps:
            steps["loss"] += losses.tolist()
            steps["grad_max"] += train_stats["grad_max"].cpu().tolist()
            steps["grad_min"] += train_stats["grad_min"].cpu().tolist()
        _log_epoch(writer, model, row, losses, train_stats["step_acc"].cpu(), epoch, steps_per_epoch)
        finite = torch.isfinite(losses)
        if not bool(finite.all()) or not math.isfinite(row["val_loss"]):
            bad_step = epoch * steps_per_epoch + int((~finite).nonzero()[0]) if not bool(finite.all()) else None
            status = "diverged"
            message = (f"training loss became non-finite at epoch {epoch}" +
                       (f", step {bad_step}" if bad_step is not None else "") +
                       f" (lr {lr:g}); stopped. History up to the previous epoch is kept.")
            print(f"[{cfg.name}] DIVERGED: {message}")
            break
        history.append(row)
        if here not in devices:
            devices.append(here)
        weight_hists.append({"epoch": epoch, **weight_histograms(model)})
        if row["val_acc"] > best["val_acc"]:
            best = {"val_acc": row["val_acc"], "epoch": epoch}
            pending_best = {"config": cfg.to_dict(), "epoch": epoch, "val_acc": row["val_acc"],
                            "model": copy_state(model) if fast else model.state_dict()}  # CPU: written below
        out_of_time = (stop_by is not None and epoch + 1 < cfg.num_epochs and time.perf_counter()
                       + STOP_MARGIN * (time.perf_counter() - epoch_start) + STOP_RESERVE_S > stop_by)
        stopping = out_of_time or (max_epochs_this_call is not None and epochs_done_now + 1 >= max_epochs_this_call)
        # The fast path writes the resumable checkpoint at most every LAST_CKPT_EVERY_S, and where it stops; a best
        # checkpoint newer than it is written with it (below, and after the loop), so that a resume never finds
        # best.pt ahead of the epochs it replays.
        if not fast or stopping or (epoch + 1 < cfg.num_epochs
                                    and time.perf_counter() - last_saved >= LAST_CKPT_EVERY_S):
            save_resumable(epoch)
        epochs_done_now += 1
        if progress:
            print(f"[{cfg.name}] epoch {epoch + 1}/{cfg.num_epochs} {opt_kind} lr {lr:.2e} "
                  f"train {row['train_loss']:.3f}/{row['train_acc']:.3f} val {row['val_loss']:.3f}/{row['val_acc']:.3f} "
                  f"({seconds:.1f}s)")

    if pending_best is not None and status == "ok":  # the fast path's best since its last resumable checkpoint
        save_resumable(history[-1]["epoch"])
    elif pending_best is not None:  # diverged: the weights are no longer those of the history's last epoch
        _save_checkpoint(best_ckpt, pending_best)
    # Test once, for the checkpoint chosen on validation accuracy.
    test = None
    if best["epoch"] >= 0:
        if not best_ckpt.exists():  # deleted while this call trained: no result without its test pass
            raise missing_best_error(best_ckpt, last_ckpt, best["epoch"])
        state = read_checkpoint(best_ckpt, device)
        if state["epoch"] != best["epoch"] or not checkpoint_written_for(state, cfg):
            raise RuntimeError(f"{best_ckpt} holds epoch {state['epoch']} but validation selected epoch "
                               f"{best['epoch']}: delete it and rerun with force=True")
        model.load_state_dict(state["model"])
        test = evaluate(model, test_loader, cfg, device)
        # After every epoch's step, so that any resume's purge_step drops a value from a call that died here.
        writer.add_scalar("test/acc", test["acc"], cfg.num_epochs * steps_per_epoch)
    writer.close()
    conf = test["confusion"] if test else None
    result = {
        "name": cfg.name, "status": status, "message": message, "config": cfg.to_dict(), "model": cfg.model,
        "profile": cfg.profile, "seed": cfg.seed, "num_params": num_params, "data": data_info,
        **environment_info(device),  # its git_commit is the commit when the result is written
        "git_commit_start": commit_at_start,
        # More than one where calls on different machines trained it (resumed): `device` is the last one's.
        **({"devices": devices} if len(devices) > 1 else {}),
        "history": history, "best_val_acc": best["val_acc"] if best["epoch"] >= 0 else None,
        "best_epoch": best["epoch"] if best["epoch"] >= 0 else None,
        "test_acc": test["acc"] if test else None, "test_loss": test["loss"] if test else None,
        "per_class_acc": (conf.diagonal().float() / conf.sum(1).clamp(min=1)).tolist() if conf is not None else None,
        "confusion": conf.tolist() if conf is not None else None,
        "train_seconds": sum(r["seconds"] for r in history),
        "peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "wall_seconds_this_call": time.perf_counter() - run_start,
        "epochs_this_call": epochs_done_now,  # fewer than num_epochs where the run resumed from a checkpoint
        "checkpoint": str(best_ckpt) if best_ckpt.exists() else None,
        **({"fast_path": fast_info} if device.type == "cuda" else {}),
        **({"shared_gpu": sharing} if sharing else {}),  # its epoch times are those of a shared GPU
    }
    if cfg.record_steps:
        atomic_write_json(Path(dirs.results) / f"{cfg.name}.steps.json", steps)
    if weight_hists and any(len(h) > 1 for h in weight_hists):
        atomic_write_json(Path(dirs.results) / f"{cfg.name}.weights.json", weight_hists)
    atomic_write_json(result_path, result)
    last_ckpt.unlink(missing_ok=True)  # finished: the result and the best checkpoint are what remain
    marker.unlink(missing_ok=True)
    return result


def bars_disabled(progress: bool) -> bool:
    """tqdm's `disable` for a progress bar: without progress, or with TQDM_DISABLE set (not 0/false) in the
    environment, read here at each bar (tqdm reads it once, when imported, and only since 4.66). The GPU runner
    sets it: its logs keep the per-epoch lines, not a bar per epoch and lane."""
    return not progress or os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false")


def _train_epoch(model, head, optimizer, loader, cfg, device, epoch, progress) -> dict:
    """One pass over the training loader; per-step metrics stay on the device until the epoch ends."""
    model.train()
    loader.set_epoch(epoch)
    n_steps = len(loader)
    step_loss = torch.zeros(n_steps, device=device)
    step_acc = torch.zeros(n_steps, device=device)
    grad_max = torch.zeros(n_steps, device=device)
    grad_min = torch.zeros(n_steps, device=device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    n = 0
    bar = tqdm(loader, total=n_steps, desc=f"{cfg.name} epoch {epoch + 1}/{cfg.num_epochs}", leave=False,
               mininterval=2.0, disable=bars_disabled(progress))
    whole = model if isinstance(model, StepGraph) else None  # the whole step as one CUDA graph (an experiment)
    for i, batch in enumerate(bar):
        stepped = (whole.step(batch.x, batch.y, batch.y_b, batch.lam, optimizer)
                   if whole is not None and whole.takes(batch.x) else None)
        if stepped is not None:
            loss, acc, g_max, g_min = stepped
            if cfg.record_steps:
                grad_max[i], grad_min[i] = g_max, g_min
        else:
            loss, acc = _eager_step(model, head, optimizer, batch, cfg, device, i, grad_max, grad_min)
        with torch.no_grad():
            bs = batch.y.numel()
            step_loss[i], step_acc[i] = loss.detach(), acc
            loss_sum += loss.detach() * bs
            correct += acc * bs
            n += bs
    return {"step_loss": step_loss, "step_acc": step_acc, "grad_max": grad_max, "grad_min": grad_min,
            "loss_sum": loss_sum, "correct": correct, "n": n}


def _eager_step(model, head, optimizer, batch, cfg, device, i, grad_max, grad_min):
    """One training step, launched op by op (or through the model's own fast route): (loss, accuracy); with
    cfg.record_steps the head's weight gradient's max and min go into grad_max[i], grad_min[i]."""
    with autocast_for(cfg, device):
        out = model(batch.x)
    out = out.float()
    loss = mixed_loss(out, batch.y, batch.y_b, batch.lam, label_smoothing=cfg.label_smoothing)  # MixUp/CutMix
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.record_steps:
        g = head.weight.grad
        grad_max[i], grad_min[i] = g.max(), g.min()
    optimizer.step()
    with torch.no_grad():
        acc = mixed_accuracy(out, batch.y, batch.y_b, batch.lam)
    return loss, acc


def _log_epoch(writer, model, row, step_losses, step_accs, epoch, steps_per_epoch) -> None:
    """TensorBoard: per-step train loss/acc, per-epoch metrics and lr (_log_scalars), parameter histograms
    (_log_histograms).

    Everything is logged against the global training step (epoch-level values at the epoch's last step), so
    the writer's purge_step on resume drops every event of the epochs that are replayed, per-step and
    per-epoch alike (epoch-level values logged at step=epoch would survive the purge and show twice)."""
    _log_scalars(writer, row, step_losses, step_accs, epoch, steps_per_epoch)
    _log_histograms(writer, model, epoch * steps_per_epoch + steps_per_epoch - 1)


def _log_scalars(writer, row, step_losses, step_accs, epoch, steps_per_epoch) -> None:
    """The per-step and per-epoch scalars of _log_epoch."""
    base = epoch * steps_per_epoch
    for i, (l, a) in enumerate(zip(step_losses.tolist(), step_accs.tolist())):
        writer.add_scalar("step/train_loss", l, base + i)
        writer.add_scalar("step/train_acc", a, base + i)
    end = base + steps_per_epoch - 1  # the epoch's last step
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"):
        writer.add_scalar(f"epoch/{key}", row[key], end)
    writer.add_scalar("epoch/epoch", epoch, end)


def _log_histograms(writer, model, step: int) -> None:
    """Every finite parameter's histogram at `step` (the epoch's last): counted on the device on CUDA."""
    if _gpu_fast_path(next(model.parameters()).device):
        _add_param_histograms_on_device(writer, model, step)
        return
    for name, p in model.named_parameters():
        if torch.isfinite(p).all():
            writer.add_histogram(name, p.detach().float().cpu(), step)
