#!/usr/bin/env bash
# One command from a fresh clone to a running ProjectVM: installs what is needed into .venv,
# checks a project VM works end to end, then serves MCP over HTTP with a fresh agent token.
# Usage: scripts/quickstart.sh [--port 8765] [--agent NAME] [--driver local]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

if [ "$(uname -s)" = Linux ]; then
    apt_install bubblewrap python3
fi
ensure_venv
exec "$ROOT/.venv/bin/projectvm" quickstart "$@"
