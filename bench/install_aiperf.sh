#!/usr/bin/env bash
# Install NVIDIA's aiperf (the field-standard LLM serving load tool) into its own venv,
# .bench-venv-aiperf: never into .venv (it pins ~50 packages of its own: transformers,
# pandas, dash, ...; no torch; about 2 minutes). Used by `make bench` for its "aiperf" rows.
# It runs offline: the tokenizer it needs is written from the GGUF by bench/aiperf_run.py.
#
#   bash bench/install_aiperf.sh
#
# Idempotent: does nothing when the venv already has aiperf at the pinned version.
# Environment knobs:
#   AIPERF_VENV     venv path (default: <repo>/.bench-venv-aiperf)
#   AIPERF_VERSION  aiperf version (default: 0.13.0)
#   PYTHON          interpreter for the venv (default: python3.11, else python3; aiperf
#                   0.13.0 needs Python 3.11 to 3.13)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${AIPERF_VENV:-$repo_root/.bench-venv-aiperf}"
version="${AIPERF_VERSION:-0.13.0}"

if [[ -z "${PYTHON:-}" ]]; then
    if command -v python3.11 >/dev/null 2>&1; then PYTHON=python3.11; else PYTHON=python3; fi
fi

installed() {
    [[ -x "$venv/bin/aiperf" ]] || return 1
    "$venv/bin/python" - "$version" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
sys.exit(0 if version("aiperf") == sys.argv[1] else 1)
PY
}

if installed; then
    echo "install_aiperf: aiperf==$version already in $venv"
    exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
    echo "install_aiperf: creating $venv with $PYTHON"
    "$PYTHON" -m venv "$venv"
fi
echo "install_aiperf: installing aiperf==$version into $venv"
start=$(date +%s)
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "aiperf==$version"
installed || { echo "install_aiperf: install finished but aiperf $version is not usable in $venv" >&2; exit 1; }
echo "install_aiperf: ok in $(( $(date +%s) - start )) s ($venv)"
