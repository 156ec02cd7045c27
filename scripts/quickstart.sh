#!/usr/bin/env bash
# Genesis Lab quick start: set everything up, then run the demo or the test suite.
#
#   scripts/quickstart.sh demo   # set up, then run profiles/demo.toml headless on the embedded default
#   scripts/quickstart.sh test   # set up, then run the test suite (what CI runs)
#
# Set-up is idempotent: a virtual environment in .venv (or $GENESIS_VENV), torch first — a CPU build
# where no NVIDIA GPU is present, and an already-installed torch (e.g. a CUDA build) is left alone —
# then the project in editable mode: `demo` with what a run needs, `test` with the test extras too
# (Ray, pysptk, the snapshot plugin: about a gigabyte more, which a demo never uses).
set -euo pipefail
cd "$(dirname "$0")/.."

what="${1:-}"
case "$what" in
  demo|test) ;;
  *) echo "usage: scripts/quickstart.sh demo|test" >&2; exit 2 ;;
esac

PYTHON="${PYTHON:-python3}"
VENV="${GENESIS_VENV:-.venv}"
TORCH_VERSION="${GENESIS_TORCH:-2.13.0}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "quickstart: Python 3.10 or newer is needed ($("$PYTHON" --version 2>&1) found); set PYTHON=/path/to/python3.10+" >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "quickstart: creating the virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if python -c 'import torch' 2>/dev/null; then
  echo "quickstart: keeping the installed torch $(python -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "quickstart: NVIDIA GPU found; installing torch $TORCH_VERSION (CUDA build)"
  pip install -q "torch==$TORCH_VERSION"
else
  # No GPU: the CPU build. PyTorch's CPU index where it is reachable; otherwise the registry's
  # torch, which on machines with a local CPU wheel (a pip find-links) resolves to that wheel.
  if python -c 'import urllib.request as u; u.urlopen("https://download.pytorch.org/whl/cpu/", timeout=5)' 2>/dev/null; then
    echo "quickstart: no NVIDIA GPU; installing torch $TORCH_VERSION (CPU build)"
    pip install -q "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple
  else
    echo "quickstart: no NVIDIA GPU; installing torch $TORCH_VERSION from the configured index"
    pip install -q "torch==$TORCH_VERSION"
  fi
fi

if [ "$what" = test ]; then spec=".[test]"; else spec="."; fi
echo "quickstart: installing Genesis Lab ($spec) and its dependencies"
pip install -q -e "$spec" 2>&1 | grep -v -e "^WARNING: Location" -e "is ignored" || true
python -c 'import engine, genesis_tui, peft, mergekit, textual' || { echo "quickstart: the install is incomplete (see pip's output above)" >&2; exit 1; }

case "$what" in
  demo) exec genesis-tui --profile profiles/demo.toml --headless ;;
  # Two test processes (pytest-xdist; a file's tests stay together): most of a test's time is
  # spawning worker processes that import torch, one core each, so two overlap well on 2 cores
  # (11:48 against 15:13 for the whole suite on this project's 2-core machine).
  # GENESIS_TEST_WORKERS=0 runs it in one process.
  test) exec python -m pytest -q -n "${GENESIS_TEST_WORKERS:-2}" --dist loadfile ;;
esac
