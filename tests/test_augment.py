"""Tests for lib/augment.py (batched augmentation) and lib/loader.py (BatchLoader); tiny tensors, CPU."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from lib.augment import (apply_mix, to_device_async, draw_mix, erase_with, flip_crop, flip_crop_with, mix_batch, random_erasing,
                         random_erasing_boxes, to_float_normalized)
from lib.loader import Batch, BatchLoader

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def images(n=6, h=8, w=8, seed=0):
    """uint8 (n, 3, h, w) random images."""
    return torch.randint(0, 256, (n, 3, h, w), generator=gen(seed), dtype=torch.uint8)


def unique_images(n, h, w):
    """float (n, 3, h, w) whose pixel values are all distinct and nonzero (0 is then only padding)."""
    return torch.arange(1, n * 3 * h * w + 1, dtype=torch.float32).reshape(n, 3, h, w)


def shifted(img, flip, dy, dx, pad):
    """Reference: the crop at (dy, dx) of the padded (flipped) image, built by slicing (C, H, W)."""
    src = img.flip(-1) if flip else img
    _, h, w = img.shape
    sy, sx = dy - pad, dx - pad  # shift of the source relative to the output
    out = torch.zeros_like(img)
    out[:, max(0, -sy):h - max(0, sy), max(0, -sx):w - max(0, sx)] = \
        src[:, max(0, sy):h - max(0, -sy), max(0, sx):w - max(0, -sx)]
    return out


# --------------------------------------------------------------------------------- normalisation

def test_to_float_normalized_values_and_errors():
    x = images(4)
    out = to_float_normalized(x, MEAN, STD)
    expected = (x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="uint8"):
        to_float_normalized(x.float(), MEAN, STD)
    with pytest.raises(ValueError, match="channels"):
        to_float_normalized(x, (0.5, 0.5), STD)


# --------------------------------------------------------------------------------- flip + crop

@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_flip_crop_with_matches_torchvision(dtype):
    x = images(6, 10, 12).to(dtype)
    flip = torch.tensor([False, True, False, True, True, False])
    dy = torch.tensor([0, 8, 4, 3, 0, 7])
    dx = torch.tensor([8, 0, 4, 5, 1, 2])
    out = flip_crop_with(x, flip, dy, dx, padding=4)
    assert out.dtype == dtype and out.shape == x.shape
    for i in range(len(x)):
        img = TF.hflip(x[i]) if flip[i] else x[i]
        ref = TF.crop(TF.pad(img, [4]), int(dy[i]), int(dx[i]), 10, 12)
        assert torch.equal(out[i], ref), f"image {i} differs from torchvision"


def test_flip_crop_with_rejects_bad_offsets():
    x = images(2)
    with pytest.raises(ValueError, match=r"\[0, 8\]"):
        flip_crop_with(x, torch.tensor([False, False]), torch.tensor([0, 9]), torch.tensor([0, 0]), padding=4)
    with pytest.raises(ValueError, match="shape"):
        flip_crop_with(x, torch.tensor([False]), torch.tensor([0, 1]), torch.tensor([0, 0]), padding=4)


@pytest.mark.parametrize("device", DEVICES)
def test_flip_crop_is_a_shifted_copy_with_varied_offsets(device):
    n, h, w, pad = 48, 8, 8, 4
    x = unique_images(n, h, w).to(device)
    out = flip_crop(x, pad, generator=gen(1)).cpu()
    assert out.shape == x.shape and out.dtype == x.dtype
    found = []
    for i in range(n):
        matches = [(f, dy, dx) for f in (False, True) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                   if torch.equal(out[i], shifted(x[i].cpu(), f, dy, dx, pad))]
        assert len(matches) == 1, f"image {i} is not a padded shifted (flipped) copy of its input"
        found.append(matches[0])
    flips = [f for f, _, _ in found]
    offsets = {(dy, dx) for _, dy, dx in found}
    assert 0.25 < sum(flips) / n < 0.75
    assert len(offsets) > n // 3, "images should get their own offsets"
    assert min(o for dydx in offsets for o in dydx) == 0 and max(o for dydx in offsets for o in dydx) == 2 * pad


def test_flip_crop_uint8_and_seed_determinism():
    x = images(16)
    a = flip_crop(x, generator=gen(3))
    b = flip_crop(x, generator=gen(3))
    c = flip_crop(x, generator=gen(4))
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(TypeError, match="Generator"):
        flip_crop(x, generator=0)


# --------------------------------------------------------------------------------- random erasing

def test_erasing_boxes_respect_scale_ratio_and_image():
    n, h, w = 4000, 32, 32
    apply, boxes = random_erasing_boxes(n, h, w, p=0.5, scale=(0.04, 0.2), ratio=(0.5, 2.0), generator=gen(0))
    top, left, bh, bw = boxes.double().unbind(1)
    # h and w are rounded from real sides h_r, w_r (|h - h_r| <= 0.5): the area moves by at most
    # 0.5 * (h + w) + 0.25, and the drawn aspect h_r / w_r lies in [(h - .5) / (w + .5), (h + .5) / (w - .5)].
    slack = 0.5 * (bh + bw) + 0.25
    area = bh * bw
    assert bool((area >= 0.04 * h * w - slack).all()) and bool((area <= 0.2 * h * w + slack).all())
    assert bool(((bh - 0.5) / (bw + 0.5) <= 2.0).all()) and bool(((bh + 0.5) / (bw - 0.5) >= 0.5).all())
    aspect = bh / bw
    assert aspect.min() < 0.6 and aspect.max() > 1.8
    assert bool((top >= 0).all() and (left >= 0).all() and (top + bh <= h).all() and (left + bw <= w).all())
    # Most boxes are well within the un-rounded bounds, and the drawn sizes cover the range.
    assert float(((area >= 0.04 * h * w) & (area <= 0.2 * h * w)).double().mean()) > 0.9
    assert area.min() < 0.06 * h * w and area.max() > 0.18 * h * w
    assert abs(float(apply.double().mean()) - 0.5) < 0.03
    assert top.max() > 20 and left.max() > 20 and top.min() == 0 and left.min() == 0


def test_erasing_boxes_are_drawn_as_torchvision_draws_them():
    from scipy import stats
    from torchvision import transforms as T

    n, scale, ratio = 4000, (0.04, 0.2), (0.5, 2.0)
    _, ours = random_erasing_boxes(n, 32, 32, p=1.0, scale=scale, ratio=ratio, generator=gen(0))
    torch.manual_seed(0)
    img = torch.zeros(3, 32, 32)
    theirs = torch.tensor([T.RandomErasing.get_params(img, scale=scale, ratio=ratio, value=[0])[:4]
                           for _ in range(n)], dtype=torch.float64)
    ours = ours.double()
    for name, f in (("h", lambda b: b[:, 2]), ("w", lambda b: b[:, 3]), ("area", lambda b: b[:, 2] * b[:, 3]),
                    ("aspect", lambda b: b[:, 2] / b[:, 3]), ("top", lambda b: b[:, 0]), ("left", lambda b: b[:, 1])):
        a, b = f(ours).numpy(), f(theirs).numpy()
        # Means within 3% (a uniform instead of log-uniform aspect moves the mean aspect by 15%), and no
        # detectable difference in distribution (two-sample Kolmogorov-Smirnov).
        assert abs(a.mean() - b.mean()) < 0.03 * b.mean(), name
        assert stats.ks_2samp(a, b).pvalue > 1e-3, name


@pytest.mark.parametrize("device", DEVICES)
def test_random_erasing_p0_p1_and_value(device):
    x = (torch.randn(20, 3, 16, 16, generator=gen(0)) + 10).to(device)  # no pixel equals the erase value
    assert torch.equal(random_erasing(x, p=0.0, generator=gen(1)), x)
    value = -3.0
    out = random_erasing(x, p=1.0, value=value, generator=gen(1))
    _, boxes = random_erasing_boxes(20, 16, 16, p=1.0, generator=gen(1))  # same draws
    out = out.cpu()
    for i, (top, left, bh, bw) in enumerate(boxes.tolist()):
        erased = out[i] == value  # (3, H, W)
        assert int(erased.sum()) == 3 * bh * bw, f"image {i}: wrong number of erased pixels"
        assert bool(erased[:, top:top + bh, left:left + bw].all())
        assert torch.equal(out[i][~erased], x[i].cpu()[~erased])  # everything else untouched
    assert x.min() > 5  # input not modified in place


def test_erase_with_only_where_applied():
    x = torch.ones(3, 1, 4, 4)
    boxes = torch.tensor([[0, 0, 2, 2], [1, 1, 3, 3], [2, 2, 1, 2]])
    out = erase_with(x, torch.tensor([True, False, True]), boxes, 0.0)
    assert out.sum(dim=(1, 2, 3)).tolist() == [12.0, 16.0, 14.0]
    assert float(out[2, 0, 2, 2:4].sum()) == 0.0


# --------------------------------------------------------------------------------- MixUp / CutMix

def test_mixup_is_exact_convex_combination():
    x = torch.randn(8, 3, 6, 6, generator=gen(0))
    y = torch.arange(8)  # labels = indices, so y_b reveals the permutation
    for seed in range(10):
        xm, ya, yb, lam = mix_batch(x, y, mixup_p=1.0, cutmix_p=0.0, generator=gen(seed))
        assert isinstance(lam, float) and 0.0 < lam <= 1.0
        assert torch.equal(ya, y) and sorted(yb.tolist()) == list(range(8))
        assert torch.equal(xm, lam * x + (1 - lam) * x[yb])


def test_cutmix_lam_equals_kept_area():
    n, h, w = 8, 12, 10
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, h, w).contiguous()  # image i == i
    y = torch.arange(n)
    lams = []
    for seed in range(30):
        xm, _, yb, lam = mix_batch(x, y, mixup_p=0.0, cutmix_p=1.0, generator=gen(seed))
        assert isinstance(lam, float) and 0.0 < lam <= 1.0
        lams.append(lam)
        for i in range(n):
            if yb[i] == i:
                assert torch.equal(xm[i], x[i])
                continue
            from_other = xm[i] == float(yb[i])  # pixels that came from the partner image
            assert bool(((xm[i] == i) | from_other).all())
            assert lam == pytest.approx(1 - int(from_other.sum()) / (3 * h * w), abs=1e-12)
    assert min(lams) < 0.8 and len(set(lams)) > 5


def test_mix_branch_frequencies_and_none_branch():
    counts = {"none": 0, "mixup": 0, "cutmix": 0}
    g = gen(0)
    draws = 4000
    for _ in range(draws):
        counts[draw_mix(2, 4, 4, mixup_p=0.3, cutmix_p=0.3, alpha=0.5, generator=g).kind] += 1
    assert abs(counts["mixup"] / draws - 0.3) < 0.03
    assert abs(counts["cutmix"] / draws - 0.3) < 0.03
    assert abs(counts["none"] / draws - 0.4) < 0.03
    x, y = torch.randn(4, 3, 4, 4), torch.arange(4)
    xm, ya, yb, lam = mix_batch(x, y, mixup_p=0.0, cutmix_p=0.0, generator=gen(0))
    assert xm is x and yb is y and lam == 1.0
    with pytest.raises(ValueError, match="exclusive"):
        draw_mix(2, 4, 4, mixup_p=0.6, cutmix_p=0.6, generator=gen(0))


def test_apply_mix_y_b_is_permuted_labels():
    y = torch.tensor([5, 3, 9, 1])
    plan = draw_mix(4, 4, 4, mixup_p=1.0, cutmix_p=0.0, generator=gen(2))
    _, _, yb, _ = apply_mix(torch.zeros(4, 3, 4, 4), y, plan)
    assert torch.equal(yb, y[plan.perm])


def test_cutmix_box_has_the_drawn_side_and_reaches_every_edge():
    # The draws do not depend on the branch: the same seed's MixUp plan carries the Beta draw lam0, from which
    # CutMix cuts a box of side int(size * sqrt(1 - lam0)) around a uniform centre, clipped only at the edges.
    h, w = 20, 16
    boxes = []
    for seed in range(300):
        lam0 = draw_mix(4, h, w, mixup_p=1.0, cutmix_p=0.0, generator=gen(seed)).lam
        y0, y1, x0, x1 = draw_mix(4, h, w, mixup_p=0.0, cutmix_p=1.0, generator=gen(seed)).box
        cut_h, cut_w = int(h * math.sqrt(1.0 - lam0)), int(w * math.sqrt(1.0 - lam0))
        assert 0 <= y0 <= y1 <= h and 0 <= x0 <= x1 <= w, seed
        assert y1 - y0 <= cut_h and x1 - x0 <= cut_w, seed
        if 0 < y0 and y1 < h:  # not clipped: the whole drawn side
            assert y1 - y0 == cut_h, seed
        if 0 < x0 and x1 < w:
            assert x1 - x0 == cut_w, seed
        boxes.append((y0, y1, x0, x1))
    y0s, y1s, x0s, x1s = zip(*boxes)
    assert min(y0s) == 0 and min(x0s) == 0 and max(y1s) == h and max(x1s) == w  # boxes reach every edge


# --------------------------------------------------------------------------------- BatchLoader

def make_loader(X, y, **kw):
    kw.setdefault("batch_size", 16)
    return BatchLoader(X, y, mean=MEAN, std=STD, **kw)


def collect(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader)


def test_loader_eval_mode_is_normalised_input_in_order():
    X, y = images(50), torch.arange(50)
    loader = make_loader(X, y, shuffle=False, augment=False, mixup_p=0.3, cutmix_p=0.3, erase_p=1.0)
    batches = collect(loader, 3)
    assert all(isinstance(b, Batch) and b.lam == 1.0 and b.y_b is b.y for b in batches)
    torch.testing.assert_close(torch.cat([b.x for b in batches]), to_float_normalized(X, MEAN, STD), rtol=0, atol=0)
    assert torch.equal(torch.cat([b.y for b in batches]), y)


def test_loader_len_and_drop_last():
    X, y = images(50), torch.arange(50)
    for drop_last, expected_len, expected_n in [(False, 4, 50), (True, 3, 48)]:
        loader = make_loader(X, y, shuffle=True, drop_last=drop_last)
        batches = list(loader)
        assert len(loader) == expected_len == len(batches) and loader.num_samples == 50
        assert sum(len(b.y) for b in batches) == expected_n
        assert all(len(b.y) == 16 for b in batches[:3])


@pytest.mark.parametrize("device", DEVICES)
def test_loader_reproducible_per_epoch_and_covers_every_sample(device):
    X, y = images(40).to(device), torch.arange(40).to(device)
    kw = dict(shuffle=True, augment=True, erase_p=0.5, mixup_p=0.3, cutmix_p=0.3, seed=7)
    a = collect(make_loader(X, y, **kw), 2)
    b = collect(make_loader(X, y, **kw), 2)  # a fresh loader, as after a resume
    c = collect(make_loader(X, y, **kw), 3)
    for ba, bb in zip(a, b, strict=True):
        assert torch.equal(ba.x, bb.x) and torch.equal(ba.y, bb.y) and torch.equal(ba.y_b, bb.y_b)
        assert ba.lam == bb.lam
    assert not torch.equal(torch.cat([t.y for t in a]), torch.cat([t.y for t in c]))
    for batches in (a, c):
        assert sorted(torch.cat([t.y for t in batches]).tolist()) == list(range(40))
        assert all(t.x.dtype == torch.float32 and t.x.device.type == device for t in batches)
    # the second pass over the same epoch repeats it; another seed gives another order
    loader = make_loader(X, y, **kw)
    assert torch.equal(collect(loader, 2)[0].x, collect(loader, 2)[0].x)
    other = collect(make_loader(X, y, **{**kw, "seed": 8}), 2)
    assert not torch.equal(torch.cat([t.y for t in a]), torch.cat([t.y for t in other]))


def test_loader_augments_and_mixes_when_training():
    X, y = images(64), torch.arange(64)
    loader = make_loader(X, y, shuffle=False, augment=True, erase_p=1.0, mixup_p=0.5, cutmix_p=0.5)
    batches = [b for epoch in range(4) for b in collect(loader, epoch)]
    plain = to_float_normalized(X[:16], MEAN, STD)
    assert not torch.equal(batches[0].x, plain)
    assert any(b.lam < 1.0 for b in batches)
    assert all(0.0 < b.lam <= 1.0 and torch.equal(b.y, torch.arange(i % 4 * 16, i % 4 * 16 + 16))
               for i, b in enumerate(batches))


def test_loader_pads_before_normalising_and_erases_to_zero():
    # White images: every augmented pixel is white, crop padding (black, normalised to -mean/std, as torchvision
    # pads the image before Normalize) or erased (0 on the normalised image, torchvision's RandomErasing value).
    X, y = torch.full((32, 3, 8, 8), 255, dtype=torch.uint8), torch.arange(32)
    loader = make_loader(X, y, shuffle=False, augment=True, erase_p=1.0, mixup_p=0.0, cutmix_p=0.0)
    x = torch.cat([b.x for b in collect(loader, 0)])
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    is_white = torch.isclose(x, ((1 - mean) / std).expand_as(x))
    is_black = torch.isclose(x, (-mean / std).expand_as(x))
    is_erased = x == 0
    assert bool((is_white | is_black | is_erased).all())
    assert bool(is_white.any()) and bool(is_black.any()) and bool(is_erased.any())
    assert bool(is_erased.flatten(1).any(1).all())  # erase_p=1: every image has its box


@pytest.mark.parametrize("erase_p, low, high", [(0.0, 0.0, 0.0), (0.15, 0.05, 0.3)])
def test_the_loader_erases_the_share_of_images_its_erase_p_says(erase_p, low, high):
    X, y = torch.full((128, 3, 8, 8), 255, dtype=torch.uint8), torch.arange(128)
    loader = make_loader(X, y, shuffle=False, augment=True, erase_p=erase_p, mixup_p=0.0, cutmix_p=0.0)
    x = torch.cat([b.x for b in collect(loader, 0)])
    share = float((x == 0).flatten(1).any(1).float().mean())  # images with erased pixels
    assert low <= share <= high


def test_loader_channels_last_and_errors():
    X, y = images(8), torch.arange(8)
    x = next(iter(make_loader(X, y, channels_last=True))).x
    assert x.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="uint8"):
        make_loader(X.float(), y)
    with pytest.raises(ValueError, match="one label per image"):
        make_loader(X, y[:4])
    with pytest.raises(ValueError, match="one value per channel"):
        BatchLoader(X, y, 4, mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(X, y, batch_size=0)


# --------------------------------------------------------------------------------- GPU only

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loader_same_batches_on_cpu_and_cuda_without_syncs():
    X, y = images(64), torch.arange(64)
    kw = dict(shuffle=True, augment=True, erase_p=0.5, mixup_p=0.3, cutmix_p=0.3, seed=1)
    cpu = [b for e in range(3) for b in collect(make_loader(X, y, **kw), e)]
    loader = make_loader(X.cuda(), y.cuda(), **kw)
    gpu = []
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync inside the loader raises
    try:
        for e in range(3):
            gpu += collect(loader, e)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for bc, bg in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(bg.x.cpu(), bc.x, rtol=1e-6, atol=1e-6)
        assert torch.equal(bg.y.cpu(), bc.y) and torch.equal(bg.y_b.cpu(), bc.y_b) and bg.lam == bc.lam


def test_to_device_async_copies_to_the_cpu_without_pinning():
    t = torch.arange(6).reshape(2, 3)
    out = to_device_async(t, torch.device("cpu"))  # pinning needs CUDA: only copies to CUDA are pinned
    assert torch.equal(out, t) and out.device.type == "cpu" and not out.is_pinned()


def test_mixed_loss_and_accuracy_weigh_both_targets_and_leave_an_unmixed_batch_alone():
    from lib.augment import mixed_accuracy, mixed_loss

    g = torch.Generator().manual_seed(0)
    out = torch.randn(6, 10, generator=g)
    y, y_b = torch.randint(0, 10, (6,), generator=g), torch.randint(0, 10, (6,), generator=g)
    ce = lambda t: F.cross_entropy(out, t, label_smoothing=0.1)
    assert torch.equal(mixed_loss(out, y, y_b, 1.0, label_smoothing=0.1), ce(y))
    # As a CUDA graph reads them: lam = 1, rest = 0 as tensors give CE(y) to the bit.
    assert torch.equal(mixed_loss(out, y, y_b, torch.tensor(1.0), torch.tensor(0.0), label_smoothing=0.1), ce(y))
    torch.testing.assert_close(mixed_loss(out, y, y_b, 0.3, label_smoothing=0.1), 0.3 * ce(y) + 0.7 * ce(y_b))
    hit, hit_b = (out.argmax(1) == y).float().mean(), (out.argmax(1) == y_b).float().mean()
    torch.testing.assert_close(mixed_accuracy(out, y, y_b, 0.3), 0.3 * hit + 0.7 * hit_b)
    assert torch.equal(mixed_accuracy(out, y, y_b, 1.0), hit)
