#!/usr/bin/env bash
# Everything, idempotently: the node's runtime (scripts/setup_runtime.sh: Python, pip, this project editable) and
# the test peers (scripts/setup_tests.sh: dcmtk, Orthanc, dicom3tools, PixelMed, Chromium, PostgreSQL, Redis,
# HAProxy, OHIF...). scripts/demo.sh runs only the first, scripts/test.sh the second (which runs the first too).
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/setup_tests.sh" "$@"
