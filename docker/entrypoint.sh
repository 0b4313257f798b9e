#!/bin/sh
# Entrypoint of the locally built image (scripts/build-image.sh): the part of
# the official postgres image's contract the toolkit uses, nothing more.
#
# On first start it initialises $PGDATA, creates $POSTGRES_DB with the pg_cron
# extension, and preloads pg_cron watching that database. The set-up server
# listens on its Unix socket only, so nothing reaches the network before the
# real command (`postgres ...`) starts.
set -eu

: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_DB:=kronos}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"

if [ "${1:-}" = "postgres" ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    mkdir -p "$PGDATA"
    chmod 700 "$PGDATA"

    if [ "$POSTGRES_HOST_AUTH_METHOD" = "trust" ]; then
        initdb -D "$PGDATA" -U "$POSTGRES_USER" -A trust -E UTF8 --locale=C \
            --no-sync >/dev/null
    else
        if [ -z "${POSTGRES_PASSWORD:-}" ]; then
            echo "entrypoint: set POSTGRES_PASSWORD, or" \
                "POSTGRES_HOST_AUTH_METHOD=trust for a throwaway server" >&2
            exit 1
        fi
        pwfile=$(mktemp)
        printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
        initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" \
            -A "$POSTGRES_HOST_AUTH_METHOD" -E UTF8 --locale=C --no-sync >/dev/null
        rm -f "$pwfile"
    fi

    printf "%s\n" \
        "shared_preload_libraries = 'pg_cron'" \
        "cron.database_name = '$POSTGRES_DB'" \
        "unix_socket_directories = '/var/run/postgresql'" \
        >>"$PGDATA/postgresql.conf"

    pg_ctl -D "$PGDATA" -w -o "-c listen_addresses=''" start >/dev/null
    if [ "$POSTGRES_DB" != "postgres" ]; then
        psql -v ON_ERROR_STOP=1 -h /var/run/postgresql -U "$POSTGRES_USER" \
            -d postgres -qc "CREATE DATABASE \"$POSTGRES_DB\"" >/dev/null
    fi
    psql -v ON_ERROR_STOP=1 -h /var/run/postgresql -U "$POSTGRES_USER" \
        -d "$POSTGRES_DB" -qc "CREATE EXTENSION IF NOT EXISTS pg_cron" >/dev/null
    pg_ctl -D "$PGDATA" -w -m fast stop >/dev/null
    echo "entrypoint: initialised $PGDATA with database $POSTGRES_DB and pg_cron"
fi

exec "$@"
