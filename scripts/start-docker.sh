#!/usr/bin/env bash
# Start a Docker engine for the testcontainers backend, if none answers yet.
#
# Host networking only: --bridge=none creates no docker0 bridge and
# --iptables=false leaves the firewall alone, so containers share the host's
# network namespace (run them with --network host) and listen on loopback.
# No private-range address is created or contacted.
#
# Idempotent: when `docker info` already answers (as root, or as a user in the
# docker group), it does nothing and needs no root. Otherwise starting dockerd
# needs root: not being root, it runs itself again through sudo. Needs Debian's
# docker.io (scripts/install-system-deps.sh docker installs it).
set -euo pipefail

log=${KRONOS_DOCKERD_LOG:-/var/tmp/kronos-dockerd.log}
wait_seconds=${KRONOS_DOCKERD_WAIT:-60}
self=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")

if docker info >/dev/null 2>&1; then
    echo "docker: engine already running"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "docker: no engine answers and starting dockerd needs root, but this" \
            "is not root and sudo is missing. Run as root: bash $self" >&2
        exit 1
    fi
    echo "docker: starting dockerd needs root; using sudo"
    sudo env KRONOS_DOCKERD_LOG="$log" KRONOS_DOCKERD_WAIT="$wait_seconds" \
        bash "$self"
    if ! docker info >/dev/null 2>&1; then
        echo "docker: the engine runs, but user $(id -un) cannot reach it. Add the" \
            "user to the docker group (as root: usermod -aG docker $(id -un)," \
            "then log in again) or run the tests as root." >&2
        exit 1
    fi
    exit 0
fi

dockerd=""
for candidate in /usr/sbin/dockerd /usr/bin/dockerd "$(command -v dockerd || true)"
do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then
        dockerd=$candidate
        break
    fi
done
if [ -z "$dockerd" ]; then
    echo "docker: dockerd not found; run 'scripts/install-system-deps.sh docker'" \
        "(Debian package docker.io) first" >&2
    exit 1
fi

# containerd is started by dockerd itself when no system containerd runs.
echo "docker: starting dockerd (log $log)"
setsid nohup "$dockerd" --bridge=none --iptables=false --ip-masq=false \
    --ip6tables=false --userland-proxy=false \
    >"$log" 2>&1 </dev/null &

for _ in $(seq "$wait_seconds"); do
    if docker info >/dev/null 2>&1; then
        echo "docker: engine ready"
        exit 0
    fi
    sleep 1
done

echo "docker: dockerd did not answer within ${wait_seconds}s; last log lines:" >&2
tail -n 20 "$log" >&2 || true
exit 1
