#!/usr/bin/env bash
# Set up everything in ./.venv: the CPU build of torch (when no torch is installed), specdecode with its extras,
# every plugin under plugins/, and the example third-party plugin. Safe to run again: it skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ ! -x .venv/bin/python ]; then
    echo "specdecode setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install -q)

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    # Plain `pip install torch` pulls a CUDA build of several GB; take the CPU wheel.
    echo "specdecode setup: installing the CPU build of torch 2.13.0"
    "${PIP[@]}" "torch==2.13.0+cpu" 2>/dev/null \
        || "${PIP[@]}" --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
fi

if ! .venv/bin/python -c "import xgrammar" 2>/dev/null; then
    # Structured output. xgrammar's requirement on triton (about 1 GB) serves only its CUDA masking kernel; specdecode
    # masks with torch, so it is installed without it.
    echo "specdecode setup: installing xgrammar (structured output)"
    "${PIP[@]}" --no-deps "xgrammar==0.2.9" "apache-tvm-ffi>=0.1.11"
    "${PIP[@]}" pydantic 2>&1 | grep -v -e "dependency resolver does not currently" -e "^xgrammar .* requires" || true
fi

# Reinstall our packages only when a pyproject.toml changed (editable installs pick up code changes anyway).
shopt -s nullglob
projects=(pyproject.toml plugins/*/pyproject.toml examples/*/pyproject.toml)
packages=(-e ".[gguf,plot,test]")
for p in "${projects[@]:1}"; do
    packages+=(-e "$(dirname "$p")")
done
packages+=(-e "plugins/eagle[train]")  # the text train-eagle teacher-forces by default
stamp=.venv/.specdecode-installed
want=$(cat "${projects[@]}" | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "specdecode setup: installing specdecode, its plugins and test tools"
    # pip's resolver complains that xgrammar lacks triton (left out on purpose, above): not worth a user's attention.
    "${PIP[@]}" "${packages[@]}" ruff 2>&1 \
        | grep -v -e "^WARNING: Location" -e "dependency resolver does not currently" -e "^xgrammar .* requires" || true
    .venv/bin/python -c "import specdecode" # fail loudly if the install did not work
    echo "$want" > "$stamp"
fi
