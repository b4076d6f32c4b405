#!/bin/sh
# Runs a command as nobody when we are root (CI), else as ourselves.
if [ "$(id -u)" -eq 0 ]; then
    exec setpriv --reuid=nobody --regid=nogroup --clear-groups --inh-caps=-all "$@"
fi
exec "$@"
