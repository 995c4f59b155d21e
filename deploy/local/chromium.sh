#!/usr/bin/env bash
# Headless Chromium for the dashboard's browser tests: Debian's chromium package, installed with
# apt-get when missing (as root; otherwise the script says what to run). Idempotent; prints the path.
#
# Usage: deploy/local/chromium.sh [install|path]
#   install  (default) install when missing, then print the browser's path
#   path     print the path, exit 3 when it is not installed
#
# Settings (environment variables):
#   APIM_CHROMIUM   use this browser binary instead (checked, never installed)
set -euo pipefail

say() { echo "chromium.sh: $*" >&2; }
die() { echo "chromium.sh: ERROR: $*" >&2; exit 1; }

find_browser() {
    if [[ -n "${APIM_CHROMIUM:-}" ]]; then
        [[ -x "$APIM_CHROMIUM" ]] || die "APIM_CHROMIUM=$APIM_CHROMIUM is not an executable"
        echo "$APIM_CHROMIUM"
        return 0
    fi
    command -v chromium || command -v chromium-browser || return 1
}

install() {
    if find_browser >/dev/null; then
        find_browser
        return 0
    fi
    if [[ "${EUID:-$(id -u)}" -ne 0 ]]; then
        die "chromium is not installed and this is not root: run 'sudo apt-get install -y chromium'"
    fi
    command -v apt-get >/dev/null || die "chromium is not installed and apt-get is not available"
    say "installing Debian's chromium package (about 40 s)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null; } \
        || die "apt-get install chromium failed"
    find_browser || die "chromium was installed but is not on PATH"
}

case "${1:-install}" in
    install) install ;;
    path) find_browser || { say "not installed (run deploy/local/chromium.sh)"; exit 3; } ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' ;;
    *) die "unknown command ${1} (install or path)" ;;
esac
