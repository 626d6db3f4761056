# What the bench/*.sh scripts share. Sourced (`source "$(dirname "$0")/lib.sh"`), not run;
# the scripts run from the repository's root. Functions that start servers use $work and
# $pids as set by `scratch`, and the leader's address in $host.

# Stops the script unless the local backend's settings are in the environment.
need_cluster() {
  : "${RINGGATE_CLUSTER:?run eval \"\$(compose/cluster up)\" first}"
}

# The current Patroni leader's address (127.0.1.N for the member pgN).
leader_host() {
  local leader
  leader=$("$RINGGATE_CLUSTER" leader) || return
  echo "127.0.1.${leader#pg}"
}

# Creates the database ringgate_bench (pgbench scale 10) unless it is there: ADMIN_URL
# and its URL, both on the leader.
ensure_bench_db() { # admin_url db_url
  if ! psql -X -At -d "$1" -c "select 1 from pg_database where datname='ringgate_bench'" | grep -q 1; then
    psql -X -q -d "$1" -c "create database ringgate_bench"
    # Not open to every login (the tenants' key logins among them): superusers only.
    psql -X -q -d "$1" -c "revoke connect on database ringgate_bench from public"
    pgbench -q -i -s 10 "$2" >/dev/null 2>&1
  fi
}

# Builds the release binaries of the packages named.
build_release() { # package...
  local args=() p
  for p in "$@"; do args+=(-p "$p"); done
  cargo build -q --release --locked "${args[@]}"
}

# Where the release build puts its binaries (CARGO_TARGET_DIR honoured).
release_dir() {
  echo "${CARGO_TARGET_DIR:-target}/release"
}

# Stops the script unless every port named is free. Listeners use SO_REUSEPORT, so a
# leftover server on a port would silently take part of the load.
ports_free() { # port...
  local port
  for port in "$@"; do
    if ss -Htln "( sport = :$port )" | grep -q .; then
      echo "error: port $port is already in use (a leftover server?): $(ss -Htlnp "( sport = :$port )")" >&2
      exit 1
    fi
  done
}

# Waits until every port named is listening (at most 10 s), so a run starts once its
# servers are up, not after a guessed sleep.
wait_listening() { # port...
  local port i
  for port in "$@"; do
    for i in $(seq 200); do
      ss -Htln "( sport = :$port )" | grep -q . && break
      [ "$i" -lt 200 ] || { echo "error: nothing listens on port $port after 10 s" >&2; exit 1; }
      sleep 0.05
    done
  done
}

# A scratch directory ($work) and a list of background processes ($pids): when the
# script exits, the processes are stopped and the directory removed.
scratch() {
  work=$(mktemp -d)
  pids=()
  trap stop_all EXIT
}

stop_all() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

# A self-signed certificate for localhost: $work/cert.pem and $work/key.pem.
self_signed_cert() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
}

# Starts ringgate BIN with its PostgreSQL front end (transaction pooling) on 127.0.0.1:PG_PORT
# and HTTP on HTTP_PORT, serving from the leader ($host) with CONNS server connections a
# tenant (8 more in all); its log goes to $work/LOG.
start_pg_front() { # bin http_port pg_port conns log
  env -i PATH="$PATH" RINGGATE_LISTEN=127.0.0.1:$2 RINGGATE_PG_LISTEN=127.0.0.1:$3 RINGGATE_LOG=warn \
    DATABASE_URL="postgresql://postgres:ringgate-super@$host:5432/postgres" \
    RINGGATE_CONTROL_DATABASE_URL="postgresql://ringgate_app:ringgate-app@$host:5432/ringgate_control" \
    RINGGATE_POOL_MAX_PER_TENANT="$4" RINGGATE_POOL_MAX_TOTAL=$(($4 + 8)) \
    "$1" 2>"$work/$5" &
  pids+=($!)
}

# Starts PgBouncer as the user postgres (transaction pooling, SCRAM) on 127.0.0.1:PORT for
# the database DB on the leader ($host), POOL server connections, USER with PASSWORD; its
# files in $work. Further arguments run it (e.g. `taskset -c 0`).
start_pgbouncer() { # port db pool user password [command...]
  chmod 755 "$work"
  cat > "$work/pgbouncer.ini" <<INI
[databases]
$2 = host=$host port=5432 dbname=$2
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $1
auth_type = scram-sha-256
auth_file = $work/userlist.txt
pool_mode = transaction
default_pool_size = $3
max_client_conn = 2000
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
INI
  echo "\"$4\" \"$5\"" > "$work/userlist.txt"
  chown -R postgres "$work"
  setpriv --reuid postgres --regid postgres --init-groups "${@:6}" pgbouncer "$work/pgbouncer.ini" 2>/dev/null &
  pids+=($!)
}

# Writes FILE, a wrk script POSTing BODY to /sql with the connection string CS (and the
# Lua lines EXTRA), reporting with bench/wrk-report.lua.
wrk_post_script() { # file body cs [extra]
  cat > "$1" <<LUA
wrk.method = "POST"
wrk.body = '$2'
wrk.headers["Neon-Connection-String"] = "$3"
wrk.headers["Content-Type"] = "application/json"
${4:-}
dofile("bench/wrk-report.lua")
LUA
}

# The value of `key=` in a line of `key=value` fields (whole keys only: `p50_ms` is not
# the tail of `send_lag_p50_ms`).
field() { sed -n "s/.*\(^\| \)$1=\([^ ]*\).*/\2/p"; }
