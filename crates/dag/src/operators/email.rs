//! `operator: email`: sends a message over SMTP (Airflow's EmailOperator), through an `smtp`
//! connection or the `FLOW__SMTP__*` settings.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::{OperatorKind, ReadOp};
use crate::build::{Ctx, check_template, check_templates_in};
use crate::dag::Operator;
use crate::de::to_json;
use crate::spec::{AnyValue, Raw};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailSpec {
    /// Recipients: a list, or addresses separated by commas or semicolons (templated).
    #[schemars(with = "serde_json::Value")]
    pub to: Raw<AnyValue>,
    /// Templated.
    pub subject: String,
    /// The HTML body (templated).
    pub html_content: String,
    /// Files to attach (templated paths; relative ones under the dags folder).
    #[schemars(with = "Option<serde_json::Value>")]
    pub files: Option<Raw<AnyValue>>,
    #[schemars(with = "Option<serde_json::Value>")]
    pub cc: Option<Raw<AnyValue>>,
    #[schemars(with = "Option<serde_json::Value>")]
    pub bcc: Option<Raw<AnyValue>>,
    /// `mixed` (default) or `alternative`, as the multipart message's subtype.
    pub mime_subtype: Option<String>,
    pub mime_charset: Option<String>,
    /// An `smtp` connection (host, port, login/password; extra `disable_tls`, `disable_ssl`,
    /// `from_email`, `timeout`); without one the `FLOW__SMTP__*` settings apply.
    pub conn_id: Option<String>,
    /// The sender (default: the connection's `from_email`, else `FLOW__SMTP__SMTP_MAIL_FROM`).
    pub from_email: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailOperator {
    /// Every string templated.
    pub to: Json,
    pub subject: String,
    pub html_content: String,
    pub files: Json,
    pub cc: Json,
    pub bcc: Json,
    pub mime_subtype: String,
    pub mime_charset: String,
    pub conn_id: Option<String>,
    pub from_email: Option<String>,
}

fn addresses(ctx: &mut Ctx<'_>, read: &ReadOp<'_>, key: &str, raw: Option<&Raw<AnyValue>>) -> Json {
    let Some(raw) = raw else {
        return Json::Null;
    };
    check_templates_in(ctx, key, &raw.node);
    match to_json(&raw.node) {
        v @ (Json::String(_) | Json::Null) => v,
        Json::Array(items) if items.iter().all(Json::is_string) => Json::Array(items),
        other => {
            ctx.error(
                read.span_of(key),
                format!("`{key}`: expected an address or a list of addresses, found `{other}`"),
            );
            Json::Null
        }
    }
}

pub(crate) struct Email;

impl OperatorKind for Email {
    const NAME: &'static str = "email";
    const ALIASES: &'static [&'static str] = &[
        "EmailOperator",
        "airflow.operators.email.EmailOperator",
        "airflow.operators.email_operator.EmailOperator",
        "airflow.providers.smtp.operators.smtp.EmailOperator",
        "airflow.providers.standard.operators.email.EmailOperator",
    ];
    const MODULE: &'static str = "airflow.providers.smtp.operators.smtp";
    const CLASS: &'static str = "EmailOperator";
    const TEMPLATE_FIELDS: &'static [&'static str] = &["to", "subject", "html_content", "files"];
    const UI_COLOR: &'static str = "#e6faf9";
    type Spec = EmailSpec;

    fn build(ctx: &mut Ctx<'_>, spec: Self::Spec, read: &mut ReadOp<'_>) -> Option<Operator> {
        let to = addresses(ctx, read, "to", Some(&spec.to));
        if to.is_null() || to.as_str().is_some_and(|s| s.trim().is_empty()) {
            ctx.error(read.span_of("to"), "`to` names no recipient");
        }
        let cc = addresses(ctx, read, "cc", spec.cc.as_ref());
        let bcc = addresses(ctx, read, "bcc", spec.bcc.as_ref());
        let files = addresses(ctx, read, "files", spec.files.as_ref());
        check_template(ctx, "subject", &spec.subject, read.span_of("subject"));
        check_template(
            ctx,
            "html_content",
            &spec.html_content,
            read.span_of("html_content"),
        );
        let mime_subtype = spec.mime_subtype.unwrap_or_else(|| "mixed".to_owned());
        if !matches!(mime_subtype.as_str(), "mixed" | "alternative" | "related") {
            ctx.error(
                read.span_of("mime_subtype"),
                format!("`mime_subtype`: `{mime_subtype}` is not mixed, alternative or related"),
            );
        }
        if let Some(id) = &spec.conn_id
            && let Err(e) = flow_model::ids::validate_id("conn_id", id)
        {
            ctx.error(read.span_of("conn_id"), format!("`conn_id`: {e}"));
        }
        Some(Operator::Email(EmailOperator {
            to,
            subject: spec.subject,
            html_content: spec.html_content,
            files,
            cc,
            bcc,
            mime_subtype,
            mime_charset: spec.mime_charset.unwrap_or_else(|| "utf-8".to_owned()),
            conn_id: spec.conn_id,
            from_email: spec.from_email,
        }))
    }
}
