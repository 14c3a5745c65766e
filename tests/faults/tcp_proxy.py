"""A tiny TCP proxy that can cut the database away from a worker (PostgreSQL only)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

from django.db import connection


def is_postgresql() -> bool:
    return connection.vendor == "postgresql"


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target, until told to fail.

    `outage(seconds)` closes every open connection and refuses new ones (accepted, then
    closed at once, as a server that is going down does) for that long. `cut_when` arms a
    trip wire on client-to-server bytes: the first packet that matches starts an outage
    *instead of* reaching the server; `cut_after_reply_to` lets a matching packet through,
    waits for the server's reply (so the server has acted on it) and then starts an
    outage without passing the reply on: the client cannot know whether it happened.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.refuse_until = 0.0
        self.closed = False
        self.sockets: set[socket.socket] = set()
        self.trip_before: Callable[[bytes], bool] | None = None
        self.trip_after_reply: Callable[[bytes], bool] | None = None
        self.outage_seconds = 0.0
        self.tripped = threading.Event()
        self.outage_started_at: float | None = None
        self.outage_ended_at: float | None = None
        self.refused = 0
        threading.Thread(target=self._accept_loop, daemon=True, name="tcp-proxy").start()

    # -- control ---------------------------------------------------------------------

    def outage(self, seconds: float) -> None:
        with self.lock:
            now = time.monotonic()
            self.refuse_until = now + seconds
            self.outage_started_at, self.outage_ended_at = now, now + seconds
            victims = list(self.sockets)
            self.sockets.clear()
        for victim in victims:
            self._close(victim)

    def cut_when(self, matches: Callable[[bytes], bool], *, seconds: float) -> None:
        self.trip_before, self.outage_seconds = matches, seconds

    def cut_after_reply_to(self, matches: Callable[[bytes], bool], *, seconds: float) -> None:
        self.trip_after_reply, self.outage_seconds = matches, seconds

    def is_refusing(self) -> bool:
        return time.monotonic() < self.refuse_until

    def close(self) -> None:
        self.closed = True
        self._close(self.listener)
        self.outage(0)

    # -- plumbing ----------------------------------------------------------------------

    @staticmethod
    def _close(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()

    def _accept_loop(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.is_refusing():
                self.refused += 1
                self._close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                self._close(client)
                continue
            with self.lock:
                self.sockets.update((client, upstream))
            pair = {"await_reply": False}
            threading.Thread(
                target=self._pump, args=(client, upstream, pair, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(upstream, client, pair, False), daemon=True
            ).start()

    def _trip(self) -> None:
        self.trip_before = self.trip_after_reply = None
        self.tripped.set()
        self.outage(self.outage_seconds)

    def _pump(
        self, source: socket.socket, sink: socket.socket, pair: dict, to_server: bool
    ) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if to_server and self.trip_before is not None and self.trip_before(data):
                    self._trip()
                    break
                if to_server and self.trip_after_reply is not None and self.trip_after_reply(data):
                    pair["await_reply"] = True
                elif not to_server and pair["await_reply"]:
                    self._trip()  # the server answered; the client never hears it
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with self.lock:
                    self.sockets.discard(sock)
                self._close(sock)


def database_url_through(proxy: TcpProxy) -> str:
    database = connection.settings_dict
    user = database.get("USER") or "postgres"
    password = f":{database['PASSWORD']}" if database.get("PASSWORD") else ""
    return f"postgres://{user}{password}@127.0.0.1:{proxy.port}/{database['NAME']}"
