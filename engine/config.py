"""A training run's settings (TrainConfig) and the one check of them (`problems`, `validate`),
shared by `aivh train`, `aivh audit` and the dashboard's Train page: their defaults are these."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from engine.backbones import DEFAULT_ARCH, spec
from engine.choices import DECODES, DEVICES, GROUPINGS, JPEG_SCALES, KEEP_EPOCH, RESIZE_MODES
from engine.device import default_workers

SCRATCH_LR, PRETRAINED_LR = 1e-3, 3e-4  # OneCycle peaks for AdamW: from random init / fine-tuning


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12  # upper bound; early stopping usually ends sooner
    img_size: int = 300  # B3's native resolution (from_dict: the architecture's when not given)
    batch_size: int = 32  # fits B3 at 300 px on a 16 GB GPU in bf16
    lr: float = SCRATCH_LR  # OneCycle peak for AdamW (from_dict: PRETRAINED_LR with pretrained weights)
    weight_decay: float = 1e-2  # AdamW's default decoupled decay
    val_fraction: float = 0.1  # share of each class held out, by stable hash
    seed: int = 0  # model init, split, shuffling and augmentation
    device: str = "auto"  # auto picks CUDA when present
    limit: int | None = None  # train on a stratified subset of this many images
    pretrained: str | None = None  # None, "imagenet" or a local state-dict path
    workers: int = field(default_factory=default_workers)  # decoding processes
    compile: bool = False  # torch.compile the model (CUDA; fixed shapes)
    resize_mode: str = "resize"  # resize the whole image, or "crop" at native resolution
    patience: int = 3  # epochs without a better validation epoch (F1, AUC, loss) before stopping
    bn_batches: int = 20  # training batches that re-estimate BatchNorm statistics before validation
    # which epoch the run keeps: "best", the best on validation (F1, AUC, loss), stopping early;
    # "last", the final one after every epoch (audit folds: nothing is chosen on the held-out
    # fold's labels). Stored as "select" before 2026-11-28: from_dict reads that name too.
    keep_epoch: str = "best"
    # JPEG decode: "workers" (Pillow) or "device" (nvJPEG on CUDA); auto: device for validation
    # on CUDA, workers for training (see engine.loader.resolve_decode)
    decode: str = "auto"
    # how JPEGs are decoded before the resize, by every path that feeds this run's model
    # (training, validation, prediction, robustness, saliency, embeddings; images.load_for_model):
    # "draft", DCT scaling to the smallest of 1/2, 1/4, 1/8 still at least img_size (fast), or
    # "full" resolution (exact). A run stored without it trained with draft: read as "draft"
    jpeg_scale: str = "draft"
    # the network: torchvision's efficientnet_b3 or any timm model name (engine.backbones)
    arch: str = DEFAULT_ARCH
    freeze_epochs: int = 0  # the first N epochs train the head only (for pretrained backbones)
    # augmentation strength: training's random-resized crop keeps at least this share of each
    # side (1.0: flips only; lower: stronger). A hyperparameter of `aivh sweep`'s default space.
    aug_min_scale: float = 0.7
    # input normalisation of the architecture: filled in from it when not given, and recorded
    # with the run and its checkpoints so prediction uses the same
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    weights_source: str | None = None  # what `pretrained` resolved to, recorded when the run is made
    # a linear probe (engine.probe): the frozen backbone's features and a logistic regression,
    # fitted in seconds, instead of training (epochs, lr, batches and patience do not apply)
    probe: bool = False
    # what a split or fold keeps on one side besides byte-identical copies and train.csv's group
    # column: None (copies only) or "near-duplicates" (perceptual-hash near copies too; engine.duplicates)
    group: str | None = None

    def __post_init__(self):
        if self.mean is None or self.std is None:
            try:
                s = spec(self.arch)
            except ValueError:  # an unknown architecture: problems() says so
                return
            object.__setattr__(self, "mean", tuple(self.mean or s.mean))
            object.__setattr__(self, "std", tuple(self.std or s.std))

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """A config from stored or given values. What is not given comes from the architecture
        (its native image size) and the weights (a lower learning rate when pretrained), then
        from the defaults above."""
        names = {f.name for f in fields(cls)}
        if "select" in d and "keep_epoch" not in d:  # a run stored before the rename
            d = {**d, "keep_epoch": d["select"]}
        d = {k: v for k, v in d.items() if k in names}
        if "img_size" not in d and d.get("arch", DEFAULT_ARCH) != DEFAULT_ARCH:
            try:
                d["img_size"] = spec(d["arch"]).img_size
            except ValueError:
                pass  # problems() names the architecture
        if "lr" not in d and d.get("pretrained"):
            d["lr"] = PRETRAINED_LR
        for key in ("mean", "std"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    def problems(self) -> list[str]:
        """Every reason this config cannot train, one line each (empty when it can): the one
        check shared by `aivh train` and the dashboard's Train page."""
        found = []
        if self.epochs < 1:
            found.append(f"epochs must be at least 1 (got {self.epochs})")
        if self.batch_size < 1:
            found.append(f"batch size must be at least 1 (got {self.batch_size})")
        if self.img_size < 16:
            found.append(f"image size must be at least 16 px (got {self.img_size})")
        if not self.lr > 0:
            found.append(f"learning rate must be above 0 (got {self.lr})")
        if self.weight_decay < 0:
            found.append(f"weight decay must be 0 or more (got {self.weight_decay})")
        if not 0.0 < self.val_fraction < 1.0:
            found.append(f"validation fraction must be between 0 and 1 (got {self.val_fraction})")
        if self.limit is not None and self.limit < 2:
            found.append(f"limit must be at least 2 images (got {self.limit})")
        if self.workers < 0:
            found.append(f"decoding workers must be 0 or more (got {self.workers})")
        if self.patience < 1:
            found.append(f"patience must be at least 1 epoch (got {self.patience}): with 0, "
                         "training would stop after its first epoch")
        if self.bn_batches < 0:
            found.append(f"precise-BN batches must be 0 or more (got {self.bn_batches})")
        if not 0.1 <= self.aug_min_scale <= 1.0:
            found.append(f"augmentation min scale must be between 0.1 and 1 (got {self.aug_min_scale})")
        if self.resize_mode not in RESIZE_MODES:
            found.append(f"resize mode must be one of {', '.join(RESIZE_MODES)} (got {self.resize_mode!r})")
        if self.keep_epoch not in KEEP_EPOCH:
            found.append(f"keep_epoch must be one of {', '.join(KEEP_EPOCH)} (got {self.keep_epoch!r})")
        if self.jpeg_scale not in JPEG_SCALES:
            found.append(f"JPEG scale must be one of {', '.join(JPEG_SCALES)} (got {self.jpeg_scale!r})")
        if self.decode not in DECODES:
            found.append(f"decode must be one of {', '.join(DECODES)} (got {self.decode!r})")
        if self.device.split(":")[0] not in DEVICES:
            found.append(f"device must be {', '.join(DEVICES[:-1])} or {DEVICES[-1]} (got {self.device!r})")
        try:
            spec(self.arch)
        except ValueError as e:
            found.append(str(e))
        if self.freeze_epochs < 0 or (self.freeze_epochs and self.freeze_epochs >= self.epochs):
            found.append(f"freeze epochs must be 0 or more and fewer than the epochs (got {self.freeze_epochs} "
                         f"of {self.epochs}): a run needs at least one epoch that trains the backbone")
        if self.freeze_epochs and self.pretrained is None:
            found.append("freeze epochs hold a pretrained backbone still: give --pretrained too")
        if self.group not in (None, *GROUPINGS):
            found.append(f"group must be {' or '.join(GROUPINGS)} (got {self.group!r})")
        if self.pretrained not in (None, "imagenet") and not Path(self.pretrained).is_file():
            found.append(f"pretrained weights file not found: {self.pretrained}")
        return found

    def validate(self) -> TrainConfig:
        """This config, or ValueError with its first problem (see problems)."""
        found = self.problems()
        if found:
            raise ValueError(found[0])
        return self


# a linear probe's own defaults (`aivh probe`, `aivh audit --probe`, the Train page's probe):
# the offline pretrained Lite0 (engine.weights), a larger feature-extraction batch
PROBE_DEFAULTS = {"arch": "tf_efficientnet_lite0", "pretrained": "imagenet", "batch_size": 64}
