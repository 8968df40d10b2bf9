"""Prints the figures behind tests/test_saliency.py: how much attribution mass each method puts
in the planted patch, and how its maps correlate with those of a re-initialised model.

    python benchmarks/saliency_sanity.py [--img-size 256 --patch 64]

Same drawn images, seed and training as the test (a few minutes on 2 CPU cores at the test's
96 px; about 9 minutes of training at 256 px). With --img-size/--patch the same recipe at
another size, as in docs/benchmarks.md ("Planted evidence").
"""
import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tests.test_saliency as planted
from engine import saliency
from engine.model import build_model
from tests.test_saliency import EXPLAINED, _rank, patch_ratio, train_planted


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--img-size", type=int, default=planted.S)
    ap.add_argument("--patch", type=int, default=planted.P)
    args = ap.parse_args()
    planted.S, planted.P = args.img_size, args.patch  # draw() and patch_ratio() read these
    S = planted.S
    root = Path(tempfile.mkdtemp())
    res, model = train_planted(root)
    print(f"planted model ({S} px, {planted.P} px patch): validation AUC {res.best.val_auc:.4f}, "
          f"kept epoch {res.best.epoch} (validation loss {res.best.val_loss:.4f})")
    torch.manual_seed(1)
    random_model = build_model(None)
    for m in saliency.METHODS:
        def heat(net, i, m=m):
            return saliency.explain(net, root / f"{i}.png", S, saliency.Settings(m)).map
        r = [patch_ratio(heat(model, i)) for i in EXPLAINED]
        c = [np.corrcoef(_rank(heat(model, i)), _rank(heat(random_model, i)))[0, 1]
             for i in list(EXPLAINED)[:4]]
        print(f"{m:22s} patch ratio mean {np.mean(r):.2f} (min {min(r):.2f}, max {max(r):.2f}); "
              f"rank corr with random weights, max {max(c):.2f}")


if __name__ == "__main__":
    main()
