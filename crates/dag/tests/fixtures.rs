//! Fixture-driven loader tests.
//!
//! `tests/fixtures/bad/*` each produce diagnostics; their exact text is pinned in a `.expected`
//! file next to them. `tests/fixtures/good/*` must load without errors; a summary of what was
//! loaded (schedule, tasks, dependencies, defaults applied) is pinned the same way. Run with
//! `FLOW_UPDATE_SNAPSHOTS=1` to rewrite the `.expected` files after an intended change, then
//! review the diff.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};
use flow_dag::{Arg, DagBag, LoadOptions, Operator, load_dags};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn options() -> LoadOptions {
    LoadOptions {
        now: Utc.with_ymd_and_hms(2025, 6, 15, 12, 0, 0).unwrap(),
        ..LoadOptions::default()
    }
}

/// Cases: every `.yaml`/`.yml` file and every folder directly under `dir`.
fn cases(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() || p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    out.sort();
    out
}

fn relative(path: &Path) -> String {
    path.strip_prefix(fixtures())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn diagnostics_text(bag: &DagBag) -> String {
    let mut out = String::new();
    for d in bag.diagnostics() {
        let mut d = d.clone();
        d.file = PathBuf::from(relative(&d.file));
        writeln!(out, "{d}").unwrap();
    }
    let loaded: Vec<&str> = bag.dags().map(|d| d.dag_id.as_str()).collect();
    writeln!(out, "loaded: {loaded:?}").unwrap();
    out
}

fn arg_text(a: &Arg) -> String {
    match a {
        Arg::Value(v) => v.to_string(),
        Arg::Output(t) => format!("+{t}"),
    }
}

fn summary(bag: &DagBag) -> String {
    let mut out = String::new();
    for dag in bag.dags() {
        writeln!(
            out,
            "dag {} file={} schedule={:?} kind={:?} tz={} start={:?} end={:?} catchup={} max_active_runs={} max_active_tasks={} timeout={:?} owner={:?} tags={:?}",
            dag.dag_id,
            dag.relative_fileloc,
            dag.schedule_text,
            dag.timetable.kind,
            dag.timetable.timezone.name(),
            dag.start_date.map(|d| d.to_rfc3339()),
            dag.end_date.map(|d| d.to_rfc3339()),
            dag.catchup,
            dag.max_active_runs,
            dag.max_active_tasks,
            dag.dagrun_timeout.map(|d| d.num_seconds()),
            dag.owner,
            dag.tags,
        )
        .unwrap();
        for (name, p) in &dag.params {
            writeln!(
                out,
                "  param {name} default={:?} schema={:?}",
                p.default, p.schema
            )
            .unwrap();
        }
        if let Some(k) = &dag.kafka_trigger {
            writeln!(out, "  kafka_trigger {k:?}").unwrap();
        }
        for g in &dag.task_groups {
            writeln!(out, "  group {} parent={:?}", g.group_id, g.parent).unwrap();
        }
        for t in &dag.tasks {
            let op = match &t.operator {
                Operator::Bash(b) => format!(
                    "bash {:?} env={:?} append_env={} cwd={:?} skip={:?}",
                    b.bash_command, b.env, b.append_env, b.cwd, b.skip_on_exit_code
                ),
                Operator::Python(p) => format!(
                    "python {:?} decorated={} args=[{}] kwargs={{{}}}",
                    p.callable,
                    p.decorated,
                    p.op_args
                        .iter()
                        .map(arg_text)
                        .collect::<Vec<_>>()
                        .join(", "),
                    p.op_kwargs
                        .iter()
                        .map(|(k, v)| format!("{k}: {}", arg_text(v)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Operator::Empty => "empty".into(),
                other => format!("{} {other:?}", other.kind()),
            };
            writeln!(
                out,
                "  task {} up={:?} rule={} retries={} delay={}s backoff={} timeout={:?} pool={}x{} prio={}/{} queue={} owner={} dop={} | {op}",
                t.task_id,
                t.upstream.iter().map(|u| u.as_str()).collect::<Vec<_>>(),
                t.trigger_rule.as_str(),
                t.retries,
                t.retry_delay.num_seconds(),
                t.retry_exponential_backoff,
                t.execution_timeout.map(|d| d.num_seconds()),
                t.pool,
                t.pool_slots,
                t.priority_weight,
                t.weight_rule.as_str(),
                t.queue,
                t.owner,
                t.depends_on_past,
            )
            .unwrap();
            if let Some(m) = &t.mapping {
                let kwargs = m
                    .kwargs
                    .as_ref()
                    .map(|k| format!(" expand_kwargs={}", arg_text(k)))
                    .unwrap_or_default();
                let label = t
                    .map_index_template
                    .as_ref()
                    .map(|l| format!(" map_index_template={l:?}"))
                    .unwrap_or_default();
                writeln!(
                    out,
                    "    expand={{{}}} partial={{{}}}{kwargs}{label} mapped={}",
                    m.expand
                        .iter()
                        .map(|(k, v)| format!("{k}: {}", arg_text(v)))
                        .collect::<Vec<_>>()
                        .join(", "),
                    m.partial
                        .iter()
                        .map(|(k, v)| format!("{k}: {}", arg_text(v)))
                        .collect::<Vec<_>>()
                        .join(", "),
                    t.is_mapped()
                )
                .unwrap();
            }
        }
    }
    out
}

/// Compares with the `.expected` snapshot, or writes it when asked to.
fn check_snapshot(case: &Path, actual: &str) -> Result<(), String> {
    let expected_path = PathBuf::from(format!("{}.expected", case.display()));
    let normalized = actual.replace(&format!("{}/", fixtures().display()), "");
    if std::env::var_os("FLOW_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&expected_path, &normalized).unwrap();
        return Ok(());
    }
    let expected = std::fs::read_to_string(&expected_path).map_err(|_| {
        format!(
            "{}: no snapshot; run with FLOW_UPDATE_SNAPSHOTS=1",
            relative(case)
        )
    })?;
    if expected != normalized {
        return Err(format!(
            "{} differs from its snapshot\n--- expected\n{expected}--- actual\n{normalized}",
            relative(case)
        ));
    }
    Ok(())
}

#[test]
fn bad_cases_report_pinned_diagnostics() {
    let mut failures = Vec::new();
    let cases = cases(&fixtures().join("bad"));
    assert!(
        cases.len() >= 20,
        "expected the bad fixtures, found {}",
        cases.len()
    );
    for case in cases {
        let bag = load_dags(&case, &options()).unwrap();
        if bag.diagnostics().next().is_none() {
            failures.push(format!("{}: produced no diagnostic", relative(&case)));
            continue;
        }
        if let Err(e) = check_snapshot(&case, &diagnostics_text(&bag)) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn good_cases_load_cleanly_as_pinned() {
    let mut failures = Vec::new();
    for case in cases(&fixtures().join("good")) {
        let bag = load_dags(&case, &options()).unwrap();
        if bag.error_count() > 0 {
            failures.push(format!("{}:\n{}", relative(&case), diagnostics_text(&bag)));
            continue;
        }
        if bag.dags().next().is_none() {
            failures.push(format!("{}: loaded no DAG", relative(&case)));
            continue;
        }
        let text = format!("{}{}", diagnostics_text(&bag), summary(&bag));
        if let Err(e) = check_snapshot(&case, &text) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn example_dags_validate_cleanly() {
    let dags = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dags");
    let bag = load_dags(&dags, &options()).unwrap();
    let problems: Vec<String> = bag.diagnostics().map(ToString::to_string).collect();
    assert!(problems.is_empty(), "{problems:#?}");
    let ids: Vec<&str> = bag.dags().map(|d| d.dag_id.as_str()).collect();
    for expected in [
        "etl_daily",
        "ml_train_validate_deploy",
        "fan_out_fan_in",
        "weekday_reports",
    ] {
        assert!(ids.contains(&expected), "{expected} missing from {ids:?}");
    }
}

#[test]
fn oversized_file_is_rejected_before_parsing() {
    let dir = std::env::temp_dir().join(format!("flow-oversize-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("huge.yaml");
    let mut text = String::from("huge:\n  tasks:\n    a: {operator: empty}\n  description: \"");
    text.push_str(&"x".repeat(11 * 1024 * 1024));
    text.push_str("\"\n");
    std::fs::write(&path, text).unwrap();
    let bag = load_dags(&dir, &options()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let d: Vec<String> = bag.diagnostics().map(|d| d.message.clone()).collect();
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].contains("limited to 10 MiB"), "{d:?}");
}

#[test]
fn a_broken_file_does_not_stop_the_others() {
    let dir = std::env::temp_dir().join(format!("flow-mixed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("a.yaml"),
        "a_dag:\n  tasks: {t: {operator: empty}}\n",
    )
    .unwrap();
    std::fs::write(dir.join("b.yaml"), "b_dag: [\n").unwrap();
    std::fs::write(
        dir.join("c.yaml"),
        "c_dag:\n  tasks: {t: {operator: empty}}\n",
    )
    .unwrap();
    let bag = load_dags(&dir, &options()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let ids: Vec<&str> = bag.dags().map(|d| d.dag_id.as_str()).collect();
    assert_eq!(ids, ["a_dag", "c_dag"]);
    assert_eq!(bag.error_count(), 1);
    assert!(bag.files[1].has_errors());
}

#[test]
fn serialized_dags_round_trip() {
    for dir in ["good", "../../../../dags"] {
        let bag = load_dags(&fixtures().join(dir), &options()).unwrap();
        for dag in bag.dags() {
            let json = dag.to_json().unwrap();
            let back = flow_dag::Dag::from_json(&json).unwrap();
            assert_eq!(back.to_json().unwrap(), json, "{}", dag.dag_id);
            assert_eq!(back.tasks.len(), dag.tasks.len());
            assert_eq!(back.timetable, dag.timetable);
        }
    }
}

/// What could hang the scheduler or show a file it should not: a named pipe (reading one
/// blocks forever), links out of the dags folder (to /etc/passwd, to /dev/zero), a dangling
/// link. Each is an import error naming the file; a link inside the folder loads.
#[test]
fn pipes_and_links_out_of_the_folder_are_import_errors() {
    use std::os::unix::fs::symlink;
    let dir = std::env::temp_dir().join(format!("flow-unsafe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("real")).unwrap();
    // Not itself a DAG file (no .yaml): only the link inside the folder makes it one.
    std::fs::write(
        dir.join("real/ok.txt"),
        "linked_dag:\n  tasks: {t: {operator: empty}}\n",
    )
    .unwrap();
    symlink(dir.join("real/ok.txt"), dir.join("inside.yaml")).unwrap();
    symlink("/etc/passwd", dir.join("passwd.yaml")).unwrap();
    symlink("/dev/zero", dir.join("zero.yaml")).unwrap();
    symlink(dir.join("missing.yaml"), dir.join("gone.yaml")).unwrap();
    let fifo = dir.join("pipe.yaml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());

    let messages = |opts: &LoadOptions| -> Vec<String> {
        let bag = load_dags(&dir, opts).unwrap();
        let mut d: Vec<String> = bag
            .diagnostics()
            .map(|d| {
                format!(
                    "{}: {}",
                    d.file.file_name().unwrap().to_string_lossy(),
                    d.message
                )
            })
            .collect();
        d.sort();
        let loaded: Vec<String> = bag.dags().map(|d| d.dag_id.to_string()).collect();
        d.push(format!("loaded {loaded:?}"));
        d
    };
    let d = messages(&options());
    assert_eq!(d.len(), 5, "{d:?}");
    assert!(
        d[0].starts_with("gone.yaml: dangling symbolic link:"),
        "{d:?}"
    );
    assert!(
        d[1].starts_with("passwd.yaml: symbolic link to /etc/passwd leads outside the dags folder"),
        "{d:?}"
    );
    assert_eq!(
        d[2],
        "pipe.yaml: not a regular file (a named pipe); DAG files must be regular files"
    );
    assert!(
        d[3].starts_with("zero.yaml: symbolic link to /dev/zero leads outside"),
        "{d:?}"
    );
    assert_eq!(d[4], r#"loaded ["linked_dag"]"#);

    // Allowed out of the folder, a link to a device is still no DAG file.
    let allowed = LoadOptions {
        allow_external_links: true,
        ..options()
    };
    let d = messages(&allowed);
    assert!(
        d.iter()
            .any(|m| m
                == "zero.yaml: not a regular file (a device); DAG files must be regular files"),
        "{d:?}"
    );
    assert!(
        !d.iter()
            .any(|m| m.starts_with("passwd.yaml: symbolic link")),
        "{d:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
