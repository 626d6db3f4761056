#!/usr/bin/env bash
# /sql point SELECT by primary key through ringgate vs pgbench -S direct and through
# PgBouncer, same number of server connections, same run. Needs the local backend
# (`eval "$(compose/cluster up)"`); runs against the current Patroni leader directly.
#
#   bench/sql.sh [SECS=10] [SERVER_CONNS=16] [ROUNDS=3]
#
# With RINGGATE_BASELINE=/path/to/an/older/ringgate, that binary runs too (one core pinned
# to CPU 0, like the pinned one, port 18382), measured the same way in the same run: max
# req/s in ROUNDS further rounds alternating which build goes first (ratio per round and
# median), and each latency round right after this build's pinned one. Binaries come from $CARGO_TARGET_DIR (default target/).
#
# Max req/s: ringgate on one core pinned to CPU 0, wrk and pgbench on CPU 1.
# At 500 and 5,000 req/s, in ROUNDS interleaved rounds (the machine's slow and fast
# minutes hit every server alike; the median round's figures are shown): ringgate as
# deployed by default (every core, not pinned), ringgate on one core pinned to CPU 0, nginx
# answering the same request with the same body from memory (the machine's latency floor)
# and pgbench -S at the same fixed rate (the database's own latency).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
secs="${1:-10}"
conns="${2:-16}"
rounds="${3:-3}"
need_cluster
host=$(leader_host)
pw=ringgate-super
admin="postgresql://postgres:$pw@$host:5432/postgres"
db="postgresql://postgres:$pw@$host:5432/ringgate_bench"
ensure_bench_db "$admin" "$db"
build_release ringgate ringgate-bench
bin=$(release_dir)
baseline="${RINGGATE_BASELINE:-}"
ports_free 18380 18381 18382 16432 18390
scratch

# Starts ringgate EXE serving /sql on 127.0.0.1:PORT from ringgate_bench with $conns server
# connections, its log in $work/LOG, with the further settings given. A clean environment:
# the cluster's exports (Patroni sources, control database) would otherwise configure it too.
start_sql() { # exe port log [NAME=value...]
  env -i PATH="$PATH" RINGGATE_LISTEN=127.0.0.1:$2 "${@:4}" RINGGATE_LOG=warn \
    DATABASE_URL="$db" RINGGATE_POOL_MAX_PER_TENANT="$conns" RINGGATE_POOL_MAX_TOTAL="$conns" \
    "$1" 2>"$work/$3" &
  pids+=($!)
}
pinned=(RINGGATE_WORKERS=1 RINGGATE_PIN_CORES=true)
start_sql "$bin/ringgate" 18380 ringgate.log "${pinned[@]}"
[ -z "$baseline" ] || start_sql "$baseline" 18382 ringgate-baseline.log "${pinned[@]}"
# The default deployment: one core per CPU, not pinned; the same server connections in all.
start_sql "$bin/ringgate" 18381 ringgate-default.log
start_pgbouncer 16432 ringgate_bench "$conns" postgres "$pw" taskset -c 0
wait_listening 18380 18381 16432 ${baseline:+18382}

cs="postgresql://postgres:$pw@bench.ringgate.test/ringgate_bench"
body='{"query":"SELECT abalance FROM pgbench_accounts WHERE aid = $1","params":[12345]}'
response=$(curl -fsS -X POST -H "Neon-Connection-String: $cs" -d "$body" http://127.0.0.1:18380/sql)
# The machine's latency floor: nginx on the same core answering the same POST with the same
# JSON body from memory, no database. Whatever it shows at a rate is the noise of this
# machine (other processes, the VM), not ringgate's.
mkdir -p "$work/floor/logs"
cat > "$work/floor.conf" <<NGINX
worker_processes 1;
worker_cpu_affinity 01;
error_log $work/floor/logs/error.log warn;
pid $work/floor/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:18390 backlog=4096;
    location / { default_type application/json; return 200 '$response'; }
  }
}
NGINX
nginx -p "$work/floor" -c "$work/floor.conf" -g 'daemon off;' &
pids+=($!)
wrk_post_script "$work/post.lua" "$body" "$cs"
wrk_max() { # port
  taskset -c 1 wrk -t1 -c1000 -d"${secs}s" -s "$work/post.lua" "http://127.0.0.1:$1/sql" | grep wrk_result
}
echo "== ringgate /sql, wrk -c1000 (max), $conns server connections"
max=$(wrk_max 18380)
echo "$max"
if [ -n "$baseline" ]; then
  # Interleaved, each round in the other order (this build first in odd rounds, the
  # baseline first in even ones), so that neither always runs on a warmer server.
  pairs=()
  for round in $(seq "$rounds"); do
    if [ $((round % 2)) = 1 ]; then
      b=$(wrk_max 18382 | field rps); c=$(wrk_max 18380 | field rps)
    else
      c=$(wrk_max 18380 | field rps); b=$(wrk_max 18382 | field rps)
    fi
    echo "== max round $round: this build $c req/s, baseline $b req/s"
    pairs+=("$c $b")
  done
  printf '%s\n' "${pairs[@]}" | python3 -c '
import statistics, sys
rounds = [tuple(map(float, l.split())) for l in sys.stdin if l.strip()]
ratios = [c / b for c, b in rounds]
print("max req/s, this build : baseline, per round: " + ", ".join(f"{r:.2f}x" for r in ratios)
      + f" (median {statistics.median(ratios):.2f}x; this build {statistics.median(c for c, _ in rounds):.0f},"
      + f" baseline {statistics.median(b for _, b in rounds):.0f} req/s)")'
fi
load() { # url rate
  taskset -c 1 "$bin/rg-load" --url "$1" --rate "$2" --duration "$secs" --warmup 2 \
    --connections 1000 --body "$body" --header "Neon-Connection-String: $cs" --header "Content-Type: application/json"
}
# Latency of pgbench -S at a fixed rate (-R; from each transaction's scheduled start, as
# rg-load measures): the database's own p50/p99/p99.9 through 16 direct connections.
pgbench_at() { # rate
  rm -f "$work"/pgb.*
  (cd "$work" && taskset -c 1 pgbench -n -S -M prepared -c "$conns" -j 1 -T "$secs" -R "$1" -l --log-prefix=pgb "$db" >/dev/null 2>&1)
  cat "$work"/pgb.* | python3 -c '
import sys
v = sorted(int(f[2]) + (int(f[6]) if len(f) > 6 else 0) for f in (l.split() for l in sys.stdin) if len(f) >= 6)
q = lambda p: v[min(len(v) - 1, int(p * len(v)))] / 1000
print(f"pgbench_rate n={len(v)} p50_ms={q(0.5):.3f} p99_ms={q(0.99):.3f} p999_ms={q(0.999):.3f}")'
}
curl -fsS -X POST -H "Neon-Connection-String: $cs" -d "$body" http://127.0.0.1:18381/sql >/dev/null
[ -z "$baseline" ] || curl -fsS -X POST -H "Neon-Connection-String: $cs" -d "$body" http://127.0.0.1:18382/sql >/dev/null
declare -A ROUNDS_OF
# Runs one scenario (the command after KEY and LABEL), prints its line and keeps its
# "p99 p50 p99.9" for the summary.
keep() { # key label command...
  local line
  line=$("${@:3}")
  echo "== $2: $line"
  ROUNDS_OF[$1]+="$(echo "$line" | field p99_ms) $(echo "$line" | field p50_ms) $(echo "$line" | field p999_ms)
"
}
latency_round() { # rate round
  local at="@ $1/s round $2"
  keep "default/$1" "$at ringgate /sql (default: every core, unpinned)" load http://127.0.0.1:18381/sql "$1"
  keep "pinned/$1" "$at ringgate /sql (1 core pinned to CPU 0)" load http://127.0.0.1:18380/sql "$1"
  [ -z "$baseline" ] || keep "baseline/$1" "$at baseline ringgate /sql (1 core pinned to CPU 0)" load http://127.0.0.1:18382/sql "$1"
  keep "floor/$1" "$at nginx fixed body (machine floor)" load http://127.0.0.1:18390/sql "$1"
  keep "pgbench/$1" "$at pgbench -S -R $1 direct" pgbench_at "$1"
}
for rate in 500 5000; do
  for round in $(seq "$rounds"); do latency_round "$rate" "$round"; done
done
# The median round by p99 (p99 p50 p99.9), and every round's p99.
median_p99() { printf '%s' "${ROUNDS_OF[$1]}" | sort -n -k1,1 | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
all_p99() { printf '%s' "${ROUNDS_OF[$1]}" | awk '{printf "%s%s", sep, $1; sep=", "}'; }
echo
echo "| @ rate | server | p50 / p99 / p99.9 ms (median round by p99) | p99 of every round |"
echo "|---|---|---|---|"
for rate in 500 5000; do
  for who in "default:ringgate, every core, unpinned" "pinned:ringgate, 1 core pinned" "baseline:baseline ringgate, 1 core pinned" "floor:nginx fixed body (floor)" "pgbench:pgbench -S -R direct"; do
    [ -n "${ROUNDS_OF[${who%%:*}/$rate]:-}" ] || continue
    read -r p99 p50 p999 <<<"$(median_p99 "${who%%:*}/$rate")"
    echo "| $rate/s | ${who#*:} | $p50 / $p99 / $p999 | $(all_p99 "${who%%:*}/$rate") |"
  done
done
echo
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
