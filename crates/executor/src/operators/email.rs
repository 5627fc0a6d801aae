//! `email`: a message built and sent over SMTP with lettre, with Airflow's settings: an `smtp`
//! connection when the task names one, else `FLOW__SMTP__*` (STARTTLS by default, implicit
//! TLS with `smtp_ssl`, login when a user is set).

use std::path::Path;
use std::time::Duration;

use flow_dag::{EmailOperator, Task};
use flow_model::Connection;
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::Value as Json;

use crate::process::LogSink;
use crate::render::{RenderError, RenderedTask, Renderer, RunContext};
use crate::runner::{Outcome, RunSpec};

/// Airflow's `[smtp]` section, from `FLOW__SMTP__*` (the binary reads the environment).
#[derive(Clone, PartialEq)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    pub starttls: bool,
    pub ssl: bool,
    pub mail_from: Option<String>,
    pub timeout: Duration,
}

/// The password never shows.
impl std::fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("starttls", &self.starttls)
            .field("ssl", &self.ssl)
            .finish_non_exhaustive()
    }
}

impl Default for SmtpSettings {
    /// Airflow's defaults: localhost:25 with STARTTLS.
    fn default() -> Self {
        SmtpSettings {
            host: "localhost".to_owned(),
            port: 25,
            user: None,
            password: None,
            starttls: true,
            ssl: false,
            mail_from: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// A message, rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct EmailRun {
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub subject: String,
    pub html_content: String,
    pub files: Vec<String>,
    pub mime_subtype: String,
    pub conn_id: Option<String>,
    pub from_email: Option<String>,
}

/// Addresses from a string (split on `,` and `;`, as Airflow's `get_email_address_list`) or
/// a list.
fn address_list(v: &Json) -> Vec<String> {
    let split = |s: &str| -> Vec<String> {
        s.split([',', ';'])
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect()
    };
    match v {
        Json::String(s) => split(s),
        Json::Array(items) => items
            .iter()
            .filter_map(Json::as_str)
            .flat_map(split)
            .collect(),
        _ => Vec::new(),
    }
}

pub(crate) fn render(
    task: &Task,
    op: &EmailOperator,
    ctx: &RunContext,
) -> Result<RenderedTask, RenderError> {
    let r = Renderer::new(task, ctx);
    Ok(RenderedTask::Email(EmailRun {
        to: address_list(&r.json("to", &op.to)?),
        cc: address_list(&r.json("cc", &op.cc)?),
        bcc: address_list(&r.json("bcc", &op.bcc)?),
        subject: r.string("subject", &op.subject)?,
        html_content: r.string("html_content", &op.html_content)?,
        files: address_list(&r.json("files", &op.files)?),
        mime_subtype: op.mime_subtype.clone(),
        conn_id: op.conn_id.clone(),
        from_email: op.from_email.clone(),
    }))
}

/// Where to send and how: the connection's fields over the settings.
fn settings_for(conn: Option<&Connection>, base: &SmtpSettings) -> Result<SmtpSettings, String> {
    let Some(conn) = conn else {
        return Ok(base.clone());
    };
    if !matches!(conn.conn_type.as_str(), "smtp" | "email") {
        return Err(format!(
            "connection `{}` is of type `{}`; email needs an smtp connection",
            conn.conn_id, conn.conn_type
        ));
    }
    let extra: serde_json::Map<String, Json> = conn
        .extra
        .as_deref()
        .filter(|e| !e.trim().is_empty())
        .map(serde_json::from_str)
        .transpose()
        .map_err(|_| format!("connection `{}`: extra is not a JSON object", conn.conn_id))?
        .unwrap_or_default();
    let flag = |k: &str| extra.get(k).and_then(Json::as_bool);
    // The smtp provider's extras (`disable_ssl`, `disable_tls`) and plain `ssl`/`starttls`;
    // without them the settings decide.
    let ssl = flag("ssl")
        .or_else(|| flag("disable_ssl").map(|d| !d))
        .unwrap_or(base.ssl);
    let starttls = flag("starttls")
        .or_else(|| flag("disable_tls").map(|d| !d))
        .unwrap_or(base.starttls);
    Ok(SmtpSettings {
        host: conn.host.clone().unwrap_or_else(|| base.host.clone()),
        port: conn.port.unwrap_or(if ssl { 465 } else { base.port }),
        user: conn.login.clone().filter(|l| !l.is_empty()),
        password: conn.password.clone(),
        starttls,
        ssl,
        mail_from: extra
            .get("from_email")
            .and_then(Json::as_str)
            .map(str::to_owned)
            .or_else(|| base.mail_from.clone()),
        timeout: extra
            .get("timeout")
            .and_then(Json::as_f64)
            .and_then(|t| Duration::try_from_secs_f64(t).ok())
            .filter(|t| !t.is_zero())
            .unwrap_or(base.timeout),
    })
}

fn mailbox(kind: &str, address: &str) -> Result<Mailbox, String> {
    address
        .parse::<Mailbox>()
        .map_err(|e| format!("`{kind}`: `{address}` is not an email address: {e}"))
}

/// Builds and sends the message.
pub(crate) async fn send(spec: &RunSpec, email: &EmailRun, logs: &LogSink) -> Outcome {
    match send_inner(spec, email, logs).await {
        Ok(()) => Outcome::Success { xcom: None },
        Err(reason) => Outcome::Failed { reason },
    }
}

async fn send_inner(spec: &RunSpec, email: &EmailRun, logs: &LogSink) -> Result<(), String> {
    let base = spec.smtp.clone().unwrap_or_default();
    let settings = settings_for(spec.connection.as_ref(), &base)?;
    let from = email
        .from_email
        .clone()
        .or_else(|| settings.mail_from.clone())
        .ok_or("no sender: set `from_email`, the connection's extra `from_email`, or FLOW__SMTP__SMTP_MAIL_FROM")?;
    if email.to.is_empty() {
        return Err("`to` names no recipient".to_owned());
    }
    let mut builder = Message::builder()
        .from(mailbox("from_email", &from)?)
        .subject(email.subject.clone());
    for a in &email.to {
        builder = builder.to(mailbox("to", a)?);
    }
    for a in &email.cc {
        builder = builder.cc(mailbox("cc", a)?);
    }
    for a in &email.bcc {
        builder = builder.bcc(mailbox("bcc", a)?);
    }
    let html = SinglePart::html(email.html_content.clone());
    let mut body = match email.mime_subtype.as_str() {
        "alternative" => MultiPart::alternative().singlepart(html),
        "related" => MultiPart::related().singlepart(html),
        _ => MultiPart::mixed().singlepart(html),
    };
    for file in &email.files {
        let path = crate::relocate(&spec.source_root, &spec.dags_folder, Path::new(file));
        let path = if path.is_absolute() {
            path
        } else {
            spec.dags_folder.join(path)
        };
        let content = tokio::fs::read(&path)
            .await
            .map_err(|e| format!("`files`: cannot read {}: {e}", path.display()))?;
        let name = path.file_name().map_or_else(
            || "attachment".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        );
        let ctype = ContentType::parse("application/octet-stream")
            .map_err(|e| format!("content type: {e}"))?;
        body = body.singlepart(Attachment::new(name).body(content, ctype));
    }
    let message = builder
        .multipart(body)
        .map_err(|e| format!("cannot build the message: {e}"))?;

    let transport = transport(&settings)?;
    let recipients = email.to.len() + email.cc.len() + email.bcc.len();
    logs.system(&format!(
        "Sending email to {recipients} recipient(s) through {}:{}",
        settings.host, settings.port
    ))
    .await;
    let where_ = match &email.conn_id {
        Some(id) => format!("connection `{id}`"),
        None => "FLOW__SMTP__ settings".to_owned(),
    };
    transport
        .send(message)
        .await
        .map_err(|e| format!("SMTP ({where_}, {}:{}): {e}", settings.host, settings.port))?;
    logs.system("Email sent").await;
    Ok(())
}

/// The SMTP client for these settings: implicit TLS, STARTTLS or plain, with a login when
/// a user is set.
fn transport(settings: &SmtpSettings) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let tls_params = TlsParameters::new(settings.host.clone())
        .map_err(|e| format!("TLS for {}: {e}", settings.host))?;
    let tls = if settings.ssl {
        Tls::Wrapper(tls_params)
    } else if settings.starttls {
        Tls::Required(tls_params)
    } else {
        Tls::None
    };
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.host)
        .port(settings.port)
        .tls(tls)
        .timeout(Some(settings.timeout));
    if let Some(user) = &settings.user {
        transport = transport.credentials(Credentials::new(
            user.clone(),
            settings.password.clone().unwrap_or_default(),
        ));
    }
    Ok(transport.build())
}

/// Connects to the connection's SMTP server (EHLO, TLS and login as a send would), then
/// `NOOP`: a connection test. Returns where it connected.
pub(crate) async fn probe(conn: &Connection, timeout: Duration) -> Result<String, String> {
    let base = SmtpSettings {
        timeout,
        ..SmtpSettings::default()
    };
    let settings = settings_for(Some(conn), &base)?;
    let server = format!("{}:{}", settings.host, settings.port);
    match transport(&settings)?.test_connection().await {
        Ok(true) => Ok(format!("SMTP server {server} answered")),
        Ok(false) => Err(format!("SMTP server {server} did not accept NOOP")),
        Err(e) => Err(format!("SMTP server {server}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_as_airflow() {
        assert_eq!(
            address_list(&Json::from("a@x.io, b@x.io;c@x.io")),
            vec!["a@x.io", "b@x.io", "c@x.io"]
        );
        assert_eq!(
            address_list(&serde_json::json!(["a@x.io", "b@x.io,c@x.io"])),
            vec!["a@x.io", "b@x.io", "c@x.io"]
        );
    }
}
