"""handler.client.peer_closed on real sockets: a hung-up peer is seen at once, a live or pipelining one is not."""

from __future__ import annotations

import socket

from handler.client import peer_closed


def connected_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    return client, accepted


def test_a_live_idle_client_is_not_gone():
    client, accepted = connected_pair()
    with client, accepted:
        assert not peer_closed(accepted)


def test_a_client_that_sent_more_data_is_not_gone():
    client, accepted = connected_pair()
    with client, accepted:
        client.sendall(b"GET /next HTTP/1.1\r\n")  # a pipelined request
        assert not peer_closed(accepted)
        assert accepted.recv(100).startswith(b"GET /next")  # peeking consumed nothing


def test_a_client_that_closed_is_gone():
    client, accepted = connected_pair()
    with accepted:
        client.close()
        assert peer_closed(accepted)


def test_a_closed_server_socket_is_not_reported():
    client, accepted = connected_pair()
    with client:
        accepted.close()
        assert not peer_closed(accepted)
