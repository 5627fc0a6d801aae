//! Shared by the tests that drive a real `flow standalone` from outside (browser, python
//! client): where the repository is, and a standalone that says which port it serves on.
#![allow(clippy::unwrap_used, dead_code)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A running `flow standalone -p 0`; killed when dropped.
pub struct Standalone {
    child: Child,
    /// The web UI's port, as the standalone announced it.
    pub port: String,
}

impl Standalone {
    /// Starts `cmd` (a `flow` command with its environment set) as `standalone -p 0`, echoes
    /// its stderr, and waits until it says where it listens.
    pub fn start(mut cmd: Command) -> Standalone {
        let mut child = cmd
            .args(["standalone", "-p", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Keep draining stderr after the port line, so the child never blocks on it.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[flow] {line}");
                if let Some(port) = line.strip_prefix("flow: web UI at http://localhost:") {
                    let _ = tx.send(port.trim().to_owned());
                }
            }
        });
        let mut standalone = Standalone {
            child,
            port: String::new(),
        };
        standalone.port = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("flow standalone never said where the web UI is");
        standalone
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Kafka-protocol broker tests use: `KAFKA_BOOTSTRAP` (`.ci/run` starts one), else one
/// started here from `target/noida` (`pip install --no-deps --target target/noida
/// noida-db==0.2.3`) that dies with the test process. With `CI=true` a missing broker fails.
pub fn kafka_bootstrap() -> Option<String> {
    static BROKER: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BROKER
        .get_or_init(|| {
            if let Ok(b) = std::env::var("KAFKA_BOOTSTRAP")
                && !b.is_empty()
            {
                return Some(b);
            }
            let bin = repo_root().join("target/noida/noida_db/noida-db");
            if !bin.exists() {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "CI=true but neither KAFKA_BOOTSTRAP nor {} is there",
                    bin.display()
                );
                eprintln!(
                    "SKIPPED: kafka tests need a broker: set KAFKA_BOOTSTRAP, or `pip install --no-deps --target target/noida noida-db==0.2.3`"
                );
                return None;
            }
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .unwrap();
            let data = std::env::temp_dir().join(format!("flow-test-kafka-{}", std::process::id()));
            let mut cmd = Command::new("setpriv");
            cmd.args(["--pdeathsig", "KILL", "--"]).arg(&bin);
            cmd.args(["start", "--only", "kafka", "--host", "127.0.0.1", "--kafka-port"])
                .arg(port.to_string())
                .arg("--data-dir")
                .arg(&data)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let child = cmd.spawn().unwrap();
            std::mem::forget(child); // killed with this process (pdeathsig)
            let addr = format!("127.0.0.1:{port}");
            for _ in 0..100 {
                if std::net::TcpStream::connect(&addr).is_ok() {
                    return Some(addr);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            panic!("the test broker did not start on {addr}");
        })
        .clone()
}

/// A python with `confluent_kafka` (the independent client of the Kafka tests): the
/// virtualenv `.ci/run` makes, if it has the package.
pub fn python_with_confluent_kafka() -> Option<PathBuf> {
    python_with("confluent_kafka", "confluent-kafka")
}

/// A python that imports `module`: `FLOW_TEST_PYTHON` if set, else the virtualenv `.ci/run`
/// makes. Under `CI=true` a missing module fails the test; elsewhere the test is skipped with
/// a line saying what to install.
pub fn python_with(module: &str, package: &str) -> Option<PathBuf> {
    let python = std::env::var_os("FLOW_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/airflow-client-venv/bin/python"));
    let ok = python.exists()
        && Command::new(&python)
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but {} cannot import {module}",
        python.display()
    );
    eprintln!(
        "SKIPPED: no {module} in {} (pip install {package}, or set FLOW_TEST_PYTHON)",
        python.display()
    );
    None
}
