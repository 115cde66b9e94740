"""CORS_ORIGINS: a browser app on an allowed origin gets the headers (preflight and the call itself, with API keys
on), any other origin gets none, and unset means no CORS headers at all."""

from __future__ import annotations

import pytest

from infra.settings import Settings, SettingsError
from ops_support import minimal_app

APP = "https://app.example.com"
PREFLIGHT = {"Origin": APP, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type, x-request-id"}


def _client(**settings):
    return minimal_app(Settings(**settings)).test_client()


def test_preflight_from_an_allowed_origin_is_answered_without_a_key():
    r = _client(cors=APP, api_keys="secret-key").options("/embed/text", headers=PREFLIGHT)
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == APP
    assert {"POST", "GET"} <= {m.strip() for m in r.headers["Access-Control-Allow-Methods"].split(",")}
    allowed = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "x-request-id"} <= allowed
    assert "Access-Control-Allow-Credentials" not in r.headers


def test_the_call_itself_from_an_allowed_origin_exposes_the_headers_clients_read():
    client = _client(cors=f"{APP}, http://localhost:3000", api_keys="secret-key")
    r = client.post("/embed/text", json={"texts": ["a"]}, headers={"Origin": APP, "Authorization": "Bearer secret-key"})
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == APP
    assert "x-request-id" in r.headers["Access-Control-Expose-Headers"].lower()
    assert "Origin" in r.headers.get("Vary", "")  # a shared cache never hands one origin's answer to another
    refused = client.post("/embed/text", json={"texts": ["a"]}, headers={"Origin": APP})
    assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == APP  # the page can read why


def test_a_disallowed_origin_gets_no_cors_headers():
    client = _client(cors=APP)
    for r in (client.options("/embed/text", headers={**PREFLIGHT, "Origin": "https://evil.example"}),
              client.post("/embed/text", json={"texts": ["a"]}, headers={"Origin": "https://evil.example"})):
        assert not [h for h in r.headers.keys() if h.lower().startswith("access-control-")]


def test_unset_means_no_cors_and_a_preflight_still_needs_nothing_else():
    client = _client(api_keys="secret-key")
    r = client.post("/embed/text", json={"texts": ["a"]}, headers={"Origin": APP, "Authorization": "Bearer secret-key"})
    assert r.status_code == 200
    assert not [h for h in r.headers.keys() if h.lower().startswith("access-control-")]
    # an OPTIONS that is not a CORS preflight is not let past the key
    assert client.options("/embed/text").status_code == 401


def test_star_allows_any_origin_without_credentials():
    r = _client(cors="*").options("/v1/embeddings", headers={**PREFLIGHT, "Origin": "http://anything.test:8000"})
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in r.headers


@pytest.mark.parametrize("value", ["app.example.com", "https://app.example.com/path", "*, https://a.example"])
def test_a_malformed_origin_stops_the_boot(value):
    with pytest.raises(SettingsError, match="CORS_ORIGINS"):
        Settings(cors=value)
