"""Every model builds, runs, and has its exact parameter count; CANet's blocks are wired as specified."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lib import models
from lib.models import PART1_MODELS, build, last_linear, list_models
from lib.models.canet import MERGED_ENV, AttResBlock, ChannelAttention, SpatialAttention, set_merged, \
    set_side_stream
from lib.models.vgg import init_xavier_

# STUDY.md sections 2, 3 and 6, in list_models() order.
EXPECTED_PARAMS = {
    "CANet_tiny": 396_155,
    "CANet_light": 1_576_244,
    "CANet": 6_289_574,
    "CANet_pro": 25_128_842,
    "ShuffleNetV2": 352_042,
    "MobileNetV2": 2_236_682,
    "ResNet18": 11_173_962,
    "ResNet34": 21_282_122,
    "VGG11": 128_807_306,
    "VGG_A": 9_750_922,
    "VGG_A_BN": 9_756_426,
}


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Batch-2 forwards on tiny images gain nothing from intra-op threads, and on a shared CPU
    # the thread hand-offs cost seconds per test; restore the setting for other test modules.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def canet_tiny() -> nn.Module:
    torch.manual_seed(0)
    return build("CANet_tiny").eval()


def test_list_models_order_and_part1():
    assert list_models() == list(EXPECTED_PARAMS)
    assert len(PART1_MODELS) == 9 and set(PART1_MODELS) <= set(list_models())
    from lib.config import CANET_MODELS, MODEL_NAMES  # the CLI's torch-free names
    from lib.models import CANET_VARIANTS

    assert list(MODEL_NAMES) == list_models() and list(CANET_MODELS) == list(CANET_VARIANTS)
    assert "VGG_A" not in PART1_MODELS and "VGG_A_BN" not in PART1_MODELS


@pytest.mark.parametrize("name", list(EXPECTED_PARAMS))
def test_build_forward_and_param_count(name):
    # One build per model: construction (weight init) dominates the cost for the big ones.
    torch.manual_seed(0)
    model = build(name).eval()
    assert num_params(model) == EXPECTED_PARAMS[name]
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    # The last Linear is the classifier: it produces the 10 logits.
    assert last_linear(model).out_features == 10


def test_build_returns_fresh_models():
    a, b = build("CANet_tiny"), build("CANet_tiny")
    assert a is not b
    assert all(pa.data_ptr() != pb.data_ptr() for pa, pb in zip(a.parameters(), b.parameters()))


def test_num_classes_reaches_the_classifier():
    assert last_linear(build("ResNet18", num_classes=100)).out_features == 100
    assert last_linear(build("VGG_A", num_classes=7)).out_features == 7
    with pytest.raises(ValueError, match="num_classes"):
        build("VGG_A", num_classes=0)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build("ResNet50")
    msg = str(err.value)
    assert "ResNet50" in msg
    for name in list_models():
        assert name in msg


def test_last_linear_is_final_classifier():
    model = build("VGG_A")
    assert last_linear(model) is model.classifier[-1]
    canet = build("CANet_tiny")
    assert last_linear(canet) is canet.head[-1]
    resnet = build("ResNet18")
    assert last_linear(resnet) is resnet.fc
    with pytest.raises(ValueError, match="no nn.Linear"):
        last_linear(nn.Conv2d(3, 3, 1))


def test_canet_channels_last_matches_contiguous(canet_tiny):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = canet_tiny(x)
        model_cl = build("CANet_tiny").eval()
        model_cl.load_state_dict(canet_tiny.state_dict())
        model_cl = model_cl.to(memory_format=torch.channels_last)
        out = model_cl(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_canet_block_structure(canet_tiny):
    assert isinstance(canet_tiny.blocks, nn.Sequential) and len(canet_tiny.blocks) == 6
    for block in canet_tiny.blocks:
        assert isinstance(block, AttResBlock)
        # Exactly one unit_transform per block, shared by both paths.
        names = [n for n, _ in block.named_modules() if n.split(".")[-1] == "unit_transform"]
        assert names == ["unit_transform"]
        assert type(block.sa) is SpatialAttention
        assert type(block.se) is ChannelAttention
        for attr in ("path_a", "path_b", "shortcut", "bn"):
            assert isinstance(getattr(block, attr), nn.Module)
    # SA kernel sizes per block, as in the STUDY.md table.
    assert [b.sa.conv.kernel_size[0] for b in canet_tiny.blocks] == [7, 7, 5, 5, 3, 3]


def test_unit_transform_is_called_by_both_paths(canet_tiny):
    calls = []
    block = canet_tiny.blocks[0]
    handle = block.unit_transform.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    with torch.no_grad():
        block(torch.randn(2, 3, 32, 32))
    handle.remove()
    assert calls == [torch.Size([2, 16, 32, 32])] * 2


def test_channel_attention_has_three_unit_scalars():
    se = ChannelAttention()
    assert isinstance(se.scales, nn.Parameter) and se.scales.requires_grad
    assert se.scales.shape == (3,)
    assert torch.equal(se.scales.detach(), torch.ones(3))
    assert [c.kernel_size[0] for c in se.convs] == [3, 5, 7]


def test_attention_maps_shapes_and_use():
    x = torch.randn(2, 8, 6, 6)
    sa, se = SpatialAttention(7, 3), ChannelAttention()
    with torch.no_grad():
        sa_map, se_map = sa.attention(x), se.attention(x)
        assert sa_map.shape == (2, 1, 6, 6) and se_map.shape == (2, 8, 1, 1)
        assert ((sa_map > 0) & (sa_map < 1)).all() and ((se_map > 0) & (se_map < 1)).all()
        torch.testing.assert_close(sa(x), x * sa_map)
        torch.testing.assert_close(se(x), x * se_map)


def test_the_attention_maps_pool_what_the_specification_says():
    """SA: sigmoid(conv of [channel mean, channel max]); SE: sigmoid(1-D conv over the channel means). With kernels
    that pick one input each, the maps are the pooled values themselves through the sigmoid."""
    x = torch.randn(2, 8, 5, 5)
    sa, se = SpatialAttention(3, 1), ChannelAttention()
    with torch.no_grad():
        for pick, pooled in ((0, x.mean(1, keepdim=True)), (1, x.amax(1, keepdim=True))):
            sa.conv.weight.zero_()
            sa.conv.weight[0, pick, 1, 1] = 1.0  # a centred delta on the mean (0) or the max (1) channel
            torch.testing.assert_close(sa.attention(x), torch.sigmoid(pooled))
        for conv in se.convs:
            conv.weight.zero_()
        se.convs[0].weight[0, 0, 1] = 2.0  # the 3-kernel's centre only, mixed with scale 1
        torch.testing.assert_close(se.attention(x), torch.sigmoid(2.0 * x.mean((2, 3), keepdim=True)))


def test_the_canet_head_and_vgg_a_bn_are_built_as_specified():
    head = [type(m) for m in build("CANet_tiny").head]
    assert head == [nn.AdaptiveAvgPool2d, nn.BatchNorm2d, nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]
    assert build("CANet_tiny").head[0].output_size == 2
    for name, unit in (("VGG_A_BN", [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]), ("VGG_A", [nn.Conv2d, nn.ReLU])):
        kinds = [type(m) for m in build(name).features]
        assert kinds[:len(unit) + 1] == unit + [nn.MaxPool2d]  # BN between the conv and its ReLU
        assert kinds.count(nn.Conv2d) == 8 and kinds.count(nn.MaxPool2d) == 5
        assert kinds.count(nn.BatchNorm2d) == (8 if name == "VGG_A_BN" else 0)


def test_channel_attention_scales_change_output():
    se = ChannelAttention()
    x = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        before = se.attention(x)
        se.scales.mul_(0.0)  # all branches off -> sigmoid(0) = 0.5 everywhere
        torch.testing.assert_close(se.attention(x), torch.full_like(before, 0.5))
    assert not torch.allclose(before, torch.full_like(before, 0.5))


def test_channel_attention_one_conv_is_the_three_branches():
    torch.manual_seed(0)
    se = ChannelAttention().double()
    with torch.no_grad():
        se.scales.copy_(torch.tensor([0.7, -1.3, 0.4]))
    x = torch.randn(3, 12, 5, 5, dtype=torch.float64)
    y = x.mean(dim=(2, 3)).reshape(3, 1, 12)
    # The specification's form: three 'same' 1-D convolutions, weighted by the scalars and summed.
    ref = torch.sigmoid(sum(s * conv(y) for s, conv in zip(se.scales, se.convs))).reshape(3, 12, 1, 1)
    ref_grads = torch.autograd.grad(ref.square().sum(), list(se.parameters()))
    out = se.attention(x)
    grads = torch.autograd.grad(out.square().sum(), list(se.parameters()))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    assert se.mixed_kernel().shape == (1, 1, 7)
    se.merged = False  # the branches one by one, as specified (the naive benchmark, the FLOP count)
    torch.testing.assert_close(se.attention(x), ref, rtol=1e-12, atol=1e-12)


def _conv_calls(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(forward, backward) convolution calls of one training step of `model` on x, counted by torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x).square().mean().backward()
    counts = {e.key: e.count for e in prof.key_averages()}
    return counts.get("aten::convolution", 0), counts.get("aten::convolution_backward", 0)


def test_merged_blocks_compute_the_same_with_fewer_convolutions():
    torch.manual_seed(0)
    per_path = build("CANet_tiny").double().train()
    merged = build("CANet_tiny").double().train()
    merged.load_state_dict(per_path.state_dict())
    assert set_merged(merged, True) is merged and all(b.merged is True for b in merged.blocks)
    set_merged(per_path, False)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    # Outputs, every parameter's gradient and the BatchNorm running statistics agree (float64: only the
    # summation order differs).
    torch.testing.assert_close(merged(x), per_path(x), rtol=1e-10, atol=1e-10)
    # Specified structure: 13 per block (4 path convs, shortcut, SA, 3 SE branches, 2 x 2 unit_transform).
    assert _conv_calls(merged, x) == (45, 45) and _conv_calls(per_path, x) == (78, 78)
    assert _conv_calls(set_merged(build("CANet_tiny"), None), x.float()) == (66, 66)  # on a CPU: SE merged
    for (name, p), q in zip(per_path.named_parameters(), merged.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-8, atol=1e-10, msg=name)
    for (name, buf), other in zip(per_path.named_buffers(), merged.buffers()):
        torch.testing.assert_close(other, buf, rtol=1e-10, atol=1e-10, msg=name)
    # In eval mode (running statistics) and in channels_last, too.
    merged.eval(), per_path.eval()
    torch.testing.assert_close(merged(x), per_path(x), rtol=1e-10, atol=1e-10)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(merged.to(memory_format=torch.channels_last)(x_cl), per_path(x), rtol=1e-10,
                               atol=1e-10)
    # The shared unit_transform runs once per block in the merged form, on SA(a) and SE(b) stacked.
    calls = []
    merged.blocks[0].unit_transform.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    with torch.no_grad():
        merged.blocks[0](x)
    assert calls == [torch.Size([8, 16, 32, 32])]


def test_side_stream_is_set_per_block_and_ignored_for_cpu_inputs():
    torch.manual_seed(0)
    one, two = (set_merged(build("CANet_tiny").double().train(), True) for _ in range(2))
    two.load_state_dict(one.state_dict())
    never_used = object()  # a CPU input must not touch the stream: this object has no CUDA stream methods
    assert set_side_stream(two, never_used) is two and all(b.side_stream is never_used for b in two.blocks)
    assert all(b.side_stream is None for b in one.blocks)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(two(x), one(x), rtol=0, atol=0)
    resnet = build("ResNet18")
    assert set_side_stream(resnet, never_used) is resnet and not hasattr(resnet, "side_stream")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA streams")
def test_side_stream_computes_the_same_on_cuda():
    torch.manual_seed(0)
    one, two = (set_merged(build("CANet_tiny").cuda().train(), True) for _ in range(2))
    two.load_state_dict(one.state_dict())
    set_side_stream(two, torch.cuda.Stream())
    x = torch.randn(8, 3, 32, 32, device="cuda")
    outs = [m(x) for m in (one, two)]
    for m, out in zip((one, two), outs):
        out.square().sum().backward()
    torch.cuda.synchronize()
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
    for p, q in zip(one.parameters(), two.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("channels_last", [True, False])
def test_merged_blocks_give_batchnorm_dense_inputs(channels_last):
    # A channel slice of the merged convolution's output is strided; BatchNorm on it falls back to CUDA's
    # generic (slow) kernels. Every BatchNorm (4 per block: both paths, shortcut, output; and the head's) must
    # see a dense tensor in x's memory format.
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = set_merged(build("CANet_tiny"), True).to(memory_format=fmt)
    seen = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.register_forward_pre_hook(
                lambda m, i, name=name: seen.append((name, i[0].is_contiguous(memory_format=fmt))))
    model(torch.randn(2, 3, 32, 32).contiguous(memory_format=fmt))
    assert len(seen) == 6 * 4 + 1 and "blocks.0.shortcut.1" in dict(seen)
    assert [name for name, dense in seen if not dense] == []


def test_merged_form_is_chosen_by_device_or_by_the_environment(monkeypatch):
    monkeypatch.delenv(MERGED_ENV, raising=False)
    model = build("CANet_tiny")
    block = model.blocks[0]
    assert block.merged is None and not block.merged_for(torch.zeros(1, 3, 8, 8))  # a CPU tensor: per path
    set_merged(model, True)
    assert block.merged_for(torch.zeros(1, 3, 8, 8)) and block.se.merged is True
    resnet = build("ResNet18")
    assert set_merged(resnet, True) is resnet  # no AttResBlocks: nothing to set
    monkeypatch.setenv(MERGED_ENV, "0")  # e.g. if a GPU measured the merged form slower
    assert all(m.merged is False for m in build("CANet").modules() if hasattr(m, "merged"))
    monkeypatch.setenv(MERGED_ENV, "1")
    assert build("CANet_tiny").blocks[3].merged_for(torch.zeros(1, 16, 8, 8))
    monkeypatch.setenv(MERGED_ENV, "yes")
    with pytest.raises(ValueError, match="CIFAR10_CANET_MERGED='yes'.*use 1"):
        build("CANet_tiny")


def test_canet_gradients_reach_attention(canet_tiny):
    model = build("CANet_tiny").train()
    out = model(torch.randn(4, 3, 32, 32))
    out.square().mean().backward()
    block = model.blocks[2]
    for module in (block.sa, block.se, block.unit_transform):
        grads = [p.grad for p in module.parameters()]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_init_xavier_sets_biases_and_bn():
    torch.manual_seed(0)
    model = init_xavier_(build("VGG_A_BN"))
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert torch.count_nonzero(m.bias) == 0
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight.detach(), torch.ones_like(m.weight))
            assert torch.count_nonzero(m.bias) == 0
    # Xavier normal: std = sqrt(2 / (fan_in + fan_out)); the 512x512 layer has 262k samples.
    w = model.classifier[0].weight.detach()
    assert abs(w.std().item() - (2 / 1024) ** 0.5) < 1e-3


def test_public_names_exported():
    for name in ("build", "list_models", "last_linear", "PART1_MODELS", "init_xavier_", "VGG_A", "CANet"):
        assert hasattr(models, name)
