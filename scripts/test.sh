#!/usr/bin/env bash
# The test suite: set up, then pytest (models, data, augmentation, training, BN study, notebooks, report).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
exec "$PY" -m pytest -q "$@"
