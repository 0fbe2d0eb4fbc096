"""Part 2 BatchNorm study: the probe's exactness and restoration, the loss band, data order, result files."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lib.bn_study as S
from lib.paths import output_dirs
from lib.results import atomic_write_json


def small_cnn(batch_norm: bool) -> nn.Module:
    """A tiny conv net, with or without BatchNorm; pools 32x32 inputs to 8x8 first, to stay cheap."""
    layers = [nn.AvgPool2d(4, ceil_mode=True), nn.Conv2d(3, 4, 3, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(4))
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 10)]
    return nn.Sequential(*layers)


@pytest.fixture
def tiny_models(monkeypatch):
    """Stand-ins for VGG_A / VGG_A_BN (the same small CNN without / with BN): VGG-A costs seconds per step
    on a busy 2-core CPU, and these tests are about the bookkeeping, not the network."""
    import lib.models
    import lib.train

    real_build = lib.models.build
    stand_ins = {"VGG_A": lambda: small_cnn(False), "VGG_A_BN": lambda: small_cnn(True)}
    fake_build = lambda name, num_classes=10: stand_ins.get(name, lambda: real_build(name))()  # noqa: E731
    monkeypatch.setattr(lib.models, "build", fake_build)
    monkeypatch.setattr(lib.train, "build", fake_build)  # the trainer imported it by name


def tiny_probe_cfg(source, model="VGG_A", **kw) -> S.ProbeConfig:
    """A sub-second CPU probe run on the tests' tiny image folder (72 training images)."""
    base = dict(model=model, profile="smoke", data_source=source, num_train=None, batch_size=16, num_steps=4,
                probe_every=2, eta_multipliers=(1.0, 3.0), device="cpu", fallback=False)
    base.update(kw)
    return S.ProbeConfig(**base)


# ------------------------------------------------------------------------------------------ probe_step

def test_probe_losses_and_gradients_are_those_of_the_moved_weights_with_batch_statistics():
    """L(w - eta g) and its gradient as training computes them: train mode, so BatchNorm uses the batch's statistics
    (an eval-mode probe would use the running averages and give other values), on a copy moved by hand."""
    import copy

    torch.manual_seed(0)
    model = small_cnn(batch_norm=True).eval()  # the probe puts it in train mode itself, and back
    with torch.no_grad():
        for name, b in model.named_buffers():
            if "running_var" in name:
                b.fill_(5.0)  # running statistics far from the batch's
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    params = list(model.parameters())
    grads = torch.autograd.grad(F.cross_entropy(model.train()(x), y), params)
    model.eval()
    rec = S.probe_step(model, params, grads, x, y, etas=[0.1])
    assert not model.training
    moved = copy.deepcopy(model).train()
    with torch.no_grad():
        for p, g in zip(moved.parameters(), grads):
            p.sub_(0.1 * g)
    loss = F.cross_entropy(moved(x), y)
    g_eta = torch.autograd.grad(loss, list(moved.parameters()))
    gdiff = torch.sqrt(sum(((g - ge) ** 2).sum() for g, ge in zip(grads, g_eta)))
    torch.testing.assert_close(rec["loss"][0], loss.detach(), rtol=1e-5, atol=1e-6)
    assert float(rec["gdiff"][0]) == pytest.approx(float(gdiff), rel=1e-5)  # (the probe sums in double)
    with torch.no_grad():
        assert abs(float(F.cross_entropy(moved.eval()(x), y)) - float(loss)) > 1e-3  # the two modes differ here


def test_the_probe_runs_train_on_training_images_only(tiny_source):
    from lib.data import load_cifar10, study_split

    loader, info = S.probe_data(tiny_probe_cfg(tiny_source), torch.device("cpu"))
    X_tr, _, X_val, _ = study_split(load_cifar10(tiny_source))
    seen = {bytes(x) for x in loader.X.numpy()}
    assert loader.num_samples == info["num_train_used"] == len(X_tr) == 72
    assert seen == {bytes(torch.from_numpy(x).permute(2, 0, 1).contiguous().numpy()) for x in X_tr}
    assert not seen & {bytes(torch.from_numpy(x).permute(2, 0, 1).contiguous().numpy()) for x in X_val}


def test_probe_restores_params_grads_optimizer_state_and_bn_buffers_bitwise():
    torch.manual_seed(0)
    model = small_cnn(batch_norm=True)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(2):  # non-trivial .grad, Adam moments and BN running statistics
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    loss = F.cross_entropy(model(x), y)  # this forward also moves the running stats, as in training
    grads = torch.autograd.grad(loss, params)
    before_params = [p.detach().clone() for p in params]
    before_grads = [p.grad.clone() for p in params]
    before_buffers = {k: b.clone() for k, b in model.named_buffers()}
    before_opt = opt.state_dict()
    before_state = {i: {k: v.clone() for k, v in s.items()} for i, s in before_opt["state"].items()}

    rec = S.probe_step(model, params, grads, x, y, etas=[0.05, 0.2, 0.4])

    assert all(torch.equal(a, p) for a, p in zip(before_params, params))
    assert all(torch.equal(a, p.grad) for a, p in zip(before_grads, params))
    buffers = dict(model.named_buffers())
    assert set(buffers) == {"2.running_mean", "2.running_var", "2.num_batches_tracked"}
    assert all(torch.equal(before_buffers[k], buffers[k]) for k in buffers)
    after_state = opt.state_dict()["state"]
    for i, s in before_state.items():
        assert all(torch.equal(v, after_state[i][k]) for k, v in s.items())
    assert model.training
    # The probe did move the model: the losses along the gradient differ and the gradients changed.
    assert rec["loss"].shape == (3,) and len(set(rec["loss"].tolist())) == 3
    assert bool((rec["gdiff"] > 0).all())
    # ...and the running stats would have moved without the restore (the test can fail).
    model(x)
    assert not torch.equal(before_buffers["2.running_mean"], model[2].running_mean)


def test_probe_keeps_eval_mode_of_caller():
    model = small_cnn(batch_norm=True).eval()
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    params = list(model.parameters())
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    S.probe_step(model, params, grads, x, y, etas=[0.1])
    assert not model.training


def test_linear_least_squares_gives_exact_predictiveness_and_beta():
    """loss = 0.5 * ||X w - b||^2 / n has Hessian H = X^T X / n, so g_eta = g - eta H g exactly."""
    torch.manual_seed(1)
    n, d = 20, 5
    X = torch.randn(n, d, dtype=torch.float64)
    b = torch.randn(n, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    loss_fn = lambda out, target: 0.5 * ((out.squeeze(1) - target) ** 2).mean()  # noqa: E731
    params = list(model.parameters())
    w = params[0].detach().clone().squeeze(0)  # (d,)
    g = torch.autograd.grad(loss_fn(model(X), b), params)
    g_vec = g[0].squeeze(0)
    H = X.T @ X / n
    assert torch.allclose(g_vec, X.T @ (X @ w - b) / n)
    etas = [0.05, 0.1, 0.4, 1.5]
    rec = S.probe_step(model, params, g, X, b, etas, loss_fn=loss_fn)
    Hg = torch.linalg.vector_norm(H @ g_vec)
    expected_gdiff = torch.tensor(etas, dtype=torch.float64) * Hg
    expected_loss = torch.stack([0.5 * ((X @ (w - e * g_vec) - b) ** 2).mean() for e in etas])
    assert torch.allclose(rec["gdiff"].double(), expected_gdiff, rtol=1e-6)
    assert torch.allclose(rec["beta"].double(), (Hg / torch.linalg.vector_norm(g_vec)).expand(4), rtol=1e-6)
    assert torch.allclose(rec["loss"].double(), expected_loss, rtol=1e-6)
    assert float(rec["grad_norm"]) == pytest.approx(float(torch.linalg.vector_norm(g_vec)), rel=1e-6)
    # The summary of this probe: beta is the (constant) ratio, the predictiveness band spans eta_min..eta_max.
    summary = S.summarize_probes([rec])
    assert summary["gpred_min"][0] == pytest.approx(0.05 * float(Hg), rel=1e-6)
    assert summary["gpred_max"][0] == pytest.approx(1.5 * float(Hg), rel=1e-6)
    assert summary["beta"][0] == pytest.approx(float(Hg / torch.linalg.vector_norm(g_vec)), rel=1e-6)
    assert summary["nonfinite"] == [0]


def test_gradient_norms_of_a_diverging_network_stay_finite():
    # float32 overflows here (the norm of ten values of 1e20 is 3.2e20, its square 1e41); the probe's maxima
    # would then drop exactly the least smooth steps.
    assert torch.linalg.vector_norm(torch.full((10,), 1e20)).isinf()
    norm = S._global_norm([torch.full((10,), 1e20), torch.zeros(3)])
    assert norm.dtype == torch.float64 and norm.item() == pytest.approx(math.sqrt(10) * 1e20, rel=1e-6)


def test_probe_summary_counts_a_beta_that_is_not_finite_once():
    finite = {"loss": torch.tensor([1.0, 2.0]), "gdiff": torch.tensor([0.5, 1.0], dtype=torch.float64),
              "grad_norm": torch.tensor(1.0, dtype=torch.float64)}
    zero_grad = dict(finite, gdiff=torch.tensor([0.0, float("inf")], dtype=torch.float64),
                     grad_norm=torch.tensor(0.0, dtype=torch.float64))
    records = [dict(r, beta=r["gdiff"] / (torch.tensor([0.1, 0.2], dtype=torch.float64) * r["grad_norm"]))
               for r in (finite, zero_grad)]
    out = S.summarize_probes(records)
    # The second probe: beta 0/0 (NaN, its gdiff finite: counted) and inf/0 (its gdiff counted already).
    assert out["nonfinite"] == [0, 2] and out["beta"][0] == pytest.approx(5.0) and math.isnan(out["beta"][1])


def test_nan_minmax_ignores_and_counts_nonfinite():
    v = torch.tensor([[1.0, float("nan"), 3.0, float("inf")], [float("nan")] * 4, [2.0, -1.0, 0.5, 4.0]])
    lo, hi, bad = S.nan_minmax(v)
    assert lo[0] == 1.0 and hi[0] == 3.0 and bad.tolist() == [2, 4, 0]
    assert math.isnan(lo[1]) and math.isnan(hi[1])
    assert lo[2] == -1.0 and hi[2] == 4.0


def test_probe_summary_beta_is_the_largest_ratio_over_the_step_sizes():
    rec = {"loss": torch.tensor([1.0, 1.5, 3.0]), "gdiff": torch.tensor([0.1, 0.4, 0.6], dtype=torch.float64),
           "grad_norm": torch.tensor(2.0, dtype=torch.float64)}
    rec["beta"] = rec["gdiff"] / (torch.tensor([0.1, 0.2, 0.4], dtype=torch.float64) * rec["grad_norm"])  # .5, 1, .75
    out = S.summarize_probes([rec])
    assert out["beta"] == [pytest.approx(1.0)]  # max over eta, not the first or the smallest
    assert out["loss_min"] == [1.0] and out["loss_max"] == [3.0]
    assert out["gpred_min"] == [pytest.approx(0.1)] and out["gpred_max"] == [pytest.approx(0.6)]


def test_filter_normalized_direction_gives_each_filter_its_weights_norm():
    torch.manual_seed(0)
    model = small_cnn(batch_norm=True)
    direction = S.filter_normalized_direction(model, torch.Generator().manual_seed(3))
    for p, d in zip(model.parameters(), direction):
        assert d.shape == p.shape
        if p.dim() <= 1:  # biases, BN weight and bias: no move
            assert not d.any()
        else:  # each conv filter / each Linear neuron's weights: the norm of the matching weights
            torch.testing.assert_close(d.flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1))
            assert not torch.allclose(d, p.detach())


def test_loss_slice_at_zero_is_the_models_mean_loss_and_restores_the_model():
    torch.manual_seed(0)
    model = small_cnn(batch_norm=True)
    X, y = torch.randn(10, 3, 8, 8), torch.randint(0, 10, (10,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = S.loss_slice(model, X, y, alphas=[-1.0, 0.0, 0.5], seed=1, batch_size=4)  # batches of 4, 4 and 2
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        logits = model.eval()(X)
    assert out["alpha"] == [-1.0, 0.0, 0.5]
    assert out["loss"][1] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)  # mean over all images
    assert out["acc"][1] == pytest.approx(float((logits.argmax(1) == y).double().mean()))
    assert out["loss"][0] != pytest.approx(out["loss"][1])  # the direction moves the loss


def test_bn_summary_band_width_and_gradient_range_from_the_steps_files(tmp_path):
    dirs = output_dirs("smoke", root=tmp_path)
    Path(dirs.results).mkdir(parents=True, exist_ok=True)
    steps = {1e-3: {"loss": [1.0, 2.0, 3.0], "grad_max": [0.5, 0.7, 0.9], "grad_min": [-0.5, -0.1, -0.3]},
             1e-4: {"loss": [2.0, 2.5], "grad_max": [0.2, 0.2], "grad_min": [0.1, 0.0]}}
    for lr, s in steps.items():
        S._protocol_files(dirs, "VGG_A", lr)[1].write_text(json.dumps(s))
    proto = S.bn_summary(dirs, lrs=(1e-3, 1e-4))["protocol"]["VGG_A"]
    band = proto["loss_band"]
    assert band["num_runs"] == 2 and band["num_steps"] == 3
    # Widths 1.0 and 0.5 where both runs have a value; step 2 has one run only, which is no band.
    assert band["mean_width"] == pytest.approx(0.75) and band["median_width"] == pytest.approx(0.75)
    rng = proto["grad_range"]["0.001"]["range"]  # grad_max - grad_min per step: 1.0, 0.8, 1.2
    assert rng["min"] == pytest.approx(0.8) and rng["max"] == pytest.approx(1.2) and rng["mean"] == pytest.approx(1.0)
    assert proto["grad_range"]["0.0001"]["range"]["min"] == pytest.approx(0.1)
    # The slice's numbers: the loss at alpha = 0 is the middle of the 51 points, not a neighbour.
    alphas = np.linspace(-1.0, 1.0, S.SLICE_ALPHAS)
    S.slice_path(dirs, "VGG_A", S.BN_SEED).write_text(json.dumps(
        {"alpha": alphas.tolist(), "loss": (1.0 + np.abs(alphas)).tolist(), "config": {"num_images": 8}}))
    sliced = S.bn_summary(dirs, lrs=(1e-3, 1e-4))["slice"]["VGG_A"]
    assert sliced["loss_at_0"] == pytest.approx(1.0) and sliced["loss_at_pm1"] == pytest.approx([2.0, 2.0])
    assert sliced["loss_max"] == pytest.approx(2.0)


# ------------------------------------------------------------------------------------------ loss_band

def test_loss_band_handles_different_lengths_and_nonfinite():
    runs = [[3.0, 2.0, 1.0, 0.5, 0.4],
            [2.5, float("nan"), 1.5],  # a short run with a NaN
            [4.0, 2.2, float("inf"), None]]  # diverged: inf, then null as stored in JSON
    band = S.loss_band(runs)
    assert band.steps.tolist() == [0, 1, 2, 3, 4]
    assert band.lo[:3].tolist() == [2.5, 2.0, 1.0] and band.hi[:3].tolist() == [4.0, 2.2, 1.5]
    assert band.lo[3] == band.hi[3] == 0.5 and band.lo[4] == band.hi[4] == 0.4  # only the long run is left
    assert band.num_valid.tolist() == [3, 2, 2, 1, 1]
    assert band.num_ignored == 3  # nan, inf, None; the missing steps of the short runs are not counted
    all_bad = S.loss_band([[1.0, float("nan")], [2.0]])
    assert math.isnan(all_bad.lo[1]) and math.isnan(all_bad.hi[1]) and all_bad.num_valid[1] == 0
    with pytest.raises(ValueError, match="at least one run"):
        S.loss_band([])


def test_stuck_check_criterion():
    flat = [2.30] * 30
    assert S.stuck_check(flat, 90)["stuck"]
    learning = [2.3] * 20 + [2.0] * 10
    check = S.stuck_check(learning, 90)
    assert not check["stuck"] and check["step"] == 30 and check["window"] == 3
    assert check["mean_loss"] == pytest.approx(2.0)
    assert S.stuck_check([2.3, float("nan")] + [1.0] * 28, 90)["stuck"]  # a NaN means diverged
    with pytest.raises(ValueError, match="first 30"):
        S.stuck_check([1.0] * 5, 90)


# ------------------------------------------------------------------------------------------ configs

def test_probe_configs_per_profile():
    for profile in ("smoke", "quick", "full"):
        plain, bn = S.probe_configs(profile, "shared")
        assert (plain.model, bn.model) == ("VGG_A", "VGG_A_BN")
        assert plain.replace(model="VGG_A_BN") == bn  # identical apart from the model
        assert plain.lr == 0.1 and plain.precision == "fp32" and plain.init == "xavier"
    full = S.probe_configs("full", "shared")[0]
    assert full.probe_every == 20 and full.eta_multipliers == (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
    assert full.etas == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4])
    assert S.ProbeConfig.from_dict(json.loads(json.dumps(full.to_dict()))) == full
    with pytest.raises(ValueError, match="fp32"):
        S.ProbeConfig(model="VGG_A", precision="bf16")
    with pytest.raises(ValueError, match="below batch_size"):
        S.ProbeConfig(model="VGG_A", num_train=64, batch_size=128)
    with pytest.raises(ValueError, match="profile"):
        S.probe_configs("huge", "shared")


def test_same_seed_gives_same_initial_weights_for_bn_and_plain():
    plain = S.build_probe_model(S.ProbeConfig(model="VGG_A", device="cpu"), torch.device("cpu"))
    bn = S.build_probe_model(S.ProbeConfig(model="VGG_A_BN", device="cpu"), torch.device("cpu"))
    convs = lambda m: [l for l in m.modules() if isinstance(l, (nn.Conv2d, nn.Linear))]  # noqa: E731
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(convs(plain), convs(bn)))
    assert all(not l.bias.detach().any() for l in convs(plain))  # Xavier init: zero biases


# ------------------------------------------------------------------------------------------ runs (tiny data)

def test_run_probe_writes_complete_file_same_data_order_and_reuses(tiny_source, tmp_path, monkeypatch, tiny_models):
    dirs = output_dirs("smoke", root=tmp_path)
    plain_cfg = tiny_probe_cfg(tiny_source)
    plain = S.run_probe(plain_cfg, dirs, progress=False)
    bn = S.run_probe(tiny_probe_cfg(tiny_source, model="VGG_A_BN"), dirs, progress=False)
    path = dirs.results / "probe-VGG_A-s2020.json"
    on_disk = json.loads(path.read_text())
    assert on_disk == plain and on_disk["status"] == "ok" and on_disk["steps_done"] == 4
    p = on_disk["probes"]
    assert p["step"] == [0, 2]
    for key in ("loss_min", "loss_max", "gpred_min", "gpred_max", "beta", "nonfinite", "grad_norm"):
        assert len(p[key]) == 2, key
    assert np.array(p["loss_eta"]).shape == np.array(p["gdiff_eta"]).shape == (2, 2)
    assert all(lo <= hi for lo, hi in zip(p["loss_min"], p["loss_max"]))
    assert all(lo < hi for lo, hi in zip(p["gpred_min"], p["gpred_max"]))  # eta 0.3 moves g more than 0.1
    assert on_disk["etas"] == pytest.approx([0.1, 0.3]) and len(on_disk["train_loss"]) == 4
    assert {"device", "torch", "git_commit"} <= set(on_disk["environment"])
    # Same seed: both networks saw exactly the same batches; another seed sees others.
    assert plain["data_order_sha256"] == bn["data_order_sha256"]
    other = S._train_with_probes(plain_cfg.replace(seed=1, num_steps=2), progress=False)
    assert other["data_order_sha256"] != S._train_with_probes(plain_cfg.replace(num_steps=2),
                                                              progress=False)["data_order_sha256"]
    # A second call reuses the file (no training); a changed config recomputes.
    monkeypatch.setattr(S, "_train_with_probes", lambda *a, **k: pytest.fail("should have reused"))
    assert S.run_probe(plain_cfg, dirs, progress=False) == plain
    with pytest.raises(pytest.fail.Exception):
        S.run_probe(plain_cfg.replace(num_steps=3), dirs, progress=False)
    monkeypatch.setenv("CIFAR10_REUSE_ONLY", "1")  # viewing only: reuse, or refuse with the run's name
    assert S.run_probe(plain_cfg, dirs, progress=False) == plain
    with pytest.raises(ValueError, match="reuse_only is on .*the probe run probe-VGG_A-s2020 would have to run"):
        S.run_probe(plain_cfg.replace(num_steps=3), dirs, progress=False)


def interrupt_probe_at(monkeypatch, n: int) -> None:
    """Make the n-th probe of a run raise KeyboardInterrupt (Ctrl-C), with a checkpoint written after every step."""
    calls, real = [], S.probe_step
    monkeypatch.setattr(S, "PROBE_CKPT_EVERY_S", 0.0)

    def probe_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(S, "probe_step", probe_step)


def test_interrupted_probe_run_resumes_to_the_same_result(tiny_source, tmp_path, monkeypatch, tiny_models, capsys):
    """72 images at batch 16 = 4 steps an epoch: stopped at step 2 (mid-epoch), the run goes on from there, across
    the epoch boundary, and ends with the numbers of an uninterrupted run."""
    cfg = tiny_probe_cfg(tiny_source, num_steps=6)
    whole = S.run_probe(cfg, output_dirs("smoke", root=tmp_path / "whole"), progress=False)
    dirs = output_dirs("smoke", root=tmp_path / "cut")
    ckpt = S.probe_checkpoint_path(dirs, "VGG_A", S.BN_SEED)
    with monkeypatch.context() as m:
        interrupt_probe_at(m, 2)  # probes at steps 0, 2, 4: the second is at step 2
        with pytest.raises(KeyboardInterrupt):
            S.run_probe(cfg, dirs, progress=False)
    assert ckpt.exists() and not S.probe_path(dirs, "VGG_A", S.BN_SEED).exists()
    assert S.probe_resumable_steps(cfg, dirs) == (2, None)
    assert S.probe_resumable_steps(cfg.replace(num_steps=8), dirs) == (0, None)  # another config's checkpoint
    resumed = S.run_probe(cfg, dirs)
    assert f"[probe-VGG_A-s2020] resuming at step 2 of 6 ({ckpt})" in capsys.readouterr().out
    assert not ckpt.exists()  # finished: the result is what remains
    assert resumed["resumed_at_steps"] == [2] and whole["resumed_at_steps"] == []
    assert resumed["seconds"] > 0 and "devices" not in resumed  # one machine trained it
    for key in ("train_loss", "probes", "data_order_sha256", "steps_done", "epochs", "stuck_check", "num_params"):
        assert resumed[key] == whole[key], key
    # --force starts afresh, leaving the checkpoint of an interrupted run aside.
    with monkeypatch.context() as m:
        interrupt_probe_at(m, 3)
        with pytest.raises(KeyboardInterrupt):
            S.run_probe(cfg, dirs, force=True, progress=False)
    assert S.probe_resumable_steps(cfg, dirs) == (4, None)
    again = S.run_probe(cfg, dirs, force=True, progress=False)
    assert again["resumed_at_steps"] == [] and again["train_loss"] == whole["train_loss"]
    # A damaged checkpoint is one clear error, for the run and for `lib status`.
    ckpt.write_bytes(b"not a checkpoint")
    assert "cannot be read" in S.probe_resumable_steps(cfg, dirs)[1]
    with pytest.raises(ValueError, match=r"probe-VGG_A-s2020.last.pt cannot be read .*delete it \(the run then starts"):
        S.run_probe(cfg.replace(num_steps=5), dirs, progress=False)


def test_run_probes_falls_back_for_both_networks_and_reuses(tiny_source, tmp_path, monkeypatch, tiny_models,
                                                             capsys):
    dirs = output_dirs("smoke", root=tmp_path)
    # stuck_loss 0: any loss counts as "does not train", so the fallback must fire.
    configs = [tiny_probe_cfg(tiny_source, model=m, num_steps=3, probe_every=3, fallback=True, stuck_loss=0.0)
               for m in ("VGG_A", "VGG_A_BN")]
    plain, bn = S.run_probes("smoke", tiny_source, dirs, progress=False, configs=configs)
    for r in (plain, bn):
        assert r["lr"] == S.FALLBACK_LR and r["config"]["lr"] == S.FALLBACK_LR
        assert r["etas"] == pytest.approx([0.05, 0.15])  # the step sizes scale with the lr
        assert r["lr_fallback"]["from_lr"] == 0.1 and r["lr_fallback"]["stuck_check"]["stuck"]
        assert r["steps_done"] == 3  # the fallback runs are complete
    assert plain["data_order_sha256"] == bn["data_order_sha256"]
    from lib.report import fallback_note  # the report says why, from the summary

    check = plain["lr_fallback"]["stuck_check"]
    assert fallback_note(S.bn_summary(dirs)) == (
        f"Both networks were probed at lr 0.05, not 0.1: at 0.1 VGG-A did not train (its mean training loss "
        f"{check['mean_loss']:.4g} over the {check['window']} steps before step {check['step']}, above the threshold "
        f"0), so, as BN_METHODS.md says, both ran again at the lower lr, with the step sizes scaled by the same factor.")
    assert fallback_note({"probe": {"VGG_A": {"fallback_why": None}}}) == ""
    monkeypatch.setattr(S, "_train_with_probes", lambda *a, **k: pytest.fail("should have reused"))
    capsys.readouterr()
    assert S.run_probes("smoke", tiny_source, dirs, progress=False, configs=configs) == [plain, bn]
    assert "probe-VGG_A-s2020, probe-VGG_A_BN-s2020: finished before, reused (not computed again" in \
        capsys.readouterr().out
    monkeypatch.setenv("CIFAR10_REUSE_ONLY", "1")
    assert S.run_probes("smoke", tiny_source, dirs, progress=False, configs=configs) == [plain, bn]
    with pytest.raises(ValueError, match="reuse_only is on .*the probe run probe-VGG_A-s2020"):
        S.run_probes("smoke", tiny_source, dirs, progress=False, configs=[c.replace(num_steps=4) for c in configs])


def test_an_interrupted_fallback_run_goes_on_as_a_fallback_run(tiny_source, tmp_path, monkeypatch, tiny_models,
                                                                capsys):
    """VGG_A's run at the fallback lr stopped part-way: the next call goes on with the fallback pair from its
    checkpoint (which keeps why the lr was lowered) instead of probing at the first lr again."""
    configs = [tiny_probe_cfg(tiny_source, model=m, num_steps=6, probe_every=3, fallback=True, stuck_loss=0.0)
               for m in ("VGG_A", "VGG_A_BN")]
    whole = S.run_probes("smoke", tiny_source, output_dirs("smoke", root=tmp_path / "whole"), progress=False,
                         configs=configs)
    dirs = output_dirs("smoke", root=tmp_path / "cut")
    with monkeypatch.context() as m:
        interrupt_probe_at(m, 3)  # the run at 0.1 probes at step 0 and stops at step 2; the fallback's 2nd probe
        with pytest.raises(KeyboardInterrupt):
            S.run_probes("smoke", tiny_source, dirs, progress=False, configs=configs)
    assert S.probe_resumable_steps(configs[0], dirs) == (3, None)  # at the fallback lr
    lrs, real = [], S._train_with_probes
    monkeypatch.setattr(S, "_train_with_probes", lambda cfg, *a, **k: lrs.append(cfg.lr) or real(cfg, *a, **k))
    capsys.readouterr()
    plain, bn = S.run_probes("smoke", tiny_source, dirs, configs=configs)
    assert lrs == [S.FALLBACK_LR, S.FALLBACK_LR]  # not probed at the first lr again
    assert "[probe-VGG_A-s2020] resuming at step 3 of 6" in capsys.readouterr().out
    assert plain["resumed_at_steps"] == [3] and bn["resumed_at_steps"] == []
    for got, want in ((plain, whole[0]), (bn, whole[1])):
        assert got["lr"] == S.FALLBACK_LR and got["lr_fallback"] == want["lr_fallback"]
        assert got["probes"] == want["probes"] and got["train_loss"] == want["train_loss"]
    assert not S.probe_checkpoint_path(dirs, "VGG_A", S.BN_SEED).exists()


def test_run_bn_study_summary_and_figures(tiny_source, tmp_path, tiny_models, monkeypatch):
    """Protocol (2 lrs), probes, slices, summary and every figure on the tiny data, end to end."""
    from lib.bn_plots import plot_all

    dirs = output_dirs("smoke", root=tmp_path)
    lrs = (1e-3, 1e-4)
    summary = S.run_bn_study("smoke", tiny_source, dirs, progress=False, lrs=lrs,
                             probe_overrides=dict(num_train=None, batch_size=16, num_steps=4, probe_every=2))
    assert summary["missing"] == []
    for model in ("VGG_A", "VGG_A_BN"):
        steps = json.loads((dirs.results / f"bn-{model}-lr0.001-s2020.steps.json").read_text())
        assert len(steps["loss"]) == 2  # smoke: 2 epochs of one batch (72 images < 128)
        proto = summary["protocol"][model]
        assert 0.0 <= proto["best_val_acc_lr1e3"] <= 1.0
        assert proto["loss_band"]["num_runs"] == 2 and proto["loss_band"]["mean_width"] >= 0
        assert proto["arithmetic"] == ["fp32", "fp32"]  # a CPU run of precision auto (a CUDA one: bf16 autocast)
        assert set(proto["grad_range"]) == {"0.001", "0.0001"}
        probe = summary["probe"][model]
        assert probe["num_probes"] == 2 and probe["beta"]["min"] > 0 and not probe["lr_fallback"]
        assert set(summary["slice"][model]) == {"loss_at_0", "loss_max", "loss_at_pm1", "seconds", "device",
                                                "num_images", "git_commit"}
        assert summary["slice"][model]["seconds"] > 0 and summary["slice"][model]["device"].startswith("CPU")
    assert summary["same_data_order"]
    paths = plot_all(dirs)
    names = sorted(p.stem for p in paths)
    assert names == sorted(["p2_accuracy_lr1e-3", "p2_loss_band", "p2_grad_range", "p2_santurkar",
                            "p2_grad_diff_eta", "p2_loss_slice"])
    assert all(p.stat().st_size > 5000 for p in paths)
    # Each figure's caption says where its numbers come from.
    from lib.bn_plots import probe_caption, protocol_caption

    run = json.loads((dirs.results / "bn-VGG_A-lr0.001-s2020.json").read_text())
    n = f"{run['data']['num_train_used']:,}"
    assert protocol_caption([run, run]) == (f"{run['data']['label']} | {n} training images | profile smoke | seed 2020 | "
                                            f"2 epochs per run | {run['device']}")
    probe = json.loads(S.probe_path(dirs, "VGG_A", S.BN_SEED).read_text())
    assert f"profile smoke | seed 2020 | {probe['steps_done']} steps | CPU" in probe_caption([probe])
    sliced = json.loads(S.slice_path(dirs, "VGG_A", S.BN_SEED).read_text())
    assert f"{sliced['config']['num_images']} training images per point | seed 2020 | CPU" in probe_caption([sliced])
    # A slice records no data label: its caption names the copy as the runs' label does.
    assert probe_caption([sliced]).startswith(f"image-folder copy {Path(tiny_source).name} | ")
    shared = dict(sliced, config=dict(sliced["config"], data_source="shared"))
    assert probe_caption([shared]).startswith("JPEG-q75 copy (cifar10-jpeg75.tar.gz) | ")
    # A second call reuses every file.
    mtimes = {p: p.stat().st_mtime_ns for p in dirs.results.glob("*.json")}
    S.run_bn_study("smoke", tiny_source, dirs, progress=False, lrs=lrs,
                   probe_overrides=dict(num_train=None, batch_size=16, num_steps=4, probe_every=2))
    assert {p: p.stat().st_mtime_ns for p in dirs.results.glob("*.json")} == mtimes
    # force = [names]: just those experiments again (a probe run: the pair), the others reused; a typo refused.
    S.run_bn_study("smoke", tiny_source, dirs, progress=False, lrs=lrs, force=["bn-VGG_A-lr0.0001-s2020",
                                                                           "probe-VGG_A_BN-s2020"],
                   probe_overrides=dict(num_train=None, batch_size=16, num_steps=4, probe_every=2))
    again = {p.name for p in dirs.results.glob("*.json") if p.stat().st_mtime_ns != mtimes[p]}
    assert again == {"bn-VGG_A-lr0.0001-s2020.json", "bn-VGG_A-lr0.0001-s2020.steps.json",
                     "probe-VGG_A-s2020.json", "probe-VGG_A_BN-s2020.json"}
    mtimes = {p: p.stat().st_mtime_ns for p in dirs.results.glob("*.json")}
    S.run_bn_study("smoke", tiny_source, dirs, progress=False, lrs=lrs, force="bn-VGG_A_BN-lr0.001-s2020",
                   probe_overrides=dict(num_train=None, batch_size=16, num_steps=4, probe_every=2))
    again = {p.name for p in dirs.results.glob("*.json") if p.stat().st_mtime_ns != mtimes[p]}
    assert again == {"bn-VGG_A_BN-lr0.001-s2020.json", "bn-VGG_A_BN-lr0.001-s2020.steps.json",
                     "slice-VGG_A-s2020.json", "slice-VGG_A_BN-s2020.json"}  # the slices start from its checkpoint
    with pytest.raises(ValueError,
                       match="force names 'bn-VGG_A-lr0.002-s2020', not among the experiments of Part 2: bn-VGG_A-lr0.001"):
        S.run_bn_study("smoke", tiny_source, dirs, progress=False, lrs=lrs, force="bn-VGG_A-lr0.002-s2020")
    mtimes = {p: p.stat().st_mtime_ns for p in dirs.results.glob("*.json")}
    # reuse_only (the notebooks' viewing switch): reused as above; a slice of another size refuses to compute.
    monkeypatch.setenv("CIFAR10_REUSE_ONLY", "1")
    assert S.run_slices("smoke", tiny_source, dirs) == [json.loads(S.slice_path(dirs, m, S.BN_SEED).read_text())
                                                      for m in ("VGG_A", "VGG_A_BN")]
    with pytest.raises(ValueError, match="reuse_only is on .*the loss slice .*VGG_A.* would have to run"):
        S.run_slices("smoke", tiny_source, dirs, num_images=3)
    monkeypatch.setenv("CIFAR10_REUSE_ONLY", "0")
    # Weights that are not the result's selected epoch (a retraining stopped part-way): no slice from them.
    run = json.loads((dirs.results / "bn-VGG_A-lr0.001-s2020.json").read_text())
    state = torch.load(run["checkpoint"], weights_only=False)
    torch.save(dict(state, epoch=run["best_epoch"] + 5), run["checkpoint"])
    with pytest.raises(ValueError, match="holds epoch .* of this run, but bn-VGG_A-lr0.001-s2020's result selected"):
        S.run_slices("smoke", tiny_source, dirs, force=True)
    # The selected epoch of a retraining that did not reproduce the result: other weights, no slice from them.
    torch.save(dict(state, val_acc=state["val_acc"] + 0.01), run["checkpoint"])
    with pytest.raises(ValueError, match=r"has validation accuracy .* not the .* of bn-VGG_A-lr0.001-s2020's result"):
        S.run_slices("smoke", tiny_source, dirs, force=True)
    # A checkout moved after training: the result records the old path; the weights are found in its folder.
    torch.save(state, run["checkpoint"])
    before = json.loads(S.slice_path(dirs, "VGG_A", S.BN_SEED).read_text())  # sliced from the recorded path
    atomic_write_json(dirs.results / "bn-VGG_A-lr0.001-s2020.json", dict(run, checkpoint="/gone/bn-VGG_A.pt"))
    assert S.run_slices("smoke", tiny_source, dirs, force=True)[0]["loss"] == before["loss"]
    # ... also where another run's weights are still at the recorded path (they are passed over).
    other = tmp_path / "elsewhere.pt"
    torch.save(dict(state, epoch=run["best_epoch"] + 5), other)
    atomic_write_json(dirs.results / "bn-VGG_A-lr0.001-s2020.json", dict(run, checkpoint=str(other)))
    assert S.run_slices("smoke", tiny_source, dirs, force=True)[0]["loss"] == before["loss"]
    atomic_write_json(dirs.results / "bn-VGG_A-lr0.001-s2020.json", run)
    # A fresh clone has the results but not the weights; before the protocol there is neither: each says what to run.
    Path(run["checkpoint"]).unlink()
    with pytest.raises(FileNotFoundError, match=r"is missing \(git keeps results, not weights\): retrain the pair "
                                                r"\(python -m lib run --profile smoke --part2 --force --only "
                                                r"bn-VGG_A-lr0.001-s2020 bn-VGG_A_BN-lr0.001-s2020,"):
        S.run_slices("smoke", tiny_source, dirs, force=True)
    with pytest.raises(FileNotFoundError, match=r"does not exist: train the protocol first \(python -m lib run "
                                                r"--profile smoke --part2,"):
        S.run_slices("smoke", tiny_source, output_dirs("smoke", root=tmp_path / "empty"))


def test_smooth_is_nan_aware():
    from lib.bn_plots import smooth

    from lib.bn_plots import window_for

    values = [1.0, float("nan"), 3.0, 5.0, None] + [7.0] * 25  # 30 values: window 3 is allowed
    out = smooth(values, 3)
    assert out[:6].tolist() == pytest.approx([1.0, 2.0, 4.0, 4.0, 6.0, 7.0])
    assert smooth([2.0], 25).tolist() == [2.0]
    # At most a tenth of the series, and odd (centred): 48 quick-profile steps get a 3-step window, 17,600 full
    # ones 25, 20 probes none.
    assert window_for(48, 25) == 3 and window_for(17_600, 25) == 25 and window_for(5, 25) == 1
    assert window_for(20, 5) == 1 and window_for(200, 10) == 9


def test_a_line_of_few_values_is_said_to_be_unsmoothed():
    from lib.bn_plots import smoothing_label

    assert smoothing_label(352 * 50, 25, "step") == "25-step moving average"
    assert smoothing_label(40, 25, "step") == "3-step moving average"  # at most a tenth of the series, odd
    assert smoothing_label(20, 5, "probe") == "not smoothed"  # a window of 1
