#!/usr/bin/env bash
# Make a Docker engine answer for `make docker-test`.
#
#   engine.sh start PIDFILE   install Debian's docker.io, docker-compose and debootstrap
#                             if missing; start dockerd (as root) if no engine answers.
#                             Exit 0: an engine answers (PIDFILE holds dockerd's pid if
#                             this script started it). Exit 3: no engine can run on this
#                             machine. Any other failure (apt) is an error: exit 1.
#   engine.sh stop PIDFILE    stop the dockerd that `start` started, if any.
set -euo pipefail

ENGINE_WAIT=${ENGINE_WAIT:-60}   # seconds for dockerd to answer
PACKAGES="docker.io docker-compose debootstrap"
action=${1:?start or stop}
pidfile=${2:?pidfile}
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"

engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

if [ "$action" = stop ]; then
  [ -s "$pidfile" ] || exit 0
  pid=$(cat "$pidfile"); rm -f "$pidfile"
  $sudo kill -TERM "$pid" 2>/dev/null || exit 0
  for _ in $(seq 60); do $sudo kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.5; done
  echo "docker-test: dockerd (pid $pid) did not stop within 30 s" >&2
  exit 0
fi

missing=""
for p in $PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "docker-test: installing Debian packages:$missing"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends $missing
fi

rm -f "$pidfile"
engine_answers && exit 0

if [ -n "$sudo" ] && ! sudo -n true 2>/dev/null; then
  echo "docker-test: no Docker engine answers and dockerd needs root (no password-less sudo)" >&2
  exit 3
fi
log=/var/log/pushproxy-docker-test-dockerd.log
echo "docker-test: no Docker engine answers; starting dockerd (log: $log)"
$sudo sh -c "setsid dockerd >'$log' 2>&1 </dev/null & echo \$! >'$pidfile'"
pid=$(cat "$pidfile")
deadline=$(( $(date +%s) + ENGINE_WAIT ))
while [ "$(date +%s)" -lt "$deadline" ]; do
  if engine_answers; then exit 0; fi
  if ! $sudo kill -0 "$pid" 2>/dev/null; then
    rm -f "$pidfile"
    echo "docker-test: dockerd exited at start:" >&2; tail -5 "$log" >&2
    exit 3
  fi
  sleep 0.5
done
echo "docker-test: dockerd did not answer within ${ENGINE_WAIT} s:" >&2; tail -5 "$log" >&2
$sudo kill -TERM "$pid" 2>/dev/null || true
rm -f "$pidfile"
exit 3
