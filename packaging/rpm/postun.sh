# Parley's %postun: tells a running systemd the unit files are gone. Agents' state lives
# in their users' home directories and is never touched by the package.
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null 2>&1 || :
fi
