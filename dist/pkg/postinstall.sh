#!/bin/sh
# cachetun postinstall (deb: postinst configure; rpm: %post 1|2).
# /etc/cachetun belongs to the cachetun user, mode 0750; on the first install
# (no host key yet) `cachetun server init` writes the host key (0600), a
# sample server.yaml and an empty authorized_keys (0600). The unit is not
# started: the sample config has no keys and a placeholder target; edit it,
# run `cachetun server check`, then `systemctl enable --now cachetun`.
set -e
case "$1" in
configure | 1 | 2) ;;
*) exit 0 ;;
esac
dir=/etc/cachetun
install -d -m 0750 -o cachetun -g cachetun "$dir"
chown cachetun:cachetun "$dir"
chmod 0750 "$dir"
if [ ! -e "$dir/host_ed25519" ]; then
	/usr/bin/cachetun server init --dir "$dir"
	for f in host_ed25519 host_ed25519.pub server.yaml authorized_keys; do
		[ -e "$dir/$f" ] && chown cachetun:cachetun "$dir/$f"
	done
	chmod 0600 "$dir/host_ed25519" "$dir/authorized_keys"
	chmod 0640 "$dir/server.yaml"
	echo "cachetun: edit $dir/server.yaml and $dir/authorized_keys, run 'cachetun server check', then 'systemctl enable --now cachetun'"
fi
# The UDP buffer sizes of /usr/lib/sysctl.d/90-cachetun.conf, now rather
# than at the next boot (read-only in most containers: not an error).
sysctl -q -p /usr/lib/sysctl.d/90-cachetun.conf >/dev/null 2>&1 || true
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
	# an upgrade restarts a running gateway on the new binary
	if systemctl is-active --quiet cachetun; then
		systemctl try-restart cachetun || true
	fi
fi
exit 0
