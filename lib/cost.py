"""What a model costs: forward FLOPs per image, inference throughput, peak GPU memory.

FLOPs come from PyTorch's own counter (torch.utils.flop_counter.FlopCounterMode), so no extra
dependency is needed. Its convention is FLOPs = 2 x multiply-accumulates, and it only counts the
ops it has formulas for: convolutions (1-D/2-D, grouped and depthwise included), matmul / linear
(addmm, mm, bmm, baddbmm) and attention kernels. Element-wise ops (ReLU, sigmoid, the attention
products, additions), pooling, BatchNorm and bias additions are NOT counted; for the networks here
they are a small fraction of the convolution work.
"""
from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _device(device: str | torch.device) -> torch.device:
    """Resolve 'auto' to cuda when available, else cpu."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def forward_flops(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 32, 32)) -> int:
    """Forward FLOPs per image (2 x MACs, PyTorch's counter; conv/linear/matmul only), in eval mode."""
    if len(input_size) != 4 or any(int(s) < 1 for s in input_size):
        raise ValueError(f"input_size must be (batch, channels, height, width) with positive sizes, got {input_size}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    x = torch.zeros(input_size, device=device, dtype=dtype)
    was_training = model.training
    model.eval()  # BN uses running stats, so one image is a valid batch
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    # Every counted op scales linearly with the batch, so the per-image count is exact.
    return int(counter.get_total_flops()) // int(input_size[0])


def inference_throughput(model: nn.Module, device: str | torch.device, batch_size: int = 1024,
                         iters: int = 20, warmup: int = 5, precision: str = "auto") -> float:
    """Inference images/s at `batch_size` on `device` (eval, no_grad; bf16 + channels_last on CUDA).

    The model is moved to `device` in place (and to channels_last on CUDA); its train/eval mode is
    restored afterwards. precision: 'auto' (bf16 autocast on CUDA, fp32 on CPU), 'bf16' or 'fp32'.
    On CPU pass a small batch_size and few iters: the defaults are sized for a GPU.
    """
    if batch_size < 1 or iters < 1 or warmup < 0:
        raise ValueError(f"need batch_size >= 1, iters >= 1, warmup >= 0; got {batch_size}, {iters}, {warmup}")
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', got {precision!r}")
    device = _device(device)
    cuda = device.type == "cuda"
    use_bf16 = precision == "bf16" or (precision == "auto" and cuda)
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)
    x = torch.randn(batch_size, 3, 32, 32, device=device).contiguous(memory_format=memory_format)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            for _ in range(warmup):  # cuDNN algorithm choice, allocator growth, lazy init
                model(x)
            if cuda:
                torch.cuda.synchronize(device)  # time only the measured iterations
            start = time.perf_counter()
            for _ in range(iters):
                model(x)
            if cuda:
                torch.cuda.synchronize(device)  # kernels are asynchronous: wait for the last one
            elapsed = time.perf_counter() - start
    finally:
        model.train(was_training)
    return batch_size * iters / elapsed


def reset_peak_memory(device: str | torch.device) -> None:
    """Start a new peak-memory window on a CUDA device (no-op on CPU)."""
    device = _device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: str | torch.device) -> float | None:
    """Peak tensor memory allocated on a CUDA device since the last reset, in MiB; None on CPU."""
    device = _device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def cost_summary(model_name: str, device: str | torch.device = "auto", *, batch_size: int = 1024,
                 iters: int = 20, warmup: int = 5, precision: str = "auto") -> dict:
    """FLOPs per image, parameter count and inference images/s of a freshly built `model_name`."""
    from lib.models import build, set_merged  # imported here: the FLOP helpers work without the model zoo

    device = _device(device)
    # On CPU at batch 1: cheap, and independent of the device. Counted for the structure as specified
    # (CANet: per path, three ChannelAttention branches), not for the faster equivalent form it may run in.
    flops = forward_flops(set_merged(build(model_name), False))
    model = build(model_name)
    params = sum(p.numel() for p in model.parameters())
    ips = inference_throughput(model, device, batch_size=batch_size, iters=iters, warmup=warmup,
                               precision=precision)
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return {
        "model": model_name,
        "flops": flops,
        "params": params,
        "infer_ips": ips,
        "infer_batch": batch_size,
        "precision": "bf16" if use_bf16 else "fp32",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
