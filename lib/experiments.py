"""Named experiments of the study: each name maps to a TrainConfig for a profile, data source and seed."""
from __future__ import annotations

from lib.config import TrainConfig, get_profile
from lib.data import canonical_source
from lib.models import PART1_MODELS

BN_MODELS = ("VGG_A", "VGG_A_BN")
BN_LRS = (1e-3, 2e-3, 1e-4, 5e-4)  # the original protocol's learning rates (BN_METHODS.md A)
BN_SEED = 2020  # the original protocol's seed, reused for every (model, lr) run


def part1_name(model: str, seed: int) -> str:
    """Result name of a Part 1 comparison run."""
    return f"p1-{model}-s{seed}"


def bn_name(model: str, lr: float, seed: int = BN_SEED) -> str:
    """Result name of a BN-protocol run (Part 2, section A)."""
    return f"bn-{model}-lr{lr:g}-s{seed}"


def part1_config(model: str, profile: str = "full", data_source: str = "official", seed: int = 0,
                 **overrides) -> TrainConfig:
    """The STUDY.md Part 1 recipe for `model`, sized by `profile`."""
    if model not in PART1_MODELS:
        raise ValueError(f"{model!r} is not a Part 1 model: choose one of {', '.join(PART1_MODELS)}")
    p = get_profile(profile)
    cfg = TrainConfig(name=part1_name(model, seed), model=model, profile=profile, data_source=data_source,
                      num_train=p.num_train, num_val=p.num_val, num_test=p.num_test,
                      num_epochs=p.num_epochs, seed=seed, tags=("part1",))
    return cfg.replace(**overrides)


def bn_config(model: str, lr: float, profile: str = "full", data_source: str = "official",
              seed: int = BN_SEED, **overrides) -> TrainConfig:
    """The original BN protocol (BN_METHODS.md A): Adam at a constant lr, batch 128, plain CE, no augmentation."""
    if model not in BN_MODELS:
        raise ValueError(f"{model!r} is not a BN-study model: choose one of {', '.join(BN_MODELS)}")
    p = get_profile(profile)
    cfg = TrainConfig(name=bn_name(model, lr, seed), model=model, profile=profile, data_source=data_source,
                      num_train=p.bn_num_train, num_val=p.num_val, num_test=p.num_test,
                      num_epochs=p.bn_epochs, batch_size=128, optimizer="adam", lr=lr, weight_decay=0.0,
                      lr_gamma=1.0, label_smoothing=0.0, augment=False, mixup_p=0.0, cutmix_p=0.0,
                      norm="half", record_steps=True, seed=seed, tags=("part2", "bn-protocol"))
    return cfg.replace(**overrides)


def part1_experiments(profile: str, data_source: str, seeds=(0,), models=None) -> list[TrainConfig]:
    """Configs of the Part 1 comparison (all nine models unless `models` names a subset), seed-major: every
    model's first seed before any second seed. A repeated seed counts once."""
    models = list(models) if models else list(PART1_MODELS)
    return [part1_config(m, profile, data_source, s) for s in dict.fromkeys(seeds) for m in models]


def bn_experiments(profile: str, data_source: str, models=BN_MODELS, lrs=BN_LRS) -> list[TrainConfig]:
    """Configs of the BN protocol: both networks at every learning rate, same seed for all."""
    return [bn_config(m, lr, profile, data_source) for m in models for lr in lrs]


def recipe_config(model_name: str, data_source: str | None = None, device: str = "auto",
                  num_train: int | None = None, num_val: int | None = None, seed: int = 0) -> TrainConfig:
    """The `full`-profile config of the study run `model_name` appears in (Part 1, or the BN protocol at lr 1e-3):
    the recipe the benchmark (lib.bench, lib.naive) times an epoch of."""
    source = canonical_source(data_source)
    if model_name in PART1_MODELS:
        cfg = part1_config(model_name, "full", source, seed)
    elif model_name in BN_MODELS:
        cfg = bn_config(model_name, 1e-3, "full", source)
    else:
        raise ValueError(f"{model_name!r} is in neither part of the study: choose one of "
                         f"{', '.join(PART1_MODELS + BN_MODELS)}")
    return cfg.replace(device=device, num_train=num_train, num_val=num_val)


def recipe_name(cfg: TrainConfig) -> str:
    """'part1' or 'bn-protocol': which recipe a benchmark config follows."""
    return "bn-protocol" if "bn-protocol" in cfg.tags else "part1"
