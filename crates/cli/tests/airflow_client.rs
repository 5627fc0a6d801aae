//! The official Airflow python client (`apache-airflow-client` from PyPI, in the virtualenv
//! `.ci/run` makes at `target/airflow-client-venv`) against `flow standalone` on PostgreSQL:
//! `tests/airflow_client/check.py`. Outside CI a missing virtualenv skips the test loudly;
//! with `CI=true` it fails.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use flow_store::testing::TestDb;

mod common;
use common::{Standalone, repo_root};

#[tokio::test]
async fn official_airflow_client_works_unpatched() {
    let root = repo_root();
    let python = root.join("target/airflow-client-venv/bin/python");
    let ci = std::env::var("CI").as_deref() == Ok("true");
    if !python.exists() {
        assert!(!ci, "CI=true but {} is missing", python.display());
        eprintln!(
            "SKIPPED: airflow client test: no {} (python3 -m venv target/airflow-client-venv && target/airflow-client-venv/bin/pip install apache-airflow-client)",
            python.display()
        );
        return;
    }
    let Some(db) = TestDb::postgres().await.unwrap() else {
        return;
    };
    let home = std::env::temp_dir().join(format!("flow-airflow-client-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    let dags = home.join("dags");
    std::fs::create_dir_all(&dags).unwrap();
    std::fs::copy(
        root.join("dags/etl_daily.yaml"),
        dags.join("etl_daily.yaml"),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_flow"));
    command
        .env("FLOW_HOME", &home)
        .env("FLOW__CORE__DAGS_FOLDER", &dags)
        .env("FLOW__DATABASE__URL", &db.url)
        .env("FLOW__LOGGING__LEVEL", "warn")
        .env("TMPDIR", &home);
    let standalone = Standalone::start(command);
    let port = &standalone.port;
    let password = std::fs::read_to_string(home.join("standalone_admin_password.txt"))
        .unwrap()
        .trim()
        .to_owned();
    // The DAG must be parsed before the client lists it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while db.store.dag_get("etl_daily").await.unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "etl_daily never parsed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = Command::new(&python)
        .arg(root.join("tests/airflow_client/check.py"))
        .env("FLOW_URL", format!("http://127.0.0.1:{port}"))
        .env("FLOW_USER", "admin")
        .env("FLOW_PASSWORD", password)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the airflow client check failed (output above)"
    );
    let _ = std::fs::remove_dir_all(&home);
    drop(standalone);
    db.drop_db().await.unwrap();
}
