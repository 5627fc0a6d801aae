//! Shared test helpers: temporary directories, DAGs from YAML, a run context with fixed
//! dates, and running a task while collecting its log lines.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, TimeZone, Utc};
use flow_dag::{Dag, LoadOptions};
use flow_executor::{LogLine, Outcome, RunContext, RunSpec, Stream, merge_params};
use tokio::sync::{mpsc, watch};

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "flow-executor-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Loads the single DAG of `yaml`, written into `dags` as `dag.yaml`; fails on errors
/// (warnings about names outside the context are expected in some tests).
pub fn load(dags: &TempDir, yaml: &str) -> Dag {
    let path = dags.write("dag.yaml", yaml);
    let loaded = flow_dag::load_file(&path, dags.path(), &LoadOptions::default());
    assert!(
        !loaded.has_errors(),
        "diagnostics: {:?}",
        loaded.diagnostics
    );
    assert_eq!(loaded.dags.len(), 1);
    loaded.dags.into_iter().next().unwrap()
}

pub fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// The context of try 1 of a scheduled run for 2025-01-01 (interval 2025-01-01 .. 01-02).
pub fn context(dag: &Dag, task_id: &str, dags_folder: &Path) -> RunContext {
    let task = dag.task(task_id).unwrap();
    let conf = serde_json::json!({});
    RunContext {
        dag_id: dag.dag_id.as_str().to_owned(),
        task_id: task_id.to_owned(),
        run_id: "scheduled__2025-01-01T00:00:00+00:00".to_owned(),
        map_index: -1,
        try_number: 1,
        max_tries: task.retries + 1,
        run_type: "scheduled".to_owned(),
        logical_date: Some(Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()),
        data_interval_start: Some(Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()),
        data_interval_end: Some(Utc.with_ymd_and_hms(2025, 1, 2, 0, 0, 0).unwrap()),
        run_after: Utc.with_ymd_and_hms(2025, 1, 2, 0, 0, 0).unwrap(),
        dag_run_start_date: Some(at("2025-01-02T00:00:05.250000Z")),
        params: merge_params(&dag.params, &task.params, &conf).unwrap(),
        conf,
        owner: task.owner.clone(),
        dags_folder: dags_folder.to_path_buf(),
        source_root: dags_folder.to_path_buf(),
        timezone: chrono_tz::Europe::Berlin,
        render_template_as_native_obj: dag.render_template_as_native_obj,
        template_searchpath: Vec::new(),
        xcoms: Default::default(),
        variables: HashMap::new(),
        variables_wanted: None,
        connections: HashMap::new(),
        connections_wanted: None,
        triggering_asset_events: serde_json::json!({}),
    }
}

/// Runs `spec` to the end, returning the outcome and every log line.
pub async fn run_collect(spec: RunSpec) -> (Outcome, Vec<LogLine>) {
    let (_cancel_tx, cancel_rx) = watch::channel(false);
    run_with_cancel(spec, cancel_rx).await
}

pub async fn run_with_cancel(
    spec: RunSpec,
    cancel: watch::Receiver<bool>,
) -> (Outcome, Vec<LogLine>) {
    // A small channel on purpose: the runner must cope with back-pressure.
    let (tx, mut rx) = mpsc::channel(4);
    let collector = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(line) = rx.recv().await {
            lines.push(line);
        }
        lines
    });
    let outcome = flow_executor::run(spec, tx, cancel).await;
    (outcome, collector.await.unwrap())
}

pub fn texts(lines: &[LogLine], stream: Stream) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.stream == stream)
        .map(|l| l.text.clone())
        .collect()
}
