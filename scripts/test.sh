#!/usr/bin/env bash
# Installs what the tests need into .venv (current numpy 2.x, torch pinned by
# constraints.txt) and runs the whole suite. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -c constraints.txt -e '.[test,torch]'
.venv/bin/python -m pytest -q "$@"
