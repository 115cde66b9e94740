"""Settings: documented defaults, typed parsing, and a boot failure naming the variable for any bad value."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from infra.settings import Settings, SettingsError

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_without_environment():
    s = Settings.from_env({})
    assert (s.model_variant, s.model_dir, s.port, s.torch_threads) == ("english", Path("/models"), 8080, None)
    assert s.allow_private_urls is False
    assert s.max_body_bytes < 32 * 1024 * 1024      # under Cloud Run's request limit


def test_reads_process_environment(monkeypatch):
    monkeypatch.setenv("PORT", "9001")
    monkeypatch.setenv("MODEL_VARIANT", "multilingual")
    monkeypatch.setenv("ALLOW_PRIVATE_URLS", "yes")
    monkeypatch.setenv("TORCH_THREADS", "auto")
    monkeypatch.setenv("BATCH_MAX_WAIT_MS", "2.5")
    monkeypatch.setenv("MAX_IMAGE_PIXELS", "1_000_000")
    s = Settings.from_env()
    assert (s.port, s.model_variant, s.allow_private_urls, s.torch_threads) == (9001, "multilingual", True, None)
    assert s.batch_max_wait_ms == 2.5 and s.max_image_pixels == 1_000_000


@pytest.mark.parametrize("raw,expected", [("1", True), ("TRUE", True), ("on", True), ("0", False), ("no", False),
                                          ("", False)])
def test_booleans(raw, expected):
    assert Settings.from_env({"ALLOW_PRIVATE_URLS": raw}).allow_private_urls is expected


@pytest.mark.parametrize("name,raw", [
    ("PORT", "3O"), ("PORT", "0"), ("PORT", "70000"), ("MODEL_VARIANT", "klingon"), ("ALLOW_PRIVATE_URLS", "maybe"),
    ("FETCH_TIMEOUT_S", "nan"), ("FETCH_TIMEOUT_S", "-1"), ("MAX_BODY_BYTES", str(64 * 1024 * 1024)),
    ("TORCH_THREADS", "zero"), ("MAX_ITEMS", "1.5"), ("MODEL_DIR", ""),
])
def test_bad_values_fail_naming_the_variable(name, raw):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: raw})


def test_cross_field_rule():
    with pytest.raises(SettingsError, match="QUEUE_SIZE"):
        Settings.from_env({"QUEUE_SIZE": "10", "MAX_ITEMS": "20"})


def test_every_field_has_an_env_var_and_a_description():
    names = [d["env"] for d in Settings.documented()]
    assert len(names) == len(set(names)) == len(dataclasses.fields(Settings))
    assert all(d["doc"] for d in Settings.documented())


def test_the_documented_table_is_the_one_the_code_generates():
    """Every variable with its real default and description: the docs' rows cannot drift from the code."""
    page = (ROOT / "docs" / "configuration.md").read_text()
    table = Settings.markdown_table()
    missing = [row for row in table.splitlines() if row not in page.splitlines()]
    assert not missing, f"docs/configuration.md table is stale (regenerate with python -m infra.settings): {missing}"


def test_gunicorn_refuses_to_boot_on_a_bad_value():
    env = {"PATH": "/usr/bin:/bin", "PORT": "80a"}
    result = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "infra/gunicorn.conf.py", "--check-config",
                             "handler.wsgi:app"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "PORT='80a'" in result.stdout + result.stderr
