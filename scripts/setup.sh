#!/usr/bin/env bash
# Install what the toolkit needs on a Debian machine with Node.js and npm:
# Bun (pinned, from the npm registry), libpcap and iproute2 (from Debian, for
# the boot server and the network tests), pigz, zstd and tshark (independent peers the
# tests and benchmarks check against), zsh (the completion test), then the project's packages.
set -euo pipefail
cd "$(dirname "$0")/.."

BUN_VERSION=$(sed -n 's/.*"packageManager": *"bun@\([^"]*\)".*/\1/p' package.json)

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "setup: need root to run: $*" >&2; return 1; fi
}

if [ "$(bun --version 2>/dev/null || true)" != "$BUN_VERSION" ]; then
  echo "setup: installing bun@$BUN_VERSION from the npm registry"
  as_root npm install --global --no-fund --no-audit "bun@$BUN_VERSION" >/dev/null
fi

missing=()
[ -e /usr/lib/x86_64-linux-gnu/libpcap.so.0.8 ] || [ -n "$(ldconfig -p 2>/dev/null | grep libpcap.so.0.8)" ] || missing+=(libpcap0.8)
command -v ip >/dev/null || missing+=(iproute2)
command -v pigz >/dev/null || missing+=(pigz)
command -v zstd >/dev/null || missing+=(zstd)
command -v tshark >/dev/null || missing+=(tshark)
command -v python3 >/dev/null || missing+=(python3)
command -v zsh >/dev/null || missing+=(zsh)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]} from Debian"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

bun install --frozen-lockfile
echo "setup: ready (bun $(bun --version))"
