#!/usr/bin/env bash
# Reverse-proxy benchmark: ringgate vs HAProxy vs nginx in front of the same upstream (nginx
# serving a fixed 1 KiB body), plain HTTP and TLS terminated at the proxy. Each proxy runs
# on CPU 0 only (ringgate: 1 core; HAProxy: 1 thread; nginx: 1 worker); the upstream and
# the load generator share CPU 1. All in one run, so the ratios compare like with like.
#
#   bench/proxy.sh [SECS] [ROUNDS]
#       wrk -c1000 (max req/s) ROUNDS times (default 3), the three proxies interleaved in
#       each round so that the machine's slow and fast minutes hit all of them alike; the
#       table shows the median round (every round's figures are listed below it). Then
#       rg-load at 5k and 10k req/s (open loop, coordinated-omission corrected), also in
#       ROUNDS interleaved rounds, for p50/p99/p99.9 (the round with the median p99) and
#       each proxy's CPU time per request (/proc/PID/stat; the median round's). Last, HTTPS
#       at 5k req/s while three reconnect storms (wrk -c1000 -d1s: 1000 new TLS connections
#       at once, each) hit the same proxy: the p99 of established connections' requests.
#
#   RINGGATE_BIN=/path/to/ringgate runs that build instead of the one just built (to compare
#   builds: run it for each, interleaved); SKIP_BUILD=1 uses the binaries already built. The
#   build's output honours CARGO_TARGET_DIR.
#   PERF_DIR=/path records each proxy with `perf record` (sampling its process at 999 Hz,
#   no call graphs) during every fixed-rate run into PERF_DIR/<proxy>-<proto>-<rate>.data
#   (the last round's), for `perf report --no-children --sort dso,sym -i ...`. Sampling
#   costs CPU: take the CPU per request from a run without it.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
secs="${1:-10}"
rounds="${2:-3}"
warm=2
rates="5000 10000"
scripts/install-deps
[ -n "${SKIP_BUILD:-}" ] || build_release ringgate ringgate-bench
bin=$(release_dir)
ringgate=${RINGGATE_BIN:-$bin/ringgate}
ports_free 18380 18181 18182 18183 18544 18545 18546
scratch

self_signed_cert
cat "$work/cert.pem" "$work/key.pem" > "$work/both.pem"
body=$(head -c 1024 /dev/zero | tr '\0' 'x')

# The upstream (CPU 1) and nginx as a proxy (CPU 0): two nginx instances. The upstream takes
# every pending connection per wakeup (multi_accept): without it, one per event-loop pass on
# a CPU shared with the load generators, and during a reconnect storm the proxies' new
# upstream connections queued in its backlog (bench/RESULTS.md, 2026-12-03 third session).
mkdir -p "$work/up/logs" "$work/ngx/logs"
cat > "$work/up.conf" <<NGINX
worker_processes 1;
worker_cpu_affinity 10;
worker_rlimit_nofile 65536;
error_log $work/up/logs/error.log warn;
pid $work/up/nginx.pid;
events { worker_connections 20000; multi_accept on; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:18380 reuseport backlog=4096;
    location / { default_type text/plain; return 200 "$body"; }
  }
}
NGINX
cat > "$work/ngx.conf" <<NGINX
worker_processes 1;
worker_cpu_affinity 01;
worker_rlimit_nofile 65536;
error_log $work/ngx/logs/error.log warn;
pid $work/ngx/nginx.pid;
events { worker_connections 20000; multi_accept on; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream up { server 127.0.0.1:18380; keepalive 256; }
  server {
    listen 127.0.0.1:18181 reuseport backlog=4096;
    listen 127.0.0.1:18544 ssl reuseport backlog=4096;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
NGINX
cat > "$work/haproxy.cfg" <<HAP
global
  nbthread 1
  cpu-map 1/1 0
  # Two fds per connection: stay under this machine's hard limit of 20000 open files.
  maxconn 9000
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:18182
  bind 127.0.0.1:18545 ssl crt $work/both.pem
  default_backend up
backend up
  server up1 127.0.0.1:18380
HAP
nginx -p "$work/up" -c "$work/up.conf" -g 'daemon off;' & pids+=($!)
nginx -p "$work/ngx" -c "$work/ngx.conf" -g 'daemon off;' & pids+=($!)
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 & pids+=($!)
env -i PATH="$PATH" RINGGATE_LISTEN=127.0.0.1:18183 RINGGATE_TLS_LISTEN=127.0.0.1:18546 \
  RINGGATE_TLS_CERT="$work/cert.pem" RINGGATE_TLS_KEY="$work/key.pem" RINGGATE_WORKERS=1 RINGGATE_PIN_CORES=true \
  RINGGATE_ROUTES=/=up RINGGATE_WORKER_UPSTREAMS=up=127.0.0.1:18380 RINGGATE_LOG=warn,ringgate::rt=info \
  "$ringgate" 2>"$work/ringgate.log" & pids+=($!)
for port in 18181 18182 18183; do
  for _ in $(seq 50); do curl -fsS "http://127.0.0.1:$port/x" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fsS "http://127.0.0.1:$port/x" >/dev/null
done
# The processes doing each proxy's work (nginx: its one worker, not the master).
declare -A PID=([nginx]=$(pgrep -P "${pids[1]}" | head -1) [haproxy]=${pids[2]} [ringgate]=${pids[3]})

cp bench/wrk-report.lua "$work/pct.lua"
declare -A R
declare -A ROUNDS_OF
run_max() { # name url
  local out
  out=$(taskset -c 1 wrk -t1 -c1000 -d"${secs}s" --latency -s "$work/pct.lua" "$2" 2>&1 | grep wrk_result)
  ROUNDS_OF[$1]+="$(echo "$out" | field rps) $(echo "$out" | field p50_ms) $(echo "$out" | field p99_ms) $(echo "$out" | field p999_ms) $(echo "$out" | field errors)
"
}
# The round whose first field (req/s of a max run, p99 of a fixed-rate run) is the median.
median_round() { # name
  printf '%s' "${ROUNDS_OF[$1]}" | sort -n -k1,1 | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'
}
# CPU time (user + system) a process has used, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run_rate() { # name url rate pid [storm]
  local out before after cpu storm=""
  before=$(cpu_ticks "$4")
  if [ "${5:-}" = storm ]; then
    # Three bursts of 1000 new TLS connections, from one second into the measurement.
    (sleep $((warm + 1)); for _ in 1 2 3; do taskset -c 1 wrk -t1 -c1000 -d1s "$2" >/dev/null 2>&1 || true; done) &
    storm=$!
  fi
  local perf=""
  if [ -n "${PERF_DIR:-}" ] && [ -z "$storm" ]; then
    perf record -q -F 999 -p "$4" -o "$PERF_DIR/${1//\//-}.data" -- sleep $((secs + warm)) 2>/dev/null &
    perf=$!
  fi
  out=$(taskset -c 1 "$bin/rg-load" --url "$2" --rate "$3" --duration "$secs" --warmup "$warm" --connections 200 --ca "$work/cert.pem")
  [ -z "$storm" ] || wait "$storm"
  [ -z "$perf" ] || wait "$perf"
  after=$(cpu_ticks "$4")
  # The proxy's CPU per request over the whole open-loop run (warm-up included).
  cpu=$(python3 -c "print(f'{($after - $before) / $(getconf CLK_TCK) * 1e6 / ($3 * ($secs + $warm)):.1f}')")
  ROUNDS_OF[$1]+="$(echo "$out" | field p99_ms) $(echo "$out" | field achieved_rate) $(echo "$out" | field p50_ms) $(echo "$out" | field p999_ms) $(echo "$out" | field errors) $cpu
"
}
# The fixed-rate round with the median p99: "rate p50 p99 p99.9 errors" and its CPU/request.
declare -A CPU
median_rate_round() { # name
  local p99 rate p50 p999 errors cpu
  read -r p99 rate p50 p999 errors cpu <<<"$(median_round "$1")"
  R[$1]="$rate $p50 $p99 $p999 $errors"
  CPU[$1]=$cpu
}
url_of() { # server proto
  case "$1/$2" in
    nginx/http) echo http://127.0.0.1:18181/x ;; nginx/https) echo https://127.0.0.1:18544/x ;;
    haproxy/http) echo http://127.0.0.1:18182/x ;; haproxy/https) echo https://127.0.0.1:18545/x ;;
    ringgate/http) echo http://127.0.0.1:18183/x ;; ringgate/https) echo https://127.0.0.1:18546/x ;;
  esac
}
for proto in http https; do
  for round in $(seq "$rounds"); do
    for server in haproxy nginx ringgate; do
      url=$(url_of $server $proto)
      # Warm up at the measured concurrency, so every proxy starts with its worker
      # connections open (steady state, not 1000 simultaneous first connects).
      taskset -c 1 wrk -t1 -c1000 -d"${warm}s" "$url" >/dev/null 2>&1 || true
      run_max "$server/$proto/max" "$url"
    done
  done
  for round in $(seq "$rounds"); do
    for rate in $rates; do
      for server in haproxy nginx ringgate; do
        run_rate "$server/$proto/$rate" "$(url_of $server $proto)" "$rate" "${PID[$server]}"
      done
    done
  done
  for server in haproxy nginx ringgate; do
    R[$server/$proto/max]=$(median_round "$server/$proto/max")
    for rate in $rates; do median_rate_round "$server/$proto/$rate"; done
  done
done
for round in $(seq "$rounds"); do
  for server in haproxy nginx ringgate; do
    run_rate "$server/https/storm" "$(url_of $server https)" 5000 "${PID[$server]}" storm
  done
done
for server in haproxy nginx ringgate; do median_rate_round "$server/https/storm"; done

table=$(
  echo "| scenario | HAProxy req/s | nginx req/s | ringgate req/s | vs HAProxy | vs nginx | HAProxy p50/p99/p99.9 ms | nginx p50/p99/p99.9 ms | ringgate p50/p99/p99.9 ms |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for scenario in http/max http/5000 http/10000 https/max https/5000 https/10000 https/storm; do
      proto=${scenario%/*} load=${scenario#*/}
      read -r hr h50 h99 h999 he <<<"${R[haproxy/$proto/$load]}"
      read -r nr n50 n99 n999 ne <<<"${R[nginx/$proto/$load]}"
      read -r rr r50 r99 r999 re <<<"${R[ringgate/$proto/$load]}"
      case $load in
        max) label="$proto, wrk -c1000 (max)" ;;
        storm) label="$proto, rg-load @ 5000/s during 3 reconnect storms" ;;
        *) label="$proto, rg-load @ $load/s" ;;
      esac
      vh=$(python3 -c "print(f'{$rr/$hr:.2f}x' if $hr else '-')")
      vn=$(python3 -c "print(f'{$rr/$nr:.2f}x' if $nr else '-')")
      echo "| $label | $hr | $nr | $rr | $vh | $vn | $h50 / $h99 / $h999 | $n50 / $n99 / $n999 | $r50 / $r99 / $r999 |"
  done
)
stamp=$(date -u +%Y-%m-%dT%H%MZ)
mkdir -p bench/results
{
  echo "# bench/proxy.sh $secs $rounds — $stamp"
  echo
  echo "ringgate: $ringgate"
  echo
  echo "machine: $(nproc) cores, kernel $(uname -r); proxies on CPU 0 (1 core / 1 thread / 1 worker), upstream nginx (1 KiB body) and load on CPU 1; ${secs}s per scenario, each in $rounds interleaved rounds (max: the median req/s round; fixed rates: the median p99 round); errors: see raw wrk/rg-load output"
  echo
  echo "$table"
  echo
  echo "CPU per request at the fixed rates (user + system µs of the proxy's process over the whole rg-load run, in the median-p99 round):"
  echo
  echo "| scenario | HAProxy | nginx | ringgate | ringgate : HAProxy |"
  echo "|---|---|---|---|---|"
  for proto in http https; do
    for rate in $rates; do
      h=${CPU[haproxy/$proto/$rate]}; n=${CPU[nginx/$proto/$rate]}; r=${CPU[ringgate/$proto/$rate]}
      echo "| $proto @ $rate/s | $h | $n | $r | $(python3 -c "print(f'{$r/$h:.2f}x' if $h else '-')") |"
    done
  done
  echo
  echo "max req/s of every round (HAProxy / nginx / ringgate, interleaved in that order; the table shows each proxy's median round):"
  echo
  for proto in http https; do
    for server in haproxy nginx ringgate; do
      echo "- $proto $server: $(printf '%s' "${ROUNDS_OF[$server/$proto/max]}" | awk '{printf "%s%s", sep, $1; sep=", "}')"
    done
  done
  echo
  echo "p99 ms of every fixed-rate round (HAProxy / nginx / ringgate interleaved in each round), and CPU µs per request (in the storm rounds that CPU includes the storms' handshakes and requests):"
  echo
  for scenario in http/5000 http/10000 https/5000 https/10000 https/storm; do
    for server in haproxy nginx ringgate; do
      echo "- ${scenario/\//, } $server: p99 $(printf '%s' "${ROUNDS_OF[$server/$scenario]}" | awk '{printf "%s%s", sep, $1; sep=", "}'); CPU $(printf '%s' "${ROUNDS_OF[$server/$scenario]}" | awk '{printf "%s%s", sep, $6; sep=", "}')"
    done
  done
} | tee "bench/results/proxy-$stamp.md"
