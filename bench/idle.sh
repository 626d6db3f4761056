#!/usr/bin/env bash
# Idle-connection cost: ringgate vs nginx vs HAProxy, plain HTTP and TLS, in one run.
#
#   bench/idle.sh [N] [ROUNDS]
#       For each server (ringgate: 1 core; nginx: 1 worker; HAProxy: 1 thread; all serving
#       GET /health themselves, pinned to CPU 0) and each of plain/TLS: start the server
#       fresh, warm it up, read its RSS, open N idle keep-alive connections with rg-idle
#       (each sends one GET /health, reads the answer, stays open; 16 loopback source
#       addresses; on CPU 1), read the RSS again, then measure /health p50/p99 with rg-load
#       (1000 req/s over 10 connections, 5 s) while the N are held (and p99 once before they
#       are opened, to compare). Reports
#       (RSS after - RSS before) / N in KiB. ROUNDS (default 1) repeats the whole matrix,
#       servers interleaved within each round.
#
#   SERVERS="nginx haproxy" measures only those (default: ringgate nginx haproxy).
#   RINGGATE_BEFORE=/path/to/ringgate adds a `ringgate-before` server: an older build
#   measured in the same run (before/after of a change).
#
# The open-file limit is raised to the hard limit (`ulimit -Hn`); N above it less a few
# hundred descriptors cannot be held by one server process (each idle connection holds one
# descriptor in the server and one in rg-idle).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
n="${1:-10000}"
rounds="${2:-1}"
hard=$(ulimit -Hn)
ulimit -n "$hard"
if [ "$n" -gt $((hard - 200)) ]; then
  echo "N=$n needs more open files than the hard limit allows ($hard)" >&2
  exit 2
fi
scripts/install-deps
# SKIP_BUILD=1 uses the binaries already built (e.g. while another build holds the lock).
[ -n "${SKIP_BUILD:-}" ] || build_release ringgate ringgate-bench
bin=$(release_dir)
scratch

self_signed_cert
cat "$work/cert.pem" "$work/key.pem" >"$work/both.pem"

servers="${SERVERS:-ringgate nginx haproxy}"
[ -n "${RINGGATE_BEFORE:-}" ] && servers="ringgate-before $servers"

mkdir -p "$work/nginx/logs"
cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
worker_cpu_affinity 01;
worker_rlimit_nofile $hard;
error_log $work/nginx/logs/error.log warn;
pid $work/nginx/nginx.pid;
events { worker_connections $((hard - 100)); multi_accept on; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 600s;
  server {
    listen 127.0.0.1:18190 reuseport backlog=4096;
    listen 127.0.0.1:18553 ssl reuseport backlog=4096;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location = /health { default_type application/json; return 200 '{"status":"ok"}'; }
  }
}
NGINX
cat >"$work/haproxy.cfg" <<HAP
global
  nbthread 1
  cpu-map 1/1 0
  # HAProxy budgets two descriptors per connection (client and server side) and would
  # refuse to start; these connections have no server side, so let it run at the limit.
  no strict-limits
  maxconn $((hard - 200))
defaults
  mode http
  timeout client 600s
  timeout http-keep-alive 600s
  timeout http-request 10s
frontend fe
  bind 127.0.0.1:18192
  bind 127.0.0.1:18555 ssl crt $work/both.pem
  http-request return status 200 content-type application/json string '{"status":"ok"}' if { path /health }
HAP

# Starts $1 for the round; sets SPID (the process doing the work) and the ports.
start() {
  case "$1" in
    nginx)
      nginx -p "$work/nginx" -c "$work/nginx.conf" -g 'daemon off;' & pids+=($!)
      PLAIN=18190 TLS=18553 ;;
    haproxy)
      taskset -c 0 haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 & pids+=($!)
      PLAIN=18192 TLS=18555 ;;
    ringgate | ringgate-before)
      local exe="$bin/ringgate"
      [ "$1" = ringgate-before ] && exe="$RINGGATE_BEFORE"
      env -i PATH="$PATH" RINGGATE_LISTEN=127.0.0.1:18191 RINGGATE_TLS_LISTEN=127.0.0.1:18554 \
        RINGGATE_TLS_CERT="$work/cert.pem" RINGGATE_TLS_KEY="$work/key.pem" RINGGATE_WORKERS=1 \
        RINGGATE_PIN_CORES=true RINGGATE_KEEPALIVE_TIMEOUT=600s RINGGATE_MAX_CONNECTIONS_PER_CORE=$hard \
        RINGGATE_LOG=warn,ringgate::rt=info "$exe" 2>"$work/$1.log" & pids+=($!)
      PLAIN=18191 TLS=18554 ;;
  esac
  MAIN=$!
  for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$PLAIN/health" >/dev/null 2>&1 && break; sleep 0.05; done
  SPID=$MAIN
  [ "$1" = nginx ] && SPID=$(pgrep -P "$MAIN" | head -1)
  return 0
}
stop() { kill "$MAIN" 2>/dev/null || true; wait "$MAIN" 2>/dev/null || true; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

declare -A R
for round in $(seq "$rounds"); do
  for proto in http https; do
    for server in $servers; do
      start "$server"
      port=$([ "$proto" = http ] && echo "$PLAIN" || echo "$TLS")
      url="$proto://127.0.0.1:$port/health"
      # Warm-up: the server's first connections and TLS handshakes, so they are not counted.
      taskset -c 1 "$bin/rg-load" --url "$url" --rate 500 --duration 1 --connections 10 --ca "$work/cert.pem" >/dev/null
      # /health latency with no idle connection held, to compare with it while they are.
      out=$(taskset -c 1 "$bin/rg-load" --url "$url" --rate 1000 --duration 5 --warmup 1 --connections 10 --ca "$work/cert.pem")
      p99_free=$(echo "$out" | field p99_ms)
      sleep 0.5
      before=$(rss_kib "$SPID")
      # A fresh file per scenario: the redirect below happens in the background child, so
      # a reused one could still show the previous scenario's line to the wait loop.
      out_file="$work/idle-$round-$server-$proto.out"
      taskset -c 1 "$bin/rg-idle" --url "$url" --conns "$n" --ca "$work/cert.pem" >"$out_file" 2>&1 &
      idle=$!
      pids+=($idle)
      until grep -q '^held=' "$out_file" 2>/dev/null; do
        kill -0 "$idle" 2>/dev/null || { cat "$out_file" >&2; exit 1; }
        sleep 0.2
      done
      sleep 1
      after=$(rss_kib "$SPID")
      held=$(field held <"$out_file")
      [ -n "$held" ] || { echo "rg-idle said: $(cat "$out_file")" >&2; exit 1; }
      failed=$(field failed <"$out_file")
      open_secs=$(field secs <"$out_file")
      out=$(taskset -c 1 "$bin/rg-load" --url "$url" --rate 1000 --duration 5 --warmup 1 --connections 10 --ca "$work/cert.pem")
      p50=$(echo "$out" | field p50_ms)
      p99=$(echo "$out" | field p99_ms)
      errors=$(echo "$out" | field errors)
      kib=$(python3 -c "print(f'{($after - $before) / max($held, 1):.2f}')")
      R[$round/$server/$proto]="$kib $before $after $held $failed $open_secs $p99_free $p50 $p99 $errors"
      echo "round $round $server $proto: ${kib} KiB/conn (RSS $before -> $after KiB, held $held, failed $failed, opened in ${open_secs}s); /health p99 $p99_free ms before; while held p50 $p50 ms p99 $p99 ms errors $errors" >&2
      kill "$idle" 2>/dev/null || true
      wait "$idle" 2>/dev/null || true
      stop
    done
  done
done

stamp=$(date -u +%Y-%m-%dT%H%MZ)
{
  echo "# bench/idle.sh $n $rounds — $stamp"
  echo
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r); load before: $(cut -d' ' -f1-3 /proc/loadavg); open files: hard limit $hard"
  echo "servers pinned to CPU 0 (ringgate: 1 core; nginx: 1 worker; HAProxy: 1 thread), rg-idle and rg-load on CPU 1"
  echo
  echo "| round | server | proto | KiB per idle conn | RSS before / after KiB | held (failed) | open s | /health p99 ms @1000/s, none held | /health p50 / p99 ms @1000/s while held (errors) |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for round in $(seq "$rounds"); do
    for proto in http https; do
      for server in $servers; do
        read -r kib before after held failed open_secs p99_free p50 p99 errors <<<"${R[$round/$server/$proto]}"
        echo "| $round | $server | $proto | $kib | $before / $after | $held ($failed) | $open_secs | $p99_free | $p50 / $p99 ($errors) |"
      done
    done
  done
} | tee "bench/results/idle-$stamp.md"
