"""Whether the client of the current request is still connected (so its queued items can be dropped).

A WSGI app cannot see a disconnect directly, but gunicorn hands us the connection's socket: a
peer that closed it makes the socket readable with nothing to read. Requests served without a
socket (Lambda, the test client) are never reported gone.
"""

from __future__ import annotations

import select
import socket
from typing import Callable

from flask import request


def disconnect_check() -> Callable[[], bool] | None:
    """A cheap callable that says whether this request's client hung up; None where that cannot be known."""
    sock = request.environ.get("gunicorn.socket")
    if not isinstance(sock, socket.socket) or hasattr(sock, "getpeercert"):  # TLS: peeking would break framing
        return None
    return lambda: peer_closed(sock)


def peer_closed(sock: socket.socket) -> bool:
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except (ConnectionError, TimeoutError):
        return True
    except (OSError, ValueError):  # closed or odd socket: we cannot tell, so keep working
        return False
