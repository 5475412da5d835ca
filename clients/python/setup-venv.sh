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
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c '' 2>/dev/null; then
  rm -rf "$venv"
  "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  --only-binary=:all: -r "$here/requirements.txt"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  --only-binary=:all: --no-deps -r "$here/requirements-nodeps.txt"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  --no-deps --no-build-isolation -e "$here"
echo "$want" > "$stamp"
echo "python venv for the client and notebooks ready at $venv ($(( $(date +%s) - t0 )) s)"
