"""The dashboard in Debian's Chromium, driven by Playwright, against `aivh serve` on 127.0.0.1.

A missing browser fails these tests: CI installs `chromium` with apt-get.
"""
import csv
import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright
from sqlalchemy import select

from db import queries, store
from db.models import Label
from tests.conftest import ROOT, finished_run

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("browser") / "home"
    os.environ["AIVH_HOME"] = str(home)
    store.get_engine.cache_clear()
    sessions = store.session_factory()
    run_id = finished_run(sessions)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "AIVH_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", "--port", str(port)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    yield {"url": f"http://127.0.0.1:{port}", "sessions": sessions, "run": run_id}
    proc.terminate()
    proc.wait(timeout=30)
    os.environ.pop("AIVH_HOME", None)
    store.get_engine.cache_clear()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    yield ctx.new_page()
    ctx.close()


def open_page(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("[data-testid='stAppViewContainer']")
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=60_000)


@pytest.mark.parametrize("path,heading", [("", "Runs"), ("train", "Train"), ("evaluate", "Evaluate"),
                                          ("review", "Review"), ("shift", "Shift"),
                                          ("export", "Export a Kaggle submission")])
def test_every_page_renders(server, page, path, heading):
    open_page(page, f"{server['url']}/{path}?run={server['run']}&reviewer=ana")
    expect(page.get_by_role("heading", name=heading, level=1)).to_be_visible()
    assert page.locator("[data-testid='stException']").count() == 0


def test_a_deep_link_keeps_the_navigations_sidebar(server, page):
    """After /review?run=N and a click on the page, the sidebar lists st.navigation's pages, never
    Streamlit's auto-discovered list of files (app, evaluate, ...) that a pages/ folder fed."""
    open_page(page, f"{server['url']}/review?run={server['run']}&reviewer=ana")
    page.get_by_role("button", name="Open").first.click()
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=60_000)
    nav = page.locator("[data-testid='stSidebarNav'] a")
    expect(nav).to_have_count(9)
    assert [t.split("\n")[-1].strip() for t in nav.all_inner_texts()] == ["Runs", "Train", "Evaluate", "Review", "Shift",
                                                                      "Export", "Duplicates", "Map", "Sweep"]


def test_relabel_through_the_ui_lands_in_the_store(server, page):
    open_page(page, f"{server['url']}/review?run={server['run']}&reviewer=bea")
    with server["sessions"]() as s:
        before = s.scalars(select(Label).order_by(Label.id.desc())).first().id
    page.get_by_label("Note (optional)").fill("clearly a render")
    page.get_by_label("Note (optional)").press("Enter")
    page.get_by_role("button", name="Label AI-generated").click()
    deadline = time.monotonic() + 30
    newest = None
    while time.monotonic() < deadline:
        with server["sessions"]() as s:
            newest = s.scalars(select(Label).where(Label.id > before)).first()
        if newest is not None:
            break
        time.sleep(0.3)
    assert newest is not None, "no label row was written"
    assert (newest.label, newest.source, newest.author, newest.note) == (1, "review", "bea", "clearly a render")


def test_export_download_is_a_valid_submission(server, page):
    open_page(page, f"{server['url']}/export?run={server['run']}")
    page.get_by_role("button", name="Write submission").click()
    button = page.get_by_role("button", name="Download submission.csv")
    expect(button).to_be_visible(timeout=30_000)
    with page.expect_download() as info:
        button.click()
    body = Path(info.value.path()).read_text()
    rows = list(csv.reader(io.StringIO(body)))
    with server["sessions"]() as s:
        run = queries.get_run(s, server["run"])
        test_ids = [im.rel_path for im in queries.images(s, run.dataset_id, "test")]
    assert rows[0] == ["id", "label"] and [r[0] for r in rows[1:]] == test_ids
    assert {r[1] for r in rows[1:]} <= {"0", "1"}


def test_launch_a_tiny_run_and_watch_it_finish(server, page):
    open_page(page, f"{server['url']}/train")
    for label, value in (("Epochs", "1"), ("Image size (px, 0 = the architecture's)", "32"), ("Batch size", "16"),
                         ("Limit images (0 = all)", "40"), ("Decoding workers", "0")):
        box = page.get_by_label(label, exact=True)
        box.fill(value)
        box.press("Tab")
    page.get_by_role("button", name="Start training").click()
    expect(page.get_by_text("started.")).to_be_visible(timeout=30_000)
    with server["sessions"]() as s:
        run_id = max(r.id for r in queries.list_runs(s))
    assert run_id != server["run"]
    expect(page.get_by_role("heading", name=f"Run #{run_id}: succeeded")).to_be_visible(timeout=240_000)
    with server["sessions"]() as s:
        run = queries.get_run(s, run_id)
        assert run.status == "succeeded" and run.config["img_size"] == 32 and run.config["limit"] == 40
        assert len(queries.epochs(s, run_id)) == 1


def test_the_sweep_page_opens_the_best_run_on_evaluate(server, page):
    from tests.test_sweep import recorded_sweep

    sweep_id, run_id = recorded_sweep(server["sessions"], run_id=server["run"])
    open_page(page, f"{server['url']}/sweep?sweep={sweep_id}")
    expect(page.get_by_role("heading", name="Sweep", level=1)).to_be_visible()
    expect(page.get_by_role("tab", name="Intermediate values (pruned trials stop)")).to_be_visible()
    assert page.locator("[data-testid='stException']").count() == 0
    page.get_by_role("button", name=f"Open best run (#{run_id})").click()
    expect(page.get_by_role("heading", name="Evaluate", level=1)).to_be_visible(timeout=30_000)
    assert f"run={run_id}" in page.url
