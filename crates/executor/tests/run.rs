//! Running rendered tasks as real processes: exit codes, environment, output streaming,
//! timeouts and cancellation that leave no process behind, Python callables.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{TempDir, context, load, run_collect, run_with_cancel, texts};
use flow_executor::{LogLine, Outcome, RunContext, RunSpec, Stream, render_task};
use serde_json::json;
use tokio::sync::{mpsc, watch};

/// Loads a DAG `d` with the given tasks (YAML, indented by 4) and prepares `task_id`'s run.
fn spec(
    dags: &TempDir,
    tasks: &str,
    task_id: &str,
    setup: impl FnOnce(&mut RunContext),
) -> RunSpec {
    let dag = load(
        dags,
        &format!("d:\n  start_date: 2025-01-01\n  default_args: {{owner: ops}}\n  tasks:\n{tasks}"),
    );
    let task = dag.task(task_id).unwrap();
    let mut ctx = context(&dag, task_id, dags.path());
    setup(&mut ctx);
    let rendered = render_task(task, &ctx).unwrap();
    RunSpec::new(task, rendered, &ctx)
}

fn bash(dags: &TempDir, command: &str) -> RunSpec {
    let tasks = format!(
        "    t:\n      operator: bash\n      bash_command: {}\n",
        serde_json::to_string(command).unwrap()
    );
    spec(dags, &tasks, "t", |_| {})
}

/// Whether a process is gone (or a zombie: dead, waiting for its parent to reap it).
fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Polls (bounded) until `pid` is dead; the kill was already sent, this only waits for the
/// kernel to finish it.
fn assert_dies(pid: u32) {
    let start = Instant::now();
    while !is_dead(pid) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "process {pid} survived"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read_pid(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Airflow's BashOperator pushes the last line of output (stdout and stderr together),
/// right-trimmed, even when it is empty.
#[tokio::test]
async fn bash_success_pushes_last_output_line() {
    let dags = TempDir::new();
    let (outcome, _) = run_collect(bash(&dags, "echo first; echo '  42 rows  '")).await;
    assert_eq!(
        outcome,
        Outcome::Success {
            xcom: Some(json!("  42 rows"))
        }
    );
    for (command, pushed) in [
        ("true", ""),
        ("printf 'x\\n\\n'", ""),
        ("echo out; echo err >&2", "err"),
    ] {
        let (outcome, _) = run_collect(bash(&dags, command)).await;
        assert_eq!(
            outcome,
            Outcome::Success {
                xcom: Some(json!(pushed))
            },
            "{command}"
        );
    }
    let (outcome, lines) =
        run_collect(bash(&dags, "echo first; echo; echo '  42 rows  '; echo")).await;
    assert_eq!(
        outcome,
        Outcome::Success {
            xcom: Some(json!(""))
        }
    );
    assert_eq!(
        texts(&lines, Stream::Stdout),
        vec!["first", "", "  42 rows  ", ""]
    );

    let mut no_push = bash(&dags, "echo value");
    no_push.do_xcom_push = false;
    assert_eq!(
        run_collect(no_push).await.0,
        Outcome::Success { xcom: None }
    );
}

#[tokio::test]
async fn exit_codes_skip_or_fail() {
    let dags = TempDir::new();
    assert_eq!(
        run_collect(bash(&dags, "echo skipping; exit 99")).await.0,
        Outcome::Skipped {
            reason: "bash command exited with code 99".into()
        }
    );
    assert_eq!(
        run_collect(bash(&dags, "exit 3")).await.0,
        Outcome::Failed {
            reason: "Bash command failed. The command returned a non-zero exit code 3.".into()
        }
    );
    let custom = spec(
        &dags,
        "    t:\n      operator: bash\n      bash_command: exit 7\n      skip_on_exit_code: [7]\n",
        "t",
        |_| {},
    );
    assert!(matches!(
        run_collect(custom).await.0,
        Outcome::Skipped { .. }
    ));
    let (outcome, _) = run_collect(bash(&dags, "kill -KILL $$")).await;
    assert_eq!(
        outcome,
        Outcome::Failed {
            reason: "bash command was killed by SIGKILL".into()
        }
    );
}

#[tokio::test]
async fn environment_and_airflow_context_variables() {
    let dags = TempDir::new();
    let (outcome, _) = run_collect(bash(
        &dags,
        "echo $AIRFLOW_CTX_DAG_ID $AIRFLOW_CTX_TASK_ID $AIRFLOW_CTX_DAG_RUN_ID $AIRFLOW_CTX_TRY_NUMBER \
         $AIRFLOW_CTX_DAG_OWNER $AIRFLOW_CTX_EXECUTION_DATE $AIRFLOW_CTX_LOGICAL_DATE \
         $FLOW_CTX_DAG_ID $FLOW_CTX_RUN_ID $FLOW_CTX_LOGICAL_DATE",
    ))
    .await;
    let run_id = "scheduled__2025-01-01T00:00:00+00:00";
    let ld = "2025-01-01T00:00:00+00:00";
    assert_eq!(
        outcome,
        Outcome::Success {
            xcom: Some(json!(format!(
                "d t {run_id} 1 ops {ld} {ld} d {run_id} {ld}"
            )))
        }
    );

    // `env` without append_env replaces the environment (the context variables still come);
    // with append_env it adds to the inherited one.
    let tasks = r#"
    only:
      operator: bash
      bash_command: 'echo "A=$A HOME=${HOME:-unset} CTX=$AIRFLOW_CTX_TASK_ID"'
      env: {A: "{{ ds }}"}
    append:
      operator: bash
      bash_command: 'echo "A=$A HOME=${HOME:+set}"'
      env: {A: "1"}
      append_env: true
    inherit:
      operator: bash
      bash_command: 'echo "HOME=${HOME:+set}"'
"#;
    let out = |id: &str| {
        let spec = spec(&dags, tasks, id, |_| {});
        async move {
            match run_collect(spec).await.0 {
                Outcome::Success { xcom: Some(v) } => v,
                other => panic!("{other:?}"),
            }
        }
    };
    assert!(
        std::env::var_os("HOME").is_some(),
        "the test needs HOME set"
    );
    assert_eq!(out("only").await, json!("A=2025-01-01 HOME=unset CTX=only"));
    assert_eq!(out("append").await, json!("A=1 HOME=set"));
    assert_eq!(out("inherit").await, json!("HOME=set"));
}

#[tokio::test]
async fn working_directory() {
    let dags = TempDir::new();
    std::fs::create_dir(dags.path().join("work")).unwrap();
    // Default: a fresh temporary directory, removed afterwards.
    let temp_root = TempDir::new();
    let mut default = bash(&dags, "pwd; touch left-behind");
    default.temp_root = temp_root.path().to_path_buf();
    let (outcome, lines) = run_collect(default).await;
    assert!(matches!(outcome, Outcome::Success { .. }), "{outcome:?}");
    let pwd = &texts(&lines, Stream::Stdout)[0];
    assert!(pwd.starts_with(temp_root.path().to_str().unwrap()), "{pwd}");
    assert_eq!(std::fs::read_dir(temp_root.path()).unwrap().count(), 0);
    // A run that leaves its directory empty may hand it to a later run: every later run
    // still starts in an empty directory of its own, and nothing else is left behind.
    for _ in 0..3 {
        let mut clean = bash(&dags, "ls -A | wc -l; stat -c %a .; mkdir sub; rmdir sub");
        clean.temp_root = temp_root.path().to_path_buf();
        let (outcome, lines) = run_collect(clean).await;
        assert!(matches!(outcome, Outcome::Success { .. }), "{outcome:?}");
        assert_eq!(texts(&lines, Stream::Stdout), vec!["0", "700"]);
    }
    let mut opened = bash(&dags, "chmod 755 .");
    opened.temp_root = temp_root.path().to_path_buf();
    run_collect(opened).await;
    for entry in std::fs::read_dir(temp_root.path()).unwrap() {
        let path = entry.unwrap().path();
        assert!(path.is_dir(), "{} was left behind", path.display());
        assert_eq!(std::fs::read_dir(&path).unwrap().count(), 0);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(
            mode, 0o700,
            "a directory whose mode a task changed is not kept"
        );
    }

    // `cwd`, relative to the dags folder.
    let with_cwd = spec(
        &dags,
        "    t:\n      operator: bash\n      bash_command: pwd\n      cwd: work\n",
        "t",
        |_| {},
    );
    let expected = dags.path().join("work");
    assert_eq!(
        run_collect(with_cwd).await.0,
        Outcome::Success {
            xcom: Some(json!(expected.to_str().unwrap()))
        }
    );
    let missing = spec(
        &dags,
        "    t:\n      operator: bash\n      bash_command: pwd\n      cwd: nope\n",
        "t",
        |_| {},
    );
    assert!(
        matches!(run_collect(missing).await.0, Outcome::Failed { reason } if reason.contains("is not a directory"))
    );
}

#[tokio::test]
async fn stdout_and_stderr_are_streamed_in_order_per_stream() {
    let dags = TempDir::new();
    let (outcome, lines) = run_collect(bash(
        &dags,
        "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done; printf 'no newline'",
    ))
    .await;
    assert!(matches!(outcome, Outcome::Success { .. }));
    assert_eq!(
        texts(&lines, Stream::Stdout),
        vec!["out1", "out2", "out3", "out4", "out5", "no newline"]
    );
    assert_eq!(
        texts(&lines, Stream::Stderr),
        vec!["err1", "err2", "err3", "err4", "err5"]
    );
    assert!(lines.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(
        texts(&lines, Stream::System)[0],
        "Running command: for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done; printf 'no newline'"
    );

    // A 200 KB line (with multi-byte characters) arrives split into bounded pieces, intact.
    let (_, lines) = run_collect(bash(&dags, "python3 -c \"print('é' * 100000)\"")).await;
    let pieces = texts(&lines, Stream::Stdout);
    assert!(pieces.len() >= 4, "{} pieces", pieces.len());
    assert!(pieces.iter().all(|p| p.len() <= 64 * 1024));
    assert_eq!(pieces.concat(), "é".repeat(100_000));
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let dags = TempDir::new();
    let pidfile = dags.path().join("bg.pid");
    let mut spec = bash(
        &dags,
        &format!("sleep 300 & echo $! > {}; wait", pidfile.display()),
    );
    spec.timeout = Some(Duration::from_secs(1));
    let start = Instant::now();
    let (outcome, lines) = run_collect(spec).await;
    assert_eq!(outcome, Outcome::TimedOut);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(
        texts(&lines, Stream::System)
            .iter()
            .any(|l| l.starts_with("Timed out after 1s"))
    );
    assert_dies(read_pid(&pidfile));
}

#[tokio::test]
async fn sigkill_after_the_grace_period_when_sigterm_is_ignored() {
    let dags = TempDir::new();
    let mut spec = bash(&dags, "trap '' TERM; while true; do sleep 0.05; done");
    spec.timeout = Some(Duration::from_millis(300));
    spec.kill_grace = Duration::from_millis(300);
    let start = Instant::now();
    let (outcome, lines) = run_collect(spec).await;
    assert_eq!(outcome, Outcome::TimedOut);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(
        texts(&lines, Stream::System)
            .iter()
            .any(|l| l.contains("sending SIGKILL")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn cancellation_kills_the_whole_process_group() {
    let dags = TempDir::new();
    let pidfile = dags.path().join("bg.pid");
    let spec = bash(
        &dags,
        &format!(
            "sleep 300 & echo $! > {}; echo ready; wait",
            pidfile.display()
        ),
    );
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let (tx, mut rx) = mpsc::channel::<LogLine>(16);
    let task = tokio::spawn(flow_executor::run(spec, tx, cancel_rx));
    // Cancel once the script says it is running.
    while let Some(line) = rx.recv().await {
        if line.text == "ready" {
            break;
        }
    }
    cancel_tx.send(true).unwrap();
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    assert_eq!(task.await.unwrap(), Outcome::Cancelled);
    drain.await.unwrap();
    assert_dies(read_pid(&pidfile));

    // Already cancelled: nothing starts.
    let (_tx, cancelled) = watch::channel(true);
    assert_eq!(
        run_with_cancel(bash(&dags, "exit 0"), cancelled).await.0,
        Outcome::Cancelled
    );
}

#[tokio::test]
async fn leftover_background_processes_die_with_the_task() {
    let dags = TempDir::new();
    let pidfile = dags.path().join("bg.pid");
    let start = Instant::now();
    let (outcome, _) = run_collect(bash(
        &dags,
        &format!("sleep 300 & echo $! > {}", pidfile.display()),
    ))
    .await;
    assert_eq!(
        outcome,
        Outcome::Success {
            xcom: Some(json!(""))
        }
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_dies(read_pid(&pidfile));
}

#[tokio::test]
async fn secrets_are_masked_in_logs() {
    let dags = TempDir::new();
    let tasks = "    t:\n      operator: bash\n      bash_command: 'echo pw={{ var.value.db_password }} token=$API_TOKEN'\n      env: {API_TOKEN: s3cr3t-token}\n";
    let spec = spec(&dags, tasks, "t", |ctx| {
        ctx.variables
            .insert("db_password".into(), "hunter2hunter2".into());
    });
    let (_, lines) = run_collect(spec).await;
    assert_eq!(texts(&lines, Stream::Stdout), vec!["pw=*** token=***"]);
    assert!(lines.iter().all(|l| !l.text.contains("hunter2hunter2")));
}

#[tokio::test]
async fn empty_succeeds_at_once() {
    let dags = TempDir::new();
    let spec = spec(&dags, "    e:\n      operator: empty\n", "e", |_| {});
    assert_eq!(
        run_collect(spec).await,
        (Outcome::Success { xcom: None }, Vec::new())
    );
}

const STEPS_PY: &str = r#"
import sys

def add(a, b, scale=1):
    return {"sum": (a + b) * scale}

def noisy():
    print("hello from the task")
    print('{"not": "the result"}')
    print("to stderr", file=sys.stderr)
    return [1, "two", None]

def broken(threshold):
    raise ValueError(f"accuracy 0.5 below {threshold}")

def unserializable():
    return object()

def nothing():
    print("returns None")

def slow():
    import time
    print("ready", flush=True)
    time.sleep(300)
"#;

#[tokio::test]
async fn python_return_value_is_the_xcom() {
    let dags = TempDir::new();
    dags.write("steps.py", STEPS_PY);
    let tasks = r#"
    add:
      operator: python
      python_callable: steps.add
      op_args: [1, 2]
      op_kwargs: {scale: 10}
    noisy:
      operator: python
      python_callable: steps.noisy
    nothing:
      operator: python
      python_callable: steps.nothing
"#;
    let (outcome, lines) = run_collect(spec(&dags, tasks, "add", |_| {})).await;
    assert_eq!(
        outcome,
        Outcome::Success {
            xcom: Some(json!({"sum": 30}))
        }
    );
    assert!(
        texts(&lines, Stream::System)
            .contains(&r#"Done. Returned value was: {"sum":30}"#.to_owned())
    );

    // Prints go to the log; they do not corrupt the returned value.
    let (outcome, lines) = run_collect(spec(&dags, tasks, "noisy", |_| {})).await;
    assert_eq!(
        outcome,
        Outcome::Success {
            xcom: Some(json!([1, "two", null]))
        }
    );
    assert_eq!(
        texts(&lines, Stream::Stdout),
        vec!["hello from the task", r#"{"not": "the result"}"#]
    );
    assert_eq!(texts(&lines, Stream::Stderr), vec!["to stderr"]);

    assert_eq!(
        run_collect(spec(&dags, tasks, "nothing", |_| {})).await.0,
        Outcome::Success { xcom: None }
    );
}

#[tokio::test]
async fn python_failures() {
    let dags = TempDir::new();
    dags.write("steps.py", STEPS_PY);
    let tasks = r#"
    broken:
      operator: python
      python_callable: steps.broken
      op_kwargs: {threshold: "{{ params.min }}"}
    unserializable:
      operator: python
      python_callable: steps.unserializable
    missing_module:
      operator: python
      python_callable: no_such_module.fn
    slow:
      operator: python
      python_callable: steps.slow
      execution_timeout: 1s
"#;
    let (outcome, lines) = run_collect(spec(&dags, tasks, "broken", |ctx| {
        ctx.params.insert("min".into(), json!(0.8));
    }))
    .await;
    assert_eq!(
        outcome,
        Outcome::Failed {
            reason: "ValueError: accuracy 0.5 below 0.8".into()
        }
    );
    let stderr = texts(&lines, Stream::Stderr);
    assert_eq!(stderr[0], "Traceback (most recent call last):");
    assert!(stderr.iter().any(|l| l.contains("in broken")), "{stderr:?}");
    assert_eq!(stderr.last().unwrap(), "ValueError: accuracy 0.5 below 0.8");

    let (outcome, _) = run_collect(spec(&dags, tasks, "unserializable", |_| {})).await;
    match outcome {
        Outcome::Failed { reason } => {
            assert!(
                reason.starts_with("the return value (object) cannot be stored as an XCom"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }

    let (outcome, _) = run_collect(spec(&dags, tasks, "missing_module", |_| {})).await;
    assert_eq!(
        outcome,
        Outcome::Failed {
            reason: "ModuleNotFoundError: No module named 'no_such_module'".into()
        }
    );

    let start = Instant::now();
    assert_eq!(
        run_collect(spec(&dags, tasks, "slow", |_| {})).await.0,
        Outcome::TimedOut
    );
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn python_callable_file_and_context_kwargs() {
    let dags = TempDir::new();
    std::fs::create_dir(dags.path().join("lib")).unwrap();
    dags.write(
        "lib/funcs.py",
        r#"
def compute(x, ds=None, **context):
    ti = context["ti"]
    return {
        "x": x,
        "ds": ds,
        "up": ti.xcom_pull(task_ids="up"),
        "n": context["params"]["n"],
        "run_id": context["dag_run"].run_id,
        "year": context["logical_date"].year,
        "templates": context["templates_dict"],
    }

def only_named(value, run_id):
    return [value, run_id]
"#,
    );
    let tasks = r#"
    up:
      operator: bash
      bash_command: echo 1
    compute:
      operator: python
      python_callable_name: compute
      python_callable_file: $CONFIG_ROOT_DIR/lib/funcs.py
      op_kwargs: {x: "{{ ds_nodash }}"}
      templates_dict: {q: "select {{ params.n }}"}
      params: {n: 4}
      dependencies: [up]
    named:
      operator: python
      python_callable_name: only_named
      python_callable_file: lib/funcs.py
      op_args: [v]
"#;
    let (outcome, lines) = run_collect(spec(&dags, tasks, "compute", |ctx| {
        std::sync::Arc::make_mut(&mut ctx.xcoms).insert("up", "return_value", -1, json!("1"));
    }))
    .await;
    assert_eq!(
        outcome,
        Outcome::Success {
            xcom: Some(json!({
                "x": "20250101",
                "ds": "2025-01-01",
                "up": "1",
                "n": 4,
                "run_id": "scheduled__2025-01-01T00:00:00+00:00",
                "year": 2025,
                "templates": {"q": "select 4"},
            }))
        },
        "{lines:?}"
    );
    // Without **kwargs, only the context names the function declares are passed.
    assert_eq!(
        run_collect(spec(&dags, tasks, "named", |_| {})).await.0,
        Outcome::Success {
            xcom: Some(json!(["v", "scheduled__2025-01-01T00:00:00+00:00"]))
        }
    );
}

#[tokio::test]
async fn python_cancellation() {
    let dags = TempDir::new();
    dags.write("steps.py", STEPS_PY);
    let spec = spec(
        &dags,
        "    slow:\n      operator: python\n      python_callable: steps.slow\n",
        "slow",
        |_| {},
    );
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let (tx, mut rx) = mpsc::channel::<LogLine>(16);
    let task = tokio::spawn(flow_executor::run(spec, tx, cancel_rx));
    while let Some(line) = rx.recv().await {
        if line.text == "ready" {
            break;
        }
    }
    cancel_tx.send(true).unwrap();
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    assert_eq!(task.await.unwrap(), Outcome::Cancelled);
    drain.await.unwrap();
}

#[tokio::test]
async fn a_process_escaping_the_group_does_not_hang_the_task() {
    let dags = TempDir::new();
    let pidfile = dags.path().join("escaped.pid");
    // `setsid` leaves the process group while keeping stdout open.
    let command = format!(
        "setsid sh -c 'echo $$ > {}; exec sleep 300' & sleep 0.2; echo done",
        pidfile.display()
    );
    let start = Instant::now();
    let (outcome, lines) = run_collect(bash(&dags, &command)).await;
    let escaped = read_pid(&pidfile);
    // Out of the task's reach by design; the test cleans up after itself.
    let _ = std::process::Command::new("kill")
        .arg(escaped.to_string())
        .status();
    assert_eq!(
        outcome,
        Outcome::Success {
            xcom: Some(json!("done"))
        }
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(
        texts(&lines, Stream::System)
            .iter()
            .any(|l| l.starts_with("Stopped reading output"))
    );
}

/// `skip_on_exit_code`: skip codes are checked before success (`[0]` skips a clean exit), and
/// `null` means no code skips (exit 99 fails), as in Airflow.
#[tokio::test]
async fn skip_on_exit_code_as_airflow_reads_it() {
    let dags = TempDir::new();
    let run = |tasks: &'static str| {
        let dags = &dags;
        async move { run_collect(spec(dags, tasks, "t", |_| {})).await.0 }
    };
    let zero_skips =
        "    t:\n      operator: bash\n      bash_command: exit 0\n      skip_on_exit_code: [0]\n";
    assert!(matches!(run(zero_skips).await, Outcome::Skipped { .. }));
    let none_skips = "    t:\n      operator: bash\n      bash_command: exit 99\n      skip_on_exit_code: null\n";
    assert_eq!(
        run(none_skips).await,
        Outcome::Failed {
            reason: "Bash command failed. The command returned a non-zero exit code 99.".into()
        }
    );
    let default_skips = "    t:\n      operator: bash\n      bash_command: exit 99\n";
    assert!(matches!(run(default_skips).await, Outcome::Skipped { .. }));
}

/// A Python callable written for Airflow imports `get_current_context` and `Context` from
/// Airflow; without Airflow installed, flow provides them, and names the callable adds to
/// its context reach the mapped task's `map_index_template` (dag-factory's
/// example_map_index_template).
#[tokio::test]
async fn python_callables_written_for_airflow_run_and_label_their_map_index() {
    let dags = TempDir::new();
    dags.write(
        "names.py",
        r#"
from airflow.utils.context import Context
try:
    from airflow.providers.standard.operators.python import get_current_context
except ImportError:
    from airflow.operators.python import get_current_context

def extract_last_name(full_name: str):
    name, last_name = full_name.split(" ")
    context = get_current_context()
    context["custom_mapping_key"] = name
    return last_name
"#,
    );
    let dag = load(
        &dags,
        r#"
d:
  start_date: 2025-01-01
  tasks:
    names:
      decorator: airflow.decorators.task
      python_callable: names.extract_last_name
      map_index_template: "{{ custom_mapping_key }}"
      expand:
        full_name: [Lucy Black, Vera Santos]
"#,
    );
    let task = dag.task("names").unwrap();
    let mut ctx = context(&dag, "names", dags.path());
    ctx.map_index = 1;
    let rendered = render_task(task, &ctx).unwrap();
    let spec = RunSpec::new(task, rendered, &ctx);
    let added = spec.context_out.clone();
    let (outcome, lines) = run_collect(spec).await;
    assert_eq!(
        outcome,
        Outcome::Success {
            xcom: Some(json!("Santos"))
        },
        "{lines:?}"
    );
    let added = added.lock().unwrap().clone();
    assert_eq!(
        flow_executor::render_map_index(task, &ctx, &added)
            .unwrap()
            .unwrap(),
        "Vera"
    );
}
