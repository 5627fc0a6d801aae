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
