"""The embedding map in Chromium: a lasso drawn with the mouse over the plotly scatter opens
exactly the images inside it in Review (the same server and browser fixtures as test_browser)."""
import json

import numpy as np
import pytest
from matplotlib.path import Path as Polygon
from playwright.sync_api import expect

from db import queries
from tests.test_browser import browser, open_page, page, server  # noqa: F401 - fixtures

LASSO = [(0.42, 0.35), (0.58, 0.33), (0.63, 0.50), (0.55, 0.66), (0.43, 0.62), (0.37, 0.48)]  # of the plot area


def test_lasso_on_the_map_opens_exactly_those_images_in_review(server, page):  # noqa: F811
    from engine import embeddings, neighbours

    run = server["run"]
    with server["sessions"]() as s:
        ds = queries.get_run(s, run).dataset_id
        ids = [i for i, *_ in queries.image_facts(s, ds)]
        path_of = dict(queries.image_paths(s, ds))
    embeddings.save(run, ids, np.random.default_rng(1).standard_normal((len(ids), 16)))
    ids_, xy, _ = neighbours.embedding_map(run, method="pca")  # cached: the page reads it, no UMAP
    open_page(page, f"{server['url']}/map?run={run}&reviewer=ana")
    plot = page.locator(".js-plotly-plot").first
    expect(plot).to_be_visible(timeout=30_000)
    area = json.loads(plot.evaluate("""p => JSON.stringify({l: p._fullLayout._size.l, t: p._fullLayout._size.t,
        w: p._fullLayout._size.w, h: p._fullLayout._size.h, x: p._fullLayout.xaxis.range,
        y: p._fullLayout.yaxis.range})"""))
    box = plot.bounding_box()
    pixels = [(box["x"] + area["l"] + fx * area["w"], box["y"] + area["t"] + fy * area["h"]) for fx, fy in LASSO]
    page.mouse.move(*pixels[0])
    page.mouse.down()
    for x, y in [*pixels[1:], pixels[0]]:
        page.mouse.move(x, y, steps=8)
    page.mouse.up()
    # the points inside the same polygon, in data coordinates
    (x0, x1), (y0, y1) = area["x"], area["y"]
    poly = Polygon([(x0 + fx * (x1 - x0), y1 - fy * (y1 - y0)) for fx, fy in LASSO])
    inside = {int(i) for i, p in zip(ids_, xy) if poly.contains_point((float(p[0]), float(p[1])))}
    assert 3 <= len(inside) < len(ids) // 2  # a real selection, not everything
    button = page.get_by_role("button", name=f"Open the {len(inside)} selected in Review")
    expect(button).to_be_visible(timeout=30_000)
    button.click()
    title = f"{len(inside)} images lassoed on the map: {len(inside)} images"
    expect(page.get_by_role("heading", name=title)).to_be_visible(timeout=30_000)
    assert "/review" in page.url
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=60_000)
    paths = {path_of[i] for i in inside}
    opened = page.get_by_role("heading", level=3).filter(has_text="_data")  # the open image's path
    expect(opened.first).to_be_visible(timeout=30_000)
    assert opened.first.inner_text().strip() in paths  # the open image is one of them
    expect(page.get_by_text(f"Page (of {-(-len(inside) // 24)})")).to_be_visible()


@pytest.mark.parametrize("path,heading", [("duplicates", "Duplicates"), ("map", "Embedding map")])
def test_the_neighbour_pages_render(server, page, path, heading):  # noqa: F811
    open_page(page, f"{server['url']}/{path}?run={server['run']}&reviewer=ana")
    expect(page.get_by_role("heading", name=heading, level=1)).to_be_visible()
    assert page.locator("[data-testid='stException']").count() == 0
