#!/usr/bin/env bash
# CPU per request of two ringgate builds serving GET /health, in interleaved rounds: a
# before/after check of the hot path that a busy shared machine disturbs less than req/s
# (what other processes take shows up as less throughput, far less as CPU per request).
#
#   bench/cpu.sh BEFORE_BIN AFTER_BIN [ROUNDS] [SECS]
#       Both builds run side by side (1 core each, both pinned to CPU 0; only one is loaded
#       at a time). Each round loads each build in turn (the order alternates between
#       rounds) with rg-load at 5k and 10k req/s over 200 keep-alive connections, plain and
#       TLS, SECS seconds (default 10) after a 2 s warm-up, on CPU 1. Reports the server's
#       CPU time (user + system, /proc/PID/stat) per request over the run (at the rate
#       rg-load achieved), and p50/p99.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
a="${1:?before binary}"
b="${2:?after binary}"
rounds="${3:-3}"
secs="${4:-10}"
warm=2
rates="5000 10000"
bin=$(release_dir)
scratch
self_signed_cert

declare -A PID PLAIN TLS
port=18400
for which in before after; do
  exe=$([ "$which" = before ] && echo "$a" || echo "$b")
  PLAIN[$which]=$port TLS[$which]=$((port + 1))
  env -i PATH="$PATH" RINGGATE_LISTEN=127.0.0.1:$port RINGGATE_TLS_LISTEN=127.0.0.1:$((port + 1)) \
    RINGGATE_TLS_CERT="$work/cert.pem" RINGGATE_TLS_KEY="$work/key.pem" RINGGATE_WORKERS=1 RINGGATE_PIN_CORES=true \
    RINGGATE_LOG=warn "$exe" 2>"$work/$which.log" & pids+=($!)
  PID[$which]=$!
  port=$((port + 10))
done
for which in before after; do
  for _ in $(seq 100); do curl -fsS "http://127.0.0.1:${PLAIN[$which]}/health" >/dev/null 2>&1 && break; sleep 0.05; done
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A R
for round in $(seq "$rounds"); do
  order="before after"
  [ $((round % 2)) -eq 0 ] && order="after before"
  for proto in http https; do
    for rate in $rates; do
      for which in $order; do
        p=$([ "$proto" = http ] && echo "${PLAIN[$which]}" || echo "${TLS[$which]}")
        t0=$(cpu_ticks "${PID[$which]}")
        out=$(taskset -c 1 "$bin/rg-load" --url "$proto://127.0.0.1:$p/health" --rate "$rate" --duration "$secs" \
          --warmup "$warm" --connections 200 --ca "$work/cert.pem")
        t1=$(cpu_ticks "${PID[$which]}")
        # Per request served: at the rate rg-load achieved (on a loaded machine it can fall
        # behind the target, and the nominal count would understate the CPU per request).
        got=$(echo "$out" | field achieved_rate)
        us=$(python3 -c "print(f'{($t1 - $t0) / $(getconf CLK_TCK) * 1e6 / (max($got, 1) * ($secs + $warm)):.1f}')")
        R[$round/$which/$proto/$rate]="$us $(echo "$out" | field p50_ms) $(echo "$out" | field p99_ms) $(echo "$out" | field errors)"
        echo "round $round $which $proto @$rate: ${us} us/req (achieved $got/s), p50/p99 $(echo "$out" | field p50_ms)/$(echo "$out" | field p99_ms) ms, errors $(echo "$out" | field errors)" >&2
      done
    done
  done
done

stamp=$(date -u +%Y-%m-%dT%H%MZ)
{
  echo "# bench/cpu.sh $a $b $rounds $secs — $stamp"
  echo
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "both builds on CPU 0 (1 core each, only one loaded at a time), rg-load on CPU 1, 200 connections, ${secs}s + ${warm}s warm-up"
  echo
  echo "| round | proto | rate | before us/req | after us/req | before p50 / p99 ms | after p50 / p99 ms | errors before / after |"
  echo "|---|---|---|---|---|---|---|---|"
  for round in $(seq "$rounds"); do
    for proto in http https; do
      for rate in $rates; do
        read -r bu b50 b99 be <<<"${R[$round/before/$proto/$rate]}"
        read -r au a50 a99 ae <<<"${R[$round/after/$proto/$rate]}"
        echo "| $round | $proto | $rate | $bu | $au | $b50 / $b99 | $a50 / $a99 | $be / $ae |"
      done
    done
  done
} | tee "bench/results/cpu-$stamp.md"
