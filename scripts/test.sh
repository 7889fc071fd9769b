#!/usr/bin/env bash
# Installs what the tests need and runs the whole suite twice; `.ci/run` calls exactly this.
#   .venv        current numpy 2.x + torch (pinned by constraints.txt); mxnet tests skip here
#   .venv-mxnet  numpy 1.23.5 + mxnet 1.9.1 + torch: the same suite, mxnet interop included
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1  # tests build tiny models from config classes; nothing comes from a hub

setup() {  # setup VENV CONSTRAINTS EXTRA...
    local venv=$1 constraints=$2
    shift 2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
    "$venv/bin/python" -m pip install -q -c "$constraints" -e ".[test,torch${EXTRAS:+,$EXTRAS}]" "$@" 2>&1 \
        | grep -v '^WARNING: Location' || true
    "$venv/bin/python" -c "import mapspec, torch" # fail here, loudly, if the install did not take
}

EXTRAS=remote,ray setup .venv constraints.txt transformers accelerate  # S3 and Ray tests: numpy 2.x venv only
setup .venv-mxnet constraints-mxnet.txt mxnet numpy
.venv-mxnet/bin/python -c "import mxnet"

echo "== pyflakes"
.venv/bin/python -m pyflakes mapspec tests bench examples
echo "== numpy 2.x environment"
.venv/bin/python -m pytest -q "$@"
echo "== mxnet 1.9.1 / numpy 1.23.5 environment"
.venv-mxnet/bin/python -m pytest -q "$@"
