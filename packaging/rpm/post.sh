# Parley's %post: enables and starts nothing; only tells a running systemd that new unit
# files exist.
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null 2>&1 || :
fi
