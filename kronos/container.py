"""The testcontainers backend: PostgreSQL 15 with pg_cron in a Docker container.

The image is ``KRONOS_IMAGE`` (default ``kronos-pg-cron:15``), built from
``docker/Dockerfile`` or, with no registry at hand, by ``make image``. It is
never pulled implicitly: a missing image is an error that says how to build it.

The container's network mode is ``KRONOS_DOCKER_NETWORK`` (default ``host``).
On the host network PostgreSQL listens on 127.0.0.1 only, on a free port, so
the engine needs no bridge and nothing leaves the loopback interface. With any
other mode, port 5432 is published on 127.0.0.1 only.

testcontainers' Ryuk reaper is disabled (it needs a second image and a bridge
network); the backend removes its container itself on close and at exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import time
from collections.abc import Callable

import psycopg
from psycopg.conninfo import make_conninfo

from kronos.backends import Backend
from kronos.errors import EnvironmentProblem

__all__ = ["DEFAULT_IMAGE", "start_container"]

logger = logging.getLogger(__name__)

DEFAULT_IMAGE = "kronos-pg-cron:15"
_DB_NAME = "kronos"
_START_TIMEOUT = 120.0
_LOG_TAIL_LINES = 20

_DOCKER_HINT = (
    "Start a Docker engine (`make docker`, or scripts/install-system-deps.sh "
    "docker then scripts/start-docker.sh; both use sudo when not root), or "
    "choose another backend with --kronos-backend embedded or dsn."
)


def start_container(
    image: str | None = None, network: str | None = None
) -> Backend:
    """Start PostgreSQL with pg_cron in a container and wait until it answers."""
    image = image or os.environ.get("KRONOS_IMAGE") or DEFAULT_IMAGE
    network = network or os.environ.get("KRONOS_DOCKER_NETWORK") or "host"
    # testcontainers reads this when its configuration is first used.
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    _require_image(image)

    from testcontainers.core.config import testcontainers_config
    from testcontainers.core.container import DockerContainer

    testcontainers_config.ryuk_disabled = True
    container = DockerContainer(image).with_env("POSTGRES_DB", _DB_NAME)
    container.with_env("POSTGRES_HOST_AUTH_METHOD", "trust")
    port = _free_port()
    if network == "host":
        container.with_kwargs(network_mode="host")
        container.with_command(
            ["postgres", "-p", str(port), "-c", "listen_addresses=127.0.0.1"]
        )
    else:
        container.with_kwargs(network_mode=network)
        container.with_bind_ports(5432, ("127.0.0.1", port))  # type: ignore[arg-type]
        container.with_command(["postgres", "-c", "listen_addresses=*"])

    try:
        container.start()
    except Exception as exc:
        raise EnvironmentProblem(
            f"could not start a container from {image} (network {network}): "
            f"{exc}. " + _DOCKER_HINT
        ) from exc

    stopper = _stopper(container)
    atexit.register(stopper)
    try:
        dsn = make_conninfo(
            host="127.0.0.1", port=str(port), dbname=_DB_NAME, user="postgres"
        )
        server_version, cron_version = _wait_ready(container, dsn, image)
    except BaseException:
        stopper()
        raise

    short_id = container.get_container_id()[:12]
    logger.info("started container %s from %s on port %d", short_id, image, port)
    return Backend(
        "testcontainers",
        dsn,
        server_version=server_version,
        pg_cron_version=cron_version,
        location=f"image {image}, container {short_id}, 127.0.0.1:{port}",
        closer=stopper,
    )


def _require_image(image: str) -> None:
    """Fail with the way to build the image unless the engine has it locally."""
    try:
        from docker.client import from_env
        from docker.errors import DockerException, ImageNotFound
    except ImportError as exc:
        raise EnvironmentProblem(
            "the testcontainers backend needs the testcontainers package: "
            "pip install 'kronos-atomicity[dev]' or pip install testcontainers"
        ) from exc

    # docker-py leaves the socket of a failed connection attempt open (its
    # UnixHTTPConnection.connect never closes it), and the exception's traceback
    # keeps it alive until some later garbage collection, where the
    # ResourceWarning fails an unrelated test under filterwarnings=error. So
    # every failure closes the sockets its traceback holds, and the client is
    # closed on every path once it exists.
    try:
        client = from_env()
    except DockerException as exc:
        _close_sockets(exc)
        raise EnvironmentProblem(
            f"cannot reach a Docker engine: {exc}. " + _DOCKER_HINT
        ) from exc
    except BaseException as exc:
        _close_sockets(exc)
        raise
    try:
        client.images.get(image)
    except ImageNotFound as exc:
        raise EnvironmentProblem(
            f"the image {image} is not in the local Docker engine. Build it with "
            "`make image` (no registry needed) or `docker build -t "
            f"{image} docker/`, or set KRONOS_IMAGE to an image with PostgreSQL "
            "and pg_cron that follows docker/Dockerfile's contract."
        ) from exc
    except DockerException as exc:
        _close_sockets(exc)
        raise EnvironmentProblem(
            f"the Docker engine did not answer about {image}: {exc}. " + _DOCKER_HINT
        ) from exc
    except BaseException as exc:
        _close_sockets(exc)
        raise
    finally:
        client.close()


def _close_sockets(exc: BaseException) -> None:
    """Close every socket held by the frames of ``exc`` and the errors it chains.

    The failed connection's socket is reachable only through the traceback, so
    this is the one place it can be closed before the error is kept for a report.
    """
    seen: set[int] = set()
    pending: list[BaseException] = [exc]

    while pending:
        error = pending.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        tb = error.__traceback__
        while tb is not None:
            for value in list(tb.tb_frame.f_locals.values()):
                if isinstance(value, socket.socket):
                    value.close()
            tb = tb.tb_next
        for linked in (error.__cause__, error.__context__):
            if linked is not None:
                pending.append(linked)


def _wait_ready(container: object, dsn: str, image: str) -> tuple[str, str]:
    """Poll until PostgreSQL answers with pg_cron installed; return the versions."""
    deadline = time.monotonic() + _START_TIMEOUT
    last_error = "no attempt yet"

    while time.monotonic() < deadline:
        if _status(container) in ("exited", "dead"):
            raise EnvironmentProblem(
                f"the container from {image} exited before PostgreSQL was ready. "
                + _log_tail(container)
            )
        try:
            with psycopg.connect(dsn, connect_timeout=3) as conn:
                server = conn.execute("SHOW server_version").fetchone()
                cron = conn.execute(
                    "SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'"
                ).fetchone()
        except psycopg.OperationalError as exc:
            last_error = str(exc).strip()
            time.sleep(0.3)
            continue
        if cron is None:
            raise EnvironmentProblem(
                f"the image {image} started PostgreSQL without the pg_cron "
                f"extension in database {_DB_NAME}; build it from docker/Dockerfile "
                "or with `make image`."
            )
        assert server is not None
        return str(server[0]).split()[0], str(cron[0])

    raise EnvironmentProblem(
        f"PostgreSQL in the container from {image} did not answer within "
        f"{_START_TIMEOUT:.0f}s (last error: {last_error}). " + _log_tail(container)
    )


def _status(container: object) -> str:
    try:
        wrapped = container.get_wrapped_container()  # type: ignore[attr-defined]
        wrapped.reload()
        return str(wrapped.status)
    except Exception:
        logger.debug("could not read the container's status", exc_info=True)
        return "unknown"


def _log_tail(container: object) -> str:
    try:
        out, err = container.get_logs()  # type: ignore[attr-defined]
    except Exception as exc:
        return f"(its log could not be read: {exc})"
    text = (out or b"").decode(errors="replace") + (err or b"").decode(
        errors="replace"
    )
    tail = "\n".join(text.splitlines()[-_LOG_TAIL_LINES:])
    return f"Last lines of its log:\n{tail}"


def _stopper(container: object) -> Callable[[], None]:
    """A function that removes the container once, logging (never raising) errors."""
    done = False

    def stop() -> None:
        nonlocal done
        if done:
            return
        done = True
        try:
            container.stop()  # type: ignore[attr-defined]
        except Exception:
            logger.warning("could not remove the container", exc_info=True)

    return stop


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
