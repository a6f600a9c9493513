#!/usr/bin/env bash
# A throwaway PostgreSQL server for the test suite, on 127.0.0.1.
#
#   eval "$(.ci/postgres.sh)"      # install if missing, start, print the URL to export
#   .ci/postgres.sh stop            # stop it
#
# Installs Debian's postgresql package when no server binaries are found, creates
# a cluster in $STARNET_PG_DIR (default /tmp/starnet-ci-postgres) owned by the
# postgres user (when run as root), starts it on port $STARNET_PG_PORT (default
# 55432, or the next free one), and creates the role and database "starnet_test"
# with a random password kept in that directory (mode 600), never in the repo.
# Idempotent: when the server is up already it only prints the export line.
# Only the export line goes to stdout; progress goes to stderr.
set -euo pipefail

PGDIR=${STARNET_PG_DIR:-/tmp/starnet-ci-postgres}
PORT_WANTED=${STARNET_PG_PORT:-55432}
ROLE=starnet_test
DB=starnet_test

log() { echo "postgres.sh: $*" >&2; }

find_bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$d" ] && [ -x "$d/initdb" ]; then
        echo "$d"
    fi
}

BINDIR=$(find_bindir)
if [ -z "$BINDIR" ]; then
    if [ "$(id -u)" != 0 ]; then
        log "PostgreSQL server binaries not found and not root: apt-get install postgresql"
        exit 1
    fi
    log "installing postgresql with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends postgresql >&2
    BINDIR=$(find_bindir)
    [ -n "$BINDIR" ] || { log "postgresql installed but no initdb under /usr/lib/postgresql"; exit 1; }
fi

DATA=$PGDIR/data
if [ "$(id -u)" = 0 ]; then
    OWNER=postgres
    as_owner() { runuser -u postgres -- "$@"; }
else
    OWNER=$(id -un)
    as_owner() { "$@"; }
fi

if [ "${1:-}" = stop ]; then
    if [ -s "$DATA/PG_VERSION" ]; then
        as_owner "$BINDIR/pg_ctl" -D "$DATA" -m fast -w stop >&2 || true
    fi
    exit 0
fi

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

mkdir -p "$PGDIR"
chmod 700 "$PGDIR"
chown "$OWNER" "$PGDIR"

if [ ! -s "$DATA/PG_VERSION" ]; then
    log "creating a cluster in $DATA"
    as_owner "$BINDIR/initdb" -D "$DATA" -U postgres -E UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    umask 077
    head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$PGDIR/password"
    chown "$OWNER" "$PGDIR/password"
fi

is_up() { [ -n "$1" ] && "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$1" -t 2; }

port=$(cat "$PGDIR/port" 2>/dev/null || true)
if ! is_up "$port"; then
    pidfile=$DATA/postmaster.pid
    if [ -f "$pidfile" ]; then
        pid=$(head -n 1 "$pidfile")
        state=$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
        if [ "$comm" = postgres ] && [ -n "$state" ] && [ "$state" != Z ]; then
            log "server (pid $pid) does not answer on port ${port:-?}: stopping it"
            as_owner "$BINDIR/pg_ctl" -D "$DATA" -m immediate -w -t 30 stop >&2 || true
        else
            log "removing the stale $pidfile and socket lock (pid $pid is gone)"
            rm -f "$pidfile" "$PGDIR"/.s.PGSQL.*
        fi
    fi
    port=$PORT_WANTED
    while port_busy "$port"; do port=$((port + 1)); done
    echo "$port" >"$PGDIR/port"
    log "starting PostgreSQL ($("$BINDIR/postgres" --version)) on 127.0.0.1:$port"
    # a throwaway test server: durability off for speed; socket only for its owner
    as_owner "$BINDIR/pg_ctl" -D "$DATA" -l "$PGDIR/server.log" -w -t 60 \
        -o "-h 127.0.0.1 -p $port -k $PGDIR -c unix_socket_permissions=0700 \
            -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
            -c max_connections=100" start >&2
fi

password=$(cat "$PGDIR/password")
psql_su() { as_owner "$BINDIR/psql" -h "$PGDIR" -p "$port" -U postgres -d postgres -qAtX "$@"; }

if [ "$(psql_su -c "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != 1 ]; then
    psql_su -c "CREATE ROLE $ROLE LOGIN PASSWORD '$password'" >&2
fi
if [ "$(psql_su -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
    psql_su -c "CREATE DATABASE $DB OWNER $ROLE" >&2
fi

echo "export STARNET_TEST_POSTGRES_URL=postgresql+psycopg2://$ROLE:$password@127.0.0.1:$port/$DB"
