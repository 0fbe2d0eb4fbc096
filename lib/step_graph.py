"""The whole training step as one CUDA graph: an experiment, off unless CIFAR10_STEP_GRAPH names the model.

lib.train's CUDA-graphed step (GraphedForward) captures the model's forward and backward; the loss, the hand-over
of every parameter's gradient, the optimiser step and the step's metrics stay eager. On the H200 that left about
730 host operator calls per CANet_tiny step beside about 7 ms of kernels (the bench file's `traces`): while the
kernels take longer than the host, that costs little, but once torch.compile fuses the kernels the host calls
likely bound the step, which may be why the compiled CANet_tiny epoch was not faster than the graphed one (1.47 s
against 1.29 s). StepGraph captures forward, loss, backward, the optimiser step and the metrics as one graph,
around the eager or the torch.compile'd model (mode 'default': the graph is ours), so that a full batch costs the
batch's augmentation, five copies into the graph's inputs and one replay. `scripts/speed_probe.py --variants
step_graph step_graph_compiled` times it on a GPU and compares it with eager steps.

What stays as in lib.train's eager step (tests/test_step_graph.py, on a CPU, where the same code runs without the
capture):
- the recipe: the loss lam * CE(y) + (1 - lam) * CE(y_b) for every batch (an unmixed batch has lam = 1 and
  y_b = y, which gives CE(y) exactly; lam and 1 - lam are made on the host as the eager step makes them), the
  optimiser's own step, BatchNorm's batch statistics and running averages;
- the state: a capture needs warm-up steps first (lazy initialisation of the optimiser's state, cuDNN's autotuning,
  a compile); they are undone in place (parameters, buffers, optimiser state, random states), so the run goes on
  from where it was;
- the learning rate: a captured optimiser step has its learning rate built in, so the step is captured again
  when the learning rate or the optimiser changes (once per epoch in the recipes: a capture launches no kernels,
  it costs about one eager step's host calls), with warm-up steps only for a new optimiser.
The epoch's last, partial batch and the evaluation run eagerly, as on lib.train's other fast routes. If a
warm-up step fails, it is undone and the run goes on with eager steps (`info['note']` says why). If the capture
itself fails, the run stops with an error instead: a capture that failed part-way can leave CUDA's random-number
generator and the memory allocator in their capture state (PyTorch's CUDAGraph::reset says as much), where an eager
step of a model with dropout fails or draws from the wrong offsets; the run resumes from its last checkpoint when
started again without the variable. `info['step_graph_capture_seconds']` adds up the host time of the captures
(one per learning rate, so once an epoch in Part 1) and of the warm-ups before them (one per optimiser), which the
benchmark's fast epochs (one learning rate) leave out.
"""
from __future__ import annotations

import contextlib
import time

import torch
import torch.nn as nn

from lib.augment import mixed_accuracy, mixed_loss

STEP_GRAPH_ENV = "CIFAR10_STEP_GRAPH"  # models (names separated by spaces or commas, or "all") stepped by StepGraph
WARMUP_STEPS = 3  # steps run (and undone) before a capture with a new optimiser, as make_graphed_callables does


class CaptureFailed(RuntimeError):
    """A capture failed between capture_begin and capture_end: CUDA's state may be left mid-capture, so no eager
    fallback in this process."""


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Copies of what a training step changes: the model's parameters and buffers, the optimiser's state tensors,
    the random states (CPU, and CUDA where the model is on it)."""
    cuda = next(model.parameters()).is_cuda
    return {"model": [t.detach().clone() for t in model.state_dict(keep_vars=True).values()],
            "optimizer": {p: {k: v.clone() for k, v in s.items() if torch.is_tensor(v)}
                          for p, s in optimizer.state.items()},
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(next(model.parameters()).device) if cuda else None}


@torch.no_grad()
def restore(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Put back a snapshot in place (a captured graph keeps reading the same tensors). Optimiser state that did not
    exist at the snapshot (made lazily by the steps since) becomes zeros, which is what a fresh optimiser's first
    step starts from (Adam: step, moments; SGD: buf = momentum * 0 + grad equals the first step's buf = grad)."""
    for t, s in zip(model.state_dict(keep_vars=True).values(), saved["model"]):
        t.copy_(s)
    for p, state in optimizer.state.items():
        before = saved["optimizer"].get(p, {})
        for k, v in state.items():
            if torch.is_tensor(v) and k in before:
                v.copy_(before[k])
            elif torch.is_tensor(v):
                v.zero_()
    torch.set_rng_state(saved["rng_cpu"])
    if saved["rng_cuda"] is not None:
        torch.cuda.set_rng_state(saved["rng_cuda"], next(model.parameters()).device)


@contextlib.contextmanager
def capturable(optimizer: torch.optim.Optimizer):
    """The optimiser's groups marked capturable during a capture (Adam's check refuses a capture otherwise). Only
    there: the fused kernels the study uses compute the same either way, and a checkpoint's optimiser state keeps
    capturable=False, so that it loads anywhere (capturable=True refuses CPU tensors)."""
    old = [g.get("capturable") for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        if "capturable" in g:
            g["capturable"] = True
    try:
        yield
    finally:
        for g, value in zip(optimizer.param_groups, old):
            if value is not None:
                g["capturable"] = value


class StepGraph(nn.Module):
    """`model`, whose full training batches are stepped by `step` (forward, loss, backward, optimiser step, metrics;
    one CUDA graph replay where `capture`, the same code run directly otherwise); calling it runs `model` eagerly
    (the partial last batch, evaluation). `compiled`: the model inside the step is torch.compile'd (mode 'default',
    one shape). `autocast()` gives the step's autocast context (without its weight cache, which a capture cannot
    hold). `info` (lib.train's fast_path record) gets a note if the capture fails."""

    def __init__(self, model: nn.Module, head: nn.Linear, batch_shape: tuple[int, ...], *, label_smoothing: float,
                 record_steps: bool, autocast, compiled: bool = False, capture: bool | None = None,
                 info: dict | None = None):
        super().__init__()
        self.model = model
        self._head = [head]  # in lists: not registered submodules (their parameters are model's)
        self._fwd = [torch.compile(model, dynamic=False) if compiled else model]
        self.batch_shape = tuple(batch_shape)
        self.label_smoothing, self.record_steps, self.autocast = label_smoothing, record_steps, autocast
        self.capture = capture
        self.info = info if info is not None else {}
        self.failed = False
        self.captures = 0  # graphs captured so far (one per learning rate and optimiser)
        self.warmups = 0  # warm-ups run so far (one per optimiser)
        self._inputs = None  # x, y, y_b, lam, 1 - lam: the graph's inputs, made like the first full batch
        self._graph, self._outputs = None, None
        self._key = None  # (optimizer, its groups' learning rates) the current graph was captured with

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model, eagerly."""
        return self.model(x)

    def takes(self, x: torch.Tensor) -> bool:
        """Whether `x` is a batch `step` takes: a full training batch (training mode, gradients on, the shape)."""
        return (not self.failed and self.model.training and torch.is_grad_enabled()
                and tuple(x.shape) == self.batch_shape)

    def _body(self, optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, ...]:
        """One training step on the inputs: (loss, accuracy, max and min of the head's weight gradient or None)."""
        x, y, y_b, lam, rest = self._inputs  # rest = 1 - lam, computed as the eager step does (in double)
        with self.autocast():
            out = self._fwd[0](x)
        out = out.float()
        loss = mixed_loss(out, y, y_b, lam, rest, label_smoothing=self.label_smoothing)
        loss.backward()
        extremes = (None, None)
        if self.record_steps:
            g = self._head[0].weight.grad
            extremes = (g.max(), g.min())
        optimizer.step()
        with torch.no_grad():
            acc = mixed_accuracy(out, y, y_b, lam, rest)
        return (loss.detach(), acc) + extremes

    def _prepare(self, optimizer: torch.optim.Optimizer, key) -> None:
        """Warm up (a new optimiser: steps undone after) and capture the step for `key`'s learning rates. A new
        graph shares the previous one's memory pool (captured while the previous one still holds it: a pool whose
        graphs are all gone cannot be captured into again until the allocator empties its cache)."""
        cuda = self._inputs[0].is_cuda if self.capture is None else self.capture
        if cuda:  # nothing queued still reads what is freed below (an old optimiser's state, made on a side stream)
            torch.cuda.synchronize(self._inputs[0].device)
        if self._key is None or self._key[0] is not optimizer:
            saved = snapshot(self.model, optimizer)
            side = torch.cuda.Stream(self._inputs[0].device) if cuda else None  # warm-ups on a side stream
            try:
                if side is not None:
                    side.wait_stream(torch.cuda.current_stream(side.device))
                with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                    for _ in range(WARMUP_STEPS):
                        optimizer.zero_grad(set_to_none=True)
                        self._body(optimizer)
            finally:  # undone after the warm-up's kernels, also where one failed
                if side is not None:
                    torch.cuda.current_stream(side.device).wait_stream(side)
                restore(self.model, optimizer, saved)
            self.warmups += 1
        optimizer.zero_grad(set_to_none=True)  # the capture's backward makes the gradients, in the graph's memory
        if cuda:
            device = self._inputs[0].device
            graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            # capture_begin/end rather than torch.cuda.graph, which also collects garbage and empties the cache
            # allocator at every capture (here once per epoch)
            with torch.cuda.stream(stream), capturable(optimizer):
                graph.capture_begin(pool=self._graph.pool() if self._graph is not None else None)
                try:
                    outputs = self._body(optimizer)
                    graph.capture_end()
                except Exception as err:
                    with contextlib.suppress(Exception):  # the error to report is the step's, not this one's
                        graph.capture_end()
                    raise CaptureFailed(f"{type(err).__name__}: {err}") from err
            torch.cuda.current_stream(device).wait_stream(stream)
            self._graph, self._outputs = graph, outputs  # the previous graph goes; its pool stays with this one
        self._key = key
        self.captures += 1

    def step(self, x: torch.Tensor, y: torch.Tensor, y_b: torch.Tensor, lam: float,
             optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, ...] | None:
        """Train one full batch: (loss, accuracy, head gradient's max, min or None), tensors on the device that the
        next step overwrites; None where the step could not be captured (the caller steps eagerly: `failed`)."""
        if self._inputs is None:
            self._inputs = (torch.empty_like(x), torch.empty_like(y), torch.empty_like(y_b),
                            torch.ones((), device=x.device), torch.zeros((), device=x.device))
        for static, value in zip(self._inputs[:3], (x, y, y_b)):
            static.copy_(value)
        self._inputs[3].fill_(lam)
        self._inputs[4].fill_(1 - lam)  # rounded to float32 from double, as the eager step's Python float is
        lrs = tuple(g["lr"] for g in optimizer.param_groups)
        if self._key is None or self._key[0] is not optimizer or self._key[1] != lrs:
            start = time.perf_counter()
            try:
                self._prepare(optimizer, (optimizer, lrs))
            except CaptureFailed as err:
                self.failed, self._graph, self._outputs = True, None, None
                raise RuntimeError(
                    f"the whole-step CUDA graph's capture failed ({err}); an eager fallback is not safe in this "
                    f"process (CUDA's random-number and memory state may be left mid-capture): run again without "
                    f"{STEP_GRAPH_ENV} (the run resumes from its last checkpoint)") from err
            except Exception as err:  # a warm-up step (undone): the eager step computes the same thing, only slower
                self.failed, self._graph, self._outputs = True, None, None
                optimizer.zero_grad(set_to_none=True)
                self.info.update(step_graph=False, cuda_graphs=False)  # the result's fast_path: eager steps
                self.info["note"] = f"whole-step CUDA graph failed, eager steps: {type(err).__name__}: {err}"
                print(f"[StepGraph] {self.info['note']}")
                return None
            self.info["step_graph_capture_seconds"] = (self.info.get("step_graph_capture_seconds", 0.0)
                                                       + time.perf_counter() - start)
        if self._graph is None:
            # No capture (a CPU): the same step, run directly. Its outputs are handed over in the same tensors each
            # step, as a replay's are, so that the CPU tests catch a caller that keeps them past the next step.
            optimizer.zero_grad(set_to_none=True)
            outputs = self._body(optimizer)
            if self._outputs is None:  # (which outputs are None is fixed: record_steps)
                self._outputs = tuple(None if o is None else o.clone() for o in outputs)
            else:
                for kept, o in zip(self._outputs, outputs):
                    if kept is not None:
                        kept.copy_(o)
            return self._outputs
        self._graph.replay()
        return self._outputs
