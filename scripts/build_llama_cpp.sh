#!/usr/bin/env bash
# Builds llama-cpp-python (llama.cpp's C++ library + its ctypes bindings) once into the test
# cache, for the tests that load mapspec's GGUF files in llama.cpp and compare logits with the
# reference converter's (tests/test_gguf_fp8.py, tests/test_gguf_hf.py). The suite never builds
# it: without the wheel those tests skip, saying so. About 8 minutes on two cores.
#   scripts/build_llama_cpp.sh [PYTHON]      (default: .venv/bin/python, else python3)
# Cache: $MAPSPEC_TEST_CACHE (default ~/.cache/mapspec-tests): src/ holds the source archive,
# wheels/ the wheel, site/ its private extraction (nothing is installed into the environment).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
cache=${MAPSPEC_TEST_CACHE:-$HOME/.cache/mapspec-tests}
version=$("$py" -c "import sys; sys.path.insert(0, 'tests'); import llamacpp_ref; print(llamacpp_ref.VERSION)")
archive="$cache/src/llama_cpp_python-$version.tar.gz"
mkdir -p "$cache/src" "$cache/wheels"
[ -f "$archive" ] || "$py" -m pip download "llama-cpp-python==$version" --no-deps --no-binary :all: -d "$cache/src"
CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
    nice -n 10 "$py" -m pip wheel --no-deps "$archive" -w "$cache/wheels"
rm -rf "$cache/site/llama_cpp_python-$version-"*   # re-extracted from the new wheel on first use
"$py" -c "import sys; sys.path.insert(0, 'tests'); import llamacpp_ref; print('llama_cpp', llamacpp_ref.require_llama_cpp(skip=False).__version__)"
