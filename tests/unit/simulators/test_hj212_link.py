"""An HJ 212 station's link reconnects when the server closed it (idle timeout), as a data logger does."""

from __future__ import annotations

import socket

from simulators.fleet import Hj212Link


def test_a_link_the_server_closed_reconnects_and_delivers_the_frame() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(10)
        link = Hj212Link("127.0.0.1", server.getsockname()[1])
        try:
            first, _ = server.accept()
            first.close()  # the server's idle timeout
            # The link's reader sees EOF; wait for it rather than sleep.
            assert link._closed.wait(10)
            link.send(b"##0001frame\r\n")
            second, _ = server.accept()
            with second:
                second.settimeout(10)
                assert second.recv(100) == b"##0001frame\r\n"
            assert link.reconnects == 1
        finally:
            link.close()
