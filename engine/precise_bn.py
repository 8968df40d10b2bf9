"""Precise BatchNorm: before each validation, the BatchNorm statistics re-estimated as a plain average over a seeded sample of training batches (not the momentum trail of the last steps)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from engine.device import autocast
from engine.gpu_decode import device_batches
from engine.transforms import normalize


def bn_sample(paths: list[str], n: int, seed: int) -> list[str]:
    """The training images that re-estimate BatchNorm: a seeded random sample of `n` (in list
    order), not the first `n` of a CSV that may be sorted by class or source."""
    if n >= len(paths):
        return list(paths)
    pick = np.random.default_rng([seed, 0xB4]).choice(len(paths), size=n, replace=False)
    return [paths[i] for i in sorted(pick)]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader, device, norm=None) -> None:
    """Re-estimate BatchNorm running statistics from training images (precise BN).

    Early in training, and in short runs from scratch, the running averages lag far behind
    the weights and eval-mode outputs collapse to one value; a plain average over a few
    batches with the current weights fixes that. Dropout and stochastic depth stay off.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    model.eval()
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
        bn.train()
    for x, _y, _idx, _failed in device_batches(loader, device):
        if x is not None and len(x):
            with autocast(device):
                model(normalize(x, device, channels_last=device.type == "cuda", norm=norm))
    for bn, momentum in zip(bns, saved):
        bn.momentum = momentum
    model.eval()
