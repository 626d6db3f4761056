#!/usr/bin/env bash
# HA and load verification, long forms (issue 8): the same tests CI runs in short form, with
# the long settings, against the compose/ cluster (brought up here), printing one table.
#
#   bench/ha.sh [SOAK_SECS] [TENANTS]    defaults: 600 s soak, 10,000 tenants
#
# Scenarios: leader SIGKILL and Patroni switchover under 500 req/s of mixed /sql; Redis
# master kill with sessions; worker discovery / blue-green / drain; 1,000 and 10,000 held
# connections; soak; tenant churn through 100 pools.
set -euo pipefail
cd "$(dirname "$0")/.."
soak="${1:-600}"
tenants="${2:-10000}"
scripts/install-deps
eval "$(compose/cluster up)"
log=$(mktemp)
run() { # package test-binary filter
  RINGGATE_SOAK_SECS="$soak" RINGGATE_CHURN_TENANTS="$tenants" \
    cargo test -q -p "$1" --test "$2" -- --include-ignored --test-threads=1 --nocapture "$3" 2>&1 | tee -a "$log"
}
run ringgate-tests ha_load chaos_ha_
run ringgate-tests redis chaos_redis_
run ringgate-tests redis test_dynamic_worker_discovery
run ringgate-tests redis test_blue_green
run ringgate connections test_thousands
run ringgate-tests ha_load chaos_soak
run ringgate-tests ha_load chaos_tenant
stamp=$(date -u +%Y-%m-%dT%H%MZ)
mkdir -p bench/results
{
  echo "# bench/ha.sh $soak $tenants — $stamp"
  echo
  echo "| scenario | result |"
  echo "|---|---|"
  grep -E "under 500|rejoined|redis failover with sessions|announced worker|lapsed worker|blue-green:|connections held|^soak|tenant churn" "$log" \
    | sed -E 's/^test [a-z_:]+ \.\.\. //' \
    | awk -F': ' '{ name=$1; $1=""; sub(/^ /, ""); printf "| %s | %s |\n", name, $0 }'
} | tee "bench/results/ha-$stamp.md"
grep -q "FAILED" "$log" && { echo "some scenario failed (see above)"; exit 1; } || true
