#!/usr/bin/env bash
# Runs a real Mosquitto MQTT broker (Debian's /usr/sbin/mosquitto) for tests, as a background
# process with its own configuration: anonymous access, no persistence, 127.0.0.1 only.
#
# Usage:
#   mosquitto.sh start --port P [--dir D] [--parent-pid PID] [--ephemeral]
#   mosquitto.sh stop  --port P [--dir D]
#
#   --dir D             config, pid file and log (default /tmp/isthmus-mosquitto-P).
#   --parent-pid PID    a watchdog stops the broker once PID has exited.
#   --ephemeral         with --parent-pid: the watchdog also removes D.
set -euo pipefail

MOSQUITTO=/usr/sbin/mosquitto
START_TIMEOUT_SECS=20
STOP_TIMEOUT_SECS=10

die() {
  echo "mosquitto.sh: $*" >&2
  exit 1
}
log() { echo "mosquitto.sh: $*" >&2; }

require_tools() {
  [[ -x "$MOSQUITTO" ]] || die "$MOSQUITTO not found: run scripts/install-test-deps.sh"
  command -v mosquitto_pub >/dev/null 2>&1 ||
    die "mosquitto_pub not found: run scripts/install-test-deps.sh"
}

# Prints the pid recorded in "$1" if that process is alive and its command line contains "$2".
live_pid() {
  local pid_file="$1" marker="$2" pid
  [[ -f "$pid_file" ]] || return 1
  pid="$(cat "$pid_file")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker" || return 1
  echo "$pid"
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# True once the broker completes an MQTT handshake and accepts a publish.
broker_answers() {
  mosquitto_pub -h 127.0.0.1 -p "$1" -i "isthmus-probe-$$" -t isthmus/probe -m ready -q 0 \
    >/dev/null 2>&1
}

parse_args() {
  port="" dir="" parent_pid="" ephemeral=false
  while (($# > 0)); do
    case "$1" in
      --port) port="$2"; shift 2 ;;
      --dir) dir="$2"; shift 2 ;;
      --parent-pid) parent_pid="$2"; shift 2 ;;
      --ephemeral) ephemeral=true; shift ;;
      *) die "unknown argument '$1'" ;;
    esac
  done
  [[ "$port" =~ ^[0-9]+$ ]] || die "--port P is required"
  dir="${dir:-/tmp/isthmus-mosquitto-$port}"
}

stop_watchdog() {
  local pid
  if pid="$(live_pid "$dir/watchdog.pid" "kill -0")"; then
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/watchdog.pid"
}

# Starts a background loop that stops the broker once the parent process has exited.
start_watchdog() {
  local broker_pid="$1" cleanup=""
  $ephemeral && cleanup="rm -rf '$dir'"
  nohup setsid bash -c "
    while kill -0 $parent_pid 2>/dev/null && kill -0 $broker_pid 2>/dev/null; do sleep 1; done
    if kill -0 $broker_pid 2>/dev/null; then
      kill -TERM $broker_pid 2>/dev/null
      for _ in \$(seq 1 $STOP_TIMEOUT_SECS); do kill -0 $broker_pid 2>/dev/null || break; sleep 1; done
      kill -KILL $broker_pid 2>/dev/null
      $cleanup
    fi
  " </dev/null >/dev/null 2>&1 &
  echo $! >"$dir/watchdog.pid"
}

start() {
  parse_args "$@"
  require_tools
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  local config="$dir/mosquitto.conf" broker_pid

  if broker_pid="$(live_pid "$dir/mosquitto.pid" "$config")"; then
    log "broker already running on 127.0.0.1:$port from $dir"
  else
    port_in_use "$port" && die "port $port is already in use by another process"
    # `user` set to whoever runs this keeps root from dropping to the mosquitto account,
    # which could not write into $dir.
    cat >"$config" <<EOF
# Written by scripts/mosquitto.sh for tests.
listener $port 127.0.0.1
allow_anonymous true
persistence false
user $(id -un)
log_dest stdout
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
EOF
    # Detached (own session, no inherited stdio) so callers that capture our output finish.
    nohup setsid "$MOSQUITTO" -c "$config" </dev/null >"$dir/mosquitto.log" 2>&1 &
    broker_pid=$!
    echo "$broker_pid" >"$dir/mosquitto.pid"
  fi
  if [[ -n "$parent_pid" ]]; then
    stop_watchdog
    start_watchdog "$broker_pid"
  fi

  local deadline=$((SECONDS + START_TIMEOUT_SECS))
  until broker_answers "$port"; do
    if ! kill -0 "$broker_pid" 2>/dev/null || ((SECONDS >= deadline)); then
      echo "---- last lines of $dir/mosquitto.log ----" >&2
      tail -n 30 "$dir/mosquitto.log" >&2 || true
      die "mosquitto on port $port did not start (log: $dir/mosquitto.log)"
    fi
    sleep 0.1
  done
  log "broker ready on 127.0.0.1:$port (pid $broker_pid, dir $dir)"
}

stop() {
  parse_args "$@"
  [[ -d "$dir" ]] || { log "no broker directory $dir: nothing to stop"; return 0; }
  dir="$(cd "$dir" && pwd)"
  stop_watchdog
  local pid
  if ! pid="$(live_pid "$dir/mosquitto.pid" "$dir/mosquitto.conf")"; then
    rm -f "$dir/mosquitto.pid"
    log "no broker running from $dir"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT_SECS))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "mosquitto (pid $pid) still running after ${STOP_TIMEOUT_SECS}s: killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    sleep 0.1
  done
  rm -f "$dir/mosquitto.pid"
  log "broker on port $port stopped"
}

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit "${1:-2}"
}

command="${1:-}"
[[ -n "$command" ]] || usage
shift
case "$command" in
  start) start "$@" ;;
  stop) stop "$@" ;;
  -h | --help | help) usage 0 ;;
  *) echo "mosquitto.sh: unknown command '$command'" >&2; usage ;;
esac
