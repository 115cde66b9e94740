"""Download an image URL without letting a caller reach our private network (SSRF).

Rules: http and https only; the host is resolved here and every address it resolves to must be
public (unless private addresses are allowed); the connection goes to the checked address, so a
second DNS answer cannot swap in another (no DNS rebinding), while TLS still checks the certificate
and sends SNI for the host name; each redirect goes through the same checks; the body is streamed
with a byte cap, and a total deadline covers connect, headers, every redirect and every read, so a
server that trickles bytes forever still times out.

No well-kept library fits: ``advocate`` is unmaintained since 2020 and pinned to old urllib3,
``drawbridge`` is a months-old httpx wrapper. This is urllib3 (already a dependency through
requests) with the checks above; ``tests/api/test_api_fetch.py`` covers each rule.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import certifi
import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError, ReadTimeoutError

from inputs.errors import FETCH_FAILED, FETCH_TIMEOUT, FORBIDDEN_URL, TOO_LARGE, ImageError

REDIRECT_STATUSES = {301, 302, 303, 307, 308}
_CHUNK = 64 * 1024
# 64:ff9b::/96 (NAT64) embeds an IPv4 address that a NAT64 gateway would reach.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class FetchLimits:
    connect_timeout_s: float = 3.0
    total_timeout_s: float = 10.0
    max_redirects: int = 3
    max_bytes: int = 16 * 1024 * 1024
    allow_private: bool = False
    user_agent: str = "clipserve"


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (tests patch this to simulate DNS)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def is_forbidden_address(address: str) -> bool:
    """True for anything that is not a plain public unicast address, including IPv4 hidden inside IPv6."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and is_forbidden_address(str(embedded)):
            return True
    return (not ip.is_global or ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
            or ip.is_reserved or ip.is_unspecified)


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str          # ASCII (IDNA) host name or IP literal, without brackets
    port: int
    path: str          # path + query, never empty
    host_header: str


def fetch_url(url: str, limits: FetchLimits) -> bytes:
    """The body of ``url`` (after at most ``max_redirects`` checked redirects). Raises ImageError."""
    deadline = time.monotonic() + limits.total_timeout_s
    for _ in range(limits.max_redirects + 1):
        target = _parse_url(url)
        response = _open_first(target, _checked_addresses(target, limits.allow_private), limits, deadline)
        try:
            if response.status in REDIRECT_STATUSES:
                location = response.headers.get("Location")
                if not location:
                    raise ImageError(FETCH_FAILED, f"HTTP {response.status} without a Location header")
                url = urljoin(url, location)
                continue
            if response.status != 200:
                raise ImageError(FETCH_FAILED, f"the image URL answered HTTP {response.status}")
            return _read_capped(response, limits.max_bytes, deadline)
        finally:
            response.release_conn()
            response.close()
    raise ImageError(FETCH_FAILED, f"more than {limits.max_redirects} redirects")


def _parse_url(url: str) -> _Target:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ImageError(FETCH_FAILED, f"not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ImageError(FORBIDDEN_URL, f"scheme {scheme!r} is not allowed (only http and https)")
    if not parts.hostname:
        raise ImageError(FETCH_FAILED, "the URL has no host")
    try:
        host = parts.hostname.encode("idna").decode("ascii") if not _is_ip(parts.hostname) else parts.hostname
    except UnicodeError:
        raise ImageError(FETCH_FAILED, "the URL's host name is not valid") from None
    port = port or (443 if scheme == "https" else 80)
    default_port = port == (443 if scheme == "https" else 80)
    shown = f"[{host}]" if ":" in host else host
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(scheme, host, port, path, shown if default_port else f"{shown}:{port}")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _checked_addresses(target: _Target, allow_private: bool) -> list[str]:
    try:
        addresses = resolve_host(target.host, target.port)
    except (OSError, UnicodeError) as exc:
        raise ImageError(FETCH_FAILED, f"cannot resolve {target.host}: {getattr(exc, 'strerror', None) or exc}") from None
    if not addresses:
        raise ImageError(FETCH_FAILED, f"{target.host} has no address")
    if not allow_private:
        # Refuse if ANY answer is private: otherwise the check and the connection could disagree.
        for address in addresses:
            if is_forbidden_address(address):
                raise ImageError(FORBIDDEN_URL, f"{target.host} resolves to a non-public address")
    return addresses


class _ConnectFailed(ImageError):
    """This address refused or could not be reached; the host's next checked address may work."""

    def __init__(self) -> None:
        super().__init__(FETCH_FAILED, "could not connect to the image URL")


def _open_first(target: _Target, addresses: list[str], limits: FetchLimits,
                deadline: float) -> urllib3.BaseHTTPResponse:
    """Connect to the checked addresses in DNS order (e.g. IPv6 first on a host without an IPv6 route)."""
    for address in addresses[:-1]:
        try:
            return _open(target, address, limits, deadline)
        except _ConnectFailed:
            continue
    return _open(target, addresses[-1], limits, deadline)


def _open(target: _Target, address: str, limits: FetchLimits, deadline: float) -> urllib3.BaseHTTPResponse:
    remaining = _remaining(deadline)
    timeout = urllib3.Timeout(connect=min(limits.connect_timeout_s, remaining), read=remaining)
    common = dict(timeout=timeout, retries=False, maxsize=1, block=False)
    if target.scheme == "https":
        # Connect to the checked address; verify the certificate and send SNI for the URL's host name.
        pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
            address, target.port, cert_reqs="CERT_REQUIRED", ca_certs=certifi.where(),
            server_hostname=target.host, assert_hostname=target.host, **common)
    else:
        pool = urllib3.HTTPConnectionPool(address, target.port, **common)
    headers = {"Host": target.host_header, "User-Agent": limits.user_agent,
               "Accept": "image/*,*/*;q=0.5", "Accept-Encoding": "identity"}
    try:
        return pool.urlopen("GET", target.path, headers=headers, redirect=False, retries=False,
                            preload_content=False, decode_content=False, assert_same_host=False)
    except NewConnectionError as exc:  # a subclass of ConnectTimeoutError in urllib3, but usually "refused"
        if _caused_by_timeout(exc.__cause__ or exc.__context__):
            raise ImageError(FETCH_TIMEOUT, "the image URL did not answer in time") from None
        raise _ConnectFailed() from None
    except (ConnectTimeoutError, ReadTimeoutError, TimeoutError, socket.timeout):
        raise ImageError(FETCH_TIMEOUT, "the image URL did not answer in time") from None
    except (HTTPError, OSError, ValueError) as exc:
        if _caused_by_timeout(exc):
            raise ImageError(FETCH_TIMEOUT, "the image URL did not answer in time") from None
        raise ImageError(FETCH_FAILED, f"could not download the image URL ({type(exc).__name__})") from None


def _read_capped(response: urllib3.BaseHTTPResponse, max_bytes: int, deadline: float) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared and declared.strip().isdigit() and int(declared) > max_bytes:
        raise ImageError(TOO_LARGE, f"the image is larger than {max_bytes} bytes")
    body = bytearray()
    try:
        while True:
            _set_read_timeout(response, _remaining(deadline))
            chunk = response.read1(_CHUNK)  # returns after one socket read: the deadline is checked often
            if not chunk:
                return bytes(body)
            body += chunk
            if len(body) > max_bytes:
                raise ImageError(TOO_LARGE, f"the image is larger than {max_bytes} bytes")
    except ImageError:
        raise
    except (ReadTimeoutError, TimeoutError, socket.timeout):
        raise ImageError(FETCH_TIMEOUT, "the image download did not finish in time") from None
    except (HTTPError, OSError, ValueError) as exc:
        if _caused_by_timeout(exc):
            raise ImageError(FETCH_TIMEOUT, "the image download did not finish in time") from None
        raise ImageError(FETCH_FAILED, f"the image download broke off ({type(exc).__name__})") from None


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ImageError(FETCH_TIMEOUT, "the image URL did not finish within the total timeout")
    return remaining


def _set_read_timeout(response: urllib3.BaseHTTPResponse, seconds: float) -> None:
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if sock is not None:
        sock.settimeout(seconds)


def _caused_by_timeout(exc: object) -> bool:
    """Whether a timeout lies anywhere in the exception chain (urllib3 wraps them in several layers)."""
    for _ in range(8):
        if not isinstance(exc, BaseException):
            return False
        if isinstance(exc, NewConnectionError):
            exc = exc.__cause__ or exc.__context__
            continue
        if isinstance(exc, (TimeoutError, socket.timeout, ConnectTimeoutError, ReadTimeoutError)):
            return True
        exc = exc.__cause__ or exc.__context__ or getattr(exc, "reason", None)
    return False
