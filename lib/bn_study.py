"""Part 2, the BatchNorm study on VGG-A (STUDY.md section 6, BN_METHODS.md): compute, write files.

A. The original protocol: `run_protocol` trains both networks at the four Adam learning rates
   (lib.train, per-step series in <results>/bn-*.steps.json); `loss_band` turns the per-step losses
   of several runs into a per-step [min, max] band. The band is a proxy across learning rates, not a
   probe of the landscape around one trajectory.
B. The probe of Santurkar et al. (NeurIPS 2018, arXiv 1805.11604, section 3.2): `run_probe` trains
   one network with plain SGD and every `probe_every` steps moves along the current gradient by
   eta = m * lr for each multiplier m, on the same mini-batch, recording the loss landscape
   (min/max of L(w - eta g)), gradient predictiveness (min/max of ||g - g_eta||) and the effective
   beta-smoothness (max of ||g - g_eta|| / ||eta g||). `run_probes` runs both networks with the
   same seed and data order, with the documented lr fallback (`FALLBACK_LR`).
C. `loss_slice`: a filter-normalised 1-D loss slice around a trained model (Li et al., NeurIPS 2018).

Files (all in dirs.results; plots in lib/bn_plots.py read only these):
- bn-<model>-lr<lr>-s<seed>.json / .steps.json   written by lib.train (section A)
- probe-<model>-s<seed>.json                      section B, see `run_probe` for the keys
- slice-<model>-s<seed>.json                      section C, see `run_slices`
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lib.config import NORMS, TrainConfig, get_profile
from lib.experiments import BN_LRS, BN_MODELS, BN_SEED, bn_experiments, bn_name
from lib.paths import OutputDirs
from lib.results import (atomic_write_json, device_name, environment_info, forced_names, read_json,
                         read_json_or_note, refuse_if_reuse_only, reusable_result, say_reused, trained_on)

# The paper's step-size grid: eta = m * lr for m in 0.5, 1.0, ..., 4.0 (0.05 .. 0.4 at lr 0.1).
ETA_MULTIPLIERS = tuple(0.5 * i for i in range(1, 9))
PAPER_PROBE_STEPS = 15_000  # the paper's training length for the probe runs (BN_METHODS.md B; full uses fewer)
PROBE_LR = 0.1
# If VGG-A (no BN) does not train at PROBE_LR, both networks are rerun at FALLBACK_LR (BN_METHODS.md B).
FALLBACK_LR = 0.05
# "Does not train": at step num_steps // 3, the mean training loss of the last tenth of those steps is
# above STUCK_LOSS, or a loss so far was NaN/inf. ln(10) = 2.303 is the loss of a uniform guess over
# 10 classes; 2.2 is clearly below the plateau's noise and clearly above a network that has started.
STUCK_LOSS = 2.2
# A probe run writes its resumable state at most this often (lose at most this much of an interrupted run).
PROBE_CKPT_EVERY_S = 60.0
SLICE_ALPHAS = 51  # points of the 1-D slice in [-1, 1]
LABELS = {"VGG_A": "Standard", "VGG_A_BN": "Standard + BatchNorm"}  # the paper's names


# =========================================================================================== A. protocol

def run_protocol(profile: str, data_source: str, dirs: OutputDirs, force: bool | str | Sequence[str] = False,
                 models: Sequence[str] = BN_MODELS, lrs: Sequence[float] = BN_LRS,
                 progress: bool = True) -> list[dict]:
    """Train both networks at every protocol learning rate (lib.train reseeds each run); return the results.
    `force`: True retrains every run, a run name or a list of them just those (lib.results.forced_names)."""
    from lib.train import train  # imported here: the trainer pulls in tensorboard, which is slow to import

    cfgs = bn_experiments(profile, data_source, models=tuple(models), lrs=tuple(lrs))
    redo = forced_names(force, [c.name for c in cfgs], "the BN protocol")
    return [train(cfg, dirs=dirs, force=cfg.name in redo, progress=progress) for cfg in cfgs]


class Band(NamedTuple):
    """Per-step min/max over runs: steps (T,), lo (T,), hi (T,), num_valid (T,) finite values per step,
    num_ignored = NaN/inf values dropped (steps missing from shorter runs are not counted)."""

    steps: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    num_valid: np.ndarray
    num_ignored: int


def _as_float_array(series) -> np.ndarray:
    """A 1-D float array; None (how JSON stores NaN/inf here) becomes NaN."""
    arr = np.asarray([np.nan if v is None else v for v in series], dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"a per-step series must be a flat list of numbers, got shape {arr.shape}")
    return arr


def loss_band(step_series: Sequence[Sequence[float]]) -> Band:
    """Per-step min and max over runs of different lengths, ignoring NaN/inf (e.g. a diverged run).

    A step that only some runs reach uses those runs; a step where no run has a finite value gets
    NaN for lo and hi and num_valid 0.
    """
    runs = [_as_float_array(s) for s in step_series]
    if not runs:
        raise ValueError("loss_band needs at least one run's per-step series")
    num_steps = max(len(r) for r in runs)
    M = np.full((len(runs), num_steps), np.nan)  # (R, T); NaN pads the shorter runs
    present = np.zeros((len(runs), num_steps), dtype=bool)
    for i, r in enumerate(runs):
        M[i, :len(r)] = r
        present[i, :len(r)] = True
    valid = np.isfinite(M)
    num_ignored = int((present & ~valid).sum())
    num_valid = valid.sum(axis=0)
    lo = np.where(valid, M, np.inf).min(axis=0)
    hi = np.where(valid, M, -np.inf).max(axis=0)
    lo[num_valid == 0] = np.nan
    hi[num_valid == 0] = np.nan
    return Band(np.arange(num_steps), lo, hi, num_valid, num_ignored)


def _protocol_files(dirs: OutputDirs, model: str, lr: float, seed: int = BN_SEED) -> tuple[Path, Path]:
    """(result json, steps json) of one protocol run."""
    name = bn_name(model, lr, seed)
    return Path(dirs.results) / f"{name}.json", Path(dirs.results) / f"{name}.steps.json"


def protocol_steps(dirs: OutputDirs, model: str, lrs: Sequence[float] = BN_LRS, seed: int = BN_SEED,
                   unreadable: list[str] | None = None) -> dict[float, dict]:
    """{lr: steps dict} of the protocol runs of `model` whose steps file exists (missing ones left out). A file that
    cannot be read raises lib.results' clear error, or with `unreadable` (a list) is left out and named there."""
    out = {}
    for lr in lrs:
        path = _protocol_files(dirs, model, lr, seed)[1]
        if path.exists():
            steps = read_json(path) if unreadable is None else read_json_or_note(path, unreadable)
            if steps is not None:
                out[lr] = steps
    return out


# =========================================================================================== B. probe

@dataclass(frozen=True)
class ProbeConfig:
    """One probe run (BN_METHODS.md B): plain SGD training of `model` with a probe every `probe_every` steps."""

    model: str
    profile: str = "full"
    data_source: str = "official"
    num_train: int | None = None  # images of the 45,000-image training split (None = all)
    lr: float = PROBE_LR
    batch_size: int = 128
    num_steps: int = 4000
    probe_every: int = 20  # k: probe at steps 0, k, 2k, ...
    eta_multipliers: tuple[float, ...] = ETA_MULTIPLIERS  # eta = m * lr
    seed: int = BN_SEED
    device: str = "auto"
    precision: str = "fp32"  # always fp32 (TF32 off on CUDA): the probe differences gradients
    init: str = "xavier"  # Xavier-normal weights, zero biases, BN weight 1 / bias 0 ('default' = PyTorch's)
    stuck_loss: float = STUCK_LOSS  # the "does not train" criterion, see STUCK_LOSS
    fallback: bool = True  # apply the lr fallback (run_probes); off where runs are too short to judge

    def __post_init__(self):
        from lib.config import _canonical_source_name

        object.__setattr__(self, "data_source", _canonical_source_name(self.data_source))  # as TrainConfig
        if self.precision != "fp32":
            raise ValueError(f"the probe runs in fp32 only, got precision={self.precision!r}")
        if self.init not in ("xavier", "default"):
            raise ValueError(f"init must be 'xavier' or 'default', got {self.init!r}")
        if self.lr <= 0 or self.batch_size < 1 or self.num_steps < 1 or self.probe_every < 1:
            raise ValueError("lr, batch_size, num_steps and probe_every must be positive")
        if not self.eta_multipliers or any(m <= 0 for m in self.eta_multipliers):
            raise ValueError(f"eta_multipliers must be a non-empty list of positive numbers, "
                             f"got {self.eta_multipliers!r}")
        if self.num_train is not None and self.num_train < self.batch_size:
            raise ValueError(f"num_train={self.num_train} is below batch_size={self.batch_size}: the probe "
                             f"uses full batches only; use more images or a smaller batch")

    @property
    def name(self) -> str:
        """Result name: probe-<model>-s<seed>."""
        return probe_name(self.model, self.seed)

    def result_path(self, dirs: OutputDirs) -> Path:
        """Where this probe run's result lives (probe_path)."""
        return probe_path(dirs, self.model, self.seed)

    @property
    def etas(self) -> list[float]:
        """The absolute step sizes eta = m * lr."""
        return [round(m * self.lr, 12) for m in self.eta_multipliers]  # 0.3, not 0.30000000000000004

    def to_dict(self) -> dict:
        """Plain-JSON view (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ProbeConfig":
        """Inverse of to_dict; unknown keys are an error so that stale results are not misread."""
        d = dict(d)
        d["eta_multipliers"] = tuple(d.get("eta_multipliers", ETA_MULTIPLIERS))
        return cls(**d)

    def replace(self, **changes) -> "ProbeConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


# Probe sizes per profile (BN_METHODS.md B).
# smoke: CI-sized (256 images, batch 64, 6 steps, 3 probes, K=3); numbers mean nothing.
# quick: 300 steps at batch 128, the full profile's K=8 step sizes (0.5-4 x lr) every 15 steps = 460 VGG-A
#   forward+backward passes per network. Until 2026-11-29 quick probed K=4 (1-4 x lr, 380 passes): that left out
#   0.5 x lr, where the largest gradient change per step size sits in most probes, and the full run's probes
#   reduced to those four step sizes turn "about the same" beta-smoothness into "about 25% smaller with BN": a
#   bias of the grid, not of BN. One pass costs about 1.8 s on an idle 2-core CPU (4-6 s on a busy one). VGG_A
#   without BN at lr 0.1 leaves the ln(10) plateau only after ~80-100 steps (the first
#   quick runs, 100 steps, ended at loss 2.22 with every probe on the plateau, which measured a network that
#   had not started, not the paper's claim; the report now says where a network leaves the plateau and
#   compares the probes after it). The stuck check at step 100 cannot tell "does not train" from "has not
#   started" this early, so the lr fallback stays off.
# full: the paper's k=20, K=8 on all 45,000 training images for 4,000 steps (about 11 epochs; the
#   paper trains 15,000). Estimate for one H100 in strict fp32: ~117 GFLOP per pass, ~5 ms, 5,600
#   passes per network, i.e. well under a minute each, under 3 minutes for both even with the fallback.
PROBE_SIZES = {
    "smoke": dict(num_train=256, batch_size=64, num_steps=6, probe_every=2, eta_multipliers=(1.0, 2.0, 4.0),
                  fallback=False),
    "quick": dict(num_train=10_000, batch_size=128, num_steps=300, probe_every=15,
                  eta_multipliers=ETA_MULTIPLIERS, fallback=False),
    "full": dict(num_train=None, batch_size=128, num_steps=4000, probe_every=20, eta_multipliers=ETA_MULTIPLIERS),
}


def probe_configs(profile: str, data_source: str, seed: int = BN_SEED, **overrides) -> list[ProbeConfig]:
    """The two probe configs (VGG_A, VGG_A_BN) of `profile`, identical except for the model."""
    get_profile(profile)  # clear error for an unknown profile
    sizes = dict(PROBE_SIZES[profile], **overrides)
    return [ProbeConfig(model=m, profile=profile, data_source=data_source, seed=seed, **sizes) for m in BN_MODELS]


@contextlib.contextmanager
def _strict_fp32(device: torch.device):
    """Turn TF32 off on CUDA for the duration (the probe's gradient differences need true fp32)."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _global_norm(tensors) -> torch.Tensor:
    """sqrt(sum of squares) over a list of tensors, as a float64 0-d tensor (no host sync). Summed in float64: in
    float32 the norm of a diverging network's gradient (values of 1e20) overflows to inf, which the probe's
    nan-aware maxima would then leave out exactly where the landscape is least smooth."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t, dtype=torch.float64) for t in tensors]))


def probe_step(model: nn.Module, params: list[torch.Tensor], grads: Sequence[torch.Tensor],
               x: torch.Tensor, y: torch.Tensor, etas: Sequence[float],
               loss_fn: Callable = F.cross_entropy) -> dict[str, torch.Tensor]:
    """Move along -grads by each eta on the batch (x, y) and measure; leave the model exactly as it was.

    `grads` is the gradient g of loss_fn(model(x), y) at the current weights w (in train mode).
    For each eta: w_eta = w - eta * g, loss L(w_eta) and g_eta = grad L(w_eta) on the same batch in
    train mode (torch.autograd.grad, so .grad and any optimiser state are untouched). Afterwards the
    parameters are copied back from a saved copy and every buffer (BN running statistics and
    num_batches_tracked) is restored, bitwise. Returns tensors on the model's device (no host sync):
    'loss' (K,) L(w_eta), 'gdiff' (K,) ||g - g_eta||, 'beta' (K,) ||g - g_eta|| / ||eta g||,
    'grad_norm' () ||g||.
    """
    was_training = model.training
    saved_params = [p.detach().clone() for p in params]
    saved_buffers = [b.detach().clone() for b in model.buffers()]
    grads = [g.detach() for g in grads]
    grad_norm = _global_norm(grads)
    losses, gdiffs = [], []
    model.train()  # the training loss uses batch statistics, so the probe does too
    try:
        for eta in etas:
            with torch.no_grad():
                for p, w, g in zip(params, saved_params, grads):
                    p.copy_(w - eta * g)
            loss_eta = loss_fn(model(x), y)
            g_eta = torch.autograd.grad(loss_eta, params)
            losses.append(loss_eta.detach().float())
            gdiffs.append(_global_norm([g - ge for g, ge in zip(grads, g_eta)]))
    finally:
        with torch.no_grad():  # restore exactly: copy back, never add eta * g back
            for p, w in zip(params, saved_params):
                p.copy_(w)
            for b, saved in zip(model.buffers(), saved_buffers):
                b.copy_(saved)
        model.train(was_training)
    loss = torch.stack(losses)
    gdiff = torch.stack(gdiffs)
    step_norms = torch.tensor(list(etas), dtype=gdiff.dtype, device=gdiff.device) * grad_norm
    return {"loss": loss, "gdiff": gdiff, "beta": gdiff / step_norms, "grad_norm": grad_norm}


def nan_minmax(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Min and max over the last dim ignoring NaN/inf, and the count of non-finite values; NaN where none is finite."""
    finite = torch.isfinite(values)
    lo = torch.where(finite, values, torch.full_like(values, math.inf)).amin(-1)
    hi = torch.where(finite, values, torch.full_like(values, -math.inf)).amax(-1)
    none = ~finite.any(-1)
    nan = torch.full_like(lo, math.nan)
    return torch.where(none, nan, lo), torch.where(none, nan, hi), (~finite).sum(-1)


def summarize_probes(records: list[dict[str, torch.Tensor]]) -> dict[str, list]:
    """Per-probe summary (the paper's three quantities) from probe_step records, as plain lists."""
    loss = torch.stack([r["loss"] for r in records])  # (P, K)
    gdiff = torch.stack([r["gdiff"] for r in records])  # (P, K)
    beta = torch.stack([r["beta"] for r in records])  # (P, K)
    loss_min, loss_max, bad_loss = nan_minmax(loss)
    gpred_min, gpred_max, bad_gdiff = nan_minmax(gdiff)
    _, beta_max, _ = nan_minmax(beta)
    bad_beta = (~torch.isfinite(beta) & torch.isfinite(gdiff)).sum(-1)  # e.g. a zero gradient; not counted twice
    out = {"loss_min": loss_min, "loss_max": loss_max, "gpred_min": gpred_min, "gpred_max": gpred_max,
           "beta": beta_max, "nonfinite": bad_loss + bad_gdiff + bad_beta,
           "grad_norm": torch.stack([r["grad_norm"] for r in records]),
           "loss_eta": loss, "gdiff_eta": gdiff}
    return {k: v.cpu().tolist() for k, v in out.items()}  # the one host transfer of the run


def stuck_check(train_loss: Sequence[float], num_steps: int, stuck_loss: float = STUCK_LOSS) -> dict:
    """The "does not train" criterion at step num_steps // 3 (see STUCK_LOSS); needs that many losses."""
    check = max(1, num_steps // 3)
    losses = _as_float_array(train_loss)
    if len(losses) < check:
        raise ValueError(f"stuck_check needs the first {check} step losses, got {len(losses)}")
    window = losses[check - max(1, check // 10):check]
    finite = bool(np.isfinite(losses[:check]).all())
    mean = float(window.mean()) if finite else math.nan
    return {"step": check, "window": len(window), "mean_loss": mean, "threshold": stuck_loss,
            "stuck": (not finite) or mean > stuck_loss}


def plateau_exit_step(train_loss: Sequence[float], threshold: float = STUCK_LOSS, window: int = 10) -> int | None:
    """The first step at which the mean training loss of the last `window` steps is below `threshold` (the
    network has left the ln(10) plateau of a uniform guess); None if it never is."""
    losses = _as_float_array(train_loss)
    for end in range(window, len(losses) + 1):
        chunk = losses[end - window:end]
        if np.isfinite(chunk).all() and chunk.mean() < threshold:
            return end - 1
    return None


def probe_data(cfg: ProbeConfig, device: torch.device):
    """(train_loader, data info): the training split (subset) as full shuffled batches, Part 2 normalisation."""
    from lib.data import load_cifar10, study_split, subset, to_device_tensors
    from lib.loader import BatchLoader

    data = load_cifar10(cfg.data_source)
    X_tr, y_tr, _, _ = study_split(data)  # never the validation images
    X_tr, y_tr = subset(X_tr, y_tr, cfg.num_train)
    if len(y_tr) < cfg.batch_size:
        raise ValueError(f"the data source has only {len(y_tr)} training images, fewer than one batch of "
                         f"{cfg.batch_size}: use a larger copy or a smaller batch_size")
    mean, std = NORMS["half"]
    # drop_last: every step sees a full batch (BN statistics of a ragged last batch would be noisier).
    loader = BatchLoader(*to_device_tensors(X_tr, y_tr, device), cfg.batch_size, shuffle=True, augment=False,
                         mean=mean, std=std, seed=cfg.seed, drop_last=True, channels_last=device.type == "cuda")
    return loader, dict(data.info, num_train_used=len(y_tr))


def build_probe_model(cfg: ProbeConfig, device: torch.device) -> nn.Module:
    """The network of `cfg`, seeded and initialised on the CPU (same weights on every device), then moved."""
    from lib.models import build, init_xavier_

    torch.manual_seed(cfg.seed)
    model = build(cfg.model)
    if cfg.init == "xavier":
        init_xavier_(model)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def probe_checkpoint_path(dirs: OutputDirs, model: str, seed: int) -> Path:
    """Where an unfinished probe run of `model` with `seed` keeps its resumable state:
    <checkpoints>/probe-<model>-s<seed>.last.pt (deleted once its result is written)."""
    return Path(dirs.checkpoints) / f"{probe_name(model, seed)}.last.pt"


def _probe_state_of(state: dict, *cfgs: ProbeConfig) -> bool:
    """Whether a checkpoint's `state` is the resumable state of a probe run of one of `cfgs`."""
    return state.get("kind") == "probe" and state.get("config") in [c.to_dict() for c in cfgs]


def probe_resume_state(cfg: ProbeConfig, checkpoint: Path | None, progress: bool = True,
                       mmap: bool = False) -> dict | None:
    """The resumable state of `cfg`'s probe run in `checkpoint`, or None (none there, or one of another config:
    that one is replaced, with a note). A file that cannot be read is lib.train.read_checkpoint's clear error.
    mmap: the tensors are memory-mapped, not read (for a look at the state before a run reads it whole)."""
    from lib.train import read_checkpoint

    if checkpoint is None or not Path(checkpoint).exists():
        return None
    state = read_checkpoint(checkpoint, mmap=mmap)
    if _probe_state_of(state, cfg):
        return state
    if progress:
        print(f"note: {checkpoint} was written by another configuration of {cfg.name} (or older code): not resumed; "
              f"this run starts at step 0 and replaces it")
    return None


def probe_resumable_steps(cfg: ProbeConfig, dirs: OutputDirs) -> tuple[int, str | None]:
    """(steps of cfg's probe run, at its lr or at the fallback lr, that a resume from its checkpoint in `dirs` would
    not repeat, None); (0, None) without one of this config; (0, why) for one that cannot be read (read_checkpoint's error, which says what to
    do). The checkpoint is memory-mapped, not read."""
    from lib.train import read_checkpoint

    path = probe_checkpoint_path(dirs, cfg.model, cfg.seed)
    if not path.exists():
        return 0, None
    try:
        state = read_checkpoint(path, mmap=True)
    except ValueError as err:
        return 0, str(err)
    return (state["step"] if _probe_state_of(state, cfg, cfg.replace(lr=FALLBACK_LR)) else 0), None


def _train_with_probes(cfg: ProbeConfig, abort_if_stuck: bool = False, progress: bool = True,
                       checkpoint: Path | None = None, lr_fallback: dict | None = None) -> dict:
    """Train `cfg.model` with plain SGD, probing every cfg.probe_every steps; return the result (not written).

    With abort_if_stuck the run stops at the stuck check when the criterion fires and returns
    status 'stuck' (the caller then reruns at FALLBACK_LR). With `checkpoint` the run's state is written there
    at most every PROBE_CKPT_EVERY_S (after a whole step), and a run of the same config found there goes on from
    its step: the weights, losses, probes and the position in the data order are restored, so a resumed run ends
    with the same numbers as an uninterrupted one (VGG-A draws no random numbers after its initialisation). The
    caller deletes the checkpoint once the result is written. `lr_fallback` (why a fallback run's lr was lowered)
    goes into the result and the checkpoint, so that run_probes can go on with an interrupted fallback run.
    """
    from lib.train import _save_checkpoint, bars_disabled, resolve_device

    device = resolve_device(cfg.device)
    loader, data_info = probe_data(cfg, device)
    model = build_probe_model(cfg, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=0.0, weight_decay=0.0)  # no state to keep
    etas = cfg.etas
    check_step = max(1, cfg.num_steps // 3)
    train_loss = torch.full((cfg.num_steps,), math.nan, device=device)
    # Data-order fingerprint per step: a label checksum and the batch's pixel sum (float64), so two
    # runs can show that they saw identical batches.
    fingerprint = torch.zeros(cfg.num_steps, 2, dtype=torch.float64, device=device)
    label_weights = torch.arange(1, cfg.batch_size + 1, device=device, dtype=torch.float64)
    records, probe_steps, check = [], [], None
    status = "ok"
    step, seconds_before, resumed_at = 0, 0.0, []
    here = device_name(device)
    devices = [here]
    if (state := probe_resume_state(cfg, checkpoint, progress)) is not None:
        model.load_state_dict(state["model"])
        step, seconds_before, check = state["step"], state["seconds"], state["stuck_check"]
        train_loss[:step] = state["train_loss"].to(device)
        fingerprint[:step] = state["fingerprint"].to(device)
        records = [{k: v.to(device) for k, v in r.items()} for r in state["records"]]
        probe_steps, resumed_at = list(state["probe_steps"]), list(state["resumed_at"]) + [step]
        devices = list(state["devices"]) + ([here] if here not in state["devices"] else [])
        if progress:
            print(f"[{cfg.name}] resuming at step {step} of {cfg.num_steps} ({checkpoint})")

    def save_state() -> None:
        _save_checkpoint(checkpoint, {
            "kind": "probe", "config": cfg.to_dict(), "model": model.state_dict(), "step": step,
            "seconds": seconds_before + time.perf_counter() - t0, "stuck_check": check,
            "train_loss": train_loss[:step].cpu(), "fingerprint": fingerprint[:step].cpu(),
            "records": [{k: v.cpu() for k, v in r.items()} for r in records], "probe_steps": probe_steps,
            "resumed_at": resumed_at, "devices": devices, "lr_fallback": lr_fallback})

    t0 = last_saved = time.perf_counter()
    # Full batches only (drop_last), so step s is batch s % len(loader) of epoch s // len(loader).
    epoch, skip = divmod(step, len(loader))
    model.train()
    bar = tqdm(total=cfg.num_steps, initial=step, desc=f"{cfg.name} lr {cfg.lr:g}", leave=False, mininterval=2.0,
               disable=bars_disabled(progress))
    with _strict_fp32(device):
        while step < cfg.num_steps:
            loader.set_epoch(epoch)
            for b, batch in enumerate(loader):
                if b < skip:  # a resumed epoch: these batches were trained on before the interruption
                    continue
                x, y = batch.x, batch.y
                loss = F.cross_entropy(model(x), y)
                grads = torch.autograd.grad(loss, params)
                train_loss[step] = loss.detach()
                fingerprint[step, 0] = (y.double() * label_weights).sum()
                fingerprint[step, 1] = x.double().sum()
                if step % cfg.probe_every == 0:
                    records.append(probe_step(model, params, grads, x, y, etas))
                    probe_steps.append(step)
                for p, g in zip(params, grads):
                    p.grad = g  # the real step uses the same g that the probe used
                optimizer.step()
                step += 1
                bar.update(1)
                if step == check_step:  # the one mid-run host sync besides checkpoint writes
                    check = stuck_check(train_loss[:check_step].cpu().tolist(), cfg.num_steps, cfg.stuck_loss)
                    if progress:
                        print(f"[{cfg.name}] lr {cfg.lr:g}: mean loss {check['mean_loss']:.3f} at step "
                              f"{check_step} ({'stuck' if check['stuck'] else 'training'})")
                    if check["stuck"] and abort_if_stuck:
                        status = "stuck"
                        break
                if step >= cfg.num_steps:
                    break
                if checkpoint is not None and time.perf_counter() - last_saved >= PROBE_CKPT_EVERY_S:
                    save_state()
                    last_saved = time.perf_counter()
            if status == "stuck":
                break
            epoch, skip = epoch + 1, 0
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = seconds_before + time.perf_counter() - t0
    losses = train_loss[:step].cpu()
    fp = fingerprint[:step].cpu().numpy()
    result = {
        "name": cfg.name, "status": status, "config": cfg.to_dict(), "model": cfg.model,
        "label": LABELS.get(cfg.model, cfg.model), "lr": cfg.lr, "etas": etas, "lr_fallback": lr_fallback,
        "num_params": sum(p.numel() for p in model.parameters()), "data": data_info,
        "environment": environment_info(device), **({"devices": devices} if len(devices) > 1 else {}),
        "resumed_at_steps": resumed_at, "seconds": seconds, "steps_done": step, "epochs": epoch,
        "seconds_per_step": seconds / max(step, 1), "stuck_check": check,
        "train_loss": losses.tolist(), "train_nonfinite": int((~torch.isfinite(losses)).sum()),
        "data_order_sha256": hashlib.sha256(fp.tobytes()).hexdigest(),
        "probes": {"step": probe_steps, **summarize_probes(records)},
    }
    result["probe_nonfinite"] = int(sum(result["probes"]["nonfinite"]))
    if progress:
        print(f"[{cfg.name}] {step} steps, {len(probe_steps)} probes, {seconds:.1f}s "
              f"({result['environment']['device']}); final loss {float(losses[-1]):.3f}")
    return result


def probe_name(model: str, seed: int) -> str:
    """Name of the probe run of `model` with `seed` (its result file's stem): probe-<model>-s<seed>."""
    return f"probe-{model}-s{seed}"


def probe_path(dirs: OutputDirs, model: str, seed: int) -> Path:
    """Where the probe run of `model` with `seed` keeps its result: <results>/probe-<model>-s<seed>.json."""
    return Path(dirs.results) / f"{probe_name(model, seed)}.json"


def slice_path(dirs: OutputDirs, model: str, seed: int) -> Path:
    """Where the loss slice around the BN protocol's `model` run with `seed` lives: slice-<model>-s<seed>.json."""
    return Path(dirs.results) / f"slice-{model}-s{seed}.json"


def run_probe(cfg: ProbeConfig, dirs: OutputDirs, force: bool = False, progress: bool = True,
              lr_fallback: dict | None = None, resume: bool | None = None) -> dict:
    """Train with probes as `cfg` says and write <results>/probe-<model>-s<seed>.json; reuse a matching file.

    An interrupted run of the same config goes on from its checkpoint (probe_checkpoint_path) unless `resume` is
    False (default: not `force`, which starts afresh).

    Keys of the result: name, status, config, model, label, lr, etas, lr_fallback (None, or why the
    lr was lowered), num_params, data, environment, devices (only for a run resumed on another machine: every device
    that trained it), resumed_at_steps, seconds, steps_done, epochs, stuck_check, train_loss
    (per step), train_nonfinite, data_order_sha256, probe_nonfinite and probes = {step, loss_min,
    loss_max, gpred_min, gpred_max, beta, nonfinite, grad_norm (per probe), loss_eta, gdiff_eta
    (per probe and eta, for the paper's Fig. 11a)}. NaN/inf are stored as null.
    """
    path = cfg.result_path(dirs)
    if not force and (found := reusable_result(path, cfg.to_dict(), ProbeConfig)) is not None:
        say_reused(path.stem)
        return found
    refuse_if_reuse_only(f"the probe run {path.stem}", path.parent, forced=force)
    result = _train_with_probes(cfg, progress=progress, lr_fallback=lr_fallback,
                                checkpoint=_probe_checkpoint(cfg, dirs, resume=not force if resume is None else resume))
    return _write_probe(cfg, dirs, result)


def _probe_checkpoint(cfg: ProbeConfig, dirs: OutputDirs, resume: bool) -> Path:
    """cfg's probe checkpoint path in `dirs`, deleted first unless `resume` (a forced run starts afresh)."""
    path = probe_checkpoint_path(dirs, cfg.model, cfg.seed)
    if not resume:
        path.unlink(missing_ok=True)
    return path


def _write_probe(cfg: ProbeConfig, dirs: OutputDirs, result: dict) -> dict:
    """Write a finished probe run's result, then delete its checkpoint; return what a later reuse reads (NaN as
    None), so that both paths look the same."""
    path = cfg.result_path(dirs)
    atomic_write_json(path, result)
    probe_checkpoint_path(dirs, cfg.model, cfg.seed).unlink(missing_ok=True)
    return read_json(path)


def probe_done(cfg: ProbeConfig, dirs: OutputDirs) -> bool:
    """Whether the probe run `cfg` has a finished result in `dirs`, at its lr or at the fallback lr both networks
    move to when the plain one does not train (run_probes would reuse it)."""
    return any(reusable_result(cfg.result_path(dirs), c.to_dict(), ProbeConfig) is not None
               for c in (cfg, cfg.replace(lr=FALLBACK_LR)))


def run_probes(profile: str, data_source: str, dirs: OutputDirs, force: bool = False, progress: bool = True,
               configs: Sequence[ProbeConfig] | None = None) -> list[dict]:
    """Probe both networks (VGG_A first) with the same seed and data; fall back to FALLBACK_LR for both
    when VGG_A does not train at PROBE_LR (see STUCK_LOSS). Returns [VGG_A result, VGG_A_BN result]."""
    configs = list(configs) if configs is not None else probe_configs(profile, data_source)
    plain = next((c for c in configs if c.model == "VGG_A"), configs[0])
    fallback = [c.replace(lr=FALLBACK_LR) for c in configs]
    if not force:
        found = [reusable_result(c.result_path(dirs), c.to_dict(), ProbeConfig) for c in configs]
        found_fb = [reusable_result(c.result_path(dirs), c.to_dict(), ProbeConfig) for c in fallback]
        if all(r is not None and r.get("lr_fallback") for r in found_fb):
            say_reused(*(c.result_path(dirs).stem for c in fallback))
            return found_fb  # an earlier call already fell back
        if all(r is not None for r in found):
            say_reused(*(c.result_path(dirs).stem for c in configs))
            return found
        if found[configs.index(plain)] is None and found_fb[configs.index(plain)] is not None:
            # VGG_A fell back earlier but the BN run is missing: finish the fallback pair.
            return [run_probe(c, dirs, force, progress, found_fb[configs.index(plain)]["lr_fallback"])
                    for c in fallback]
    first = reusable_result(plain.result_path(dirs), plain.to_dict(), ProbeConfig) if not force else None
    plain_fb = fallback[configs.index(plain)]
    if first is None and not force and plain.lr != FALLBACK_LR and (state := probe_resume_state(
            plain_fb, probe_checkpoint_path(dirs, plain.model, plain.seed), progress=False, mmap=True)) is not None \
            and state.get("lr_fallback"):
        # VGG_A's fallback run was interrupted: go on with the fallback pair (the checkpoint keeps why).
        refuse_if_reuse_only(f"the probe run {plain.result_path(dirs).stem}", dirs.results)
        return [run_probe(c, dirs, True, progress, state["lr_fallback"], resume=True) for c in fallback]
    if first is None:
        refuse_if_reuse_only(f"the probe run {plain.result_path(dirs).stem}", dirs.results, forced=force)
        first = _train_with_probes(plain, abort_if_stuck=plain.fallback and plain.lr != FALLBACK_LR,
                                   progress=progress, checkpoint=_probe_checkpoint(plain, dirs, resume=not force))
        if first["status"] == "stuck":
            _probe_checkpoint(plain, dirs, resume=False)  # its steps at this lr are of no further use
            why = {"from_lr": plain.lr, "to_lr": FALLBACK_LR, "stuck_check": first["stuck_check"],
                   "train_loss_until_check": first["train_loss"],
                   "rule": f"VGG_A's mean training loss over the last tenth of the first third of the steps "
                           f"was above {plain.stuck_loss} (or non-finite): rerun both networks at "
                           f"{FALLBACK_LR}, step sizes eta = m * lr scaled with it"}
            if progress:
                print(f"[probe] VGG_A does not train at lr {plain.lr:g}: both networks rerun at {FALLBACK_LR:g}")
            return [run_probe(c, dirs, True, progress, why, resume=not force) for c in fallback]
        first = _write_probe(plain, dirs, first)
    return [first if c is plain else run_probe(c, dirs, force, progress) for c in configs]


# =========================================================================================== C. 1-D slice

def filter_normalized_direction(model: nn.Module, generator: torch.Generator) -> list[torch.Tensor]:
    """A Gaussian direction shaped like the parameters, each filter rescaled to its weights' filter norm.

    Filters are the slices along dim 0 (a conv's output channel, the weights into one Linear neuron);
    1-D parameters (biases, BN weight and bias) get a zero direction (Li et al., section 4).
    """
    direction = []
    for p in model.parameters():
        if p.dim() <= 1:
            direction.append(torch.zeros_like(p))
            continue
        d = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        d_norm = d.flatten(1).norm(dim=1).clamp_min(1e-12)  # (C_out,)
        p_norm = p.detach().flatten(1).norm(dim=1)  # (C_out,)
        direction.append(d * (p_norm / d_norm).view(-1, *([1] * (p.dim() - 1))))
    return direction


@torch.no_grad()
def loss_slice(model: nn.Module, X: torch.Tensor, y: torch.Tensor, alphas: Sequence[float] | None = None,
               seed: int = 0, batch_size: int = 500) -> dict:
    """Loss (eval mode) at theta + alpha * d for a filter-normalised direction d; weights restored after.

    X: normalised float images (N, 3, 32, 32), y: (N,) labels, on the model's device. Returns
    {'alpha': [...], 'loss': [...], 'acc': [...]}.
    """
    alphas = list(np.linspace(-1.0, 1.0, SLICE_ALPHAS)) if alphas is None else list(alphas)
    direction = filter_normalized_direction(model, torch.Generator().manual_seed(seed))
    params = list(model.parameters())
    saved = [p.detach().clone() for p in params]
    was_training = model.training
    model.eval()
    losses, accs = [], []
    try:
        for alpha in alphas:
            for p, w, d in zip(params, saved, direction):
                p.copy_(w + alpha * d)
            loss_sum = torch.zeros((), dtype=torch.float64, device=X.device)
            correct = torch.zeros((), dtype=torch.float64, device=X.device)
            for i in range(0, len(y), batch_size):
                out = model(X[i:i + batch_size]).float()
                loss_sum += F.cross_entropy(out, y[i:i + batch_size], reduction="sum").double()
                correct += (out.argmax(1) == y[i:i + batch_size]).sum()
            losses.append(loss_sum / len(y))
            accs.append(correct / len(y))
    finally:
        for p, w in zip(params, saved):
            p.copy_(w)
        model.train(was_training)
    return {"alpha": [float(a) for a in alphas], "loss": torch.stack(losses).cpu().tolist(),
            "acc": torch.stack(accs).cpu().tolist()}


SLICE_IMAGES = {"smoke": 64, "quick": 256, "full": 2000}  # fixed training subset the slice is evaluated on


def slice_config(profile: str, data_source: str, dirs: OutputDirs, model_name: str, lr: float = 1e-3,
                 seed: int = BN_SEED, num_images: int | None = None) -> dict | None:
    """The config a loss slice of `model_name` records (its file is reused when they are equal): the protocol run
    at `lr` it starts from, that run's selected epoch and test loss (which weights: a retraining that selects the
    same epoch has other weights, told apart by their test loss), the images and step sizes; None while the run has
    no result."""
    name = bn_name(model_name, lr, seed)
    run_path = Path(dirs.results) / f"{name}.json"
    if not run_path.exists():
        return None
    run = read_json(run_path)
    return {"model": model_name, "run": name, "checkpoint_epoch": run.get("best_epoch"),
            "run_test_loss": run.get("test_loss"), "num_images": num_images or SLICE_IMAGES[profile],
            "alphas": SLICE_ALPHAS, "seed": seed, "data_source": data_source}


def slices_done(profile: str, data_source: str, dirs: OutputDirs, lr: float = 1e-3, seed: int = BN_SEED) -> bool:
    """Whether both networks' loss slices in `dirs` match the protocol runs they start from (their selected epoch)
    and the profile (run_slices would reuse them)."""
    return all((cfg := slice_config(profile, data_source, dirs, m, lr, seed)) is not None
               and reusable_result(slice_path(dirs, m, seed), cfg) is not None for m in BN_MODELS)


def run_slices(profile: str, data_source: str, dirs: OutputDirs, force: bool = False, lr: float = 1e-3,
               seed: int = BN_SEED, num_images: int | None = None, device: str = "auto") -> list[dict]:
    """1-D slices around the protocol's best checkpoints at `lr` (both networks); writes slice-<model>-s<seed>.json."""
    from lib.data import load_cifar10, study_split, subset, to_device_tensors
    from lib.models import build
    from lib.train import checkpoint_written_for, not_the_selected_weights, read_checkpoint, resolve_device

    dev = resolve_device(device)
    num_images = num_images or SLICE_IMAGES[profile]
    results = []
    for model_name in BN_MODELS:
        name = bn_name(model_name, lr, seed)
        run_path = Path(dirs.results) / f"{name}.json"
        if not run_path.exists():
            raise FileNotFoundError(f"the loss slices start from the BN protocol's best checkpoints at lr {lr:g}, and "
                                    f"{run_path} does not exist: train the protocol first (python -m lib run "
                                    f"--profile {profile} --part2, with the same --data and --publish)")
        run = read_json(run_path)
        config = slice_config(profile, data_source, dirs, model_name, lr, seed, num_images)
        path = slice_path(dirs, model_name, seed)
        if not force and (found := reusable_result(path, config)) is not None:
            say_reused(path.stem)
            results.append(found)
            continue
        refuse_if_reuse_only(f"the loss slice {path.stem}", path.parent, forced=force)
        # The recorded path, then this folder's (a checkout moved, or results copied with their checkpoints): the
        # first that holds the weights of the result's selected epoch.
        paths = list(dict.fromkeys(str(c) for c in (run.get("checkpoint"), Path(dirs.checkpoints) / f"{name}.pt")
                                   if c))
        found = [c for c in paths if Path(c).is_file()]
        if not found:
            pair = " ".join(bn_name(m, lr, seed) for m in BN_MODELS)
            raise FileNotFoundError(f"the checkpoint of {name} ({' or '.join(paths)}) is missing (git keeps results, "
                                    f"not weights): retrain the pair (python -m lib run --profile {profile} --part2 "
                                    f"--force --only {pair}, with the same --data and --publish) before the slices")
        problems = []
        for ckpt in found:
            state = read_checkpoint(ckpt)
            same_run = checkpoint_written_for(state, TrainConfig.from_dict(run["config"]))
            if not same_run or state.get("epoch") != run.get("best_epoch"):
                # e.g. the weights of a retraining that was stopped part-way, next to the older finished result
                problems.append(f"the checkpoint {ckpt} holds epoch {state.get('epoch')} of "
                                f"{'this' if same_run else 'another'} run, but {name}'s result selected epoch "
                                f"{run.get('best_epoch')}")
            elif (why := not_the_selected_weights(state, run)) is not None:
                # the same epoch of a retraining that did not reproduce the result (e.g. one merged from elsewhere)
                problems.append(f"the checkpoint {ckpt} {why}, so it is not the weights of {name}'s result")
            else:
                break
        else:
            raise ValueError(f"{'; '.join(problems)}: retrain the pair (python -m lib run --part2 --force --only "
                             f"{name}) before the slices")
        X_tr, y_tr, _, _ = study_split(load_cifar10(data_source))
        X_tr, y_tr = subset(X_tr, y_tr, num_images)
        X, y = to_device_tensors(X_tr, y_tr, dev)
        mean, std = NORMS["half"]
        mean_t = torch.tensor(mean, device=dev).view(1, 3, 1, 1)
        std_t = torch.tensor(std, device=dev).view(1, 3, 1, 1)
        X = (X.float() / 255 - mean_t) / std_t
        model = build(model_name)
        model.load_state_dict(state["model"])
        model = model.to(dev)
        t0 = time.perf_counter()
        with _strict_fp32(dev):  # as the probes: no TF32 left on by a training run in this process
            out = loss_slice(model, X, y, seed=seed)
        result = {"name": path.stem, "config": config, "label": LABELS[model_name],
                  "environment": environment_info(dev), "seconds": time.perf_counter() - t0, **out}
        atomic_write_json(path, result)
        results.append(read_json(path))
    return results


# =========================================================================================== study + summary

def run_bn_study(profile: str, data_source: str, dirs: OutputDirs, force: bool | str | Sequence[str] = False,
                 progress: bool = True, lrs: Sequence[float] = BN_LRS, probe_overrides: dict | None = None,
                 slices: bool = True) -> dict:
    """All of Part 2's compute: the protocol (A), the probes (B) and the slices (C); returns bn_summary(dirs).
    `force`: True recomputes everything; an experiment name or a list of them just those (a probe run or a slice
    named recomputes its pair: both networks see the same data, or start from the same protocol pair; a protocol
    run at lr 1e-3 also recomputes the slices, which start from its checkpoint)."""
    protocol = [c.name for c in bn_experiments(profile, data_source, lrs=tuple(lrs))]
    configs = probe_configs(profile, data_source, **(probe_overrides or {}))
    probes = [c.result_path(dirs).stem for c in configs]
    cuts = [slice_path(dirs, m, BN_SEED).stem for m in BN_MODELS] if slices and 1e-3 in lrs else []
    redo = forced_names(force, protocol + probes + cuts, "Part 2")
    run_protocol(profile, data_source, dirs, force=sorted(redo.intersection(protocol)), lrs=lrs, progress=progress)
    run_probes(profile, data_source, dirs, force=bool(redo.intersection(probes)), progress=progress, configs=configs)
    if cuts:  # a slice named, or a retrained run it starts from (the lr-1e-3 pair): both slices again
        pair = {bn_name(m, 1e-3, BN_SEED) for m in BN_MODELS}
        run_slices(profile, data_source, dirs, force=bool(redo & (set(cuts) | pair)))
    return bn_summary(dirs, lrs=lrs)


def _finite_stats(values) -> dict | None:
    """min / max / mean / median of the finite values (None when there are none)."""
    v = _as_float_array(values)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    return {"min": float(v.min()), "max": float(v.max()), "mean": float(v.mean()), "median": float(np.median(v))}


def bn_summary(dirs: OutputDirs, lrs: Sequence[float] = BN_LRS, seed: int = BN_SEED) -> dict:
    """The numbers the report needs, read from the result files (a missing file leaves its entry None; one that
    cannot be read too, and 'unreadable' names it and why)."""
    summary: dict = {"protocol": {}, "probe": {}, "slice": {}, "missing": [], "unreadable": []}
    unreadable = summary["unreadable"]
    for model in BN_MODELS:
        entry: dict = {"label": LABELS[model], "best_val_acc": {}, "test_acc": {}, "status": {}}
        for lr in lrs:
            path, _ = _protocol_files(dirs, model, lr, seed)
            if not path.exists():
                summary["missing"].append(path.name)
                continue
            if (run := read_json_or_note(path, unreadable)) is None:
                entry.setdefault("unreadable", []).append(f"{lr:g}")  # its table cell says so
                continue
            entry["best_val_acc"][f"{lr:g}"] = run.get("best_val_acc")
            entry["test_acc"][f"{lr:g}"] = run.get("test_acc")
            entry["status"][f"{lr:g}"] = run.get("status")
            entry["train_seconds"] = entry.get("train_seconds", 0.0) + (run.get("train_seconds") or 0.0)
            cfg = run.get("config") or {}
            entry.update(profile=run.get("profile"), batch_size=cfg.get("batch_size"),
                         num_train_used=(run.get("data") or {}).get("num_train_used"))
            entry.setdefault("epochs", []).append(len(run.get("history") or []))
            # Where and on what every run trained (the lr-1e-3 run's own fields follow; a partial study lacks it).
            entry.setdefault("devices", []).extend(trained_on(run))
            entry.setdefault("commits", []).append(run.get("git_commit"))
            entry.setdefault("shared_gpu", []).append(run.get("shared_gpu"))  # trained beside others (lib.lanes)
            # The arithmetic it trained in (lib.train.autocast_for; CUDA results carry fast_path).
            precision = cfg.get("precision", "auto")
            entry.setdefault("arithmetic", []).append(
                "bf16 autocast" if precision == "bf16" or (precision == "auto" and "fast_path" in run) else "fp32")
            entry["data"] = entry.get("data") or (run.get("data") or {}).get("label")
            if lr == 1e-3:
                entry.update(best_val_acc_lr1e3=run.get("best_val_acc"), best_epoch_lr1e3=run.get("best_epoch"),
                             num_epochs=len(run.get("history", [])), device=run.get("device"),
                             data=(run.get("data") or {}).get("label") or entry["data"],
                             train_seconds_lr1e3=run.get("train_seconds"))
        steps = protocol_steps(dirs, model, lrs, seed, unreadable)
        if steps:
            band = loss_band([s["loss"] for s in steps.values()])
            both = band.num_valid >= 2  # a band needs two runs
            width = band.hi - band.lo
            entry["loss_band"] = {
                "num_runs": len(steps), "lrs": [f"{lr:g}" for lr in sorted(steps)],
                "num_steps": int(len(band.steps)), "num_ignored": band.num_ignored,
                "mean_width": float(width[both].mean()) if both.any() else None,
                "median_width": float(np.median(width[both])) if both.any() else None,
                "mean_width_last_tenth": (float(width[both][-max(1, both.sum() // 10):].mean())
                                          if both.any() else None)}
            grad = {}
            for lr, s in steps.items():
                gmax, gmin = _as_float_array(s["grad_max"]), _as_float_array(s["grad_min"])
                rng = gmax - gmin
                grad[f"{lr:g}"] = {"range": _finite_stats(rng), "grad_max": _finite_stats(gmax),
                                   "grad_min": _finite_stats(gmin)}
            entry["grad_range"] = grad
        summary["protocol"][model] = entry

        probe_file = probe_path(dirs, model, seed)
        if probe_file.exists() and (r := read_json_or_note(probe_file, unreadable)) is not None:
            p = r["probes"]
            band_width = _as_float_array(p["loss_max"]) - _as_float_array(p["loss_min"])
            summary["probe"][model] = {
                "label": LABELS[model], "lr": r["lr"], "lr_fallback": r.get("lr_fallback") is not None,
                # Why, without the losses it was judged on (run_probes' record of the stuck check at the first lr).
                "fallback_why": {k: v for k, v in (r.get("lr_fallback") or {}).items()
                                 if k in ("from_lr", "to_lr", "stuck_check")} or None,
                "num_steps": r["steps_done"], "num_probes": len(p["step"]), "etas": r["etas"],
                "beta": _finite_stats(p["beta"]), "gpred_max": _finite_stats(p["gpred_max"]),
                "gpred_min": _finite_stats(p["gpred_min"]), "loss_band_width": _finite_stats(band_width),
                "loss_max": _finite_stats(p["loss_max"]), "probe_nonfinite": r["probe_nonfinite"],
                "final_train_loss": _finite_stats(r["train_loss"][-max(1, len(r["train_loss"]) // 20):]),
                "seconds": r["seconds"], "device": r["environment"]["device"],
                **({"devices": r["devices"]} if r.get("devices") else {}),  # resumed on other machines
                "data_order_sha256": r["data_order_sha256"], "data": (r.get("data") or {}).get("label"),
                "profile": r["config"].get("profile"), "batch_size": r["config"].get("batch_size"),
                "probe_every": r["config"].get("probe_every"), "fallback_enabled": r["config"].get("fallback", True),
                "num_train_used": (r.get("data") or {}).get("num_train_used", r["config"].get("num_train")),
                "stuck_check": r.get("stuck_check"), "git_commit": r["environment"].get("git_commit"),
                "plateau_exit_step": plateau_exit_step(r["train_loss"], r["config"].get("stuck_loss", STUCK_LOSS)),
                "train_nonfinite": r.get("train_nonfinite", 0),
                "series": {"step": list(p["step"]), "beta": list(p["beta"]), "gpred_max": list(p["gpred_max"]),
                           "loss_band_width": band_width.tolist()}}
        elif not probe_file.exists():
            summary["missing"].append(probe_file.name)
        else:
            summary.setdefault("probe_unreadable", []).append(model)

        slice_file = slice_path(dirs, model, seed)
        if slice_file.exists() and (s := read_json_or_note(slice_file, unreadable)) is not None:
            loss = _as_float_array(s["loss"])
            mid = len(loss) // 2  # alpha = 0
            summary["slice"][model] = {"loss_at_0": float(loss[mid]), "loss_max": float(np.nanmax(loss)),
                                       "loss_at_pm1": [float(loss[0]), float(loss[-1])],
                                       "seconds": s.get("seconds"), "num_images": (s.get("config") or {}).get("num_images"),
                                       "device": (s.get("environment") or {}).get("device"),
                                       "git_commit": (s.get("environment") or {}).get("git_commit")}
    probes = summary["probe"]
    if len(probes) == 2:
        summary["same_data_order"] = len({p["data_order_sha256"] for p in probes.values()}) == 1
    return summary
