#!/usr/bin/env bash
# Point SELECTs: ringgate-pool (many monoio tasks, one core) vs `pgbench -S` direct, with the
# same number of server connections, in the same run, each pinned to CPU 1 while PostgreSQL
# runs where the OS puts it. Prints both and the ratio.
#
# Usage: pool/benches/vs-pgbench.sh ADMIN_URL [conns=8] [secs=10]
#   ADMIN_URL: a superuser URL (e.g. $RINGGATE_TEST_PG_URL); a database ringgate_bench is
#   created and initialised with pgbench -i -s 10 when missing.
set -euo pipefail
admin="${1:?usage: $0 ADMIN_URL [conns] [secs]}"
conns="${2:-8}"
secs="${3:-10}"
scale=10
cd "$(dirname "$0")/../.."
base="${admin%/*}"
db_url="$base/ringgate_bench"
if ! psql -X -A -t -d "$admin" -c "select 1 from pg_database where datname='ringgate_bench'" | grep -q 1; then
  psql -X -q -d "$admin" -c "create database ringgate_bench"
  pgbench -q -i -s "$scale" "$db_url" >/dev/null 2>&1
fi
cargo build -q --release -p ringgate-pool --bench point_select
bin=$(ls -t target/release/deps/point_select-* | grep -v '\.d$' | head -1)
echo "== pgbench -S -M prepared -c $conns -j 1 -T $secs (CPU 1)"
pg=$(taskset -c 1 pgbench -n -S -M prepared -c "$conns" -j 1 -T "$secs" "$db_url" 2>&1 | tee /dev/stderr | awk '/^tps/ {print $3; exit}')
echo "== ringgate-pool: $conns server connections, 64 tasks (CPU 1)"
rg=$(RINGGATE_BENCH_PG_URL="$db_url" RINGGATE_BENCH_CONNS="$conns" RINGGATE_BENCH_SECS="$secs" RINGGATE_BENCH_SCALE="$scale" \
  taskset -c 1 "$bin" | tee /dev/stderr | sed -n 's/.*tps=\([0-9]*\).*/\1/p')
python3 - "$pg" "$rg" <<'PY'
import sys
pg, rg = float(sys.argv[1]), float(sys.argv[2])
print(f"pgbench -S: {pg:.0f} tps   ringgate-pool: {rg:.0f} tps   ratio: {rg/pg:.2f}x")
PY
