#!/usr/bin/env bash
# The whole system on this machine, with a demo:
#   nats-server (JetStream, store in data/nats, 127.0.0.1:4222),
#   the projector (views in data/projector, gRPC on 127.0.0.1:50051),
#   the ingest services intake, resolution and feedback (HTTP on
#   127.0.0.1:8081, 8082, 8083),
#   60 days of simulated traffic for the seed communes posted through the
#   ingest services as the provincial system would, a DVCQG dossier
#   snapshot, then live traffic, and the live rates printed every few
#   seconds.
# Each run starts from an empty log (the previous run's data goes to
# data.old/). Stop it with Ctrl-C. DEMO_SECONDS=N stops it after N seconds.
set -euo pipefail
cd "$(dirname "$0")/../.."

NATS_PORT=${NATS_PORT:-4222}
API_PORT=${API_PORT:-50051}
DEMO_SECONDS=${DEMO_SECONDS:-0}
export NATS_URL="nats://127.0.0.1:${NATS_PORT}"
export KPI_UNITS="deploy/units/seed-communes.json"
export KPI_ADDR="http://127.0.0.1:${API_PORT}"

deploy/scripts/setup.sh
echo "demo: building (release)…" >&2
cargo build --release --locked -p projector -p kpictl -p intake -p resolution -p feedback
bin=target/release
# Each demo starts from an empty log; the previous demo's data (which a
# newer build may not read) is moved to data.old/.
if [ -d data ]; then
  rm -rf data.old
  mv data data.old
  echo "demo: the previous demo's data moved to data.old/" >&2
fi
mkdir -p data/nats data/projector logs

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$NATS_PORT" "$API_PORT" 8081 8082 8083; do
  if port_busy "$port"; then
    echo "demo: port $port on 127.0.0.1 is in use; stop what uses it or set NATS_PORT / API_PORT" >&2
    exit 1
  fi
done

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "demo: stopped (data in data/, moved to data.old/ by the next run; logs in logs/)" >&2
}
trap cleanup EXIT
trap 'exit 0' INT TERM

nats_server=$(command -v nats-server || echo /usr/sbin/nats-server)
"$nats_server" -c deploy/nats/demo.conf -p "$NATS_PORT" >logs/nats-server.log 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do port_busy "$NATS_PORT" && break; sleep 0.1; done
port_busy "$NATS_PORT" || { echo "demo: nats-server did not start; see logs/nats-server.log" >&2; exit 1; }

"$bin/projector" --data-dir data/projector --listen "127.0.0.1:${API_PORT}" >logs/projector.log 2>&1 &
pids+=($!)

for service in intake resolution feedback; do
  "$bin/$service" >"logs/$service.log" 2>&1 &
  pids+=($!)
done
for port in 8081 8082 8083; do
  for _ in $(seq 1 100); do port_busy "$port" && break; sleep 0.1; done
  port_busy "$port" || { echo "demo: no ingest service on port $port; see logs/" >&2; exit 1; }
done

echo "demo: posting 60 days of traffic for the seed communes to the ingest services…" >&2
"$bin/kpictl" simulate --days 60 --cases-per-day 25 --via-services
echo "demo: a DVCQG dossier snapshot to intake (POST /v1/dvcqg):" >&2
curl -sS -H 'Content-Type: application/json' --data-binary @deploy/examples/dvcqg-snapshot.json \
  http://127.0.0.1:8081/v1/dvcqg || true
echo
"$bin/kpictl" simulate --days 0 --follow --cases-per-minute 120 --via-services >logs/simulate.log 2>&1 &
pids+=($!)

year=$(TZ=Asia/Ho_Chi_Minh date +%Y)
month=$(TZ=Asia/Ho_Chi_Minh date +%Y-%m)
started=$(date +%s)
while :; do
  echo
  echo "=== $(TZ=Asia/Ho_Chi_Minh date '+%Y-%m-%d %H:%M:%S') (giờ Việt Nam) — live rates from ${KPI_ADDR} ==="
  "$bin/kpictl" rates --unit 51 --period "$year" || true
  echo
  "$bin/kpictl" rates --unit 5101234 --period "$month" || true
  if [ "$DEMO_SECONDS" -gt 0 ] && [ $(( $(date +%s) - started )) -ge "$DEMO_SECONDS" ]; then
    break
  fi
  sleep 5
done
