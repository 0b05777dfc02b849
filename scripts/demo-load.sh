#!/usr/bin/env bash
# A little mixed load for `make run`: file reads, directory walks, short
# sleeps, failing opens. Runs for $1 seconds (default 20).
end=$(( $(date +%s) + ${1:-20} ))
while [ "$(date +%s)" -lt "$end" ]; do
    cat /etc/os-release >/dev/null
    ls -R /usr/share/doc >/dev/null 2>&1
    cat /nonexistent 2>/dev/null
    dd if=/dev/zero of=/dev/null bs=4k count=2000 status=none
    sleep 0.05
done
