#!/usr/bin/env bash
# Vendor the dashboard's third-party browser code (xterm.js and its fit addon) into the Python
# package, so the dashboard needs no CDN and no build step at install time.
#
#     scripts/vendor_web_assets.sh            # the pinned versions below
#     XTERM_VERSION=6.0.0 scripts/vendor_web_assets.sh
#
# Uses `npm pack` (the npm client and its configured registry) into a temporary directory,
# copies the ES module builds, the stylesheet and each LICENSE into
# server/surfaces/http/dashboard/static/vendor/, and records the versions, the packages'
# integrity strings and every copied file's sha256 in VENDORED.json there. Commit the result.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
XTERM_VERSION="${XTERM_VERSION:-6.0.0}"
FIT_VERSION="${FIT_VERSION:-0.11.0}"
DEST="$ROOT/server/surfaces/http/dashboard/static/vendor"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

command -v npm >/dev/null 2>&1 || { log "npm is needed to vendor the web assets (apt-get install npm)"; exit 1; }
command -v python3 >/dev/null 2>&1 || { log "python3 is needed to write VENDORED.json"; exit 1; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# fetch NAME VERSION DIR: the package's tarball, unpacked into $WORK/DIR; prints its integrity.
fetch() {
    local name="$1" version="$2" dir="$3" packed
    packed="$(cd "$WORK" && npm pack --silent --json "$name@$version")"
    mkdir -p "$WORK/$dir"
    tar -xzf "$WORK/$(printf '%s' "$packed" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["filename"])')" \
        -C "$WORK/$dir" --strip-components=1
    printf '%s' "$packed" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["integrity"])'
}

log "fetching @xterm/xterm@$XTERM_VERSION and @xterm/addon-fit@$FIT_VERSION"
XTERM_INTEGRITY="$(fetch @xterm/xterm "$XTERM_VERSION" xterm)"
FIT_INTEGRITY="$(fetch @xterm/addon-fit "$FIT_VERSION" fit)"

rm -rf "$DEST"
mkdir -p "$DEST/xterm" "$DEST/addon-fit"
cp "$WORK/xterm/lib/xterm.mjs" "$WORK/xterm/css/xterm.css" "$WORK/xterm/LICENSE" "$DEST/xterm/"
cp "$WORK/fit/lib/addon-fit.mjs" "$WORK/fit/LICENSE" "$DEST/addon-fit/"

python3 - "$DEST" "$XTERM_VERSION" "$XTERM_INTEGRITY" "$FIT_VERSION" "$FIT_INTEGRITY" <<'PY'
import hashlib, json, pathlib, sys

dest = pathlib.Path(sys.argv[1])
packages = {
    "@xterm/xterm": {"version": sys.argv[2], "integrity": sys.argv[3], "dir": "xterm"},
    "@xterm/addon-fit": {"version": sys.argv[4], "integrity": sys.argv[5], "dir": "addon-fit"},
}
for package in packages.values():
    folder = dest / package["dir"]
    package["files"] = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.iterdir())
    }
document = {
    "generated_by": "scripts/vendor_web_assets.sh",
    "note": "files copied unchanged from the packages (their source maps are not shipped)",
    "packages": packages,
}
(dest / "VENDORED.json").write_text(json.dumps(document, indent=2) + "\n")
PY
log "vendored into ${DEST#"$ROOT"/}:"
find "$DEST" -type f -printf '    %P (%s bytes)\n' | sort >&2
