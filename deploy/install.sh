#!/bin/sh
# Installs mdrec as a systemd service. Idempotent: run it again to upgrade the binary and the
# unit; the configuration and the environment file are created once and never overwritten.
#
#   deploy/install.sh                          # as root: build if needed, install, daemon-reload
#   DESTDIR=/tmp/stage deploy/install.sh       # stage into a directory (packaging, tests)
#
# Environment:
#   DESTDIR     staging root (default: none, i.e. the live system)
#   PREFIX      where the binary and docs go (default /usr/local)
#   SYSCONFDIR  configuration root (default /etc)
#   UNITDIR     systemd unit directory (default $SYSCONFDIR/systemd/system)
#   MDREC_BIN   the binary to install (default: target/release/mdrec, built if missing)
#
# The unit uses DynamicUser=yes with StateDirectory=mdrec: systemd allocates the user and
# /var/lib/mdrec itself, so no sysusers or tmpfiles entry is needed.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
SYSCONFDIR=${SYSCONFDIR:-/etc}
UNITDIR=${UNITDIR:-$SYSCONFDIR/systemd/system}
MDREC_BIN=${MDREC_BIN:-$here/target/release/mdrec}

if [ ! -x "$MDREC_BIN" ]; then
    echo "building $MDREC_BIN (cargo build --release --locked)"
    (cd "$here" && cargo build --release --locked)
fi

bindir=$PREFIX/bin
docdir=$PREFIX/share/doc/mdrec
mandir=$PREFIX/share/man/man1
bashdir=$PREFIX/share/bash-completion/completions
zshdir=$PREFIX/share/zsh/site-functions
fishdir=$PREFIX/share/fish/vendor_completions.d
confdir=$SYSCONFDIR/mdrec

install -d -m 0755 "$DESTDIR$bindir" "$DESTDIR$docdir" "$DESTDIR$docdir/monitoring" \
    "$DESTDIR$UNITDIR" "$DESTDIR$mandir" "$DESTDIR$bashdir" "$DESTDIR$zshdir" "$DESTDIR$fishdir"
install -d -m 0755 "$DESTDIR$confdir"

# the binary without its debug information (a third of the size; symbol names stay, so a
# panic's backtrace still names functions)
install -m 0755 "$MDREC_BIN" "$DESTDIR$bindir/mdrec.tmp"
if command -v strip >/dev/null 2>&1; then
    strip --strip-debug "$DESTDIR$bindir/mdrec.tmp"
else
    echo "strip not found (binutils): installing the binary with its debug information"
fi
mv "$DESTDIR$bindir/mdrec.tmp" "$DESTDIR$bindir/mdrec"
for doc in README.md ARCHITECTURE.md BENCHMARKS.md docs/SCHEMA.md deploy/postgres.md \
    deploy/mdrec.example.toml; do
    install -m 0644 "$here/$doc" "$DESTDIR$docdir/$(basename "$doc")"
done
install -m 0644 "$here/deploy/prometheus/alerts.yml" "$here/deploy/prometheus/alerts_test.yml" \
    "$here/deploy/grafana/mdrec.json" "$DESTDIR$docdir/monitoring/"

# man pages and shell completions, from the binary itself
"$DESTDIR$bindir/mdrec" man --dir "$DESTDIR$mandir"
chmod 0644 "$DESTDIR$mandir"/*.1
"$DESTDIR$bindir/mdrec" completions bash > "$DESTDIR$bashdir/mdrec"
"$DESTDIR$bindir/mdrec" completions zsh > "$DESTDIR$zshdir/_mdrec"
"$DESTDIR$bindir/mdrec" completions fish > "$DESTDIR$fishdir/mdrec.fish"
chmod 0644 "$DESTDIR$bashdir/mdrec" "$DESTDIR$zshdir/_mdrec" "$DESTDIR$fishdir/mdrec.fish"

# the unit, pointed at the installed paths
sed -e "s|/usr/local/bin/mdrec|$bindir/mdrec|g" \
    -e "s|/etc/mdrec/|$confdir/|g" \
    -e "s|file:/usr/share/doc/mdrec/|file:$docdir/|g" \
    "$here/systemd/mdrec.service" > "$DESTDIR$UNITDIR/mdrec.service.tmp"
chmod 0644 "$DESTDIR$UNITDIR/mdrec.service.tmp"
mv "$DESTDIR$UNITDIR/mdrec.service.tmp" "$DESTDIR$UNITDIR/mdrec.service"

# configuration: created once, the operator's edits are kept
if [ ! -e "$DESTDIR$confdir/mdrec.toml" ]; then
    install -m 0644 "$here/deploy/mdrec.example.toml" "$DESTDIR$confdir/mdrec.toml"
    echo "created $confdir/mdrec.toml: set [record] symbols and [database] url"
else
    echo "kept $confdir/mdrec.toml"
fi
if [ ! -e "$DESTDIR$confdir/mdrec.env" ]; then
    umask 077
    cat > "$DESTDIR$confdir/mdrec.env" <<'EOF'
# Read by systemd (EnvironmentFile=) before mdrec starts; keep this file mode 0600.
# The database URL with its password stays out of mdrec.toml and out of the logs:
#MDREC_DATABASE_URL=postgres://mdrec:CHANGE-ME@127.0.0.1:5432/mdrec
# Log filter (default info):
#RUST_LOG=info
EOF
    chmod 0600 "$DESTDIR$confdir/mdrec.env"
    echo "created $confdir/mdrec.env (mode 0600) for MDREC_DATABASE_URL"
else
    echo "kept $confdir/mdrec.env"
fi

if [ -z "$DESTDIR" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    echo "installed; check the configuration, then start it:"
    echo "  $bindir/mdrec check-config -c $confdir/mdrec.toml"
    echo "  systemctl reload mdrec     # after editing it later: symbols added or removed"
    echo "  systemctl enable --now mdrec"
else
    echo "staged into ${DESTDIR:-/}"
fi
