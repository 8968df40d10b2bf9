"""Embedding pairs on the run's own scale (issue 24, item 11): an undertrained model's embeddings,
nearly one vector for every image, made 3,210 "copies" in one cluster of 348 of 400 images at
--min-cosine 0.9. Synthetic embeddings of the bundled sample's 400 images, written directly."""
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from db import queries
from tests.conftest import ROOT, draw_jpeg, finished_run, write_kaggle

DIM = 256


@pytest.fixture()
def sample(sessions):
    run_id = finished_run(sessions)
    with sessions() as s:
        ids = [i for i, *_ in queries.image_facts(s, queries.get_dataset(s, "sample").id)]
    return run_id, ids


def collapsed(n: int, spread: float, rank: int, seed: int = 0) -> np.ndarray:
    """What an undertrained model gives: one positive vector for every image (pooled SiLU
    features), plus a little variation along a few directions."""
    rng = np.random.default_rng(seed)
    base = np.abs(rng.standard_normal(DIM)) + 1.0
    directions = rng.standard_normal((rank, DIM))
    return base + spread * rng.standard_normal((n, rank)) @ directions


def duplicates(sessions, run_id, **kw) -> dict:
    from engine.duplicates import find_duplicates

    return find_duplicates(sessions, "sample", run_id, progress=False, **kw)


@pytest.mark.parametrize("spread,rank", [(0.002, 64), (0.05, 16)])
def test_collapsed_embeddings_make_no_giant_cluster(sessions, sample, spread, rank):
    from engine import embeddings

    run_id, ids = sample
    v = collapsed(len(ids), spread, rank)
    embeddings.save(run_id, ids, v)
    unit = v / np.linalg.norm(v, axis=1, keepdims=True)
    assert (unit @ unit.T).min() > 0.9  # every pair "a copy" at --min-cosine 0.9
    out = duplicates(sessions, run_id)
    assert out["largest_cluster"] <= 0.05 * len(ids), out["largest_cluster"]
    assert out["matches"]["embedding"] <= 0.05 * len(ids)
    assert len(out["notes"]) == 1 and out["notes"][0].startswith(f"run {run_id}: ")
    if out["thresholds"]["embedding_max_distance"] is None:  # refused: said why
        assert "do not separate images" in out["notes"][0] and out["matches"]["embedding"] == 0
    else:  # pairs within --min-cosine left out on the run's scale: said how many
        left_out = out["thresholds"]["embedding_left_out"]
        assert left_out >= len(ids) and f"{left_out:,} pairs within --min-cosine" in out["notes"][0]


def test_planted_copies_among_spread_embeddings_are_still_found(sessions, sample):
    from engine import embeddings

    run_id, ids = sample
    rng = np.random.default_rng(1)
    v = rng.standard_normal((len(ids), DIM))
    twins = rng.choice(len(ids), 40, replace=False)
    for a, b in zip(twins[:20], twins[20:]):
        v[b] = v[a] + 0.05 * rng.standard_normal(DIM)  # cosine about 0.9987
    embeddings.save(run_id, ids, v)
    out = duplicates(sessions, run_id)
    found = {tuple(sorted((p["a_id"], p["b_id"]))) for p in out["pairs"] if p["match"] == "embedding"}
    planted = {tuple(sorted((ids[a], ids[b]))) for a, b in zip(twins[:20], twins[20:])}
    assert found == planted
    assert out["notes"] == [] and out["warnings"] == [] and out["largest_cluster"] == 2
    assert out["thresholds"]["embedding_max_distance"] == pytest.approx(0.1)  # --min-cosine's
    assert out["thresholds"]["embedding_left_out"] == 0


def test_a_cluster_swallowing_most_images_is_warned_on_the_cli_json_and_page(sessions, tmp_path):
    from engine.duplicates import find_duplicates
    from engine.ingest import import_dataset

    root = tmp_path / "same"
    train = [(f"train_data/{i:04d}.jpg", i % 2) for i in range(30)]
    for i, (name, _) in enumerate(train):
        draw_jpeg(root / name, 0 if i < 20 else i)  # 20 of the 30 are one picture
    write_kaggle(root, train, [])
    import_dataset(sessions, root, "same", progress=False)
    out = find_duplicates(sessions, "same", progress=False)
    assert out["largest_cluster"] == 20 and len(out["warnings"]) == 1
    assert out["warnings"][0].startswith("one cluster holds 20 of 30 images (67%)")

    from engine.duplicates import giant_cluster_warning
    pairs = [{"cluster": 1, "match": "embedding"}] * 5 + [{"cluster": 1, "match": "phash"}]
    said = giant_cluster_warning(pairs, 348, 400)
    assert said.startswith("one cluster holds 348 of 400 images (87%), joined by 1 phash, 5 embedding pairs")
    assert "--min-cosine" in said

    at = AppTest.from_file(str(ROOT / "dashboard" / "views" / "duplicates.py"), default_timeout=60)
    at.query_params["reviewer"] = "ana"
    at.run()  # the hashes are stored: the page only reads
    assert not at.exception
    assert any(w.value.startswith("One cluster holds 20 of 30 images") for w in at.warning)


def test_the_page_says_when_the_embeddings_do_not_separate_images(sessions, sample):
    from engine import embeddings
    from engine.duplicates import ensure_phashes

    run_id, ids = sample
    embeddings.save(run_id, ids, collapsed(len(ids), 0.0, 1))  # every image the same vector
    with sessions.begin() as s:
        ds = queries.get_dataset(s, "sample")
        ensure_phashes(s, ds.id, Path(ds.root), progress=False)
    at = AppTest.from_file(str(ROOT / "dashboard" / "views" / "duplicates.py"), default_timeout=60)
    at.query_params["run"] = str(run_id)
    at.run()
    assert not at.exception
    assert any("do not separate images" in i.value for i in at.info)
    assert any("no pairs by embedding" in c.value for c in at.caption)
    assert not any(m.label == "train-val" and m.value != "0" for m in at.metric)
