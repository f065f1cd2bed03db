//! Shared helpers for integration tests; include with `mod support;`.

#![allow(dead_code)] // Each test binary uses only part of these helpers.

pub mod brokers;

/// The `isthmus` binary built for these tests, logging at info level.
pub fn isthmus() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_isthmus"));
    c.env("RUST_LOG", "info");
    c
}

/// A temp dir for one test, named after it.
pub fn workdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("isthmus-{name}-"))
        .tempdir()
        .expect("temp dir")
}
