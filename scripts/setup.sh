#!/usr/bin/env bash
# Create .venv and install fundbench (editable) with its test extras. Idempotent: a second
# call only checks that everything is there. Used by the README quick start and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c requirements/ci-constraints.txt \
  torch torchvision
.venv/bin/python -m pip install --quiet -c requirements/ci-constraints.txt -e '.[test,lint]'
.venv/bin/python -c "import torch, torchvision, timm, fundbench; print('fundbench env ready: torch', torch.__version__, 'torchvision', torchvision.__version__)"
