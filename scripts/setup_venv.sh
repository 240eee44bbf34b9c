#!/usr/bin/env bash
# Create or refresh .venv for this checkout: the pinned dependencies (pyproject.toml, with every
# transitive package fixed by constraints.txt) and this checkout installed in editable mode.
# If .venv is a link to a cached venv (see .ci/run), that venv is reused when its pins match.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
hash=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
venv=$(readlink -f .venv 2>/dev/null || echo "$PWD/.venv")

if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.kdw-hash" 2>/dev/null)" = "$hash" ]; then
    echo "setup_venv: reusing $venv (pins $hash)"
else
    echo "setup_venv: creating $venv (pins $hash); torch is large, this takes a few minutes"
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
    echo "$hash" > "$venv/.kdw-hash"
fi
# Point the (possibly shared) venv at this checkout; cheap when nothing changed.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e . >/dev/null
touch "$venv/.kdw-installed"
