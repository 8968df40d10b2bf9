"""Security boundaries: paths stay inside dataset roots, checkpoints never unpickle code, SQL is bound."""
from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import pytest
import torch

from db import queries
from engine.errors import WeightsError
from engine.images import resolve_inside
from engine.loader import ImageDataset
from engine.model import load_trained
from engine.thumbs import thumbnail
from tests.conftest import ROOT, draw_jpeg, finished_run


class _Payload:
    """A pickle that would create a file when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_with_code_in_it_is_refused_and_the_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "best.pt"
    torch.save({"model": {}, "config": {}, "extra": _Payload(marker)}, path)
    with pytest.raises(WeightsError, match=str(path)):
        load_trained(path)
    assert not marker.exists()


def test_predict_reads_its_checkpoint_without_running_code(sessions, tmp_path):
    """predict hashes and loads the checkpoint's bytes itself: still weights_only."""
    from engine.predict import predict_run
    from tests.test_trust_export import _dataset, _run

    marker = tmp_path / "pwned"
    path = tmp_path / "best.pt"
    torch.save({"model": {}, "config": {"img_size": 32}, "epoch": 1, "extra": _Payload(marker)}, path)
    run_id = _run(sessions, _dataset(tmp_path / "data"), checkpoint=str(path))
    with pytest.raises(WeightsError, match=str(path)):
        predict_run(sessions, run_id, "test", device="cpu", workers=0, progress=False)
    assert not marker.exists()


CRAFTED = ["../../../../../../etc/passwd", "/etc/passwd", "train_data/../../outside.jpg", "link.jpg"]


@pytest.mark.parametrize("rel_path", CRAFTED)
def test_a_crafted_path_in_the_store_cannot_read_outside_the_root(tmp_path, rel_path):
    root = tmp_path / "data"
    draw_jpeg(tmp_path / "outside.jpg", 1)  # a real image just outside the root
    root.mkdir()
    (root / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    with pytest.raises(PermissionError, match="escapes the dataset root"):
        resolve_inside(root, rel_path)
    with pytest.raises(PermissionError):
        thumbnail(tmp_path / "cache", root, rel_path, None)
    item = ImageDataset(root, [rel_path], [1], size=32, train=False)[0]
    assert item[0] is None and "PermissionError" in item[2]  # training skips it, reading nothing


def test_the_review_page_refuses_a_crafted_path_with_a_message(sessions, tmp_path):
    from streamlit.testing.v1 import AppTest

    run_id = finished_run(sessions)
    with sessions.begin() as s:  # someone with database access rewrites every stored path
        run = queries.get_run(s, run_id)
        for im in queries.images(s, run.dataset_id):
            im.rel_path = f"../../../../../../etc/passwd#{im.id}" if im.id % 2 else f"/etc/{im.id}/passwd"
    at = AppTest.from_file(str(ROOT / "dashboard/views/review.py"), default_timeout=60)
    at.query_params.update({"run": str(run_id), "reviewer": "ana"})
    at.run()
    assert not at.exception
    assert any("escapes the dataset root" in w.value for w in at.warning)


SQL_CALL = re.compile(r"\b(text|execute|exec_driver_sql|executescript)\(\s*(f[\"']|[\"'][^\"']*[\"']\s*(%|\.format|\+))")


def test_all_sql_is_bound_parameters():
    """No SQL string is built from values: every query is the ORM/Core or constant text with binds."""
    offenders = []
    for folder in ("engine", "db", "dashboard"):
        for path in (ROOT / folder).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if SQL_CALL.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []
    assert SQL_CALL.search('c.execute(f"SELECT * FROM t WHERE id = {x}")')  # the check can fail


def test_serve_binds_locally_with_xsrf_on_unless_told_otherwise():
    from engine.cli import build_parser
    from engine.cli.serve import serve_command

    def flags(argv: list[str]) -> dict[str, str]:
        args = build_parser().parse_args(argv)
        cmd = serve_command(args.host, args.port)
        return dict(itertools.pairwise(cmd))

    assert flags(["serve"])["--server.address"] == "127.0.0.1"
    assert flags(["serve"])["--server.enableXsrfProtection"] == "true"
    assert flags(["serve", "--host", "0.0.0.0"])["--server.address"] == "0.0.0.0"
