#!/usr/bin/env bash
# Generates a Python client of the KPI API from proto/ with grpcio-tools,
# in a virtual environment of its own: what a district or province system
# written in Python does to call GetCaseFlow or GetRates.
#
#   deploy/scripts/python-client.sh [DIR]     (default: target/python-client)
#
# Installs python3 and python3-venv (Debian packages) when missing, then
# grpcio and grpcio-tools from the Python package index into DIR/venv, and
# writes the generated modules to DIR/generated. Then:
#   PYTHONPATH=DIR/generated DIR/venv/bin/python deploy/clients/python/case_flow.py \
#     --addr 127.0.0.1:50051 --unit P46 --period 2025-Q1
set -euo pipefail
cd "$(dirname "$0")/../.."
dir="${1:-target/python-client}"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then missing+=(python3-venv); fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "python-client: installing ${missing[*]} (Debian packages)" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x "$dir/venv/bin/python" ]; then
  python3 -m venv "$dir/venv"
fi
"$dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  'grpcio>=1.60,<2' 'grpcio-tools>=1.60,<2'
mkdir -p "$dir/generated"
"$dir/venv/bin/python" -m grpc_tools.protoc -I proto \
  --python_out="$dir/generated" --grpc_python_out="$dir/generated" proto/kpi/v1/kpi.proto
echo "python-client: generated kpi.v1 modules in $dir/generated" >&2
