"""The demo keeps its API port across a quick restart (issue 18: TIME-WAIT is not busy)."""

from __future__ import annotations

import socket

from citybrain.platform import _port_free


def _time_wait_port() -> int:
    """A port whose only socket left is in TIME-WAIT, as after a stopped server."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = int(listener.getsockname()[1])
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server side closes first: its end goes to TIME-WAIT
    client.recv(1)  # sees the FIN
    client.close()
    listener.close()
    return port


def test_time_wait_sockets_do_not_make_the_port_busy() -> None:
    assert _port_free("127.0.0.1", _time_wait_port())


def test_a_listening_socket_makes_the_port_busy() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn listens
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        assert not _port_free("127.0.0.1", int(s.getsockname()[1]))
