"""The client's rules, against scripted answers (httpx.MockTransport stands in for the service so each rule can be
forced: a 429 with Retry-After, a refused item, a 500 that outlives its retries). The real service is driven in
test_client_wheel.py and test_client_local.py."""

from __future__ import annotations

import asyncio
import base64
import time

import httpx
import numpy as np
import pytest

from clipserve_client import (AsyncClient, Client, Encoded, InvalidInput, Overloaded, RetryPolicy, ServerError,
                              Timeout, Unauthorized, UnexpectedAnswer)

DIM = 4
ROOT = {"model": {"variant": "english", "dim": DIM}, "models": [{"id": "english", "default": True, "dim": DIM}],
        "limits": {"max_items": 3, "max_body_bytes": 10_000, "search_max_top_k": 100}}
FAST = RetryPolicy(max_retries=3, backoff_s=0.001, backoff_max_s=0.01)


def vector_of(text: str) -> list[float]:
    seed = sum(map(ord, text))
    return [float(seed % 7), float(seed % 5), 1.0, float(len(text))]


def b64(values: list[float]) -> str:
    return base64.b64encode(np.asarray(values, "<f4").tobytes()).decode()


class Service:
    """Answers like clipserve: texts get vector_of(text); 'bad' is refused (400); 'poison' fails (500)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict]] = []
        self.script: list[httpx.Response] = []  # answered first, in order, whatever the request

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/":
            return httpx.Response(200, json=ROOT)
        body = __import__("json").loads(request.content)
        self.requests.append((request.url.path, body))
        if self.script:
            return self.script.pop(0)
        texts = body.get("texts", [])
        if "bad" in texts:
            return httpx.Response(400, json={"error": {"code": "invalid_request", "message": "texts[?]: bad"}})
        if "poison" in texts:
            return httpx.Response(500, json={"error": {"code": "internal_error", "message": "boom"}})
        if request.url.path == "/embed/image":
            images = body["images"]
            errors = [{"index": i, "code": "invalid_image", "message": "cannot decode"}
                      for i, im in enumerate(images) if im == "broken"]
            failed = {e["index"] for e in errors}
            return httpx.Response(200, json={"embeddings": [None if i in failed else b64(vector_of(im))
                                                            for i, im in enumerate(images)],
                                             "errors": errors, "model": {"variant": "english"}})
        return httpx.Response(200, json={"embeddings": [b64(vector_of(t)) for t in texts], "truncated": [],
                                         "model": {"variant": "english"}})


def client(service: Service, **kwargs) -> Client:
    return Client("http://svc", transport=httpx.MockTransport(service), retry=kwargs.pop("retry", FAST), **kwargs)


def test_a_long_list_is_cut_to_the_limits_and_comes_back_in_order():
    service = Service()
    texts = [f"text {i}" for i in range(10)]
    with client(service, concurrency=3) as clip:
        result = clip.embed_text(texts)
    assert sorted(len(body["texts"]) for _, body in service.requests) == [1, 3, 3, 3]  # max_items from GET /
    np.testing.assert_array_equal(result.vectors, np.array([vector_of(t) for t in texts], np.float32))
    assert result.ok and result.model == "english" and result.vectors.dtype == np.float32


def test_a_refused_item_is_isolated_and_the_others_succeed():
    service = Service()
    texts = ["a", "b", "bad", "c", "d"]
    with client(service) as clip:
        result = clip.embed_text(texts)
    assert [(e.index, e.code) for e in result.errors] == [(2, "invalid_request")]
    assert np.isnan(result.vectors[2]).all() and list(result.succeeded) == [True, True, False, True, True]
    np.testing.assert_array_equal(result.vectors[[0, 1, 3, 4]], [vector_of(t) for t in "abcd"])
    with pytest.raises(Exception, match="1 item"):
        result.raise_for_errors()


def test_per_image_errors_and_local_failures_are_values_at_their_index(tmp_path):
    service = Service()
    image = tmp_path / "x.jpg"
    image.write_bytes(b"jpeg bytes")
    with client(service) as clip:
        result = clip.embed_image([image, Encoded("broken"), str(tmp_path / "missing.jpg"), b"raw", "https://h/x.jpg"])
    assert [(e.index, e.code) for e in result.errors] == [(1, "invalid_image"), (2, "file_not_found")]
    sent = [im for _, body in service.requests for im in body["images"]]  # chunks run concurrently: any order
    expected = [base64.b64encode(b"jpeg bytes").decode(), "broken", base64.b64encode(b"raw").decode(),
                "https://h/x.jpg"]
    assert sorted(sent) == sorted(expected)  # the missing file was never sent
    np.testing.assert_array_equal(result.vectors[4], vector_of("https://h/x.jpg"))


def test_429_with_retry_after_is_waited_for_and_retries_are_reported():
    service = Service()
    service.script = [httpx.Response(429, headers={"Retry-After": "1"}, json={"error": {"code": "overloaded"}})]
    reasons: list[str] = []
    with client(service, on_retry=reasons.append) as clip:
        started = time.monotonic()
        result = clip.embed_text(["a"])
    assert time.monotonic() - started >= 1.0 and result.ok and reasons == ["HTTP 429"]


def test_retries_that_run_out_raise_the_typed_error():
    service = Service()
    service.script = [httpx.Response(429, json={"error": {"code": "overloaded", "message": "busy"}})] * 4
    with client(service) as clip, pytest.raises(Overloaded) as raised:
        clip.embed_text(["a"])
    assert raised.value.status == 429 and raised.value.code == "overloaded"
    assert len(service.requests) == 4  # the first try and 3 retries


def test_401_is_not_retried():
    service = Service()
    service.script = [httpx.Response(401, json={"error": {"code": "unauthorized", "message": "no key"}})]
    with client(service) as clip, pytest.raises(Unauthorized):
        clip.embed_text(["a"])
    assert len(service.requests) == 1


def test_a_500_pinned_on_one_item_is_its_error_but_a_service_failing_on_everything_raises():
    service = Service()
    with client(service) as clip:
        result = clip.embed_text(["a", "poison", "b"])
    assert [(e.index, e.code) for e in result.errors] == [(1, "internal_error")]
    # the chunk got its retries; the halves none for 500
    poisoned = [body for _, body in service.requests if "poison" in body["texts"]]
    assert [len(b["texts"]) for b in poisoned] == [3, 3, 3, 3, 2, 1]
    with client(Service()) as clip, pytest.raises(ServerError):
        clip.embed_text(["poison"])


def test_an_answer_that_breaks_the_contract_raises():
    service = Service()
    service.script = [httpx.Response(200, json={"embeddings": [b64([0.0] * DIM)]})]  # one vector for two texts
    with client(service) as clip, pytest.raises(UnexpectedAnswer):
        clip.embed_text(["a", "b"])


def test_scoring_more_labels_than_a_request_holds_is_refused_before_sending():
    service = Service()
    with client(service) as clip, pytest.raises(InvalidInput, match="at most 3"):
        clip.score(["a", "b", "c", "d"], [b"img"])
    assert service.requests == []


def test_the_async_client_gives_the_same_answers():
    service = Service()
    texts = [f"t{i}" for i in range(8)] + ["bad"]

    async def run():
        async with AsyncClient("http://svc", transport=httpx.MockTransport(service), retry=FAST) as clip:
            return await clip.embed_text(texts)

    result = asyncio.run(run())
    assert [(e.index, e.code) for e in result.errors] == [(8, "invalid_request")]
    np.testing.assert_array_equal(result.vectors[:8], [vector_of(t) for t in texts[:8]])


def test_a_refusal_that_is_not_an_items_fault_raises_with_the_index_the_service_names():
    service = Service()
    service.script = [httpx.Response(400, json={"error": {"code": "unknown_model", "message": "no such model"}}),
                      httpx.Response(400, json={"error": {"code": "invalid_json", "message": "texts[7]: bad"}})]
    with client(service) as clip:
        with pytest.raises(Exception) as unknown:
            clip.embed_text(["a"], model="nope")
        assert type(unknown.value).__name__ == "UnknownModel" and len(service.requests) == 1  # not split, not retried
        with pytest.raises(InvalidInput) as invalid:
            clip.embed_text(["a", "b"])
        assert invalid.value.index == 7 and invalid.value.code == "invalid_json"


def test_a_calls_timeout_bounds_its_requests_and_retries():
    service = Service()
    service.script = [httpx.Response(503, headers={"Retry-After": "2"}, json={"error": {"code": "model_loading"}})] * 3
    with client(service, retry=RetryPolicy(max_retries=8)) as clip:
        started = time.monotonic()
        with pytest.raises(Timeout) as raised:
            clip.embed_text(["a"], timeout=0.5)  # the Retry-After would end after the call's timeout
        assert time.monotonic() - started < 0.5 and raised.value.code == "call_timeout"
        assert "model_loading" in raised.value.message and len(service.requests) == 1
        assert clip.embed_text(["b"], timeout=30).ok  # another call, its own timeout (after the service's 2 s)
