//! Real Kafka and Mosquitto brokers for integration tests.
//!
//! The brokers run as separate processes, started through `scripts/kafka.sh` and
//! `scripts/mosquitto.sh`. Every broker gets a watchdog that stops it (and removes its
//! directory) once this test process has exited, so a failing or aborted test never leaves
//! brokers behind. The tools come from `scripts/install-test-deps.sh`.
#![allow(dead_code)] // Each test binary uses only part of these helpers.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// What to tell a developer whose machine lacks a broker tool.
const INSTALL_HINT: &str = "run `sudo scripts/install-test-deps.sh` from the repository root";

/// Returns a TCP port on 127.0.0.1 that was free a moment ago (the OS picks it).
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// Returns `N` distinct ports on 127.0.0.1 that were free a moment ago.
fn free_ports<const N: usize>() -> [u16; N] {
    // Hold all listeners until every port is known, so the OS hands out distinct ports.
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port"))
        .collect();
    std::array::from_fn(|i| {
        listeners[i]
            .local_addr()
            .expect("local address of a bound listener")
            .port()
    })
}

/// Path of a script under `scripts/` in this repository.
fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Panics with an install hint unless every tool is on `PATH` (or is an existing path).
fn require_tools(tools: &[&str]) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for tool in tools {
        let found = if tool.contains('/') {
            Path::new(tool).is_file()
        } else {
            std::env::split_paths(&path).any(|dir| dir.join(tool).is_file())
        };
        assert!(found, "`{tool}` not found: {INSTALL_HINT}");
    }
}

/// Runs a broker script and returns its standard output; panics with its output on failure.
fn run_script(name: &str, args: &[String]) -> String {
    let path = script(name);
    let output = Command::new(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("could not run {}: {e}", path.display()));
    if !output.status.success() {
        panic!(
            "{} {} failed ({}):\n{}{}",
            path.display(),
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A fresh, empty directory under the system temp dir for one broker of this process.
fn fresh_dir(kind: &str, port: u16) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("isthmus-{kind}-{}-{port}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .unwrap_or_else(|e| panic!("could not clear {}: {e}", dir.display()));
    }
    dir
}

/// A single-node Apache Kafka 4 broker (KRaft mode) listening on 127.0.0.1.
///
/// Dropping it stops the broker and deletes its data directory.
pub struct KafkaBroker {
    /// Port of the client (PLAINTEXT) listener.
    pub port: u16,
    /// Directory holding the broker's configuration, data and logs (`logs/server.log`).
    pub dir: PathBuf,
    /// Port of the KRaft controller listener.
    controller_port: u16,
}

impl KafkaBroker {
    /// Starts a broker on `port` with a fresh data directory and waits until it answers.
    pub fn start(port: u16) -> KafkaBroker {
        require_tools(&["java", "mvn", "kcat"]);
        let controller_port = loop {
            let candidate = free_port();
            if candidate != port {
                break candidate;
            }
        };
        let broker = KafkaBroker {
            port,
            dir: fresh_dir("kafka", port),
            controller_port,
        };
        broker.launch();
        broker
    }

    /// The broker shared by all tests of this test binary, started on first use on a free port.
    ///
    /// It is never dropped: its watchdog stops it shortly after the test process exits.
    pub fn shared() -> &'static KafkaBroker {
        static SHARED: OnceLock<KafkaBroker> = OnceLock::new();
        SHARED.get_or_init(|| KafkaBroker::start(free_port()))
    }

    /// The `bootstrap.servers` address of this broker, `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the broker gracefully (SIGTERM, then SIGKILL after 20 s); keeps its data.
    pub fn stop(&self) {
        run_script(
            "kafka.sh",
            &[
                "stop".into(),
                "--port".into(),
                self.port.to_string(),
                "--dir".into(),
                self.dir.display().to_string(),
            ],
        );
    }

    /// Stops the broker and starts it again on the same ports and data directory.
    pub fn restart(&self) {
        self.stop();
        self.launch();
    }

    /// Creates `topic` with `partitions` partitions (replication factor 1) if it is missing.
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        run_script(
            "kafka.sh",
            &[
                "create-topic".into(),
                "--port".into(),
                self.port.to_string(),
                "--topic".into(),
                topic.into(),
                "--partitions".into(),
                partitions.to_string(),
            ],
        );
    }

    /// Starts the broker process on this broker's dir and ports and waits until it answers.
    fn launch(&self) {
        run_script(
            "kafka.sh",
            &[
                "start".into(),
                "--port".into(),
                self.port.to_string(),
                "--controller-port".into(),
                self.controller_port.to_string(),
                "--dir".into(),
                self.dir.display().to_string(),
                "--parent-pid".into(),
                std::process::id().to_string(),
                "--ephemeral".into(),
            ],
        );
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        // Never panic in drop (it may run while a failed test unwinds).
        let _ = Command::new(script("kafka.sh"))
            .args(["stop", "--port", &self.port.to_string(), "--dir"])
            .arg(&self.dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Mosquitto MQTT broker listening on 127.0.0.1, anonymous access, no persistence.
///
/// Dropping it stops the broker and deletes its directory.
pub struct Mosquitto {
    /// Port of the MQTT listener.
    pub port: u16,
    /// Directory holding the broker's configuration and log (`mosquitto.log`).
    pub dir: PathBuf,
}

impl Mosquitto {
    /// Starts a broker on `port` and waits until it accepts MQTT connections.
    pub fn start(port: u16) -> Mosquitto {
        require_tools(&["/usr/sbin/mosquitto", "mosquitto_pub", "mosquitto_sub"]);
        let broker = Mosquitto {
            port,
            dir: fresh_dir("mosquitto", port),
        };
        broker.launch();
        broker
    }

    /// The broker shared by all tests of this test binary, started on first use on a free port.
    ///
    /// It is never dropped: its watchdog stops it shortly after the test process exits.
    pub fn shared() -> &'static Mosquitto {
        static SHARED: OnceLock<Mosquitto> = OnceLock::new();
        SHARED.get_or_init(|| Mosquitto::start(free_port()))
    }

    /// The broker's address, `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the broker (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(&self) {
        run_script("mosquitto.sh", &self.args("stop"));
    }

    /// Stops the broker and starts it again on the same port.
    pub fn restart(&self) {
        self.stop();
        self.launch();
    }

    fn launch(&self) {
        let mut args = self.args("start");
        args.extend([
            "--parent-pid".into(),
            std::process::id().to_string(),
            "--ephemeral".into(),
        ]);
        run_script("mosquitto.sh", &args);
    }

    fn args(&self, command: &str) -> Vec<String> {
        vec![
            command.into(),
            "--port".into(),
            self.port.to_string(),
            "--dir".into(),
            self.dir.display().to_string(),
        ]
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = Command::new(script("mosquitto.sh"))
            .args(self.args("stop"))
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
