"""Property-based tests over the importer: whatever the CSVs hold, a clean result or one clear error,
and a refused import writes nothing."""
from __future__ import annotations

import csv
import io
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from db import queries
from db.models import Image, Label
from engine.errors import CsvError
from engine.ingest import NothingImported, import_dataset
from tests.conftest import draw_jpeg

NAMES = ["train_data/a.jpg", "train_data/b.jpg", "test_data_v2/c.jpg", "test_data_v2/d.jpg"]
name = st.one_of(st.sampled_from(NAMES), st.text(max_size=30),
                 st.sampled_from(["../outside.jpg", "/etc/passwd", "train_data/", "", " train_data/a.jpg ",
                                  "train_data/a,b.jpg", "train_data/\x00.jpg", "train_data/missing.jpg"]))
label = st.one_of(st.sampled_from(["0", "1", "1.0", "0.0", " 1", "yes", "no", "2", "-1", "nan", "", "1e0",
                                   "inf", "true"]), st.text(max_size=8))
header = st.sampled_from([["", "file_name", "label"], ["file_name", "label"], ["label", "file_name"],
                          ["file_name", "label", "extra"], ["file_name"], ["name", "label"], []])
row = st.tuples(st.integers(0, 10**6), name, label, st.text(max_size=5))
encoding = st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"])
newline = st.sampled_from(["\n", "\r\n", "\r"])


def render(head: list[str], rows: list[tuple], enc: str, nl: str) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator=nl, quoting=csv.QUOTE_MINIMAL)
    if head:
        w.writerow(head)
    for idx, file_name, lab, extra in rows:
        values = {"": str(idx), "file_name": file_name, "label": lab, "extra": extra, "name": file_name}
        w.writerow([values.get(h, "") for h in head] if head else [file_name, lab])
    return buf.getvalue().encode(enc, errors="replace")


def counts(sessions) -> tuple[int, int]:
    with sessions() as s:
        return s.scalar(select(func.count(Image.id))), s.scalar(select(func.count(Label.id)))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(head=header, rows=st.lists(row, max_size=8), enc=encoding, nl=newline,
       test_rows=st.lists(name, max_size=4), raw=st.one_of(st.none(), st.binary(max_size=64)))
def test_any_csv_imports_cleanly_or_fails_with_one_clear_error(sessions, head, rows, enc, nl, test_rows, raw):
    tmp = Path(tempfile.mkdtemp())
    try:
        for n, rel in enumerate(NAMES):
            draw_jpeg(tmp / rel, n)
        train_bytes = raw if raw is not None else render(head, rows, enc, nl)
        (tmp / "train.csv").write_bytes(train_bytes)
        (tmp / "test.csv").write_text("id\n" + "".join(f'"{t}"\n' for t in test_rows))
        before = counts(sessions)
        try:
            result = import_dataset(sessions, tmp, tmp.name, progress=False)
        except CsvError as e:
            message = str(e)
            assert "\n" not in message and ("train.csv" in message or "test.csv" in message), message
            assert counts(sessions) == before  # nothing half-written
            return
        except NothingImported as e:  # every row rejected: one line, nothing written, each row named
            assert "\n" not in str(e) and counts(sessions) == before, str(e)
            assert e.result.rejects and all(r.csv in ("train.csv", "test.csv") and r.line >= 1 and r.reason
                                            for r in e.result.rejects)
            return
        for r in result.rejects:  # every skipped row names its file, line and reason
            assert r.csv in ("train.csv", "test.csv") and r.line >= 1 and r.reason
        with sessions() as s:
            ds = queries.get_dataset(s, tmp.name)
            stored = s.execute(select(Image.rel_path, Image.status).where(Image.dataset_id == ds.id)).all()
        assert {p for p, status in stored if status == "ok"} <= set(NAMES)  # only real files inside
        # rows kept as unreadable (so test.csv stays complete) were each reported
        assert {p for p, status in stored if status != "ok"} <= {r.file_name for r in result.rejects}
    finally:
        shutil.rmtree(tmp)
