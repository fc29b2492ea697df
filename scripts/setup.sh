#!/usr/bin/env bash
# Shared by quickstart.sh and test.sh (sourced): system packages and the project's .venv.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Install Debian packages that are missing (only as root on a Debian-like system).
apt_install() {
    local missing=() pkg
    command -v dpkg >/dev/null 2>&1 || return 0
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        log "missing system packages: ${missing[*]} (install them, e.g. sudo apt-get install ${missing[*]})"
        return 0
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Create .venv at the repository root and install ProjectVM into it (editable), with extras.
ensure_venv() {
    local extras="${1:-}"
    if [ ! -x "$ROOT/.venv/bin/python" ]; then
        log "creating $ROOT/.venv"
        python3 -m venv "$ROOT/.venv"
    fi
    log "installing ProjectVM${extras:+ [$extras]} into .venv"
    "$ROOT/.venv/bin/python" -m pip install -q --disable-pip-version-check \
        -e "$ROOT${extras:+[$extras]}" 2> >(grep -v "is ignored: it is neither" >&2)
}
