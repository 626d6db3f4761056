#!/usr/bin/env bash
# CPU per transaction: one ringgate (the binary given) and one PgBouncer (transaction mode,
# the same 16 server connections), each under `pgbench -S -M extended -c 1000 -j 2` in turn
# for SECS seconds; over 5 s in the middle of each run, the server process's utime+stime
# (/proc/<pid>/stat) per transaction, and with `stat` its syscalls, io_uring requests and
# context switches (`perf stat`), or with `perf` a profile of ringgate (`perf record -g`,
# to /tmp/pg-cpu.perf.data). Needs the local backend, as bench/pg.sh.
#
#   bench/pg-cpu.sh /path/to/ringgate [SECS=24] [stat|perf]
#
# tps is pgbench's over the whole run, so the per-transaction figure is approximate; the two
# share the machine's cores with pgbench and PostgreSQL as in bench/pg.sh.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
bin=$1
secs=${2:-24}
mode=${3:-}
need_cluster
host=$(leader_host)
pw=alpha-secret
ports_free 18392 16443 16444
scratch
start_pg_front "$bin" 18392 16443 16 ringgate.log
rg=${pids[-1]}
start_pgbouncer 16444 tenant_alpha 16 alpha_owner "$pw"
wait_listening 16443 16444
ulimit -n 8192 || true
pb=$(cat "$work/pgbouncer.pid")
tick=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for target in ringgate pgbouncer; do
  if [ "$target" = ringgate ]; then
    ci="host=127.0.0.1 port=16443 user=alpha_owner password=$pw dbname=tenant_alpha options=endpoint=alpha sslmode=disable"
    pid=$rg
  else
    ci="host=127.0.0.1 port=16444 user=alpha_owner password=$pw dbname=tenant_alpha sslmode=disable"
    pid=$pb
  fi
  (cd "$work" && pgbench -n -S -M extended -c 1000 -j 2 -T "$secs" "$ci" >"$work/out.$target" 2>&1) &
  bench=$!
  sleep $((secs / 2))
  c0=$(cpu "$pid")
  case "$mode" in
    perf) if [ "$target" = ringgate ]; then
        perf record -F 999 -g -o /tmp/pg-cpu.perf.data -p "$pid" -- sleep 5 >/dev/null 2>&1
      else sleep 5; fi ;;
    stat) perf stat -x, -o "$work/stat" -p "$pid" \
        -e raw_syscalls:sys_enter,io_uring:io_uring_submit_req,io_uring:io_uring_poll_arm,context-switches -- sleep 5 ;;
    *) sleep 5 ;;
  esac
  c1=$(cpu "$pid")
  wait "$bench"
  tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$work/out.$target")
  line="$target tps=${tps%.*} cpu_s=$(echo "($c1 - $c0) / $tick" | bc -l | cut -c1-5)"
  line+=" us_cpu_per_tx=$(echo "($c1 - $c0) / $tick / 5 / $tps * 1000000" | bc -l | cut -c1-5)"
  if [ "$mode" = stat ]; then
    line+=$(awk -F, -v tx="$(echo "$tps * 5" | bc -l)" '!/^#/ && NF > 2 {n = split($3, e, ":"); printf " %s/tx=%.2f", e[n], $1 / tx}' "$work/stat")
  fi
  echo "$line load=$(cut -d' ' -f1-3 /proc/loadavg)"
done
