#!/usr/bin/env bash
# The README's main command: a working wardnet overlay on this machine.
# Installs what it needs, builds release binaries, runs the demo (as root):
# a controller on the embedded SQLite store, two hubs and three spokes as
# network namespaces (each spoke with a LAN host), real agents enrolled with
# tokens from the CLI, traffic from LAN to LAN, a fleet status table.
# Ctrl-C removes everything.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "run as root: it creates network namespaces and TUN devices (sudo $0)" >&2
  exit 1
fi
if ! command -v wg >/dev/null || ! command -v ping >/dev/null || ! command -v ip >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends iproute2 iputils-ping wireguard-tools
fi
cargo build --release --locked --bins --workspace
exec target/release/wardnet-demo
