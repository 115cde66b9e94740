"""Hostile input against the real gunicorn service on a tiny bundle: every case gets its status and code in time,
the worker stays healthy, and the log says what happened (as JSON, with the trace).

In time: every request goes through ``post``, which fails a case that takes longer than its bound
(``QUICK_S`` unless the case has a timeout of its own). Healthy: after every case, whatever its order,
``/health`` must be 200 and a good text and a good image must still be embedded (``_still_serving_after``).
"""

from __future__ import annotations

import io
import json
import re
import struct
import time
import zlib

import pytest
import requests
from PIL import Image

from ops_support import b64, gunicorn, image_bytes, url_server

FETCH_TIMEOUT_S = 2.0
ENV = {
    "MAX_BODY_BYTES": str(1024 * 1024), "MAX_IMAGE_BYTES": str(512 * 1024), "MAX_ITEMS": "16",
    "MAX_TEXT_CHARS": "500", "FETCH_TIMEOUT_S": str(FETCH_TIMEOUT_S), "FETCH_CONNECT_TIMEOUT_S": "1",
    "ALLOW_PRIVATE_URLS": "1", "REQUEST_TIMEOUT_S": "20", "GOOGLE_CLOUD_PROJECT": "ops-test",
}
GOOD = image_bytes("PNG", seed=1)
# A refusal (limits, parse errors, decode errors) needs no fetch and no long model call: it must come back this fast.
QUICK_S = 5.0


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    with gunicorn(tiny_model_dir, tmp_path_factory.mktemp("hostile") / "server.log", **ENV) as s:
        yield s


@pytest.fixture(scope="module")
def urls():
    with url_server(GOOD) as u:
        yield u


@pytest.fixture(autouse=True)
def _still_serving_after(request):
    """After each case that used the server: /health is 200 and says ok, and good requests still succeed."""
    yield
    if "server" not in request.fixturenames:
        return
    server = request.getfixturevalue("server")
    health = requests.get(server.url + "/health", timeout=QUICK_S)
    assert health.status_code == 200 and health.json()["status"] == "ok", health.text[:300]
    r = post(server, "/embed/text", json={"texts": ["still here"]})
    assert r.status_code == 200 and len(r.json()["embeddings"]) == 1, r.text[:300]
    r = post(server, "/embed/image", json={"images": [b64(GOOD)]})
    assert r.status_code == 200 and r.json()["errors"] == [], r.text[:300]
    # ...and nothing so far was logged as an unhandled error or answered with a 5xx (but /health while loading).
    bad = [e for e in server.log_entries() if e.get("severity") in ("ERROR", "CRITICAL")
           or (e.get("status", 0) >= 500 and e.get("route") != "/health")]
    assert bad == [], [e.get("message") for e in bad][:5]


def post(server, path: str, *, within: float = QUICK_S, **kwargs) -> requests.Response:
    """POST and fail unless the answer came within ``within`` seconds (the case's own timeout, else QUICK_S)."""
    started = time.monotonic()
    r = requests.post(server.url + path, timeout=within + 10, **kwargs)
    elapsed = time.monotonic() - started
    assert elapsed < within, f"{path} took {elapsed:.1f} s (bound {within} s)"
    return r


def assert_error(r: requests.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text[:500]
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert body["error"]["code"] == code, body
    assert "Traceback" not in r.text and "<html" not in r.text.lower()
    return body


# --- images that should not exist ------------------------------------------------------------------------

def png_claiming(width: int, height: int) -> bytes:
    """A real PNG signature and IHDR declaring width x height, with a few bytes of pixel data."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 256)) + \
        chunk(b"IEND", b"")


def gif_with_frames(n: int) -> bytes:
    frames = [Image.new("P", (8, 8), i % 200) for i in range(n)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=1, loop=0)
    return buf.getvalue()


def truncated_jpeg() -> bytes:
    data = image_bytes("JPEG", size=(64, 64), seed=3)
    return data[: len(data) // 2]


BAD_IMAGES = {
    # name: (IMAGE string, expected code)
    "invalid_base64": ("@@@ this is not base64 @@@", "invalid_image"),
    "invalid_base64_in_data_uri": ("data:image/png;base64,%%%%", "invalid_image"),
    "random_bytes": (b64(bytes(range(256)) * 8), "invalid_image"),
    "png_declaring_50000x50000": (b64(png_claiming(50_000, 50_000)), "too_large"),
    "png_2x30000_resize_bomb": (b64(image_bytes("PNG", size=(2, 30_000))), "too_large"),
    "truncated_jpeg": (b64(truncated_jpeg()), "invalid_image"),
    "empty_string": ("", "invalid_image"),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_image_fails_alone_and_the_good_one_beside_it_succeeds(server, name):
    source, code = BAD_IMAGES[name]
    alone = assert_error(post(server, "/embed/image", json={"images": [source]}), 422, "all_images_failed")
    assert [d["code"] for d in alone["error"]["details"]] == [code]
    r = post(server, "/embed/image", json={"images": [source, b64(GOOD)]})
    assert r.status_code == 200, r.text[:300]
    body = r.json()
    assert body["embeddings"][0] is None and len(body["embeddings"][1]) == body["dim"]
    assert [(e["index"], e["code"]) for e in body["errors"]] == [(0, code)]


@pytest.mark.parametrize("blob", [image_bytes("PNG", size=(1, 1)), gif_with_frames(3000)],
                         ids=["1x1_png", "gif_with_3000_frames"])
def test_odd_but_valid_images_are_embedded_quickly(server, blob):
    r = post(server, "/embed/image", json={"images": [b64(blob)]}, within=10)
    assert r.status_code == 200, r.text[:300]
    assert r.json()["errors"] == [] and len(r.json()["embeddings"][0]) == r.json()["dim"]


# --- image URLs that misbehave -----------------------------------------------------------------------------

@pytest.mark.parametrize("route, code", [("never", "fetch_timeout"), ("trickle", "fetch_timeout"),
                                         ("stream", "too_large"), ("missing", "fetch_failed")])
def test_misbehaving_url_gets_its_code_within_the_fetch_timeout(server, urls, route, code):
    r = post(server, "/embed/image", json={"images": [f"{urls.base}/{route}", f"{urls.base}/img?id=ok"]},
             within=FETCH_TIMEOUT_S + 3)
    assert r.status_code == 200, r.text[:300]
    body = r.json()
    assert [(e["index"], e["code"]) for e in body["errors"]] == [(0, code)]
    assert body["embeddings"][0] is None and body["embeddings"][1] is not None


# --- bodies that are not what they claim -------------------------------------------------------------------

DEPTH = 100_000
BAD_BODIES = {
    # name: (body bytes, content type, status, code)
    "deeply_nested_arrays": (b'{"texts": ' + b"[" * DEPTH + b"]" * DEPTH + b"}", "application/json", 400,
                             "invalid_json"),
    "deeply_nested_objects": (b'{"a":' * DEPTH + b"1" + b"}" * DEPTH, "application/json", 400, "invalid_json"),
    "not_utf8": (b'{"texts": ["caf\xe9 \xff\xfe"]}', "application/json", 400, "invalid_json"),
    "truncated_json": (b'{"texts": ["a", ', "application/json", 400, "invalid_json"),
    "json_array_not_object": (b'["a", "b"]', "application/json", 400, "invalid_request"),
    "nan_option": (b'{"texts": ["a"], "normalize": NaN}', "application/json", 400, "invalid_request"),
    "lone_surrogate_bytes": (b'{"texts": ["\xed\xa0\x80"]}', "application/json", 400, "invalid_request"),
    "texts_not_strings": (b'{"texts": [1, {"x": 2}, null]}', "application/json", 400, "invalid_request"),
    "too_many_items": (json.dumps({"texts": ["a"] * 5000}).encode(), "application/json", 400, "invalid_request"),
    "text_too_long": (json.dumps({"texts": ["a" * 501]}).encode(), "application/json", 400, "invalid_request"),
    "over_body_limit": (json.dumps({"texts": ["a" * (2 * 1024 * 1024)]}).encode(), "application/json", 413,
                        "payload_too_large"),
    "text_plain": (b'{"texts": ["a"]}', "text/plain", 415, "unsupported_media_type"),
    "xml": (b"<texts><t>a</t></texts>", "application/xml", 415, "unsupported_media_type"),
    "form_urlencoded": (b"texts=a", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    "no_content_type": (b'{"texts": ["a"]}', None, 415, "unsupported_media_type"),
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_bad_body_gets_its_status_and_code(server, name):
    body, ctype, status, code = BAD_BODIES[name]
    headers = {"Content-Type": ctype} if ctype else {}
    assert_error(post(server, "/embed/text", data=body, headers=headers), status, code)


def test_utf16_json_with_a_bom_is_read_like_utf8(server):
    """JSON's own encoding detection (RFC 4627) decodes it; the result must equal the UTF-8 request's."""
    as_utf16 = post(server, "/embed/text", data='{"texts": ["caf\u00e9"]}'.encode("utf-16"),
                    headers={"Content-Type": "application/json"})
    as_utf8 = post(server, "/embed/text", json={"texts": ["caf\u00e9"]})
    assert as_utf16.status_code == as_utf8.status_code == 200
    assert as_utf16.json()["embeddings"] == as_utf8.json()["embeddings"]


def test_chunked_body_over_the_limit_is_413_without_reading_it_all(server):
    def endless_chunks():
        yield b'{"texts": ["'
        for _ in range(64):  # 4 MiB in 64 KiB chunks, no Content-Length
            yield b"a" * 65536
        yield b'"]}'

    r = post(server, "/embed/text", data=endless_chunks(), headers={"Content-Type": "application/json"})
    assert_error(r, 413, "payload_too_large")


@pytest.mark.parametrize("text", ["\u0000", "\ud800 lone surrogate", "\U0001F600" * 100, " ", "\u202e\u200b"])
def test_strange_but_legal_strings_are_embedded(server, text):
    r = post(server, "/embed/text", data=json.dumps({"texts": [text]}), headers={"Content-Type": "application/json"})
    assert r.status_code in (200, 400), r.text[:300]  # a clean refusal is acceptable, a 500 is not
    if r.status_code == 400:
        assert r.json()["error"]["code"] in ("invalid_json", "invalid_request")


def test_multipart_with_a_non_image_part_reports_it_by_index(server):
    files = [("images", ("a.txt", b"hello, not an image", "text/plain")), ("images", ("b.png", GOOD, "image/png"))]
    r = post(server, "/embed/image", files=files)
    assert r.status_code == 200, r.text[:300]
    assert [(e["index"], e["code"]) for e in r.json()["errors"]] == [(0, "invalid_image")]


# --- the log ---------------------------------------------------------------------------------------------

def test_server_output_is_json_lines_with_no_unhandled_errors(server):
    entries = server.log_entries()  # fails on any non-JSON line
    assert entries
    assert not [e for e in entries if e["severity"] in ("ERROR", "CRITICAL")], \
        [e["message"] for e in entries if e["severity"] in ("ERROR", "CRITICAL")][:5]
    # /health answers 503 while the model loads; no other request may have ended in a 5xx.
    assert not [e for e in entries if e.get("status", 0) >= 500 and e.get("route") != "/health"]


def test_request_log_line_with_trace_header(server):
    """The line Cloud Logging will ingest: severity, trace name projects/<project>/traces/<id>, fields, no content."""
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    secret = "confidential words 91f3"
    r = post(server, "/embed/text", json={"texts": [secret, "b"]},
             headers={"X-Cloud-Trace-Context": f"{trace_id}/12345;o=1", "X-Request-ID": "trace-test-1"})
    assert r.status_code == 200 and r.headers["X-Request-ID"] == "trace-test-1"
    deadline = time.monotonic() + 5
    while True:
        lines = [e for e in server.log_entries() if e.get("request_id") == "trace-test-1" and "route" in e]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    [line] = lines
    assert line["severity"] == "INFO"
    assert line["logging.googleapis.com/trace"] == f"projects/ops-test/traces/{trace_id}"
    assert re.fullmatch(r"projects/[a-z][-a-z0-9]*/traces/[0-9a-f]{32}", line["logging.googleapis.com/trace"])
    assert line["logging.googleapis.com/spanId"] == f"{12345:016x}"
    assert line["logging.googleapis.com/trace_sampled"] is True
    assert (line["route"], line["method"], line["status"], line["texts"]) == ("/embed/text", "POST", 200, 2)
    assert line["batch_size"] >= 2 and line["queue_wait_ms"] >= 0 and line["latency_ms"] > 0
    assert line["httpRequest"]["status"] == 200
    assert secret not in server.log_text()


def test_multipart_over_the_body_limit_is_413_with_or_without_a_length(server):
    big = b"\x89PNG" + b"\0" * (2 * 1024 * 1024)
    r = post(server, "/embed/image", files=[("images", ("big.png", big, "image/png"))])
    assert_error(r, 413, "payload_too_large")

    boundary = "b0undary"

    def chunks():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"x.png\"\r\n"
               "Content-Type: image/png\r\n\r\n").encode()
        for _ in range(40):
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    r = post(server, "/embed/image", data=chunks(),
             headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert_error(r, 413, "payload_too_large")


# --- broken HTTP, below the app ------------------------------------------------------------------------------

def raw_request(server, payload: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are; return (status, headers, body) of the answer, which must come within QUICK_S."""
    import socket

    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=QUICK_S + 10) as c:
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := c.recv(65536):
            data += chunk
    assert time.monotonic() - started < QUICK_S, f"answered after {time.monotonic() - started:.1f} s"
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


BROKEN_HTTP = {
    "garbage_request_line": (b"GARBAGE\r\n\r\n", 400),
    "header_too_large": (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
    "url_too_long": (b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    "content_length_and_chunked": (b"POST /embed/text HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "bad_chunk_size": (b"POST /embed/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n", 400),
}


@pytest.mark.parametrize("name", sorted(BROKEN_HTTP))
def test_broken_http_gets_a_json_error_not_an_html_page(server, name):
    payload, status = BROKEN_HTTP[name]
    got_status, headers, body = raw_request(server, payload)
    assert got_status == status, body[:300]
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == "invalid_request"
    assert b"<html" not in body.lower()


@pytest.mark.parametrize("value", [0, 1.0, "yes", "false", [True]])
def test_json_options_must_have_their_documented_type(server, value):
    """Found by schemathesis: `"normalize": 0.0` was accepted although the schema says boolean."""
    r = post(server, "/embed/text", json={"texts": ["a"], "normalize": value})
    body = assert_error(r, 400, "invalid_request")
    assert "normalize" in body["error"]["message"]
