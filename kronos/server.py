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

            self._launch(self.data_dir, self.log_path, self.port)
            logger.info("restarted the server on port %d", self.port)

    def is_running(self) -> bool:
        if self._workdir is None:
            return False
        pid = _postmaster_pid(self.data_dir)
        return pid is not None and _process_alive(pid)

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
        _reap_abandoned(parent)
        self._socket_dir = self._private_dir(tmp, "sock-")
        self._workdir = self._private_dir(parent, "pg-")
        self._last_workdir = self._workdir
        # Read by _reap_abandoned in later runs if this process dies unclean.
        owner = f"{_process_identity(os.getpid())}\n{self._socket_dir}\n"
        (self._workdir / "owner").write_text(owner)

        template, self.used_cache = self._ensure_template(major)
        _copy_tree(template / "data", self.data_dir)
        if self._server_user is not None:
            _chown_tree(self.data_dir, self._server_user)

        for attempt in range(3):
            try:
                self._port = _free_port()
                self._launch(self.data_dir, self.log_path, self._port)
                break
            except _PortInUse:
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

        self._launch(data, log_path, _free_port())
        try:
            port = _read_port(data)
            with psycopg.connect(_dsn(port, "postgres"), autocommit=True) as conn:
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


def _reap_abandoned(parent: Path) -> None:
    """Stop and remove servers whose owning process died without cleaning up.

    A process killed with SIGKILL runs no atexit hook; without this its
    postmaster would run on and its data stay, in RAM when under /dev/shm.
    """
    for workdir in parent.glob("kronos-pg-*"):
        try:
            identity, socket_dir = (workdir / "owner").read_text().splitlines()
        except (OSError, ValueError):
            continue  # not ours to judge, or still being set up
        pid = int(identity.split()[0]) if identity.split()[0].isdigit() else 0
        if pid and _process_identity(pid) == identity:
            continue

        data = workdir / "data"
        postmaster = _postmaster_pid(data)
        if postmaster is not None and _process_alive(postmaster):
            try:
                cmdline = Path(f"/proc/{postmaster}/cmdline").read_bytes()
            except OSError:
                cmdline = b""
            if str(data).encode() not in cmdline:
                continue
            logger.info("stopping server %s left by dead process %d", data, pid)
            with contextlib.suppress(OSError):
                os.kill(postmaster, signal.SIGQUIT)
            for _ in range(100):
                if not _process_alive(postmaster):
                    break
                time.sleep(0.05)
        shutil.rmtree(workdir, ignore_errors=True)
        if Path(socket_dir).name.startswith("kronos-sock-"):
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


def _free_port() -> int:
    # The port is free now; _PortInUse covers losing it before the server binds.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
