"""Neighbours: embeddings, exact and near copies, grouped splits, the map, "more like this".

Planted copies (a training image re-encoded at another JPEG quality and resized by 0.9, put in
the test split or under a new name in training; byte-identical copies with the opposite label)
in the bundled CIFAKE sample: every plant must be found, with few other pairs. Measured on
2026-11-27 (PHASH_MAX 6): all 45 plants found, 0 other pairs by perceptual hash, so the bounds
below leave room for noise without letting a broken detector pass.
"""
from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SAMPLE, aivh

PLANTS = 15  # of each kind


def plant_copies(dst: Path, n: int = PLANTS, seed: int = 0) -> list[tuple[str, str, str]]:
    """The sample copied to dst with 3n planted copies; returns (original, copy, kind) rows."""
    shutil.copytree(SAMPLE, dst)
    with open(dst / "train.csv", newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    with open(dst / "test.csv", newline="") as f:
        tests = [r[0] for r in list(csv.reader(f))[1:]]
    picks = random.Random(seed).sample(body, 3 * n)

    def near(src: str, out: str, quality: int) -> None:
        im = Image.open(dst / src).convert("RGB")
        im = im.resize((round(im.width * 0.9), round(im.height * 0.9)), Image.BICUBIC)
        im.save(dst / out, quality=quality)

    plants = []
    for j, r in enumerate(picks[:n]):
        name = f"test_data_v2/plant_test_{j}.jpg"
        near(r[1], name, 70)
        tests.append(name)
        plants.append((r[1], name, "near-test"))
    for j, r in enumerate(picks[n:2 * n]):
        name = f"train_data/plant_train_{j}.jpg"
        near(r[1], name, 60)
        body.append([str(len(body)), name, r[2]])
        plants.append((r[1], name, "near-train"))
    for j, r in enumerate(picks[2 * n:]):
        name = f"train_data/plant_exact_{j}.jpg"
        shutil.copy(dst / r[1], dst / name)
        body.append([str(len(body)), name, str(1 - int(r[2]))])
        plants.append((r[1], name, "exact-conflict"))
    with open(dst / "train.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *body])
    with open(dst / "test.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([["id"], *[[t] for t in tests]])
    return plants


def _json(proc) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The planted sample imported into a workspace of its own (shared by this module's tests)."""
    base = tmp_path_factory.mktemp("planted")
    plants = plant_copies(base / "data")
    home = base / "home"
    aivh("import", str(base / "data"), "--name", "planted", "--json", env_home=home)
    return home, plants


def _found(out: dict) -> set[tuple[str, str]]:
    return {tuple(sorted((p["a"], p["b"]))) for p in out["pairs"]}


def test_every_planted_copy_is_found_with_few_other_pairs(planted):
    home, plants = planted
    out = _json(aivh("duplicates", "--dataset", "planted", "--json", env_home=home))
    found = _found(out)
    planted_pairs = {tuple(sorted(p[:2])) for p in plants}
    assert planted_pairs <= found  # recall 1.0: measured 45 of 45
    assert len(found - planted_pairs) <= 3  # precision: measured 0 other pairs
    by_pair = {tuple(sorted((p["a"], p["b"]))): p for p in out["pairs"]}
    for original, copy, kind in plants:
        pair = by_pair[tuple(sorted((original, copy)))]
        assert pair["kind"] == {"near-test": "train-test", "near-train": "train-train",
                                "exact-conflict": "label-conflict"}[kind], pair
        assert pair["match"] == ("exact" if kind == "exact-conflict" else "phash")
        assert pair["distance"] <= 6
    assert out["counts"]["label-conflict"] == PLANTS
    assert out["counts"]["train-test"] >= PLANTS and out["counts"]["train-train"] >= PLANTS
    assert out["hashed"] == out["images"] == 445


def test_hashes_are_stored_at_first_use_and_reused(planted, monkeypatch):
    home, _ = planted
    from sqlalchemy import update

    from db import queries
    from db.models import Image
    from db.store import session_factory

    aivh("duplicates", "--dataset", "planted", "--json", env_home=home)
    monkeypatch.setenv("AIVH_HOME", str(home))
    monkeypatch.delenv("AIVH_DB_URL", raising=False)
    sessions = session_factory()
    with sessions() as s:
        stored = queries.phashes(s, queries.get_dataset(s, "planted").id)
    assert len(stored) == 445 and all(len(h) == 16 for h in stored.values())
    forget = sorted(stored)[:5]
    with sessions.begin() as s:  # five hashes forgotten: only those five are hashed again
        s.execute(update(Image).where(Image.id.in_(forget)).values(phash=None))
    proc = aivh("duplicates", "--dataset", "planted", env_home=home)
    assert "perceptual hashes" in proc.stderr and "5/5" in proc.stderr
    assert "label-conflict  15" in proc.stdout
    with sessions() as s:
        again = queries.phashes(s, queries.get_dataset(s, "planted").id)
    assert again == stored
    proc = aivh("duplicates", "--dataset", "planted", env_home=home)
    assert "perceptual hashes" not in proc.stderr and "label-conflict  15" in proc.stdout


def test_grouped_probe_keeps_planted_pairs_together_and_embeddings_find_them(planted, monkeypatch):
    home, plants = planted
    run = _json(aivh("probe", "--dataset", "planted", "--img-size", "32", "--workers", "0",
                     "--group", "near-duplicates", "--json", env_home=home))["run"]
    proc = aivh("duplicates", "--dataset", "planted", "--run", str(run), env_home=home, check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        f"aivh: error: run {run} has no embeddings yet: run `aivh embed --run {run}`")
    emb = _json(aivh("embed", "--run", str(run), "--workers", "0", "--json", env_home=home))
    assert emb["images"] == 445 and emb["dim"] == 1280 and emb["skipped"] == 0
    out = _json(aivh("duplicates", "--dataset", "planted", "--run", str(run), "--json", env_home=home))
    found = _found(out)
    assert {tuple(sorted(p[:2])) for p in plants} <= found
    assert out["thresholds"]["min_cosine"] == pytest.approx(0.9)
    planted_pairs = {tuple(sorted(p[:2])) for p in plants}
    # no planted training pair straddles the grouped split: none is a train-val leak
    assert not [p for p in out["pairs"] if p["kind"] == "train-val" and tuple(sorted((p["a"], p["b"]))) in planted_pairs]

    from db import queries
    from db.store import session_factory
    monkeypatch.setenv("AIVH_HOME", str(home))
    monkeypatch.delenv("AIVH_DB_URL", raising=False)
    with session_factory()() as s:
        r = queries.get_run(s, run)
        grouping = r.config["grouping"]
        side = {i: "train" for i in queries.run_image_ids(s, run, "train")}
        side.update({i: "val" for i in queries.run_image_ids(s, run, "val")})
        ids = {p: i for i, p in queries.image_paths(s, r.dataset_id, "train")}
    assert grouping["group"] == "near-duplicates" and "phash<=6" in grouping["by"]
    assert grouping["groups"] >= 2 * PLANTS
    for original, copy, kind in plants:
        if kind != "near-test":
            assert side[ids[original]] == side[ids[copy]], (original, copy)

    from engine import embeddings, neighbours
    e = embeddings.load(run)
    assert e.vectors.dtype == np.float16 and len(e.image_id) == 445
    first = ids[plants[PLANTS][0]]  # a near-train plant's original
    near = neighbours.nearest(e, first, k=5)
    assert len(near) == 5 and near[0][1] >= near[-1][1] and first not in [i for i, _ in near]
    _ids, xy, method = neighbours.embedding_map(run, method="pca")
    assert method == "pca" and xy.shape == (445, 2) and np.isfinite(xy).all()
    cache = embeddings.path(run).with_name(neighbours.MAP_FILE)
    stamp = cache.stat().st_mtime_ns
    again = neighbours.embedding_map(run, method="pca")
    assert cache.stat().st_mtime_ns == stamp and np.array_equal(again[1], xy)


def test_ungrouped_splits_do_separate_planted_pairs_and_grouped_never(tmp_path, workspace, sessions):
    """The check above can fail: without near-duplicate grouping some seed splits a plant."""
    from db import labelling, queries
    from engine import duplicates, splits
    from engine.ingest import import_dataset

    plants = plant_copies(tmp_path / "data")
    import_dataset(sessions, tmp_path / "data", "p", progress=False)
    with sessions.begin() as s:
        ds = queries.get_dataset(s, "p")
        ims = dict(queries.image_paths(s, ds.id, "train"))
        strata = {i: v for i, v in labelling.import_labels(s, ds.id).items() if i in ims}
        by_path = {p: i for i, p in ims.items()}
        pairs = [(by_path[a], by_path[b]) for a, b, k in plants if k != "near-test"]
        separated = {}
        for group in (None, "near-duplicates"):
            content, _ = duplicates.split_groups(s, ds.id, tmp_path / "data", strata, group=group, progress=False)
            separated[group] = 0
            for seed in range(4):
                for fn in ("split", "folds"):
                    if fn == "split":
                        tr, va = splits.split_images({i: ims[i] for i in strata}, strata, val_fraction=0.2,
                                                     seed=seed, content=content)
                        side = {i: 0 for i in tr} | {i: 1 for i in va}
                    else:
                        side = splits.assign_folds({i: ims[i] for i in strata}, strata, 3, seed, groups=content)
                    separated[group] += sum(side[a] != side[b] for a, b in pairs)
    assert separated[None] > 0  # near copies (not byte-identical) land apart without grouping
    assert separated["near-duplicates"] == 0


def test_a_group_column_in_train_csv_is_honoured(tmp_path, sessions):
    from db import labelling, queries
    from engine import duplicates, splits
    from engine.ingest import import_dataset
    from tests.conftest import draw_jpeg

    root = tmp_path / "g"
    names = [f"train_data/{i:03d}.jpg" for i in range(40)]
    for i, n in enumerate(names):
        draw_jpeg(root / n, i, size=(32, 32))
    with open(root / "train.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["", "file_name", "label", "group"])
        for i, n in enumerate(names):  # twins: 2k (label 0) and 2k+1 (label 1) share group k
            w.writerow([i, n, i % 2, f"twin{i // 2}"])
    (root / "test.csv").write_text("id\n")
    import_dataset(sessions, root, "g", progress=False)
    with sessions.begin() as s:
        ds = queries.get_dataset(s, "g")
        ims = dict(queries.image_paths(s, ds.id, "train"))
        strata = {i: v for i, v in labelling.import_labels(s, ds.id).items() if i in ims}
        content, how = duplicates.split_groups(s, ds.id, root, strata, group=None, progress=False)
    assert how["by"] == ["sha1", "csv group"] and how["groups"] == 20
    by_path = {p: i for i, p in ims.items()}
    for seed in range(3):
        tr, va = splits.split_images({i: ims[i] for i in strata}, strata, val_fraction=0.25, seed=seed,
                                     content=content)
        side = {i: 0 for i in tr} | {i: 1 for i in va}
        assert va and all(side[by_path[names[2 * k]]] == side[by_path[names[2 * k + 1]]] for k in range(20))


def test_embedding_pairs_and_the_approximate_index_find_planted_vectors():
    from engine import neighbours

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 64)).astype(np.float32)
    twins = rng.choice(3000, 40, replace=False)
    copies = x[twins] + 0.05 * rng.standard_normal((40, 64)).astype(np.float32)  # cosine about 0.999
    v = np.vstack([x, copies]).astype(np.float16)
    truth = {(int(t), 3000 + j) for j, t in enumerate(twins)}
    for exact_max in (10**6, 100):  # exact search, then faiss IVF
        _sims, idx = neighbours.knn(v, 5, exact_max=exact_max)
        a, b, c = neighbours.embedding_pairs(v, 0.9) if exact_max > 1000 else (None, None, None)
        hits = {(int(t), 3000 + j) for j, t in enumerate(twins) if idx[3000 + j, 0] == t}
        assert len(hits) >= 38 if exact_max == 100 else hits == truth  # IVF recall measured 40/40
        if a is not None:
            assert set(zip(a.tolist(), b.tolist())) == truth and (c >= 0.9).all()


def test_phash_pairs_and_clusters_by_hand():
    from engine import duplicates

    # 32, 35 and 40 bits set (detail), then 32 bits far from them, then two flat images' hashes
    hexes = ["ffffffff00000000", "ffffffff00000007", "ffffffff000000ff", "00000000ffffffff",
             "8000000000000000", "0000000000000000"]
    a, b, d = duplicates.phash_pairs(hexes, 3)
    assert list(zip(a.tolist(), b.tolist(), d.tolist())) == [(0, 1, 3)]
    a, b, d = duplicates.phash_pairs(hexes, 8)
    # the flat ones, 1 bit apart, are in no pair: too little detail to tell copies apart
    assert sorted(zip(a.tolist(), b.tolist(), d.tolist())) == [(0, 1, 3), (0, 2, 8), (1, 2, 5)]
    labels = duplicates.clusters(5, np.array([0, 3]), np.array([1, 4]))
    assert labels[0] == labels[1] and labels[3] == labels[4] and len(set(labels.tolist())) == 3
    assert duplicates.pair_kind("train", "train", "train", "val", False) == "train-val"
    assert duplicates.pair_kind("train", "train", "train", "val", True) == "label-conflict"
    assert duplicates.pair_kind("test", "train", None, "train", False) == "train-test"


def test_errors_are_one_line(planted, tmp_path):
    home, _ = planted
    proc = aivh("duplicates", "--dataset", "nope", "--json", env_home=home, check=False)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("aivh: error:") and "nope" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = aivh("embed", "--run", "999", env_home=home, check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("aivh: error:") and "999" in proc.stderr


def test_duplicates_and_image_rows_on_both_backends(store_url, tmp_path):
    """The store side (hashes written in one bulk UPDATE, read back; rows of any split with an
    optional run's predictions) on SQLite and PostgreSQL alike."""
    from db import queries
    from db.store import session_factory
    from engine.duplicates import find_duplicates
    from engine.ingest import import_dataset

    plants = plant_copies(tmp_path / "data", n=3)
    sessions = session_factory(store_url)
    import_dataset(sessions, tmp_path / "data", "p", progress=False)
    # a page rendering reads only: with no hash stored it finds the exact copies, writes nothing
    before = find_duplicates(sessions, "p", progress=False, hash_missing=False)
    assert before["hashed"] == 0 and all(p["match"] == "exact" for p in before["pairs"])
    with sessions() as s:
        assert queries.count_without_phash(s, queries.get_dataset(s, "p").id) == 409
    out = find_duplicates(sessions, "p", progress=False)
    assert {tuple(sorted(p[:2])) for p in plants} <= {tuple(sorted((p["a"], p["b"]))) for p in out["pairs"]}
    assert out["counts"]["label-conflict"] == 3 and out["hashed"] == 409
    with sessions() as s:
        ds = queries.get_dataset(s, "p").id
        assert queries.count_without_phash(s, ds) == 0 and len(queries.phashes(s, ds)) == 409
        rows = queries.image_rows(s, ds)
        some = queries.image_rows(s, ds, None, [rows[0][0], rows[-1][0]])
    assert len(rows) == 409 and {r[2] for r in rows} == {"train", "test"} and all(r[3] is None for r in rows)
    assert [r[0] for r in some] == [rows[0][0], rows[-1][0]]
    from tests.conftest import finished_run

    run_id = finished_run(sessions, name="q", source=tmp_path / "data")  # val and test predictions
    with sessions() as s:
        ds = queries.get_dataset(s, "q").id
        scored = queries.predictions(s, run_id)
        rows = queries.image_rows(s, ds, run_id)
    assert {r[0]: r[3] for r in rows if r[3] is not None} == pytest.approx(scored) and len(rows) == 409


def _flat_and_copies(root: Path) -> Path:
    """20 flat colours and 10 plain gradients (unrelated pictures whose perceptual hashes are all
    alike), 25 byte-identical copies of one noise image, labels alternating."""
    from tests.conftest import write_kaggle

    rng = np.random.default_rng(0)
    (root / "train_data").mkdir(parents=True)
    train = []
    for i in range(30):
        if i < 20:
            arr = np.full((48, 48, 3), rng.integers(0, 256, 3), dtype=np.uint8)
        else:
            ramp = np.linspace(0, 255, 48)[None, :, None] * rng.uniform(0.3, 1, 3)
            arr = np.broadcast_to(ramp, (48, 48, 3)).astype(np.uint8)
        Image.fromarray(arr).save(root / f"train_data/s{i:02d}.png")
        train.append((f"train_data/s{i:02d}.png", i % 2))
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(root / "train_data/c00.png")
    for i in range(1, 25):
        shutil.copy(root / "train_data/c00.png", root / f"train_data/c{i:02d}.png")
    train += [(f"train_data/c{i:02d}.png", 0) for i in range(25)]
    return write_kaggle(root, train, [])


def test_smooth_images_join_no_cluster_and_a_big_set_of_copies_stays_a_star(tmp_path, sessions):
    from engine.duplicates import find_duplicates, split_groups
    from engine.ingest import import_dataset

    import_dataset(sessions, _flat_and_copies(tmp_path / "d"), "d", progress=False)
    out = find_duplicates(sessions, "d", progress=False)
    assert not [p for p in out["pairs"] if p["a"].startswith("train_data/s") or p["b"].startswith("train_data/s")]
    assert len(out["pairs"]) == 24 and {p["match"] for p in out["pairs"]} == {"exact"}
    assert out["largest_cluster"] == 25 and out["clusters"] == 1
    from db import queries

    with sessions() as s:
        ds = queries.get_dataset(s, "d")
        ids = [i for i, _ in queries.image_paths(s, ds.id)]
        groups, how = split_groups(s, ds.id, tmp_path / "d", ids, group="near-duplicates", progress=False)
    assert how["largest_group"] == 25 and how["groups"] == 1 and len(set(groups.values())) == 31


def test_a_changed_file_is_hashed_again_and_an_unreadable_one_once(tmp_path, sessions, monkeypatch):
    import os

    from db import queries
    from engine import duplicates
    from engine.ingest import import_dataset

    root = _flat_and_copies(tmp_path / "d")
    import_dataset(sessions, root, "d", progress=False)
    (root / "train_data/s21.png").unlink()  # gone after import: cannot be hashed
    with sessions.begin() as s:
        ds = queries.get_dataset(s, "d")
        first = duplicates.ensure_phashes(s, ds.id, root, progress=False)
        by_path = dict(queries.image_paths(s, ds.id))
        assert queries.count_without_phash(s, ds.id) == 0  # the missing one is stored as failed
    path_id = {p: i for i, p in by_path.items()}
    assert path_id["train_data/s21.png"] not in first and len(first) == 54
    asked = []
    real = duplicates.hash_images
    monkeypatch.setattr(duplicates, "hash_images", lambda root, todo, **kw: asked.append(todo) or real(root, todo, **kw))
    with sessions.begin() as s:
        assert duplicates.ensure_phashes(s, ds.id, root, progress=False) == first and asked == []  # not retried
    # a file replaced by another picture: re-import notices, and its stored hash is dropped
    shutil.copy(root / "train_data/c00.png", root / "train_data/s22.png")
    os.utime(root / "train_data/s22.png", ns=(1, 10**18))
    import_dataset(sessions, root, "d", progress=False)
    with sessions.begin() as s:
        again = duplicates.ensure_phashes(s, ds.id, root, progress=False)
    assert [p for _, p in asked[0]] == ["train_data/s22.png"]
    assert again[path_id["train_data/s22.png"]] == first[path_id["train_data/c00.png"]] != first[path_id["train_data/s22.png"]]
