#!/usr/bin/env bash
# Runs the benchmark matrix on loopback and prints the figures with their baseline ratios.
#
# ratelimitd over real gRPC, driven by test/loadgen, for every combination of
#   store:        in-memory, one redis-server, 3 redis-servers as shards (-redis-shards; the row
#                 is skipped, with a note, when `ratelimitd serve -h` does not list the flag)
#   descriptors:  1 and 3 per request
#   load:         under the limit (key fw, 1e9/s, 1000 values) and over it (key over, 10/s,
#                 4 values: nearly every descriptor is refused)
#   cache:        without and with the over-limit cache (-overlimit-cache-size)
# plus the sliding window and the token bucket under the limit (1 descriptor, no cache), and, in
# the same run, two baselines: a gRPC server in the same harness answering every call with a
# fixed response (the transport's floor) and redis-benchmark sending the token-bucket script by
# EVALSHA straight to the single Redis (the store's ceiling).
#
#   test/bench/run.sh            # DURATION=5s CONCURRENCY=32 by default: about 3 minutes
#
# For the Redis stores it also prints EVALSHA per limited descriptor: the EVALSHA calls the
# servers ran during the run (INFO commandstats) divided by the limited descriptors decided.
#
# Every process listens on 127.0.0.1 only and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-5s}
CONCURRENCY=${CONCURRENCY:-32}
REQUESTS=${REQUESTS:-200000}
CACHE_SIZE=${CACHE_SIZE:-10000}

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

start_redis() { # start_redis NAME: starts a redis-server, sets redis_port and redis_pid
  redis_port=$(freeport)
  mkdir -p "$tmp/$1"
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp/$1" >"$tmp/$1.log" 2>&1 &
  redis_pid=$!; pids+=("$redis_pid")
  for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
}

go build -o "$tmp/ratelimitd" ./cmd/ratelimitd
go build -o "$tmp/loadgen" ./test/loadgen

stores=(memory redis)
declare -A store_args redis_info store_pids
store_args[memory]=""
start_redis redis
rport=$redis_port; single_pid=$redis_pid
store_args[redis]="-redis-url redis://127.0.0.1:$rport/0"
redis_info[redis]="127.0.0.1:$rport"; store_pids[redis]=$single_pid
shards_note=""
help=$("$tmp/ratelimitd" serve -h 2>&1 || true) # -h exits 2
if [[ $help == *-redis-shards* ]]; then
  addrs=(); spids=()
  for i in 1 2 3; do start_redis "shard$i"; addrs+=("127.0.0.1:$redis_port"); spids+=("$redis_pid"); done
  stores+=(shards)
  store_args[shards]="-redis-shards $(IFS=,; echo "${addrs[*]}")"
  redis_info[shards]=$(IFS=,; echo "${addrs[*]}"); store_pids[shards]=$(IFS=,; echo "${spids[*]}")
else
  shards_note="3 shards: skipped, this ratelimitd has no -redis-shards flag"
fi

declare -A grpc_addr pid_of
for store in "${stores[@]}"; do
  for cache in off on; do
    name=$store-$cache
    g=127.0.0.1:$(freeport); h=127.0.0.1:$(freeport)
    # shellcheck disable=SC2206 # word splitting of the store's flags is intended
    args=(serve -config test/bench/config -grpc-addr "$g" -http-addr "$h" -log-level error
      -key-prefix "bench-$name:" ${store_args[$store]})
    [ "$cache" = on ] && args+=(-overlimit-cache-size "$CACHE_SIZE")
    "$tmp/ratelimitd" "${args[@]}" >"$tmp/$name.log" 2>&1 &
    pid_of[$name]=$!; pids+=("$!"); grpc_addr[$name]=$g
    wait_ready "$h"
  done
done

# Baseline: a gRPC server in the same harness answering every call with a fixed response.
fixed_addr=127.0.0.1:$(freeport)
"$tmp/loadgen" -serve-fixed "$fixed_addr" >"$tmp/fixed.log" 2>&1 &
fixed_pid=$!; pids+=("$fixed_pid")
sleep 0.5

echo "# ratelimitd benchmark: concurrency $CONCURRENCY, $DURATION per run, $(nproc) cores shared by load generator, server and Redis, $(redis-server --version | cut -d' ' -f3), over-limit cache $CACHE_SIZE keys"
printf '%-30s %12s %7s %7s %7s %9s %9s %7s %8s %6s\n' run decisions/s p50_us p90_us p99_us cpu_us/dec redis_us/dec over% evalsha/d errors
results=$tmp/results.jsonl
row() {
  tail -n1 "$results" | awk -F'[:,}]' '{
    for (i = 1; i < NF; i++) { gsub(/[{"]/, "", $i); v[$i] = $(i+1) }
    gsub(/"/, "", v["label"])
    over = v["limited_descriptors"] > 0 ? 100 * v["limited_over_limit"] / v["limited_descriptors"] : 0
    store = v["store_cpu_us_per_decision"] == "" ? "-" : sprintf("%.1f", v["store_cpu_us_per_decision"])
    sha = (v["label"] ~ /^(redis|shards)\//) ? sprintf("%.3f", v["evalsha_per_limited"]) : "-"
    printf "%-30s %12.0f %7.0f %7.0f %7.0f %9.1f %9s %7.1f %8s %6d\n", v["label"], v["per_second"], v["p50_us"], v["p90_us"], v["p99_us"], v["server_cpu_us_per_decision"], store, over, sha, v["errors"]
  }'
}
load() { # load LABEL ADDR PID [loadgen flags...]
  local label=$1 addr=$2 pid=$3; shift 3
  "$tmp/loadgen" -addr "$addr" -domain bench -concurrency "$CONCURRENCY" -duration "$DURATION" \
    -pid "$pid" -label "$label" -json "$@" >>"$results"
  row
}
for n in 1 3; do
  load "fixed-response/$n-desc" "$fixed_addr" "$fixed_pid" -keys fw -descriptors "$n"
done
for store in "${stores[@]}"; do
  extra=()
  [ -n "${redis_info[$store]:-}" ] && extra=(-redis-info "${redis_info[$store]}" -store-pid "${store_pids[$store]}")
  for n in 1 3; do
    for scenario in under over; do
      keys=fw; [ "$scenario" = over ] && keys=over:4
      for cache in off on; do
        name=$store-$cache
        load "$store/$scenario/$n-desc/cache-$cache" "${grpc_addr[$name]}" "${pid_of[$name]}" \
          -keys "$keys" -descriptors "$n" "${extra[@]}"
      done
    done
  done
done
for store in memory redis; do
  extra=()
  [ "$store" = redis ] && extra=(-redis-info "${redis_info[redis]}" -store-pid "${store_pids[redis]}")
  for alg in sw tb; do
    load "$store/under/1-desc/$alg" "${grpc_addr[$store-off]}" "${pid_of[$store-off]}" -keys "$alg" -descriptors 1 "${extra[@]}"
  done
done
[ -n "$shards_note" ] && echo "# $shards_note"

# Baseline: the token-bucket script sent by EVALSHA straight to the same Redis.
sha=$(redis-cli -p "$rport" SCRIPT LOAD "$(cat algorithms/token_bucket.lua)")
cpu0=$(cpu_seconds "$single_pid")
rb=$(redis-benchmark -p "$rport" -c "$CONCURRENCY" -n "$REQUESTS" -r 1000 -q \
  EVALSHA "$sha" 1 'bench:{__rand_int__}' 1000000000 1000 1000000000 1 0 2>/dev/null | tr '\r' '\n' | grep -E 'requests per second' | tail -n1)
cpu1=$(cpu_seconds "$single_pid")
rb_rps=$(echo "$rb" | grep -oE '[0-9]+(\.[0-9]+)? requests per second' | awk '{print $1}')
rb_cpu=$(awk -v a="$cpu0" -v b="$cpu1" -v n="$REQUESTS" 'BEGIN { printf "%.1f", (b - a) / n * 1e6 }')
printf '%-30s %12.0f %7s %7s %7s %9s %9s %7s %8s %6s\n' "redis-benchmark/EVALSHA-tb" "$rb_rps" - - - - "$rb_cpu" - 1.000 0

echo
echo "# ratios: ratelimitd CPU per decision / the fixed-response server's (same descriptors per request);"
echo "# limited descriptors decided per second / raw EVALSHA per second ($rb_rps/s)"
printf '%-30s %10s %12s\n' run cpu_ratio desc/s_ratio
awk -F'[:,}]' -v base_rps="$rb_rps" '{
  for (i = 1; i < NF; i++) { gsub(/[{"]/, "", $i); v[$i] = $(i+1) }
  gsub(/"/, "", v["label"]); split(v["label"], p, "/")
  if (p[1] == "fixed-response") { base[p[2]] = v["server_cpu_us_per_decision"]; next }
  d = p[3]; if (!(d in base)) d = "1-desc"
  printf "%-30s %9.2fx %11.2fx\n", v["label"], v["server_cpu_us_per_decision"] / base[d], v["limited_descriptors"] / v["seconds"] / base_rps
}' "$results"
