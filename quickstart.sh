#!/usr/bin/env bash
# dn2 quick start: `./quickstart.sh demo` runs the offline demo, `./quickstart.sh test` the tests.
# Each sets itself up on a fresh machine: a virtual environment in .venv (override: DN2_VENV)
# with dn2 and the extras it needs. No GPU, camera or internet needed (PyPI or a local mirror of it
# is enough for the install; torch 2.14.1 / torchvision 0.29.1 are the tested versions).
set -euo pipefail
cd "$(dirname "$0")"
VENV="${DN2_VENV:-.venv}"
PY="${PYTHON:-python3}"

setup() {
  if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import dn2.export, torch' 2>/dev/null; then
    echo "[quickstart] creating $VENV and installing dn2[export,tools,test] (first run: several minutes)" >&2
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
    "$VENV/bin/python" -m pip install -q -e ".[export,tools,test]"
  fi
}

fashion_mnist() {
  # The eval tests use Fashion-MNIST from Debian's dataset-fashion-mnist (a dataset of the paper).
  if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "[quickstart] installing Debian package dataset-fashion-mnist" >&2
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
      || echo "[quickstart] could not install dataset-fashion-mnist; its tests will be skipped" >&2
  fi
}

case "${1:-}" in
  demo) shift; setup; exec "$VENV/bin/dn2" demo "$@" ;;
  test) shift; setup; fashion_mnist; exec "$VENV/bin/python" -m pytest -q "$@" ;;
  *) echo "usage: $0 demo|test [args...]" >&2; exit 2 ;;
esac
