"""The embedded PostgreSQL: lifecycle, pg_cron, crash recovery, cache and users.

Every test runs real servers; nothing is mocked.

How the ordinary-user case runs: when the suite runs as root, a small script
is run as the ``nobody`` user through ``runuser -u nobody``. The script imports
a world-readable copy of kronos.server, kronos.errors and psycopg, because the
checkout and this interpreter may sit under /root, which nobody cannot enter;
the interpreter is this one if nobody can run it, else the system Python of
the same version. When the suite itself runs as an ordinary user, the same
script runs as that user.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import kronos.server
from kronos.errors import EnvironmentProblem
from kronos.server import NOCRON_DB_NAME, EmbeddedServer, find_pg_bin

ORDINARY_USER = "nobody"

ORDINARY_USER_SCRIPT = """
import json, os
import psycopg
from kronos.server import EmbeddedServer

report = {"uid": os.geteuid()}
with EmbeddedServer() as first:
    pid = int((first.data_dir / "postmaster.pid").read_text().split()[0])
    report["postmaster_uid"] = os.stat(f"/proc/{pid}").st_uid
    report["first_used_cache"] = first.used_cache
    with psycopg.connect(first.dsn) as conn:
        conn.execute("SELECT cron.schedule('as_user', '* * * * *', 'SELECT 1')")
        report["jobs"] = conn.execute("SELECT count(*) FROM cron.job").fetchone()[0]
    data_dir = first.data_dir
report["removed"] = not data_dir.exists()
with EmbeddedServer() as second:
    report["second_used_cache"] = second.used_cache
print(json.dumps(report))
"""

SIGNAL_SCRIPT = """
import json, time
from kronos.server import EmbeddedServer

server = EmbeddedServer().start()
pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])
print(json.dumps({
    "pid": pid,
    "data_dir": str(server.data_dir),
    "socket_dir": str(server.socket_dir),
}), flush=True)
time.sleep(120)
"""


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedServer]:
    with EmbeddedServer() as running:
        yield running


@pytest.fixture(scope="module")
def portable_tree() -> Iterator[Path]:
    """A world-readable directory from which any user can import kronos.server."""
    root = Path(tempfile.mkdtemp(prefix="kronos-test-tree-"))
    package = root / "kronos"
    package.mkdir()
    (package / "__init__.py").write_text("")
    source = Path(kronos.server.__file__).parent
    for name in ("server.py", "errors.py"):
        shutil.copy(source / name, package / name)

    for name in ("psycopg", "psycopg_binary", "psycopg_c", "typing_extensions"):
        spec = importlib.util.find_spec(name)
        if spec is None:
            continue
        if spec.submodule_search_locations:
            where = Path(next(iter(spec.submodule_search_locations)))
            shutil.copytree(where, root / name)
            libs = where.parent / f"{name}.libs"
            if libs.is_dir():
                shutil.copytree(libs, root / libs.name)
        elif spec.origin:
            shutil.copy(spec.origin, root / Path(spec.origin).name)

    (root / "as_user.py").write_text(ORDINARY_USER_SCRIPT)
    (root / "signalled.py").write_text(SIGNAL_SCRIPT)
    _make_world_readable(root)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_start_and_stop_remove_the_directories() -> None:
    """stop() removes data and socket directories and can be called twice."""
    server = EmbeddedServer()

    server.start()
    assert server.is_running()
    assert server.start() is server
    assert (server.data_dir / "PG_VERSION").is_file()
    assert server.socket_dir.is_dir()
    with psycopg.connect(server.dsn) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("kronos",)

    server.stop()
    assert not server.is_running()
    assert not server.data_dir.exists()
    assert not server.socket_dir.exists()
    server.stop()


def test_pg_cron_is_loaded_and_schedules_in_kronos(server: EmbeddedServer) -> None:
    """pg_cron is preloaded, installed in kronos, and cron.schedule works there."""
    with psycopg.connect(server.dsn) as conn:
        preload = conn.execute("SHOW shared_preload_libraries").fetchone()
        jobid = conn.execute(
            "SELECT cron.schedule('kronos_test', '*/5 * * * *', 'SELECT 1')"
        ).fetchone()
        job = conn.execute(
            "SELECT jobname, schedule, active FROM cron.job WHERE jobid = %s", jobid
        ).fetchone()
        conn.rollback()

    assert preload is not None and "pg_cron" in preload[0]
    assert job == ("kronos_test", "*/5 * * * *", True)
    assert server.pg_cron_version.startswith("1.")
    assert server.server_version.split(".")[0].isdigit()
    expected = f"host=127.0.0.1 port={server.port} dbname=kronos user=postgres"
    assert server.dsn == expected


def test_kronos_nocron_lacks_pg_cron(server: EmbeddedServer) -> None:
    """The second database has no pg_cron and cannot get it."""
    with psycopg.connect(server.dsn_for(NOCRON_DB_NAME), autocommit=True) as conn:
        installed = conn.execute(
            "SELECT count(*) FROM pg_extension WHERE extname = 'pg_cron'"
        ).fetchone()
        with pytest.raises(psycopg.Error, match="kronos"):
            conn.execute("CREATE EXTENSION pg_cron")

    assert installed == (0,)


def test_crash_then_restart_keeps_committed_data() -> None:
    """After an immediate stop, crash recovery keeps every committed row."""
    with EmbeddedServer() as server:
        port = server.port
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE survivors (n int)")
            for n in range(100):
                conn.execute("INSERT INTO survivors VALUES (%s)", (n,))

        server.crash()
        assert not server.is_running()
        assert (server.data_dir / "PG_VERSION").is_file()
        server.restart()

        assert server.is_running()
        assert server.port == port
        with psycopg.connect(server.dsn) as conn:
            count = conn.execute("SELECT count(*) FROM survivors").fetchone()
        assert count == (100,)
        assert "database system was interrupted" in server.log_path.read_text()


def test_the_port_stays_reserved_outside_the_ephemeral_range() -> None:
    """The port is below the ephemeral range and stays held while crashed."""
    low, high = map(
        int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    )
    with EmbeddedServer() as server:
        port = server.port
        server.crash()
        # A process choosing a free port, as another server's start does, finds
        # the crashed server's port taken.
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", port))
        server.restart()

        assert server.port == port
        assert not low <= port <= high
        with psycopg.connect(server.dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_failed_restart_shows_the_server_log() -> None:
    """A server that cannot start raises EnvironmentProblem with its log's tail."""
    with EmbeddedServer() as server:
        server.crash()
        with socket.socket() as squatter:
            # SO_REUSEADDR, as most servers set it, passes the server's own
            # guard on the port; listening then keeps PostgreSQL out.
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", server.port))
            squatter.listen()
            with pytest.raises(EnvironmentProblem) as failure:
                server.restart()

        assert "Address already in use" in str(failure.value)
        assert str(server.log_path) in str(failure.value)
        server.restart()
        assert server.is_running()


def test_second_start_uses_the_cached_cluster(
    server: EmbeddedServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Once a cluster is cached, a new server copies it instead of running initdb."""
    caplog.set_level(logging.INFO, logger="kronos.server")

    with EmbeddedServer() as second:
        assert second.used_cache
        assert second.port != server.port

    messages = [r.getMessage() for r in caplog.records]
    assert any("using the cached cluster" in m for m in messages)
    assert not any("running initdb" in m for m in messages)


def test_runs_as_an_ordinary_user(portable_tree: Path) -> None:
    """An ordinary user runs the server directly, builds its own cache, reuses it."""
    cache = Path(tempfile.mkdtemp(prefix="kronos-test-cache-"))
    env = _child_env(portable_tree, XDG_CACHE_HOME=str(cache))
    if os.geteuid() == 0:
        user = pwd.getpwnam(ORDINARY_USER)
        os.chown(cache, user.pw_uid, user.pw_gid)
        python = _python_for(ORDINARY_USER, env)
        argv = ["runuser", "-u", ORDINARY_USER, "--", python]
        expected_uid = user.pw_uid
    else:
        argv = [sys.executable]
        expected_uid = os.geteuid()

    try:
        result = subprocess.run(
            [*argv, str(portable_tree / "as_user.py")],
            cwd=portable_tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["uid"] == expected_uid != 0
    assert report["postmaster_uid"] == expected_uid
    assert report["jobs"] == 1
    assert report["removed"]
    assert report["first_used_cache"] is False
    assert report["second_used_cache"] is True


@pytest.mark.parametrize(
    ("signum", "exit_code"),
    [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, -signal.SIGINT)],
    ids=["sigterm", "ctrl-c"],
)
def test_signals_stop_the_server_and_remove_its_directories(
    portable_tree: Path, signum: int, exit_code: int
) -> None:
    """SIGTERM and Ctrl-C end the process with its server stopped and cleaned up."""
    env = _child_env(portable_tree, **os.environ)
    env["PYTHONPATH"] = str(portable_tree)

    with subprocess.Popen(
        [sys.executable, str(portable_tree / "signalled.py")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as child:
        assert child.stdout is not None
        started = json.loads(child.stdout.readline())
        # Ctrl-C at a terminal signals the whole foreground process group.
        os.killpg(child.pid, signum)
        _, stderr = child.communicate(timeout=60)

    assert child.returncode == exit_code, stderr
    assert _gone(started["pid"])
    assert not Path(started["data_dir"]).exists()
    assert not Path(started["socket_dir"]).exists()


def test_a_server_left_by_a_killed_process_is_reaped(portable_tree: Path) -> None:
    """SIGKILL skips every cleanup hook; the next start stops what was left."""
    env = _child_env(portable_tree, **os.environ)
    env["PYTHONPATH"] = str(portable_tree)

    with subprocess.Popen(
        [sys.executable, str(portable_tree / "signalled.py")],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        started = json.loads(child.stdout.readline())
        child.kill()
        child.wait(timeout=30)
    # The postmaster outlived its owner; another process's start may reap it
    # before ours does, so only the end state is checked.

    with EmbeddedServer():
        pass

    assert _gone(started["pid"])
    assert not Path(started["data_dir"]).exists()
    assert not Path(started["socket_dir"]).exists()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the server user can enter when the suite runs as root."""
    path = Path(tempfile.mkdtemp(prefix="kronos-test-shared-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_an_old_ownerless_directory_is_reaped_and_a_live_server_never(
    shared_dir: Path,
) -> None:
    """Owner-less leftovers go once old and idle; a running server always stays.

    The live server's directories are aged and stripped of their owner records,
    the worst case a reaper can meet: its running postmaster alone protects it.
    """
    tmp_path = shared_dir
    old = time.time() - 3600
    left_work = tmp_path / "kronos-pg-leftover"
    (left_work / "data").mkdir(parents=True)
    left_socket = tmp_path / "kronos-sock-leftover"
    left_socket.mkdir()
    young_socket = tmp_path / "kronos-sock-young"
    young_socket.mkdir()
    for path in (left_work / "data", left_work, left_socket):
        os.utime(path, (old, old))

    with EmbeddedServer(workdir=tmp_path) as server:
        workdir = server.data_dir.parent
        (workdir / "owner").unlink()
        (server.socket_dir / "owner").unlink()
        for path in (workdir, server.socket_dir):
            os.utime(path, (old, old))

        kronos.server._reap_abandoned(tmp_path, server.socket_dir.parent)
        kronos.server._reap_abandoned(tmp_path, tmp_path)

        assert server.is_running()
        assert server.data_dir.is_dir() and server.socket_dir.is_dir()
        with psycopg.connect(server.dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        # A live owner also protects a crashed server, whatever its age.
        kronos.server._write_owner(workdir, server.socket_dir, workdir)
        server.crash()
        kronos.server._reap_abandoned(tmp_path, server.socket_dir.parent)
        assert server.data_dir.is_dir() and server.socket_dir.is_dir()
        server.restart()

    assert not left_work.exists()
    assert not left_socket.exists()
    assert young_socket.is_dir()


def test_missing_binaries_name_the_debian_packages(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without server binaries the error says which packages to install."""
    monkeypatch.setenv("KRONOS_PG_BIN", str(tmp_path))

    with pytest.raises(EnvironmentProblem) as from_env:
        find_pg_bin()
    with pytest.raises(EnvironmentProblem) as from_argument:
        EmbeddedServer(pg_bin=tmp_path / "nowhere").start()

    for failure in (from_env, from_argument):
        message = str(failure.value)
        assert "postgresql-15" in message
        assert "postgresql-15-cron" in message
        assert "KRONOS_DSN" in message


def test_missing_pg_cron_names_its_package(tmp_path: Path) -> None:
    """Server binaries without pg_cron.so beside them are reported as such."""
    real = find_pg_bin()
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("initdb", "pg_ctl", "postgres"):
        (fake / tool).symlink_to(real / tool)

    with pytest.raises(EnvironmentProblem, match="postgresql-15-cron"):
        EmbeddedServer(pg_bin=fake).start()


# -- helpers ------------------------------------------------------------------


def _make_world_readable(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = Path(dirpath, name)
            path.chmod(path.stat().st_mode | 0o444)


def _child_env(tree: Path, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": str(tree),
    }
    env.update(extra)
    return env


def _python_for(user: str, env: dict[str, str]) -> str:
    """An interpreter of this Python version that the user can run."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys.executable, f"/usr/bin/python{version}"]
    probe = "import sys, psycopg; print('%d.%d' % sys.version_info[:2])"
    for python in candidates:
        result = subprocess.run(
            ["runuser", "-u", user, "--", python, "-c", probe],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode == 0 and result.stdout.strip() == version:
            return python
    pytest.fail(
        f"No Python {version} that the {user} user can run (tried "
        f"{', '.join(candidates)}); install Debian's python{version}."
    )


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            return True
        if state[0] in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False
