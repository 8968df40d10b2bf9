"""The dashboard is a local tool: browsing every page makes no request outside the machine, and
names no outside address for the browser to fetch (a page icon of Material Symbols became a
favicon on fonts.gstatic.com). The same server and browser as test_browser."""
from urllib.parse import urlparse

from playwright.sync_api import expect

from tests.test_browser import browser, open_page, page, server  # noqa: F401 - fixtures

PAGES = ["Runs", "Train", "Evaluate", "Review", "Shift", "Export", "Duplicates", "Map", "Sweep"]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}

# every URL the document names for the browser to load: icons, images, scripts, styles, frames
REFERENCED = """() => [...document.querySelectorAll(
    'link[href], img[src], script[src], iframe[src], source[src], video[src], audio[src]')]
    .map(e => e.href || e.src).filter(Boolean)"""


def outside(urls) -> list[str]:
    """The URLs that would leave the machine (data: and blob: stay in the page)."""
    out = []
    for u in urls:
        p = urlparse(u)
        if p.scheme in ("data", "blob", "about"):
            continue
        if p.hostname not in LOCAL_HOSTS:
            out.append(u)
    return sorted(set(out))


def test_browsing_every_page_stays_on_this_machine(server, page):  # noqa: F811
    from tests.test_sweep import recorded_sweep

    sweep_id, _ = recorded_sweep(server["sessions"], run_id=server["run"])  # Sweep with its buttons
    requested: list[str] = []
    page.context.on("request", lambda r: requested.append(r.url))
    page.context.on("websocket", lambda ws: requested.append(ws.url))
    referenced: list[str] = []
    open_page(page, f"{server['url']}/?run={server['run']}&reviewer=ana")
    referenced += page.evaluate(REFERENCED)
    for name in PAGES:  # each page reached as a user does: a click in the sidebar
        page.locator("[data-testid='stSidebarNav'] a").filter(has_text=name).click()
        page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=60_000)
        page.wait_for_timeout(300)  # the page's icon becomes the favicon after the run
        referenced += page.evaluate(REFERENCED)
        assert page.locator("[data-testid='stException']").count() == 0, name
    open_page(page, f"{server['url']}/sweep?sweep={sweep_id}")
    expect(page.get_by_role("tab", name="Intermediate values (pruned trials stop)")).to_be_visible()
    referenced += page.evaluate(REFERENCED)
    assert any(urlparse(u).hostname in LOCAL_HOSTS for u in requested)  # the recorder works
    assert outside(requested) == []
    assert outside(referenced) == []


def test_the_sweep_forms_space_label_keeps_its_brackets(server, page):  # noqa: F811
    """Markdown ate `[:log]` from the label of the space (item 17)."""
    open_page(page, f"{server['url']}/sweep")
    label = page.locator("[data-testid='stWidgetLabel']").filter(has_text="comma-separated")
    if not label.is_visible():  # the expander starts closed once a sweep exists
        page.get_by_text("New sweep").first.click()
    expect(label).to_be_visible()
    assert "NAME=LOW:HIGH[:log]" in label.inner_text()
    assert "NAME=A|B|C" in label.inner_text()
