#!/usr/bin/env bash
# ringgate's benchmark harness. Servers run pinned to CPU 0, load generators to CPU 1, all in
# one run so ratios compare like with like.
#
#   bench/run.sh http [SECS]   ringgate vs nginx on one core, GET /health (fixed small JSON):
#                              wrk at 1000 connections (max req/s), then constant-rate load
#                              (wrk2 when on PATH, else rg-load: open loop with
#                              coordinated-omission correction) at 10k and 30k req/s;
#                              plain HTTP and TLS. Prints a table; writes bench/results/.
#   bench/run.sh pool [ADMIN_URL]   the pool vs pgbench -S (pool/benches/vs-pgbench.sh).
#   bench/run.sh sql [SECS]    /sql point SELECT vs pgbench -S direct and via PgBouncer (bench/sql.sh).
#   bench/run.sh proxy [SECS]  reverse proxy vs HAProxy and nginx (bench/proxy.sh).
#   bench/run.sh ha [SOAK_SECS] [TENANTS]   HA and load long forms (bench/ha.sh).
#
#   RINGGATE_BIN=/path/to/ringgate (http) runs that build instead of the one just built (to
#   compare builds: run it for each, interleaved). The build's output honours CARGO_TARGET_DIR.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
suite="${1:-http}"
case "$suite" in
  sql) exec bench/sql.sh "${2:-10}" ;;
  proxy) exec bench/proxy.sh "${2:-10}" ;;
  ha) exec bench/ha.sh "${2:-600}" "${3:-10000}" ;;
  pool) exec pool/benches/vs-pgbench.sh "${2:-${RINGGATE_TEST_PG_URL:?set RINGGATE_TEST_PG_URL or pass an admin URL}}" 8 10 ;;
  http) ;;
  *) echo "usage: $0 http [SECS] | pool [ADMIN_URL] | sql [SECS] | proxy [SECS] | ha [SOAK_SECS] [TENANTS]" >&2; exit 2 ;;
esac
secs="${2:-15}"
warm=3
rates="10000 30000"
scripts/install-deps
# SKIP_BUILD=1 uses the binaries already built.
[ -n "${SKIP_BUILD:-}" ] || build_release ringgate ringgate-bench
bin=$(release_dir)
ringgate=${RINGGATE_BIN:-$bin/ringgate}
scratch

self_signed_cert

# nginx: one worker on CPU 0, the same response as ringgate's /health.
mkdir -p "$work/nginx/logs"
cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
worker_cpu_affinity 01;
worker_rlimit_nofile 65536;
error_log $work/nginx/logs/error.log warn;
pid $work/nginx/nginx.pid;
events { worker_connections 20000; multi_accept on; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  server {
    listen 127.0.0.1:18180 reuseport backlog=4096;
    listen 127.0.0.1:18543 ssl reuseport backlog=4096;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location = /health { default_type application/json; return 200 '{"status":"ok"}'; }
  }
}
NGINX
nginx -p "$work/nginx" -c "$work/nginx.conf" -g 'daemon off;' &
pids+=($!)
env -i PATH="$PATH" RINGGATE_LISTEN=127.0.0.1:18280 RINGGATE_TLS_LISTEN=127.0.0.1:18643 RINGGATE_TLS_CERT="$work/cert.pem" \
  RINGGATE_TLS_KEY="$work/key.pem" RINGGATE_WORKERS=1 RINGGATE_PIN_CORES=true RINGGATE_LOG=warn,ringgate::rt=info \
  "$ringgate" 2>"$work/ringgate.log" &
pids+=($!)
wait_listening 18180 18280 18543 18643
for port in 18180 18280; do curl -fsS "http://127.0.0.1:$port/health" >/dev/null; done

cp bench/wrk-report.lua "$work/pct.lua"

declare -A R
run_wrk() { # name url
  local out
  out=$(taskset -c 1 wrk -t1 -c1000 -d"${secs}s" --latency -s "$work/pct.lua" "$2" 2>&1 | grep wrk_result)
  R[$1]="$(echo "$out" | field rps) $(echo "$out" | field p50_ms) $(echo "$out" | field p99_ms) $(echo "$out" | field p999_ms) $(echo "$out" | field errors)"
}
run_rate() { # name url rate
  local out
  if command -v wrk2 >/dev/null; then
    out=$(taskset -c 1 wrk2 -t1 -c200 -d"${secs}s" -R"$3" -s "$work/pct.lua" "$2" 2>&1 | grep wrk_result)
    R[$1]="$(echo "$out" | field rps) $(echo "$out" | field p50_ms) $(echo "$out" | field p99_ms) $(echo "$out" | field p999_ms) $(echo "$out" | field errors)"
  else
    out=$(taskset -c 1 "$bin/rg-load" --url "$2" --rate "$3" --duration "$secs" --warmup "$warm" --connections 200 --ca "$work/cert.pem")
    R[$1]="$(echo "$out" | field achieved_rate) $(echo "$out" | field p50_ms) $(echo "$out" | field p99_ms) $(echo "$out" | field p999_ms) $(echo "$out" | field errors)"
  fi
}
for proto in http https; do
  for server in nginx ringgate; do
    case "$server/$proto" in
      nginx/http) url=http://127.0.0.1:18180/health ;; nginx/https) url=https://127.0.0.1:18543/health ;;
      ringgate/http) url=http://127.0.0.1:18280/health ;; ringgate/https) url=https://127.0.0.1:18643/health ;;
    esac
    taskset -c 1 wrk -t1 -c100 -d"${warm}s" "$url" >/dev/null 2>&1 || true
    run_wrk "$server/$proto/max" "$url"
    for rate in $rates; do run_rate "$server/$proto/$rate" "$url" "$rate"; done
  done
done

gen=$(command -v wrk2 >/dev/null && echo wrk2 || echo rg-load)
table=$(
  echo "| scenario | nginx req/s | ringgate req/s | ratio | nginx p50/p99/p99.9 ms | ringgate p50/p99/p99.9 ms |"
  echo "|---|---|---|---|---|---|"
  for proto in http https; do
    for load in max $rates; do
      read -r nr n50 n99 n999 ne <<<"${R[nginx/$proto/$load]}"
      read -r rr r50 r99 r999 re <<<"${R[ringgate/$proto/$load]}"
      label="$proto, $( [ "$load" = max ] && echo "wrk -c1000 (max)" || echo "$gen @ $load/s")"
      ratio=$(python3 -c "print(f'{$rr/$nr:.2f}x' if $nr else '-')")
      echo "| $label | $nr | $rr | $ratio | $n50 / $n99 / $n999 | $r50 / $r99 / $r999 |"
    done
  done
)
stamp=$(date -u +%Y-%m-%dT%H%MZ)
{
  echo "# bench/run.sh http $secs — $stamp"
  echo
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "ringgate: $ringgate"
  echo "servers pinned to CPU 0 (ringgate: 1 core, driver $(grep -o 'driver=[a-z_"]*' "$work/ringgate.log" | head -1 || echo '?'); nginx: 1 worker), load on CPU 1; ${secs}s per scenario"
  echo
  echo "$table"
} | tee "bench/results/http-$stamp.md"
