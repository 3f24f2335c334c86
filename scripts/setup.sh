#!/usr/bin/env bash
# Create .venv and install fundbench (editable) with its test, lint, executor (Ray,
# submitit) and logger (MLflow) extras and every built-in model plugin under plugins/
# (each its own distribution, editable). Idempotent: a second call
# only checks that everything is there. Used by the README quick start and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c requirements/ci-constraints.txt \
  torch torchvision
# The core and every plugin folder in one pip call, so each plugin's `fundbench` (and
# sibling plugin) requirement resolves to these folders, never to an index.
plugins=()
for dir in plugins/*/; do
  if [ -f "${dir}pyproject.toml" ]; then plugins+=(-e "${dir%/}"); fi
done
.venv/bin/python -m pip install --quiet -c requirements/ci-constraints.txt -e '.[test,lint,ray,slurm,mlflow]' \
  "${plugins[@]}"
.venv/bin/python -c "import torch, torchvision, timm, fundbench; print('fundbench env ready: torch', torch.__version__, 'torchvision', torchvision.__version__)"
.venv/bin/python -c "
from fundbench.host import get_host
host = get_host()
for problem in host.problems:
    print('setup.sh: warning:', problem)
dists = sorted({e.plugin.distribution for e in host.models})
print('models:', len(host.models), 'from', ', '.join(dists))
"

# The browser test (tests/test_report_browser.py) and `fundbench screenshot` drive Debian's
# chromium through chromedriver; nothing ever downloads a browser.
if ! .venv/bin/python -c "from fundbench.screenshot import find_browser; find_browser()" \
    >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    apt_log=$(mktemp)
    apt_install() {
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver >>"$apt_log" 2>&1
    }
    # Refresh the package lists only when they lack chromium or are too stale to install it.
    if ! { apt-cache show chromium chromium-driver >/dev/null 2>&1 && apt_install; }; then
      if ! { apt-get update -qq >>"$apt_log" 2>&1 && apt_install; }; then
        cat "$apt_log" >&2
        echo "setup.sh: apt-get install chromium chromium-driver failed (log above)" >&2
        exit 1
      fi
    fi
    rm -f "$apt_log"
    echo "installed $(chromium --version 2>/dev/null | head -n1) and chromium-driver"
  else
    echo "chromium/chromedriver missing: run 'sudo apt-get install chromium chromium-driver'" \
      "(the browser test fails without them)" >&2
  fi
fi
