"""The whole-step CUDA graph (lib.step_graph), on a CPU where its code runs without the capture: the same training
as lib.train's eager steps (lr changes, the optimiser switch, MixUp/CutMix, the partial batch, the per-step
gradient range), its warm-up undone, a failed warm-up falling back to eager steps, a failed capture stopping the
run, and the CUDA routing."""
from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import lib.step_graph as S
import lib.train as T
from lib.config import TrainConfig
from lib.loader import BatchLoader
from lib.models import build, last_linear


def small_net() -> nn.Module:
    """Conv, BatchNorm (running statistics), dropout (random state) and a last Linear."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Dropout(0.2), nn.Linear(16, 10))


def loader(n: int = 20, batch: int = 8, **kw) -> BatchLoader:
    """A shuffled, augmented loader over random images; n not a multiple of batch: a partial last batch."""
    g = torch.Generator().manual_seed(1)
    X = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return BatchLoader(X, y, batch, shuffle=True, augment=True, mean=(0.5,) * 3, std=(0.25,) * 3, seed=3, **kw)


def cfg_for(**kw) -> TrainConfig:
    base = dict(name="x", model="CANet_tiny", device="cpu", batch_size=8, num_epochs=4, optimizer="adamw_sgd",
                switch_frac=0.5)
    base.update(kw)
    return TrainConfig(**base)


def step_graph(model, cfg, batch_shape=(8, 3, 8, 8), **kw) -> S.StepGraph:
    return S.StepGraph(model, last_linear(model), batch_shape, label_smoothing=cfg.label_smoothing,
                       record_steps=cfg.record_steps, autocast=lambda: T.autocast_for(cfg, torch.device("cpu")),
                       **kw)


def train_epochs(step_model, model, cfg, data, epochs=4, device=torch.device("cpu")):
    """lib.train's loop over `epochs` (its lr per epoch and optimiser switch): the per-epoch step statistics."""
    opt_kind, optimizer, stats = None, None, []
    for epoch in range(epochs):
        kind = T.optimizer_at(cfg, epoch)
        if kind != opt_kind:
            opt_kind = kind
            optimizer = T.make_optimizer(kind, model.parameters(), cfg, T.lr_at(cfg, epoch), device)
        for group in optimizer.param_groups:
            group["lr"] = T.lr_at(cfg, epoch)
        stats.append(T._train_epoch(step_model, last_linear(model), optimizer, data, cfg, device, epoch, False))
    return stats


def fail_at_call(sg: S.StepGraph, n: int) -> list:
    """Make the n-th call of the step graph's body raise as an op that a capture refuses; returns the calls."""
    calls, real_body = [], sg._body

    def failing_body(optimizer):
        calls.append(1)
        if len(calls) == n:
            raise RuntimeError("operation not permitted when stream is capturing")
        return real_body(optimizer)

    sg._body = failing_body
    return calls


def assert_same_state(a: nn.Module, b: nn.Module, **tol) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, msg=name, **tol) if tol else torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("fused", [False, True])
def test_steps_through_the_step_graph_train_as_the_eager_steps(fused, monkeypatch):
    """Four epochs (lr changing every epoch, AdamW then SGD from epoch 2), unmixed batches, dropout, a partial last
    batch: the same weights, BatchNorm statistics and per-step losses as lib.train's eager steps, to the bit; one
    warm-up per optimiser, one capture per learning rate. fused: the fused optimiser kernels the GPU uses (step
    counters as tensors, whose warm-up steps restore must undo), here on the CPU."""
    if fused:
        make = T.make_optimizer

        def make_fused(*args):
            optimizer = make(*args)
            for group in optimizer.param_groups:
                group.update(fused=True, foreach=False)  # step() reads the group's flags
            return optimizer

        monkeypatch.setattr(T, "make_optimizer", make_fused)
    cfg = cfg_for(mixup_p=0.0, cutmix_p=0.0)
    eager, graphed = small_net(), small_net()
    torch.manual_seed(5)
    expected = train_epochs(eager, eager, cfg, loader())
    torch.manual_seed(5)
    sg = step_graph(graphed, cfg, capture=False)
    got = train_epochs(sg, graphed, cfg, loader())
    assert_same_state(graphed, eager)
    for e, g in zip(expected, got):
        assert torch.equal(e["step_loss"], g["step_loss"]) and torch.equal(e["step_acc"], g["step_acc"])
        assert e["n"] == g["n"] == 20
    assert (sg.warmups, sg.captures, sg.failed) == (2, 4, False)


def test_mixed_batches_and_the_gradient_range_match_the_eager_steps():
    """MixUp/CutMix batches (lam < 1: the graph's lam and 1 - lam are float32 tensors made from the same doubles as
    the eager step's Python floats: to the bit) and the BN protocol's per-step gradient range of the last Linear."""
    cfg = cfg_for(mixup_p=0.4, cutmix_p=0.4, record_steps=True, optimizer="adam", lr_gamma=1.0)
    lams = []
    for epoch in range(2):
        data = loader(mixup_p=0.4, cutmix_p=0.4)
        data.set_epoch(epoch)
        lams += [batch.lam for batch in data]
    assert min(lams) < 1.0 and lams.count(1.0) >= 1  # mixed and unmixed batches both
    eager, graphed = small_net(), small_net()
    torch.manual_seed(5)
    expected = train_epochs(eager, eager, cfg, loader(mixup_p=0.4, cutmix_p=0.4), epochs=2)
    torch.manual_seed(5)
    sg = step_graph(graphed, cfg, capture=False)
    got = train_epochs(sg, graphed, cfg, loader(mixup_p=0.4, cutmix_p=0.4), epochs=2)
    assert_same_state(graphed, eager)
    for e, g in zip(expected, got):
        for key in ("step_loss", "step_acc", "grad_max", "grad_min"):
            assert torch.equal(g[key], e[key]), key
        assert (e["grad_max"] > e["grad_min"]).all()  # recorded, not left at zero
    assert (sg.warmups, sg.captures) == (1, 1)  # a constant lr: captured once


@pytest.mark.parametrize("kind", ["adamw", "sgd", "adam"])
def test_restore_undoes_steps_and_a_fresh_optimisers_state_starts_as_new(kind):
    """restore() puts back weights, buffers and random states; state made by the undone steps becomes zeros, from
    which the next step is the bitwise equal of a fresh optimiser's first step (fused kernels, as on CUDA)."""
    cfg = cfg_for()
    model, twin = small_net(), small_net()
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))

    def one_step(m, opt):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()

    extra = {"momentum": 0.9} if kind == "sgd" else {}
    make = lambda m: {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}.get(kind, torch.optim.SGD)(
        m.parameters(), lr=0.1, weight_decay=cfg.weight_decay, fused=True, **extra)
    opt, fresh = make(model), make(twin)
    torch.manual_seed(7)
    saved = S.snapshot(model, opt)
    for _ in range(3):
        one_step(model, opt)
    assert opt.state and not torch.equal(model[0].weight, twin[0].weight)
    S.restore(model, opt, saved)
    assert_same_state(model, twin)
    assert all(torch.count_nonzero(v) == 0 for s in opt.state.values() for v in s.values())
    assert torch.equal(torch.get_rng_state(), saved["rng_cpu"])
    torch.manual_seed(7)
    one_step(model, opt)
    torch.manual_seed(7)
    one_step(twin, fresh)
    assert_same_state(model, twin)


def test_restore_puts_back_an_optimisers_earlier_state():
    model = small_net()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    before = {p: {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    saved = S.snapshot(model, opt)
    opt.step()
    S.restore(model, opt, saved)
    for p, s in opt.state.items():
        for k, v in s.items():
            assert torch.equal(v, before[p][k]), k
    assert all(s["step"].item() == 1 for s in opt.state.values())


def test_a_failed_warm_up_leaves_the_run_as_it_was_and_goes_on_eagerly(capsys):
    """A step that fails in the warm-up (as a capture may on a GPU): the model and optimiser as before it, a note,
    and the run trains on with eager steps: the same result as eager steps from the start."""
    cfg = cfg_for(mixup_p=0.0, cutmix_p=0.0)
    eager, graphed = small_net(), small_net()
    torch.manual_seed(5)
    expected = train_epochs(eager, eager, cfg, loader(), epochs=2)
    info = {"note": ""}
    sg = step_graph(graphed, cfg, capture=False, info=info)
    calls = fail_at_call(sg, 2)  # the second warm-up step: one step already taken, to be undone
    torch.manual_seed(5)
    got = train_epochs(sg, graphed, cfg, loader(), epochs=2)
    assert sg.failed and info["step_graph"] is False and info["cuda_graphs"] is False  # the result says: eager
    assert "whole-step CUDA graph failed, eager steps: RuntimeError: operation not permitted" in info["note"]
    assert "[StepGraph] whole-step CUDA graph failed" in capsys.readouterr().out
    assert len(calls) == 2  # never tried again
    assert_same_state(graphed, eager)
    assert all(torch.equal(e["step_loss"], g["step_loss"]) for e, g in zip(expected, got))


class _FakeStream:
    device = torch.device("cpu")

    def __init__(self, *args):
        pass

    def wait_stream(self, other):
        pass


class _FakeGraph:
    """torch.cuda.CUDAGraph's calls as StepGraph makes them, on a CPU: the body runs once, as in a capture."""
    ended = 0

    def capture_begin(self, pool=None):
        pass

    def capture_end(self):
        _FakeGraph.ended += 1

    def pool(self):
        return None

    def replay(self):
        raise AssertionError("no replay after a failed capture")


def test_a_failed_capture_stops_the_run_with_an_error_that_says_what_to_do(monkeypatch):
    """A step that fails inside the capture itself (after the warm-up): no eager fallback, since a capture that failed
    part-way can leave CUDA's generator and allocator mid-capture; the error names the variable to unset and the
    capture is ended. The warm-up's steps are still undone. CUDA's calls are stand-ins on a CPU."""
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "Stream", _FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: _FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    _FakeGraph.ended = 0
    cfg = cfg_for(mixup_p=0.0, cutmix_p=0.0)
    model, twin = small_net(), small_net()
    info = {"note": ""}
    sg = step_graph(model, cfg, capture=True, info=info)
    calls = fail_at_call(sg, S.WARMUP_STEPS + 1)  # the capture's step
    optimizer = T.make_optimizer("adamw", model.parameters(), cfg, 0.01, torch.device("cpu"))
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    with pytest.raises(RuntimeError, match=f"capture failed .*operation not permitted.*without {S.STEP_GRAPH_ENV}"):
        sg.step(x, y, y, 1.0, optimizer)
    assert sg.failed and _FakeGraph.ended == 1 and len(calls) == S.WARMUP_STEPS + 1
    assert "step_graph" not in info and info["note"] == ""  # the run stops: nothing says it went on eagerly
    assert_same_state(model, twin)  # the warm-up undone


def test_the_captures_host_time_is_added_up_in_the_fast_path_record():
    cfg = cfg_for(mixup_p=0.0, cutmix_p=0.0)
    info = {}
    sg = step_graph(small_net(), cfg, capture=False, info=info)
    stats = train_epochs(sg, sg.model, cfg, loader(), epochs=2)
    assert sg.captures == 2 and info["step_graph_capture_seconds"] > 0 and len(stats) == 2


def test_the_step_graph_takes_only_full_training_batches():
    cfg = cfg_for()
    sg = step_graph(small_net(), cfg, capture=False).train()
    full, partial = torch.randn(8, 3, 8, 8), torch.randn(4, 3, 8, 8)
    assert sg.takes(full) and not sg.takes(partial)
    with torch.no_grad():
        assert not sg.takes(full)
    sg.eval()
    assert not sg.takes(full) and not sg.model.training
    assert torch.equal(sg(full), sg.model(full))  # calling it runs the model (evaluation, partial batches)
    assert list(sg.state_dict()) == [f"model.{k}" for k in sg.model.state_dict()]  # no parameters of its own


def test_cuda_steps_take_the_step_graph_where_the_environment_names_the_model(monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module, mode=None, dynamic=None: compiled.append(mode) or module)
    data = BatchLoader(torch.zeros(8, 3, 32, 32, dtype=torch.uint8), torch.zeros(8, dtype=torch.long), 4,
                       mean=(0.5,) * 3, std=(0.5,) * 3)
    cfg = TrainConfig(name="x", model="CANet_tiny", device="cuda", batch_size=4, record_steps=True)
    monkeypatch.setenv(S.STEP_GRAPH_ENV, "ResNet18, CANet_tiny")
    monkeypatch.delenv(T.COMPILE_ENV, raising=False)
    model = build("CANet_tiny")
    step, info = T.step_model_for(model, cfg, torch.device("cuda"), data)
    assert isinstance(step, S.StepGraph) and step.batch_shape == (4, 3, 32, 32) and step.record_steps
    assert step._head[0] is last_linear(model) and step._fwd[0] is model and compiled == []
    assert info["step_graph"] is True and info["cuda_graphs"] is True and info["compile"] is False
    monkeypatch.setenv(T.COMPILE_ENV, "CANet_tiny")  # torch.compile'd inside the graph, mode 'default'
    step, info = T.step_model_for(model, cfg, torch.device("cuda"), data)
    assert compiled == [None] and info["compile"] is True and info["compile_mode"] == "default"
    assert step.info is info  # a failed capture's note lands in the result's fast_path
    monkeypatch.setenv(S.STEP_GRAPH_ENV, "all")
    assert T.step_graph_requested("VGG_A")
    monkeypatch.setenv(T.EAGER_MODELS_ENV, "VGG_A")  # its graph check failed: no CUDA graph of any kind
    assert not T.step_graph_requested("VGG_A") and T.step_graph_requested("VGG_A_BN")
    monkeypatch.setenv(T.CUDA_GRAPHS_ENV, "0")
    assert not T.step_graph_requested("VGG_A_BN")
    monkeypatch.delenv(T.CUDA_GRAPHS_ENV)
    monkeypatch.delenv(T.EAGER_MODELS_ENV)
    monkeypatch.setenv(S.STEP_GRAPH_ENV, "ResNet18")
    monkeypatch.setenv(T.COMPILE_ENV, "")
    assert not isinstance(T.step_model_for(model, cfg, torch.device("cuda"), data)[0], S.StepGraph)
    monkeypatch.setenv(S.STEP_GRAPH_ENV, "all")  # a CPU never captures
    assert T.step_model_for(model, cfg.replace(device="cpu"), torch.device("cpu"), data)[0] is model


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the capture itself")
def test_the_captured_step_trains_as_the_eager_steps_on_cuda():
    """fp32, deterministic cuDNN, TF32 off; four epochs with a new learning rate each and the switch to SGD (four
    captures, two warm-ups), MixUp/CutMix and a partial batch: graph replays and eager steps end at the same
    weights and per-step losses (the eager run first, then the graphed one, each from the same random state)."""
    cfg = cfg_for(mixup_p=0.3, cutmix_p=0.3, precision="fp32", device="cuda")
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(1)
    X = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8, generator=g).to(dev)
    y = torch.randint(0, 10, (20,), generator=g).to(dev)
    make = lambda: BatchLoader(X, y, 8, shuffle=True, augment=True, mean=(0.5,) * 3, std=(0.25,) * 3, seed=3,
                               mixup_p=0.3, cutmix_p=0.3)
    with T.backend_flags(deterministic=True, benchmark=False, cudnn_tf32=False, matmul_tf32=False):
        eager, graphed = small_net().to(dev), small_net().to(dev)
        sg = S.StepGraph(graphed, last_linear(graphed), (8, 3, 8, 8), label_smoothing=cfg.label_smoothing,
                         record_steps=False, autocast=lambda: T.autocast_for(cfg, dev, cache_enabled=False))
        torch.manual_seed(5)
        expected = train_epochs(eager, eager, cfg, make(), device=dev)
        torch.manual_seed(5)
        got = train_epochs(sg, graphed, cfg, make(), device=dev)
    assert sg._graph is not None and not sg.failed and (sg.captures, sg.warmups) == (4, 2), sg.info
    for e, g in zip(expected, got):
        torch.testing.assert_close(g["step_loss"], e["step_loss"], rtol=1e-5, atol=1e-6)
    assert_same_state(graphed.cpu(), eager.cpu(), rtol=1e-5, atol=1e-6)
