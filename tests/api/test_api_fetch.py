"""SSRF-safe URL fetching: forbidden targets never get a connection; hostile servers hit their limits in time."""

from __future__ import annotations

import datetime
import ssl
import time
from pathlib import Path

import pytest
import urllib3.util.connection

from api_helpers import serve_images
from inputs import ImageError, ImageLimits, load_image
from inputs import fetch as fetch_mod
from inputs.fetch import FetchLimits, fetch_url, is_forbidden_address

PUBLIC = FetchLimits(connect_timeout_s=1, total_timeout_s=2, max_redirects=2, max_bytes=200_000)
PRIVATE_OK = FetchLimits(connect_timeout_s=1, total_timeout_s=1.5, max_redirects=2, max_bytes=200_000,
                         allow_private=True)


@pytest.fixture
def connections(monkeypatch):
    """Every address urllib3 opens a TCP connection to, in order."""
    seen: list[str] = []
    real = urllib3.util.connection.create_connection

    def recording(address, *args, **kwargs):
        seen.append(address[0])
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", recording)
    return seen


@pytest.fixture
def server():
    with serve_images() as s:
        yield s


def expect_code(code: str, url: str, limits: FetchLimits = PUBLIC) -> ImageError:
    with pytest.raises(ImageError) as info:
        fetch_url(url, limits)
    assert info.value.code == code, info.value.message
    return info.value


# --- address policy ------------------------------------------------------------------------------

@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "0.0.0.0", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255", "198.18.0.1",
    "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1",   # IPv4-mapped
    "64:ff9b::a9fe:a9fe",                                               # NAT64 of 169.254.169.254
    "2002:a9fe:a9fe::1",                                                # 6to4 of 169.254.169.254
    "fe80::1%eth0",
])
def test_non_public_addresses_are_forbidden(address):
    assert is_forbidden_address(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address):
    assert not is_forbidden_address(address)


# --- forbidden targets: refused, and nothing connects --------------------------------------------

def test_loopback_url_refused_without_connecting(server, connections):
    expect_code("forbidden_url", f"{server.base}/img.png")
    assert connections == [] and server.hits == []


@pytest.mark.parametrize("url", [
    "http://[::1]/x.png", "http://10.1.2.3/x.png", "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/", "http://[::ffff:7f00:1]/", "http://2130706433/x.png",
    "http://0x7f.1/x.png", "http://0.0.0.0:8080/", "https://192.168.0.1/x.png", "http://[fe80::1]/",
])
def test_private_literal_urls_refused_without_connecting(url, connections):
    expect_code("forbidden_url", url)
    assert connections == []


def test_hostname_resolving_to_private_address_refused(server, connections, monkeypatch):
    port = server.server_address[1]
    monkeypatch.setattr(fetch_mod, "resolve_host", lambda host, p: ["127.0.0.1"])
    expect_code("forbidden_url", f"http://images.example.com:{port}/img.png")
    assert connections == [] and server.hits == []


def test_hostname_with_any_private_answer_refused(monkeypatch, connections):
    # A mixed DNS answer must not be half-trusted: the connection could go to either address.
    monkeypatch.setattr(fetch_mod, "resolve_host", lambda host, p: ["93.184.216.34", "10.0.0.7"])
    expect_code("forbidden_url", "http://mixed.example.com/img.png")
    assert connections == []


def test_redirect_from_allowed_host_to_private_host_refused(monkeypatch, connections):
    """public.test (127.0.0.1, treated as public here) redirects to internal.test (127.0.0.2, private)."""
    with serve_images("127.0.0.1") as public, serve_images("127.0.0.2") as internal:
        hosts = {"public.test": "127.0.0.1", "internal.test": "127.0.0.2"}
        monkeypatch.setattr(fetch_mod, "resolve_host", lambda host, p: [hosts.get(host, host)])
        real_check = fetch_mod.is_forbidden_address
        monkeypatch.setattr(fetch_mod, "is_forbidden_address", lambda a: a != "127.0.0.1" and real_check(a))
        pub, priv = public.server_address[1], internal.server_address[1]
        # Sanity: the allowed host really is fetched under this policy.
        assert fetch_url(f"http://public.test:{pub}/img.png", PUBLIC) == public.png
        for target in (f"http://internal.test:{priv}/img.png", f"http://127.0.0.2:{priv}/img.png",
                       "http://169.254.169.254/latest/meta-data/"):
            connections.clear()
            expect_code("forbidden_url", f"http://public.test:{pub}/redirect?to={target}")
            assert connections == ["127.0.0.1"]      # only the allowed host was contacted
        assert internal.hits == []


@pytest.mark.parametrize("value", ["file:///etc/passwd", "gopher://127.0.0.1:70/_x", "ftp://example.com/a.png",
                                   "dict://127.0.0.1:11211/stat", "FILE:///etc/hosts"])
def test_non_http_schemes_refused(value, connections):
    with pytest.raises(ImageError) as info:
        load_image(value, ImageLimits())
    assert info.value.code == "forbidden_url"
    assert connections == []


def test_redirect_to_file_scheme_refused(server):
    expect_code("forbidden_url", f"{server.base}/redirect?to=file:///etc/passwd", PRIVATE_OK)


# --- allowed fetches and hostile servers (private addresses allowed: the server is on loopback) ----

def test_fetch_returns_exact_bytes_and_connects_to_checked_address(server, connections):
    assert fetch_url(f"{server.base}/img.png", PRIVATE_OK) == server.png
    assert connections == ["127.0.0.1"]


def test_redirects_followed_up_to_the_limit(server):
    one = f"{server.base}/redirect?to=/img.jpg"
    assert fetch_url(one, PRIVATE_OK) == server.jpg
    two = f"{server.base}/redirect?to={server.base}/redirect%3Fto%3D/img.png"
    assert fetch_url(two, PRIVATE_OK) == server.png
    three = f"{server.base}/redirect?to=/redirect%3Fto%3D/redirect%253Fto%253D/img.png"
    err = expect_code("fetch_failed", three, PRIVATE_OK)
    assert "redirects" in err.message


@pytest.mark.parametrize("status", [404, 500, 204])
def test_http_error_status_is_fetch_failed(server, status):
    err = expect_code("fetch_failed", f"{server.base}/status?code={status}", PRIVATE_OK)
    assert str(status) in err.message


def test_connection_refused_is_fetch_failed():
    from api_helpers import free_port
    expect_code("fetch_failed", f"http://127.0.0.1:{free_port()}/img.png", PRIVATE_OK)


def test_next_checked_address_is_tried_when_one_refuses(server, monkeypatch, connections):
    port = server.server_address[1]
    monkeypatch.setattr(fetch_mod, "resolve_host", lambda host, p: ["127.0.0.2", "127.0.0.1"])
    assert fetch_url(f"http://images.test:{port}/img.png", PRIVATE_OK) == server.png
    assert connections == ["127.0.0.2", "127.0.0.1"]


def test_unresolvable_host_is_fetch_failed(monkeypatch):
    def fail(host, port):
        raise OSError(-2, "Name or service not known")
    monkeypatch.setattr(fetch_mod, "resolve_host", fail)
    expect_code("fetch_failed", "http://no-such-host.invalid/img.png")


def test_declared_huge_body_refused_from_header(server):
    started = time.monotonic()
    expect_code("too_large", f"{server.base}/big", PRIVATE_OK)
    assert time.monotonic() - started < 1.0


def test_endless_stream_stops_at_byte_cap(server):
    started = time.monotonic()
    expect_code("too_large", f"{server.base}/stream", PRIVATE_OK)
    assert time.monotonic() - started < 1.5


def test_trickling_server_hits_total_timeout(server):
    started = time.monotonic()
    expect_code("fetch_timeout", f"{server.base}/trickle", PRIVATE_OK)
    elapsed = time.monotonic() - started
    assert PRIVATE_OK.total_timeout_s - 0.1 < elapsed < PRIVATE_OK.total_timeout_s + 1.0


def test_server_that_never_answers_times_out(server):
    started = time.monotonic()
    expect_code("fetch_timeout", f"{server.base}/never", PRIVATE_OK)
    assert time.monotonic() - started < PRIVATE_OK.total_timeout_s + 1.0


# --- TLS: connect to the checked IP, but verify the certificate against the URL's host name ------

def _self_signed(tmp_path: Path, hostname: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def tls_server(tmp_path):
    cert, key = _self_signed(tmp_path, "images.test")
    with serve_images() as server:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        yield server, cert


def test_https_verifies_certificate_for_url_host_while_connecting_to_checked_ip(tls_server, monkeypatch, connections):
    server, cert = tls_server
    port = server.server_address[1]
    monkeypatch.setattr(fetch_mod, "resolve_host", lambda host, p: ["127.0.0.1"])
    # Untrusted certificate: refused.
    expect_code("fetch_failed", f"https://images.test:{port}/img.png", PRIVATE_OK)
    # Trusted, and issued for the URL's host name: fetched, over a connection to the checked IP.
    monkeypatch.setattr(fetch_mod.certifi, "where", lambda: str(cert))
    connections.clear()
    assert fetch_url(f"https://images.test:{port}/img.png", PRIVATE_OK) == server.png
    assert connections == ["127.0.0.1"]
    # Trusted certificate, but for another name than the URL's: refused.
    expect_code("fetch_failed", f"https://other.test:{port}/img.png", PRIVATE_OK)
