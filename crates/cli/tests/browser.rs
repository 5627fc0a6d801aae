//! The web UI in a real headless browser: `flow standalone` on the example DAGs, driven by
//! `web/tests/browser.mjs` (playwright-core + Debian's chromium). Needs `node`, `chromium`
//! and `npm ci --prefix web/tests` (`.ci/run` installs them); outside CI a missing piece skips
//! the test loudly, with `CI=true` it fails.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

mod common;
use common::{Standalone, repo_root};

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Whether everything the browser test needs is here; says what is missing otherwise.
fn prerequisites() -> Result<PathBuf, String> {
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node_ok {
        return Err("node is not installed".into());
    }
    let Some(chromium) = chromium() else {
        return Err("chromium is not installed (apt-get install chromium)".into());
    };
    if !repo_root()
        .join("web/tests/node_modules/playwright-core")
        .exists()
    {
        return Err("playwright-core is not installed (npm ci --prefix web/tests)".into());
    }
    Ok(chromium)
}

const XSS_DAG: &str = r#"
xss_probe:
  description: "probe <img src=x onerror=alert(1)>"
  is_paused_upon_creation: false
  params:
    note: "<img src=x onerror=alert(1)>"
  tasks:
    shout:
      operator: bash
      bash_command: 'echo "<img src=x onerror=alert(1)>"'
grouped_ui:
  is_paused_upon_creation: false
  task_groups:
    - {group_name: stage}
  tasks:
    first: {operator: empty}
    a: {operator: empty, task_group_name: stage, dependencies: [first]}
    b: {operator: empty, task_group_name: stage, dependencies: [first]}
live_tail:
  is_paused_upon_creation: false
  tasks:
    ticker:
      operator: bash
      bash_command: 'for i in 1 2 3 4 5 6; do echo "tick $i"; sleep 0.5; done'
"#;

#[test]
fn web_ui_in_a_real_browser() {
    let chromium = match prerequisites() {
        Ok(c) => c,
        Err(missing) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but the browser test cannot run: {missing}"
            );
            eprintln!("SKIPPED: browser test: {missing}");
            return;
        }
    };
    let root = repo_root();
    let home = std::env::temp_dir().join(format!("flow-browser-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    let dags = home.join("dags");
    std::fs::create_dir_all(&dags).unwrap();
    for entry in std::fs::read_dir(root.join("dags")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            continue; // the factory examples are not needed here
        }
        std::fs::copy(entry.path(), dags.join(entry.file_name())).unwrap();
    }
    std::fs::write(dags.join("xss_probe.yaml"), XSS_DAG).unwrap();
    let flow = env!("CARGO_BIN_EXE_flow");
    let command = |args: &[&str]| {
        let mut c = Command::new(flow);
        c.args(args)
            .env("FLOW_HOME", &home)
            .env("FLOW__CORE__DAGS_FOLDER", &dags)
            .env_remove("FLOW__DATABASE__URL")
            .env("FLOW__LOGGING__LEVEL", "warn")
            .env("FLOW__CORE__TEST_CONNECTION", "Enabled")
            .env("TMPDIR", &home);
        c
    };
    // The database the Connections page's Test reaches (a test never creates one).
    let conn_test_db = home.join("conn_test.db");
    std::fs::write(&conn_test_db, b"").unwrap();
    let standalone = Standalone::start(command(&[]));
    let port = &standalone.port;
    let admin_password = std::fs::read_to_string(home.join("standalone_admin_password.txt"))
        .unwrap()
        .trim()
        .to_owned();
    let created = command(&[
        "users",
        "create",
        "--username",
        "vera",
        "--role",
        "Viewer",
        "--password",
        "viewer-password",
    ])
    .output()
    .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let status = Command::new("node")
        .arg(root.join("web/tests/browser.mjs"))
        .current_dir(root.join("web/tests"))
        .env("FLOW_URL", format!("http://127.0.0.1:{port}"))
        .env("ADMIN_PASSWORD", admin_password)
        .env("VIEWER_USER", "vera")
        .env("VIEWER_PASSWORD", "viewer-password")
        .env("CHROMIUM", chromium)
        .env("CONN_TEST_DB", &conn_test_db)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the browser test failed (see its output above)"
    );
    let _ = std::fs::remove_dir_all(&home);
}
