#!/usr/bin/env bash
# The /sql result cache: a cached point SELECT (every request a hit) vs the same SELECT
# uncached (every request to the database) vs ringgate's own fixed-body GET /health (the
# ceiling: no database, no JSON), same ringgate, same run, in interleaved rounds. Needs the
# local backend (`eval "$(compose/cluster up)"`); runs against the Patroni leader directly.
#
#   bench/cache.sh [SECS=10] [CONNS=100] [ROUNDS=3]
#
# ringgate on one core pinned to CPU 0, wrk on CPU 1 (-t1, CONNS keep-alive connections).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
secs="${1:-10}"
conns="${2:-100}"
rounds="${3:-3}"
need_cluster
host=$(leader_host)
pw=ringgate-super
admin="postgresql://postgres:$pw@$host:5432/postgres"
db="postgresql://postgres:$pw@$host:5432/ringgate_bench"
ensure_bench_db "$admin" "$db"
build_release ringgate
port=18480
ports_free $port
scratch
env -i PATH="$PATH" RINGGATE_LISTEN=127.0.0.1:$port RINGGATE_WORKERS=1 RINGGATE_PIN_CORES=true RINGGATE_LOG=warn \
  DATABASE_URL="$db" RINGGATE_POOL_MAX_PER_TENANT=16 RINGGATE_POOL_MAX_TOTAL=16 \
  "$(release_dir)/ringgate" 2>"$work/ringgate.log" &
pids+=($!)
for _ in $(seq 50); do curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break; sleep 0.1; done
cs="postgresql://postgres:$pw@bench.ringgate.test/ringgate_bench"
body='{"query":"SELECT abalance FROM pgbench_accounts WHERE aid = $1","params":[12345]}'
wrk_post_script "$work/cached.lua" "$body" "$cs" 'wrk.headers["Ringgate-Cache"] = "ttl=1h"'
wrk_post_script "$work/uncached.lua" "$body" "$cs"
echo 'dofile("bench/wrk-report.lua")' > "$work/health.lua"
verdict=$(curl -fsS -o /dev/null -D - -X POST -H "Neon-Connection-String: $cs" -H "Ringgate-Cache: ttl=1h" -d "$body" "http://127.0.0.1:$port/sql" | tr -d '\r' | sed -n 's/^ringgate-cache: //Ip')
echo "first cached request: $verdict"
declare -A RPS
run() { # label path lua
  local line
  line=$(taskset -c 1 wrk -t1 -c"$conns" -d"${secs}s" -s "$3" "http://127.0.0.1:$port$2" | grep wrk_result)
  echo "== $1 round $r: $line"
  RPS[$1]+="$(echo "$line" | field rps) "
}
for r in $(seq "$rounds"); do
  run health /health "$work/health.lua"
  run cached /sql "$work/cached.lua"
  run uncached /sql "$work/uncached.lua"
done
hits=$(curl -fsS "http://127.0.0.1:$port/metrics" | awk '/^ringgate_sql_cache_events_total/ && /event="hit"/ {s+=$NF} END {print s+0}')
echo "cache hits counted: $hits"
python3 - "${RPS[health]}" "${RPS[cached]}" "${RPS[uncached]}" <<'PY'
import sys, statistics as st
h, c, u = ([float(x) for x in a.split()] for a in sys.argv[1:])
mh, mc, mu = st.median(h), st.median(c), st.median(u)
print("| scenario | req/s (median of rounds) | every round | vs /health |")
print("|---|---|---|---|")
for name, m, v in (("GET /health (ceiling)", mh, h), ("/sql point SELECT, cache hit", mc, c), ("/sql point SELECT, uncached", mu, u)):
    print(f"| {name} | {m:.0f} | {', '.join(f'{x:.0f}' for x in v)} | {m/mh:.2f}x |")
PY
