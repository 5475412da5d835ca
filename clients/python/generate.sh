#!/usr/bin/env bash
# Regenerates the study API's Python stubs (cohort_client/cohort_pb2*.py)
# from server/proto/cohort/v1/cohort.proto with grpcio-tools. The stubs are
# committed so that `pip install clients/python` needs no compiler; the
# notebook test checks that they match the .proto.
# Usage: clients/python/generate.sh [OUT_DIR]   (default: the package)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$here/cohort_client}"
python="${PYTHON:-$root/target/pyclient/bin/python}"
"$python" -m grpc_tools.protoc -I "$root/server/proto/cohort/v1" \
  --python_out="$out" --grpc_python_out="$out" cohort.proto
# grpcio-tools writes an absolute import; inside a package it is relative.
sed -i 's/^import cohort_pb2 as cohort__pb2$/from . import cohort_pb2 as cohort__pb2/' "$out/cohort_pb2_grpc.py"
