"""Cost measurements: FLOP counts against hand-computed values, throughput and memory helpers on CPU."""
import math

import pytest
import torch
from torch import nn

from lib.cost import cost_summary, forward_flops, inference_throughput, peak_memory_mb, reset_peak_memory

# VGG-A on 32x32 (STUDY.md section 6): (in, out, spatial side) of each 3x3 conv; a 2x2 pool halves the side.
VGG_A_CONVS = [(3, 64, 32), (64, 128, 16), (128, 256, 8), (256, 256, 8),
               (256, 512, 4), (512, 512, 4), (512, 512, 2), (512, 512, 2)]
VGG_A_FLOPS = (sum(2 * cin * cout * 9 * side * side for cin, cout, side in VGG_A_CONVS)
               + 2 * (512 * 512 + 512 * 512 + 512 * 10))


def _vgg_a_by_hand() -> nn.Module:
    """VGG-A built here from the STUDY.md spec, independent of lib.models."""
    layers, cin = [], 3
    for v in [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
            cin = v
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


def test_conv_and_linear_flops():
    assert forward_flops(nn.Conv2d(3, 8, 3, padding=1)) == 2 * 3 * 8 * 9 * 32 * 32
    assert forward_flops(nn.Linear(16, 4), input_size=(1, 1, 1, 16)) == 2 * 16 * 4


def test_flops_are_per_image_and_mode_is_restored():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    model.train()
    assert forward_flops(model, input_size=(4, 3, 32, 32)) == 2 * 3 * 8 * 9 * 32 * 32
    assert model.training
    with pytest.raises(ValueError, match="input_size"):
        forward_flops(model, input_size=(3, 32, 32))


def test_vgg_a_flops_hand_built():
    assert VGG_A_FLOPS == 306_587_648  # 152.8M MACs: ~0.31 GFLOPs per image
    assert forward_flops(_vgg_a_by_hand()) == VGG_A_FLOPS


def test_vgg_a_flops_from_model_zoo():
    models = pytest.importorskip("lib.models")
    assert forward_flops(models.build("VGG_A")) == VGG_A_FLOPS
    # BatchNorm is not counted by PyTorch's counter, so VGG-A with BN has the same count.
    assert forward_flops(models.build("VGG_A_BN")) == VGG_A_FLOPS


def test_inference_throughput_cpu():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 32 * 32, 10))
    ips = inference_throughput(model, "cpu", batch_size=8, iters=2, warmup=1)
    assert math.isfinite(ips) and ips > 0
    assert model.training  # mode restored
    with pytest.raises(ValueError, match="precision"):
        inference_throughput(model, "cpu", batch_size=8, iters=1, precision="fp16")


def test_peak_memory_is_none_on_cpu():
    reset_peak_memory("cpu")  # a no-op, must not raise
    assert peak_memory_mb("cpu") is None
    assert peak_memory_mb(torch.device("cpu")) is None


def test_cost_summary_cpu():
    pytest.importorskip("lib.models")
    s = cost_summary("CANet_tiny", "cpu", batch_size=4, iters=1, warmup=0)
    assert s["params"] == 396_155 and s["infer_batch"] == 4
    assert s["device"] == "cpu" and s["precision"] == "fp32"
    assert s["flops"] > 0 and s["infer_ips"] > 0


def test_inference_throughput_counts_images_per_second(monkeypatch):
    import types

    import lib.cost as C

    clock = iter([10.0, 12.0])  # the timed iterations take 2 s
    monkeypatch.setattr(C, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    assert inference_throughput(model, "cpu", batch_size=8, iters=3, warmup=1) == pytest.approx(8 * 3 / 2)


def test_cost_summary_counts_canets_flops_as_specified_not_merged(monkeypatch):
    import lib.cost as C

    monkeypatch.setattr(C, "inference_throughput", lambda *a, **k: 1.0)  # only the FLOPs matter here
    # CANet_tiny per path, three ChannelAttention branches per SE; merged into one form it counts 136,296,348.
    assert cost_summary("CANet_tiny", "cpu")["flops"] == 136_299_932
