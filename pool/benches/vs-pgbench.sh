#!/usr/bin/env bash
# Point SELECTs: ringgate-pool (many monoio tasks, one core) vs `pgbench -S -M prepared`
# direct, with the same number of server connections, in the same run, in interleaved
# rounds, each pinned to CPU 1 while PostgreSQL runs where the OS puts it. Prints each
# round and the median ratio.
#
# Usage: pool/benches/vs-pgbench.sh ADMIN_URL [conns=8] [secs=10] [rounds=1]
#   ADMIN_URL: a superuser URL (e.g. $RINGGATE_TEST_PG_URL); a database ringgate_bench is
#   created and initialised with pgbench -i -s 10 when missing.
#   RINGGATE_POOL_BENCH_BIN: a point_select binary already built (skips the build).
#   RINGGATE_POOL_BASELINE_BIN: an older point_select binary, run after this one in each
#   round (for a before/after in the same run).
set -euo pipefail
admin="${1:?usage: $0 ADMIN_URL [conns] [secs] [rounds]}"
conns="${2:-8}"
secs="${3:-10}"
rounds="${4:-1}"
scale=10
cd "$(dirname "$0")/../.."
base="${admin%/*}"
db_url="$base/ringgate_bench"
if ! psql -X -A -t -d "$admin" -c "select 1 from pg_database where datname='ringgate_bench'" | grep -q 1; then
  psql -X -q -d "$admin" -c "create database ringgate_bench"
  pgbench -q -i -s "$scale" "$db_url" >/dev/null 2>&1
fi
if [ -z "${RINGGATE_POOL_BENCH_BIN:-}" ]; then
  cargo build -q --release -p ringgate-pool --bench point_select
fi
bin="${RINGGATE_POOL_BENCH_BIN:-$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/point_select-* | grep -v '\.d$' | head -1)}"
baseline="${RINGGATE_POOL_BASELINE_BIN:-}"
pool_tps() {
  RINGGATE_BENCH_PG_URL="$db_url" RINGGATE_BENCH_CONNS="$conns" RINGGATE_BENCH_SECS="$secs" RINGGATE_BENCH_SCALE="$scale" \
    taskset -c 1 "$1" | sed -n 's/.*tps=\([0-9]*\).*/\1/p'
}
results=()
for r in $(seq 1 "$rounds"); do
  pg=$(taskset -c 1 pgbench -n -S -M prepared -c "$conns" -j 1 -T "$secs" "$db_url" 2>&1 | awk '/^tps/ {print $3; exit}')
  rg=$(pool_tps "$bin")
  old=0
  [ -n "$baseline" ] && old=$(pool_tps "$baseline")
  echo "round $r: pgbench -S -M prepared -c $conns: ${pg%.*} tps   ringgate-pool ($conns conns, 64 tasks): $rg tps   baseline: $old tps"
  results+=("$pg $rg $old")
done
python3 - "${results[@]}" <<'PY'
import statistics, sys
rows = [tuple(map(float, a.split())) for a in sys.argv[1:]]
r = statistics.median(rg / pg for pg, rg, _ in rows)
line = f"median ratio ringgate-pool / pgbench -S: {r:.2f}x"
if all(old > 0 for _, _, old in rows):
    line += f"   baseline / pgbench -S: {statistics.median(old / pg for pg, _, old in rows):.2f}x"
print(line)
PY
