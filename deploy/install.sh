#!/bin/sh
# Install preprov as a systemd service, from this checkout (run as root):
#   sh deploy/install.sh [INTERFACE]
# It makes the `preprov` system user, a venv in /opt/preprov with preprov installed
# from this checkout, /etc/preprov (lab.yaml, templates, devices.csv from
# `preprov init`, with server.interfaces set to INTERFACE when given; files already
# there are kept) and puts deploy/preprov.service in /etc/systemd/system/. The state
# directory, /var/lib/preprov, is made by systemd (StateDirectory=).
# PREFIX, ETC and UNIT_DIR move where it installs (the tests install into a folder).
set -eu
here="$(cd "$(dirname "$0")/.." && pwd)"
iface="${1:-}"
PREFIX="${PREFIX:-/opt/preprov}"
ETC="${ETC:-/etc/preprov}"
UNIT_DIR="${UNIT_DIR:-/etc/systemd/system}"
PY="${PYTHON:-python3}"

if ! id preprov >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/preprov --no-create-home --shell /usr/sbin/nologin preprov
fi
"$PY" -m venv "$PREFIX/.venv"
# built from a copy: a build leaves build/ behind in the folder it runs in
src="$(mktemp -d)"
cp -r "$here/pyproject.toml" "$here/README.md" "$here/server" "$src/"
rm -rf "$src/server/preprov.egg-info"
"$PREFIX/.venv/bin/pip" install --quiet "$src"
rm -rf "$src"
cp "$here/README.md" "$PREFIX/README.md"
"$PREFIX/.venv/bin/preprov" init "$ETC" >/dev/null
if [ -n "$iface" ]; then
    sed -i "s/^  interfaces: \[\]/  interfaces: [$iface]/" "$ETC/lab.yaml"
fi
# state_dir comes from the unit's --state-dir; the lab's files are readable by the service
chgrp -R preprov "$ETC" && chmod -R g+rX,o-rwx "$ETC"
"$PREFIX/.venv/bin/preprov" check --config "$ETC/lab.yaml"
mkdir -p "$UNIT_DIR"
sed "s#/opt/preprov#$PREFIX#g; s#/etc/preprov#$ETC#g" "$here/deploy/preprov.service" \
    >"$UNIT_DIR/preprov.service"
echo "installed: $UNIT_DIR/preprov.service; next: systemctl daemon-reload && systemctl enable --now preprov"
