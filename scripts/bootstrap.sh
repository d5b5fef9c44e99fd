#!/usr/bin/env bash
# Bootstrap from nothing: system packages (when root), .venv with the package and test tools.
# Idempotent: a second run checks and returns quickly.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

# bubblewrap: the sandbox; pango + libharfbuzz-subset0: WeasyPrint; poppler-utils: PDF tests.
need=()
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
command -v pdftoppm >/dev/null 2>&1 || need+=(poppler-utils)
# chromium + chromium-driver: the marking page's real-browser test (tests/test_mark_browser.py).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
for lib in libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0; do
  dpkg -s "$lib" >/dev/null 2>&1 || need+=("$lib")
done
if ((${#need[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing system packages: ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "bootstrap: missing system packages: ${need[*]} (install them: sudo apt-get install ${need[*]})" >&2
  fi
fi

stamp=.venv/.installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  [[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  # torch/torchvision are pinned in pyproject (2.14.1 / 0.29.1); pip takes them from local disk here.
  .venv/bin/python -m pip install -q -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import grader, torch, weasyprint, nbclient" 
  touch "$stamp"
fi
