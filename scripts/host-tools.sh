#!/usr/bin/env bash
# Host tools the (non-e2e) tests use, from Debian's archive: tcpdump reads back the pcapng files
# the capture tests write (sim-harness/tests/ctl.rs). Installs only what is missing; needs root
# when something is.
set -euo pipefail
need=()
command -v tcpdump > /dev/null || need+=(tcpdump)
[ ${#need[@]} = 0 ] && exit 0
echo "host-tools: installing ${need[*]}"
if [ "$(id -u)" != 0 ]; then
  echo "host-tools: ${need[*]} missing and not root: install them (apt-get install ${need[*]})" >&2
  exit 1
fi
apt-get install -y -qq --no-install-recommends "${need[@]}" > /dev/null 2>&1 ||
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; }
