#!/usr/bin/env bash
# Install the benchmark peer, llama-cpp-python's own OpenAI server, into .bench-venv.
#
# Idempotent: does nothing when .bench-venv already has llama-cpp-python at the pinned
# version with its server extra importable. Otherwise it (re)creates what is missing and
# installs from the PyPI source distribution, which compiles llama.cpp (about 5-6 minutes on
# a 2-core machine; pip keeps the built wheel in its cache, so a re-install is quick).
#
# Environment knobs:
#   BENCH_VENV      venv path (default: <repo>/.bench-venv)
#   PYTHON          interpreter used to create the venv (default: python3.11, else python3)
#   PEER_VERSION    llama-cpp-python version (default: 0.3.36)
#   CMAKE_ARGS      extra CMake arguments, appended to ours
#   CMAKE_BUILD_PARALLEL_LEVEL   compile jobs (default: number of cores, at most 2)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${BENCH_VENV:-$repo_root/.bench-venv}"
version="${PEER_VERSION:-0.3.36}"

if [[ -z "${PYTHON:-}" ]]; then
    if command -v python3.11 >/dev/null 2>&1; then PYTHON=python3.11; else PYTHON=python3; fi
fi

installed() {
    [[ -x "$venv/bin/python" ]] || return 1
    "$venv/bin/python" - "$version" <<'PY' >/dev/null 2>&1
import sys
import llama_cpp
import llama_cpp.server.app  # the [server] extra: fastapi, uvicorn, sse-starlette, ...
sys.exit(0 if llama_cpp.__version__ == sys.argv[1] else 1)
PY
}

if installed; then
    echo "install_peer: llama-cpp-python[server]==$version already in $venv"
    exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
    echo "install_peer: creating $venv with $PYTHON"
    "$PYTHON" -m venv "$venv"
fi

for tool in cmake gcc g++; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "install_peer: '$tool' not found; install build tools (apt-get install cmake build-essential)" >&2
        exit 1
    }
done

cores="$(nproc 2>/dev/null || echo 2)"
(( cores > 2 )) && cores=2
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$cores}"
# LLAVA_BUILD=OFF skips the multimodal library (only imported lazily by image chat handlers),
# which saves a good share of the compile. GGML_NATIVE tunes for this CPU: the peer is only
# ever run on the machine that built it.
export CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=ON ${CMAKE_ARGS:-}"

echo "install_peer: building llama-cpp-python[server]==$version (jobs=$CMAKE_BUILD_PARALLEL_LEVEL, CMAKE_ARGS=$CMAKE_ARGS)"
start=$(date +%s)
"$venv/bin/python" -m pip install --upgrade --quiet pip
"$venv/bin/python" -m pip install "llama-cpp-python[server]==$version"
echo "install_peer: done in $(( $(date +%s) - start )) s"

installed || { echo "install_peer: install finished but llama_cpp.server does not import" >&2; exit 1; }
echo "install_peer: ok ($venv)"
