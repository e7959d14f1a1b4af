#!/usr/bin/env bash
# The README's main command: a working wardnet overlay on this machine.
# Installs what it needs, builds release binaries, runs the demo (as root):
# a controller on the embedded SQLite store, two hubs, three GP spokes (each
# with a LAN host) and the NOC's site as network namespaces, real agents
# enrolled with tokens from the CLI, traffic from LAN to LAN, a fleet status
# table, and Prometheus in the NOC's site scraping every agent through the
# overlay. Ctrl-C removes everything.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "run as root: it creates network namespaces and TUN devices (sudo $0)" >&2
  exit 1
fi
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust 1.85 or newer with rustup (see README.md," >&2
  echo "'Prerequisites'); Debian's packaged cargo is too old" >&2
  exit 1
fi
need=()
for tool in wg:wireguard-tools ping:iputils-ping ip:iproute2 curl:curl prometheus:prometheus; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${need[@]}"
fi
# Build, and run the demo binary from wherever cargo put it
# (CARGO_TARGET_DIR and build.target-dir move it).
cargo build --release --locked --bins --workspace
target_dir=$(cargo metadata --format-version 1 --no-deps --locked |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
exec "${target_dir:-target}/release/wardnet-demo"
