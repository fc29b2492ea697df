#!/usr/bin/env bash
# One command from a fresh clone to a full test run: installs what the tests need (Python
# packages into .venv; bubblewrap when missing; when no Docker-API engine answers, Podman's
# compatible service and the project runtime image), runs the static checks, then pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh -k conformance -x
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
source "$(dirname "${BASH_SOURCE[0]}")/engine.sh"
cd "$ROOT"

if [ "$(uname -s)" = Linux ]; then
    apt_install bubblewrap python3 procps qemu-system-x86 lz4 debootstrap e2fsprogs slirp4netns
fi
ensure_venv dev

ensure_engine
ensure_runtime_image

log "ruff check"
.venv/bin/ruff check .
log "ruff format --check"
.venv/bin/ruff format --check .
log "mypy --strict"
.venv/bin/mypy
log "lint-imports (layer contracts)"
.venv/bin/lint-imports --no-cache
log "pytest"
.venv/bin/pytest "$@"
