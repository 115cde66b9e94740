#!/usr/bin/env bash
# Sets up .venv (if needed) and runs the whole test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
exec python -m pytest "$@"
