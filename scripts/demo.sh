#!/usr/bin/env bash
# One command for a fresh machine: install what the node needs (Python, pip, the package: scripts/setup_runtime.sh;
# none of the test peers), then run the demo on the embedded emulator.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_runtime.sh
exec "${PYTHON:-python3}" -m node.cli demo "$@"
