"""Why a detector may fail on the test set: file metadata at import, `aivh shortcuts`, `aivh shift`,
`aivh evalset --like-test` and `aivh robustness`, on drawn datasets with known planted properties."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select, text, update

from db import evaluation, labelling, queries, store
from db.models import Image as ImageRow
from engine import shortcuts
from engine.ingest import import_dataset
from tests.conftest import aivh, draw_jpeg, write_kaggle


def _last_json(proc):
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _picture(rng: np.random.Generator) -> Image.Image:
    """A smooth gradient with noise of a random strength, at a random size: byte counts and bytes
    per pixel spread widely and alike in both classes, so only a planted property separates them."""
    w, h = int(rng.integers(40, 97)), int(rng.integers(40, 97))
    yy, xx = np.mgrid[0:h, 0:w]
    base = (xx * rng.uniform(0.5, 3) + yy * rng.uniform(0.5, 3))[..., None] + rng.uniform(0, 255, 3)
    arr = base + rng.normal(0, rng.uniform(0, 60), (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def planted(root: Path, seed: int, *, plant: bool, per_class: int = 50, tests: int = 40,
            test_like: int = 0) -> Path:
    """plant: AI images saved at JPEG quality 70, human-made at 95, test images at 85; without it
    every image's quality is drawn from those three whatever its class or split. test_like: that
    many training images (both classes) also saved at 85, as the test is."""
    rng = np.random.default_rng(seed)
    train = []
    for i in range(2 * per_class):
        label = i % 2
        name = f"train_data/{seed}_{i:04d}.jpg"
        quality = (70 if label else 95) if plant else int(rng.choice([70, 85, 95]))
        if i < test_like:
            quality = 85
        _save(_picture(rng), root / name, quality)
        train.append((name, label))
    test = []
    for i in range(tests):
        name = f"test_data_v2/{seed}_{i:04d}.jpg"
        _save(_picture(rng), root / name, 85 if plant else int(rng.choice([70, 85, 95])))
        test.append(name)
    return write_kaggle(root, train, test)


def _save(im: Image.Image, path: Path, quality: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, "JPEG", quality=quality)


# --- metadata at import ---------------------------------------------------------------------

def _meta(sessions, name: str) -> dict[str, tuple]:
    with sessions() as s:
        ds = queries.get_dataset(s, name)
        return {r[1]: r[3:] for r in queries.image_meta(s, ds.id)}


def test_import_records_each_files_header_properties(sessions, tmp_path):
    root = tmp_path / "meta"
    root.mkdir()
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 64, 3), dtype=np.uint8))
    (root / "train_data").mkdir()
    rgb.save(root / "train_data/q60.jpg", "JPEG", quality=60)  # Pillow's default subsampling: 4:2:0
    exif = Image.Exif()
    exif[0x010F] = "aivh camera"
    rgb.save(root / "train_data/q90.jpg", "JPEG", quality=90, subsampling=0, progressive=True,
             exif=exif.tobytes(), icc_profile=b"\0" * 128)
    rgb.convert("L").save(root / "train_data/grey.jpg", "JPEG", quality=80)
    rgb.save(root / "train_data/p.png", "PNG")
    draw_jpeg(root / "test_data_v2/t.jpg", 1)
    write_kaggle(root, [("train_data/q60.jpg", 0), ("train_data/q90.jpg", 1), ("train_data/grey.jpg", 0),
                        ("train_data/p.png", 1)], ["test_data_v2/t.jpg"])
    import_dataset(sessions, root, "meta", progress=False)
    meta = _meta(sessions, "meta")
    cols = queries.META_COLUMNS
    got = {name: dict(zip(cols, values)) for name, values in meta.items()}
    size = (root / "train_data/q90.jpg").stat().st_size
    assert got["train_data/q90.jpg"] == {"width": 64, "height": 40, "bytes": size, "format": "JPEG", "mode": "RGB",
                                         "jpeg_quality": 90, "subsampling": "4:4:4", "progressive": True,
                                         "has_exif": True, "has_icc": True}
    assert [got["train_data/q60.jpg"][c] for c in ("jpeg_quality", "subsampling", "progressive", "has_exif",
                                                   "has_icc")] == [60, "4:2:0", False, False, False]
    assert [got["train_data/grey.jpg"][c] for c in ("mode", "jpeg_quality", "subsampling")] == ["L", 80, None]
    assert [got["train_data/p.png"][c] for c in ("format", "jpeg_quality", "subsampling")] == ["PNG", None, None]


def test_quality_estimate_is_exact_for_every_libjpeg_quality():
    from engine.images import file_meta

    for quality in range(1, 101):
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (90, 120, 200)).save(buf, "JPEG", quality=quality)
        with Image.open(buf) as im:
            assert file_meta(im).jpeg_quality == quality


def _no_pixel_probe(monkeypatch):
    """Fail if import probes (and decodes) any file in full: only headers may be read."""
    def refuse(root, rel_path):
        raise AssertionError(f"{rel_path} was probed in full")
    monkeypatch.setattr("engine.ingest.probe_image", refuse)


def test_reimport_fills_the_metadata_of_rows_recorded_without_it_from_headers_only(sessions, tmp_path,
                                                                                   monkeypatch):
    root = planted(tmp_path / "p", 0, plant=True, per_class=5, tests=4)
    import_dataset(sessions, root, "p", progress=False)
    full = _meta(sessions, "p")
    with sessions.begin() as s:  # as a store from before migration 0004 holds them
        s.execute(update(ImageRow).values(format=None, mode=None, jpeg_quality=None, subsampling=None,
                                          progressive=None, has_exif=None, has_icc=None))
    with sessions() as s, pytest.raises(ValueError, match="run `aivh import DATA_DIR` again"):
        shortcuts.audit_shortcuts(s, "p")
    _no_pixel_probe(monkeypatch)
    again = import_dataset(sessions, root, "p", progress=False)
    assert again.added == 0 and not again.rejects and again.metadata_filled == 10 + 4
    assert _meta(sessions, "p") == full
    assert {v[queries.META_COLUMNS.index("jpeg_quality")] for v in full.values()} == {70, 95, 85}


def test_migration_0004_adds_the_columns_and_the_next_import_fills_an_old_stores_rows(store_url, tmp_path,
                                                                                   monkeypatch):
    """A store at revision 0003 holding an image (size and mtime recorded, so it is not probed again)."""
    root = planted(tmp_path / "old", 1, plant=True, per_class=1, tests=1)
    name = "train_data/1_0000.jpg"
    st = (root / name).stat()
    from sqlalchemy import create_engine

    engine = create_engine(store_url)
    store.migrate(engine, "0003")
    with engine.begin() as c:
        c.execute(text("INSERT INTO datasets (id, name, root, created_at) VALUES (1, 'old', :root, "
                       "CURRENT_TIMESTAMP)"), {"root": str(root.resolve())})
        c.execute(text("INSERT INTO images (dataset_id, rel_path, split, csv_row, width, height, bytes, sha1, "
                       "status, mtime_ns) VALUES (1, :p, 'train', 0, 1, 1, :b, :sha1, 'ok', :m)"),
                  {"p": name, "b": st.st_size, "m": st.st_mtime_ns, "sha1": "0" * 40})
        image_id = c.execute(text("SELECT id FROM images WHERE rel_path = :p"), {"p": name}).scalar_one()
        c.execute(text("INSERT INTO labels (image_id, label, source, created_at) VALUES (:i, 0, 'import', "
                       "CURRENT_TIMESTAMP)"), {"i": image_id})
    engine.dispose()
    sessions = store.session_factory(store_url)  # migrates to the head
    with sessions() as s:
        assert s.scalar(select(ImageRow.format).where(ImageRow.id == image_id)) is None
    from engine.images import probe_image

    probed = []

    def only_new(r, rel_path):  # the stored image must not be probed again; the new ones may be
        assert rel_path != name, "the stored image was probed in full"
        probed.append(rel_path)
        return probe_image(r, rel_path)
    monkeypatch.setattr("engine.ingest.probe_image", only_new)
    import_dataset(sessions, root, "old", progress=False)
    with sessions() as s:
        row = s.get(ImageRow, image_id)
        assert (row.format, row.mode, row.jpeg_quality, row.subsampling, row.progressive) == \
            ("JPEG", "RGB", 95, "4:2:0", False)  # image 0 is human-made (label 0): quality 95
    assert probed  # the other rows were new, probed in full


# --- shortcuts and shift --------------------------------------------------------------------

# Measured over seeds 0-7 on 2026-11-27 (50 images per class, 40 test images; each seed also
# the cross-validation seed):
#   planted:   shortcuts metadata AUC 1.0 and jpeg_quality alone 1.0 on every seed, the next
#              feature (bytes or bytes per pixel, which the quality moves) 0.78-0.91; shift AUC
#              1.0 with jpeg_quality first at 1.0
#   unplanted: shortcuts metadata AUC 0.35-0.54, best single feature 0.50-0.56; shift AUC
#              0.35-0.61, its top feature at most 0.63
# The bounds leave about 0.06 to 0.1 beyond those.
PLANTED_MIN, NEXT_MAX, NULL_MAX = 0.98, 0.97, 0.72


def _both_reports(sessions, root: Path, seed: int) -> tuple[dict, shortcuts.Shift]:
    """`aivh shortcuts` and `aivh shift` (file properties) of a drawn dataset, imported as it is."""
    import_dataset(sessions, root, root.name, progress=False)
    with sessions() as s:
        return (shortcuts.audit_shortcuts(s, root.name, seed=seed),
                shortcuts.measure_shift(s, queries.get_dataset(s, root.name).id, seed=seed))


@pytest.mark.parametrize("seed", [0, 1])
def test_a_planted_jpeg_quality_is_found_first_by_shortcuts_and_by_shift(sessions, tmp_path, seed):
    found, shift = _both_reports(sessions, planted(tmp_path / "p", seed, plant=True), seed)
    assert found["metadata_auc"] >= PLANTED_MIN and found["verdict"] == "shortcut"
    assert found["features"][0]["name"] == "jpeg_quality" and found["features"][0]["auc"] >= PLANTED_MIN
    assert found["features"][1]["auc"] <= NEXT_MAX, found["features"]
    assert [f["auc"] for f in found["features"]] == sorted((f["auc"] for f in found["features"]), reverse=True)
    assert "predictable from file properties alone" in found["sentence"]
    assert shift.auc >= PLANTED_MIN and shift.features[0]["name"] == "jpeg_quality"


@pytest.mark.parametrize("seed", [0, 1])
def test_without_the_plant_neither_finds_anything(sessions, tmp_path, seed):
    found, shift = _both_reports(sessions, planted(tmp_path / "u", seed, plant=False), seed)
    assert found["metadata_auc"] <= NULL_MAX and found["features"][0]["auc"] <= NULL_MAX, found
    assert found["verdict"] != "shortcut"
    assert shift.auc <= NULL_MAX


def test_feature_alone_finds_a_middle_band_and_either_direction():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 400)
    band = ((x > 0.4) & (x < 0.6)).astype(int)  # class 1 only in a middle band: no ranking finds it
    assert shortcuts.feature_alone(x, band) > 0.95
    assert shortcuts.feature_alone(-x, (x > 0.5).astype(int)) > 0.95  # reversed direction
    assert shortcuts.feature_alone(np.full(400, 3.0), band) == 0.5


def test_cli_shortcuts_shift_and_an_evalset_of_the_most_test_like(workspace, tmp_path):
    root = planted(tmp_path / "p", 0, plant=True, test_like=10)  # 10 training images saved as the test is
    aivh("import", str(root), "--name", "p", "--json", env_home=workspace)
    sc = _last_json(aivh("shortcuts", "--dataset", "p", "--json", env_home=workspace))
    assert set(sc) >= {"metadata_auc", "features", "verdict", "sentence"}
    assert sc["features"][0]["name"] == "jpeg_quality" and sc["verdict"] == "shortcut"
    text_mode = aivh("shortcuts", "--dataset", "p", env_home=workspace).stdout
    assert text_mode.startswith("The training label is predictable from file properties alone")

    sh = _last_json(aivh("shift", "--dataset", "p", "--out", str(tmp_path / "like.csv"), "--json",
                         env_home=workspace))
    assert sh["auc"] >= PLANTED_MIN - 0.1 and sh["features"][0]["name"] == "jpeg_quality"
    like = (tmp_path / "like.csv").read_text().splitlines()
    assert like[0] == "file_name,label,test_likeness" and len(like) == 1 + 100
    planted_like = {f"train_data/0_{i:04d}.jpg" for i in range(10)}
    assert {line.split(",")[0] for line in like[1:11]} == planted_like

    ev = _last_json(aivh("evalset", "--like-test", "10", "--dataset", "p", "--name", "test-like", "--json",
                         env_home=workspace))
    assert ev["images"] == 10
    sessions = store.session_factory()
    with sessions() as s:
        ds = queries.get_dataset(s, "p")
        frozen = evaluation.eval_set_image_ids(s, evaluation.get_eval_set(s, ds.id, "test-like").id)
        paths = {queries.get_image(s, i).rel_path for i in frozen}
        assert paths == planted_like and set(frozen) <= set(labelling.current_labels(s, ds.id))
    both = aivh("evalset", "--name", "x", env_home=workspace, check=False)
    assert both.returncode == 1 and both.stderr.startswith("aivh: error: give --run") and both.stderr.count("\n") == 1


# --- robustness -----------------------------------------------------------------------------

def _noise_or_smooth(root: Path, per_class: int = 30, seed: int = 3) -> Path:
    """AI-generated (1): faint grain (sigma 6) over a gradient; human-made (0): the gradient alone,
    at the run's own size (64 px, so its resize keeps the grain). A strong JPEG re-encode washes
    the grain out, so a detector of it moves with the quality."""
    rng = np.random.default_rng(seed)
    train = []
    for i in range(2 * per_class):
        yy, xx = np.mgrid[0:64, 0:64]
        arr = (xx * rng.uniform(0.5, 2) + yy * rng.uniform(0.5, 2))[..., None] + rng.uniform(0, 120, 3)
        if i % 2:
            arr = arr + rng.normal(0, 6, arr.shape)
        name = f"train_data/{i:04d}.png"
        (root / "train_data").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(root / name)
        train.append((name, i % 2))
    draw_jpeg(root / "test_data_v2/t.jpg", 0)
    return write_kaggle(root, train, ["test_data_v2/t.jpg"])


def test_robustness_rows_show_a_perturbation_that_washes_out_what_the_run_detects(sessions, workspace, tmp_path):
    from engine.config import TrainConfig
    from engine.probe import create_probe, execute_probe

    import_dataset(sessions, _noise_or_smooth(tmp_path / "n"), "n", progress=False)
    with sessions.begin() as s:
        cfg = TrainConfig.from_dict({"arch": "tf_efficientnet_lite0", "pretrained": "imagenet", "probe": True,
                                     "img_size": 64, "device": "cpu", "workers": 0, "batch_size": 64,
                                     "val_fraction": 0.5})
        run_id = create_probe(s, queries.get_dataset(s, "n"), cfg).id
    execute_probe(run_id, sessions=sessions, progress=False)
    # batches of 7: the 30 images span five, so every batch must be scored (not the first alone)
    out = _last_json(aivh("robustness", "--run", str(run_id), "--batch-size", "7", "--json", env_home=workspace))
    rows = {r["perturbation"]: r for r in out["rows"]}
    assert list(rows) == ["none", "jpeg95", "jpeg75", "jpeg50", "downscale0.5", "upscale2", "crop0.8", "png"]
    assert all(set(r) >= {"perturbation", "f1", "auc", "called_ai"} for r in out["rows"])
    assert out["images"] == 30
    # Deterministic on the CPU for one drawing. Measured (30 validation images each):
    # - paired, drawing = probe seed, 0-9 (2026-11-28): none F1 0.968-1.0, AUC 0.947-1.0, called
    #   AI 0.50-0.53; jpeg50 F1 0.11-0.80 (0.17-0.89 under none's), AUC 0.38-0.84, mean change
    #   0.21-0.56, 6-17 calls changed, called AI from 0.13 above none's to 0.43 below it (so no
    #   direction is asserted); mean change jpeg95 0.00-0.08 < jpeg75 0.15-0.49 < jpeg50;
    # - crossed, drawings 0-9 x probe seeds 0, 5, 9 (2026-12-05, benchmarks/robustness_spread.py):
    #   none F1 0.909-1.0, AUC 0.82-1.0 (drawing 4, probe seed 0; drawing 5 with seed 9: 0.94);
    #   jpeg50 F1 0.24-0.875 under none's, 7-21 calls changed, mean change 0.22-0.60; jpeg95
    #   0.000-0.062, jpeg75 0.12-0.42: jpeg75 under jpeg50 on 29 of 30 (drawing 2, seed 5: 0.42
    #   against 0.27), so only jpeg95 under both is asserted.
    # This drawing (seed 3, probe seed 0): none F1 1.0, AUC 1.0; jpeg50 F1 0.42, AUC 0.57, mean
    # change 0.37, 11 calls changed. The bounds leave 0.05 or more (3 calls) beyond all of it.
    none = rows["none"]
    assert none["auc"] >= 0.75 and none["f1"] >= 0.85, none  # the probe sees the grain
    # a PNG round trip is lossless: the very same scores
    assert rows["png"]["mean_abs_change"] < 1e-5 and rows["png"]["called_ai"] == none["called_ai"]
    q50 = rows["jpeg50"]  # JPEG at quality 50 washes the grain out
    assert q50["f1"] <= none["f1"] - 0.1 and q50["flipped"] >= 3, rows
    assert q50["mean_abs_change"] > 0.15, q50
    assert rows["jpeg95"]["mean_abs_change"] < min(rows["jpeg75"]["mean_abs_change"], q50["mean_abs_change"])
    from engine.robustness import stored

    kept = stored(run_id, "val")["rows"]  # kept with the run, with the images behind each row
    assert [{k: v for k, v in r.items() if k != "flipped_ids"} for r in kept] == out["rows"]
    flipped = {r["perturbation"]: r["flipped_ids"] for r in kept}
    assert flipped["none"] == flipped["png"] == [] and rows["png"]["flipped"] == 0
    with sessions() as s:
        val_ids = set(queries.run_image_ids(s, run_id, "val"))
    assert set(flipped["jpeg50"]) <= val_ids and len(set(flipped["jpeg50"])) == q50["flipped"]
    # the share called AI moved by at most the calls that changed (a call can change either way)
    assert q50["flipped"] >= round(abs(none["called_ai"] - q50["called_ai"]) * out["images"]) > 0

    few = _last_json(aivh("robustness", "--run", str(run_id), "--limit", "10", "--json", env_home=workspace))
    assert few["images"] == 10


def _tinted(root: Path, seed: int) -> Path:
    """Smooth gradients saved alike (64 px JPEG at 90): training images blue-tinted except the
    first 10, red-tinted like every test image. File properties cannot tell them apart; a
    backbone's pooled features can."""
    rng = np.random.default_rng(seed)

    def draw(path: Path, red: bool) -> None:
        yy, xx = np.mgrid[0:64, 0:64]
        base = xx * rng.uniform(0.5, 2) + yy * rng.uniform(0.5, 2)
        tint = np.array([150, 40, 40]) if red else np.array([40, 40, 150])
        path.parent.mkdir(parents=True, exist_ok=True)
        arr = base[..., None] * 0.3 + tint + rng.uniform(-20, 20, 3)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)

    train = [(f"train_data/{i:04d}.jpg", i % 2) for i in range(60)]
    for i, (name, _) in enumerate(train):
        draw(root / name, red=i < 10)
    test = [f"test_data_v2/{i:04d}.jpg" for i in range(20)]
    for name in test:
        draw(root / name, red=True)
    return write_kaggle(root, train, test)


def test_evalset_like_test_with_a_runs_features_finds_what_file_properties_cannot(workspace, tmp_path):
    """With a run, only the images it never trained on are ranked (its 30 training images left
    out). Measured over seeds 0-3 (2026-11-28): 6 planted images among those never trained on,
    all 6 frozen with the probe's features on every seed, shift AUC 0.83-0.94 (the features
    alone 0.83-0.94, the file properties of the same images 0.46-0.63); by file properties
    alone (every training image) AUC 0.41-0.63 and 1-3 planted images frozen."""
    aivh("import", str(_tinted(tmp_path / "t", seed=0)), "--name", "t", env_home=workspace)
    probe = _last_json(aivh("probe", "--dataset", "t", "--img-size", "64", "--device", "cpu", "--workers", "0",
                            "--val-fraction", "0.5", "--json", env_home=workspace))
    planted = {f"train_data/{i:04d}.jpg" for i in range(10)}

    def frozen(name: str, *flags: str) -> tuple[dict, set[str]]:
        out = _last_json(aivh("evalset", "--like-test", "10", "--dataset", "t", "--name", name, *flags,
                              "--device", "cpu", "--json", env_home=workspace))
        with store.session_factory()() as s:
            es = evaluation.get_eval_set(s, queries.get_dataset(s, "t").id, name)
            return out, {queries.get_image(s, i).rel_path for i in evaluation.eval_set_image_ids(s, es.id)}

    meta_out, by_meta = frozen("by-file-properties")
    run_out, by_run = frozen("by-features", "--shift-run", str(probe["run"]))
    with store.session_factory()() as s:
        trained = {queries.get_image(s, i).rel_path for i in queries.run_image_ids(s, probe["run"], "train")}
    assert len(trained) == 30 and run_out["excluded"] == 30 and not by_run & trained
    assert meta_out["shift_auc"] < 0.75 and "metadata_auc" not in meta_out
    assert run_out["shift_auc"] >= 0.75 and run_out["metadata_auc"] < 0.75 and run_out["pooled_auc"] >= 0.75
    unseen = planted - trained
    assert len(by_run & unseen) >= len(unseen) - 1 and len(by_run & planted) > len(by_meta & planted), \
        (by_run, by_meta)
    alone = aivh("evalset", "--shift-run", str(probe["run"]), "--name", "x", env_home=workspace, check=False)
    assert alone.returncode == 1 and alone.stderr.startswith("aivh: error: give --run")
    other = aivh("evalset", "--like-test", "5", "--dataset", "t", "--shift-run", "999", "--name", "y",
                 env_home=workspace, check=False)
    assert other.returncode == 1 and other.stderr.count("\n") == 1 and "999" in other.stderr, other.stderr
