#!/bin/sh
# cachetun postremove (deb: postrm remove|purge|upgrade|...; rpm: %postun 0|1).
# remove (deb) and erase (rpm) keep /etc/cachetun and the cachetun user: the
# host key is the gateway's identity that clients pin. `dpkg --purge` deletes
# both (the host key with them).
set -e
case "$1" in
remove | purge | 0)
	if [ -d /run/systemd/system ]; then
		systemctl stop cachetun >/dev/null 2>&1 || true
		systemctl daemon-reload >/dev/null 2>&1 || true
	fi
	;;
esac
if [ "$1" = purge ]; then
	rm -rf /etc/cachetun
	if getent passwd cachetun >/dev/null; then
		userdel cachetun >/dev/null 2>&1 || true
	fi
	if getent group cachetun >/dev/null; then
		groupdel cachetun >/dev/null 2>&1 || true
	fi
fi
exit 0
