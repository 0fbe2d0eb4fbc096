"""Experiment configuration as data: one frozen dataclass per training run, and the profiles."""
from __future__ import annotations

import dataclasses
import filecmp
from dataclasses import dataclass, field
from pathlib import Path, PurePath

# The nine models of the Part 1 comparison, in the study's order (lib.models builds them; defined here, where
# nothing imports torch, so that the command line's help can name them without importing it).
PART1_MODELS = ("CANet_tiny", "CANet_light", "CANet", "CANet_pro",
                "ShuffleNetV2", "MobileNetV2", "ResNet18", "ResNet34", "VGG11")
CANET_MODELS = PART1_MODELS[:4]  # the CANet variants (lib.models.CANET_VARIANTS: their widths)
MODEL_NAMES = PART1_MODELS + ("VGG_A", "VGG_A_BN")  # every model lib.models builds (list_models), in its order

# Normalisation constants (per channel, applied to images scaled to [0, 1]).
NORMS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # Part 1
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # Part 2
}

OPTIMIZERS = ("adamw_sgd", "adam", "sgd")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Profile:
    """How much of the data and how many epochs a run uses (smoke < quick < full)."""

    name: str
    num_train: int | None  # images from the 45,000-image training split (None = all)
    num_val: int | None  # images from the 5,000-image validation split (None = all)
    num_test: int | None  # images from the 10,000-image test set (None = all)
    num_epochs: int  # Part 1 epochs
    bn_epochs: int  # Part 2 (BN protocol) epochs
    bn_num_train: int | None  # Part 2 training images (eight runs: kept smaller on a CPU)
    note: str


PROFILES = {
    "smoke": Profile("smoke", 256, 128, 256, 2, 2, 256,
                     "CI-sized: seconds to a few minutes per model on a CPU; the numbers mean nothing"),
    "quick": Profile("quick", 5_000, 1_000, 5_000, 8, 3, 2_000,
                     "a real but reduced run on a CPU: 5k training images, 8 epochs (Part 2: 2k images, 3 epochs)"),
    "full": Profile("full", None, None, None, 70, 50, None, "the STUDY.md recipe on all data; meant for a GPU"),
}


def get_profile(name: str) -> Profile:
    """Return the named profile or raise a ValueError listing the valid ones."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}")
    return PROFILES[name]


def _canonical_source_name(source: str) -> str:
    """'shared' for any path of the workplace's JPEG-q75 copy (see lib.data.canonical_source), else unchanged.

    Besides this checkout's own candidate paths, a path laid out like one of them (.../shared/data/<copy> or
    .../.carry/<copy>) counts when it does not exist on this machine or holds the same bytes as this checkout's
    copy (the same file, or a copy of it: a CI machine may hold the workplace's folder twice):
    results written before configs recorded the name kept the absolute path of the checkout that trained them,
    and a clone elsewhere must still reuse them instead of retraining. Another file at such a path is a copy
    someone named on purpose and stays as it is.
    """
    from lib.data import SHARED_CANDIDATES, SHARED_COPY

    if source in ("official", "shared"):
        return source
    if any(str(c) == source for c in SHARED_CANDIDATES):
        return "shared"
    parts = PurePath(source).parts
    laid_out = parts[-3:] == ("shared", "data", SHARED_COPY.name) or parts[-2:] == (".carry", SHARED_COPY.name)
    if laid_out and (not Path(source).exists() or any(_same_bytes(source, c) for c in SHARED_CANDIDATES)):
        return "shared"
    return source


def same_data_source(a: str, b: str) -> bool:
    """Whether two recorded data sources name the same data, as configs compare them (_canonical_source_name: the
    workplace's JPEG copy by any of its paths is 'shared')."""
    return _canonical_source_name(a) == _canonical_source_name(b)


def _same_bytes(path: str, candidate: Path) -> bool:
    """Whether `path` holds the same file as `candidate`: the same inode, or a copy with identical bytes (a CI
    machine may hold the workplace copy at another place too). filecmp caches its answer per pair of stats."""
    try:
        if not (candidate.is_file() and Path(path).is_file()):
            return False
        return Path(path).samefile(candidate) or filecmp.cmp(path, candidate, shallow=False)
    except OSError:  # unreadable: not known to be the copy, so recorded as named
        return False


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines one training run; written into every checkpoint and result.

    The defaults are the STUDY.md Part 1 recipe (section 4).
    """

    name: str  # experiment name, also the result file name
    model: str
    profile: str = "full"
    data_source: str = "official"  # 'official' or a path to an image-folder copy (folder or .tar.gz)
    num_train: int | None = None
    num_val: int | None = None
    num_test: int | None = None
    num_epochs: int = 70
    batch_size: int = 256
    optimizer: str = "adamw_sgd"  # AdamW, then SGD from epoch int(switch_frac * num_epochs)
    lr: float = 1e-3
    switch_frac: float = 0.8
    momentum: float = 0.9  # SGD phase
    weight_decay: float = 1e-3
    lr_gamma: float = 0.96  # ExponentialLR, stepped once per epoch (1.0 = constant lr)
    label_smoothing: float = 0.1
    augment: bool = True  # flip, 4-pixel-pad crop, random erasing
    erase_p: float = 0.5
    mixup_p: float = 0.3
    cutmix_p: float = 0.3
    mix_alpha: float = 0.5
    norm: str = "imagenet"
    record_steps: bool = False  # per-step train loss and last-Linear weight-gradient range (Part 2)
    seed: int = 0
    device: str = "auto"  # 'auto' = cuda if available, else cpu
    precision: str = "auto"  # 'auto' = bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False  # CUDA only: torch.compile the model (pays a one-off compile time)
    tags: tuple[str, ...] = field(default=())

    def __post_init__(self):
        object.__setattr__(self, "data_source", _canonical_source_name(self.data_source))
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}: choose one of {OPTIMIZERS}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}: choose one of {PRECISIONS}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}: choose one of {tuple(NORMS)}")
        if self.num_epochs < 1 or self.batch_size < 1:
            raise ValueError("num_epochs and batch_size must be positive")

    @property
    def switch_epoch(self) -> int | None:
        """First SGD epoch of the AdamW -> SGD recipe (None for single-optimiser runs)."""
        return int(self.switch_frac * self.num_epochs) if self.optimizer == "adamw_sgd" else None

    def to_dict(self) -> dict:
        """Plain-JSON view (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Inverse of to_dict; unknown keys are an error so that stale results are not misread."""
        d = dict(d)
        if "tags" in d:
            d["tags"] = tuple(d["tags"])
        return cls(**d)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)
