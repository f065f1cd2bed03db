#!/usr/bin/env bash
# Runs a real single-node Apache Kafka 4 broker (KRaft, broker+controller in one process) for
# tests, from jars that Maven fetches from Maven Central (see scripts/kafka/pom.xml).
#
# Usage:
#   kafka.sh fetch
#   kafka.sh start  --port P [--dir D] [--controller-port C] [--parent-pid PID] [--ephemeral]
#   kafka.sh stop   --port P [--dir D]
#   kafka.sh create-topic  --port P --topic T [--partitions N]
#   kafka.sh perf-producer --port P --topic T [--records N] [--record-size S]
#
#   --dir D              data and logs (default /tmp/isthmus-kafka-P). An already formatted
#                        D keeps its data, so stop + start is a real restart.
#   --controller-port C  KRaft controller listener (default: the one D used before, else P+1).
#   --parent-pid PID     a watchdog stops the broker once PID has exited.
#   --ephemeral          with --parent-pid: the watchdog also removes D.
#
# Environment: KAFKA_VERSION (default 4.4.0), ISTHMUS_CACHE (default /var/tmp/isthmus-cache),
# KAFKA_HEAP_OPTS (default -Xms256m -Xmx512m).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
CACHE_DIR="${ISTHMUS_CACHE:-/var/tmp/isthmus-cache}"
KAFKA_HOME="$CACHE_DIR/kafka-$KAFKA_VERSION"
LIBS_DIR="$KAFKA_HOME/libs"
START_TIMEOUT_SECS=60
STOP_TIMEOUT_SECS=20

die() {
  echo "kafka.sh: $*" >&2
  exit 1
}
log() { echo "kafka.sh: $*" >&2; }

require_tool() {
  command -v "$1" >/dev/null 2>&1 || die "$1 not found: run scripts/install-test-deps.sh"
}

# ---------------------------------------------------------------------------------------
# fetch: resolve the Kafka jars once into the cache (shared by concurrent callers).
# ---------------------------------------------------------------------------------------

fetch() {
  [[ -f "$LIBS_DIR/.complete" ]] && return 0
  require_tool java
  require_tool mvn
  mkdir -p "$CACHE_DIR"
  # Several test binaries may start brokers at once: only one of them downloads.
  exec 9>"$CACHE_DIR/kafka-$KAFKA_VERSION.lock"
  flock 9
  if [[ ! -f "$LIBS_DIR/.complete" ]]; then
    log "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $LIBS_DIR"
    local staging="$KAFKA_HOME/libs.partial"
    rm -rf "$staging"
    mkdir -p "$staging"
    if ! mvn -q -B -f "$SCRIPT_DIR/kafka/pom.xml" dependency:copy-dependencies \
      -Dkafka.version="$KAFKA_VERSION" -DincludeScope=runtime \
      -DoutputDirectory="$staging" >"$KAFKA_HOME/fetch.log" 2>&1; then
      tail -n 30 "$KAFKA_HOME/fetch.log" >&2
      die "maven could not fetch Kafka $KAFKA_VERSION (full log: $KAFKA_HOME/fetch.log)"
    fi
    ls "$staging"/kafka_2.13-*.jar >/dev/null 2>&1 || die "fetch produced no kafka_2.13 jar in $staging"
    rm -rf "$LIBS_DIR"
    mv "$staging" "$LIBS_DIR"
    touch "$LIBS_DIR/.complete"
  fi
  flock -u 9
  exec 9>&-
}

# Writes the log4j2 configuration for the command-line tools (warnings to stderr only).
tools_log_config() {
  local config="$KAFKA_HOME/tools-log4j2.xml"
  if [[ ! -f "$config" ]]; then
    cat >"$config.tmp.$$" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="warn">
  <Appenders>
    <Console name="stderr" target="SYSTEM_ERR">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="warn"><AppenderRef ref="stderr"/></Root>
  </Loggers>
</Configuration>
EOF
    mv "$config.tmp.$$" "$config"
  fi
  echo "$config"
}

# Runs a Kafka tool class with a small, quick-starting JVM.
run_tool() {
  local main_class="$1"
  shift
  fetch
  java -Xmx256m -XX:+UseSerialGC -Dlog4j2.configurationFile="$(tools_log_config)" \
    -cp "$LIBS_DIR/*" "$main_class" "$@"
}

# ---------------------------------------------------------------------------------------
# start / stop
# ---------------------------------------------------------------------------------------

# Prints the pid recorded in "$1" if that process is still alive and its command line
# contains "$2" (guards against a recycled pid).
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

# True once the broker answers a metadata request and lists itself as a broker.
broker_answers() {
  kcat -b "127.0.0.1:$1" -L -m 3 2>/dev/null | grep -q '^ *1 brokers:'
}

write_server_properties() {
  local port="$1" controller_port="$2" dir="$3"
  cat >"$dir/server.properties" <<EOF
# Written by scripts/kafka.sh: single-node KRaft broker+controller for tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=true
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.hours=24
EOF
}

write_broker_log_config() {
  local dir="$1"
  cat >"$dir/log4j2.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="warn">
  <Appenders>
    <File name="server" fileName="$dir/logs/server.log">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Root level="info"><AppenderRef ref="server"/></Root>
    <Logger name="org.apache.kafka.clients" level="warn"/>
    <Logger name="kafka.request.logger" level="warn"/>
  </Loggers>
</Configuration>
EOF
}

# A Kafka cluster id: 16 random bytes, URL-safe base64 without padding.
new_cluster_id() {
  head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n'
}

print_log_tail() {
  local dir="$1"
  for file in "$dir/logs/server.log" "$dir/logs/stdout.log"; do
    if [[ -s "$file" ]]; then
      echo "---- last lines of $file ----" >&2
      tail -n 40 "$file" >&2
    fi
  done
}

# Starts a background loop that stops the broker once the parent process has exited.
start_watchdog() {
  local parent_pid="$1" broker_pid="$2" dir="$3" ephemeral="$4"
  local cleanup=""
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
  local port="" dir="" controller_port="" parent_pid="" ephemeral=false
  while (($# > 0)); do
    case "$1" in
      --port) port="$2"; shift 2 ;;
      --dir) dir="$2"; shift 2 ;;
      --controller-port) controller_port="$2"; shift 2 ;;
      --parent-pid) parent_pid="$2"; shift 2 ;;
      --ephemeral) ephemeral=true; shift ;;
      *) die "start: unknown argument '$1'" ;;
    esac
  done
  [[ "$port" =~ ^[0-9]+$ ]] || die "start: --port P is required"
  dir="${dir:-/tmp/isthmus-kafka-$port}"
  require_tool java
  require_tool kcat
  fetch

  mkdir -p "$dir/logs" "$dir/data"
  dir="$(cd "$dir" && pwd)"

  if live_pid "$dir/kafka.pid" "$dir/server.properties" >/dev/null; then
    if broker_answers "$port"; then
      log "broker already running on 127.0.0.1:$port from $dir"
      return 0
    fi
  elif port_in_use "$port"; then
    die "port $port is already in use by another process"
  fi

  if [[ -z "$controller_port" && -f "$dir/server.properties" ]]; then
    controller_port="$(sed -n 's/^controller.quorum.voters=1@127.0.0.1://p' "$dir/server.properties")"
  fi
  controller_port="${controller_port:-$((port + 1))}"
  if ! live_pid "$dir/kafka.pid" "$dir/server.properties" >/dev/null; then
    port_in_use "$controller_port" && die "controller port $controller_port is already in use"
    write_server_properties "$port" "$controller_port" "$dir"
    write_broker_log_config "$dir"
    if [[ ! -f "$dir/data/meta.properties" ]]; then
      run_tool kafka.tools.StorageTool format --cluster-id "$(new_cluster_id)" \
        --config "$dir/server.properties" >"$dir/logs/format.log" 2>&1 ||
        { cat "$dir/logs/format.log" >&2; die "could not format storage in $dir/data"; }
    fi
    # Detached (own session, no inherited stdio) so callers that capture our output finish.
    # shellcheck disable=SC2086
    nohup setsid java ${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m} -XX:+UseG1GC \
      -Dlog4j2.configurationFile="$dir/log4j2.xml" -Dkafka.logs.dir="$dir/logs" \
      -cp "$LIBS_DIR/*" kafka.Kafka "$dir/server.properties" \
      </dev/null >"$dir/logs/stdout.log" 2>&1 &
    echo $! >"$dir/kafka.pid"
  fi
  local broker_pid
  broker_pid="$(cat "$dir/kafka.pid")"
  if [[ -n "$parent_pid" ]]; then
    stop_watchdog "$dir"
    start_watchdog "$parent_pid" "$broker_pid" "$dir" "$ephemeral"
  fi

  local deadline=$((SECONDS + START_TIMEOUT_SECS))
  until broker_answers "$port"; do
    if ! kill -0 "$broker_pid" 2>/dev/null; then
      print_log_tail "$dir"
      die "broker on port $port exited during startup (logs in $dir/logs)"
    fi
    if ((SECONDS >= deadline)); then
      print_log_tail "$dir"
      die "broker on port $port did not answer within ${START_TIMEOUT_SECS}s (logs in $dir/logs)"
    fi
    sleep 0.3
  done
  log "broker ready on 127.0.0.1:$port (pid $broker_pid, dir $dir)"
}

stop_watchdog() {
  local dir="$1" pid
  if pid="$(live_pid "$dir/watchdog.pid" "kill -0")"; then
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/watchdog.pid"
}

stop() {
  local port="" dir=""
  while (($# > 0)); do
    case "$1" in
      --port) port="$2"; shift 2 ;;
      --dir) dir="$2"; shift 2 ;;
      *) die "stop: unknown argument '$1'" ;;
    esac
  done
  [[ "$port" =~ ^[0-9]+$ ]] || die "stop: --port P is required"
  dir="${dir:-/tmp/isthmus-kafka-$port}"
  [[ -d "$dir" ]] || { log "no broker directory $dir: nothing to stop"; return 0; }
  dir="$(cd "$dir" && pwd)"
  stop_watchdog "$dir"
  local pid
  if ! pid="$(live_pid "$dir/kafka.pid" "$dir/server.properties")"; then
    rm -f "$dir/kafka.pid"
    log "no broker running from $dir"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT_SECS))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "broker (pid $pid) still running after ${STOP_TIMEOUT_SECS}s: killing it"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  # Reap check: wait until the process is really gone so the ports are free again.
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  rm -f "$dir/kafka.pid"
  log "broker on port $port stopped"
}

# ---------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------

create_topic() {
  local port="" topic="" partitions=1
  while (($# > 0)); do
    case "$1" in
      --port) port="$2"; shift 2 ;;
      --topic) topic="$2"; shift 2 ;;
      --partitions) partitions="$2"; shift 2 ;;
      *) die "create-topic: unknown argument '$1'" ;;
    esac
  done
  [[ "$port" =~ ^[0-9]+$ ]] || die "create-topic: --port P is required"
  [[ -n "$topic" ]] || die "create-topic: --topic T is required"
  require_tool java
  run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$port" \
    --create --if-not-exists --topic "$topic" --partitions "$partitions" \
    --replication-factor 1
}

perf_producer() {
  local port="" topic="" records=100000 record_size=100
  while (($# > 0)); do
    case "$1" in
      --port) port="$2"; shift 2 ;;
      --topic) topic="$2"; shift 2 ;;
      --records) records="$2"; shift 2 ;;
      --record-size) record_size="$2"; shift 2 ;;
      *) die "perf-producer: unknown argument '$1'" ;;
    esac
  done
  [[ "$port" =~ ^[0-9]+$ ]] || die "perf-producer: --port P is required"
  [[ -n "$topic" ]] || die "perf-producer: --topic T is required"
  require_tool java
  local output
  output="$(mktemp)"
  # shellcheck disable=SC2064
  trap "rm -f '$output'" RETURN
  # Progress lines go to stderr; the final summary line goes to stdout.
  if ! run_tool org.apache.kafka.tools.ProducerPerformance --topic "$topic" \
    --num-records "$records" --record-size "$record_size" --throughput -1 \
    --bootstrap-server "127.0.0.1:$port" --command-property acks=all >"$output" 2>&1; then
    cat "$output" >&2
    die "ProducerPerformance failed"
  fi
  # The summary is the one line with latency percentiles; progress lines lack them.
  grep -v '50th' "$output" >&2 || true
  grep '50th' "$output" || die "ProducerPerformance printed no summary line"
}

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit "${1:-2}"
}

command="${1:-}"
[[ -n "$command" ]] || usage
shift
case "$command" in
  fetch) fetch ;;
  start) start "$@" ;;
  stop) stop "$@" ;;
  create-topic) create_topic "$@" ;;
  perf-producer) perf_producer "$@" ;;
  -h | --help | help) usage 0 ;;
  *) echo "kafka.sh: unknown command '$command'" >&2; usage ;;
esac
