"""Import again after train.csv changed: edited labels and groups are reported, recorded only when
asked; the split uses the groups recorded at import, never the live CSV; a failing command leaves
a new workspace empty."""
import csv
import json

import pytest
from sqlalchemy import func, select, text, update

from db import labelling, queries, store
from db.models import Image, Label
from engine import duplicates, splits
from engine.ingest import import_dataset
from tests.conftest import draw_jpeg, predict_every_image, write_kaggle


def _rewrite_train(root, edit) -> None:
    """train.csv with edit(rows) applied to its data rows (lists of strings), header kept."""
    with open(root / "train.csv", newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    body = edit(header, body) or body
    with open(root / "train.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *body])


def _flip(names):
    def edit(header, body):
        col, lab = header.index("file_name"), header.index("label")
        for r in body:
            if r[col] in names:
                r[lab] = str(1 - int(r[lab]))
    return edit


def _history(sessions):
    with sessions() as s:
        rows = s.execute(select(Label.image_id, Label.label, Label.source).order_by(Label.id))
        return [tuple(r) for r in rows]


def _labels(sessions, name):
    with sessions() as s:
        ds = queries.get_dataset(s, name)
        paths = dict(queries.image_paths(s, ds.id))
        return {paths[i]: v for i, v in labelling.current_labels(s, ds.id).items()}


# --- item: edited labels ------------------------------------------------------------------

def test_an_edited_label_is_reported_and_recorded_only_when_asked(sessions, tiny_dataset):
    import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    before, history = _labels(sessions, "tiny"), _history(sessions)
    flipped = [f"train_data/{1:032x}.jpg", f"train_data/{4:032x}.jpg"]
    _rewrite_train(tiny_dataset, _flip(flipped))

    again = import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    assert again.added == 0
    assert [(c["file_name"], c["imported_label"], c["csv_label"]) for c in again.label_changes] == \
        [(n, before[n], 1 - before[n]) for n in flipped]
    assert not again.label_changes_applied and "--apply-label-changes" in again.label_changes_line()
    assert _history(sessions) == history and _labels(sessions, "tiny") == before  # reported only
    out = again.to_json()
    assert out["label_changes"] == 2 and [c["file_name"] for c in out["label_change_examples"]] == flipped

    applied = import_dataset(sessions, tiny_dataset, "tiny", progress=False, apply_label_changes=True)
    assert applied.label_changes_applied and len(applied.label_changes) == 2
    now = _labels(sessions, "tiny")
    assert now == {**before, **{n: 1 - before[n] for n in flipped}}
    new_rows = _history(sessions)[len(history):]
    assert [(lb, src) for _, lb, src in new_rows] == [(1 - before[n], "import") for n in flipped]
    with sessions() as s:  # the split's strata stay the first import's labels: nothing moves
        ds = queries.get_dataset(s, "tiny")
        paths = dict(queries.image_paths(s, ds.id))
        assert {paths[i]: v for i, v in labelling.import_labels(s, ds.id).items()} == before
        assert {r.author for r in s.scalars(select(Label).where(Label.id > len(history)))} == {"import"}

    quiet = import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    assert quiet.label_changes == [] and quiet.label_changes_line() is None


def test_a_reviewed_label_is_no_train_csv_edit_and_an_import_change_blocks_its_undo(sessions, tiny_dataset):
    import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    name = f"train_data/{2:032x}.jpg"
    with sessions.begin() as s:
        ds = queries.get_dataset(s, "tiny")
        image_id = queries.image_by_path(s, ds.id, name).id
        labelling.relabel(s, image_id, 1, author="ann")
    assert import_dataset(sessions, tiny_dataset, "tiny", progress=False).label_changes == []
    _rewrite_train(tiny_dataset, _flip([name]))  # train.csv now agrees with ann: still an edit of the CSV
    applied = import_dataset(sessions, tiny_dataset, "tiny", progress=False, apply_label_changes=True)
    assert [(c["imported_label"], c["csv_label"], c["current_label"])
            for c in applied.label_changes] == [(0, 1, 1)]
    with sessions.begin() as s, pytest.raises(labelling.UndoRefused, match="import relabelled it"):
        labelling.undo_last_review(s, image_id, author="ann")


def _relabel(sessions, name, label, author="ann"):
    with sessions.begin() as s:
        ds = queries.get_dataset(s, "tiny")
        return labelling.relabel(s, queries.image_by_path(s, ds.id, name).id, label, author=author).id


def test_a_replaced_file_whose_label_differs_is_reported_until_applied(sessions, tiny_dataset):
    import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    edited, reviewed = f"train_data/{3:032x}.jpg", f"train_data/{5:032x}.jpg"
    _relabel(sessions, reviewed, 0)  # a reviewer's label of the old picture of `reviewed`
    draw_jpeg(tiny_dataset / edited, 1003)  # other pictures under the same names
    draw_jpeg(tiny_dataset / reviewed, 1005)
    _rewrite_train(tiny_dataset, _flip([edited]))  # the new picture of `edited` has the other label

    again = import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    assert sorted(again.changed) == [edited, reviewed]
    got = {c["file_name"]: c for c in again.label_changes}
    assert set(got) == {edited, reviewed}
    assert (got[edited]["imported_label"], got[edited]["csv_label"]) == (1, 0)
    # train.csv unchanged, the reviewer's label is of the old picture
    assert (got[reviewed]["csv_label"], got[reviewed]["current_label"], got[reviewed]["content_changed"]) == \
        (1, 0, True)
    assert "given to the old picture" in again.label_changes_line()
    assert "until then, or until someone labels the image again" in again.label_changes_line()
    # the new content is recorded now, and the report stays until it is acted on
    later = import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    assert later.changed == [] and later.label_changes == again.label_changes
    history = _history(sessions)
    applied = import_dataset(sessions, tiny_dataset, "tiny", progress=False, apply_label_changes=True)
    assert sorted(c["file_name"] for c in applied.label_changes) == [edited, reviewed]
    assert _labels(sessions, "tiny")[edited] == 0 and _labels(sessions, "tiny")[reviewed] == 1
    with sessions() as s:
        notes = [n for (n,) in s.execute(select(Label.note).where(Label.id > len(history)).order_by(Label.id))]
    assert notes == ["train.csv edited: 1 -> 0; file replaced (label 1 was given to the old picture)",
                     "file replaced: label 0 was given to the old picture"]
    assert import_dataset(sessions, tiny_dataset, "tiny", progress=False).label_changes == []


def test_a_label_given_after_the_replacement_ends_the_report(sessions, tiny_dataset):
    import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    name = f"train_data/{5:032x}.jpg"
    _relabel(sessions, name, 0)
    draw_jpeg(tiny_dataset / name, 1005)
    assert [c["file_name"] for c in import_dataset(sessions, tiny_dataset, "tiny", progress=False).label_changes] \
        == [name]
    _relabel(sessions, name, 0, author="bob")  # bob looked at the new picture: 0 it is
    quiet = import_dataset(sessions, tiny_dataset, "tiny", progress=False, apply_label_changes=True)
    assert quiet.label_changes == [] and _labels(sessions, "tiny")[name] == 0


# --- item: only other bytes are a replaced file ---------------------------------------------

def _predict_all(sessions):
    return len(predict_every_image(sessions, "tiny")[2])


def _predictions(sessions) -> int:
    from db.models import Prediction

    with sessions() as s:
        return s.scalar(select(func.count()).select_from(Prediction))


def test_a_touched_file_is_not_replaced_and_keeps_its_labels_and_predictions(sessions, tiny_dataset):
    import os

    import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    name = f"train_data/{5:032x}.jpg"  # train.csv says 1
    _relabel(sessions, name, 0)
    n = _predict_all(sessions)
    path = tiny_dataset / name
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touched: same bytes
    again = import_dataset(sessions, tiny_dataset, "tiny", progress=False, apply_label_changes=True)
    assert (again.changed, again.label_changes, again.predictions_dropped) == ([], [], 0)
    assert _labels(sessions, "tiny")[name] == 0 and _predictions(sessions) == n
    with sessions() as s:  # re-stamped: the loaders take it again, the next import does not probe it
        im = queries.image_by_path(s, queries.get_dataset(s, "tiny").id, name)
        assert (im.mtime_ns, im.status, im.replaced_at_label) == (path.stat().st_mtime_ns, "ok", None)


def test_a_file_missing_for_a_while_is_a_reject_not_a_replacement(sessions, tiny_dataset):
    import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    name, other = f"train_data/{5:032x}.jpg", f"train_data/{6:032x}.jpg"
    _relabel(sessions, name, 0)
    _relabel(sessions, other, 1)
    n = _predict_all(sessions)
    path = tiny_dataset / name
    path.rename(path.with_suffix(".bak"))
    (tiny_dataset / other).rename((tiny_dataset / other).with_suffix(".bak"))
    gone = import_dataset(sessions, tiny_dataset, "tiny", progress=False, apply_label_changes=True)
    assert [(r.file_name, r.reason) for r in gone.rejects] == [(name, "missing file"), (other, "missing file")]
    assert (gone.changed, gone.label_changes, gone.predictions_dropped, gone.train) == ([], [], 0, 6)
    assert _predictions(sessions) == n
    path.with_suffix(".bak").rename(path)  # back as it was
    draw_jpeg(tiny_dataset / other, 1006)  # back with another picture: that one is replaced
    (tiny_dataset / other).with_suffix(".bak").unlink()
    back = import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    assert (back.changed, back.added, back.rejects, back.train, back.predictions_dropped) == ([other], 2, [], 8, 1)
    assert [(c["file_name"], c["content_changed"]) for c in back.label_changes] == [(other, True)]
    assert _labels(sessions, "tiny")[name] == 0 and _predictions(sessions) == n - 1


def test_a_replaced_file_with_a_stale_label_is_recorded_when_applied_at_once(sessions, tiny_dataset):
    import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    name = f"train_data/{5:032x}.jpg"
    with sessions.begin() as s:
        ds = queries.get_dataset(s, "tiny")
        labelling.relabel(s, queries.image_by_path(s, ds.id, name).id, 0, author="ann")
    draw_jpeg(tiny_dataset / name, 1005)
    applied = import_dataset(sessions, tiny_dataset, "tiny", progress=False, apply_label_changes=True)
    assert [(c["file_name"], c["content_changed"]) for c in applied.label_changes] == [(name, True)]
    assert _labels(sessions, "tiny")[name] == 1  # train.csv's label for the new picture
    assert _history(sessions)[-1][1:] == (1, "import")


def test_cli_prints_the_label_changes_line_and_json_keys(workspace, tiny_dataset, capsys):
    from engine import cli

    assert cli.main(["import", str(tiny_dataset), "--name", "tiny"]) == 0
    name = f"train_data/{6:032x}.jpg"
    _rewrite_train(tiny_dataset, _flip([name]))
    capsys.readouterr()
    assert cli.main(["import", str(tiny_dataset), "--name", "tiny", "--json"]) == 0
    out = capsys.readouterr()
    payload = json.loads(out.out.strip().splitlines()[-1])
    assert payload["label_changes"] == 1 and payload["label_change_examples"][0]["file_name"] == name
    assert payload["label_changes_applied"] is False
    assert f"1 label(s) in train.csv differ from the store's, e.g. {name}: 0 -> 1" in out.err
    assert cli.main(["import", str(tiny_dataset), "--name", "tiny", "--apply-label-changes", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["label_changes_applied"] is True


# --- item: groups recorded at import ------------------------------------------------------

def _twins(root, n=40):
    """n images; 2k (label 0) and 2k+1 (label 1) share group twin{k} in train.csv."""
    names = [f"train_data/{i:03d}.jpg" for i in range(n)]
    for i, name in enumerate(names):
        draw_jpeg(root / name, i, size=(32, 32))
    with open(root / "train.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["", "file_name", "label", "group"])
        for i, name in enumerate(names):
            w.writerow([i, name, i % 2, f"twin{i // 2}"])
    (root / "test.csv").write_text("id\n")
    return names


def _split_sides(sessions, name, root):
    """(grouping, [image id -> 0 train / 1 val] for seeds 0..4, path -> id)."""
    with sessions.begin() as s:
        ds = queries.get_dataset(s, name)
        ims = dict(queries.image_paths(s, ds.id, "train"))
        strata = {i: v for i, v in labelling.import_labels(s, ds.id).items() if i in ims}
        content, how = duplicates.split_groups(s, ds.id, root, strata, group=None, progress=False)
    sides = []
    for seed in range(5):
        tr, va = splits.split_images({i: ims[i] for i in strata}, strata, val_fraction=0.25, seed=seed,
                                     content=content)
        sides.append({i: 0 for i in tr} | {i: 1 for i in va})
    return how, sides, {p: i for i, p in ims.items()}


def _twins_apart(sides, by_path, names, pairs) -> int:
    return sum(side[by_path[names[a]]] != side[by_path[names[b]]] for side in sides for a, b in pairs)


@pytest.mark.parametrize("change", ["column_removed", "file_deleted"])
def test_the_split_keeps_the_groups_recorded_at_import_when_train_csv_changes(sessions, tmp_path, change):
    root = tmp_path / "g"
    names = _twins(root)
    import_dataset(sessions, root, "g", progress=False)
    pairs = [(2 * k, 2 * k + 1) for k in range(20)]
    if change == "column_removed":
        write_kaggle(root, [(n, i % 2) for i, n in enumerate(names)], [])
    else:
        (root / "train.csv").unlink()
    how, sides, by_path = _split_sides(sessions, "g", root)
    assert how["by"] == ["sha1", "csv group"] and how["groups"] == 20
    assert _twins_apart(sides, by_path, names, pairs) == 0


def test_an_edited_group_is_reported_and_used_only_once_recorded(sessions, tmp_path):
    root = tmp_path / "g"
    names = _twins(root)
    import_dataset(sessions, root, "g", progress=False)

    def regroup(header, body):  # twins 0..9 split up: each image its own group now
        g = header.index("group")
        for i, r in enumerate(body[:20]):
            r[g] = f"solo{i}"
    _rewrite_train(root, regroup)
    again = import_dataset(sessions, root, "g", progress=False)
    assert len(again.group_changes) == 20 and not again.group_changes_applied
    assert again.group_changes[0] == {"file_name": names[0], "csv_group": "solo0", "recorded_group": "twin0"}
    assert again.to_json()["group_changes"] == 20 and "--apply-group-changes" in again.group_changes_line()
    how, _, _ = _split_sides(sessions, "g", root)
    assert how["groups"] == 20  # the recorded twins still

    applied = import_dataset(sessions, root, "g", progress=False, apply_group_changes=True)
    assert applied.group_changes_applied and applied.label_changes == []
    how, sides, by_path = _split_sides(sessions, "g", root)
    assert how["groups"] == 10
    assert _twins_apart(sides, by_path, names, [(2 * k, 2 * k + 1) for k in range(10)]) > 0  # free now
    assert _twins_apart(sides, by_path, names, [(2 * k, 2 * k + 1) for k in range(10, 20)]) == 0
    assert import_dataset(sessions, root, "g", progress=False).group_changes == []


def test_a_split_refuses_rows_whose_groups_were_never_recorded_until_an_import_records_them(sessions, tmp_path):
    root = tmp_path / "g"
    _twins(root)
    import_dataset(sessions, root, "g", progress=False)
    with sessions.begin() as s:  # as a store from before migration 0006 holds them
        s.execute(update(Image).values(csv_group=None))
    with pytest.raises(ValueError) as refused:  # never read from the live CSV
        _split_sides(sessions, "g", root)
    assert str(refused.value) == (
        f"groups not recorded for 40 image(s) of dataset 'g' imported before aivh recorded train.csv's "
        f"group column: run `aivh import {root.resolve()} --name g` again")
    with sessions() as s:
        assert s.scalar(select(func.count()).where(Image.csv_group.is_(None))) == 40  # nothing written
    filled = import_dataset(sessions, root, "g", progress=False)
    assert filled.groups_filled == 40 and filled.group_changes == []  # nothing to compare with: recorded
    (root / "train.csv").unlink()  # recorded: the split no longer needs the file
    assert _split_sides(sessions, "g", root)[0]["groups"] == 20


def test_migration_0006_adds_the_group_column_null_and_the_next_import_fills_it(store_url, tmp_path):
    root = tmp_path / "old"
    _twins(root, n=4)
    from sqlalchemy import create_engine

    engine = create_engine(store_url)
    store.migrate(engine, "0005")
    with engine.begin() as c:
        c.execute(text("INSERT INTO datasets (id, name, root, created_at) VALUES (1, 'old', :root, "
                       "CURRENT_TIMESTAMP)"), {"root": str(root.resolve())})
        c.execute(text("INSERT INTO images (dataset_id, rel_path, split, csv_row, status) "
                       "VALUES (1, 'train_data/000.jpg', 'train', 0, 'unreadable')"))
    engine.dispose()
    sessions = store.session_factory(store_url)  # migrates to the head
    with sessions() as s:
        assert s.scalar(select(Image.csv_group)) is None
    result = import_dataset(sessions, root, "old", progress=False)
    assert result.groups_filled == 1
    with sessions() as s:
        assert {p: g for p, g in s.execute(select(Image.rel_path, Image.csv_group))} == {
            f"train_data/{i:03d}.jpg": f"twin{i // 2}" for i in range(4)}


# --- item: failing commands leave a new workspace empty -------------------------------------

@pytest.mark.parametrize("argv", [
    ["import", "{no_csv}"], ["import", "{nowhere}"], ["export", "--run", "999", "--out", "{out}"],
    ["predict", "--run", "1"], ["runs"], ["labels", "export", "--dataset", "d", "--out", "{out}"],
    ["train", "--dataset", "d", "--epochs", "1"],
])
def test_a_failing_command_in_a_new_workspace_creates_nothing(workspace, tmp_path, capsys, argv):
    from engine import cli

    no_csv = tmp_path / "no_csv"
    draw_jpeg(no_csv / "train_data/a.jpg", 0)
    args = [a.format(no_csv=no_csv, nowhere=tmp_path / "nowhere", out=tmp_path / "out.csv") for a in argv]
    assert not workspace.exists()
    assert cli.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("aivh: error: ")
    if argv[0] != "import":
        assert err == f"aivh: error: no store at {workspace / 'aivh.db'}: run `aivh import DATA_DIR` first"
    assert not workspace.exists() and not (tmp_path / "out.csv").exists()


def test_import_creates_the_store_and_then_reading_commands_use_it(workspace, tiny_dataset, capsys):
    from engine import cli

    assert cli.main(["import", str(tiny_dataset), "--name", "tiny"]) == 0
    assert (workspace / "aivh.db").is_file()
    assert cli.main(["runs", "--json"]) == 0
    assert cli.main(["export", "--run", "999", "--out", str(tiny_dataset / "s.csv")]) == 1
    assert "no run 999" in capsys.readouterr().err


# --- item: an import where every row fails is an error ----------------------------------------

def _all_missing(root):
    return write_kaggle(root, [("train_data/a.jpg", 0), ("train_data/b.jpg", 1)], ["test_data_v2/t.jpg"])


def test_an_import_where_every_row_fails_is_an_error_and_creates_nothing(workspace, tmp_path, capsys):
    from engine import cli

    root = _all_missing(tmp_path / "empty")
    assert cli.main(["import", str(root), "--json"]) == 1  # --json: no progress bar on stderr
    err = capsys.readouterr().err.strip()
    assert err == ("aivh: error: nothing imported: all 3 rows were rejected (missing file, e.g. train.csv:2: "
                   "train_data/a.jpg): check that the image folders sit in DATA_DIR beside train.csv and "
                   "that the CSV's paths are relative to DATA_DIR")
    assert not workspace.exists()  # no store made


def test_an_import_where_every_row_fails_writes_nothing_into_a_store(sessions, tiny_dataset, tmp_path):
    from db.models import Dataset
    from engine.ingest import NothingImported

    import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    with sessions() as s:
        before = (s.scalar(select(func.count()).select_from(Dataset)),
                  s.scalar(select(func.count()).select_from(Image)), len(_history(sessions)))
    with pytest.raises(NothingImported) as refused:
        import_dataset(sessions, _all_missing(tmp_path / "empty"), "empty", progress=False)
    assert "\n" not in str(refused.value) and len(refused.value.result.rejects) == 3
    with sessions() as s:
        assert (s.scalar(select(func.count()).select_from(Dataset)),
                s.scalar(select(func.count()).select_from(Image)), len(_history(sessions))) == before


# --- item: the workers, and which commands may start a store -------------------------------

@pytest.mark.parametrize("module, argv", [("engine.worker", ["--run-id", "1"]),
                                          ("engine.sweep_worker", ["--sweep", "1"])])
def test_a_worker_in_a_new_workspace_creates_nothing(workspace, capsys, module, argv):
    import importlib

    assert importlib.import_module(module).main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"aivh: error: no store at {workspace / 'aivh.db'}: run `aivh import DATA_DIR` first"
    assert not workspace.exists()


def test_serve_and_demo_may_start_a_store_and_other_commands_may_not(workspace, monkeypatch):
    from engine import cli
    from engine.cli import serve
    from engine.cli.shared import check_store

    called = []
    monkeypatch.setattr(serve, "cmd_serve", lambda args: called.append(args.command))
    monkeypatch.setattr(serve, "cmd_demo", lambda args: called.append(args.command))
    assert cli.main(["serve"]) == 0 and cli.main(["demo", "--no-serve"]) == 0  # main's check let them through
    assert called == ["serve", "demo"] and not workspace.exists()
    parser = cli.build_parser()
    for argv in (["serve"], ["demo"], ["import", "x"], ["bench"]):
        check_store(parser.parse_args(argv))
    for argv in (["runs"], ["predict", "--run", "1"], ["duplicates", "--dataset", "d"]):
        with pytest.raises(store.NoStore):
            check_store(parser.parse_args(argv))
    assert not workspace.exists()


def test_no_store_is_said_on_each_backend_until_one_is_made(store_url):
    with pytest.raises(store.NoStore, match="run `aivh import DATA_DIR` first"):
        store.require_store(store_url)  # SQLite: no aivh.db; PostgreSQL: a new, empty database
    store.session_factory(store_url)
    store.require_store(store_url)
