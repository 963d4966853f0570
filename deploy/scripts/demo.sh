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
# Each run starts from an empty log: the previous run's data goes to
# data.old/ (and the one before it is deleted), once the run has checked
# that no other demo runs here and that every port it needs is free.
# Stop it with Ctrl-C.
#
# Settings (environment): NATS_PORT (4222), API_PORT (50051), INTAKE_PORT
# (8081), RESOLUTION_PORT (8082), FEEDBACK_PORT (8083); DEMO_SECONDS=N
# stops after N seconds; DEMO_DAYS (60) days of history; DEMO_DIR (this
# checkout) holds data/, data.old/ and logs/; DEMO_BIN, a directory of
# already built binaries, skips the release build.
set -euo pipefail
cd "$(dirname "$0")/../.."

NATS_PORT=${NATS_PORT:-4222}
API_PORT=${API_PORT:-50051}
INTAKE_PORT=${INTAKE_PORT:-8081}
RESOLUTION_PORT=${RESOLUTION_PORT:-8082}
FEEDBACK_PORT=${FEEDBACK_PORT:-8083}
DEMO_SECONDS=${DEMO_SECONDS:-0}
DEMO_DAYS=${DEMO_DAYS:-60}
DEMO_DIR=${DEMO_DIR:-.}
export NATS_URL="nats://127.0.0.1:${NATS_PORT}"
export KPI_UNITS="deploy/units/seed-communes.json"
export KPI_ADDR="http://127.0.0.1:${API_PORT}"
data="$DEMO_DIR/data"
logs="$DEMO_DIR/logs"
mkdir -p "$DEMO_DIR"

# One demo per directory: the lock is held as long as the demo (or any
# process it started) runs, and nothing below touches data/ without it.
lock="$DEMO_DIR/.demo.lock"
exec 9>>"$lock"
if ! flock -n 9; then
  running=$(cat "$DEMO_DIR/.demo.pid" 2>/dev/null || echo '?')
  echo "demo: another demo is running from $DEMO_DIR (PID $running); its data in $data is left untouched." >&2
  echo "demo: stop it first (Ctrl-C in its terminal, or kill $running), or run this one with DEMO_DIR set to another directory and free ports." >&2
  exit 1
fi
echo $$ >"$DEMO_DIR/.demo.pid"

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
check_ports() {
  local name port
  for name in NATS_PORT API_PORT INTAKE_PORT RESOLUTION_PORT FEEDBACK_PORT; do
    port=${!name}
    if port_busy "$port"; then
      echo "demo: port $port on 127.0.0.1 ($name) is in use; stop what uses it or set $name to a free port. Nothing was changed in $data." >&2
      exit 1
    fi
  done
}
check_ports

deploy/scripts/setup.sh
if [ -n "${DEMO_BIN:-}" ]; then
  bin=$DEMO_BIN
else
  echo "demo: building (release)…" >&2
  cargo build --release --locked -p projector -p kpictl -p intake -p resolution -p feedback
  bin=target/release
fi
# The build took a while: the ports again, before data/ is touched.
check_ports
# Each demo starts from an empty log; the previous demo's data (which a
# newer build may not read) is moved to data.old/.
if [ -d "$data" ]; then
  rm -rf "$data.old"
  mv "$data" "$data.old"
  echo "demo: the previous demo's data moved to $data.old/" >&2
fi
mkdir -p "$data/nats" "$data/projector" "$logs"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -f "$DEMO_DIR/.demo.pid"
  echo "demo: stopped (data in $data/, moved to $data.old/ by the next run; logs in $logs/)" >&2
}
trap cleanup EXIT
trap 'exit 0' INT TERM

nats_server=$(command -v nats-server || echo /usr/sbin/nats-server)
"$nats_server" -c deploy/nats/demo.conf -p "$NATS_PORT" -sd "$data/nats" >"$logs/nats-server.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do port_busy "$NATS_PORT" && break; sleep 0.1; done
port_busy "$NATS_PORT" || { echo "demo: nats-server did not start; see $logs/nats-server.log" >&2; exit 1; }

"$bin/projector" --data-dir "$data/projector" --listen "127.0.0.1:${API_PORT}" >"$logs/projector.log" 2>&1 &
pids+=($!)

for service in intake resolution feedback; do
  case $service in
    intake) port=$INTAKE_PORT ;;
    resolution) port=$RESOLUTION_PORT ;;
    feedback) port=$FEEDBACK_PORT ;;
  esac
  "$bin/$service" --listen "127.0.0.1:$port" >"$logs/$service.log" 2>&1 &
  pids+=($!)
done
for port in "$INTAKE_PORT" "$RESOLUTION_PORT" "$FEEDBACK_PORT"; do
  for _ in $(seq 1 100); do port_busy "$port" && break; sleep 0.1; done
  port_busy "$port" || { echo "demo: no ingest service on port $port; see $logs/" >&2; exit 1; }
done

services=(--via-services
  --intake-url "http://127.0.0.1:$INTAKE_PORT"
  --resolution-url "http://127.0.0.1:$RESOLUTION_PORT"
  --feedback-url "http://127.0.0.1:$FEEDBACK_PORT")
echo "demo: posting $DEMO_DAYS days of traffic for the seed communes to the ingest services…" >&2
"$bin/kpictl" simulate --days "$DEMO_DAYS" --cases-per-day 25 "${services[@]}"
echo "demo: a DVCQG dossier snapshot to intake (POST /v1/dvcqg):" >&2
curl -sS -H 'Content-Type: application/json' --data-binary @deploy/examples/dvcqg-snapshot.json \
  "http://127.0.0.1:$INTAKE_PORT/v1/dvcqg" || true
echo
"$bin/kpictl" simulate --days 0 --follow --cases-per-minute 120 "${services[@]}" >"$logs/simulate.log" 2>&1 &
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
