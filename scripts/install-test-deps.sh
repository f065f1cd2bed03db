#!/usr/bin/env bash
# Installs what Isthmus's broker tests need on a Debian machine: Mosquitto (MQTT broker and
# clients), kcat, the native build tools for rdkafka, Java and Maven, and the Apache Kafka
# jars (fetched from Maven Central by scripts/kafka.sh).
#
# Idempotent: when everything is already present it only checks and returns within a second
# or two. Runs as root (or through sudo when that is available).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Debian packages the tests and the rdkafka build need. Java is handled separately below.
PACKAGES=(
  mosquitto
  mosquitto-clients
  kcat
  cmake
  pkg-config
  libcurl4-openssl-dev
  libssl-dev
  libsasl2-dev
  zlib1g-dev
  maven
)

log() { echo "install-test-deps: $*" >&2; }

is_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# True when `java` is a runtime of version 17 or newer (what Kafka 4 needs).
has_java_17() {
  command -v java >/dev/null 2>&1 || return 1
  local version major
  version="$(java -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -n 1)"
  major="${version%%.*}"
  [[ "$major" =~ ^[0-9]+$ ]] && ((major >= 17))
}

as_root() {
  if [[ "$(id -u)" -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    log "must run as root (or with sudo available) to install: $*"
    exit 1
  fi
}

# Stops and disables the system-wide Mosquitto daemon that the Debian package may start. The
# tests run their own Mosquitto processes on non-default ports; the system one is not wanted.
disable_system_mosquitto() {
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    as_root systemctl disable --now mosquitto.service >/dev/null 2>&1 || true
  elif [[ -x /etc/init.d/mosquitto ]]; then
    as_root /etc/init.d/mosquitto stop >/dev/null 2>&1 || true
    as_root update-rc.d mosquitto disable >/dev/null 2>&1 || true
  fi
}

missing=()
for package in "${PACKAGES[@]}"; do
  is_installed "$package" || missing+=("$package")
done

need_java=false
has_java_17 || need_java=true

if ((${#missing[@]} > 0)) || $need_java; then
  export DEBIAN_FRONTEND=noninteractive
  log "apt-get update"
  as_root apt-get update -qq
  if $need_java; then
    # Debian 12 ships OpenJDK 17; newer releases ship 21 instead. Either runs Kafka 4.
    java_package=""
    for candidate in openjdk-17-jre-headless openjdk-21-jre-headless; do
      if apt-cache show "$candidate" >/dev/null 2>&1; then
        java_package="$candidate"
        break
      fi
    done
    if [[ -z "$java_package" ]]; then
      log "no OpenJDK 17 or 21 package found in the apt sources"
      exit 1
    fi
    missing+=("$java_package")
  fi
  log "installing: ${missing[*]}"
  # Keep package scripts from starting the system Mosquitto daemon during the install
  # (policy-rc.d exit code 101 means "action not allowed"), unless a policy already exists.
  policy_file=/usr/sbin/policy-rc.d
  added_policy=false
  if [[ ! -e "$policy_file" ]]; then
    as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy_file && chmod 755 $policy_file"
    added_policy=true
  fi
  install_status=0
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" || install_status=$?
  if $added_policy; then
    as_root rm -f "$policy_file"
  fi
  if ((install_status != 0)); then
    log "apt-get install failed (exit $install_status)"
    exit "$install_status"
  fi
  disable_system_mosquitto
fi

"$SCRIPT_DIR/kafka.sh" fetch
log "all test dependencies present"
