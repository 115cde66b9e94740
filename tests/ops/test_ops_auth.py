"""API keys: Bearer check against every key, 401 in the one error shape, /health exempt, keys from a file."""

from __future__ import annotations

import pytest

from handler.auth import key_matches, load_api_keys
from infra.settings import Settings, SettingsError
from ops_support import capture, minimal_app

UNAUTHORIZED = {"error": {"code": "unauthorized", "message": "missing or invalid API key"}}


@pytest.fixture
def client():
    return minimal_app(Settings(api_keys="key-one, key-two")).test_client()


def _text(client, headers):
    return client.post("/embed/text", json={"texts": ["a"]}, headers=headers)


def test_without_keys_configured_everything_is_open():
    assert _text(minimal_app(Settings()).test_client(), {}).status_code == 200


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong"},
    {"Authorization": "Bearer key-one-and-more"},
    {"Authorization": "Bearer key-on"},
    {"Authorization": "Basic key-one"},
    {"Authorization": "key-one"},
    {"Authorization": "Bearer "},
    {"Authorization": "Bearer ключ"},  # non-ASCII must be a clean 401, never a 500
])
def test_missing_or_wrong_key_gets_401_in_the_error_shape_without_detail(client, headers):
    r = _text(client, headers)
    assert r.status_code == 401
    assert r.get_json() == UNAUTHORIZED
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("key", ["key-one", "key-two"])
def test_any_configured_key_is_accepted(client, key):
    assert _text(client, {"Authorization": f"Bearer {key}"}).status_code == 200
    assert _text(client, {"Authorization": f"bearer  {key} "}).status_code == 200


def test_health_is_exempt_but_everything_else_needs_a_key(client):
    assert client.get("/health").status_code == 200
    assert client.get("/no-such-route").status_code == 401  # no route discovery without a key


def test_refused_request_still_gets_a_request_id_and_a_log_line():
    settings = Settings(api_keys="k")
    for cap in capture(settings):
        r = minimal_app(settings).test_client().post("/embed/text", json={"texts": ["a"]},
                                                     headers={"Authorization": "Bearer nope"})
        [line] = cap.request_lines()
        assert r.status_code == 401 and line["error_code"] == "unauthorized"
        assert line["request_id"] == r.headers["X-Request-ID"]
        assert "nope" not in cap.buffer.getvalue()


def test_keys_from_a_file_with_comments_and_from_the_env_both_work(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# rotated 2026-01\nfile-key-1\n\n  file-key-2 , file-key-3\n")
    settings = Settings(api_keys="env-key", api_keys_file=path)
    assert load_api_keys(settings) == (b"env-key", b"file-key-1", b"file-key-2", b"file-key-3")
    client = minimal_app(settings).test_client()
    assert _text(client, {"Authorization": "Bearer file-key-3"}).status_code == 200
    assert _text(client, {"Authorization": "Bearer # rotated 2026-01"}).status_code == 401


def test_unreadable_or_empty_key_file_fails_at_start_up(tmp_path):
    with pytest.raises(SettingsError, match="API_KEYS_FILE"):
        minimal_app(Settings(api_keys_file=tmp_path / "missing"))
    (tmp_path / "empty").write_text("# nothing yet\n\n")
    with pytest.raises(SettingsError, match="holds no key"):
        minimal_app(Settings(api_keys_file=tmp_path / "empty"))


def test_keys_are_read_from_env_vars_and_never_shown_in_the_settings_repr(tmp_path):
    settings = Settings.from_env({"API_KEYS": "s3cret-a,s3cret-b", "API_KEYS_FILE": str(tmp_path / "k")})
    assert settings.api_keys == "s3cret-a,s3cret-b"
    assert "s3cret" not in repr(settings)


def test_key_matches_checks_every_key():
    keys = (b"alpha", b"beta", b"gamma")
    assert [key_matches(k, keys) for k in (b"alpha", b"gamma", b"delta", b"", b"alphabeta")] == \
        [True, True, False, False, False]
    assert key_matches(b"anything", ()) is False


def test_key_matches_compares_equal_length_digests_not_the_keys(monkeypatch):
    # hmac.compare_digest exits early on a length mismatch: what it sees must never depend on the keys' lengths.
    import hmac

    from handler import auth

    seen = []
    real = hmac.compare_digest

    def spy(a, b):
        seen.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    keys = (b"k", b"a-much-longer-key-" * 8)
    assert key_matches(b"k", keys) is True and key_matches(b"x" * 500, keys) is False
    assert seen == [(32, 32)] * 4  # every key compared each time, always as 32-byte SHA-256 digests
