"""Prints the figures behind tests/test_saliency.py: how much attribution mass each method puts
in the planted patch, how its maps correlate with those of a re-initialised model, and how
far integrated gradients are from completeness.

    python benchmarks/saliency_sanity.py [--seeds 0 1 2 3 4 5 6 7] [--img-size 256 --patch 64]

Same drawn images, seed and training as the test (about a minute of training per seed on
2 CPU cores at the test's 96 px, two minutes a seed in all; about 9 minutes of training at
256 px). With several --seeds the recipe is rerun with each (the seed draws the images and
seeds the training), and a last table gives, per figure the tests assert on, the spread over
the seeds: the tests' floors and ceilings are set from it. With --img-size/--patch the same
recipe at another size, as in docs/benchmarks.md ("Planted evidence").
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from captum.attr import IntegratedGradients

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tests.test_saliency as planted
from engine import saliency
from engine.model import build_model
from tests.test_saliency import EXPLAINED, _rank, patch_ratio, train_planted

IG_STEPS = (64, 256)


def ig_delta(model, path: Path, baseline: str, steps: int) -> float:
    """|convergence delta| / max(1, |logit difference|), as test_integrated_gradients_completeness."""
    model = saliency.for_captum(model)
    _, x = saliency.preprocess(path, planted.S)
    base = saliency._baseline(x, baseline)
    _, delta = IntegratedGradients(lambda z: model(z)[:, 0]).attribute(
        x, baselines=base, n_steps=steps, internal_batch_size=16, return_convergence_delta=True)
    with torch.no_grad():
        diff = float(model(x)[0, 0] - model(base)[0, 0])
    return abs(float(delta)) / max(1.0, abs(diff))


def one_seed(seed: int, methods: list[str]) -> dict[str, float]:
    """The figures of one seed, by name (see the summary in main)."""
    S = planted.S
    root = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    res, model = train_planted(root, seed)
    out = {"validation AUC": res.best.val_auc}
    print(f"seed {seed}: planted model ({S} px, {planted.P} px patch): validation AUC "
          f"{res.best.val_auc:.4f}, kept epoch {res.best.epoch} (validation loss "
          f"{res.best.val_loss:.4f}), trained in {time.perf_counter() - t0:.0f} s", flush=True)
    torch.manual_seed(1)
    random_model = build_model(None)
    for m in methods:
        def heat(net, i, m=m):
            return saliency.explain(net, root / f"{i}.png", S, saliency.Settings(m)).map
        r = np.array([patch_ratio(heat(model, i)) for i in EXPLAINED])
        per_class = [r[[i % 2 == y for i in EXPLAINED]].mean() for y in (0, 1)]
        c = np.array([np.corrcoef(_rank(heat(model, i)), _rank(heat(random_model, i)))[0, 1]
                      for i in list(EXPLAINED)[:4]])
        out |= {f"{m} ratio mean": r.mean(), f"{m} ratio lower class": min(per_class),
                f"{m} random corr max": c.max()}
        print(f"  {m:22s} patch ratio mean {r.mean():.2f}, per class {per_class[0]:.2f} / "
              f"{per_class[1]:.2f}, per image {' '.join(f'{v:.2f}' for v in r)}; "
              f"rank corr with random weights {' '.join(f'{v:.2f}' for v in c)}", flush=True)
    for b in saliency.BASELINES:
        d = [ig_delta(model, root / f"{EXPLAINED[1]}.png", b, n) for n in IG_STEPS]
        out |= {f"IG delta {b} {n} steps": v for n, v in zip(IG_STEPS, d)}
        print(f"  integrated gradients from the {b} baseline: |delta| / max(1, |diff|) "
              + ", ".join(f"{v:.4f} at {n} steps" for n, v in zip(IG_STEPS, d)), flush=True)
    print(f"  seed {seed} done in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--img-size", type=int, default=planted.S)
    ap.add_argument("--patch", type=int, default=planted.P)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--methods", nargs="+", default=list(saliency.METHODS))
    args = ap.parse_args()
    planted.S, planted.P = args.img_size, args.patch  # draw() and patch_ratio() read these
    runs = [one_seed(seed, args.methods) for seed in args.seeds]
    if len(runs) > 1:
        print(f"over seeds {' '.join(map(str, args.seeds))}: min / median / max (per seed)")
        for name in runs[0]:
            v = np.array([r[name] for r in runs])
            print(f"  {name:40s} {v.min():.3f} / {np.median(v):.3f} / {v.max():.3f}   "
                  f"({' '.join(f'{x:.3f}' for x in v)})")


if __name__ == "__main__":
    main()
