//! Configuration through the real binary: `$FLOW_HOME/flow.toml` under the environment,
//! `flow config list` / `get-value`, warnings for unknown settings, a malformed file stopping
//! every command (daemons too), and JSON daemon logs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A scratch FLOW_HOME holding `flow_toml`.
fn home(name: &str, flow_toml: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flow-config-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("flow.toml"), flow_toml).unwrap();
    dir
}

/// `flow` with only FLOW_HOME (and `env`) set: nothing from the test's own environment.
fn flow(home: &PathBuf, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flow"));
    cmd.env_clear().env("FLOW_HOME", home).current_dir(home);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn run(mut cmd: Command, args: &[&str]) -> (Output, String, String) {
    let out = cmd.args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

/// The `flow config list` row of `setting`, as its cells.
fn row(list: &str, setting: &str) -> Vec<String> {
    let line = list
        .lines()
        .find(|l| l.split(" | ").next().map(str::trim) == Some(setting))
        .unwrap_or_else(|| panic!("no row for {setting} in:\n{list}"));
    line.split(" | ").map(|c| c.trim().to_owned()).collect()
}

const FLOW_TOML: &str = r#"# flow's settings
[core]
parallelism = 7
dags_are_paused_at_creation = false

[scheduler]
task_instance_heartbeat_timeout = 90
zombie_treshold = 5

[database]
url = "postgres://flow:pg-secret@db:5432/flow"

[smtp]
smtp_password = "hunter2"
"#;

#[test]
fn flow_toml_under_the_environment_with_sources_and_masked_secrets() {
    let home = home("list", FLOW_TOML);
    let (out, list, stderr) = run(flow(&home, &[]), &["config", "list"]);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        row(&list, "core.parallelism"),
        ["core.parallelism", "7", "flow.toml:3"]
    );
    assert_eq!(
        row(&list, "core.dags_are_paused_at_creation")[1..],
        ["false", "flow.toml:4"]
    );
    assert_eq!(
        row(&list, "scheduler.zombie_threshold")[1..],
        [
            "90",
            "flow.toml:7 as [scheduler] task_instance_heartbeat_timeout"
        ]
    );
    assert_eq!(row(&list, "core.max_map_length")[1..], ["1024", "default"]);
    assert_eq!(
        row(&list, "database.url")[1..],
        ["postgres://flow:***@db:5432/flow", "flow.toml:11"]
    );
    assert_eq!(
        row(&list, "smtp.smtp_password")[1..],
        ["***", "flow.toml:14"]
    );
    assert!(
        !list.contains("hunter2") && !list.contains("pg-secret"),
        "{list}"
    );
    assert!(
        stderr.contains(
            "flow.toml:8: unknown setting [scheduler] zombie_treshold; did you mean [scheduler] \
             zombie_threshold?"
        ),
        "{stderr}"
    );

    // The environment wins, under flow's name or Airflow's.
    let env = [
        ("FLOW__CORE__PARALLELISM", "9"),
        ("FLOW__SCHEDULER__ZOMBIE_THRESHOLD", "120"),
        ("FLOW__CORE__PARALELISM", "1"),
    ];
    let (out, list, stderr) = run(flow(&home, &env), &["config", "list"]);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        row(&list, "core.parallelism")[1..],
        ["9", "env FLOW__CORE__PARALLELISM"]
    );
    assert_eq!(
        row(&list, "scheduler.zombie_threshold")[1..],
        ["120", "env FLOW__SCHEDULER__ZOMBIE_THRESHOLD"]
    );
    assert!(
        stderr.contains("FLOW__CORE__PARALELISM; did you mean FLOW__CORE__PARALLELISM?"),
        "{stderr}"
    );

    // get-value: the real value, by flow's name or Airflow's; an unknown one fails.
    let get = |args: &[&str]| run(flow(&home, &[]), &[&["config", "get-value"], args].concat());
    let (out, value, _) = get(&["core", "parallelism"]);
    assert!(out.status.success());
    assert_eq!(value, "7\n");
    assert_eq!(get(&["smtp", "smtp_password"]).1, "hunter2\n");
    assert_eq!(
        get(&["scheduler", "task_instance_heartbeat_timeout"]).1,
        "90\n"
    );
    assert_eq!(get(&["SCHEDULER", "ZOMBIE_THRESHOLD"]).1, "90\n");
    let (out, value, stderr) = get(&["webserver", "expose_confg"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(value, "");
    assert!(
        stderr.contains(
            "[webserver] expose_confg is not a setting flow knows; did you mean \
                         [webserver] expose_config?"
        ),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn a_malformed_flow_toml_stops_every_command_naming_its_line() {
    let home = home("malformed", "[core]\nparallelism = 7\nbroken =\n");
    let (out, _, stderr) = run(flow(&home, &[]), &["config", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("flow.toml:3: "), "{stderr}");

    // A daemon does not start: it exits at once with the same error (its stderr ends when
    // it exits).
    let mut child = flow(&home, &[])
        .args(["webserver", "-p", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        let _ = tx.send(text);
    });
    let Ok(stderr) = rx.recv_timeout(Duration::from_secs(30)) else {
        let _ = child.kill();
        panic!("flow webserver kept running on a malformed flow.toml");
    };
    assert_eq!(child.wait().unwrap().code(), Some(1));
    assert!(stderr.contains("flow.toml:3: "), "{stderr}");

    // A value of the wrong type for a known setting names its line too.
    std::fs::write(home.join("flow.toml"), "[core]\n\nparallelism = [[1]]\n").unwrap();
    let (out, _, stderr) = run(flow(&home, &[]), &["config", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("flow.toml:3: [core] parallelism must be a string, a number or a boolean"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn a_daemon_logs_one_json_object_per_line() {
    let home = home(
        "json",
        "[logging]\nformat = \"json\"\n\n[core]\nparalelism = 3\n",
    );
    let mut child = flow(&home, &[])
        .args(["webserver", "-p", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Every line until the web server says where it listens.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut events = Vec::new();
    let mut listening = false;
    while !listening {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            panic!("no `web UI at` event within 60 s; lines so far: {events:#?}");
        };
        let event: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        for field in ["timestamp", "level", "target"] {
            assert!(event[field].is_string(), "no {field}: {line}");
        }
        assert!(event["fields"]["message"].is_string(), "{line}");
        listening = event["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("web UI at http://localhost:"));
        events.push(event);
    }
    let _ = child.kill();
    let _ = child.wait();
    let warning = events
        .iter()
        .find(|e| e["level"] == "WARN")
        .unwrap_or_else(|| panic!("no warning about [core] paralelism: {events:#?}"));
    assert!(
        warning["fields"]["message"].as_str().unwrap().ends_with(
            "flow.toml:5: unknown setting [core] paralelism; did you mean [core] parallelism?"
        ),
        "{warning}"
    );

    // Any other format is an error naming the setting.
    let (out, _, stderr) = run(
        flow(&home, &[("FLOW__LOGGING__FORMAT", "xml")]),
        &["webserver", "-p", "0"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("FLOW__LOGGING__FORMAT must be text or json, got `xml`"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&home);
}
