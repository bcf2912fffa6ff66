#!/usr/bin/env bash
# A shell session with the nsbox command (as root): a persistent pod, a
# command in it, the listing, its JSON, a one-off pod, and removing it all.
#   bash examples/cli_session.sh
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"   # (before the cd below: $0 may be relative)
cd /  # (so that `python -m nsbox` never picks up a source tree)
if ! command -v nsbox >/dev/null; then
    PATH="$here/.venv/bin:$PATH"   # the checkout's virtualenv
fi
name=cli-demo
trap 'nsbox rm --force "$name" >/dev/null' EXIT   # whatever happens below

set -x
# A persistent pod: its own network (a veth pair to the host), hostname and volume.
nsbox create "$name" --hostname web-0 --veth 10.239.0.2/24,10.239.0.1/24 --volume /data

# Commands in it: the exit status is the command's.
nsbox exec "$name" -- sh -c 'hostname; ip -br -4 addr show eth0; echo hello > /data/greeting'
nsbox exec "$name" -- sh -c 'exit 3' || echo "exit status: $?"
ping -c1 -W2 10.239.0.2 >/dev/null && echo "the host reaches the pod"

# What is running, for people and for programs.
nsbox ls
nsbox inspect "$name" | python3 -c 'import json, sys; d = json.load(sys.stdin); print(d["state"], d["address"], d["pins"]["net"])'
nsenter --net="$(nsbox inspect "$name" | python3 -c 'import json, sys; print(json.load(sys.stdin)["pins"]["net"])')" ip -br link

# The volume's host side, and the pod's holder joined like nsenter does.
cat "$(nsbox inspect "$name" | python3 -c 'import json, sys; print(json.load(sys.stdin)["volumes"]["/data"])')/greeting"
nsbox join "$(nsbox inspect "$name" | python3 -c 'import json, sys; print(json.load(sys.stdin)["pid"])')" --kinds uts -- hostname

# A one-off pod around one command: gone when it returns.
nsbox run --hostname once -- sh -c 'hostname; exit 0'

nsbox rm --force "$name"
nsbox rm "$name"       # removing it again is not an error
nsbox ls
