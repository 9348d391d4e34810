# Parley's %preun: on erase (not upgrade, where $1 is 1) stop system-level agents
# (parley@USER.service). Per-user agents and their containers are left alone.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl --system stop 'parley@*.service' >/dev/null 2>&1 || :
fi
