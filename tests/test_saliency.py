"""Saliency maps that mean something: planted evidence, model randomization, completeness.

One small B3 run is trained (about 45 s on 2 CPU cores, the whole file about 100 s) on drawn
images whose class is decided only by the colour of a 32x32 patch in the top-left corner. The
floors and ceilings on what depends on the trained model's numbers come from the spread over
seeds 0-7 (`python benchmarks/saliency_sanity.py --seeds 0 1 2 3 4 5 6 7`), each stated where it
is asserted.
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients
from PIL import Image

from engine import saliency
from engine.config import TrainConfig
from engine.model import build_model, load_trained
from engine.train import TrainData, train
from tests.conftest import SAMPLE, aivh, finished_run

S, P = 96, 32  # image side, patch side: the patch is 1/9 of the area
EXPLAINED = range(320, 328)  # held-out images, both classes


def draw(i: int, rng, *, neutral: bool = False) -> tuple[np.ndarray, int]:
    yy, xx = np.mgrid[0:S, 0:S] / S
    c0, c1 = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    img = c0 + (c1 - c0) * (xx if i % 3 else yy)[..., None] + rng.normal(0, 6, (S, S, 3))
    y = i % 2
    if neutral:
        img[:P, :P] = 128  # grey patch: no evidence either way
    else:
        img[:P, :P] = 40
        img[:P, :P, 0 if y else 2] = 220  # red patch: AI-generated; blue: human-made
    img[:P, :P] += rng.normal(0, 6, (P, P, 3))
    return np.clip(img, 0, 255).astype(np.uint8), y


N_TRAIN, N_NEUTRAL = 280, 93


def train_planted(root: Path, seed: int = 0, **overrides):
    """Draw the images into root and train the planted run: (training result, model).
    The seed draws the images and seeds the training (init, order, flips); `overrides` change
    the TrainConfig (another architecture, pretrained weights).

    Two things make the patch evidence the model cannot miss. Training runs in crop mode,
    which on these S x S images is the whole image, flipped half the time: the default
    random-resized crop cut most of the corner patch out of some training views, leaving
    labels that only the background could explain. And a third of the training set more
    (N_NEUTRAL images) has a grey patch and alternating labels, so their logit is driven to 0:
    red must push the logit up and blue must push it down, where without them the model
    could learn one colour against everything else, and then hiding the other colour's patch
    moved its logit no more than hiding background did (occlusion ratio 0.05 on one image).
    Prediction and saliency see the same pixels in crop and resize mode at S x S.
    """
    rng = np.random.default_rng(seed)
    paths, labels = [], []
    for i in range(max(EXPLAINED) + 1):
        img, y = draw(i, rng)
        Image.fromarray(img).save(root / f"{i}.png")
        paths.append(f"{i}.png")
        labels.append(y)
    train_paths, train_labels = paths[:N_TRAIN], labels[:N_TRAIN]
    for j in range(N_NEUTRAL):
        img, y = draw(j, rng, neutral=True)
        Image.fromarray(img).save(root / f"neutral{j}.png")
        train_paths.append(f"neutral{j}.png")
        train_labels.append(y)
    data = TrainData(root, train_paths, train_labels, paths[N_TRAIN:320], labels[N_TRAIN:320])
    cfg = TrainConfig.from_dict({"epochs": 5, "img_size": S, "batch_size": 16, "lr": 2e-3, "workers": 0,
                                 "patience": 9, "resize_mode": "crop", "seed": seed, **overrides})
    result = train(cfg, data, root / "run", progress=False)
    return result, load_trained(root / "run" / "best.pt")[0]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    result, model = train_planted(root)
    # validation AUC over seeds 0-7: 1.0 but for seed 7's 0.9975 (one pair of 400 out of order);
    # the old recipe gave 0.86 and 0.95 at seeds 3 and 5
    assert result.best.val_auc >= 0.98, "the planted model did not learn the patch"
    return root, model


def patch_ratio(heat: np.ndarray) -> float:
    """Share of attribution mass inside the patch over the patch's share of the area."""
    return float(heat[:P, :P].sum() / heat.sum()) / (P * P / (S * S))


@pytest.mark.parametrize("method", [
    "saliency", "integrated_gradients", "smoothgrad", "occlusion",
    pytest.param("gradcam", marks=pytest.mark.xfail(strict=True, reason=(
        "Grad-CAM on B3's last block is a 3x3 map at 96 px whose cells all see the whole image; "
        "for this from-scratch model it is centre-heavy (mean ratio 0.81-0.91 over seeds 0-7). "
        "At 256 px with a 64 px patch (earlier recipe), 1.1-1.3: every cell of the 8x8 map "
        "carries the decision (mean evidence -2.8 on human-made images, +2.7 on AI-generated; "
        "the patch's own cells -5.3 and +1.5). With ImageNet Lite0 fine-tuned instead (offline weights, "
        "5 epochs, lr 3e-4; benchmarks/gradcam_pretrained.py, seeds 0-3): 1.63-2.00, so at or under "
        "twice the patch's share, not above it on average: still expected to fail"))),
])
def test_planted_evidence_draws_the_attribution_mass(planted, method):
    root, model = planted
    ratios = np.array([patch_ratio(saliency.explain(model, root / f"{i}.png", S, saliency.Settings(method)).map)
                       for i in EXPLAINED])
    per_class = [ratios[[i % 2 == y for i in EXPLAINED]].mean() for y in (0, 1)]
    # Floors set from the spread over seeds (`python benchmarks/saliency_sanity.py --seeds 0 .. 7`,
    # this recipe, 2-core AMD EPYC, the training seed and the drawn images varying together):
    # lowest mean ratio / lowest class mean over seeds 0-7: saliency 3.13 / 2.25, integrated
    # gradients 4.04 / 2.73, smoothgrad 2.43 / 1.87, occlusion 3.15 / 2.95 (with the old recipe
    # one machine gave occlusion 0.92 for a class, and one image 0.05). The floors, 1.5 and 1.0,
    # are about 60% and 50% of the lowest figure seen. Not per image: this from-scratch model
    # also uses the background. Grad-CAM stays below (mean 0.81-0.91 over the seeds).
    assert ratios.mean() >= 1.5 and min(per_class) >= 1.0, (np.round(ratios, 2), np.round(per_class, 2))


def test_gradcam_is_the_class_activation_map_of_the_called_class(planted):
    """B3 ends in global average pooling and one linear layer, so Grad-CAM on its last block
    is the class activation map (Zhou et al. 2016): ReLU(sign * sum_k w_k A_k) / (h w),
    upsampled bilinearly. Checks the layer, the sign for the called class and the ReLU."""
    root, model = planted
    model = saliency.for_captum(model)
    signs = set()
    for i in EXPLAINED:
        _, x = saliency.preprocess(root / f"{i}.png", S)
        with torch.no_grad():
            act = model.features(x)  # (1, 1536, h, w): the last block's output
            logit = float(model(x)[0, 0])
            sign = 1.0 if logit >= 0 else -1.0
            cam = torch.einsum("k,bkhw->bhw", model.classifier[1].weight[0], act)[:, None]
            cam = (sign * cam).clamp_min(0) / (act.shape[-2] * act.shape[-1])
            expected = torch.nn.functional.interpolate(cam, size=(S, S), mode="bilinear")[0, 0].numpy()
        got = saliency.attribute(model, x, saliency.Settings("gradcam"))[0]
        assert got.shape == (S, S)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6 * float(np.abs(expected).max()))
        signs.add(sign)
    assert signs == {1.0, -1.0}, "both called classes are explained"


def epoch_score(a: np.ndarray) -> np.ndarray:
    r = np.empty(a.size)
    r[np.argsort(a, axis=None)] = np.arange(a.size)
    return r


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "smoothgrad", "occlusion", "gradcam"])
def test_maps_change_when_the_weights_are_randomized(planted, method):
    """Adebayo et al. (2018): a map that survives re-initialised weights explains nothing."""
    root, model = planted
    torch.manual_seed(1)
    random_model = build_model(None)
    corr = []
    for i in list(EXPLAINED)[:4]:
        trained = saliency.explain(model, root / f"{i}.png", S, saliency.Settings(method)).map
        rand = saliency.explain(random_model, root / f"{i}.png", S, saliency.Settings(method)).map
        corr.append(np.corrcoef(epoch_score(trained), epoch_score(rand))[0, 1])
    # The mean over the four images, not the largest: over seeds 0-7 (saliency_sanity.py) the
    # largest single-image correlation reached 0.82 (integrated gradients, seed 4, whose maps
    # are |input - baseline| times a gradient, so image structure survives any weights; 0.81
    # with the old recipe), while the mean stayed at or below 0.41 (saliency), 0.67 (integrated
    # gradients), 0.51 (smoothgrad), 0.20 (Grad-CAM) and -0.27 (occlusion). 0.8 leaves 0.13
    # above the highest mean seen; a map that ignores the weights correlates 1.0.
    assert np.mean(corr) < 0.8, np.round(corr, 2)


@pytest.mark.parametrize("baseline", saliency.BASELINES)
def test_integrated_gradients_completeness(planted, baseline):
    root, model = planted
    model = saliency.for_captum(model)
    _, x = saliency.preprocess(root / "321.png", S)
    base = saliency._baseline(x, baseline)
    attr, delta = IntegratedGradients(lambda z: model(z)[:, 0]).attribute(
        x, baselines=base, n_steps=64, internal_batch_size=16, return_convergence_delta=True)
    with torch.no_grad():
        diff = float(model(x)[0, 0] - model(base)[0, 0])
    total = float(attr.sum())
    assert abs(total - diff) <= abs(float(delta)) + 1e-4 * max(1.0, abs(diff))
    # How far 64 steps are from completeness depends on the logit along the path. From the mean
    # and blurred baselines it is smooth: |delta| / max(1, |diff|) at most 0.0002 over seeds 0-7
    # (saliency_sanity.py), so 5% is a wide margin. From black it is not: a black image is far
    # outside what this model was trained on (its logit -1175 at seed 4, +279 at seed 1, about 7
    # on the image): 64 steps gave 0 to 0.26 over the same seeds, and at seeds 1, 2 and 4, 128
    # steps up to 0.95, 1024 steps up to 0.04. No step count gives a bound that holds by a
    # margin, so from black only the identity above is checked.
    if baseline != "black":
        assert abs(float(delta)) < 0.05 * max(1.0, abs(diff)), (total, diff, float(delta))


def test_no_inplace_activation_survives(planted):
    _, model = planted
    saliency.for_captum(model)
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    assert not model.training


def test_results_are_cached_on_disk(planted, tmp_path, monkeypatch):
    root, model = planted
    settings = saliency.Settings("saliency")
    first = saliency.explain(model, root / "320.png", S, settings, cache=tmp_path, cache_key="k")
    monkeypatch.setattr(saliency, "attribute", lambda *a, **k: pytest.fail("recomputed"))
    again = saliency.explain(model, root / "320.png", S, settings, cache=tmp_path, cache_key="k")
    assert np.array_equal(first.map, again.map) and first.prob == again.prob
    assert len(list((tmp_path / "saliency").glob("*.npz"))) == 1
    # the same name, another picture (a file replaced and re-imported): not the old map
    import shutil
    copy = tmp_path / "copy.png"
    shutil.copy(root / "320.png", copy)
    monkeypatch.undo()
    saliency.explain(model, copy, S, settings, cache=tmp_path, cache_key="k")
    from PIL import Image
    Image.new("RGB", (S, S), (200, 30, 30)).save(copy)
    os.utime(copy, ns=(copy.stat().st_atime_ns, copy.stat().st_mtime_ns + 10**9))
    replaced = saliency.explain(model, copy, S, settings, cache=tmp_path, cache_key="k")
    assert len(list((tmp_path / "saliency").glob("*.npz"))) == 3
    assert not np.array_equal(replaced.map, first.map)


def test_bad_input_gives_clear_errors(workspace, sessions, tmp_path):
    with pytest.raises(ValueError, match="unknown saliency method 'lime'"):
        saliency.Settings("lime")
    run_id = finished_run(sessions)  # recorded run whose checkpoint file does not exist
    image = (SAMPLE / "test.csv").read_text().split()[1]
    cases = [(["--run", str(run_id), "--image", image, "--method", "lime"], "invalid choice"),
             (["--run", str(run_id), "--image", "test_data_v2/none.jpg", "--method", "saliency"],
              "no image 'test_data_v2/none.jpg'"),
             (["--run", str(run_id), "--image", image, "--method", "saliency"], "checkpoint not found"),
             (["--run", "99", "--image", image, "--method", "saliency"], "no run 99")]
    for args, message in cases:
        proc = aivh("saliency", *args, "--out", str(tmp_path / "x.png"), env_home=workspace, check=False)
        assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr)
    with sessions.begin() as s:
        from db import queries
        queries.get_run(s, run_id).checkpoint = None
    proc = aivh("saliency", *cases[0][0][:4], "--method", "saliency", "--out", str(tmp_path / "x.png"),
                env_home=workspace, check=False)
    assert proc.returncode == 1 and "has no checkpoint" in proc.stderr


def test_cli_writes_the_map_and_reports_the_mass(workspace, tmp_path):
    """A real tiny run on the bundled sample, then `aivh saliency --json`."""
    aivh("import", str(SAMPLE), "--name", "sample", env_home=workspace)
    aivh("train", "--dataset", "sample", "--epochs", "1", "--img-size", "32", "--limit", "40",
         "--batch-size", "16", "--workers", "0", env_home=workspace)
    image = (SAMPLE / "test.csv").read_text().split()[1]
    out = tmp_path / "map.png"
    proc = aivh("saliency", "--run", "1", "--image", image, "--method", "gradcam", "--out", str(out),
                "--json", env_home=workspace)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0.0 <= result["prob"] <= 1.0 and result["method"] == "gradcam"
    assert abs(sum(map(sum, result["mass"]["grid_3x3"])) - 1.0) < 1e-3
    assert Image.open(out).size[0] == 3 * Image.open(out).size[1]  # image | overlay | heatmap
    assert Path(result["path"]) == out
