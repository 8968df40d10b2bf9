"""`aivh serve` starts the dashboard on 127.0.0.1 and its page renders the store."""
import os
import socket
import subprocess
import sys
import time
import urllib.request

from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT, SAMPLE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as the kernel writes them) listening on the port, IPv4 and IPv6."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            lines = f.read().splitlines()[1:]
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:
                found.add(addr)
    return found


def test_serve_binds_to_localhost_and_answers(workspace):
    port = _free_port()
    env = {**os.environ, "AIVH_HOME": str(workspace)}
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, body = time.monotonic() + 60, None
        while time.monotonic() < deadline and body is None:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read()
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                time.sleep(0.5)
        assert body == b"ok"
        assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only, not 0.0.0.0
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_runs_page_empty_store_then_with_a_dataset(sessions):
    page = str(ROOT / "dashboard" / "views" / "runs.py")
    at = AppTest.from_file(page, default_timeout=60).run()
    assert not at.exception
    assert "store is empty" in at.info[0].value

    from engine.ingest import import_dataset
    import_dataset(sessions, SAMPLE, "sample", progress=False)
    at = AppTest.from_file(page, default_timeout=60).run()
    assert not at.exception and "No runs yet" in at.info[0].value
