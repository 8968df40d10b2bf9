"""The engine runs without the dashboard: importing it must not pull in streamlit."""
import subprocess
import sys

from tests.conftest import ROOT


def test_engine_does_not_import_streamlit():
    code = ("import sys, engine.cli, engine.data, engine.model, engine.train, engine.predict, "
            "engine.export, engine.jobs, engine.ingest, engine.metrics; "
            "print('streamlit' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    # and the check itself can fail: importing the dashboard does pull streamlit in
    code = "import sys, streamlit; print('streamlit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
