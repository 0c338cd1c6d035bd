#!/usr/bin/env bash
# Create .venv and install the project with its test tools.
# torch is pinned to 2.13.0 first: on the project's build machines that file is the CPU build
# on local disk; elsewhere set TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0 --index-url
# https://download.pytorch.org/whl/cu126") to choose a build. The package itself only asks
# for torch>=2.3,<3, which the pinned install satisfies, so nothing larger is pulled in.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q ${TORCH_SPEC:-torch==2.13.0}
.venv/bin/python -m pip install -q -e ".[test]"
