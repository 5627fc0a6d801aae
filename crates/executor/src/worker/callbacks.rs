//! The callback runner: beside the claim loop of every worker, it claims callback requests
//! (`flow_store::callbacks`), runs them (a Python callable, a bash command, a webhook, an
//! email) with a timeout, and records each attempt in the request and, for a task's
//! callbacks, in the task instance's log. It never changes a task instance or a run, and it
//! never holds up a try: a slow webhook only keeps one of its slots busy.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::Utc;
use flow_dag::callbacks::{Callback, CallbackEvent, url_host};
use flow_dag::{Dag, Task};
use flow_store::{CallbackRow, TiKey};
use serde_json::{Value as Json, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::{Job, system_line, to_store_line};
use crate::render::{RenderedTask, Renderer, TryOf};
use crate::{LogLine, Outcome, RunContext, RunSpec, XcomMap};

/// Callbacks a runner runs at once.
const PARALLEL: usize = 4;
/// The longest a callback may run (a Python callable, a command, an HTTP call, an email).
const CALLBACK_TIMEOUT: StdDuration = StdDuration::from_secs(60);
/// A webhook's own timeout, unless it sets one.
const WEBHOOK_TIMEOUT: StdDuration = StdDuration::from_secs(10);
/// How often an idle runner looks for callbacks.
const POLL: StdDuration = StdDuration::from_secs(1);
/// The most one attempt may take, preparation (reading the DAG, the run, a bundle) included:
/// well inside the store's lease, so that an attempt never overlaps its own retry.
const ATTEMPT_BUDGET: StdDuration = StdDuration::from_secs(90);

/// Runs until `shutdown` turns true.
pub(super) async fn run(job: Arc<Job>, mut shutdown: watch::Receiver<bool>) {
    let runner = format!("{}/callbacks", job.config.worker_id);
    let mut running: JoinSet<()> = JoinSet::new();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(_) = running.join_next(), if !running.is_empty() => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            break;
        }
        let free = PARALLEL.saturating_sub(running.len());
        if free == 0 {
            continue;
        }
        match job
            .store
            .callback_claim(&runner, i64::try_from(free).unwrap_or(1), Utc::now())
            .await
        {
            Ok(rows) => {
                warned = false;
                for row in rows {
                    let (job, runner) = (job.clone(), runner.clone());
                    running.spawn(async move { run_one(&job, &runner, row).await });
                }
            }
            Err(e) if !warned => {
                warn!(error = %e, "could not claim callbacks; retrying");
                warned = true;
            }
            Err(e) => debug!(error = %e, "could not claim callbacks"),
        }
    }
    // Callbacks under way get their whole budget to finish and be recorded; any still
    // running after it are taken over by another runner when their lease ends.
    let _ = tokio::time::timeout(ATTEMPT_BUDGET + StdDuration::from_secs(10), async {
        while running.join_next().await.is_some() {}
    })
    .await;
}

/// Runs one claimed callback and records the attempt.
async fn run_one(job: &Job, runner: &str, row: CallbackRow) {
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(ATTEMPT_BUDGET, attempt(job, &row))
        .await
        .unwrap_or_else(|_| Err(fail(format!("gave up after {}s", ATTEMPT_BUDGET.as_secs()))));
    let (ok, mut lines) = match result {
        Ok(lines) => (true, lines),
        Err((reason, mut lines)) => {
            lines.push(system_line(format!("failed: {reason}")));
            (false, lines)
        }
    };
    let header = format!(
        "{} #{} ({}), attempt {} of {}: {} in {:.1}s",
        row.event,
        row.index + 1,
        row.description,
        row.attempts,
        flow_store::CALLBACK_MAX_ATTEMPTS,
        if ok { "done" } else { "failed" },
        started.elapsed().as_secs_f64()
    );
    lines.insert(0, system_line(header.clone()));
    if !ok && row.attempts < flow_store::CALLBACK_MAX_ATTEMPTS {
        lines.push(system_line("retried after a backoff"));
    }
    let text: String = lines
        .iter()
        .map(|l| format!("[{}] {}\n", l.at.format("%Y-%m-%dT%H:%M:%SZ"), l.text))
        .collect();
    if let Some(task_id) = &row.target.task_id {
        let key = TiKey::new(
            &row.target.dag_id,
            &row.target.run_id,
            task_id,
            row.target.map_index,
        );
        let stored: Vec<flow_store::LogLine> = lines.into_iter().map(to_store_line).collect();
        if let Err(e) = job
            .store
            .log_append(&key, row.target.try_number, &stored)
            .await
        {
            warn!(error = %e, "could not store a callback's log lines");
        }
    }
    flow_metrics::metrics()
        .callbacks
        .get_or_create(&[
            ("event", row.event.to_string()),
            ("outcome", if ok { "success" } else { "failed" }.to_owned()),
        ])
        .inc();
    if ok {
        debug!(dag_id = %row.target.dag_id, run_id = %row.target.run_id, event = %row.event, "{header}");
    } else {
        warn!(dag_id = %row.target.dag_id, run_id = %row.target.run_id, task_id = ?row.target.task_id, event = %row.event, "{header}");
    }
    if let Err(e) = job
        .store
        .callback_attempt_done(&row, runner, ok, &text, Utc::now())
        .await
    {
        warn!(error = %e, "could not record a callback attempt; it runs again when its lease ends");
    }
}

type Failure = (String, Vec<LogLine>);

fn fail(reason: impl Into<String>) -> Failure {
    (reason.into(), Vec::new())
}

/// The callback a row names, in the DAG as it is now.
fn callback_of<'d>(dag: &'d Dag, row: &CallbackRow) -> Result<&'d Callback, String> {
    let event = CallbackEvent::parse(&row.event)
        .ok_or_else(|| format!("unknown callback event `{}`", row.event))?;
    let list = match &row.target.task_id {
        Some(task_id) => dag
            .task(task_id)
            .ok_or_else(|| format!("task `{task_id}` is no longer in the DAG"))?
            .callbacks
            .get(event),
        None => dag.callbacks.get(event),
    };
    let callback = usize::try_from(row.index)
        .ok()
        .and_then(|i| list.get(i))
        .ok_or_else(|| format!("the DAG no longer has {} #{}", row.event, row.index + 1))?;
    // The DAG changed since the event: not the callback the event fired.
    if callback.describe() != row.description {
        return Err(format!(
            "{} #{} is now `{}`, not `{}`: the DAG changed since the event",
            row.event,
            row.index + 1,
            callback.describe(),
            row.description
        ));
    }
    Ok(callback)
}

/// The task whose context the callback gets: its own, or for a DAG's callback the run's
/// last task instance to end (Airflow hands a DAG callback a task instance of the run too).
async fn context_task(job: &Job, dag: &Dag, row: &CallbackRow) -> Result<(Task, i64, i64), String> {
    if let Some(task_id) = &row.target.task_id {
        let task = dag
            .task(task_id)
            .cloned()
            .ok_or_else(|| format!("task `{task_id}` is no longer in the DAG"))?;
        let key = TiKey::new(
            &row.target.dag_id,
            &row.target.run_id,
            task_id,
            row.target.map_index,
        );
        let max_tries = job
            .store
            .ti_get(&key)
            .await
            .map_err(|e| e.to_string())?
            .map_or(0, |t| t.max_tries);
        return Ok((task, row.target.try_number, max_tries));
    }
    let tis = job
        .store
        .ti_list_for_run(&row.target.dag_id, &row.target.run_id)
        .await
        .map_err(|e| e.to_string())?;
    let last = tis
        .iter()
        .filter(|t| dag.task(&t.key.task_id).is_some())
        .max_by_key(|t| t.end_date);
    match last {
        Some(t) => Ok((
            dag.task(&t.key.task_id).cloned().ok_or("no task")?,
            t.try_number,
            t.max_tries,
        )),
        None => dag
            .tasks
            .last()
            .cloned()
            .map(|t| (t, 0, 0))
            .ok_or_else(|| "the DAG has no task".to_owned()),
    }
}

/// One attempt: the log lines it produced, or why it failed.
async fn attempt(job: &Job, row: &CallbackRow) -> Result<Vec<LogLine>, Failure> {
    let dag = job
        .dag(&row.target.dag_id)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let callback = callback_of(&dag, row).map_err(fail)?.clone();
    let run = job
        .store
        .dag_run_get(&row.target.dag_id, &row.target.run_id)
        .await
        .map_err(|e| fail(e.to_string()))?
        .ok_or_else(|| fail(format!("dag run `{}` is gone", row.target.run_id)))?;
    let (task, try_number, max_tries) = context_task(job, &dag, row).await.map_err(fail)?;
    let dags_folder = match &job.config.bundle_dir {
        Some(dir) => job
            .bundle(dir, &row.target.dag_id)
            .await
            .map_err(|e| fail(e.to_string()))?,
        None => job.config.dags_folder.clone(),
    };
    let try_of = TryOf {
        run_id: run.run_id.clone(),
        run_type: run.run_type.as_str().to_owned(),
        logical_date: run.logical_date,
        data_interval_start: run.data_interval_start,
        data_interval_end: run.data_interval_end,
        run_after: run.run_after,
        run_start_date: run.start_date,
        conf: run.conf.clone(),
        map_index: row.target.map_index,
        try_number: u32::try_from(try_number).unwrap_or(0),
        max_tries: u32::try_from(max_tries).unwrap_or(0),
    };
    let ctx = RunContext::new(&dag, &task, try_of, &dags_folder, XcomMap::new())
        .map_err(|e| fail(e.to_string()))?;
    let facts = Facts::of(job, row, &ctx);
    let render = |field: &str, source: &str| {
        Renderer::new(&task, &ctx)
            .string(field, source)
            .map_err(|e| fail(e.to_string()))
    };
    let rendered = match &callback {
        Callback::Webhook {
            url,
            conn_id,
            text,
            timeout,
            payload,
        } => {
            let text = match text {
                Some(t) => render("text", t)?,
                None => facts.default_text(),
            };
            let call = WebhookCall {
                url: url.as_deref(),
                conn_id: conn_id.as_deref(),
                text: &text,
                timeout: timeout.map_or(WEBHOOK_TIMEOUT, StdDuration::from_secs),
                payload,
            };
            return webhook(job, &call, &facts).await;
        }
        Callback::Python { callable, kwargs } => RenderedTask::Python {
            callable: callable.clone(),
            op_args: Vec::new(),
            op_kwargs: kwargs.clone(),
            templates_dict: Default::default(),
            show_return_value_in_logs: false,
        },
        Callback::Bash { bash_command } => RenderedTask::Bash {
            command: render("bash_command", bash_command)?,
            env: None,
            append_env: false,
            cwd: None,
            skip_on_exit_code: Vec::new(),
        },
        Callback::Email {
            to,
            cc,
            subject,
            html_content,
            conn_id,
            from_email,
        } => RenderedTask::Email(crate::operators::email::EmailRun {
            to: to.clone(),
            cc: cc.clone(),
            bcc: Vec::new(),
            subject: match subject {
                Some(s) => render("subject", s)?,
                None => facts.default_subject(),
            },
            html_content: match html_content {
                Some(h) => render("html_content", h)?,
                None => facts.default_html(),
            },
            files: Vec::new(),
            mime_subtype: "mixed".to_owned(),
            conn_id: conn_id.clone(),
            from_email: from_email.clone(),
        }),
    };
    let conn_id = rendered.conn_id().map(str::to_owned);
    let mut spec = RunSpec::new(&task, rendered, &ctx);
    spec.python = job.config.python.clone();
    spec.smtp = job.config.smtp.clone();
    spec.do_xcom_push = false;
    spec.timeout = Some(CALLBACK_TIMEOUT);
    if let Json::Object(map) = &mut spec.python_context {
        map.insert("callback".into(), facts.json());
    }
    if let Some(conn_id) = conn_id {
        let conn = job
            .connection(&conn_id)
            .await
            .map_err(|e| fail(e.to_string()))?;
        spec = spec.with_connection(conn).map_err(fail)?;
    }
    let (log_tx, mut log_rx) = mpsc::channel::<LogLine>(256);
    let collector = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(l) = log_rx.recv().await {
            // A chatty callback keeps its first lines; the rest are counted.
            if lines.len() < 200 {
                lines.push(l);
            }
        }
        lines
    });
    let (_cancel_tx, cancel_rx) = watch::channel(false);
    // The callback's own output is masked as it is produced; its failure's reason is
    // masked here (an exception may carry a secret it was given).
    let masker = spec.masker.clone();
    let outcome = crate::run(spec, log_tx, cancel_rx).await;
    let lines = collector.await.unwrap_or_default();
    let outcome = match outcome {
        Outcome::Failed { reason } => Outcome::Failed {
            reason: masker.mask(&reason).into_owned(),
        },
        other => other,
    };
    match outcome {
        Outcome::Success { .. } | Outcome::Skipped { .. } => Ok(lines),
        Outcome::Failed { reason } | Outcome::FailedNoRetry { reason } => Err((reason, lines)),
        Outcome::TimedOut => Err((
            format!("timed out after {}s", CALLBACK_TIMEOUT.as_secs()),
            lines,
        )),
        other => Err((format!("unexpected outcome {other:?}"), lines)),
    }
}

/// What a callback is told about its event.
struct Facts {
    dag_id: String,
    run_id: String,
    task_id: Option<String>,
    map_index: i64,
    try_number: i64,
    event: String,
    state: String,
    reason: Option<String>,
    log_url: String,
    logical_date: Option<String>,
}

impl Facts {
    fn of(job: &Job, row: &CallbackRow, ctx: &RunContext) -> Facts {
        let base = job.config.base_url.trim_end_matches('/');
        let enc = url_component;
        let log_url = match &row.target.task_id {
            Some(t) => {
                let mut url = format!(
                    "{base}/dags/{}/runs/{}/tasks/{}",
                    enc(&row.target.dag_id),
                    enc(&row.target.run_id),
                    enc(t)
                );
                if row.target.map_index >= 0 {
                    url.push_str(&format!("?map_index={}", row.target.map_index));
                }
                url
            }
            None => format!(
                "{base}/dags/{}?tab=graph&run_id={}",
                enc(&row.target.dag_id),
                enc(&row.target.run_id)
            ),
        };
        Facts {
            dag_id: row.target.dag_id.clone(),
            run_id: row.target.run_id.clone(),
            task_id: row.target.task_id.clone(),
            map_index: row.target.map_index,
            try_number: row.target.try_number,
            event: row.event.clone(),
            state: row.state.clone(),
            reason: row.reason.clone(),
            log_url,
            logical_date: ctx.logical_date.map(|d| d.to_rfc3339()),
        }
    }

    fn json(&self) -> Json {
        json!({
            "dag_id": self.dag_id,
            "run_id": self.run_id,
            "task_id": self.task_id,
            "map_index": self.map_index,
            "try_number": self.try_number,
            "event": self.event,
            "state": self.state,
            "reason": self.reason,
            "log_url": self.log_url,
            "logical_date": self.logical_date,
        })
    }

    fn what(&self) -> String {
        match &self.task_id {
            Some(t) if self.map_index >= 0 => {
                format!("Task {}.{t}[{}]", self.dag_id, self.map_index)
            }
            Some(t) => format!("Task {}.{t}", self.dag_id),
            None => format!("DAG {}", self.dag_id),
        }
    }

    fn default_text(&self) -> String {
        let mut text = match &self.task_id {
            Some(_) => format!(
                "{} {} (try {}) in run {}",
                self.what(),
                self.state,
                self.try_number,
                self.run_id
            ),
            None => format!("{} run {} {}", self.what(), self.run_id, self.state),
        };
        if let Some(r) = &self.reason {
            text.push_str(&format!(": {r}"));
        }
        text.push_str(&format!("\nLog: {}", self.log_url));
        text
    }

    fn default_subject(&self) -> String {
        format!("flow: {} {} (run {})", self.what(), self.state, self.run_id)
    }

    fn default_html(&self) -> String {
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
        };
        format!(
            "<p>{} <b>{}</b> (try {}) in run <code>{}</code>.</p>{}<p><a href=\"{}\">Log</a></p>",
            esc(&self.what()),
            esc(&self.state),
            self.try_number,
            esc(&self.run_id),
            self.reason
                .as_deref()
                .map(|r| format!("<pre>{}</pre>", esc(r)))
                .unwrap_or_default(),
            esc(&self.log_url)
        )
    }
}

/// `s` percent-encoded for a URL path segment or query value.
fn url_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The URL a webhook connection names: an `http` connection's base URL (and its extra as
/// headers), or a Slack webhook connection (`slackwebhook`: host and the token in the
/// password, or the whole URL in the host or in extra `webhook_url`).
fn connection_url(conn: &flow_model::Connection) -> Result<String, String> {
    let extra: Json = conn
        .extra
        .as_deref()
        .filter(|e| !e.trim().is_empty())
        .and_then(|e| serde_json::from_str(e).ok())
        .unwrap_or(Json::Null);
    if let Some(u) = extra.get("webhook_url").and_then(Json::as_str) {
        return Ok(u.to_owned());
    }
    let host = conn.host.clone().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("connection `{}` has no host", conn.conn_id));
    }
    let mut url = if host.contains("://") {
        host
    } else {
        let scheme = conn
            .schema
            .as_deref()
            .filter(|s| matches!(*s, "http" | "https"))
            .unwrap_or("https");
        format!("{scheme}://{host}")
    };
    if let Some(port) = conn.port {
        url = format!("{}:{port}", url.trim_end_matches('/'));
    }
    if conn.conn_type == "slack" {
        // An API token is no webhook: never put it in a URL.
        return Err(format!(
            "connection `{}` is a Slack API connection; notifications post to an incoming webhook: use a `slackwebhook` connection",
            conn.conn_id
        ));
    }
    if conn.conn_type == "slackwebhook"
        && let Some(token) = conn.password.as_deref().filter(|p| !p.is_empty())
    {
        url = format!(
            "{}/{}",
            url.trim_end_matches('/'),
            token.trim_start_matches('/')
        );
    }
    Ok(url)
}

/// A webhook to call, its templates rendered.
struct WebhookCall<'a> {
    url: Option<&'a str>,
    conn_id: Option<&'a str>,
    text: &'a str,
    timeout: StdDuration,
    payload: &'a serde_json::Map<String, Json>,
}

/// POSTs the event as JSON (Slack-compatible: `text` first, then the facts and the payload).
async fn webhook(
    job: &Job,
    call: &WebhookCall<'_>,
    facts: &Facts,
) -> Result<Vec<LogLine>, Failure> {
    let WebhookCall {
        url,
        conn_id,
        text,
        timeout,
        payload,
    } = *call;
    let url = match (url, conn_id) {
        (Some(u), _) => u.to_owned(),
        (None, Some(c)) => {
            let conn = job.connection(c).await.map_err(|e| fail(e.to_string()))?;
            connection_url(&conn).map_err(fail)?
        }
        (None, None) => return Err(fail("no url and no connection")),
    };
    let host = url_host(&url);
    let mut body = serde_json::Map::new();
    body.insert("text".into(), Json::String(text.to_owned()));
    if let Json::Object(f) = facts.json() {
        body.extend(f);
    }
    body.extend(payload.clone());
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("flow/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| fail(format!("HTTP client: {e}")))?;
    let response = client
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(Json::Object(body).to_string())
        .send()
        .await
        // The URL may carry a secret (a Slack token): errors name the host only.
        .map_err(|e| fail(format!("POST to {host}: {}", e.without_url())))?;
    let status = response.status();
    let line = system_line(format!("POST to {host}: {status}"));
    if status.is_success() {
        return Ok(vec![line]);
    }
    let body: String = response
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    Err((
        format!("POST to {host} answered {status}: {body}"),
        vec![line],
    ))
}
