#!/usr/bin/env bash
# Regenerates core/src/chorus/v1 (_pb2.py, _pb2.pyi, _pb2_grpc.py) from proto/chorus/v1.
# Reproducible: the same grpcio-tools (pinned in pyproject.toml's dev group, locked in uv.lock)
# gives the same files.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
out=${OUT:-core/src}
mkdir -p "$out"/chorus/v1
rm -f "$out"/chorus/v1/*_pb2*.py "$out"/chorus/v1/*_pb2*.pyi
"$PY" -m grpc_tools.protoc \
  -I proto -I third_party/googleapis \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  proto/chorus/v1/*.proto
