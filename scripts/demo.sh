#!/usr/bin/env bash
# One command for a fresh machine: install what the node needs, then run the demo on the embedded emulator.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec python3 -m node.cli demo "$@"
