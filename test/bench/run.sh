#!/usr/bin/env bash
# Runs the benchmark matrix on loopback and prints the figures with their baseline ratios:
# ratelimitd over real gRPC (in-memory store and one real redis-server; fixed window, sliding
# window and token bucket; 1 and 3 descriptors per request), and, in the same run,
# redis-benchmark sending the token-bucket script by EVALSHA straight to the same Redis.
#
#   test/bench/run.sh            # DURATION=5s CONCURRENCY=32 by default
#
# Every process listens on 127.0.0.1 only and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-5s}
CONCURRENCY=${CONCURRENCY:-32}
REQUESTS=${REQUESTS:-200000}

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

freeport() {
  local p
  while :; do
    p=$((20000 + RANDOM % 20000))
    (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo "$p"; return; }
  done
}

cpu_seconds() { # user+system CPU seconds of a pid
  awk '{ sub(/.*\) /, ""); split($0, f, " "); printf "%.2f\n", (f[12] + f[13]) / 100 }' "/proc/$1/stat"
}

wait_ready() {
  for _ in $(seq 100); do
    curl -fs "http://$1/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "ratelimitd on $1 did not become ready" >&2; exit 1
}

go build -o "$tmp/ratelimitd" ./cmd/ratelimitd
go build -o "$tmp/loadgen" ./test/loadgen

rport=$(freeport)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" >"$tmp/redis.log" 2>&1 &
redis_pid=$!; pids+=("$redis_pid")
for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done

declare -A grpc_addr pid_of
for store in memory redis; do
  g=127.0.0.1:$(freeport); h=127.0.0.1:$(freeport)
  args=(serve -config test/bench/config -grpc-addr "$g" -http-addr "$h" -log-level error)
  [ "$store" = redis ] && args+=(-redis-url "redis://127.0.0.1:$rport/0")
  "$tmp/ratelimitd" "${args[@]}" >"$tmp/$store.log" 2>&1 &
  pid_of[$store]=$!; pids+=("$!"); grpc_addr[$store]=$g
  wait_ready "$h"
done

# Baseline: a gRPC server in the same harness answering every call with a fixed response.
fixed_addr=127.0.0.1:$(freeport)
"$tmp/loadgen" -serve-fixed "$fixed_addr" >"$tmp/fixed.log" 2>&1 &
fixed_pid=$!; pids+=("$fixed_pid")
sleep 0.5

echo "# ratelimitd benchmark: concurrency $CONCURRENCY, $DURATION per run, $(nproc) cores, $(redis-server --version | cut -d' ' -f3)"
printf '%-26s %12s %8s %8s %8s %14s %7s\n' run decisions/s p50_us p90_us p99_us cpu_us/decision errors
results=$tmp/results.jsonl
row() {
  tail -n1 "$results" | awk -F'[:,}]' '{
    for (i = 1; i < NF; i++) { gsub(/[{"]/, "", $i); v[$i] = $(i+1) }
    gsub(/"/, "", v["label"])
    printf "%-26s %12.0f %8.0f %8.0f %8.0f %14.1f %7d\n", v["label"], v["per_second"], v["p50_us"], v["p90_us"], v["p99_us"], v["server_cpu_us_per_decision"], v["errors"]
  }'
}
for n in 1 3; do
  "$tmp/loadgen" -addr "$fixed_addr" -domain bench -keys fw -descriptors "$n" \
    -concurrency "$CONCURRENCY" -duration "$DURATION" -pid "$fixed_pid" -label "fixed-response/$n-desc" -json >>"$results"
  row
done
for store in memory redis; do
  for alg in fw sw tb; do
    for n in 1 3; do
      label="$store/$alg/$n-desc"
      "$tmp/loadgen" -addr "${grpc_addr[$store]}" -domain bench -keys "$alg" -descriptors "$n" \
        -concurrency "$CONCURRENCY" -duration "$DURATION" -pid "${pid_of[$store]}" -label "$label" -json >>"$results"
      row
    done
  done
done

# Baseline: the token-bucket script sent by EVALSHA straight to the same Redis.
sha=$(redis-cli -p "$rport" SCRIPT LOAD "$(cat algorithms/token_bucket.lua)")
cpu0=$(cpu_seconds "$redis_pid")
rb=$(redis-benchmark -p "$rport" -c "$CONCURRENCY" -n "$REQUESTS" -r 1000 -q \
  EVALSHA "$sha" 1 'bench:{__rand_int__}' 1000000000 1000 1000000000 1 0 2>/dev/null | tr '\r' '\n' | grep -E 'requests per second' | tail -n1)
cpu1=$(cpu_seconds "$redis_pid")
rb_rps=$(echo "$rb" | grep -oE '[0-9]+(\.[0-9]+)? requests per second' | awk '{print $1}')
rb_cpu=$(awk -v a="$cpu0" -v b="$cpu1" -v n="$REQUESTS" 'BEGIN { printf "%.1f", (b - a) / n * 1e6 }')
printf '%-26s %12.0f %8s %8s %8s %14s %7s   (redis-server CPU)\n' "redis-benchmark/EVALSHA tb" "$rb_rps" - - - "$rb_cpu" 0

echo
echo "# ratios: server CPU per decision against the fixed-response server (same descriptors)"
awk -F'[:,}]' '{
  for (i = 1; i < NF; i++) { gsub(/[{"]/, "", $i); v[$i] = $(i+1) }
  gsub(/"/, "", v["label"]); n = split(v["label"], p, "/")
  if (p[1] == "fixed-response") { base[p[2]] = v["server_cpu_us_per_decision"]; next }
  lab[++k] = v["label"]; cpu[k] = v["server_cpu_us_per_decision"]; d[k] = p[n]
} END { for (i = 1; i <= k; i++) printf "%-26s %5.2fx the CPU per decision of the fixed-response server\n", lab[i], cpu[i] / base[d[i]] }' "$results"

echo
echo "# ratios to redis-benchmark running the token-bucket script directly ($rb_rps/s)"
grep '"label":"redis/' "$results" | awk -F'[:,}]' -v base="$rb_rps" '{
  for (i = 1; i < NF; i++) { gsub(/[{"]/, "", $i); v[$i] = $(i+1) }
  gsub(/"/, "", v["label"])
  printf "%-26s %5.2fx the decisions/s of raw EVALSHA\n", v["label"], v["per_second"] / base
}'
