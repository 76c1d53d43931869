#!/usr/bin/env bash
# A private PostgreSQL server for the tests (Debian's PostgreSQL 15 from
# scripts/deps.sh; not the distribution's cluster, not systemd).
#
#   scripts/with-pg.sh CMD...   runs CMD with a private cluster up and
#                               BERTH_TEST_PG_URL set to its superuser URL
#                               (postgres://berth_test:PASSWORD@127.0.0.1:PORT/postgres);
#                               stops and removes the cluster when CMD ends,
#                               fails or is interrupted, and exits with CMD's
#                               status. With BERTH_TEST_PG_URL already set
#                               it only runs CMD (a server of your own).
#   scripts/with-pg.sh start        a fresh cluster, started; prints its folder
#   scripts/with-pg.sh start DIR    starts the cluster in DIR again (same port,
#                                   same data)
#   scripts/with-pg.sh stop DIR     stops it (fast shutdown: clients are cut)
#   scripts/with-pg.sh remove DIR   stops it and deletes DIR
#
# The subcommands are what testkit's PgServer runs (one implementation for
# the shell and the Rust tests). A cluster's folder holds: data/ (the
# cluster), sock/ (its unix socket), postgres.log, port, and url (mode 0600:
# the superuser URL with its password; read it, never print it).
#
# The cluster is throwaway test data: fsync off, 127.0.0.1 only, password
# (SCRAM) authentication for the one superuser berth_test, whose random
# password goes to initdb through a file and to clients through the URL in
# the environment, never through a command line (`ps` shows those).
# PostgreSQL refuses to run as root: as root, the cluster belongs to the
# unprivileged system user berth-pg (created when missing).
set -euo pipefail

PG_USER=berth-pg
SUPERUSER=berth_test

die() {
  echo "with-pg: $*" >&2
  exit 1
}

# Debian's server binaries are not on PATH; the newest installed version.
pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$d" ] && [ -x "$d/initdb" ] ||
    die "PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/initdb): run scripts/deps.sh"
  echo "$d"
}

# Runs a command as the cluster's owner, from the cluster's folder (the
# caller's folder may be closed to that user).
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    (cd "$DIR" && runuser -u "$PG_USER" -- "$@")
  else
    (cd "$DIR" && "$@")
  fi
}

ensure_user() {
  [ "$(id -u)" -eq 0 ] || return 0
  id -u "$PG_USER" >/dev/null 2>&1 && return 0
  # Two clusters started at once (parallel tests) would both add the user;
  # useradd fails on a locked or existing entry, so one at a time.
  (
    flock 9
    id -u "$PG_USER" >/dev/null 2>&1 ||
      useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin "$PG_USER"
  ) 9>/run/berth-pg-useradd.lock
}

# A port that was free a moment ago. PostgreSQL cannot be told to listen on
# port 0 and report what it got (it needs the number up front for its
# socket's name and for clients), so the port is picked by binding port 0
# here and closing it; another process may take it before postgres binds
# it, which start_cluster notices (postgres exits: address in use) and
# answers with another port.
pick_port() {
  python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# The cluster's settings: postgresql.conf includes berth.conf (fixed) and
# port.conf (rewritten when a port is taken).
write_settings() {
  cat >"$DIR/data/berth.conf" <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR/sock'
max_connections = 400
shared_buffers = 64MB
# Test data only: nothing needs to survive a crash of the machine.
fsync = off
synchronous_commit = off
full_page_writes = off
logging_collector = off
log_min_messages = warning
EOF
  cat >>"$DIR/data/postgresql.conf" <<'EOF'
include = 'berth.conf'
include = 'port.conf'
EOF
  cat >"$DIR/data/pg_hba.conf" <<'EOF'
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 scram-sha-256
host    all       all   127.0.0.1/32  scram-sha-256
EOF
}

init_cluster() {
  local bin=$1 pw
  ensure_user
  DIR=$(mktemp -d "${TMPDIR:-/tmp}/berth-pg.XXXXXX")
  mkdir "$DIR/sock"
  # Letters and digits only: the URL needs no escaping.
  pw=$(head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32)
  (umask 077 && printf '%s\n' "$pw" >"$DIR/pwfile")
  if [ "$(id -u)" -eq 0 ]; then
    chown -R "$PG_USER:" "$DIR"
    runuser -u "$PG_USER" -- test -x "$DIR" ||
      die "user $PG_USER cannot reach $DIR (a folder above it is closed): set TMPDIR to an open folder"
  fi
  chmod 700 "$DIR"
  as_owner "$bin/initdb" --pgdata="$DIR/data" --username="$SUPERUSER" \
    --pwfile="$DIR/pwfile" --auth=scram-sha-256 --encoding=UTF8 --no-locale \
    --no-sync >"$DIR/initdb.log" 2>&1 ||
    { cat "$DIR/initdb.log" >&2; rm -rf "$DIR"; die "initdb failed"; }
  rm -f "$DIR/pwfile"
  write_settings
  [ "$(id -u)" -ne 0 ] || chown "$PG_USER:" "$DIR/data/berth.conf" "$DIR/data/pg_hba.conf"
  (umask 077 && printf '%s\n' "$pw" >"$DIR/password")
}

start_cluster() {
  local bin=$1 port tries=0
  [ -d "$DIR/data" ] || die "$DIR holds no cluster"
  while :; do
    if [ -s "$DIR/port" ] && [ "$tries" -eq 0 ]; then
      port=$(cat "$DIR/port") # start again: the same port
    else
      port=$(pick_port)
    fi
    echo "port = $port" >"$DIR/data/port.conf"
    [ "$(id -u)" -ne 0 ] || chown "$PG_USER:" "$DIR/data/port.conf"
    # -w: returns once the server accepts connections (or has failed).
    if as_owner "$bin/pg_ctl" --pgdata="$DIR/data" --log="$DIR/postgres.log" \
      --wait --timeout=60 --silent start >/dev/null 2>&1; then
      break
    fi
    tries=$((tries + 1))
    if grep -q 'Address already in use' "$DIR/postgres.log" 2>/dev/null && [ "$tries" -lt 5 ]; then
      continue
    fi
    tail -n 20 "$DIR/postgres.log" >&2 || true
    die "PostgreSQL did not start (its log: $DIR/postgres.log)"
  done
  echo "$port" >"$DIR/port"
  (umask 077 && printf 'postgres://%s:%s@127.0.0.1:%s/postgres\n' \
    "$SUPERUSER" "$(cat "$DIR/password")" "$port" >"$DIR/url")
}

stop_cluster() {
  local bin=$1
  [ -f "$DIR/data/postmaster.pid" ] || return 0
  as_owner "$bin/pg_ctl" --pgdata="$DIR/data" --mode=fast --wait --timeout=60 \
    --silent stop >/dev/null 2>&1 ||
    as_owner "$bin/pg_ctl" --pgdata="$DIR/data" --mode=immediate --wait --silent stop \
      >/dev/null 2>&1 || true
}

remove_cluster() {
  stop_cluster "$1"
  # Only a folder this script made.
  [ -d "$DIR/data" ] || [ -f "$DIR/password" ] || die "$DIR is not a with-pg cluster"
  rm -rf "$DIR"
}

cluster_dir() {
  [ -n "${1:-}" ] || die "usage: with-pg.sh $2 DIR"
  [ -d "$1" ] || die "no such cluster folder: $1"
  DIR=$(cd "$1" && pwd)
}

case "${1:-}" in
start)
  BIN=$(pg_bin)
  if [ -n "${2:-}" ]; then
    cluster_dir "$2" start
  else
    init_cluster "$BIN"
  fi
  start_cluster "$BIN"
  echo "$DIR"
  ;;
stop)
  cluster_dir "${2:-}" stop
  stop_cluster "$(pg_bin)"
  ;;
remove)
  cluster_dir "${2:-}" remove
  remove_cluster "$(pg_bin)"
  ;;
"")
  die "usage: with-pg.sh CMD... | start [DIR] | stop DIR | remove DIR"
  ;;
*)
  if [ -n "${BERTH_TEST_PG_URL:-}" ]; then
    exec "$@"
  fi
  BIN=$(pg_bin)
  DIR=""
  cleanup() {
    [ -z "$DIR" ] || remove_cluster "$BIN" || true
  }
  trap cleanup EXIT
  init_cluster "$BIN"
  start_cluster "$BIN"
  BERTH_TEST_PG_URL=$(cat "$DIR/url")
  export BERTH_TEST_PG_URL
  echo "with-pg: PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$(cat "$DIR/port") (cluster in $DIR)" >&2
  # Not exec: the trap removes the cluster after CMD. Its status is ours.
  # CMD runs in the background (its stdin kept) so that a TERM or INT sent
  # to this script alone reaches it at once (bash defers traps while a
  # foreground command runs); the cluster goes when CMD has ended.
  "$@" <&0 &
  child=$!
  trap 'kill -TERM "$child" 2>/dev/null || true' TERM
  trap 'kill -INT "$child" 2>/dev/null || true' INT
  status=0
  while :; do
    wait "$child" && status=0 || status=$?
    kill -0 "$child" 2>/dev/null || break # not just a signal that woke wait
  done
  exit "$status"
  ;;
esac
