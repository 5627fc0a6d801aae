//! `docker-compose.yaml`, proven without a Docker engine: it validates against the Compose
//! specification's JSON schema (as packaged by docker-compose 1.29.2 on PyPI), and a topology
//! test starts each service's command, with that service's environment (interpolated as
//! Compose would), as local processes: service host names map to 127.0.0.1, bind mounts to
//! local folders, every process gets a FLOW_HOME of its own as a container would. Then it runs
//! the health checks the file declares and a DAG end to end through that cluster.
//!
//! The schema and the validator come from `.ci/run` (`target/compose-schema`, the
//! `target/airflow-client-venv` virtualenv); outside CI a missing one skips that half loudly.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flow_dag::yaml::{Limits, Node, Value};
use flow_store::testing::TestDb;

fn compose_node() -> Node {
    let text = std::fs::read_to_string(common::repo_root().join("docker-compose.yaml")).unwrap();
    flow_dag::yaml::parse(&text, 0, Limits::default()).unwrap()
}

#[test]
fn compose_file_follows_the_compose_specification() {
    let root = common::repo_root();
    let python = root.join("target/airflow-client-venv/bin/python");
    let schema = root.join("target/compose-schema/compose_spec.json");
    if !python.exists() || !schema.exists() {
        assert!(
            std::env::var("CI").is_err(),
            "CI must provide {} and {}",
            python.display(),
            schema.display()
        );
        eprintln!("SKIPPED: the Compose schema check needs .ci/run's virtualenv and schema");
        return;
    }
    let script = r#"
import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
doc = yaml.safe_load(open(sys.argv[2]))
errors = list(jsonschema.Draft201909Validator(schema).iter_errors(doc))
for e in errors:
    print("/".join(str(p) for p in e.path), e.message)
# The validator must be able to fail: a wrong file is refused.
doc["services"]["worker"]["not_a_compose_key"] = 1
assert list(jsonschema.Draft201909Validator(schema).iter_errors(doc)), "the schema accepts anything"
sys.exit(1 if errors else 0)
"#;
    let out = Command::new(python)
        .args(["-c", script])
        .arg(&schema)
        .arg(root.join("docker-compose.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker-compose.yaml does not follow the Compose specification:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Compose's variable interpolation: `${NAME}`, `${NAME:-default}` (nested), `${NAME:?error}`,
/// `$$` for a literal `$`.
fn interpolate(text: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
            continue;
        }
        let Some(body) = rest.strip_prefix("${") else {
            out.push('$');
            rest = &rest[1..];
            continue;
        };
        // The matching brace, counting nested `${`.
        let (mut depth, mut end) = (1, 0);
        for (j, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = j;
                        break;
                    }
                }
                _ => {}
            }
        }
        let inner = &body[..end];
        rest = &body[end + 1..];
        let value = if let Some((name, default)) = inner.split_once(":-") {
            vars.get(name)
                .filter(|v| !v.is_empty())
                .cloned()
                .unwrap_or_else(|| interpolate(default, vars))
        } else if let Some((name, message)) = inner.split_once(":?") {
            vars.get(name)
                .filter(|v| !v.is_empty())
                .cloned()
                .unwrap_or_else(|| panic!("compose refuses to start: {message}"))
        } else {
            vars.get(inner).cloned().unwrap_or_default()
        };
        out.push_str(&value);
    }
    out.push_str(rest);
    out
}

fn text(node: &Node) -> String {
    node.as_str().map(str::to_owned).unwrap_or_default()
}

fn strings(node: Option<&Node>) -> Vec<String> {
    match node.map(|n| &n.value) {
        Some(Value::Seq(items)) => items.iter().map(text).collect(),
        Some(Value::Scalar(s)) => s.text.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// One service as it would run: its argv, environment, bind mounts, replicas, health check.
#[derive(Debug)]
struct Service {
    name: String,
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    mounts: Vec<(PathBuf, String)>,
    replicas: usize,
    healthcheck: Vec<String>,
    depends_on: Vec<String>,
}

fn services(vars: &HashMap<String, String>) -> Vec<Service> {
    let root = compose_node();
    let services = root.get("services").and_then(Node::as_map).unwrap();
    let mut out = Vec::new();
    for (name, svc) in services {
        let name = text(name);
        if svc.get("profiles").is_some() {
            continue; // optional (kafka): not started by `docker compose up`
        }
        let mut argv = strings(svc.get("entrypoint"));
        if argv.is_empty() && svc.get("build").is_some() {
            argv.push("flow".to_owned()); // the image's ENTRYPOINT
        }
        argv.extend(strings(svc.get("command")));
        let argv = argv.iter().map(|a| interpolate(a, vars)).collect();
        let env = svc
            .get("environment")
            .and_then(Node::as_map)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (text(k), interpolate(&text(v), vars)))
                    .collect()
            })
            .unwrap_or_default();
        let mounts = strings(svc.get("volumes"))
            .iter()
            .filter_map(|v| {
                let mut parts = v.split(':');
                let (host, container) = (parts.next()?, parts.next()?);
                host.starts_with('.')
                    .then(|| (common::repo_root().join(host), container.to_owned()))
            })
            .collect();
        let replicas = svc
            .get("deploy")
            .and_then(|d| d.get("replicas"))
            .and_then(Node::as_str)
            .and_then(|r| r.parse().ok())
            .unwrap_or(1);
        let healthcheck = strings(svc.get("healthcheck").and_then(|h| h.get("test")));
        let depends_on = svc
            .get("depends_on")
            .and_then(Node::as_map)
            .map(|m| m.iter().map(|(k, _)| text(k)).collect())
            .unwrap_or_default();
        out.push(Service {
            name,
            argv,
            env,
            mounts,
            replicas,
            healthcheck,
            depends_on,
        });
    }
    out
}

/// Local processes standing in for the containers; killed when dropped.
struct Topology {
    scratch: PathBuf,
    bin: PathBuf,
    procs: Vec<(String, Child)>,
}

impl Drop for Topology {
    fn drop(&mut self) {
        for (_, child) in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

impl Topology {
    /// The command of `svc` as replica `n` would run it: the database URL pointed from the
    /// `postgres` service to the test database, bind mounts to their local folders.
    fn command(&self, svc: &Service, argv: &[String], n: usize, db_url: &str) -> Command {
        let home = self.scratch.join(format!("{}-{n}", svc.name));
        std::fs::create_dir_all(&home).unwrap();
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]).env_clear();
        c.env(
            "PATH",
            format!(
                "{}:{}",
                self.bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("HOME", &home)
        .env("FLOW_HOME", home.join(".flow"))
        // The image sets this; a service may override it.
        .env("FLOW__CORE__DAGS_FOLDER", "/opt/flow/dags");
        for (k, v) in &svc.env {
            let mut v = v.clone();
            if k == "FLOW__DATABASE__URL" {
                assert!(
                    v.contains("@postgres:5432/"),
                    "{}: the database is the `postgres` service: {v}",
                    svc.name
                );
                v = db_url.to_owned();
            }
            c.env(k, v);
        }
        // A folder the service does not mount does not exist for it.
        let dags = svc
            .mounts
            .iter()
            .find(|(_, inside)| inside == "/opt/flow/dags")
            .map_or_else(
                || home.join("no-dags-folder"),
                |(outside, _)| outside.clone(),
            );
        c.env("FLOW__CORE__DAGS_FOLDER", dags);
        c
    }

    fn start(&mut self, svc: &Service, n: usize, db_url: &str) -> Option<String> {
        let mut argv = svc.argv.clone();
        // Ports are published by Docker; here the system picks one.
        if let Some(i) = argv.iter().position(|a| a == "-p") {
            argv[i + 1] = "0".to_owned();
        }
        let mut child = self
            .command(svc, &argv, n, db_url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let name = format!("{}-{n}", svc.name);
        let tag = name.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{tag}] {line}");
                if let Some(port) = line.strip_prefix("flow: web UI at http://localhost:") {
                    let _ = tx.send(port.trim().to_owned());
                }
            }
        });
        self.procs.push((name, child));
        argv.iter()
            .any(|a| a == "webserver")
            .then(|| rx.recv_timeout(Duration::from_secs(60)).unwrap())
    }
}

/// Every service of docker-compose.yaml as local processes, as `docker compose up -d
/// --scale worker=2` would start them, then its health checks and a DAG end to end.
#[tokio::test]
async fn compose_topology_runs_a_dag_end_to_end() {
    let Some(db) = TestDb::postgres().await.unwrap() else {
        return;
    };
    db.store.close().await;
    let scratch = std::env::temp_dir().join(format!("flow-compose-{}", std::process::id()));
    let bin = scratch.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_flow"), bin.join("flow")).unwrap();
    let mut topology = Topology {
        scratch,
        bin,
        procs: Vec::new(),
    };
    // What a user puts in .env.
    let vars: HashMap<String, String> = [(
        "FLOW__CORE__FERNET_KEY".to_owned(),
        "x9gBXvdBg5ZsmZCEiyT3JrPxGO5hNb4wVc3mKXG1rWg=".to_owned(),
    )]
    .into();
    let services = services(&vars);
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    for expected in ["postgres", "flow-init", "scheduler", "worker", "webserver"] {
        assert!(
            names.contains(&expected),
            "no `{expected}` service: {names:?}"
        );
    }
    let by_name = |n: &str| services.iter().find(|s| s.name == n).unwrap();
    assert!(by_name("scheduler").replicas >= 2, "two schedulers");
    assert!(
        by_name("worker").mounts.is_empty(),
        "workers must need no files"
    );
    assert!(
        by_name("scheduler")
            .mounts
            .iter()
            .any(|(_, inside)| inside == "/opt/flow/dags"),
        "the schedulers read the dags folder"
    );
    // The init service first; everything else waits for it (depends_on).
    let init = by_name("flow-init");
    let out = topology
        .command(init, &init.argv, 0, &db.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "flow-init: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Twice, as a restarted deployment would: it must not fail on an existing admin.
    let again = topology
        .command(init, &init.argv, 0, &db.url)
        .output()
        .unwrap();
    assert!(again.status.success(), "flow-init twice: {again:?}");
    let mut web_port = None;
    for svc in &services {
        if svc.name == "postgres" || svc.name == "flow-init" {
            continue;
        }
        assert!(
            svc.depends_on.iter().any(|d| d == "flow-init"),
            "{} does not wait for flow-init",
            svc.name
        );
        let replicas = if svc.name == "worker" {
            2
        } else {
            svc.replicas
        };
        for n in 0..replicas {
            if let Some(port) = topology.start(svc, n, &db.url) {
                web_port = Some(port);
            }
        }
    }
    let web_port = web_port.expect("a web server");
    // Each declared health check passes, run as Docker would run it in the container.
    for svc in services
        .iter()
        .filter(|s| s.healthcheck.first().map(String::as_str) == Some("CMD"))
    {
        let mut argv: Vec<String> = svc.healthcheck[1..].to_vec();
        if argv[0] == "pg_isready" {
            continue; // the machine's PostgreSQL stands in for the service
        }
        for a in &mut argv {
            *a = a.replace("localhost:8080", &format!("localhost:{web_port}"));
        }
        if argv[0] == "flow" {
            argv[0] = topology.bin.join("flow").display().to_string();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = topology.command(svc, &argv, 0, &db.url).output().unwrap();
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: health check {argv:?} never passed: {}{}",
                svc.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    // A user's first steps: unpause a DAG, trigger it, wait for it.
    let cli = by_name("scheduler");
    let flow = |args: &[&str]| {
        let mut argv = vec![topology.bin.join("flow").display().to_string()];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        topology.command(cli, &argv, 99, &db.url).output().unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !flow(&["dags", "unpause", "partitioned_load"])
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "the DAG was never parsed");
        std::thread::sleep(Duration::from_millis(250));
    }
    let out = flow(&["dags", "trigger", "partitioned_load", "--wait"]);
    assert!(
        out.status.success(),
        "the DAG did not succeed through the compose topology: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The admin the init service made can sign in to the API.
    let token = Command::new("curl")
        .args([
            "-fsS",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"username": "admin", "password": "flow-admin"}"#,
            &format!("http://127.0.0.1:{web_port}/auth/token"),
        ])
        .output()
        .unwrap();
    assert!(
        token.status.success() && String::from_utf8_lossy(&token.stdout).contains("access_token"),
        "{token:?}"
    );
    for (name, child) in &mut topology.procs {
        assert!(child.try_wait().unwrap().is_none(), "{name} exited");
    }
    drop(topology);
    db.drop_db().await.unwrap();
}

#[test]
fn interpolation_follows_compose() {
    let vars: HashMap<String, String> = [("A".to_owned(), "1".to_owned())].into();
    assert_eq!(interpolate("x${A}y", &vars), "x1y");
    assert_eq!(interpolate("${B:-two}", &vars), "two");
    assert_eq!(interpolate("${B:-${A}}", &vars), "1");
    assert_eq!(interpolate("$$HOME", &vars), "$HOME");
    assert!(std::panic::catch_unwind(|| interpolate("${B:?needed}", &vars)).is_err());
}
