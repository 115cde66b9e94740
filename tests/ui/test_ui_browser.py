"""The playground and /docs in a real Chromium against the real gunicorn: what a person sees equals what the API
answers for the same query; every request stays on the service's origin; the console stays clean."""

from __future__ import annotations

import base64
import io
import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from ui_helpers import API_KEY, watch

pytestmark = pytest.mark.timeout(180)


def ids_of(page) -> list[str]:
    return page.eval_on_selector_all("#results .card", "cards => cards.map(c => c.dataset.id)")


def wait_for_cards(page, count: int) -> None:
    page.wait_for_function("n => document.querySelectorAll('#results .card').length >= n", arg=count)
    page.wait_for_function("() => document.getElementById('status').textContent === ''")


def api_ids(server, **query) -> list[str]:
    answer = requests.post(f"{server.url}/search", json=query, timeout=30)
    assert answer.status_code == 200, answer.text
    return [hit["id"] for hit in answer.json()["results"]]


def picture(demo_index: Path, n: int) -> bytes:
    return sorted((demo_index.parents[2] / "pictures" / "images").glob("*.png"))[n].read_bytes()


def open_ui(ui, query: str = "") -> None:
    ui.page.goto(f"{ui.origin}/ui{query}")
    ui.page.wait_for_selector("#app:not([hidden])")


def test_search_by_text_shows_the_cards_search_returns_with_thumbnails(ui, ui_server):
    open_ui(ui)
    page = ui.page
    page.fill("#top-k", "8")
    page.fill("#q", "a red circle")
    page.press("#q", "Enter")
    wait_for_cards(page, 8)
    assert ids_of(page) == api_ids(ui_server, text="a red circle", top_k=8)
    page.wait_for_function("() => [...document.querySelectorAll('#results .card img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    assert page.locator("#results .card img:visible").count() == 8
    assert page.locator("#results .noimage:visible").count() == 0
    assert "q=a+red+circle" in page.url and "top_k=8" in page.url
    first = page.locator("#results .card").first
    assert first.locator(".score").inner_text().startswith("score ")
    page.click("#load-more")
    wait_for_cards(page, 16)
    assert ids_of(page) == api_ids(ui_server, text="a red circle", top_k=16)
    ui.screenshot("search")


def test_an_uploaded_and_a_dropped_image_both_search(ui, ui_server, demo_index):
    open_ui(ui)
    page = ui.page
    data = picture(demo_index, 3)
    expected = api_ids(ui_server, image=base64.b64encode(data).decode(), top_k=12)
    page.set_input_files("#search-file", {"name": "query.png", "mimeType": "image/png", "buffer": data})
    wait_for_cards(page, 12)
    assert ids_of(page) == expected

    other = picture(demo_index, 10)
    page.evaluate("""([b64, id]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
        document.getElementById(id).dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true}));
    }""", [base64.b64encode(other).decode(), "search-drop"])
    expected = api_ids(ui_server, image=base64.b64encode(other).decode(), top_k=12)
    page.wait_for_function("first => document.querySelector('#results .card')?.dataset.id === first "
                           "&& document.querySelectorAll('#results .card').length === 12", arg=expected[0])
    assert ids_of(page) == expected


def test_more_like_this_queries_by_id_and_the_detail_view_copies(ui, ui_server):
    open_ui(ui, "?tab=search&q=a%20blue%20square&top_k=6")
    page = ui.page
    wait_for_cards(page, 6)
    target = ids_of(page)[2]
    page.locator(f'#results .card[data-id="{target}"] button.more').click()
    page.wait_for_function("id => location.search.includes('id=' + encodeURIComponent(id))", arg=target)
    wait_for_cards(page, 6)
    assert ids_of(page) == api_ids(ui_server, id=target, top_k=6)
    assert target not in ids_of(page)

    shown = ids_of(page)[0]
    page.locator(f'#results .card[data-id="{shown}"] button.details').click()
    dialog = page.locator("#detail")
    assert dialog.is_visible()
    assert "color" in dialog.locator("table").inner_text()
    dialog.locator("#copy-id").click()
    assert page.evaluate("navigator.clipboard.readText()") == shown
    dialog.locator("#copy-item-curl").click()
    command = page.evaluate("navigator.clipboard.readText()")
    assert command.startswith(f"curl -s {ui_server.url}/search") and json.dumps(shown) in command
    ui.screenshot("detail")
    dialog.locator("#detail-close").click()


def test_a_filter_built_in_the_editor_returns_only_matching_items(ui, ui_server):
    open_ui(ui, "?tab=search")
    page = ui.page
    page.click("#add-condition")
    row = page.locator("#conditions .condition").nth(0)
    row.locator(".key").select_option("color")
    row.locator(".value").fill("red")
    page.click("#add-condition")
    row = page.locator("#conditions .condition").nth(1)
    row.locator(".key").select_option("size")
    row.locator(".op").select_option("gte")
    row.locator(".value").fill("60")
    expected_filter = {"must": [{"key": "color", "match": {"value": "red"}}, {"key": "size", "range": {"gte": 60}}]}
    assert json.loads(page.input_value("#filter-json")) == expected_filter
    page.fill("#q", "a shape")
    page.press("#q", "Enter")
    expected = api_ids(ui_server, text="a shape", top_k=12, filter=expected_filter)
    assert expected, "the demo data has large red shapes"
    wait_for_cards(page, len(expected))
    assert ids_of(page) == expected
    answer = requests.post(f"{ui_server.url}/search", json={"text": "a shape", "top_k": 12, "filter": expected_filter},
                           timeout=30).json()
    assert all(h["metadata"]["color"] == "red" and h["metadata"]["size"] >= 60 for h in answer["results"])
    assert "filter=" in page.url
    ui.screenshot("search-filtered")


def zero_shot(page, data: bytes, labels: list[str], template: str) -> list[tuple[str, float]]:
    """Score a picture against labels on the zero-shot tab; the bars as (label, share)."""
    page.set_input_files("#score-file", {"name": "q.png", "mimeType": "image/png", "buffer": data})
    page.wait_for_selector("#score-preview:not([hidden])")
    page.fill("#labels", "\n".join(labels))
    page.fill("#template", template)
    page.click("#score-run")
    page.wait_for_function(f"() => document.querySelectorAll('#bars li').length === {len(labels)}")
    return page.eval_on_selector_all("#bars li", "bars => bars.map(b => [b.dataset.label, Number(b.dataset.share)])")


def test_zero_shot_shows_one_bar_per_label_with_the_probabilities_score_gives(ui, ui_server, demo_index):
    open_ui(ui, "?tab=score")
    data = picture(demo_index, 5)
    shown = zero_shot(ui.page, data, ["red", "blue", "green", "yellow"], "a photo of a {} shape")
    answer = requests.post(f"{ui_server.url}/score", timeout=30, json={
        "images": [base64.b64encode(data).decode()],
        "texts": [f"a photo of a {c} shape" for c in ("red", "blue", "green", "yellow")]}).json()
    assert [label for label, _ in shown] == ["red", "blue", "green", "yellow"]
    np.testing.assert_allclose([p for _, p in shown], answer["probs"][0], rtol=1e-6)
    ui.screenshot("zero-shot")


def test_embed_copies_a_vector_of_the_model_dimension(ui, ui_server):
    open_ui(ui, "?tab=embed")
    page = ui.page
    page.fill("#embed-text", "a photo of a cat")
    page.click("#embed-run")
    page.wait_for_selector("#embed-out:not([hidden])")
    dim = requests.get(f"{ui_server.url}/", timeout=10).json()["model"]["dim"]
    assert page.inner_text("#embed-dim") == str(dim)
    page.click("#copy-vector")
    copied = json.loads(page.evaluate("navigator.clipboard.readText()"))
    expected = requests.post(f"{ui_server.url}/embed/text", json={"texts": ["a photo of a cat"]},
                             timeout=30).json()["embeddings"][0]
    assert len(copied) == dim
    np.testing.assert_allclose(copied, expected, atol=1e-6)
    page.click("#copy-python")
    snippet = page.evaluate("navigator.clipboard.readText()")
    assert f'base_url="{ui_server.url}/v1"' in snippet and "client.embeddings.create" in snippet
    ui.screenshot("embed")


def test_the_model_picker_sends_the_chosen_model_from_every_tab(ui, ui_server, demo_index):
    open_ui(ui, "?tab=score")
    page = ui.page
    assert page.eval_on_selector_all("#model-select option", "os => os.map(o => o.value)") == ["english",
                                                                                               "multilingual"]
    page.select_option("#model-select", "multilingual")
    assert "model=multilingual" in page.url
    data = picture(demo_index, 3)
    shown = [share for _, share in zero_shot(page, data, ["red", "blue"], "a {} shape")]
    answer = requests.post(f"{ui_server.url}/score", timeout=30, json={
        "images": [base64.b64encode(data).decode()], "texts": ["red", "blue"], "templates": ["a {} shape"],
        "model": "multilingual"}).json()
    np.testing.assert_allclose(shown, answer["probs"][0], rtol=1e-6)
    assert "Softmax" in page.inner_text("#probs-kind")

    page.click("#tab-embed")
    assert not page.is_disabled("#model-select")
    page.fill("#embed-text", "ein Hund")
    page.click("#embed-run")
    page.wait_for_selector("#embed-out:not([hidden])")
    page.click("#copy-vector")
    copied = json.loads(page.evaluate("navigator.clipboard.readText()"))
    want = requests.post(f"{ui_server.url}/embed/text", timeout=30,
                         json={"texts": ["ein Hund"], "model": "multilingual"}).json()["embeddings"][0]
    other = requests.post(f"{ui_server.url}/embed/text", timeout=30, json={"texts": ["ein Hund"]}).json()
    np.testing.assert_allclose(copied, want, atol=1e-6)
    assert not np.allclose(copied, other["embeddings"][0], atol=1e-3)  # not the default's vector

    page.click("#tab-search")
    assert page.is_disabled("#model-select") and "english" in page.inner_text("#model-note")


def test_without_thumbnails_metadata_image_urls_are_shown_and_broken_ones_hidden(context, url_server):
    ui = watch(context, url_server.url)
    page = ui.page
    red = io.BytesIO()
    Image.new("RGB", (40, 30), (220, 30, 30)).save(red, format="PNG")

    def image_host(route):  # stands in for the image host: nothing leaves the machine
        n = int(route.request.url.rsplit("/", 1)[1].split(".")[0])
        if n % 2:
            route.fulfill(status=404, body="gone")
        else:
            route.fulfill(status=200, content_type="image/png", body=red.getvalue())

    page.route("https://images.example/**", image_host)
    page.goto(f"{url_server.url}/ui?tab=search&q=picture&top_k=10")
    wait_for_cards(page, 10)
    page.wait_for_function("() => [...document.querySelectorAll('#results .card img')]"
                           ".every(i => i.hidden || (i.complete && i.naturalWidth > 0))")
    shown = page.eval_on_selector_all("#results .card", "cards => cards.map(c => [c.dataset.id, "
                                      "!c.querySelector('img').hidden, !c.querySelector('.noimage').hidden])")
    assert sorted(shown) == sorted([f"u{i}", i % 2 == 0, i % 2 == 1] for i in range(10))
    assert not [u for u in ui.requests if "/thumbnail" in u]  # the index says it has none: none asked for
    assert all("status of 404" in e for e in ui.errors)  # Chromium logs the broken images; nothing else


def test_tabs_work_from_the_keyboard(ui):
    open_ui(ui)
    page = ui.page
    page.focus("#tab-search")
    page.keyboard.press("ArrowRight")
    assert page.get_attribute("#tab-score", "aria-selected") == "true"
    assert page.evaluate("document.activeElement.id") == "tab-score"
    assert page.is_visible("#panel-score") and not page.is_visible("#panel-search")
    assert "tab=score" in page.url


def test_with_api_keys_the_page_asks_for_the_key_and_says_when_it_is_wrong(context, keyed_server):
    ui = watch(context, keyed_server.url)
    page = ui.page
    page.goto(f"{keyed_server.url}/ui")
    page.wait_for_selector("#key-form:not([hidden])")
    ui.screenshot("key")
    page.fill("#key", "not-the-key")
    page.click("#key-form button[type=submit]")
    page.wait_for_function("() => document.getElementById('key-error').textContent.includes('refused')")
    assert page.is_hidden("#app")
    page.fill("#key", API_KEY)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#app:not([hidden])")
    page.fill("#q", "a green triangle")
    page.press("#q", "Enter")
    wait_for_cards(page, 12)
    page.wait_for_function("() => [...document.querySelectorAll('#results .card img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")  # thumbnails fetched with the key
    assert page.evaluate("sessionStorage.getItem('clipserve.key')") == API_KEY
    assert page.evaluate("localStorage.length") == 0
    assert not any(API_KEY in url or "not-the-key" in url for url in ui.requests)
    assert ui.foreign == []
    refused = [e for e in ui.errors if "status of 401" in e]  # Chromium logs each refused fetch; nothing else
    assert refused and ui.errors == refused


def test_docs_work_offline_under_the_csp(ui):
    response = ui.page.goto(f"{ui.origin}/docs")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    ui.page.wait_for_selector(".swagger-ui .info .title")
    assert "clipserve" in ui.page.inner_text(".swagger-ui .info .title")
    ui.page.wait_for_selector("text=/search")
    ui.screenshot("docs")


class _Page(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_a_page_on_another_origin_calls_the_api_only_where_cors_origins_allows(context, ui_server,
                                                                               cors_origin_port, tmp_path):
    (tmp_path / "index.html").write_text("<!doctype html><title>other app</title>")
    server = ThreadingHTTPServer(("127.0.0.1", cors_origin_port), partial(_Page, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    call = """async (api) => {
        try {
            const r = await fetch(api + "/embed/text", {method: "POST", body: JSON.stringify({texts: ["hi"]}),
                headers: {"Content-Type": "application/json", "X-Request-ID": "cors-check"}});
            return {status: r.status, dim: (await r.json()).embeddings[0].length, id: r.headers.get("X-Request-ID")};
        } catch (e) { return {blocked: String(e)}; }
    }"""
    try:
        page = context.new_page()  # no routing: Playwright would answer the preflight itself
        page.goto(f"http://127.0.0.1:{cors_origin_port}/")
        allowed = page.evaluate(call, ui_server.url)
        assert allowed["status"] == 200 and allowed["dim"] > 0 and allowed["id"] == "cors-check"
        page.goto(f"http://localhost:{cors_origin_port}/")  # another origin, not in CORS_ORIGINS
        refused = page.evaluate(call, ui_server.url)
        assert "blocked" in refused
    finally:
        server.shutdown()
        server.server_close()
