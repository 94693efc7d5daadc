#!/bin/sh
# cachetun preinstall (deb: preinst install|upgrade; rpm: %pre 1|2):
# the system user the gateway runs as.
set -e
if ! getent group cachetun >/dev/null; then
	groupadd --system cachetun
fi
if ! getent passwd cachetun >/dev/null; then
	useradd --system --gid cachetun --no-create-home --home-dir /nonexistent \
		--shell /usr/sbin/nologin --comment "cachetun gateway" cachetun
fi
exit 0
