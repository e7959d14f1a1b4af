#!/usr/bin/env bash
# Build the Debian packages of the agent and the controller (cargo-deb),
# and with --install-test install them with dpkg into this system, check
# them, and purge them again (--keep leaves them installed).
#
#   scripts/package.sh                 # build target/debian/*.deb
#   scripts/package.sh --install-test  # build, install, check, purge (root)
#   WARDNET_PACKAGE_PROFILE=dev scripts/package.sh ...  # quick, unoptimised
#   scripts/package.sh --no-build ...  # package the binaries already built
#                                      # for that profile (the tests do)
#
# Needs: cargo-deb (`cargo install cargo-deb --locked`), dpkg-dev.
set -euo pipefail
cd "$(dirname "$0")/.."

install_test=false
keep=false
build=true
for arg in "$@"; do
    case "$arg" in
    --install-test) install_test=true ;;
    --keep) keep=true ;;
    --no-build) build=false ;;
    *) echo "usage: $0 [--no-build] [--install-test [--keep]]" >&2; exit 64 ;;
    esac
done

if ! cargo deb --version >/dev/null 2>&1; then
    echo "error: cargo-deb is missing: cargo install cargo-deb --locked" >&2
    exit 1
fi

target="${CARGO_TARGET_DIR:-target}"
profile="${WARDNET_PACKAGE_PROFILE:-release}"
case "$profile" in
dev) bindir="$target/debug" ;;
*) bindir="$target/$profile" ;;
esac
if $build; then
    cargo build --profile "$profile" --locked -p wardnet-agent -p wardnet-controller
else
    for b in wardnet-agent wardnet-controller; do
        if [ ! -x "$bindir/$b" ]; then
            echo "error: --no-build: $bindir/$b is missing; build it first (cargo build --profile $profile)" >&2
            exit 1
        fi
    done
fi

# Completions and man pages from the clap definitions (hidden subcommand).
# cargo-deb maps the assets' target/release/ prefix to the profile's dir.
rm -rf "$bindir/gen"
"$bindir/wardnet-agent" generate-docs "$bindir/gen/agent"
"$bindir/wardnet-controller" generate-docs "$bindir/gen/controller"

mkdir -p "$target/debian"
agent_deb=$(cargo deb --no-build --locked --profile "$profile" -p wardnet-agent --output "$target/debian" | tail -n1)
controller_deb=$(cargo deb --no-build --locked --profile "$profile" -p wardnet-controller --output "$target/debian" | tail -n1)
echo "built $agent_deb"
echo "built $controller_deb"

$install_test || exit 0

if [ "$(id -u)" != 0 ]; then
    echo "error: --install-test installs packages with dpkg; run it as root" >&2
    exit 1
fi
for p in wardnet-agent wardnet-controller; do
    if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q installed && ! $keep; then
        echo "error: $p is already installed here; refusing to purge someone's install (use --keep)" >&2
        exit 1
    fi
done

fail=0
check() { # check DESCRIPTION COMMAND...
    if "${@:2}" >/dev/null 2>&1; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi
}

user_existed=false
getent passwd wardnet >/dev/null && user_existed=true
cleanup() {
    if ! $keep; then
        dpkg --purge wardnet-agent wardnet-controller >/dev/null 2>&1 || true
        # The system user is left by purge (Debian practice); remove it if
        # this test created it.
        $user_existed || userdel wardnet >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

dpkg -i "$agent_deb" "$controller_deb"

# Files where the units expect them.
for unit in wardnet-agent wardnet-controller; do
    u=/usr/lib/systemd/system/$unit.service
    check "$u installed" test -f "$u"
    exe=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$u")
    check "$unit ExecStart $exe is executable" test -x "$exe"
    check "$unit --version" "$exe" --version
    check "$unit man page" test -f "/usr/share/man/man1/$unit.1"
    check "$unit bash completion" test -f "/usr/share/bash-completion/completions/$unit"
    check "$unit zsh completion" test -f "/usr/share/zsh/vendor-completions/_$unit"
    check "$unit fish completion" test -f "/usr/share/fish/vendor_completions.d/$unit.fish"
done
check "agent config (conffile) at the path ExecStart names" test -f /etc/wardnet/agent.toml
check "controller config (conffile) at the path ExecStart names" test -f /etc/wardnet/controller.toml
check "agent.toml is a conffile" grep -qx /etc/wardnet/agent.toml /var/lib/dpkg/info/wardnet-agent.conffiles
check "sysusers snippet" test -f /usr/lib/sysusers.d/wardnet.conf
check "service user wardnet exists" getent passwd wardnet
check "agent subcommand man page" test -f /usr/share/man/man1/wardnet-agent-enroll.1
check "controller ca man page" test -f /usr/share/man/man1/wardnet-controller-ca.1
check "the agent is not started by the install" sh -c '! pgrep -x wardnet-agent'
# Files the guides and the postinst message point to.
check "site-admin guide (postinst names it)" test -f /usr/share/doc/wardnet-agent/site-admin.md
check "hub forwarding drop-in (site-admin guide)" test -f /usr/share/doc/wardnet-agent/examples/hub-forwarding.conf
check "NOC guide" test -f /usr/share/doc/wardnet-controller/noc.md
for f in prometheus.yml wardnet-alerts.yml grafana-dashboard.json; do
    check "Prometheus example $f (NOC guide)" test -f "/usr/share/doc/wardnet-controller/prometheus/$f"
done
if command -v systemd-analyze >/dev/null 2>&1; then
    check "systemd-analyze verify (installed units)" systemd-analyze verify --man=no \
        /usr/lib/systemd/system/wardnet-agent.service /usr/lib/systemd/system/wardnet-controller.service
fi
if [ "$fail" != 0 ]; then
    echo "package install test FAILED" >&2
    exit 1
fi
echo "package install test passed"
