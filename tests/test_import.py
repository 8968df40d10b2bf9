"""`aivh import`: every image recorded, each bad row reported with file, line and reason."""
import os

import pytest
from sqlalchemy import func, select

from db import labelling, queries
from db.models import Image, Label
from engine.errors import CsvError
from engine.ingest import import_dataset
from tests.conftest import draw_jpeg, write_kaggle


def _counts(sessions):
    with sessions() as s:
        return s.scalar(select(func.count(Image.id))), s.scalar(select(func.count(Label.id)))


def test_clean_folder_records_images_and_first_labels(sessions, tiny_dataset):
    result = import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    assert (result.train, result.test, len(result.rejects)) == (8, 3, 0)
    with sessions() as s:
        ds = queries.get_dataset(s, "tiny")
        ims = queries.images(s, ds.id)
        first = ims[0]
        assert (first.width, first.height) == (48, 40)
        assert first.bytes == (tiny_dataset / first.rel_path).stat().st_size
        assert len(first.sha1) == 40
        labels = labelling.current_labels(s, ds.id)
        assert sorted(labels.values()) == [0] * 4 + [1] * 4
        assert all(lb.source == "import" for lb in s.scalars(select(Label)))
        # test order is test.csv's order
        assert [im.rel_path for im in queries.images(s, ds.id, "test")] == \
            (tiny_dataset / "test.csv").read_text().split()[1:]


def test_reimport_changes_nothing(sessions, tiny_dataset):
    import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    before = _counts(sessions)
    again = import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    assert again.added == 0 and _counts(sessions) == before


def test_each_bad_row_kind_is_skipped_and_reported(sessions, tmp_path):
    root = tmp_path / "bad"
    draw_jpeg(root / "train_data/ok0.jpg", 0)
    draw_jpeg(root / "train_data/ok1.jpg", 1)
    draw_jpeg(root / "train_data/label.jpg", 2)
    (root / "train_data/text.jpg").write_text("<html>not an image</html>")
    (root / "train_data/empty.jpg").write_bytes(b"")
    draw_jpeg(tmp_path / "outside.jpg", 3)
    draw_jpeg(root / "test_data_v2/t0.jpg", 4)
    write_kaggle(root, [
        ("train_data/ok0.jpg", 0),          # line 2
        ("train_data/ok1.jpg", 1),          # line 3
        ("train_data/missing.jpg", 1),      # line 4: missing file
        ("train_data/text.jpg", 0),         # line 5: not an image
        ("train_data/empty.jpg", 1),        # line 6: empty file
        ("train_data/label.jpg", 2),        # line 7: label not 0/1
        ("train_data/ok0.jpg", 0),          # line 8: duplicate id
        (str(tmp_path / "outside.jpg"), 1), # line 9: absolute
        ("../outside.jpg", 1),              # line 10: escapes
    ], ["test_data_v2/t0.jpg", "train_data/ok1.jpg"])  # test line 3: duplicate across CSVs
    result = import_dataset(sessions, root, "bad", progress=False)
    got = {(r.csv, r.line): r.reason for r in result.rejects}
    assert set(got) == {("train.csv", n) for n in range(4, 11)} | {("test.csv", 3)}
    assert "missing file" in got[("train.csv", 4)]
    assert "not an image" in got[("train.csv", 5)]
    assert "empty" in got[("train.csv", 6)]
    assert "not 0 or 1" in got[("train.csv", 7)]
    assert "duplicate" in got[("train.csv", 8)] and "duplicate" in got[("test.csv", 3)]
    assert "absolute" in got[("train.csv", 9)]
    assert "escapes" in got[("train.csv", 10)]
    assert all(r.file_name for r in result.rejects)
    assert (result.train, result.test) == (2, 1)
    with sessions() as s:
        ds = queries.get_dataset(s, "bad")
        assert {im.rel_path for im in queries.images(s, ds.id, "train")} == \
            {"train_data/ok0.jpg", "train_data/ok1.jpg"}


def test_symlink_out_of_the_root_is_rejected(sessions, tmp_path):
    root = tmp_path / "ln"
    draw_jpeg(tmp_path / "secret.jpg", 0)
    draw_jpeg(root / "train_data/a.jpg", 1)
    (root / "train_data").mkdir(exist_ok=True)
    os.symlink(tmp_path / "secret.jpg", root / "train_data/b.jpg")
    write_kaggle(root, [("train_data/a.jpg", 0), ("train_data/b.jpg", 1)], [])
    result = import_dataset(sessions, root, "ln", progress=False)
    assert [(r.line, r.reason) for r in result.rejects] == [
        (3, "a symlink leads outside DATA_DIR (images are read only from inside it)")]
    assert result.summary is None  # a.jpg was imported


@pytest.mark.parametrize("breakage", ["no_train_csv", "no_test_csv", "no_label_column", "no_id_column"])
def test_missing_csv_or_column_writes_nothing(sessions, tiny_dataset, breakage):
    import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    before = _counts(sessions)
    broken = tiny_dataset.parent / "broken"
    broken.mkdir()
    (broken / "train_data").symlink_to(tiny_dataset / "train_data")
    train = (tiny_dataset / "train.csv").read_text()
    test = (tiny_dataset / "test.csv").read_text()
    if breakage != "no_train_csv":
        (broken / "train.csv").write_text(train.replace(",label", ",lbl") if breakage == "no_label_column" else train)
    if breakage != "no_test_csv":
        (broken / "test.csv").write_text(test.replace("id", "name", 1) if breakage == "no_id_column" else test)
    with pytest.raises(CsvError) as err:
        import_dataset(sessions, broken, "broken", progress=False)
    assert str(err.value).count("\n") == 0 and ".csv" in str(err.value)
    assert _counts(sessions) == before
    with sessions() as s:
        assert [d.name for d in queries.list_datasets(s)] == ["tiny"]


def test_cli_reports_rejects_and_json(workspace, tmp_path):
    from tests.conftest import aivh
    root = tmp_path / "cli"
    draw_jpeg(root / "train_data/a.jpg", 0)
    draw_jpeg(root / "train_data/b.jpg", 1)
    write_kaggle(root, [("train_data/a.jpg", 0), ("train_data/b.jpg", 1), ("train_data/c.jpg", 1)], [])
    proc = aivh("import", str(root), "--json", env_home=workspace)
    import json
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (out["train"], out["test"], out["rejected"]) == (2, 0, 1)
    assert "train.csv:4: train_data/c.jpg: missing file" in proc.stderr
    bad = aivh("import", str(tmp_path / "nowhere"), env_home=workspace, check=False)
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0 and "aivh: error" in bad.stderr


def test_a_file_missing_at_first_import_is_picked_up_later(sessions, tiny_dataset):
    moved = tiny_dataset / "train_data" / f"{3:032x}.jpg"
    moved.rename(moved.with_suffix(".bak"))
    first = import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    assert first.train == 7 and [r.reason for r in first.rejects] == ["missing file"]
    assert first.added == 7 + 3  # the missing file is rejected, not new
    moved.with_suffix(".bak").rename(moved)
    second = import_dataset(sessions, tiny_dataset, "tiny", progress=False)
    assert (second.train, second.added, second.rejects) == (8, 1, [])  # readable now: new this time
    with sessions() as s:
        labels = labelling.current_labels(s, queries.get_dataset(s, "tiny").id)
        assert len(labels) == 8  # its label was kept from the first import


def test_csv_variants_are_read_or_refused_clearly(sessions, tmp_path):
    root = tmp_path / "variants"
    draw_jpeg(root / "train_data/a,b.jpg", 0)  # a comma in the path: quoted in the CSV
    draw_jpeg(root / "train_data/c.jpg", 1)
    draw_jpeg(root / "test_data_v2/t.jpg", 2)
    # BOM, CRLF, reordered and extra columns, a quoted path, "1.0" as a label
    (root / "train.csv").write_bytes(
        b'\xef\xbb\xbflabel,extra,file_name\r\n0,x,"train_data/a,b.jpg"\r\n1.0,y,train_data/c.jpg\r\n')
    (root / "test.csv").write_bytes(b"id\r\ntest_data_v2/t.jpg\r\n")
    result = import_dataset(sessions, root, "variants", progress=False)
    assert (result.train, result.test, result.rejects) == (2, 1, [])

    (root / "train.csv").write_bytes(b",file_name,label\n0,train_data/\xff\xfe.jpg,1\n")
    with pytest.raises(CsvError, match="train.csv: not UTF-8"):
        import_dataset(sessions, root, "other", progress=False)


def test_prediction_skips_a_file_deleted_after_import_and_export_refuses(workspace, tmp_path):
    import json

    from tests.conftest import aivh, copy_sample
    data = copy_sample(tmp_path / "copy")
    aivh("import", str(data), "--name", "s", env_home=workspace)
    aivh("train", "--dataset", "s", "--epochs", "1", "--img-size", "32", "--limit", "40",
         "--batch-size", "16", "--workers", "0", env_home=workspace)
    gone = (data / "test.csv").read_text().split()[5]
    (data / gone).unlink()
    proc = aivh("predict", "--run", "1", "--json", "--workers", "0", env_home=workspace)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (out["images"], out["skipped"]) == (99, 1) and gone in proc.stderr
    refused = aivh("export", "--run", "1", "--out", str(tmp_path / "s.csv"), env_home=workspace, check=False)
    assert refused.returncode == 1 and "no prediction for 1 of 100 test images" in refused.stderr
    assert gone in refused.stderr


def test_training_skips_and_counts_a_file_deleted_after_import(workspace, tmp_path):
    import json

    from tests.conftest import aivh, copy_sample
    data = copy_sample(tmp_path / "copy")
    aivh("import", str(data), "--name", "s", env_home=workspace)
    gone = [line.split(",")[1] for line in (data / "train.csv").read_text().split()[1:3]]
    for name in gone:
        (data / name).unlink()
    proc = aivh("train", "--dataset", "s", "--epochs", "1", "--img-size", "32", "--batch-size", "32",
                "--workers", "0", "--json", env_home=workspace)
    assert json.loads(proc.stdout.strip().splitlines()[-1])["status"] == "succeeded"
    log = (workspace / "runs" / "1" / "log.txt").read_text()
    assert "skipped 2" in log and all(name in log for name in gone)
