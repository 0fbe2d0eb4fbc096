"""What a trained network looks at: reload a checkpoint, read CANet's attention maps, get first-layer filters.

Compute only: these functions return tensors; lib.part1_plots draws them.

    model = load_trained(result)                      # result dict written by lib.train.train
    maps = attention_maps(model, x)                   # x: normalised (B, 3, 32, 32)
    maps['sa'][0].shape  -> (B, 32, 32)               # SA map of block 0 (values in (0, 1))
    maps['se'][-1].shape -> (B, 4w)                   # SE channel weights of the last block
    maps['gate_a'][0].shape -> (B, 32, 32)            # the gate block 0's output puts on path a (mean over channels)
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lib.models import build
from lib.part1 import recipe_options
from lib.paths import output_dirs
from lib.train import OTHER_RUN, not_the_selected_weights, read_checkpoint


class NotTheSelectedWeights(ValueError):
    """The run's checkpoints here are of the run, but not the weights its result selected (a retraining stopped
    part-way, or one that did not reproduce the run)."""


def retrain_hint(result: dict) -> str:
    """How to get the weights of `result` on this machine: git holds no checkpoints (they are large), and a
    notebook reuses a finished result without training, so the run has to be trained again, unpublished (the
    full profile's weights come back from the GPU call instead)."""
    profile = result.get("profile", "<profile>")
    if profile == "full":
        return ("checkpoints are not committed (git holds the results, not the weights): the GPU runner brings back "
                "the best checkpoints named in KEEP_CHECKPOINTS (p1-CANet-s0 by default) and `bash "
                "scripts/gpu_full_study.sh --merge DIR` puts them into checkpoints/full/ (docs/GPU.md)")
    cfg = result.get("config") or {}
    command = (f"python -m lib run --profile {profile} --data {cfg.get('data_source', '<data>')} "
               f"--models {result.get('model', '<model>')} --seeds {result.get('seed', 0)}")
    command = " ".join([command, *recipe_options(dict(cfg, profile=profile))])
    return (f"checkpoints are not committed (git holds the results, not the weights): train the run again on this "
            f"machine with `{command}` (without --publish: it writes build/{profile}/ and leaves the committed "
            f"result alone), then view it with publish = False (the figures describe that run); with publish = True "
            f"its weights are used only where they reproduce the committed run (the same selected epoch and "
            f"validation accuracy)")


def _checkpoint_candidates(result: dict, checkpoint: str | Path | None) -> list[Path]:
    """Where the checkpoint of `result` may be: the explicit path, the recorded one, this checkout's folders."""
    paths = [Path(checkpoint)] if checkpoint is not None else []
    if result.get("checkpoint"):
        paths.append(Path(result["checkpoint"]))
    # A result copied from another machine records that machine's absolute path: look in this checkout too.
    if result.get("profile") and result.get("name"):
        for publish in (True, False):
            paths.append(Path(output_dirs(result["profile"], publish=publish).checkpoints) / f"{result['name']}.pt")
    return list(dict.fromkeys(paths))


def load_trained(result: dict, device: str | torch.device = "cpu", checkpoint: str | Path | None = None) -> nn.Module:
    """Build result['model'] and load its best (validation-selected) checkpoint; returned in eval mode."""
    for key in ("model", "name"):
        if key not in result:
            raise ValueError(f"result lacks {key!r}: pass a result dict written by lib.train.train")
    candidates = _checkpoint_candidates(result, checkpoint)
    found = [p for p in candidates if p.is_file()]
    if not found:
        tried = ", ".join(str(p) for p in candidates) or "(the result records no checkpoint path)"
        raise FileNotFoundError(f"no checkpoint for {result['name']!r} (looked at: {tried}); {retrain_hint(result)}")
    refused, other_run = [], False
    for path in found:  # the first that holds the weights this result selected
        state = read_checkpoint(path, device)
        why = not_the_selected_weights(state, result)
        if why is None:
            model = build(result["model"])
            model.load_state_dict(state["model"])
            return model.to(device).eval()
        refused.append(f"{path} {why}")
        other_run = other_run or why.startswith(OTHER_RUN)
    error = ValueError if other_run else NotTheSelectedWeights
    raise error(f"no checkpoint holds the weights result {result['name']!r} selected: {'; '.join(refused)}; "
                f"{retrain_hint(result)}")


def trained_or_none(result: dict, device: str | torch.device = "cpu") -> nn.Module | None:
    """load_trained, or None, saying why, when this machine has no checkpoint of the run (a fresh clone: git holds
    none) or only one that is not the selected weights (a retraining that did not reproduce the run), so that a
    notebook still draws the figures its result files hold and skips only those of the weights. A checkpoint
    written by another run is an error."""
    try:
        return load_trained(result, device)
    except (FileNotFoundError, NotTheSelectedWeights) as err:
        print(f"The figures that need the trained weights are skipped: {err}.")
        return None


def _canet_blocks(model: nn.Module) -> list[nn.Module]:
    """The AttResBlocks of a CANet (each has .sa and .se), or a clear error for other models."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not all(hasattr(b, "sa") and hasattr(b, "se") for b in blocks):
        raise ValueError(f"{type(model).__name__} has no CANet attention blocks (model.blocks[i].sa / .se): "
                         "attention maps exist for the CANet variants only")
    return list(blocks)


@torch.no_grad()
def attention_maps(model: nn.Module, x: torch.Tensor) -> dict:
    """Run a CANet on normalised x (B,3,32,32): {'sa': [(B,H,W)], 'se': [(B,C)], 'gate_a': [(B,H,W)], 'gate_b':
    [(B,C)] per block, 'logits': (B,10)}.

    'sa' / 'se': the sigmoid gates SA and SE multiply their path by (values in (0, 1)): SA(a) = s * a and
    SE(b) = w * b. These are what the two pass on to the shared unit_transform U, not the gates of the block's
    output, which is u_a * a + u_b * b + shortcut with u_a = U(SA(a)), u_b = U(SE(b)) (U: 1x1 convs that mix
    channels, no biases, a sigmoid). 'gate_a': u_a averaged over channels (B,H,W); 'gate_b': u_b averaged over
    positions (B,C). Block i's maps have the block's output size. The model runs in eval mode (BN running
    statistics) and its train/eval mode is restored; tensors are returned on the CPU as float32.
    """
    blocks = _canet_blocks(model)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"x must be a normalised image batch (B, 3, H, W), got shape {tuple(x.shape)}")
    param = next(model.parameters())
    x = x.to(device=param.device, dtype=param.dtype)
    sa, se = [None] * len(blocks), [None] * len(blocks)
    gate_a, gate_b = [None] * len(blocks), [None] * len(blocks)

    def hook(store, gates, i, block, reduce_dims):
        # The hooked module's input is the path output (B, C, H, W); recompute its gate from it. Its output goes
        # through the block's unit_transform: the gate the block's output uses.
        def fn(module, inputs, output):
            store[i] = module.attention(inputs[0]).float().cpu()
            gates[i] = block.unit_transform(output).float().mean(reduce_dims).cpu()
        return fn

    handles = []
    was_training = model.training
    try:
        for i, block in enumerate(blocks):
            handles.append(block.sa.register_forward_hook(hook(sa, gate_a, i, block, 1)))
            handles.append(block.se.register_forward_hook(hook(se, gate_b, i, block, (2, 3))))
        model.eval()
        logits = model(x).float().cpu()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {"sa": [m[:, 0] for m in sa],  # (B, 1, H, W) -> (B, H, W)
            "se": [w[:, :, 0, 0] for w in se],  # (B, C, 1, 1) -> (B, C)
            "gate_a": gate_a, "gate_b": gate_b, "logits": logits}


ATTENTION_IMAGES = 256  # test images of the attention-spread record (a fixed seeded sample across classes)


def attention_spread(maps: dict) -> list[dict]:
    """Per block of attention_maps' output, how much each gate varies within one image, averaged over the images
    (max - min): 'sa' the SA map, 'gate_a' the gate the block's output puts on path a (U's output averaged over
    channels), 'se' the SE weights over channels, 'gate_b' the gate on path b (averaged over positions)."""
    def spread(t: torch.Tensor) -> float:
        flat = t.flatten(1).double()
        return float((flat.amax(1) - flat.amin(1)).mean())

    return [{"block": i, "sa": spread(sa), "gate_a": spread(ga), "se": spread(se), "gate_b": spread(gb)}
            for i, (sa, ga, se, gb) in enumerate(zip(maps["sa"], maps["gate_a"], maps["se"], maps["gate_b"]))]


def attention_path(dirs, result: dict) -> Path:
    """Where save_attention_spread writes the record of `result`'s run."""
    return Path(dirs.results) / f"attention-{result['name']}.json"


def save_attention_spread(model: nn.Module, result: dict, dirs, num_images: int = ATTENTION_IMAGES,
                          batch_size: int = 64, force: bool = False) -> dict:
    """attention_spread of `model` (the validation-selected weights of `result`'s run, load_trained) on
    `num_images` test images (lib.part1.sample_test_images), in batches, written to attention_path (atomic) for
    the report; returns the record written. A record there of the same run, selected epoch and number of images
    is returned as it is, unless `force`: the weights are that epoch's (load_trained checks it), so a notebook
    re-rendered from the committed study does not rewrite the committed record (nor its commit)."""
    from lib import part1
    from lib.augment import to_float_normalized
    from lib.results import atomic_write_json, environment_info, read_json

    path = attention_path(dirs, result)
    try:
        known = read_json(path) if not force and path.exists() else None
    except (OSError, ValueError):  # unreadable: measured again
        known = None
    if isinstance(known, dict) and known.get("blocks") and (known.get("run"), known.get("best_epoch"), known.get(
            "num_images")) == (result["name"], result.get("best_epoch"), num_images):
        return known
    X, _ = part1.sample_test_images(result, n=num_images)
    x = to_float_normalized(torch.from_numpy(X).permute(0, 3, 1, 2).contiguous(), *part1.normalization(result))
    parts = [attention_maps(model, chunk) for chunk in x.split(batch_size)]
    maps = {k: [torch.cat([p[k][i] for p in parts]) for i in range(len(parts[0][k]))]
            for k in ("sa", "gate_a", "se", "gate_b")}
    record = {"name": path.stem, "run": result["name"], "model": result["model"],
              "profile": result.get("profile"), "best_epoch": result.get("best_epoch"), "num_images": len(X),
              "data": (result.get("data") or {}).get("label"), "blocks": attention_spread(maps),
              **environment_info(next(model.parameters()).device)}
    atomic_write_json(path, record)
    return record


def first_layer_filter_groups(model: nn.Module) -> dict[str, torch.Tensor]:
    """First convolution(s) on the RGB input by name: CANet's three in block 0 (both paths and the shortcut),
    else the first Conv2d."""
    blocks = getattr(model, "blocks", None)
    if blocks is not None and hasattr(blocks[0], "path_a") and hasattr(blocks[0], "path_b"):
        # path_a feeds spatial attention, path_b channel attention; each starts with conv3x3(3 -> w). Block 0's
        # shortcut (stride 1) is a 3x3 conv on the RGB input too.
        return {"path_a (-> SA)": blocks[0].path_a[0].weight.detach().float().cpu(),
                "path_b (-> SE)": blocks[0].path_b[0].weight.detach().float().cpu(),
                "shortcut": blocks[0].shortcut[0].weight.detach().float().cpu()}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            if m.in_channels != 3:
                raise ValueError(f"the first Conv2d of {type(model).__name__} ({name}) takes {m.in_channels} "
                                 "channels, not the 3 RGB channels: cannot show it as colour filters")
            return {name: m.weight.detach().float().cpu()}
    raise ValueError(f"{type(model).__name__} has no nn.Conv2d layer")


def first_layer_filters(model: nn.Module) -> torch.Tensor:
    """The first convolution's weights (out, 3, k, k); for CANet path_a's, path_b's, then the shortcut's (3w in all)."""
    return torch.cat(list(first_layer_filter_groups(model).values()), dim=0)
