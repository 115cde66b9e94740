"""gunicorn settings: one worker process (one copy of the model), several threads, bound to $PORT.

Run: ``gunicorn -c infra/gunicorn.conf.py handler.wsgi:app``. Every value comes from
``infra.settings.Settings`` (env vars), so a bad value fails here at boot, naming the variable.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys

# gunicorn loads this file by path; make the project importable however it was started.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gunicorn.util  # noqa: E402

from infra.logs import gunicorn_logconfig  # noqa: E402
from infra.settings import Settings  # noqa: E402

_settings = Settings.from_env()

bind = f"[{_settings.host}]:{_settings.port}" if ":" in _settings.host else f"{_settings.host}:{_settings.port}"
# One process: the model is CPU-bound and large; a second worker would double the memory and fight
# for the same cores. Request threads mostly wait (fetching images, or on the inference thread).
workers = 1
worker_class = "gthread"
threads = _settings.http_threads
# Worker heartbeat (gthread beats from its main loop, so long requests do not trip it): a worker
# that stops beating for this long is restarted.
timeout = 60
# Cloud Run sends SIGTERM and kills 10 s later: finish accepted requests within 8 s, then exit.
graceful_timeout = 8
keepalive = 5
# Import the app in the worker, after fork: no thread or model crosses a fork.
preload_app = False
# The heartbeat file lives in memory, not on the container's (possibly slow or read-only) disk.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
errorlog = "-"
accesslog = None
loglevel = _settings.log_level.lower()
# gunicorn's own lines as JSON on stdout, like the app's (the app logs one line per request itself).
logconfig_dict = gunicorn_logconfig(_settings)
# No runtime-management socket (gunicorn >= 25 opens one in $HOME by default): nothing in the container
# uses it, and concurrent servers (tests) would share and unlink the same path.
control_socket_disable = True


def _json_write_error(sock, status_int: int, reason: str, mesg: str) -> None:  # noqa: ANN001
    """gunicorn's own protocol errors (bad request line, headers or URL too long, bad framing) as the API's JSON.

    They happen before the app sees the request, and gunicorn would answer with an HTML page.
    """
    code = "internal_error" if status_int >= 500 else "invalid_request"
    body = json.dumps({"error": {"code": code, "message": f"{reason}: {mesg}"[:300]}}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
    gunicorn.util.write_nonblock(sock, head + body)


if hasattr(gunicorn.util, "write_error"):
    gunicorn.util.write_error = _json_write_error


def when_ready(server) -> None:  # noqa: ANN001
    """Listeners are open: give them a kernel receive/send timeout, which every accepted connection inherits.

    gthread reads headers and bodies with blocking calls and no timeout, so a few clients that send half
    a request and stop (slowloris) would hold every request thread, /health included, forever. With
    SO_RCVTIMEO/SO_SNDTIMEO a read or write that makes no progress for CLIENT_TIMEOUT_S fails and the
    connection is closed. Idle kept-alive connections wait in gunicorn's poller and are not affected.
    """
    seconds = int(_settings.client_timeout_s)
    value = struct.pack("ll", seconds, int((_settings.client_timeout_s - seconds) * 1e6))
    for listener in server.LISTENERS:
        listener.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        listener.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def _api(worker):  # noqa: ANN001, ANN202 - gunicorn objects
    return getattr(worker.wsgi, "extensions", {}).get("clipserve")


def post_fork(server, worker) -> None:  # noqa: ANN001
    """In the new worker, before any of its threads exist: at most 2 glibc malloc arenas.

    glibc gives each thread its own arena and keeps freed memory there, so every request thread that
    once decoded a large image kept ~300 MB: 4 requests of 40 MP images peaked 2.0 GB above the model
    with DECODE_CONCURRENCY=2, against 0.65 GB with two arenas (the MALLOC_ARENA_MAX=2 advice for
    threaded servers, applied here so it holds however the process is started).
    """
    _limit_malloc_arenas(2)


def _limit_malloc_arenas(count: int) -> None:
    import ctypes
    import ctypes.util

    m_arena_max = -8  # glibc's mallopt parameter number for M_ARENA_MAX
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(m_arena_max, count)
    except (OSError, AttributeError):
        pass  # not glibc (musl, macOS): nothing to tune


def post_worker_init(worker) -> None:  # noqa: ANN001
    """Right after the worker imported the app: start loading the model (and the inference thread) and
    opening the search index, side by side.

    (``post_fork`` runs before the app is imported, so it has nothing to start yet.)
    """
    api = _api(worker)
    if api is not None:
        api.start()


def worker_exit(server, worker) -> None:  # noqa: ANN001
    """After the worker finished its accepted requests: stop the inference thread, then export the spans still
    queued (OTEL_ENABLED). Both within Cloud Run's 10 s after SIGTERM: up to 8 s of requests, 2 + 1.5 s here."""
    api = _api(worker)
    if api is not None:
        api.shutdown(timeout=2.0)
    from infra import tracing

    tracing.shutdown(timeout_s=1.5)
