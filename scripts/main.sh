#!/usr/bin/env bash
# The main job: set up, run all four notebooks headless, render report.md.
#   bash scripts/main.sh --profile smoke --data shared        (minutes on a CPU; output in build/smoke/)
#   bash scripts/main.sh --profile full  --data shared        (the study; meant for a GPU; the committed results/full/
#                                                              are the JPEG copy's: move them aside for --data official)
# Arguments are passed to `python -m lib study` (see `python -m lib study --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
CIFAR10_STUDY_PROG="bash scripts/main.sh" exec "$PY" -m lib study "$@"  # its --help and errors name this script
