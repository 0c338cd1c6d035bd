#!/usr/bin/env bash
# Create .venv and install the project: `bash scripts/setup.sh` installs what training and
# prediction need; `bash scripts/setup.sh --test` adds the test tools, napari and Qt 6 (the
# plugin's tests), which the main job does not use and which take most of the setup's time.
# torch is pinned to 2.13.0 first: on the project's build machines that file is the CPU build
# on local disk; elsewhere set TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0 --index-url
# https://download.pytorch.org/whl/cu126") to choose a build. The package itself only asks
# for torch>=2.3,<3, which the pinned install satisfies, so nothing larger is pulled in.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
    "") TARGET="." ;;
    --test) TARGET=".[test]" ;;
    *) echo "usage: bash scripts/setup.sh [--test]" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# No pip upgrade (it would reach the index each time), and no byte-compiling of every installed
# module at install time (most of the time on a 2-core CPU: Python compiles the few it imports on
# first use). The test suite starts many Python processes, each of which would compile torch again
# where the environment forbids writing the compiled files (PYTHONDONTWRITEBYTECODE), so --test
# compiles the environment and the package's own sources (installed editable, in src/) once, on
# every core. The packages' own test folders (a fifth of the files: pandas', scipy's, sympy's
# tests) are left out: nothing imports them.
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q --no-compile --disable-pip-version-check ${TORCH_SPEC:-torch==2.13.0}
.venv/bin/python -m pip install -q --no-compile --disable-pip-version-check -e "$TARGET"
if [ "$TARGET" != "." ]; then
    .venv/bin/python -m compileall -q -j 0 -x '/tests?/' .venv/lib src >/dev/null || true
fi
