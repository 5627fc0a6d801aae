//! `operator: http`: one HTTP request on an `http` connection, the (filtered) response body as
//! the XCom (Airflow's HttpOperator, formerly SimpleHttpOperator). `response_check` and
//! `response_filter` are expressions over `response` instead of Python callables; dag-factory's
//! `response_check_lambda: "lambda response: ..."` is read as the expression after the colon.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::sql_sensor::check_expression;
use super::{OperatorKind, ReadOp};
use crate::build::{Ctx, check_template, check_templates_in};
use crate::dag::Operator;
use crate::de::to_json;
use crate::spec::{AnyValue, Raw};

/// The connection HTTP operators use by default (the provider's `http_default`).
pub const DEFAULT_HTTP_CONN_ID: &str = "http_default";

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    /// An `http` connection: host (or a base URL), schema (`http`/`https`), port,
    /// login/password as basic auth, extra as headers (default `http_default`).
    pub http_conn_id: Option<String>,
    /// Appended to the connection's URL (templated).
    pub endpoint: Option<String>,
    /// Default `POST`, as Airflow.
    pub method: Option<String>,
    /// The body (templated): a mapping is sent as JSON (as form fields when `Content-Type`
    /// says so), or as query parameters for GET; a string is sent as it is.
    #[schemars(with = "Option<serde_json::Value>")]
    pub data: Option<Raw<AnyValue>>,
    /// Request headers (templated values).
    pub headers: Option<IndexMap<String, String>>,
    /// An expression over `response` (`status_code`, `text`, `json()`, `headers`): false
    /// fails the try.
    pub response_check: Option<String>,
    /// dag-factory's form: `lambda response: <expression>`.
    pub response_check_lambda: Option<String>,
    /// An expression over `response` whose value is the XCom (default `response.text`).
    pub response_filter: Option<String>,
    /// Log the response body (default false).
    pub log_response: Option<bool>,
    /// `timeout` (seconds), `verify` (TLS certificates, default true), `check_response`
    /// (a status of 400 or more fails, default true), `allow_redirects` (default true).
    #[schemars(with = "Option<IndexMap<String, serde_json::Value>>")]
    pub extra_options: Option<Raw<AnyValue>>,
    /// Connection errors are retried this many times (default 3), a second apart, doubling.
    pub retry_attempts: Option<u32>,
}

/// `extra_options`, read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpOptions {
    /// Seconds; `None` waits as long as the task may run.
    pub timeout: Option<f64>,
    pub verify: bool,
    pub check_response: bool,
    pub allow_redirects: bool,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            timeout: None,
            verify: true,
            check_response: true,
            allow_redirects: true,
        }
    }
}

/// One request, as the YAML describes it (templates unrendered).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpRequest {
    pub conn_id: String,
    pub method: String,
    /// Templated.
    pub endpoint: String,
    /// Every string in it templated.
    pub data: Json,
    /// Values templated.
    pub headers: IndexMap<String, String>,
    pub options: HttpOptions,
    pub retry_attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpOperator {
    pub request: HttpRequest,
    pub response_check: Option<String>,
    pub response_filter: Option<String>,
    pub log_response: bool,
}

pub(crate) struct Http;

impl OperatorKind for Http {
    const NAME: &'static str = "http";
    const ALIASES: &'static [&'static str] = &[
        "HttpOperator",
        "SimpleHttpOperator",
        "airflow.providers.http.operators.http.HttpOperator",
        "airflow.providers.http.operators.http.SimpleHttpOperator",
        "airflow.operators.http_operator.SimpleHttpOperator",
    ];
    const MODULE: &'static str = "airflow.providers.http.operators.http";
    const CLASS: &'static str = "HttpOperator";
    const TEMPLATE_FIELDS: &'static [&'static str] = &["endpoint", "data", "headers"];
    const UI_COLOR: &'static str = "#f4a460";
    type Spec = HttpSpec;

    fn build(ctx: &mut Ctx<'_>, spec: Self::Spec, read: &mut ReadOp<'_>) -> Option<Operator> {
        let response_check =
            response_check(ctx, read, spec.response_check, spec.response_check_lambda)?;
        if let Some(filter) = &spec.response_filter {
            check_expression(ctx, "response_filter", filter, read);
        }
        let request = read_request(
            ctx,
            read,
            RequestKeys {
                conn_id: spec.http_conn_id,
                method: spec.method,
                default_method: "POST",
                endpoint: spec.endpoint,
                data: spec.data,
                headers: spec.headers,
                extra_options: spec.extra_options,
                retry_attempts: spec.retry_attempts,
            },
        )?;
        Some(Operator::Http(HttpOperator {
            request,
            response_check,
            response_filter: spec.response_filter,
            log_response: spec.log_response.unwrap_or(false),
        }))
    }
}

/// The request keys HttpOperator and HttpSensor share.
pub(crate) struct RequestKeys {
    pub conn_id: Option<String>,
    pub method: Option<String>,
    pub default_method: &'static str,
    pub endpoint: Option<String>,
    pub data: Option<Raw<AnyValue>>,
    pub headers: Option<IndexMap<String, String>>,
    pub extra_options: Option<Raw<AnyValue>>,
    pub retry_attempts: Option<u32>,
}

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

pub(crate) fn read_request(
    ctx: &mut Ctx<'_>,
    read: &ReadOp<'_>,
    keys: RequestKeys,
) -> Option<HttpRequest> {
    let conn_id = keys
        .conn_id
        .unwrap_or_else(|| DEFAULT_HTTP_CONN_ID.to_owned());
    if let Err(e) = flow_model::ids::validate_id("conn_id", &conn_id) {
        ctx.error(read.span_of("http_conn_id"), format!("`http_conn_id`: {e}"));
        return None;
    }
    let method = keys
        .method
        .unwrap_or_else(|| keys.default_method.to_owned())
        .to_ascii_uppercase();
    if !METHODS.contains(&method.as_str()) {
        ctx.error(
            read.span_of("method"),
            format!("`method`: `{method}` is not one of {}", METHODS.join(", ")),
        );
        return None;
    }
    let endpoint = keys.endpoint.unwrap_or_default();
    check_template(ctx, "endpoint", &endpoint, read.span_of("endpoint"));
    let data = match &keys.data {
        Some(raw) => {
            check_templates_in(ctx, "data", &raw.node);
            to_json(&raw.node)
        }
        None => Json::Null,
    };
    let headers = keys.headers.unwrap_or_default();
    for value in headers.values() {
        check_template(ctx, "headers", value, read.span_of("headers"));
    }
    let options = read_options(ctx, keys.extra_options.as_ref())?;
    Some(HttpRequest {
        conn_id,
        method,
        endpoint,
        data,
        headers,
        options,
        retry_attempts: keys.retry_attempts.unwrap_or(3),
    })
}

fn read_options(ctx: &mut Ctx<'_>, raw: Option<&Raw<AnyValue>>) -> Option<HttpOptions> {
    let mut options = HttpOptions::default();
    let Some(raw) = raw else {
        return Some(options);
    };
    let Json::Object(map) = to_json(&raw.node) else {
        ctx.error(raw.node.span, "`extra_options`: expected a mapping");
        return None;
    };
    for (key, value) in map {
        let span = raw.node.get(&key).map_or(raw.node.span, |n| n.span);
        let flag = |ctx: &mut Ctx<'_>, v: &Json| match v {
            Json::Bool(b) => Some(*b),
            _ => {
                ctx.error(
                    span,
                    format!("`extra_options.{key}`: expected true or false"),
                );
                None
            }
        };
        match key.as_str() {
            // At most a day: a request is not a wait (sensors have their own timeout).
            "timeout" => match value.as_f64().filter(|t| *t > 0.0 && *t <= 86_400.0) {
                Some(t) => options.timeout = Some(t),
                None => ctx.error(
                    span,
                    "`extra_options.timeout`: expected a number of seconds above zero, at most a day",
                ),
            },
            "verify" => options.verify = flag(ctx, &value)?,
            "check_response" => options.check_response = flag(ctx, &value)?,
            "allow_redirects" => options.allow_redirects = flag(ctx, &value)?,
            // requests' other session options: accepted, without effect here.
            "stream" | "proxies" | "cert" => {
                ctx.warn(
                    span,
                    format!("`extra_options.{key}` is not supported by flow; it has no effect"),
                );
            }
            other => ctx.error(
                span,
                format!(
                    "`extra_options`: unknown option `{other}`; known: timeout, verify, \
                     check_response, allow_redirects"
                ),
            ),
        }
    }
    Some(options)
}

/// `response_check`, or dag-factory's `response_check_lambda` as its expression.
pub(crate) fn response_check(
    ctx: &mut Ctx<'_>,
    read: &ReadOp<'_>,
    check: Option<String>,
    lambda: Option<String>,
) -> Option<Option<String>> {
    let (key, expr) = match (check, lambda) {
        (Some(_), Some(_)) => {
            ctx.error(
                read.span_of("response_check_lambda"),
                "set `response_check` or `response_check_lambda`, not both",
            );
            return None;
        }
        (Some(c), None) => ("response_check", c),
        (None, Some(l)) => match lambda_body(&l) {
            Some(body) => ("response_check_lambda", body),
            None => {
                ctx.error(
                    read.span_of("response_check_lambda"),
                    "`response_check_lambda`: expected `lambda response: <expression>` (the parameter must be named `response`)",
                );
                return None;
            }
        },
        (None, None) => return Some(None),
    };
    check_expression(ctx, key, &expr, read);
    Some(Some(expr))
}

/// `lambda response: "ok" in response.text` -> `"ok" in response.text`.
fn lambda_body(text: &str) -> Option<String> {
    let rest = text.trim().strip_prefix("lambda")?;
    let (param, body) = rest.split_once(':')?;
    let param = param.trim();
    if body.trim().is_empty() {
        return None;
    }
    // The expression names the response `response`; another parameter name is refused.
    (param == "response").then(|| body.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lambda_bodies() {
        assert_eq!(
            lambda_body("lambda response: \"ok\" in response.text").as_deref(),
            Some("\"ok\" in response.text")
        );
        assert_eq!(lambda_body("lambda r: r.ok"), None);
        assert_eq!(lambda_body("response.ok"), None);
    }
}
