#!/usr/bin/env bash
# pgbench -S over the PostgreSQL protocol: through ringgate's front end (RINGGATE_PG_LISTEN,
# transaction pooling), through PgBouncer (transaction pooling) and direct to the leader,
# the same server connections for both poolers, in one run. Needs the local backend
# (`eval "$(compose/cluster up)"`); tenant alpha's role against the Patroni leader.
#
#   bench/pg.sh [SECS=10] [SERVER_CONNS=16] [ROUNDS=1]    (RINGGATE_BIN=path: skip the build)
#
# With ROUNDS > 1, the table is followed by that many more rounds of each of issue 27's
# two pairs — 1000 clients `-M extended`, ringgate against PgBouncer; 32 clients `-M
# prepared`, ringgate against direct — alternating which runs first, with each round's
# ratio and their median: one run's ratio on a shared 2-core machine says little.
#
# With RINGGATE_BASELINE=/path/to/an/older/ringgate, that binary runs too (ports 16435 and
# 18383, the same settings), measured right after this build in every row: a before/after
# in the same run.
#
# Throughput is pgbench's tps (without connection time); p99 comes from pgbench's
# per-transaction log (-l). ringgate runs with every core (RINGGATE_WORKERS unset),
# PgBouncer is one process; nothing is pinned, pgbench shares the same two cores.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
secs="${1:-10}"
conns="${2:-16}"
rounds="${3:-1}"
need_cluster
host=$(leader_host)
pw=alpha-secret
direct="host=$host port=5432 user=alpha_owner password=$pw dbname=tenant_alpha"
rows=$(psql -X -At -d "$direct" -c "select count(*) from pgbench_accounts" 2>/dev/null || echo 0)
if [ "$rows" != "1000000" ]; then
  pgbench -q -i -s 10 "$direct" >/dev/null 2>&1
fi
# RINGGATE_BIN: a ringgate binary already built (skips the release build).
[ -n "${RINGGATE_BIN:-}" ] || build_release ringgate
bin="${RINGGATE_BIN:-$(release_dir)/ringgate}"
baseline="${RINGGATE_BASELINE:-}"
ports_free 16433 16434 18382 16435 18383
scratch

start_pg_front "$bin" 18382 16433 "$conns" ringgate.log
[ -z "$baseline" ] || start_pg_front "$baseline" 18383 16435 "$conns" baseline.log
targets="direct ringgate${baseline:+ baseline} pgbouncer"
start_pgbouncer 16434 tenant_alpha "$conns" alpha_owner "$pw"
wait_listening 16433 16434 ${baseline:+16435}
ulimit -n 8192 || true

via_ringgate="host=127.0.0.1 port=16433 user=alpha_owner password=$pw dbname=tenant_alpha options=endpoint=alpha sslmode=disable"
via_baseline="host=127.0.0.1 port=16435 user=alpha_owner password=$pw dbname=tenant_alpha options=endpoint=alpha sslmode=disable"
via_bouncer="host=127.0.0.1 port=16434 user=alpha_owner password=$pw dbname=tenant_alpha sslmode=disable"

# One pgbench run: prints "tps p99_ms failed".
run() {
  local conninfo="$1" mode="$2" clients="$3"
  rm -f "$work"/log*
  local out
  out=$(cd "$work" && pgbench -n -S -M "$mode" -c "$clients" -j 2 -T "$secs" -l --log-prefix=log "$conninfo" 2>&1) || {
    echo "pgbench failed: $out" >&2
    echo "0 - -"
    return
  }
  local tps failed p99
  tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
  failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out")
  p99=$(cat "$work"/log* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {i=int(NR*0.99); if (i<1) i=1; printf "%.2f", a[i]/1000}')
  echo "${tps%.*} $p99 ${failed:-0}"
}

printf "| clients | mode | target | tps | p99 ms | failed |\n|---|---|---|---|---|---|\n"
for mode in simple extended prepared; do
  for target in $targets; do
    case $target in
      direct) ci="$direct" ;;
      ringgate) ci="$via_ringgate" ;;
      baseline) ci="$via_baseline" ;;
      pgbouncer) ci="$via_bouncer" ;;
    esac
    if [ "$target" = pgbouncer ] && [ "$mode" = prepared ]; then
      echo "| 32 | $mode | pgbouncer | (PgBouncer 1.18 cannot pool named prepared statements) | | |"
      continue
    fi
    read -r tps p99 failed < <(run "$ci" "$mode" 32)
    echo "| 32 | $mode | $target | $tps | $p99 | $failed |"
  done
done
# 1000 clients: beyond the server's max_connections, so poolers only.
for mode in extended prepared; do
  for target in ${targets#direct }; do
    [ "$target" = pgbouncer ] && [ "$mode" = prepared ] && continue
    case $target in
      ringgate) ci="$via_ringgate" ;;
      baseline) ci="$via_baseline" ;;
      pgbouncer) ci="$via_bouncer" ;;
    esac
    read -r tps p99 failed < <(run "$ci" "$mode" 1000)
    echo "| 1000 | $mode | $target | $tps | $p99 | $failed |"
  done
done

# Interleaved rounds of a pair (each round alternates which runs first): prints the table
# and the median of the ratios. pair LABEL CLIENTS MODE A_NAME A_CONNINFO B_NAME B_CONNINFO GOAL
pair() {
  local label="$1" clients="$2" mode="$3" a_name="$4" a_ci="$5" b_name="$6" b_ci="$7" goal="$8"
  printf "\n| round | first | %s tps (p99 ms) | %s tps (p99 ms) | %s / %s |\n|---|---|---|---|---|\n" \
    "$a_name" "$b_name" "$a_name" "$b_name"
  local ratios=() r order target a_tps a_p99 b_tps b_p99 ratio median
  for r in $(seq "$rounds"); do
    if [ $((r % 2)) -eq 1 ]; then order="a b"; else order="b a"; fi
    for target in $order; do
      case $target in
        a) read -r a_tps a_p99 _ < <(run "$a_ci" "$mode" "$clients") ;;
        b) read -r b_tps b_p99 _ < <(run "$b_ci" "$mode" "$clients") ;;
      esac
    done
    ratio=$(awk -v a="$a_tps" -v b="$b_tps" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    ratios+=("$ratio")
    if [ "${order%% *}" = a ]; then first="$a_name"; else first="$b_name"; fi
    echo "| $r | $first | $a_tps ($a_p99) | $b_tps ($b_p99) | ${ratio}x |"
  done
  median=$(printf "%s\n" "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else printf "%.2f", (a[NR/2]+a[NR/2+1])/2}')
  echo
  echo "$label, $a_name / $b_name over $rounds interleaved rounds: median ${median}x (goal >= $goal)"
}

# Issue 27's two goals, each as interleaved rounds: 1000 clients -M extended against
# PgBouncer, 32 clients -M prepared against direct.
if [ "$rounds" -gt 1 ]; then
  pair "1000 extended" 1000 extended ringgate "$via_ringgate" PgBouncer "$via_bouncer" 1.2x
  pair "32 prepared" 32 prepared ringgate "$via_ringgate" direct "$direct" 0.8x
fi
