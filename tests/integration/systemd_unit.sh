#!/usr/bin/env bash
# systemd_unit.sh — the service files as `cmake --install` lays them out: the unit passes
# `systemd-analyze verify`, its `systemd-analyze security` exposure stays at or below 3.0
# ("OK"), and the sysusers, tmpfiles and logrotate fragments, the config and the bundled model
# land where the unit and the config expect them.
set -euo pipefail
: "${NETLM:?}" "${NETLM_SOURCE_DIR:?}"
build=$(dirname "$NETLM")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() { if eval "$2"; then echo "ok: $1"; else echo "FAIL: $1"; fail=1; fi; }

cmake --install "$build" --prefix "$tmp/usr" >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log"; exit 1; }
etc="$tmp/usr/etc" # SYSCONFDIR relative to the prefix (GNUInstallDirs: /etc itself for prefix /usr)
check "netlm installed" "[ -x '$tmp/usr/bin/netlm' ]"
check "unit, sysusers and tmpfiles fragments installed" \
  "[ -f '$tmp/usr/lib/systemd/system/netlm.service' ] && [ -f '$tmp/usr/lib/sysusers.d/netlm.conf' ] && [ -f '$tmp/usr/lib/tmpfiles.d/netlm.conf' ]"
check "netlm.conf and the logrotate fragment installed" "[ -f '$etc/netlm/netlm.conf' ] && [ -f '$etc/logrotate.d/netlm' ]"
check "the bundled model installed" "[ -f '$tmp/usr/share/netlm/models/ustc-tfc2016/model.safetensors' ]"

# The unit as built names the configured prefix; verify it with this build's binary in place.
unit="$tmp/netlm.service"
sed -e "s|^ExecStart=[^ ]*/netlm |ExecStart=$NETLM |" -e "s|^Documentation=.*|Documentation=file://$NETLM_SOURCE_DIR/docs/sensor.md|" \
  "$build/netlm.service" >"$unit"
check "systemd-analyze verify: no complaints" "out=\$(systemd-analyze verify '$unit' 2>&1) && [ -z \"\$out\" ] || { echo \"\$out\"; false; }"
score=$(systemd-analyze security --offline=true "$unit" 2>/dev/null | sed -n 's/.*Overall exposure level for netlm.service: \([0-9.]*\).*/\1/p')
echo "systemd-analyze security: exposure $score"
check "exposure at most 3.0" "awk -v s='$score' 'BEGIN { exit !(s != \"\" && s <= 3.0) }'"
check "the user the unit names is the one sysusers creates" \
  "grep -q '^User=netlm' '$unit' && grep -q '^u netlm ' '$NETLM_SOURCE_DIR/systemd/netlm.sysusers'"
check "the log folder the unit may write is the one tmpfiles creates" \
  "grep -q '^ReadWritePaths=/var/log/netlm' '$unit' && grep -q '^d /var/log/netlm ' '$NETLM_SOURCE_DIR/systemd/netlm.tmpfiles'"
exit $fail
