"""A throwaway PostgreSQL with pg_cron preloaded, for tests, demos and notebooks.

Why embedded rather than a shared server: it starts in about a second from a
cached cluster, nothing else writes to it, and it can be crashed and restarted
on the same data, which the ``server.crash`` fault point needs. It needs only
the local binaries (Debian packages postgresql-15 and postgresql-15-cron).

PostgreSQL refuses to run as root, so as root every server program runs as the
``postgres`` system user (or ``nobody``), and every directory it uses is owned
by that user and sits where that user can reach it.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from kronos.errors import EnvironmentProblem

__all__ = ["DB_NAME", "NOCRON_DB_NAME", "EmbeddedServer", "find_pg_bin"]

logger = logging.getLogger(__name__)

DB_NAME = "kronos"
NOCRON_DB_NAME = "kronos_nocron"
SUPERUSER = "postgres"

# Bump when what a cached template holds changes, so old caches are not reused.
_TEMPLATE_FORMAT = 2
_PG_TOOLS = ("initdb", "pg_ctl", "postgres")
_CONF_NAME = "kronos.conf"
_LOG_TAIL_LINES = 20
# An owner-less work or socket directory this old, with no live server in it,
# was left by a process killed while it set the directory up.
_ABANDONED_AGE = 600.0
_OWNER_FORMAT = "kronos-owner 1"
# 1 MB WAL segments keep each copy of the cached cluster 15 MB smaller.
_INITDB_OPTIONS = (
    f"-A trust -U {SUPERUSER} --no-sync -E UTF8 --locale=C --wal-segsize=1"
).split()

_INSTALL_HINT = (
    "Install the Debian packages postgresql-15 and postgresql-15-cron "
    "(`make demo` and `make test` install them through "
    "scripts/install-system-deps.sh), or set KRONOS_PG_BIN to a directory "
    "holding initdb, pg_ctl and postgres, or point the toolkit at a server you "
    "already run with --dsn or KRONOS_DSN."
)


def find_pg_bin() -> Path:
    """Find the directory holding initdb, pg_ctl and postgres.

    KRONOS_PG_BIN wins so a user can pick one of several installed versions;
    then ``pg_config --bindir``; then Debian's /usr/lib/postgresql/*/bin,
    preferring 15, the version the toolkit is tested against.
    """
    override = os.environ.get("KRONOS_PG_BIN")
    if override:
        if _has_tools(Path(override)):
            return Path(override)
        raise EnvironmentProblem(
            f"KRONOS_PG_BIN={override} does not hold {', '.join(_PG_TOOLS)}. "
            + _INSTALL_HINT
        )

    pg_config = shutil.which("pg_config")
    if pg_config:
        bindir = _output([pg_config, "--bindir"])
        if bindir and _has_tools(Path(bindir)):
            return Path(bindir)

    debian = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if _has_tools(p)]
    debian.sort(key=lambda p: (p.parent.name == "15", _numeric(p.parent.name)))
    if debian:
        return debian[-1]

    raise EnvironmentProblem(
        "No PostgreSQL server binaries found (looked at KRONOS_PG_BIN, "
        "pg_config --bindir and /usr/lib/postgresql/*/bin). " + _INSTALL_HINT
    )


@dataclass(frozen=True)
class _ServerUser:
    """The system user that runs the server programs when we are root."""

    name: str
    uid: int
    gid: int


_Result = subprocess.CompletedProcess[str]


class _PortInUse(EnvironmentProblem):
    """Another process took the port between choosing it and binding it."""


class EmbeddedServer:
    """One private PostgreSQL cluster with pg_cron preloaded in database kronos.

    Databases: ``kronos`` (with the pg_cron extension, and the one pg_cron's
    scheduler watches) and ``kronos_nocron`` (without it, for the
    ``extension.missing`` fault point). Clients connect over TCP on loopback as
    the trusted superuser ``postgres``.
    """

    def __init__(
        self, *, pg_bin: Path | None = None, workdir: Path | None = None
    ) -> None:
        self._pg_bin = Path(pg_bin) if pg_bin is not None else None
        self._workdir_parent = Path(workdir) if workdir is not None else None
        self._server_user = _server_user()
        self._lock = threading.RLock()
        self._owner_pid = os.getpid()

        self._workdir: Path | None = None
        self._last_workdir: Path | None = None
        self._socket_dir: Path | None = None
        self._port: int | None = None
        # Bound (never listening) to the server's port for as long as the server
        # exists, so another process choosing a port sees it taken even while
        # the server is down between crash() and restart().
        self._port_guard: socket.socket | None = None
        self.used_cache = False

    # -- the addresses and places the caller needs --------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise EnvironmentProblem("The server has no port yet: call start() first.")
        return self._port

    @property
    def data_dir(self) -> Path:
        return self._started_workdir() / "data"

    @property
    def log_path(self) -> Path:
        return self._started_workdir() / "postgresql.log"

    @property
    def socket_dir(self) -> Path:
        if self._socket_dir is None:
            raise EnvironmentProblem("No socket directory yet: call start() first.")
        return self._socket_dir

    @property
    def dsn(self) -> str:
        return self.dsn_for(DB_NAME)

    def dsn_for(self, dbname: str) -> str:
        """A libpq connection string for one database of this server."""
        return _dsn(self.port, dbname)

    @property
    def server_version(self) -> str:
        """The server's version number, such as ``15.18``."""
        with psycopg.connect(self.dsn, connect_timeout=10) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        assert row is not None
        return str(row[0]).split()[0]

    @property
    def pg_cron_version(self) -> str:
        """The pg_cron extension version in database kronos, such as ``1.4-1``."""
        with psycopg.connect(self.dsn, connect_timeout=10) as conn:
            row = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'"
            ).fetchone()
        if row is None:
            raise EnvironmentProblem(
                f"pg_cron is not installed in database {DB_NAME} of {self.dsn}."
            )
        return str(row[0])

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> EmbeddedServer:
        """Start the server on a fresh copy of the cached cluster.

        Does nothing when it already runs. After crash() it starts again on
        the same data, as restart() does.
        """
        with self._lock:
            if self.is_running():
                return self
            if self._workdir is not None:
                self.restart()
                return self

            _install_cleanup_hooks()
            with _LIVE_LOCK:
                _LIVE.add(self)
            try:
                self._start_fresh()
            except BaseException:
                # A failed or interrupted start must not leave a server behind.
                self.stop()
                raise
            return self

    def stop(self) -> None:
        """Stop the server quickly and remove its data and socket directories."""
        with self._lock:
            try:
                if self._workdir is not None and self.is_running():
                    self._shutdown("fast")
            except Exception:
                logger.warning("could not stop the server cleanly", exc_info=True)
            finally:
                for path in (self._workdir, self._socket_dir):
                    if path is not None:
                        shutil.rmtree(path, ignore_errors=True)
                self._workdir = None
                if self._port_guard is not None:
                    self._port_guard.close()
                    self._port_guard = None
                with _LIVE_LOCK:
                    _LIVE.discard(self)

    def crash(self) -> None:
        """Kill the server as a power cut would, minus the OS: no checkpoint.

        The data directory stays, so restart() runs crash recovery on it.
        """
        with self._lock:
            if not self.is_running():
                raise EnvironmentProblem("The server is not running: start() it first.")

            result = self._pg_ctl(self.data_dir, "stop", "-m", "immediate")
            if result.returncode != 0:
                self._kill_postmaster()
            logger.info("crashed the server on port %d (immediate stop)", self.port)

    def restart(self) -> None:
        """Start again on the same data directory and port.

        After crash() this runs crash recovery. A running server is first
        stopped cleanly.
        """
        with self._lock:
            if self._workdir is None or not self.data_dir.is_dir():
                raise EnvironmentProblem(
                    "There is no data directory to restart: call start() first."
                )
            if self.is_running():
                self._shutdown("fast")

            # The port is held by _port_guard, but a process whose own check
            # binds it for an instant (or a server that does not check) can be
            # in the way; a brief holder is waited out, a lasting one reported.
            for attempt in range(3):
                try:
                    self._launch(self.data_dir, self.log_path, self.port)
                    break
                except _PortInUse:
                    if attempt == 2:
                        raise
                    logger.info("port %d is in use; retrying", self.port)
                    time.sleep(0.2)
            logger.info("restarted the server on port %d", self.port)

    def is_running(self) -> bool:
        if self._workdir is None:
            return False
        pid = _postmaster_pid(self.data_dir)
        if pid is None or not _process_alive(pid):
            return False
        # A stale postmaster.pid may name a pid since reused by another process.
        return _names_data_dir(pid, self.data_dir) is not False

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<EmbeddedServer port={self._port} {state}>"

    # -- starting -------------------------------------------------------------

    def _start_fresh(self) -> None:
        pg_bin = self._pg_bin or find_pg_bin()
        if not _has_tools(pg_bin):
            raise EnvironmentProblem(
                f"{pg_bin} does not hold {', '.join(_PG_TOOLS)}. " + _INSTALL_HINT
            )
        self._pg_bin = pg_bin
        major = _major_version(pg_bin)
        _find_pg_cron(pg_bin, major)

        # The socket directory stays under the temp dir even with a workdir:
        # a Unix socket path must be shorter than about 100 bytes.
        tmp = _default_parent(self._server_user)
        parent = self._workdir_parent or tmp
        self._check_reachable(parent)
        _reap_abandoned(parent, tmp)
        # Each directory gets its owner file right after it is made, so that
        # _reap_abandoned in a later run can judge it if this process dies
        # unclean; one killed in between is left to the age rule.
        self._socket_dir = self._private_dir(tmp, "sock-")
        _write_owner(self._socket_dir, self._socket_dir, None)
        self._workdir = self._private_dir(parent, "pg-")
        self._last_workdir = self._workdir
        _write_owner(self._workdir, self._socket_dir, self._workdir)

        template, self.used_cache = self._ensure_template(major)
        _copy_tree(template / "data", self.data_dir)
        if self._server_user is not None:
            _chown_tree(self.data_dir, self._server_user)

        for attempt in range(3):
            self._port_guard = _reserve_port()
            self._port = int(self._port_guard.getsockname()[1])
            try:
                self._launch(self.data_dir, self.log_path, self._port)
                break
            except _PortInUse:
                self._port_guard.close()
                self._port_guard = None
                if attempt == 2:
                    raise
                logger.info("port %d was taken; trying another", self._port)
        logger.info(
            "started PostgreSQL %s on port %d (data %s)",
            major,
            self.port,
            self.data_dir,
        )

    def _ensure_template(self, major: str) -> tuple[Path, bool]:
        """Return the cached initialised cluster, building it on first use.

        The build happens in a private directory that is renamed into place,
        so two processes racing here both end with a complete template.
        """
        assert self._pg_bin is not None
        key = f"pg{major}-cron{_pg_cron_version(self._pg_bin, major)}"
        key += f"-t{_TEMPLATE_FORMAT}"
        base = _cache_base()
        template = base / key
        if (template / "data" / "PG_VERSION").is_file():
            logger.info("using the cached cluster %s (no initdb)", template)
            return template, True

        self._check_reachable(base)
        _remove_stale_builds(base)
        logger.info("no cached cluster at %s; running initdb (first start)", template)
        build = self._private_dir(base, ".build-")
        try:
            self._build_template(build)
            try:
                os.rename(build, template)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                logger.info("another process cached %s first; using theirs", template)
        finally:
            shutil.rmtree(build, ignore_errors=True)
        return template, False

    def _build_template(self, build: Path) -> None:
        data = build / "data"
        log_path = build / "build.log"
        initdb = self._run_pg(
            self._tool("initdb"), "-D", str(data), *_INITDB_OPTIONS, timeout=300
        )
        if initdb.returncode != 0:
            raise EnvironmentProblem(
                f"initdb failed in {data}:\n{initdb.stdout.strip()}\n"
                "Check the PostgreSQL installation. " + _INSTALL_HINT
            )
        with open(data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(f"\ninclude_if_exists = '{_CONF_NAME}'\n")

        with _reserve_port() as guard:
            self._launch(data, log_path, int(guard.getsockname()[1]))
            try:
                port = _read_port(data)
                dsn = _dsn(port, "postgres")
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(f"CREATE DATABASE {DB_NAME}")
                    conn.execute(f"CREATE DATABASE {NOCRON_DB_NAME}")
                with psycopg.connect(_dsn(port, DB_NAME), autocommit=True) as conn:
                    conn.execute("CREATE EXTENSION pg_cron")
            finally:
                self._pg_ctl(data, "stop", "-m", "fast")
        (data / _CONF_NAME).unlink()
        log_path.unlink(missing_ok=True)

    def _launch(self, data: Path, log_path: Path, port: int) -> None:
        """Write this run's settings into the data directory and start it."""
        self._write_settings(data, port)
        log_size = log_path.stat().st_size if log_path.exists() else 0

        result = self._pg_ctl(data, "start", "-l", str(log_path))
        if result.returncode == 0:
            return

        tail = "\n".join(_read_from(log_path, 0).splitlines()[-_LOG_TAIL_LINES:])
        in_use = "Address already in use" in _read_from(log_path, log_size)
        raise (_PortInUse if in_use else EnvironmentProblem)(
            f"PostgreSQL did not start on port {port}: {result.stdout.strip()}\n"
            f"Last lines of {log_path}:\n{tail}\n"
            "Fix what the log reports; if pg_cron cannot be loaded, install "
            "postgresql-15-cron. " + _INSTALL_HINT
        )

    def _write_settings(self, data: Path, port: int) -> None:
        # Speed over durability is safe here: fsync=off and full_page_writes=off
        # survive a crash of PostgreSQL (crash()), not of the OS. Commits stay
        # synchronous so that a commit that returned survives crash(), which the
        # atomicity checks rely on.
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(port),
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": "100",
            "shared_preload_libraries": "pg_cron",
            "cron.database_name": DB_NAME,
            "cron.use_background_workers": "on",
            "max_worker_processes": "20",
            "fsync": "off",
            "full_page_writes": "off",
            "synchronous_commit": "on",
        }
        text = "".join(f"{k} = {_quote(v)}\n" for k, v in settings.items())
        conf = data / _CONF_NAME
        conf.write_text(text, encoding="utf-8")
        if self._server_user is not None:
            os.chown(conf, self._server_user.uid, self._server_user.gid)

    # -- stopping -------------------------------------------------------------

    def _shutdown(self, mode: str) -> None:
        result = self._pg_ctl(self.data_dir, "stop", "-m", mode)
        if result.returncode != 0 and self.is_running():
            logger.warning(
                "pg_ctl stop -m %s failed (%s); killing the postmaster",
                mode,
                result.stdout.strip(),
            )
            self._kill_postmaster()

    def _kill_postmaster(self) -> None:
        pid = _postmaster_pid(self.data_dir)
        if pid is None:
            return
        # postmaster.pid outlives a killed server, and its pid may since belong
        # to another process: kill only a postmaster of this data directory.
        if not _names_data_dir(pid, self.data_dir):
            logger.warning(
                "pid %d in %s/postmaster.pid is not this server; not killing it",
                pid,
                self.data_dir,
            )
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        for _ in range(100):
            if not _process_alive(pid):
                return
            time.sleep(0.05)

    # -- running server programs ---------------------------------------------

    def _tool(self, name: str) -> str:
        assert self._pg_bin is not None
        return str(self._pg_bin / name)

    def _pg_ctl(self, data: Path, action: str, *options: str) -> _Result:
        """Run pg_ctl and wait for it: 60 s to start (recovery included), else 30."""
        wait = "60" if action == "start" else "30"
        return self._run_pg(
            self._tool("pg_ctl"), action, "-D", str(data), "-w", "-t", wait, *options
        )

    def _run_pg(self, *argv: str, timeout: float = 90) -> _Result:
        """Run a server program, as the server user when we are root."""
        extra: dict[str, Any] = {}
        if self._server_user is not None:
            user = self._server_user
            extra = {"user": user.uid, "group": user.gid, "extra_groups": []}
        logger.debug("running %s", " ".join(argv))
        return subprocess.run(
            argv,
            cwd=self._workdir or tempfile.gettempdir(),
            env=_server_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
            **extra,
        )

    def _private_dir(self, parent: Path, prefix: str) -> Path:
        """A new directory only the server user can use."""
        parent.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f"kronos-{prefix}", dir=parent))
        if self._server_user is not None:
            os.chown(path, self._server_user.uid, self._server_user.gid)
        return path

    def _check_reachable(self, path: Path) -> None:
        user = self._server_user
        if user is None:
            return
        blocked = _first_untraversable(path, user)
        if blocked is not None:
            raise EnvironmentProblem(
                f"The {user.name} user, which runs PostgreSQL because we are root, "
                f"cannot enter {blocked}. Choose a directory under /var/tmp or "
                "/tmp (workdir=, KRONOS_WORKDIR or KRONOS_CACHE_DIR), or run as an "
                "ordinary user."
            )

    def _started_workdir(self) -> Path:
        # The last directory stays known after stop(), so a caller can check
        # that it is gone.
        if self._last_workdir is None:
            raise EnvironmentProblem("The server has no directories yet: start() it.")
        return self._last_workdir


# -- cleanup when the process ends ------------------------------------------------

_LIVE: set[EmbeddedServer] = set()
_LIVE_LOCK = threading.Lock()
_ATEXIT_INSTALLED = False
_SIGTERM_INSTALLED = False


def _stop_all() -> None:
    """Stop every server this process started (not those of a forked parent)."""
    with _LIVE_LOCK:
        servers = [s for s in _LIVE if s._owner_pid == os.getpid()]
    for server in servers:
        try:
            server.stop()
        except Exception:
            logger.warning("could not stop %r at exit", server, exc_info=True)


def _install_cleanup_hooks() -> None:
    """Make sure servers stop at exit, on SIGTERM and on Ctrl-C.

    Ctrl-C raises KeyboardInterrupt, which ends the interpreter through atexit.
    SIGTERM would kill the process without running atexit, so it becomes a
    SystemExit after any handler that was there before has run.
    """
    global _ATEXIT_INSTALLED, _SIGTERM_INSTALLED
    if not _ATEXIT_INSTALLED:
        atexit.register(_stop_all)
        _ATEXIT_INSTALLED = True

    if _SIGTERM_INSTALLED:
        return
    if threading.current_thread() is not threading.main_thread():
        logger.debug("not in the main thread; SIGTERM handler not installed yet")
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_IGN:
        _SIGTERM_INSTALLED = True
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if callable(previous):
            previous(signum, frame)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    _SIGTERM_INSTALLED = True


# -- the environment ----------------------------------------------------------------


def _server_user() -> _ServerUser | None:
    """The user to run PostgreSQL as: None means ourselves (not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return _ServerUser(name, entry.pw_uid, entry.pw_gid)
    raise EnvironmentProblem(
        "Running as root, but there is neither a postgres nor a nobody user to "
        "run PostgreSQL as. Install postgresql-15 (it creates the postgres user) "
        "or run as an ordinary user."
    )


def _default_parent(user: _ServerUser | None) -> Path:
    """Where data and socket directories go unless the caller says otherwise.

    KRONOS_WORKDIR first; then /dev/shm when it is a roomy tmpfs, because
    copying the cached cluster there takes a tenth of the time it takes on a
    disk (measured: 0.3 s against 1.8 s per start); then the temp directory.
    Crash recovery works the same on tmpfs, since only PostgreSQL crashes.
    """
    override = os.environ.get("KRONOS_WORKDIR")
    if override:
        return Path(override)

    shm = Path("/dev/shm")
    try:
        stat = os.statvfs(shm)
        roomy = stat.f_bavail * stat.f_frsize >= 2 * 1024**3
    except OSError:
        roomy = False
    if roomy and os.access(shm, os.W_OK | os.X_OK):
        if user is None or _first_untraversable(shm, user) is None:
            return shm

    tmp = Path(tempfile.gettempdir())
    if user is not None and _first_untraversable(tmp, user) is not None:
        return Path("/var/tmp")
    return tmp


def _process_identity(pid: int) -> str:
    """The pid with its start time, so a reused pid is not taken for ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return f"{pid} ?"
    return f"{pid} {stat.rsplit(')', 1)[-1].split()[19]}"


def _read_or(path: str, default: str = "?") -> str:
    try:
        return Path(path).read_text().strip() or default
    except OSError:
        return default


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "?"


def _write_owner(directory: Path, socket_dir: Path, workdir: Path | None) -> None:
    """Record who owns a work or socket directory, for _reap_abandoned.

    Written to a temporary name and renamed, so a reader sees the whole file
    or none. The pid namespace and boot id say whether the pid can be judged
    from another process at all.
    """
    pid, start = _process_identity(os.getpid()).split()
    lines = [
        _OWNER_FORMAT,
        f"pid {pid}",
        f"start {start}",
        f"pidns {_pid_namespace()}",
        f"boot {_read_or('/proc/sys/kernel/random/boot_id')}",
        f"socket_dir {socket_dir}",
    ]
    if workdir is not None:
        lines.append(f"workdir {workdir}")
    temporary = directory / f".owner.{os.getpid()}.tmp"
    temporary.write_text("\n".join(lines) + "\n")
    os.rename(temporary, directory / "owner")


def _read_owner(directory: Path) -> dict[str, str] | None:
    """The owner record of a directory; None when missing or not understood.

    Raises PermissionError when the directory is another user's.
    """
    try:
        text = (directory / "owner").read_text()
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return None
    lines = text.splitlines()
    if not lines:
        return None
    if lines[0] != _OWNER_FORMAT:
        # The format before the versioned one: "<pid> <start>" then the socket
        # directory. Only its identity is used, to recognise a live owner.
        if len(lines) == 2 and text.endswith("\n"):
            return {"legacy": lines[0], "socket_dir": lines[1]}
        return None
    record = dict(line.split(" ", 1) for line in lines[1:] if " " in line)
    needed = ("pid", "start", "pidns", "boot", "socket_dir")
    if not text.endswith("\n") or not all(k in record for k in needed):
        return None
    return record


def _owner_state(owner: dict[str, str] | None) -> str:
    """``alive``, ``dead`` or ``unknown``: only ``dead`` allows reaping by owner.

    Whatever cannot be checked from here (another pid namespace, an owner record
    this version does not understand, a process we may not inspect) is unknown,
    never dead: a wrong "dead" would stop a server in use.
    """
    if owner is None:
        return "unknown"
    if "legacy" in owner:
        pid = owner["legacy"].split()[0]
        if pid.isdigit() and _process_identity(int(pid)) == owner["legacy"]:
            return "alive"
        return "unknown"

    boot = _read_or("/proc/sys/kernel/random/boot_id")
    if "?" not in (boot, owner["boot"]) and boot != owner["boot"]:
        return "dead"  # started before the last reboot
    namespace = _pid_namespace()
    if "?" in (namespace, owner["pidns"]) or namespace != owner["pidns"]:
        return "unknown"
    if not owner["pid"].isdigit():
        return "unknown"

    pid = int(owner["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead"
    except PermissionError:
        pass
    now = _process_identity(pid).split()[1]
    if now == "?" or owner["start"] == "?":
        return "unknown"
    return "alive" if now == owner["start"] else "dead"


def _server_state(data: Path, socket_dirs: list[Path]) -> tuple[str, int | None]:
    """Whether a server runs on ``data``: ``none``, ``ours`` (with its pid) or
    ``unknown`` (something answers, but not a postmaster we can see and verify).
    """
    pid = _postmaster_pid(data)
    if pid is not None and _process_alive(pid):
        names = _names_data_dir(pid, data)
        if names:
            return "ours", pid
        if names is None:
            return "unknown", None

    # Seen from another pid namespace the postmaster's pid means nothing here,
    # but its socket still answers.
    pidfile_dirs = _pidfile_line(data, 4)
    if pidfile_dirs:
        socket_dirs = [*socket_dirs, Path(pidfile_dirs.split(",")[0])]
    if any(_socket_answers(directory) for directory in socket_dirs):
        return "unknown", None
    return "none", None


def _socket_answers(directory: Path) -> bool:
    try:
        sockets = [p for p in directory.glob(".s.PGSQL.*") if p.suffix != ".lock"]
    except OSError:
        return False
    for path in sockets:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(str(path))
            except OSError:
                continue
            return True
    return False


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.lstat().st_mtime > seconds
    except OSError:
        return False


def _stop_orphan(pid: int, data: Path) -> bool:
    """Stop an abandoned postmaster; True once it is gone."""
    logger.info("stopping server %s left by a process that died", data)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGQUIT)
    for _ in range(100):
        if not _process_alive(pid):
            return True
        time.sleep(0.05)
    return False


def _reap_abandoned(parent: Path, socket_parent: Path) -> None:
    """Stop and remove servers whose owning process died without cleaning up.

    A process killed with SIGKILL runs no atexit hook; without this its
    postmaster would run on and its data stay, in RAM when under /dev/shm.
    A directory is removed only when no server we cannot account for runs in
    it: its owner is provably dead, or it has no owner record and is older
    than _ABANDONED_AGE, and either way no live postmaster is left in it.
    A failure here is logged and never stops a start.
    """
    referenced: set[str] = set()
    workdirs = {p for base in (parent, socket_parent) for p in base.glob("kronos-pg-*")}
    for workdir in sorted(workdirs):
        try:
            socket_dir = _reap_workdir(workdir)
        except OSError:
            logger.debug("could not judge %s", workdir, exc_info=True)
            socket_dir = _uid_marker(workdir)
        if socket_dir:
            referenced.add(socket_dir)

    for socket_dir in socket_parent.glob("kronos-sock-*"):
        try:
            _reap_socket_dir(socket_dir, referenced)
        except OSError:
            logger.debug("could not judge %s", socket_dir, exc_info=True)


def _uid_marker(path: Path) -> str:
    """Stands for every socket directory of the user owning ``path``.

    A work directory and its socket directory belong to the same user, so a
    work directory whose socket directory is unknown protects all of that user's.
    """
    try:
        return f"uid:{path.lstat().st_uid}"
    except OSError:
        return "*"


def _reap_workdir(workdir: Path) -> str | None:
    """Reap one work directory if abandoned; return what it names as socket dir.

    A work directory that stays returns its socket directory, or a marker for
    all of its user's when that is unknown, so that one is kept too.
    """
    if workdir.is_symlink() or not workdir.is_dir():
        return None
    owner = _read_owner(workdir)
    state = _owner_state(owner)
    socket_dir = owner["socket_dir"] if owner else None
    if state == "alive":
        return socket_dir
    if state == "unknown":
        if owner is not None and "legacy" not in owner:
            return socket_dir  # a live owner we cannot see, as in a container
        if not _older_than(workdir, _ABANDONED_AGE):
            return socket_dir or _uid_marker(workdir)

    data = workdir / "data"
    sockets = [Path(socket_dir)] if socket_dir else []
    server, pid = _server_state(data, sockets)
    if server == "unknown" or (server == "ours" and state != "dead"):
        return socket_dir or _uid_marker(workdir)
    if server == "ours":
        assert pid is not None
        if not _stop_orphan(pid, data):
            return socket_dir or _uid_marker(workdir)

    logger.info("removing abandoned %s", workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    if socket_dir and Path(socket_dir).name.startswith("kronos-sock-"):
        shutil.rmtree(socket_dir, ignore_errors=True)
    return None


def _reap_socket_dir(socket_dir: Path, referenced: set[str]) -> None:
    """Remove a socket directory nobody uses, as no work directory accounts for it.

    A socket directory that a remaining work directory names is kept, and so is
    every one while some work directory could not be read.
    """
    if {"*", str(socket_dir), _uid_marker(socket_dir)} & referenced:
        return
    if socket_dir.is_symlink() or not socket_dir.is_dir():
        return
    owner = _read_owner(socket_dir)
    state = _owner_state(owner)
    if state == "alive":
        return
    if state == "unknown":
        if owner is not None and "legacy" not in owner:
            return
        if not _older_than(socket_dir, _ABANDONED_AGE):
            return
    if owner is not None and "workdir" in owner and Path(owner["workdir"]).exists():
        return  # that work directory, elsewhere, is judged by its own starts

    for lock in socket_dir.glob(".s.PGSQL.*.lock"):
        # The lock file names the postmaster's pid and its data directory.
        lines = lock.read_text(errors="replace").splitlines()
        if len(lines) >= 2 and lines[0].strip().isdigit():
            pid = int(lines[0])
            if (
                _process_alive(pid)
                and _names_data_dir(pid, Path(lines[1])) is not False
            ):
                return
    if _socket_answers(socket_dir):
        return

    logger.info("removing abandoned %s", socket_dir)
    shutil.rmtree(socket_dir, ignore_errors=True)


def _cache_base() -> Path:
    """Where initialised clusters are cached, created if needed.

    As root the cache must be somewhere the postgres user can enter, which
    /root is not.
    """
    override = os.environ.get("KRONOS_CACHE_DIR")
    if override:
        base = Path(override)
    elif os.geteuid() == 0:
        base = Path("/var/tmp/kronos-atomicity-root")
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        base = Path(xdg) / "kronos-atomicity"

    try:
        base.mkdir(parents=True, exist_ok=True, mode=0o755)
        if os.geteuid() == 0 and not override:
            base.chmod(0o755)  # whatever the umask, the postgres user must enter
        if not os.access(base, os.W_OK | os.X_OK):
            raise PermissionError(f"cannot write to {base}")
    except OSError as exc:
        if override:
            raise EnvironmentProblem(
                f"KRONOS_CACHE_DIR={override} cannot be used ({exc}); "
                "point it at a writable directory."
            ) from exc
        fallback = Path(tempfile.gettempdir()) / f"kronos-atomicity-{os.geteuid()}"
        logger.warning("cannot use %s (%s); caching in %s", base, exc, fallback)
        fallback.mkdir(exist_ok=True, mode=0o700)
        base = fallback
    return base


def _remove_stale_builds(base: Path, max_age: float = 3600.0) -> None:
    """Remove template builds left by processes killed mid-way."""
    for path in base.glob("kronos-.build-*"):
        try:
            if time.time() - path.stat().st_mtime > max_age:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


def _server_env() -> dict[str, str]:
    # PG* variables meant for the user's own servers must not steer ours.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _find_pg_cron(pg_bin: Path, major: str) -> Path:
    candidates = []
    pkglibdir = _pg_config(pg_bin, "--pkglibdir")
    if pkglibdir:
        candidates.append(Path(pkglibdir) / "pg_cron.so")
    candidates.append(pg_bin.parent / "lib" / "pg_cron.so")
    for path in candidates:
        if path.is_file():
            return path
    raise EnvironmentProblem(
        f"pg_cron is not installed for the PostgreSQL in {pg_bin} (looked for "
        f"{' and '.join(map(str, candidates))}). Install the Debian package "
        f"postgresql-{major}-cron (`make test` and `make demo` do), or use "
        "--dsn / KRONOS_DSN with a server that preloads pg_cron."
    )


def _pg_cron_version(pg_bin: Path, major: str) -> str:
    """pg_cron's default version, from its control file, for the cache key."""
    sharedirs = [d for d in [_pg_config(pg_bin, "--sharedir")] if d]
    sharedirs.append(f"/usr/share/postgresql/{major}")
    for sharedir in sharedirs:
        control = Path(sharedir) / "extension" / "pg_cron.control"
        if control.is_file():
            found = re.search(
                r"default_version\s*=\s*'([^']+)'", control.read_text("utf-8")
            )
            if found:
                return found.group(1)

    # No control file found: key on the library file itself.
    so = _find_pg_cron(pg_bin, major)
    stat = so.stat()
    return f"so{stat.st_size}-{int(stat.st_mtime)}"


def _pg_config(pg_bin: Path, flag: str) -> str | None:
    """Ask the pg_config that belongs to pg_bin, never another version's."""
    own = pg_bin / "pg_config"
    if own.is_file():
        return _output([str(own), flag])
    on_path = shutil.which("pg_config")
    if on_path and _output([on_path, "--bindir"]) == str(pg_bin):
        return _output([on_path, flag])
    return None


def _major_version(pg_bin: Path) -> str:
    text = _output([str(pg_bin / "postgres"), "--version"]) or ""
    found = re.search(r"\(PostgreSQL\)\s+(\d+)", text)
    if not found:
        raise EnvironmentProblem(
            f"{pg_bin / 'postgres'} --version printed {text!r}, not a PostgreSQL "
            "version. " + _INSTALL_HINT
        )
    return found.group(1)


# -- small helpers ----------------------------------------------------------------


def _has_tools(path: Path) -> bool:
    return all(os.access(path / tool, os.X_OK) for tool in _PG_TOOLS)


def _numeric(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return -1.0


def _output(argv: list[str]) -> str | None:
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _dsn(port: int, dbname: str) -> str:
    return make_conninfo(
        host="127.0.0.1", port=str(port), dbname=dbname, user=SUPERUSER
    )


def _port_range() -> tuple[int, int]:
    """Ports to choose from: below the kernel's ephemeral range.

    A port from the ephemeral range (what binding port 0 gives) is soon handed
    to some client socket or server elsewhere, so it would not stay free while
    the server is down between crash() and restart().
    """
    try:
        low, high = map(
            int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        )
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    if low - 1 - 20000 >= 1000:
        return 20000, low - 1
    if 65535 - high >= 1000:
        return high + 1, 65535
    return max(1024, low - 2000), low - 1


def _reserve_port(attempts: int = 50) -> socket.socket:
    """A socket bound to a free port on 127.0.0.1 that holds it for the server.

    It is bound without SO_REUSEADDR, which fails while anything else holds the
    port (another server's guard included), and then marked SO_REUSEADDR, so
    that PostgreSQL, which binds with SO_REUSEADDR, can still listen on it.
    """
    low, high = _port_range()
    for _ in range(attempts):
        port = random.randint(low, high)
        guard = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            guard.bind(("127.0.0.1", port))
            guard.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        except OSError:
            guard.close()
            continue
        return guard
    raise EnvironmentProblem(
        f"No free port on 127.0.0.1 between {low} and {high} after {attempts} "
        "tries; stop some servers or widen net.ipv4.ip_local_port_range's gap."
    )


def _pidfile_line(data: Path, index: int) -> str | None:
    try:
        return (data / "postmaster.pid").read_text().splitlines()[index].strip()
    except (OSError, IndexError):
        return None


def _names_data_dir(pid: int, data: Path) -> bool | None:
    """Whether process ``pid`` is a server on ``data``; None when unreadable."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    except OSError:
        return None
    return str(data).encode() in argv


def _read_port(data: Path) -> int:
    # postmaster.pid, line 4: the port the server listens on.
    return int((data / "postmaster.pid").read_text().splitlines()[3])


def _postmaster_pid(data: Path) -> int | None:
    try:
        return int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _process_alive(pid: int) -> bool:
    """True for a live process; a zombie nobody reaped yet counts as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _copy_tree(source: Path, target: Path) -> None:
    # cp -a keeps the owner (as root) and the 0700 mode PostgreSQL insists on.
    result = subprocess.run(
        ["cp", "-a", str(source), str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise EnvironmentProblem(
            f"Could not copy the cached cluster {source} to {target}: "
            f"{result.stderr.strip()}. Remove {source.parent} to rebuild it."
        )


def _chown_tree(root: Path, user: _ServerUser) -> None:
    if root.stat().st_uid == user.uid:
        return
    for dirpath, dirnames, filenames in os.walk(root):
        os.lchown(dirpath, user.uid, user.gid)
        for name in filenames + dirnames:
            os.lchown(os.path.join(dirpath, name), user.uid, user.gid)


def _first_untraversable(path: Path, user: _ServerUser) -> Path | None:
    """The first existing ancestor of path the user cannot enter, if any."""
    for ancestor in [*reversed(path.absolute().parents), path.absolute()]:
        try:
            st = ancestor.stat()
        except FileNotFoundError:
            break
        if st.st_uid == user.uid:
            allowed = st.st_mode & 0o100
        elif st.st_gid == user.gid:
            allowed = st.st_mode & 0o010
        else:
            allowed = st.st_mode & 0o001
        if not allowed:
            return ancestor
    return None


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as log:
            log.seek(offset)
            return log.read()
    except OSError:
        return "(no log was written)"


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
