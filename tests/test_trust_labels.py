"""Labels, content and files that must not disagree with the store: duplicate copies, undo,
files replaced after import, JPEG trailers, reject reasons in words (issue 13: 8-11, 14)."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from db import evaluation, labelling, queries
from engine.ingest import import_dataset
from tests.conftest import aivh, draw_jpeg, predict_every_image, write_kaggle


def _jpeg_bytes(seed: int, size=(48, 40)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG")
    return buf.getvalue()


# ---------------------------------------------------------------- 8: byte-identical copies


@pytest.fixture()
def dup_dataset(tmp_path) -> Path:
    """24 training images (12 per class) of which 3 groups are byte-identical copies under other
    names: one group with one label, one spanning both labels, one shared with a test image."""
    root = tmp_path / "dups"
    train = []
    for i in range(24):
        name = f"train_data/img{i:02d}.jpg"
        draw_jpeg(root / name, i)
        train.append((name, i % 2))
    copies = [("train_data/img00.jpg", "train_data/copy_a.jpg", 0),   # same label as the original
              ("train_data/img03.jpg", "train_data/copy_b.jpg", 0),   # img03 is labelled 1: a conflict
              ("train_data/img05.jpg", "train_data/copy_c.jpg", 1)]
    for src, dst, label in copies:
        shutil.copyfile(root / src, root / dst)
        train.append((dst, label))
    draw_jpeg(root / "test_data_v2/t0.jpg", 100)
    shutil.copyfile(root / "train_data/img07.jpg", root / "test_data_v2/t1.jpg")
    return write_kaggle(root, train, ["test_data_v2/t0.jpg", "test_data_v2/t1.jpg"])


def test_import_reports_duplicate_groups_and_copies_with_different_labels(sessions, dup_dataset):
    result = import_dataset(sessions, dup_dataset, "dups", progress=False)
    assert result.duplicate_groups == 4  # three in train, one train image copied into test
    conflicts = result.label_conflicts
    assert len(conflicts) == 1
    assert sorted((c["file_name"], c["label"]) for c in conflicts[0]["files"]) == [
        ("train_data/copy_b.jpg", 0), ("train_data/img03.jpg", 1)]
    out = result.to_json()
    assert out["duplicate_groups"] == 4 and out["label_conflicts"] == conflicts
    json.dumps(out)  # plain JSON


def test_audit_folds_keep_byte_identical_copies_in_one_fold(sessions, dup_dataset):
    from engine import audit as au
    from engine.config import TrainConfig

    import_dataset(sessions, dup_dataset, "dups", progress=False)
    for folds in (2, 3, 5):
        with sessions.begin() as s:
            ds = queries.get_dataset(s, "dups")
            audit = au.create_audit(s, ds, TrainConfig(epochs=1, img_size=32), folds)
            held = {}
            for run in evaluation.audit_runs(s, audit.id):
                for i in queries.run_image_ids(s, run.id, "val"):
                    held[i] = run.fold
            sha = {im.id: im.sha1 for im in queries.images(s, ds.id, "train")}
            paths = {im.id: im.rel_path for im in queries.images(s, ds.id, "train")}
            assert set(held) == set(sha)  # every labelled training image held out exactly once
            by_content: dict[str, set[int]] = {}
            for i, f in held.items():
                by_content.setdefault(sha[i], set()).add(f)
            split = {paths[i]: f for i, f in held.items() if len(by_content[sha[i]]) > 1}
            assert not split, f"{folds} folds: copies of one file in different folds: {split}"
            labels = labelling.import_labels(s, ds.id)
            for cls in (0, 1):  # each class still balanced, within the largest group (2 copies)
                sizes = np.bincount([f for i, f in held.items() if labels[i] == cls], minlength=folds)
                assert sizes.max() - sizes.min() <= 2, (folds, cls, sizes)


def test_assign_folds_without_copies_is_unchanged():
    """Grouping by content deals single images exactly as before (folds of audits already made)."""
    from engine import audit as au

    keys = {i: f"train_data/{i:04d}.jpg" for i in range(60)}
    strata = {i: i % 3 == 0 for i in keys}
    strata = {i: int(v) for i, v in strata.items()}
    import hashlib
    expected = {}
    for cls in (0, 1):
        members = sorted((i for i in keys if strata[i] == cls),
                         key=lambda i: hashlib.sha1(f"audit:0:{keys[i]}".encode()).hexdigest())
        expected.update({i: n % 5 for n, i in enumerate(members)})
    assert au.assign_folds(keys, strata, 5, seed=0) == expected
    groups = {i: f"sha{i}" for i in keys}
    assert au.assign_folds(keys, strata, 5, seed=0, groups=groups) == expected


# ---------------------------------------------------------------- 9: undo


@pytest.fixture()
def labelled(sessions, tiny_dataset):
    import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    with sessions() as s:
        ds = queries.get_dataset(s, "tiny")
        train = queries.images(s, ds.id, "train")[0]
        test = queries.images(s, ds.id, "test")[0]
        return ds.id, train.id, labelling.current_labels(s, ds.id)[train.id], test.id


def _label(sessions, ds_id, image_id):
    with sessions() as s:
        return labelling.current_labels(s, ds_id).get(image_id)


def test_a_second_undo_goes_further_back_never_forward(sessions, labelled):
    ds_id, image_id, first, _ = labelled
    with sessions.begin() as s:
        labelling.relabel(s, image_id, 1 - first, author="ana")
    with sessions.begin() as s:
        labelling.relabel(s, image_id, first, author="ana", note="no, it was right")
    with sessions.begin() as s:
        labelling.undo_last_review(s, image_id, author="ana")
    assert _label(sessions, ds_id, image_id) == 1 - first
    with sessions.begin() as s:
        labelling.undo_last_review(s, image_id, author="ana")
    assert _label(sessions, ds_id, image_id) == first  # back to the import label, not a toggle
    with pytest.raises(labelling.UndoRefused) as err, sessions.begin() as s:
        labelling.undo_last_review(s, image_id, author="ana")
    assert "nothing to undo" in str(err.value) and "\n" not in str(err.value)
    assert _label(sessions, ds_id, image_id) == first
    with sessions() as s:
        history = labelling.label_history(s, image_id)
        assert [h.source for h in history] == ["import", "review", "review", "undo", "undo"]
        rows = [r for r in labelling.label_history_rows(s, ds_id) if r[0] in {h.id for h in history}]
        assert [r.source for r in rows] == [h.source for h in history]  # the history stays whole


def test_undo_refuses_when_someone_else_relabelled_since_naming_who_and_when(sessions, labelled):
    ds_id, image_id, first, _ = labelled
    with sessions.begin() as s:
        labelling.relabel(s, image_id, 1 - first, author="ana")
    with sessions.begin() as s:
        bens = labelling.relabel(s, image_id, first, author="ben")
        when = bens.created_at
    with pytest.raises(labelling.UndoRefused) as err, sessions.begin() as s:
        labelling.undo_last_review(s, image_id, author="ana")
    msg = str(err.value)
    assert "ben" in msg and when.strftime("%Y-%m-%d %H:%M") in msg and "\n" not in msg
    assert _label(sessions, ds_id, image_id) == first  # ben's relabel stands
    with pytest.raises(labelling.UndoRefused, match="nothing to undo"), sessions.begin() as s:
        labelling.undo_last_review(s, image_id, author="cleo")  # cleo never reviewed it
    with sessions.begin() as s:  # ben takes his back: now ana's undo may go ahead
        labelling.undo_last_review(s, image_id, author="ben")
    assert _label(sessions, ds_id, image_id) == 1 - first
    with sessions.begin() as s:
        labelling.undo_last_review(s, image_id, author="ana")
    assert _label(sessions, ds_id, image_id) == first


def test_undo_of_a_test_images_first_review_leaves_it_unlabelled(sessions, labelled):
    ds_id, _, _, test_id = labelled
    with sessions.begin() as s:
        labelling.relabel(s, test_id, 1, author="ana")
    assert _label(sessions, ds_id, test_id) == 1
    with sessions.begin() as s:
        labelling.undo_last_review(s, test_id, author="ana")
    assert _label(sessions, ds_id, test_id) is None
    with sessions() as s:
        assert test_id not in labelling.current_labels(s, ds_id)
        assert [h.source for h in labelling.label_history(s, test_id)] == ["review", "unlabel"]
    with sessions.begin() as s:  # and it can be labelled again
        labelling.relabel(s, test_id, 0, author="ben")
    assert _label(sessions, ds_id, test_id) == 0


def test_an_undone_review_no_longer_counts_as_a_review(sessions):
    from tests.conftest import finished_run

    run_id = finished_run(sessions)
    with sessions() as s:
        run = queries.get_run(s, run_id)
        image_id, _, _, label, _ = queries.prediction_rows(s, run, "val")[0]
    with sessions.begin() as s:
        labelling.relabel(s, image_id, 1 - label, author="ana")
    with sessions() as s:
        row = {r[0]: r for r in queries.prediction_rows(s, queries.get_run(s, run_id), "val")}[image_id]
        assert (row[3], row[4]) == (1 - label, 1)
    with sessions.begin() as s:
        labelling.undo_last_review(s, image_id, author="ana")
    with sessions() as s:
        row = {r[0]: r for r in queries.prediction_rows(s, queries.get_run(s, run_id), "val")}[image_id]
        assert (row[3], row[4]) == (label, 0)


# ---------------------------------------------------------------- 10: a file replaced after import


def _same_size_jpeg(old: bytes) -> bytes:
    """A different, valid JPEG padded with a comment to exactly len(old) bytes."""
    arr = np.random.default_rng(7).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    base = io.BytesIO()
    Image.fromarray(arr).save(base, "JPEG")
    pad = len(old) - len(base.getvalue()) - 4
    assert pad > 0
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", comment=b"x" * pad)
    assert len(buf.getvalue()) == len(old) and buf.getvalue() != old
    return buf.getvalue()


def _stamps(sessions, name):
    with sessions() as s:
        ds = queries.get_dataset(s, name)
        return Path(ds.root), queries.image_stamps(s, ds.id)


def test_import_records_each_files_mtime(sessions, tiny_dataset):
    import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    with sessions() as s:
        for im in queries.images(s, queries.get_dataset(s, "tiny").id):
            st = (tiny_dataset / im.rel_path).stat()
            assert (im.bytes, im.mtime_ns) == (st.st_size, st.st_mtime_ns)


@pytest.mark.parametrize("same_size", [False, True])
def test_a_file_replaced_after_import_is_skipped_then_reprobed_by_import(sessions, tiny_dataset, same_size):
    from engine.errors import UnreadableImage
    from engine.images import check_unchanged, load_rgb
    from engine.loader import ImageDataset

    import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    root, stamps = _stamps(sessions, "tiny")
    name = "train_data/" + f"{2:032x}.jpg"
    path = tiny_dataset / name
    before = path.stat()
    if same_size:  # another valid image of exactly the same byte count: only the mtime tells
        new = _same_size_jpeg(path.read_bytes())
    else:
        new = _jpeg_bytes(7, (64, 64))
    path.write_bytes(new)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 5_000_000_000))
    assert path.stat().st_size == before.st_size or not same_size

    paths = sorted(stamps)
    ds = ImageDataset(root, paths, None, size=32, train=False, stamps=stamps)
    out = {paths[i]: ds[i] for i in range(len(paths))}
    x, _, msg = out[name]
    assert x is None and name in msg and "changed since import" in msg and "aivh import" in msg
    assert all(v[0] is not None for k, v in out.items() if k != name)
    with pytest.raises(UnreadableImage, match="changed since import"):
        check_unchanged(path, *stamps[name])
    load_rgb(path, 32)  # the file itself decodes: it is the change that is refused

    from sqlalchemy import select

    from db.models import Prediction

    run_id, ds_id, ids = predict_every_image(sessions, "tiny")  # made from the old content
    again = import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    assert again.changed == [name] and again.added == 0
    assert again.predictions_dropped == 1 and again.to_json()["predictions_dropped"] == 1
    with sessions() as s:  # the changed file's prediction is gone (another picture's), the rest kept
        kept = set(s.scalars(select(Prediction.image_id).where(Prediction.run_id == run_id)))
        assert kept == set(ids) - {queries.image_by_path(s, ds_id, name).id}
    with sessions() as s:
        im = queries.image_by_path(s, queries.get_dataset(s, "tiny").id, name)
        st = path.stat()
        assert (im.bytes, im.mtime_ns, im.status) == (st.st_size, st.st_mtime_ns, "ok")
        import hashlib
        assert im.sha1 == hashlib.sha1(path.read_bytes()).hexdigest()
        if not same_size:
            assert (im.width, im.height) == (64, 64)
    root, stamps = _stamps(sessions, "tiny")
    ds = ImageDataset(root, [name], None, size=32, train=False, stamps=stamps)
    assert ds[0][0] is not None
    assert import_dataset(sessions, tiny_dataset, "tiny", progress=False).changed == []


def test_a_file_replaced_by_junk_becomes_unreadable_at_reimport(sessions, tiny_dataset):
    import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    name = "test_data_v2/" + f"{101:032x}.jpg"
    (tiny_dataset / name).write_bytes(b"<html>moved</html>")
    again = import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    assert again.changed == [name] and again.test == 2
    assert [(r.file_name, r.reason) for r in again.rejects] == [(name, again.rejects[0].reason)]
    assert "not an image" in again.rejects[0].reason


def test_thumbnail_and_loader_checks_take_the_stored_stamp(sessions, tiny_dataset):
    """The stamp a caller passes (as the store has it) is what decides: none passed, no check."""
    from engine.images import check_unchanged
    from engine.loader import ImageDataset

    import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    root, stamps = _stamps(sessions, "tiny")
    name = next(iter(stamps))
    check_unchanged(tiny_dataset / name, *stamps[name])  # unchanged: no error
    check_unchanged(tiny_dataset / name, None, None)  # a store from before mtimes were recorded
    ds = ImageDataset(root, [name], None, size=32, train=False)
    assert ds[0][0] is not None


# ---------------------------------------------------------------- 11: bytes after the JPEG's end


def test_jpegs_with_a_trailer_are_imported_and_decode(sessions, tmp_path):
    from engine.images import jpeg_for_device, probe_image
    from engine.loader import ImageDataset

    root = tmp_path / "trailers"
    train = []
    for i in range(6):
        data = _jpeg_bytes(i, (96, 64))
        if i % 2 == 0:
            data += os.urandom(4096)  # a phone's trailer after the end-of-image marker
        name = f"train_data/p{i}.jpg"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        train.append((name, i % 2))
    good = _jpeg_bytes(50, (96, 64))
    (root / "test_data_v2").mkdir(parents=True)
    (root / "test_data_v2/t0.jpg").write_bytes(good + b"\0" * 4096 + b"EXTRA" * 100)
    (root / "test_data_v2/t1.jpg").write_bytes(good[: len(good) - 300])  # really truncated
    (root / "test_data_v2/t2.jpg").write_bytes(good[:-2])  # ends one marker short
    write_kaggle(root, train, ["test_data_v2/t0.jpg", "test_data_v2/t1.jpg", "test_data_v2/t2.jpg"])
    result = import_dataset(sessions, root, "trailers", progress=False)
    assert (result.train, result.test) == (6, 1), [str(r) for r in result.rejects]
    assert sorted(r.file_name for r in result.rejects) == ["test_data_v2/t1.jpg", "test_data_v2/t2.jpg"]
    assert all("truncated JPEG" in r.reason for r in result.rejects)
    assert isinstance(probe_image(root, "test_data_v2/t0.jpg"), object)
    names = [n for n, _ in train] + ["test_data_v2/t0.jpg"]
    ds = ImageDataset(root, names, None, size=32, train=False)
    assert all(ds[i][0] is not None for i in range(len(names)))
    # the device route stays safe: a file not ending in its marker goes to Pillow, which decodes it
    assert jpeg_for_device(root / "test_data_v2/t1.jpg") is None
    assert jpeg_for_device(root / "train_data/p1.jpg") is not None


def test_a_truncated_png_is_still_refused_and_one_with_a_trailer_accepted(tmp_path):
    from engine.images import ImageInfo, probe_image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(buf, "PNG")
    png = buf.getvalue()
    for name, data in (("half.png", png[: len(png) // 2]), ("no_iend.png", png[:-12])):
        (tmp_path / name).write_bytes(data)
        assert probe_image(tmp_path, name).startswith("truncated PNG"), name
    (tmp_path / "trailer.png").write_bytes(png + os.urandom(2048))
    assert isinstance(probe_image(tmp_path, "trailer.png"), ImageInfo)


# ---------------------------------------------------------------- 14: reasons in words


def test_reject_reasons_are_words_not_python_reprs(sessions, tmp_path):
    from tests.test_bad_images import bad_kinds

    root = tmp_path / "words"
    train = []
    for n, (kind, (data, why)) in enumerate(bad_kinds().items()):
        name = f"train_data/{kind}.jpg"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        train.append((name, n % 2))
    write_kaggle(root, train, [])
    result = import_dataset(sessions, root, "words", progress=False)
    assert result.rejects
    for r in result.rejects:
        assert not re.search(r"0x[0-9a-fA-F]{6}|<|object at", r.reason), r.reason
        assert "Error" not in r.reason, r.reason  # no exception class names
    html = {r.file_name: r.reason for r in result.rejects}["train_data/html.jpg"]
    assert html.startswith("not an image")


def test_an_import_whose_every_row_fails_alike_says_so_in_one_line(workspace, tmp_path):
    """Image folders symlinked from elsewhere: every row fails the same way, said once, with what to do."""
    elsewhere = tmp_path / "elsewhere"
    root = tmp_path / "linked"
    train = [(f"train_data/{i}.jpg", i % 2) for i in range(5)]
    for i, (name, _) in enumerate(train):
        draw_jpeg(elsewhere / name, i)
    draw_jpeg(elsewhere / "test_data_v2/t.jpg", 9)
    root.mkdir()
    (root / "train_data").symlink_to(elsewhere / "train_data")
    (root / "test_data_v2").symlink_to(elsewhere / "test_data_v2")
    write_kaggle(root, train, ["test_data_v2/t.jpg"])
    from db import store
    from engine.ingest import NothingImported

    with pytest.raises(NothingImported) as refused:  # an error: nothing written
        import_dataset(store.session_factory(), root, "linked", progress=False)
    assert str(refused.value) == refused.value.result.summary
    result = refused.value.result
    assert len(result.rejects) == 6 and result.train == result.test == 0
    assert result.summary and "\n" not in result.summary
    assert "all 6" in result.summary and "symlink" in result.summary and "DATA_DIR" in result.summary
    assert "copy" in result.summary  # what to do
    assert "summary" not in result.to_json()  # said as the error, never in a successful import's JSON
    assert all("symlink" in r.reason for r in result.rejects)


def test_an_import_with_mixed_fates_has_no_summary(sessions, tiny_dataset):
    (tiny_dataset / "train_data" / f"{3:032x}.jpg").unlink()
    result = import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    assert result.summary is None


def test_cli_prints_the_summary_and_the_duplicates(workspace, dup_dataset):
    proc = aivh("import", str(dup_dataset), "--json", env_home=workspace)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["duplicate_groups"] == 4 and len(out["label_conflicts"]) == 1


def test_the_jpeg_walk_finds_the_end_marker_as_a_decoder_does():
    """The cheap check that spares whole JPEGs a decode: progressive, restart markers, trailers."""
    from engine.images import _jpeg_reaches_eoi

    arr = np.random.default_rng(4).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    for save in ({}, {"progressive": True}, {"restart_marker_blocks": 1}):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", **save)
        data = buf.getvalue()
        assert _jpeg_reaches_eoi(data) and _jpeg_reaches_eoi(data + os.urandom(3000)), save
        for cut in (2, 50, len(data) // 2):
            assert not _jpeg_reaches_eoi(data[:-cut]), (save, cut)


def test_undo_refusal_names_the_time_in_utc_on_each_backend(store_url):
    """PostgreSQL hands timestamps back in the session's time zone: the message says UTC and means it."""
    from datetime import UTC

    from sqlalchemy import event

    from db import store

    engine = store.get_engine(store_url)
    if engine.dialect.name == "postgresql":
        @event.listens_for(engine, "connect")
        def _zone(dbapi_conn, _):  # a server or user whose zone is not UTC
            with dbapi_conn.cursor() as c:
                c.execute("SET TIME ZONE 'America/Sao_Paulo'")
        engine.dispose()
    sessions = store.session_factory(store_url)
    from tests.conftest import finished_run

    run_id = finished_run(sessions)
    with sessions.begin() as s:
        image_id = queries.run_image_ids(s, run_id, "val")[0]
        labelling.relabel(s, image_id, 1, author="ana")
    with sessions.begin() as s:
        labelling.relabel(s, image_id, 0, author="ben")
    with sessions() as s:
        when = labelling.label_history(s, image_id)[-1].created_at
    when = when.astimezone(UTC) if when.tzinfo else when
    with pytest.raises(labelling.UndoRefused) as err, sessions.begin() as s:
        labelling.undo_last_review(s, image_id, author="ana")
    assert f"ben relabelled it human-made at {when:%Y-%m-%d %H:%M:%S} UTC" in str(err.value), str(err.value)


def test_the_device_route_gets_only_the_image_never_what_follows_it(tmp_path):
    """A phone's trailer can be a second JPEG (MPF depth map, preview), ending in its own marker:
    the device decoder must get the first image's bytes alone, or the file goes to Pillow."""
    import warnings

    import torch

    from engine.images import jpeg_for_device, load_rgb

    def decode_jpeg(data):
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its image IO for TorchCodec
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import decode_jpeg as decode

            return decode(data)

    main, second = _jpeg_bytes(1, (96, 64)), _jpeg_bytes(2, (32, 32))
    cases = {"plain": main, "mpf": main + b"\0" * 64 + second, "noise": main + os.urandom(3000),
             "short": main + b"\x00\xff\xd9"}
    for name, data in cases.items():
        (tmp_path / f"{name}.jpg").write_bytes(data)
        found = jpeg_for_device(tmp_path / f"{name}.jpg")
        assert found is not None, name
        got, w, h = found
        assert got == main and (w, h) == (96, 64), name  # exactly the first image's bytes
        pixels = decode_jpeg(torch.frombuffer(bytearray(got), dtype=torch.uint8))
        assert tuple(pixels.shape) == (3, 64, 96)
        assert np.asarray(load_rgb(tmp_path / f"{name}.jpg", 96, draft=False)).shape == (64, 96, 3)
    (tmp_path / "cut.jpg").write_bytes(main[: len(main) - 300] + b"\0" * 64 + second[:100])
    assert jpeg_for_device(tmp_path / "cut.jpg") is None  # no end marker reached: Pillow reports it
