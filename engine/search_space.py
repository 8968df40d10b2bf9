"""A sweep's search space: `aivh sweep --space` read into parameters, the default space, and
one trial's parameters sampled from it (Optuna's define-by-run `suggest_*`)."""
from __future__ import annotations

from dataclasses import dataclass

from engine.backbones import DEFAULT_ARCH, spec
from engine.choices import RESIZE_MODES
from engine.config import TrainConfig
from engine.errors import UsageError

# what a space may name, and the type of its values
SWEEPABLE = {"lr": float, "weight_decay": float, "img_size": int, "batch_size": int, "resize_mode": str,
             "aug_min_scale": float, "arch": str, "pretrained": str, "freeze_epochs": int, "epochs": int,
             "patience": int}


@dataclass(frozen=True)
class Param:
    """One dimension: a range (low, high, log) or choices."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None

    def text(self) -> str:
        if self.choices is not None:
            return f"{self.name}=" + "|".join("none" if c is None else str(c) for c in self.choices)
        return f"{self.name}={self.low!r}:{self.high!r}" + (":log" if self.log else "")  # read back exactly

    def suggest(self, trial):
        kind = SWEEPABLE[self.name]
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if kind is int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


def _value(name: str, text: str, where: str):
    text = text.strip()
    if name == "pretrained" and text.lower() == "none":
        return None
    kind = SWEEPABLE[name]
    try:
        return kind(float(text)) if kind is int and float(text).is_integer() else kind(text)
    except ValueError:
        raise UsageError(f"--space {where}: {text!r} is not a{'n integer' if kind is int else ' number'}") from None


def parse_space(text: str) -> dict[str, Param]:
    """`lr=1e-4:3e-3:log,img_size=64|96|128`: NAME=LOW:HIGH[:log] (a range) or NAME=A|B|C
    (choices), comma-separated; NAME is a TrainConfig field (or its flag, --img-size). One
    UsageError naming the part and what is wrong."""
    space: dict[str, Param] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, eq, rhs = part.partition("=")
        name = name.strip().lstrip("-").replace("-", "_")
        if not eq or not rhs.strip():
            raise UsageError(f"--space {part!r}: write NAME=LOW:HIGH[:log] or NAME=A|B|C")
        if name not in SWEEPABLE:
            raise UsageError(f"--space {part!r}: {name!r} cannot be swept; one of {', '.join(SWEEPABLE)}")
        if name in space:
            raise UsageError(f"--space {part!r}: {name} is given twice")
        if "|" in rhs or SWEEPABLE[name] is str:
            choices = tuple(_value(name, c, repr(part)) for c in rhs.split("|"))
            if name == "resize_mode" and not set(choices) <= set(RESIZE_MODES):
                raise UsageError(f"--space {part!r}: resize_mode is one of {', '.join(RESIZE_MODES)}")
            if len(set(choices)) != len(choices):
                raise UsageError(f"--space {part!r}: a choice is repeated")
            space[name] = Param(name, choices=choices)
            continue
        bits = rhs.split(":")
        if len(bits) not in (2, 3) or (len(bits) == 3 and bits[2].strip() != "log"):
            raise UsageError(f"--space {part!r}: a range is LOW:HIGH or LOW:HIGH:log")
        low, high = (_value(name, b, repr(part)) for b in bits[:2])
        log_scale = len(bits) == 3
        if not low < high:
            raise UsageError(f"--space {part!r}: LOW must be below HIGH")
        if log_scale and low <= 0:
            raise UsageError(f"--space {part!r}: a log range must start above 0")
        space[name] = Param(name, float(low), float(high), log_scale)
    if not space:
        raise UsageError("--space is empty: give NAME=LOW:HIGH[:log] or NAME=A|B|C, comma-separated")
    return space


def default_space(fixed: dict) -> dict[str, Param]:
    """What matters for this task, less what the command line fixed: learning rate (log),
    weight decay (log), image size (around the architecture's native size), batch size,
    resize mode, augmentation strength; with packaged ImageNet weights for the architecture,
    pretrained or not and freeze epochs (only sampled for a pretrained trial)."""
    from engine.weights import packaged_file

    arch = fixed.get("arch", DEFAULT_ARCH)
    try:
        native = spec(arch).img_size
    except ValueError:
        native = 224
    sizes = tuple(sorted({max(32, round(native * f / 32) * 32) for f in (0.5, 0.75)} | {native}))
    space = {"lr": Param("lr", 1e-4, 3e-3, True), "weight_decay": Param("weight_decay", 1e-5, 1e-1, True),
             "img_size": Param("img_size", choices=sizes), "batch_size": Param("batch_size", choices=(16, 32, 64)),
             "resize_mode": Param("resize_mode", choices=RESIZE_MODES),
             "aug_min_scale": Param("aug_min_scale", 0.4, 1.0)}
    if packaged_file(arch) is not None:
        space["pretrained"] = Param("pretrained", choices=(None, "imagenet"))
        space["freeze_epochs"] = Param("freeze_epochs", 0, 2)
    return {k: v for k, v in space.items() if k not in fixed}


def space_text(space: dict[str, Param]) -> str:
    return ",".join(p.text() for p in space.values())


def sample(trial, space: dict[str, Param], fixed: dict) -> dict:
    """The trial's parameters (define-by-run): freeze epochs only for a pretrained trial, and
    fewer than its epochs."""
    params = {}
    for name, p in space.items():
        if name == "freeze_epochs":
            continue
        params[name] = p.suggest(trial)
    if "freeze_epochs" in space:
        pretrained = params.get("pretrained", fixed.get("pretrained"))
        epochs = params.get("epochs", fixed.get("epochs", TrainConfig.epochs))
        p = space["freeze_epochs"]
        if pretrained is not None and epochs > 1 and p.choices is None:
            params["freeze_epochs"] = trial.suggest_int("freeze_epochs", int(p.low), min(int(p.high), epochs - 1))
        elif pretrained is not None and p.choices is not None:
            params["freeze_epochs"] = p.suggest(trial)
    return params
