#!/usr/bin/env bash
# /sql point SELECT by primary key through ringgate vs pgbench -S direct and through
# PgBouncer, same number of server connections, same run. Needs the local backend
# (`eval "$(compose/cluster up)"`); runs against the current Patroni leader directly.
#
#   bench/sql.sh [SECS=10] [SERVER_CONNS=16]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
conns="${2:-16}"
: "${RINGGATE_CLUSTER:?run eval \"\$(compose/cluster up)\" first}"
leader=$(compose/cluster leader)
host="127.0.1.${leader#pg}"
pw=ringgate-super
admin="postgresql://postgres:$pw@$host:5432/postgres"
db="postgresql://postgres:$pw@$host:5432/ringgate_bench"
if ! psql -X -At -d "$admin" -c "select 1 from pg_database where datname='ringgate_bench'" | grep -q 1; then
  psql -X -q -d "$admin" -c "create database ringgate_bench"
  pgbench -q -i -s 10 "$db" >/dev/null 2>&1
fi
cargo build -q --release --locked -p ringgate -p ringgate-bench
work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# A clean environment: the cluster's exports (Patroni sources, control database) would
# otherwise configure this ringgate too.
env -i PATH="$PATH" RINGGATE_LISTEN=127.0.0.1:18380 RINGGATE_WORKERS=1 RINGGATE_PIN_CORES=true RINGGATE_LOG=warn \
  DATABASE_URL="$db" RINGGATE_POOL_MAX_PER_TENANT="$conns" RINGGATE_POOL_MAX_TOTAL="$conns" \
  target/release/ringgate 2>"$work/ringgate.log" &
pids+=($!)
cat > "$work/pgbouncer.ini" <<INI
[databases]
ringgate_bench = host=$host port=5432 dbname=ringgate_bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = 16432
auth_type = scram-sha-256
auth_file = $work/userlist.txt
pool_mode = transaction
default_pool_size = $conns
max_client_conn = 2000
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
INI
echo "\"postgres\" \"$pw\"" > "$work/userlist.txt"
chown -R postgres "$work"
setpriv --reuid postgres --regid postgres --init-groups taskset -c 0 pgbouncer "$work/pgbouncer.ini" 2>/dev/null &
pids+=($!)
sleep 1

cs="postgresql://postgres:$pw@bench.ringgate.test/ringgate_bench"
body='{"query":"SELECT abalance FROM pgbench_accounts WHERE aid = $1","params":[12345]}'
curl -fsS -X POST -H "Neon-Connection-String: $cs" -d "$body" http://127.0.0.1:18380/sql >/dev/null
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Neon-Connection-String"] = "$cs"
wrk.headers["Content-Type"] = "application/json"
dofile("bench/wrk-report.lua")
LUA
field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p"; }
echo "== ringgate /sql, wrk -c1000 (max), $conns server connections"
max=$(taskset -c 1 wrk -t1 -c1000 -d"${secs}s" -s "$work/post.lua" http://127.0.0.1:18380/sql | grep wrk_result)
echo "$max"
rates=()
for rate in 500 5000; do
  out=$(taskset -c 1 target/release/rg-load --url http://127.0.0.1:18380/sql --rate "$rate" --duration "$secs" --warmup 2 \
    --connections 1000 --body "$body" --header "Neon-Connection-String: $cs" --header "Content-Type: application/json")
  echo "== rg-load @ $rate/s: $out"
  rates+=("$out")
done
echo "== pgbench -S -M prepared -c $conns -j 1 direct"
direct=$(taskset -c 1 pgbench -n -S -M prepared -c "$conns" -j 1 -T "$secs" "$db" 2>&1 | awk '/^tps/ {print $3; exit}')
echo "tps=$direct"
echo "== pgbench -S -M simple -c $conns -j 1 through PgBouncer (transaction pooling)"
bouncer=$(taskset -c 1 pgbench -n -S -M simple -c "$conns" -j 1 -T "$secs" "postgresql://postgres:$pw@127.0.0.1:16432/ringgate_bench" 2>&1 | awk '/^tps/ {print $3; exit}')
echo "tps=$bouncer"
rps=$(echo "$max" | field rps)
python3 - "$rps" "$direct" "$bouncer" <<'PY'
import sys
r, d, b = (float(x) for x in sys.argv[1:])
print(f"ringgate /sql {r:.0f} req/s | pgbench direct {d:.0f} tps ({r/d:.2f}x) | pgbench via PgBouncer {b:.0f} tps ({r/b:.2f}x)")
PY
