#!/usr/bin/env bash
# Installs the Flower anchor (flwr[simulation] 1.42.0 and its dependencies, pinned) into a
# venv outside the clone, and prints the line that points the experiments at it:
#
#   eval "$(experiments/flower/setup.sh)"     # sets FL_FLOWER_PYTHON
#
# torch (5.6 GB with PyPI's CUDA wheels) is not installed twice: with FL_TORCH_PYTHON set
# (the PyTorch anchor's venv, which .ci/run installs), the new venv reads its packages;
# without, torch is installed from experiments/pytorch/ here too.
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE="${FL_CI_CACHE:-$HOME/.cache/fl-ci}"
pins=$(cat experiments/flower/requirements.txt experiments/flower/constraints.txt \
    experiments/pytorch/requirements.txt experiments/pytorch/constraints.txt)
VENV="$CACHE/py-flower-$( (echo "$pins"; echo "${FL_TORCH_PYTHON:-}") | sha256sum | cut -c1-12)"
if [ ! -f "$VENV/installed" ]; then
    echo "installing Flower (PyPI flwr[simulation] 1.42.0, pinned) into $VENV" >&2
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    pip=("$VENV/bin/pip" install -q --disable-pip-version-check --no-cache-dir)
    if [ -n "${FL_TORCH_PYTHON:-}" ]; then
        torch_site=$("$FL_TORCH_PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        own_site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        echo "$torch_site" > "$own_site/fl_torch_anchor.pth"
    else
        "${pip[@]}" -r experiments/pytorch/requirements.txt -c experiments/pytorch/constraints.txt
    fi
    "${pip[@]}" -r experiments/flower/requirements.txt -c experiments/flower/constraints.txt
    "$VENV/bin/python" -c "import flwr, torch, ray" >&2
    touch "$VENV/installed"
fi
echo "export FL_FLOWER_PYTHON=$VENV/bin/python"
