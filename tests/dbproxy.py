"""A TCP proxy in front of the session's PostgreSQL that a test (or a bench) can cut: a
database outage of a chosen length for the processes that reach it through the proxy,
without touching the server others use.

    with DatabaseProxy(url) as proxy:       # url: the real database (host:port or a unix socket)
        start_worker(env={"DURAKIT_DATABASE_URL": proxy.url})
        proxy.cut()                          # every proxied connection closed, new ones refused
        ...
        proxy.restore()

A cut closes both ends of every connection at once (as a server crash or a failover does)
and, until `restore`, accepts each new connection only to close it straight away.
"""

from __future__ import annotations

import socket
import threading
from urllib.parse import quote, urlencode

from psycopg.conninfo import conninfo_to_dict

DEFAULT_PORT = 5432
CHUNK = 65536
# Keywords that name where the server is: the proxy replaces them.
WHERE = ("host", "hostaddr", "port")


def upstream_address(url: str) -> tuple[int, str | tuple[str, int]]:
    """(socket family, address) of the server a libpq URL or conninfo string names; a host
    that is a directory (pgserver's URL) is a unix socket, as libpq reads it."""
    params = conninfo_to_dict(url)
    host = str(params.get("host") or params.get("hostaddr") or "/tmp").split(",")[0]
    port = int(str(params.get("port") or DEFAULT_PORT).split(",")[0])
    if host.startswith("/"):
        return socket.AF_UNIX, f"{host}/.s.PGSQL.{port}"
    return socket.AF_INET, (host, port)


def proxied_url(url: str, port: int) -> str:
    """The same database, user and options, reached at 127.0.0.1:`port`."""
    params = {key: str(value) for key, value in conninfo_to_dict(url).items() if key not in WHERE}
    user = quote(params.pop("user", ""), safe="")
    password = params.pop("password", None)
    dbname = quote(params.pop("dbname", ""), safe="")
    credentials = f"{user}:{quote(password, safe='')}@" if password else (f"{user}@" if user else "")
    query = f"?{urlencode(params)}" if params else ""
    return f"postgresql://{credentials}127.0.0.1:{port}/{dbname}{query}"


class DatabaseProxy:
    def __init__(self, url: str) -> None:
        self.family, self.upstream = upstream_address(url)
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.url = proxied_url(url, self._listener.getsockname()[1])
        self._mutex = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut = False
        self._closed = False
        self.refused = 0  # connections turned away during cuts
        threading.Thread(target=self._accept_forever, name="db proxy", daemon=True).start()

    def cut(self) -> None:
        """Close every proxied connection; refuse new ones until `restore`."""
        with self._mutex:
            self._cut = True
            doomed, self._open = self._open, set()
        for sock in doomed:
            shut(sock)

    def restore(self) -> None:
        with self._mutex:
            self._cut = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()

    def __enter__(self) -> DatabaseProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _accept_forever(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._mutex:
                cut = self._cut
            if cut:
                self.refused += 1
                shut(client)
                continue
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        server = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            server.connect(self.upstream)
        except OSError:
            shut(client)
            shut(server)
            return
        with self._mutex:
            if self._cut:
                shut(client)
                shut(server)
                return
            self._open.update((client, server))
        threading.Thread(target=self._pump, args=(server, client), daemon=True).start()
        self._pump(client, server)

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(CHUNK):
                target.sendall(data)
        except OSError:
            pass
        with self._mutex:
            self._open.discard(source)
            self._open.discard(target)
        shut(source)
        shut(target)


def shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
