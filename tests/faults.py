"""Fault injection for tests: a TCP proxy in front of a real server
(PostgreSQL, Redis) that can refuse connections and cut the open ones, then
let them through again."""

from __future__ import annotations

import socket
import threading
import weakref


def _shared_socket() -> socket.socket:
    """A TCP socket that may be bound to a port another one of this process holds
    (SO_REUSEPORT): how the proxy keeps its port while it is down."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


class ToggleProxy:
    """A TCP proxy on loopback to a real server that can be switched off and on.

    Its port is the kernel's choice, and stays the proxy's while it is down: a
    socket bound to it without listening (connections are refused) holds it
    until the proxy listens again, so no other process (another test run at the
    same time) can take it in between.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener: socket.socket | None = None
        self._hold: socket.socket | None = None
        self.port = 0
        self.conns: list[socket.socket] = []
        #: Hung: connections are accepted and bytes read, but nothing is forwarded either way.
        self.hung = False
        self.up()

    def up(self) -> None:
        self.listener = _shared_socket()
        self.listener.bind(("127.0.0.1", self.port))
        self.port = self.listener.getsockname()[1]
        self.listener.listen()
        if self._hold is not None:
            self._hold.close()
            self._hold = None
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def down(self) -> None:
        assert self.listener is not None
        if self._hold is None:  # keep the port (closed when the proxy is collected)
            self._hold = _shared_socket()
            self._hold.bind(("127.0.0.1", self.port))
            weakref.finalize(self, self._hold.close)
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.listener.close()
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self.conns.clear()

    def hang(self, hung: bool = True) -> None:
        """Stop forwarding (a server that accepts and never answers), or resume."""
        self.hung = hung

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self.hung:  # swallow what it sends: never connect, never answer
                self.conns.append(client)
                threading.Thread(target=self._swallow, args=(client,), daemon=True).start()
                continue
            server = socket.create_connection(self.target)
            self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _swallow(conn: socket.socket) -> None:
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if not self.hung:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass
