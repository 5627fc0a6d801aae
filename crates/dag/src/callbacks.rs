//! Callbacks and notifiers: what runs when a task instance or a run reaches a state
//! (`on_success_callback`, `on_failure_callback`, `on_retry_callback`, `on_execute_callback`,
//! `on_skipped_callback`), in dag-factory's forms: `module.function`, `{callback: path, kwargs}`,
//! `*_callback_name` + `*_callback_file`, lists of these; plus flow's `{bash_command: ...}`
//! and the built-in notifiers (`webhook`, `email`, and Airflow's Slack and SMTP notifiers,
//! which they stand in for). `email` with `email_on_failure` / `email_on_retry` is Airflow's
//! implicit email notifier.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::PythonCallable;
use crate::build::{Ctx, is_dotted_identifier, is_identifier};
use crate::de::to_json;
use crate::yaml::{Node, Span, Value};

/// When a callback fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallbackEvent {
    OnSuccess,
    OnFailure,
    OnRetry,
    OnExecute,
    OnSkipped,
}

impl CallbackEvent {
    pub const ALL: [CallbackEvent; 5] = [
        CallbackEvent::OnSuccess,
        CallbackEvent::OnFailure,
        CallbackEvent::OnRetry,
        CallbackEvent::OnExecute,
        CallbackEvent::OnSkipped,
    ];

    /// The key as Airflow names it: `on_failure_callback`.
    pub fn key(self) -> &'static str {
        match self {
            CallbackEvent::OnSuccess => "on_success_callback",
            CallbackEvent::OnFailure => "on_failure_callback",
            CallbackEvent::OnRetry => "on_retry_callback",
            CallbackEvent::OnExecute => "on_execute_callback",
            CallbackEvent::OnSkipped => "on_skipped_callback",
        }
    }

    pub fn parse(key: &str) -> Option<CallbackEvent> {
        CallbackEvent::ALL.into_iter().find(|e| e.key() == key)
    }
}

/// One callback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Callback {
    /// A Python callable called with the context (and the mapping's other keys as keyword
    /// arguments); a class (a notifier) is made with the keyword arguments and called with
    /// the context.
    Python {
        callable: PythonCallable,
        #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
        kwargs: IndexMap<String, Json>,
    },
    /// A shell command (templated, with the context's environment).
    Bash { bash_command: String },
    /// An HTTP POST of a JSON body describing the event, with a Slack-compatible `text`.
    Webhook {
        /// A URL, or a connection (`http`, or Slack's `slackwebhook`) giving it.
        url: Option<String>,
        conn_id: Option<String>,
        /// Templated; a default names the DAG, run, task, try and state.
        text: Option<String>,
        /// Seconds to wait for the answer (10 by default, at most 60).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout: Option<u64>,
        /// More keys for the body (Slack's `channel`, `username`, `blocks`, ...).
        #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
        payload: serde_json::Map<String, Json>,
    },
    /// An email (SMTP).
    Email {
        to: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        cc: Vec<String>,
        /// Templated; a default names the DAG, task and state.
        subject: Option<String>,
        html_content: Option<String>,
        conn_id: Option<String>,
        from_email: Option<String>,
    },
}

impl Callback {
    /// A short description for logs and pages: `python module.func`, `webhook`, `email to a@b`.
    pub fn describe(&self) -> String {
        match self {
            Callback::Python { callable, .. } => match callable {
                PythonCallable::Module { module, function } => {
                    format!("python {module}.{function}")
                }
                PythonCallable::File { path, function } => {
                    format!("python {function} in {}", path.display())
                }
            },
            Callback::Bash { .. } => "bash".to_owned(),
            Callback::Webhook { conn_id, url, .. } => match (conn_id, url) {
                (Some(c), _) => format!("webhook (connection {c})"),
                (None, Some(u)) => format!("webhook {}", url_host(u)),
                (None, None) => "webhook".to_owned(),
            },
            Callback::Email { to, .. } => format!("email to {}", to.join(", ")),
        }
    }
}

/// `https://hooks.example.com/T0/B0/secret` -> `hooks.example.com`: a webhook URL often holds
/// its secret in the path, so only the host is ever shown.
pub fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?', '#'])
        .next()
        .unwrap_or("")
        .rsplit('@')
        .next()
        .unwrap_or("")
        .to_owned()
}

/// A task's or a DAG's callbacks by event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Callbacks {
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub by_event: IndexMap<CallbackEvent, Vec<Callback>>,
}

impl Callbacks {
    pub fn is_empty(&self) -> bool {
        self.by_event.values().all(Vec::is_empty)
    }

    pub fn get(&self, event: CallbackEvent) -> &[Callback] {
        self.by_event.get(&event).map_or(&[], Vec::as_slice)
    }

    fn push(&mut self, event: CallbackEvent, callbacks: Vec<Callback>) {
        if !callbacks.is_empty() {
            self.by_event.entry(event).or_default().extend(callbacks);
        }
    }
}

/// Airflow's Slack notifiers: flow posts their `text` to the connection's webhook.
fn is_slack(path: &str) -> bool {
    path.starts_with("airflow.providers.slack.")
        && matches!(
            path.rsplit('.').next(),
            Some(
                "send_slack_notification"
                    | "SlackNotifier"
                    | "send_slack_webhook_notification"
                    | "SlackWebhookNotifier"
            )
        )
}

/// Airflow's SMTP notifier.
fn is_smtp(path: &str) -> bool {
    path.starts_with("airflow.providers.smtp.")
        && matches!(
            path.rsplit('.').next(),
            Some("send_smtp_notification" | "SmtpNotifier")
        )
}

fn strings(node: &Node) -> Vec<String> {
    match &node.value {
        Value::Scalar(s) => s
            .text
            .split([',', ';'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Value::Seq(items) => items
            .iter()
            .filter_map(Node::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

fn text_of(node: &Node, key: &str) -> Option<String> {
    node.get(key).and_then(Node::as_str).map(str::to_owned)
}

/// The rest of a mapping as JSON, without `skip`'s keys.
fn rest(node: &Node, skip: &[&str]) -> serde_json::Map<String, Json> {
    let mut out = serde_json::Map::new();
    for (k, v) in node.as_map().unwrap_or_default() {
        let key = k.as_str().unwrap_or("null");
        if !skip.contains(&key) {
            out.insert(key.to_owned(), to_json(v));
        }
    }
    out
}

fn module_callable(ctx: &mut Ctx<'_>, path: &str, span: Span, key: &str) -> Option<PythonCallable> {
    match path.trim().rsplit_once('.') {
        Some((module, function)) if is_dotted_identifier(module) && is_identifier(function) => {
            Some(PythonCallable::Module {
                module: module.to_owned(),
                function: function.to_owned(),
            })
        }
        _ => {
            ctx.error(
                span,
                format!("`{key}`: `{path}` is not of the form `module.function` (or a mapping with `callback`, or `bash_command`)"),
            );
            None
        }
    }
}

/// One callback, or a list of them.
fn read_callbacks(ctx: &mut Ctx<'_>, node: &Node, key: &str) -> Vec<Callback> {
    match &node.value {
        Value::Null => Vec::new(),
        Value::Seq(items) => items.iter().flat_map(|i| read_one(ctx, i, key)).collect(),
        _ => read_one(ctx, node, key).into_iter().collect(),
    }
}

fn read_one(ctx: &mut Ctx<'_>, node: &Node, key: &str) -> Option<Callback> {
    match &node.value {
        Value::Scalar(s) => match s.text.trim() {
            "webhook" | "email" => {
                ctx.error(
                    node.span,
                    format!("`{key}`: the `{}` notifier needs its settings: write `{{callback: {}, ...}}`", s.text.trim(), s.text.trim()),
                );
                None
            }
            path => module_callable(ctx, path, node.span, key).map(|callable| Callback::Python {
                callable,
                kwargs: IndexMap::new(),
            }),
        },
        Value::Map(_) => read_mapping(ctx, node, key),
        _ => {
            ctx.error(
                node.span,
                format!("`{key}`: expected `module.function`, a mapping with `callback`, or a list of them"),
            );
            None
        }
    }
}

fn read_mapping(ctx: &mut Ctx<'_>, node: &Node, key: &str) -> Option<Callback> {
    if let Some(cmd) = node.get("bash_command") {
        let Some(command) = cmd.as_str().filter(|c| !c.trim().is_empty()) else {
            ctx.error(cmd.span, format!("`{key}`: `bash_command` is a command"));
            return None;
        };
        crate::build::check_template(ctx, &format!("{key}.bash_command"), command, cmd.span);
        return Some(Callback::Bash {
            bash_command: command.to_owned(),
        });
    }
    let Some(path_node) = node.get("callback") else {
        ctx.error(
            node.span,
            format!("`{key}`: a mapping needs `callback` (a `module.function`, `webhook` or `email`) or `bash_command`"),
        );
        return None;
    };
    let Some(path) = path_node.as_str().map(str::trim) else {
        ctx.error(path_node.span, format!("`{key}`: `callback` is a name"));
        return None;
    };
    for field in ["text", "subject", "html_content"] {
        if let Some(n) = node.get(field)
            && let Some(t) = n.as_str()
        {
            crate::build::check_template(ctx, &format!("{key}.{field}"), t, n.span);
        }
    }
    if path == "webhook" || path == "flow.webhook" || is_slack(path) {
        let conn_id = text_of(node, "conn_id")
            .or_else(|| text_of(node, "http_conn_id"))
            .or_else(|| text_of(node, "slack_conn_id"))
            .or_else(|| text_of(node, "slack_webhook_conn_id"));
        let url = text_of(node, "url").or_else(|| text_of(node, "webhook_url"));
        if conn_id.is_none() && url.is_none() {
            ctx.error(
                node.span,
                format!("`{key}`: a webhook needs `url` or a connection (`conn_id`, `slack_conn_id`, `slack_webhook_conn_id`)"),
            );
            return None;
        }
        if let Some(u) = &url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            ctx.error(
                node.get("url").map_or(node.span, |n| n.span),
                format!("`{key}`: `url` must start with http:// or https://"),
            );
            return None;
        }
        let timeout = match node.get("timeout") {
            None => None,
            Some(t) => match t.as_str().and_then(|s| s.parse::<u64>().ok()) {
                Some(secs) if (1..=60).contains(&secs) => Some(secs),
                _ => {
                    ctx.error(t.span, format!("`{key}`: `timeout` is 1 to 60 seconds"));
                    return None;
                }
            },
        };
        return Some(Callback::Webhook {
            url,
            conn_id,
            text: text_of(node, "text"),
            timeout,
            payload: rest(
                node,
                &[
                    "callback",
                    "url",
                    "webhook_url",
                    "conn_id",
                    "http_conn_id",
                    "slack_conn_id",
                    "slack_webhook_conn_id",
                    "text",
                    "timeout",
                ],
            ),
        });
    }
    if path == "email" || path == "flow.email" || is_smtp(path) {
        let to = node.get("to").map(strings).unwrap_or_default();
        if to.is_empty() {
            ctx.error(node.span, format!("`{key}`: an email notifier needs `to`"));
            return None;
        }
        return Some(Callback::Email {
            to,
            cc: node.get("cc").map(strings).unwrap_or_default(),
            subject: text_of(node, "subject"),
            html_content: text_of(node, "html_content"),
            conn_id: text_of(node, "smtp_conn_id").or_else(|| text_of(node, "conn_id")),
            from_email: text_of(node, "from_email"),
        });
    }
    let callable = module_callable(ctx, path, path_node.span, key)?;
    Some(Callback::Python {
        callable,
        kwargs: rest(node, &["callback"]).into_iter().collect(),
    })
}

/// `on_success_callback_name` + `on_success_callback_file`.
fn read_name_file(ctx: &mut Ctx<'_>, name: &Node, file: &Node, key: &str) -> Option<Callback> {
    let (Some(function), Some(path)) = (name.as_str(), file.as_str()) else {
        ctx.error(
            name.span,
            format!("`{key}_name` and `{key}_file` are strings"),
        );
        return None;
    };
    if !is_identifier(function) {
        ctx.error(
            name.span,
            format!("`{key}_name`: `{function}` is not a Python identifier"),
        );
        return None;
    }
    let path = ctx.callable_file(path);
    Some(Callback::Python {
        callable: PythonCallable::File {
            path,
            function: function.to_owned(),
        },
        kwargs: IndexMap::new(),
    })
}

/// Reads the callbacks of a task (the merged node: its own keys over its groups' and the
/// DAG's `default_args`) or of a DAG, for `events`. A task that sets any of an event's keys
/// (`on_failure_callback`, `_name`, `_file`) replaces the inherited callback whole: pass its
/// own keys as `own`.
pub(crate) fn read(
    ctx: &mut Ctx<'_>,
    merged: &Node,
    own: Option<&Node>,
    events: &[CallbackEvent],
) -> Callbacks {
    let mut out = Callbacks::default();
    for event in events {
        let key = event.key();
        let sets = |n: &Node| {
            [key.to_owned(), format!("{key}_name"), format!("{key}_file")]
                .iter()
                .any(|k| n.get(k).is_some())
        };
        let node = match own {
            Some(o) if sets(o) => o,
            _ => merged,
        };
        let mut list = match node.get(key) {
            Some(n) => read_callbacks(ctx, n, key),
            None => Vec::new(),
        };
        match (
            node.get(&format!("{key}_name")),
            node.get(&format!("{key}_file")),
        ) {
            (Some(name), Some(file)) => list.extend(read_name_file(ctx, name, file, key)),
            (Some(n), None) | (None, Some(n)) => {
                ctx.error(n.span, format!("`{key}_name` and `{key}_file` go together"))
            }
            (None, None) => {}
        }
        out.push(*event, list);
    }
    out
}

/// Airflow's `email` + `email_on_failure` / `email_on_retry` (both true by default): an
/// email to those addresses when a try fails or will be retried.
pub(crate) fn read_email(ctx: &mut Ctx<'_>, node: &Node, callbacks: &mut Callbacks) {
    let Some(email) = node.get("email") else {
        return;
    };
    let to = strings(email);
    if to.is_empty() {
        if !email.is_null() {
            ctx.error(email.span, "`email`: an address or a list of addresses");
        }
        return;
    }
    let flag = |key: &str| match node.get(key) {
        None => true,
        Some(n) => !matches!(n.as_str(), Some("false" | "False" | "no" | "off" | "0")),
    };
    let mail = |event: &str| Callback::Email {
        to: to.clone(),
        cc: Vec::new(),
        subject: Some(format!(
            "Airflow alert: {{{{ ti.dag_id }}}}.{{{{ ti.task_id }}}} {event} (try {{{{ ti.try_number }}}})"
        )),
        html_content: None,
        conn_id: None,
        from_email: None,
    };
    if flag("email_on_failure") {
        callbacks.push(CallbackEvent::OnFailure, vec![mail("failed")]);
    }
    if flag("email_on_retry") {
        callbacks.push(CallbackEvent::OnRetry, vec![mail("up for retry")]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_show_only_their_host() {
        assert_eq!(
            url_host("https://hooks.slack.com/services/T0/B0/secret"),
            "hooks.slack.com"
        );
        assert_eq!(
            url_host("http://user:pw@127.0.0.1:8080/x?q=1"),
            "127.0.0.1:8080"
        );
    }
}
