#!/usr/bin/env bash
# Create/refresh the Python venv the notebooks run in (target/pyclient):
# requirements.txt, then this package itself (editable, so the notebooks
# run the client in the repo). Idempotent: silent when up to date.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${PYCLIENT:-$root/target/pyclient}"
stamp="$venv/.cohort-client.sha256"
want="$(cat "$here/requirements.txt" "$here/requirements-nodeps.txt" "$here/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && "$venv/bin/python" -c 'import cohort_client' 2>/dev/null; then
  exit 0
fi
t0=$(date +%s)
# uv (scripts/uv) installs the wheels; --seed gives the venv pip and
# setuptools as `python -m venv` would, and the editable install below
# builds with that setuptools.
uv="$root/scripts/uv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c '' 2>/dev/null; then
  rm -rf "$venv"
  "$uv" venv --quiet --seed --python "${PYTHON:-python3}" "$venv"
fi
"$uv" pip install --quiet --python "$venv/bin/python" \
  --only-binary=:all: -r "$here/requirements.txt"
"$uv" pip install --quiet --python "$venv/bin/python" \
  --only-binary=:all: --no-deps -r "$here/requirements-nodeps.txt"
"$uv" pip install --quiet --python "$venv/bin/python" \
  --no-deps --no-build-isolation -e "$here"
echo "$want" > "$stamp"
echo "python venv for the client and notebooks ready at $venv ($(( $(date +%s) - t0 )) s)"
