#!/usr/bin/env bash
# Creates target/pyenv-bench (only if missing) and installs the pinned requirements into it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$(cd "$here/../.." && pwd)/target/pyenv-bench"
if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/pip" install -q -r "$here/requirements.txt"
