#!/usr/bin/env bash
# What Patroni's synchronous_mode (RPO 0, the backend's default) costs a write: /sql INSERT
# through ringgate (following Patroni through etcd, as scripts/run does) and the same
# INSERT by pgbench straight to the leader, with synchronous_mode on and off, in ROUNDS
# interleaved rounds (on/off alternate first), same run. Needs the local backend
# (`eval "$(compose/cluster up)"`); leaves synchronous_mode on.
#
#   bench/sync.sh [SECS=10] [ROUNDS=3] [RATE=200]
#
# Per round and mode: p50/p99 at RATE writes/s (rg-load, from each request's scheduled
# time), max writes/s with 16 concurrent clients (wrk -c16), and pgbench -c16 tps with its
# average latency (the database's own cost, no ringgate).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
secs="${1:-10}"
rounds="${2:-3}"
rate="${3:-200}"
need_cluster
build_release ringgate ringgate-bench
bin=$(release_dir)
ports_free 18385
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; compose/cluster sync on >/dev/null 2>&1 || true; }
trap cleanup EXIT

table="bench_sync_writes"
psql -X -q -d "$RINGGATE_TEST_ALPHA_URL" -c "create table if not exists $table (id bigserial primary key, v text)"
env -i PATH="$PATH" RINGGATE_LISTEN=127.0.0.1:18385 RINGGATE_LOG=warn \
  RINGGATE_ETCD_ENDPOINTS="$RINGGATE_ETCD_ENDPOINTS" RINGGATE_PATRONI_URLS="$RINGGATE_PATRONI_URLS" \
  RINGGATE_PATRONI_SCOPE="$RINGGATE_PATRONI_SCOPE" RINGGATE_PATRONI_NAMESPACE="$RINGGATE_PATRONI_NAMESPACE" \
  "$bin"/ringgate 2>"$work/ringgate.log" &
pid=$!
cs="${RINGGATE_TEST_ALPHA_URL/@127.0.0.1:5433/@alpha.ringgate.test}"
body="{\"query\":\"insert into $table (v) values (\$1)\",\"params\":[\"x\"]}"
for _ in $(seq 50); do
  curl -fsS -X POST -H "Neon-Connection-String: $cs" -d "$body" http://127.0.0.1:18385/sql >/dev/null 2>&1 && break
  sleep 0.2
done
wrk_post_script "$work/post.lua" "$body" "$cs"
echo "insert into $table (v) values ('x');" > "$work/insert.sql"
sync_state() { psql -X -At -d "$RINGGATE_TEST_PG_URL" -c "select coalesce(string_agg(sync_state, ',' order by sync_state), '') from pg_stat_replication"; }
switch() { # on|off
  compose/cluster sync "$1" >/dev/null 2>&1
  local want="async,async"
  [ "$1" = on ] && want="async,sync"
  for _ in $(seq 100); do [ "$(sync_state)" = "$want" ] && return; sleep 0.2; done
  echo "error: pg_stat_replication is $(sync_state), not $want, after sync $1" >&2
  exit 1
}
declare -A R
for round in $(seq "$rounds"); do
  order="on off"
  [ $((round % 2)) -eq 0 ] && order="off on"
  for mode in $order; do
    switch "$mode"
    at=$("$bin"/rg-load --url http://127.0.0.1:18385/sql --rate "$rate" --duration "$secs" --warmup 1 \
      --connections 16 --body "$body" --header "Neon-Connection-String: $cs" --header "Content-Type: application/json")
    max=$(wrk -t1 -c16 -d"${secs}s" -s "$work/post.lua" http://127.0.0.1:18385/sql | grep wrk_result)
    pgb=$(pgbench -n -c 16 -j 1 -T "$secs" -f "$work/insert.sql" "$RINGGATE_TEST_ALPHA_URL" 2>&1)
    tps=$(echo "$pgb" | awk '/^tps/ {print $3; exit}')
    lat=$(echo "$pgb" | awk '/^latency average/ {print $4; exit}')
    line="p50_ms=$(echo "$at" | field p50_ms) p99_ms=$(echo "$at" | field p99_ms) max_rps=$(echo "$max" | field rps) pgbench_tps=$tps pgbench_avg_ms=$lat"
    echo "== round $round, synchronous_mode $mode: $line"
    R[$mode]+="$line
"
  done
done
echo
echo "| synchronous_mode | /sql p50 / p99 ms @ $rate/s (every round) | /sql max writes/s, 16 clients | pgbench INSERT tps, 16 clients (avg ms) |"
echo "|---|---|---|---|"
for mode in on off; do
  rows=$(printf '%s' "${R[$mode]}")
  lat=$(echo "$rows" | while read -r l; do printf '%s / %s; ' "$(echo "$l" | field p50_ms)" "$(echo "$l" | field p99_ms)"; done)
  max=$(echo "$rows" | while read -r l; do printf '%s; ' "$(echo "$l" | field max_rps)"; done)
  pg=$(echo "$rows" | while read -r l; do printf '%s (%s); ' "$(echo "$l" | field pgbench_tps)" "$(echo "$l" | field pgbench_avg_ms)"; done)
  echo "| $mode | $lat | $max | $pg |"
done
