//! Runs the third-party client conformance scripts (conformance/) against a
//! real warren: pika (Python) and amqplib (Node.js) over AMQP 0-9-1, rstream
//! (Python) over the RabbitMQ Stream protocol. `scripts/test` installs the
//! clients before running the suite.

mod common;

use std::process::Command;

fn run_script(program: &str, script: &str) {
    let w = common::Warren::start();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/conformance");
    let out = Command::new(program)
        .arg(script)
        .current_dir(dir)
        .env(
            "AMQP_URL",
            format!("amqp://guest:guest@127.0.0.1:{}/%2F", w.port),
        )
        .env("STREAM_HOST", "127.0.0.1")
        .env("STREAM_PORT", w.stream_port.to_string())
        // Every check must run: warren implements each command they use.
        .env("STREAM_REQUIRE_ALL", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed against warren ({}).\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n\
         (install the clients with scripts/test, or pip install -r conformance/requirements.txt \
         and npm install in conformance/)",
        out.status
    );
    assert!(
        stdout.contains(" passed, 0 failed"),
        "{script} printed no clean summary:\n{stdout}"
    );
}

#[test]
fn pika_conformance_script_passes() {
    run_script("python3", "pika_conformance.py");
}

#[test]
fn amqplib_conformance_script_passes() {
    run_script("node", "amqplib_conformance.js");
}

#[test]
fn rstream_conformance_script_passes() {
    run_script("python3", "rstream_conformance.py");
}
