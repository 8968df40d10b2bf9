"""Prints the figures behind tests/test_saliency.py: how much attribution mass each method puts
in the planted patch, and how its maps correlate with those of a re-initialised model.

    python benchmarks/saliency_sanity.py

Same drawn images, seed and training as the test (a few minutes on 2 CPU cores).
"""
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import saliency
from engine.model import build_model, load_trained
from engine.train import TrainConfig, TrainData, train
from tests.test_saliency import EXPLAINED, S, _rank, draw, patch_ratio


def main() -> None:
    root = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for i in range(max(EXPLAINED) + 1):
        img, y = draw(i, rng)
        Image.fromarray(img).save(root / f"{i}.png")
        paths.append(f"{i}.png")
        labels.append(y)
    data = TrainData(root, paths[:280], labels[:280], paths[280:320], labels[280:320])
    res = train(TrainConfig(epochs=5, img_size=S, batch_size=16, lr=2e-3, workers=0, patience=9),
                data, root / "run", progress=False)
    print(f"planted model: validation AUC {res.best.val_auc:.4f}")
    model, _ = load_trained(root / "run" / "best.pt")
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
