#!/usr/bin/env bash
# Install the system packages kronos-atomicity needs on Debian: PostgreSQL 15
# and pg_cron for the embedded server, python3-venv when the Python that makes
# the virtual environment lacks it, and with the argument `docker` also
# docker.io and debootstrap for the container checks.
#
# Idempotent: it installs only what is missing, and runs apt-get only then.
#
# Usage: scripts/install-system-deps.sh [docker]
# Environment: PG_MAJOR (default 15), PYTHON (default python3).
set -euo pipefail

pg_major="${PG_MAJOR:-15}"
python="${PYTHON:-python3}"
want_docker=no

for arg in "$@"; do
    case "$arg" in
        docker) want_docker=yes ;;
        *)
            echo "usage: $0 [docker]" >&2
            exit 2
            ;;
    esac
done

missing=()

if [[ ! -x "/usr/lib/postgresql/${pg_major}/bin/initdb" ]]; then
    missing+=("postgresql-${pg_major}")
fi
if [[ ! -f "/usr/lib/postgresql/${pg_major}/lib/pg_cron.so" ]]; then
    missing+=("postgresql-${pg_major}-cron")
fi
if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
# dockerd and debootstrap live in /usr/sbin, which is not on an ordinary user's
# PATH, so look at the files the packages install rather than asking the PATH.
installed() {
    local name=$1 dir
    for dir in /usr/sbin /usr/bin /sbin /bin; do
        [[ -x "$dir/$name" ]] && return 0
    done
    command -v "$name" >/dev/null 2>&1
}
if [[ "$want_docker" == yes ]]; then
    installed dockerd || missing+=(docker.io)
    installed debootstrap || missing+=(debootstrap)
fi

if [[ ${#missing[@]} -eq 0 ]]; then
    extra=""
    [[ "$want_docker" == yes ]] && extra=", docker, debootstrap"
    echo "install-system-deps: nothing to do; PostgreSQL ${pg_major}, pg_cron," \
        "python venv${extra} are installed"
    exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    echo "install-system-deps: need to install ${missing[*]}, but this is not" \
        "root and sudo is missing. Run as root: apt-get install ${missing[*]}" >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: need ${missing[*]}, but this is not a Debian-like" \
        "system (no apt-get). Install PostgreSQL ${pg_major} with pg_cron yourself" \
        "and set KRONOS_PG_BIN, or use --dsn / KRONOS_DSN." >&2
    exit 1
fi

echo "install-system-deps: installing ${missing[*]}"
# Wait for another apt run (unattended upgrades, a parallel job) to finish.
wait_lock=(-o DPkg::Lock::Timeout=300)
"${as_root[@]}" apt-get "${wait_lock[@]}" update
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get "${wait_lock[@]}" install -y --no-install-recommends "${missing[@]}"
echo "install-system-deps: done"
