#!/bin/sh
# cachetun preremove (deb: prerm remove|upgrade|deconfigure; rpm: %preun 0|1):
# a removal stops and disables the unit (the gateway drains its streams); an
# upgrade leaves it running for postinstall to restart.
set -e
case "$1" in
remove | deconfigure | 0) ;;
*) exit 0 ;;
esac
if [ -d /run/systemd/system ]; then
	systemctl stop cachetun >/dev/null 2>&1 || true
	systemctl disable cachetun >/dev/null 2>&1 || true
fi
exit 0
