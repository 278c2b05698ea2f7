#!/usr/bin/env bash
# Install the benchmark peer, llama-cpp-python's own OpenAI server, into .bench-venv.
#
#   bash bench/install_peer.sh                 # llama-cpp-python[server] into .bench-venv
#   bash bench/install_peer.sh llama-server    # llama.cpp's own llama-server binary (below)
#
# `llama-server` mode builds llama.cpp's C++ server from the very llama.cpp that the pinned
# llama-cpp-python sdist vendors (same ggml as the peer), into bench/.build/llama-build/bin/
# (git-ignored): pip downloads the sdist (no install), cmake builds only the llama-server
# target (about 6-8 minutes on 2 cores the first time; a no-op once built). cmake comes from
# PATH, else is pip-installed into .bench-venv.
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

build_llama_server() {
    local build_root="${LLAMA_SERVER_BUILD:-$repo_root/bench/.build}"
    local src="$build_root/llama_cpp_python-$version/vendor/llama.cpp"
    local out="$build_root/llama-build"
    local binary="$out/bin/llama-server"
    if [[ -x "$binary" && "$(cat "$out/.peer-version" 2>/dev/null)" == "$version" ]]; then
        echo "install_peer: llama-server from llama-cpp-python $version already at $binary"
        return 0
    fi
    mkdir -p "$build_root"
    local cmake_bin
    cmake_bin="$(command -v cmake || true)"
    for tool in gcc g++; do
        command -v "$tool" >/dev/null 2>&1 || {
            echo "install_peer: '$tool' not found; install build tools (apt-get install build-essential)" >&2
            exit 1
        }
    done
    if [[ -z "$cmake_bin" ]]; then
        [[ -x "$venv/bin/python" ]] || "$PYTHON" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet cmake
        cmake_bin="$venv/bin/cmake"
    fi
    if [[ ! -f "$src/CMakeLists.txt" ]]; then
        local sdist="$build_root/llama_cpp_python-$version.tar.gz"
        if [[ ! -f "$sdist" ]]; then
            echo "install_peer: downloading the llama-cpp-python $version sdist"
            "$PYTHON" -m pip download --quiet --no-binary :all: --no-deps "llama-cpp-python==$version" -d "$build_root"
        fi
        tar -xzf "$sdist" -C "$build_root"
    fi
    local cores
    cores="$(nproc 2>/dev/null || echo 2)"
    (( cores > 2 )) && cores=2
    echo "install_peer: building llama-server (llama.cpp vendored by llama-cpp-python $version, -j${CMAKE_BUILD_PARALLEL_LEVEL:-$cores})"
    local start
    start=$(date +%s)
    # Same ggml options as the pip build of the peer (GGML_NATIVE, OpenMP by default); no web
    # UI download, no HTTPS, no tests or examples.
    # shellcheck disable=SC2086
    "$cmake_bin" -S "$src" -B "$out" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
        ${CMAKE_ARGS:-} >"$build_root/configure.log"
    "$cmake_bin" --build "$out" --target llama-server -j "${CMAKE_BUILD_PARALLEL_LEVEL:-$cores}"
    [[ -x "$binary" ]] || { echo "install_peer: build finished without $binary" >&2; exit 1; }
    echo "$version" >"$out/.peer-version"
    echo "install_peer: llama-server built in $(( $(date +%s) - start )) s: $binary"
}

if [[ "${1:-}" == "llama-server" ]]; then
    build_llama_server
    exit 0
elif [[ -n "${1:-}" ]]; then
    echo "usage: bash bench/install_peer.sh [llama-server]" >&2
    exit 2
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
