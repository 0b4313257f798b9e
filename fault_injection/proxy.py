"""A TCP proxy on the PostgreSQL wire that can lose a COMMIT's acknowledgement.

The proxy sits between a client and one server and forwards bytes unchanged,
reading the PostgreSQL frontend/backend protocol only to know where one message
ends and the next begins
(https://www.postgresql.org/docs/15/protocol-message-formats.html). It does two
things with that knowledge:

* It watches the server's ``ErrorResponse`` messages, so a fault that makes the
  server refuse a statement (no privilege, no pg_cron, a lock timeout) can be
  shown to have fired, together with the statement that drew the error.
* It cuts connections on the Nth ``COMMIT`` (``commit.ack_lost``). psycopg
  sends ``COMMIT`` as a simple ``Query`` message, or, in pipeline mode, as a
  ``Parse`` of ``COMMIT`` followed by ``Sync``; both are recognised. At the cut
  the proxy either forwards the whole ``COMMIT`` and closes both sides before
  the reply can come back (the server reads the message, commits, and its
  reply is lost), or forwards only the first bytes of it and closes (the server
  sees a truncated message and end of file inside the transaction, and rolls
  back). Which of the two happens is drawn at random, so over repeated runs the
  client, which gets the same "server closed the connection" error either way,
  meets both real outcomes.

Known shortcoming: a server that accepts TLS cannot be observed, because the
proxy does not terminate TLS; :meth:`WireProxy.dsn_for` therefore disables
TLS and GSS encryption on the connections it hands out, and a connection that
negotiates TLS anyway is forwarded blindly and never cut.
"""

from __future__ import annotations

import logging
import random
import selectors
import socket
import struct
import threading
from dataclasses import dataclass

from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = ["Cut", "ServerError", "WireProxy"]

logger = logging.getLogger(__name__)

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102
_CHUNK = 65536


@dataclass(frozen=True)
class Cut:
    """One connection the proxy cut at a COMMIT.

    ``forwarded`` is ``"whole"`` when the server received the whole COMMIT
    (it commits; only the reply is lost) and ``"partial"`` when it received
    only ``sent`` of the message's bytes (it rolls back).
    """

    commit_number: int
    forwarded: str
    sent: int
    length: int


@dataclass(frozen=True)
class ServerError:
    """An ErrorResponse the server sent, with the statement that drew it."""

    sqlstate: str
    message: str
    statement: str | None


class _Reader:
    """Splits one direction of the byte stream into whole protocol messages."""

    def __init__(self, *, startup: bool) -> None:
        self.buffer = b""
        self.untyped = startup  # the client's first messages have no type byte
        self.single_bytes = 0  # server answers to SSL/GSS requests: one byte

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        messages = []
        while True:
            if self.single_bytes and self.buffer:
                messages.append(self.buffer[:1])
                self.buffer = self.buffer[1:]
                self.single_bytes -= 1
                continue
            header = 4 if self.untyped else 5
            if len(self.buffer) < header:
                return messages
            length = struct.unpack("!I", self.buffer[header - 4 : header])[0]
            total = length + (0 if self.untyped else 1)
            if len(self.buffer) < total:
                return messages
            messages.append(self.buffer[:total])
            self.buffer = self.buffer[total:]


def _cstrings(body: bytes) -> list[bytes]:
    return body.split(b"\x00")


def _is_commit(text: bytes) -> bool:
    return text.strip().rstrip(b";").strip().upper() in (b"COMMIT", b"END")


class _Session:
    """One proxied client connection and its server connection."""

    def __init__(self, proxy: WireProxy, client: socket.socket, server: socket.socket):
        self.proxy = proxy
        self.client = client
        self.server = server
        self.from_client = _Reader(startup=True)
        self.from_server = _Reader(startup=False)
        self.blind = False  # TLS was negotiated: forward without reading
        self.last_statement: str | None = None
        self.pending_commit: list[bytes] | None = None  # extended-protocol COMMIT
        self.closed = False

    def run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.client, selectors.EVENT_READ, "client")
        selector.register(self.server, selectors.EVENT_READ, "server")
        try:
            while not self.closed and not self.proxy._stopping.is_set():
                for key, _ in selector.select(timeout=0.2):
                    data = key.fileobj.recv(_CHUNK)  # type: ignore[union-attr]
                    if not data:
                        self.close()
                        break
                    if key.data == "client":
                        self._from_client(data)
                    else:
                        self._from_server(data)
                    if self.closed:
                        break
        except OSError as exc:
            logger.debug("proxied connection ended: %s", exc)
        finally:
            selector.close()
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for sock in (self.client, self.server):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _from_client(self, data: bytes) -> None:
        if self.blind:
            self.server.sendall(data)
            return
        for message in self.from_client.feed(data):
            if self.from_client.untyped:
                self._startup_message(message)
                self.server.sendall(message)
                continue
            if not self._client_message(message):
                return  # the connection was cut

    def _startup_message(self, message: bytes) -> None:
        code = struct.unpack("!I", message[4:8])[0] if len(message) >= 8 else 0
        if code in (_SSL_REQUEST, _GSSENC_REQUEST):
            self.from_server.single_bytes += 1
        elif code != _CANCEL_REQUEST:
            self.from_client.untyped = False

    def _client_message(self, message: bytes) -> bool:
        kind, body = message[:1], message[5:]

        if self.pending_commit is not None:
            self.pending_commit.append(message)
            if kind == b"S":
                unit, self.pending_commit = b"".join(self.pending_commit), None
                return self._commit(unit)
            return True

        if kind == b"Q":
            text = _cstrings(body)[0]
            self.last_statement = text.decode("utf-8", "replace")
            if _is_commit(text):
                return self._commit(message)
        elif kind == b"P":
            parts = _cstrings(body)
            text = parts[1] if len(parts) > 1 else b""
            self.last_statement = text.decode("utf-8", "replace")
            if _is_commit(text):
                self.pending_commit = [message]
                return True

        self.server.sendall(message)
        return True

    def _commit(self, unit: bytes) -> bool:
        """Forward a COMMIT, or cut the connection on the armed one."""
        decision = self.proxy._on_commit()
        if decision is None:
            self.server.sendall(unit)
            return True

        number, whole = decision
        sent = len(unit) if whole else self.proxy._rng.randint(1, len(unit) - 1)
        cut = Cut(number, "whole" if whole else "partial", sent, len(unit))
        self.proxy._record_cut(cut)  # before the client can see the cut
        self.server.sendall(unit[:sent])
        self.close()
        logger.debug("cut the connection at COMMIT %d (%s)", number, cut.forwarded)
        return False

    def _from_server(self, data: bytes) -> None:
        if self.blind:
            self.client.sendall(data)
            return
        for message in self.from_server.feed(data):
            if len(message) == 1:
                if message == b"S" or message == b"G":
                    # Encryption accepted: nothing more can be read or cut.
                    self.blind = True
                    rest = self.from_server.buffer
                    self.client.sendall(message + rest)
                    return
                self.client.sendall(message)
                continue
            if message[:1] == b"E":
                self._server_error(message[5:])
            self.client.sendall(message)

    def _server_error(self, body: bytes) -> None:
        fields = {}
        for part in _cstrings(body):
            if part:
                fields[part[:1]] = part[1:].decode("utf-8", "replace")
        self.proxy._record_error(
            ServerError(fields.get(b"C", ""), fields.get(b"M", ""), self.last_statement)
        )


class WireProxy:
    """Forward 127.0.0.1:<port> to one PostgreSQL server, watching the wire.

    Start it, hand clients :meth:`dsn_for`, and arm :meth:`cut_commit` to lose
    the acknowledgement of the Nth COMMIT that passes through. Every
    ErrorResponse the server sends is kept in :attr:`errors`. :meth:`close`
    stops the listener and closes every proxied connection.
    """

    def __init__(self, host: str, port: int, *, seed: int | None = None) -> None:
        self.upstream = (host, port)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._sessions: list[_Session] = []
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._cut_at: int | None = None
        self._force: str | None = None
        self.commits = 0
        self.cuts: list[Cut] = []
        self.errors: list[ServerError] = []

    @property
    def port(self) -> int:
        assert self._listener is not None, "start() the proxy first"
        return int(self._listener.getsockname()[1])

    def start(self) -> WireProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.settimeout(0.2)
        self._listener = listener
        thread = threading.Thread(
            target=self._accept, name=f"wire-proxy-{self.port}", daemon=True
        )
        thread.start()
        self._threads.append(thread)
        logger.debug("proxy 127.0.0.1:%d -> %s:%d", self.port, *self.upstream)
        return self

    def dsn_for(self, dsn: str, **overrides: str) -> str:
        """``dsn`` redirected through the proxy, with TLS and GSS turned off."""
        params = conninfo_to_dict(dsn)
        params.pop("hostaddr", None)
        params.update(
            host="127.0.0.1",
            port=str(self.port),
            sslmode="disable",
            gssencmode="disable",
        )
        params.update(overrides)
        return make_conninfo(**params)

    def cut_commit(self, occurrence: int, forward: str | None = None) -> None:
        """Cut the connection at the ``occurrence``-th COMMIT from now on.

        ``forward`` forces ``"whole"`` or ``"partial"``; by default each cut
        draws one at random (see the module docstring).
        """
        with self._lock:
            self.commits = 0
            self._cut_at = occurrence
            self._force = forward

    def close(self) -> None:
        """Stop listening and close every proxied connection."""
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            sessions = list(self._sessions)
        for session in sessions:
            session.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> WireProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError as exc:
                logger.warning("proxy could not reach %s:%d: %s", *self.upstream, exc)
                client.close()
                continue
            server.settimeout(None)
            client.settimeout(None)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            session = _Session(self, client, server)
            thread = threading.Thread(target=session.run, daemon=True)
            with self._lock:
                self._sessions.append(session)
                self._threads.append(thread)
            thread.start()

    def _on_commit(self) -> tuple[int, bool] | None:
        with self._lock:
            self.commits += 1
            if self._cut_at is None or self.commits != self._cut_at:
                return None
            self._cut_at = None
            whole = (
                self._force == "whole"
                if self._force is not None
                else self._rng.random() < 0.5
            )
            return self.commits, whole

    def _record_cut(self, cut: Cut) -> None:
        with self._lock:
            self.cuts.append(cut)

    def _record_error(self, error: ServerError) -> None:
        with self._lock:
            self.errors.append(error)
