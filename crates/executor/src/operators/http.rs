//! `http` and `http_sensor`: a request on an `http` connection, built as Airflow's HttpHook
//! builds it (base URL from the connection, basic auth from its login, headers from its extra),
//! checked and filtered by expressions over the response.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use flow_dag::{HttpOperator, HttpOptions, HttpRequest, HttpSensor, Task};
use flow_model::Connection;
use minijinja::value::{Object, ObjectRepr};
use minijinja::{Error, ErrorKind, State, Value};
use serde_json::Value as Json;

use crate::io_ops::Poked;
use crate::jinja::{json_value, to_json};
use crate::process::LogSink;
use crate::render::{RenderError, RenderedTask, Renderer, RunContext, SensorWait};
use crate::runner::{Outcome, RunSpec};

/// A request with its templates rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpCall {
    pub conn_id: String,
    pub method: String,
    pub endpoint: String,
    pub data: Json,
    pub headers: Vec<(String, String)>,
    pub options: HttpOptions,
    pub retry_attempts: u32,
}

/// What an http task runs, rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRun {
    pub call: HttpCall,
    pub response_check: Option<String>,
    pub response_filter: Option<String>,
    pub log_response: bool,
}

/// What an HTTP sensor checks each poke, rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpPoke {
    pub call: HttpCall,
    pub response_check: Option<String>,
    pub allowlist: Vec<u16>,
}

fn render_call(r: &Renderer, req: &HttpRequest) -> Result<HttpCall, RenderError> {
    let mut headers = Vec::with_capacity(req.headers.len());
    for (name, value) in &req.headers {
        headers.push((name.clone(), r.string(&format!("headers.{name}"), value)?));
    }
    Ok(HttpCall {
        conn_id: req.conn_id.clone(),
        method: req.method.clone(),
        endpoint: r.string("endpoint", &req.endpoint)?,
        data: r.json("data", &req.data)?,
        headers,
        options: req.options.clone(),
        retry_attempts: req.retry_attempts,
    })
}

pub(crate) fn render(
    task: &Task,
    op: &HttpOperator,
    ctx: &RunContext,
) -> Result<RenderedTask, RenderError> {
    let r = Renderer::new(task, ctx);
    Ok(RenderedTask::Http(HttpRun {
        call: render_call(&r, &op.request)?,
        response_check: op.response_check.clone(),
        response_filter: op.response_filter.clone(),
        log_response: op.log_response,
    }))
}

pub(crate) fn render_sensor(
    task: &Task,
    op: &HttpSensor,
    ctx: &RunContext,
) -> Result<RenderedTask, RenderError> {
    let r = Renderer::new(task, ctx);
    Ok(RenderedTask::Sensor {
        wait: SensorWait::Http(HttpPoke {
            call: render_call(&r, &op.request)?,
            response_check: op.response_check.clone(),
            allowlist: op.allowlist.clone(),
        }),
        sensor: op.sensor.clone(),
    })
}

/// The kwargs of an HTTP sensor's trigger row: the rendered request and checks, never the
/// connection's secrets (the triggerer resolves `conn_id` itself).
pub(crate) fn trigger_kwargs(check: &HttpPoke, sensor: &flow_dag::Sensor) -> Json {
    serde_json::json!({
        "conn_id": check.call.conn_id,
        "method": check.call.method,
        "endpoint": check.call.endpoint,
        "data": check.call.data,
        "headers": check.call.headers,
        "options": check.call.options,
        "response_check": check.response_check,
        "allowlist": check.allowlist,
        "poke_interval_ms": sensor.poke_interval.num_milliseconds().max(1),
    })
}

/// The check a trigger row describes, and how often to poke.
pub(crate) fn from_trigger_kwargs(kwargs: &Json) -> Result<(HttpPoke, Duration), String> {
    let text = |key: &str| {
        kwargs
            .get(key)
            .and_then(Json::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("http trigger without `{key}`"))
    };
    let headers: Vec<(String, String)> = kwargs
        .get("headers")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| format!("http trigger `headers`: {e}"))?
        .unwrap_or_default();
    let options: HttpOptions = kwargs
        .get("options")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| format!("http trigger `options`: {e}"))?
        .unwrap_or_default();
    let allowlist: Vec<u16> = kwargs
        .get("allowlist")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| format!("http trigger `allowlist`: {e}"))?
        .unwrap_or_default();
    let interval = kwargs
        .get("poke_interval_ms")
        .and_then(Json::as_u64)
        .unwrap_or(60_000);
    Ok((
        HttpPoke {
            call: HttpCall {
                conn_id: text("conn_id")?,
                method: text("method")?,
                endpoint: text("endpoint")?,
                data: kwargs.get("data").cloned().unwrap_or(Json::Null),
                headers,
                options,
                retry_attempts: 1,
            },
            response_check: kwargs
                .get("response_check")
                .and_then(Json::as_str)
                .map(str::to_owned),
            allowlist,
        },
        Duration::from_millis(interval),
    ))
}

/// A response as expressions see it (requests' `Response`, in part).
#[derive(Debug)]
pub(crate) struct Response {
    pub status_code: u16,
    pub reason: String,
    pub url: String,
    /// Lower-case names, as HTTP/2 sends them; looked up without regard to case.
    pub headers: BTreeMap<String, String>,
    pub text: String,
}

impl Response {
    fn ok(&self) -> bool {
        self.status_code < 400
    }
}

impl Object for Response {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        Some(match key.as_str()? {
            "status_code" => Value::from(self.status_code),
            "text" | "content" => Value::from(self.text.clone()),
            "reason" => Value::from(self.reason.clone()),
            "url" => Value::from(self.url.clone()),
            "ok" => Value::from(self.ok()),
            "headers" => Value::from_object(Headers(self.headers.clone())),
            _ => return None,
        })
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &mut State<'_, '_>,
        method: &str,
        _args: &[Value],
    ) -> Result<Value, Error> {
        match method {
            "json" => serde_json::from_str::<Json>(&self.text)
                .map(|j| json_value(&j))
                .map_err(|e| {
                    Error::new(
                        ErrorKind::InvalidOperation,
                        format!("response.json(): the body is not JSON: {e}"),
                    )
                }),
            _ => Err(Error::from(ErrorKind::UnknownMethod)),
        }
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<Response [{}]>", self.status_code)
    }
}

#[derive(Debug)]
struct Headers(BTreeMap<String, String>);

impl Object for Headers {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.0
            .get(&key.as_str()?.to_ascii_lowercase())
            .map(|v| Value::from(v.clone()))
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &mut State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, Error> {
        if method != "get" {
            return Err(Error::from(ErrorKind::UnknownMethod));
        }
        let key = args.first().and_then(Value::as_str).unwrap_or_default();
        Ok(self
            .0
            .get(&key.to_ascii_lowercase())
            .map(|v| Value::from(v.clone()))
            .or_else(|| args.get(1).cloned())
            .unwrap_or(Value::from(())))
    }
}

/// Evaluates `expression` with `response` bound.
fn eval(expression: &str, response: &Arc<Response>) -> Result<Value, String> {
    let env = minijinja::Environment::new();
    let expr = env
        .compile_expression(expression)
        .map_err(|e| format!("not a valid expression: {e}"))?;
    let ctx = minijinja::context! { response => Value::from_dyn_object(response.clone()) };
    expr.eval(ctx).map_err(|e| e.to_string())
}

/// Runs an http task: the request, `response_check`, then `response_filter` (default: the
/// body) as the XCom.
pub(crate) async fn run(spec: &RunSpec, run: &HttpRun, logs: &LogSink) -> Outcome {
    let response = match send(spec.connection.as_ref(), &run.call, logs).await {
        Ok(r) => Arc::new(r),
        Err(e) => return Outcome::Failed { reason: e },
    };
    if run.log_response {
        logs.system(&response.text).await;
    }
    if run.call.options.check_response && !response.ok() {
        return Outcome::Failed {
            reason: status_error(&response),
        };
    }
    if let Some(check) = &run.response_check {
        match eval(check, &response) {
            Ok(v) if v.is_true() => {}
            Ok(v) => {
                return Outcome::Failed {
                    reason: format!("Response check returned False (`{check}` is {v})"),
                };
            }
            Err(e) => {
                return Outcome::Failed {
                    reason: format!("response_check: {e}"),
                };
            }
        }
    }
    let xcom = match &run.response_filter {
        Some(filter) => match eval(filter, &response) {
            Ok(v) => to_json(&v),
            Err(e) => {
                return Outcome::Failed {
                    reason: format!("response_filter: {e}"),
                };
            }
        },
        None => Json::String(response.text.clone()),
    };
    if !spec.do_xcom_push {
        return Outcome::Success { xcom: None };
    }
    let size = xcom.to_string().len();
    if size > spec.max_xcom_size {
        return Outcome::Failed {
            reason: format!(
                "the response is {size} bytes of JSON, more than FLOW__CORE__MAX_XCOM_SIZE ({} \
                 bytes): filter it with response_filter, or set do_xcom_push: false",
                spec.max_xcom_size
            ),
        };
    }
    Outcome::Success { xcom: Some(xcom) }
}

fn status_error(response: &Response) -> String {
    let body: String = response.text.chars().take(500).collect();
    format!(
        "{}:{} from {} {body}",
        response.status_code, response.reason, response.url
    )
}

/// One poke of an HTTP sensor.
pub(crate) async fn poke(
    connection: Option<&Connection>,
    check: &HttpPoke,
    logs: &LogSink,
) -> Result<Poked, String> {
    let response = Arc::new(send(connection, &check.call, logs).await?);
    if !response.ok() && check.call.options.check_response {
        if check.allowlist.contains(&response.status_code) {
            logs.system(&format!(
                "{} {}: not yet",
                response.status_code, response.reason
            ))
            .await;
            return Ok(Poked::NotYet);
        }
        return Err(status_error(&response));
    }
    match &check.response_check {
        None => Ok(Poked::Done(None)),
        Some(expr) => {
            let v = eval(expr, &response).map_err(|e| format!("response_check: {e}"))?;
            Ok(if v.is_true() {
                Poked::Done(None)
            } else {
                Poked::NotYet
            })
        }
    }
}

/// The connection's base URL, as HttpHook builds it: a host holding a scheme is the base;
/// otherwise `schema` (default http) + host, then the port.
fn base_url(conn: &Connection) -> String {
    let host = conn.host.clone().unwrap_or_default();
    let mut base = if host.contains("://") {
        host
    } else {
        let schema = conn
            .schema
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or("http");
        format!("{schema}://{host}")
    };
    if let Some(port) = conn.port {
        base = format!("{}:{port}", base.trim_end_matches('/'));
    }
    base
}

/// HttpHook's `url_from_endpoint`.
fn url_for(base: &str, endpoint: &str) -> String {
    if !base.is_empty()
        && !base.ends_with('/')
        && !endpoint.is_empty()
        && !endpoint.starts_with('/')
    {
        return format!("{base}/{endpoint}");
    }
    format!("{base}{endpoint}")
}

fn header_value(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .rev()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

fn form_pairs(map: &serde_json::Map<String, Json>) -> Vec<(String, String)> {
    map.iter()
        .map(|(k, v)| {
            let text = match v {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), text)
        })
        .collect()
}

/// A GET of the connection's base URL with its headers and login, as HttpHook's
/// `test_connection` does: any answer below 400 passes. Returns the status line.
pub(crate) async fn probe(conn: &Connection, timeout: Duration) -> Result<String, String> {
    let url = base_url(conn);
    let parsed = reqwest::Url::parse(&url)
        .map_err(|e| format!("`{url}` is not a URL (check host, schema and port): {e}"))?;
    let mut request = reqwest::Client::builder()
        .user_agent(concat!("flow/", env!("CARGO_PKG_VERSION")))
        .timeout(timeout)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?
        .get(parsed.clone());
    if let Some(extra) = conn.extra.as_deref().filter(|e| !e.trim().is_empty()) {
        let Ok(Json::Object(map)) = serde_json::from_str::<Json>(extra) else {
            return Err("extra must be a JSON object of headers".to_owned());
        };
        for (k, v) in form_pairs(&map) {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("extra: `{k}` is not a header name"))?;
            let value = reqwest::header::HeaderValue::from_str(&v)
                .map_err(|_| format!("extra: the value of `{k}` is not a valid header value"))?;
            request = request.header(name, value);
        }
    }
    if let Some(login) = conn.login.as_deref().filter(|l| !l.is_empty()) {
        request = request.basic_auth(login, conn.password.as_deref());
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("GET {}: {}", redact(&parsed), describe(&e)))?;
    let status = response.status();
    let line = format!(
        "GET {}: {} {}",
        redact(&parsed),
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    if status.as_u16() >= 400 {
        return Err(line);
    }
    Ok(line)
}

/// Sends the request, retrying connection errors; the response whatever its status.
pub(crate) async fn send(
    connection: Option<&Connection>,
    call: &HttpCall,
    logs: &LogSink,
) -> Result<Response, String> {
    let Some(conn) = connection else {
        return Err(format!("connection `{}` was not resolved", call.conn_id));
    };
    if !matches!(conn.conn_type.as_str(), "http" | "https") {
        return Err(format!(
            "connection `{}` is of type `{}`; the http operators need an http connection",
            conn.conn_id, conn.conn_type
        ));
    }
    let url = url_for(&base_url(conn), &call.endpoint);
    let parsed = reqwest::Url::parse(&url)
        .map_err(|e| format!("connection `{}`: `{url}` is not a URL: {e}", conn.conn_id))?;
    // Headers: the connection's extra first, the task's over them.
    let mut headers: Vec<(String, String)> = Vec::new();
    if let Some(extra) = conn.extra.as_deref().filter(|e| !e.trim().is_empty()) {
        match serde_json::from_str::<Json>(extra) {
            Ok(Json::Object(map)) => headers.extend(form_pairs(&map)),
            _ => {
                return Err(format!(
                    "connection `{}`: extra must be a JSON object of headers",
                    conn.conn_id
                ));
            }
        }
    }
    headers.extend(call.headers.iter().cloned());
    let mut builder = reqwest::Client::builder()
        .danger_accept_invalid_certs(!call.options.verify)
        .user_agent(concat!("flow/", env!("CARGO_PKG_VERSION")));
    if !call.options.allow_redirects {
        builder = builder.redirect(reqwest::redirect::Policy::none());
    }
    if let Some(t) = call.options.timeout {
        let t = Duration::try_from_secs_f64(t)
            .map_err(|_| format!("`extra_options.timeout`: {t} is not a number of seconds"))?;
        builder = builder.timeout(t);
    }
    let client = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
    let method = reqwest::Method::from_bytes(call.method.as_bytes())
        .map_err(|_| format!("`method`: `{}` is not an HTTP method", call.method))?;
    logs.system(&format!(
        "Calling HTTP method {} {}",
        call.method,
        redact(&parsed)
    ))
    .await;
    let attempts = call.retry_attempts.max(1);
    // Later headers replace earlier ones of the same name (the task's over the connection's).
    let mut header_map = reqwest::header::HeaderMap::new();
    for (k, v) in &headers {
        let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("`headers`: `{k}` is not a header name"))?;
        let value = reqwest::header::HeaderValue::from_str(v)
            .map_err(|_| format!("`headers`: the value of `{k}` is not a valid header value"))?;
        header_map.insert(name, value);
    }
    // A timed-out request may have been handled: only idempotent methods are sent again.
    let idempotent = matches!(call.method.as_str(), "GET" | "HEAD" | "OPTIONS");
    let mut delay = Duration::from_secs(1);
    for attempt in 1..=attempts {
        let mut request = client
            .request(method.clone(), parsed.clone())
            .headers(header_map.clone());
        // The task's own Authorization header wins over the connection's login.
        if let Some(login) = conn
            .login
            .as_deref()
            .filter(|l| !l.is_empty() && !header_map.contains_key(reqwest::header::AUTHORIZATION))
        {
            request = request.basic_auth(login, conn.password.as_deref());
        }
        request = with_data(request, &call.method, &call.data, &headers);
        match request.send().await {
            Ok(resp) => return read_response(resp).await,
            Err(e) if (e.is_connect() || (e.is_timeout() && idempotent)) && attempt < attempts => {
                logs.system(&format!(
                    "{}; retrying in {} s (attempt {attempt} of {attempts})",
                    describe(&e),
                    delay.as_secs()
                ))
                .await;
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                return Err(format!(
                    "connection `{}`: {} {}: {}",
                    conn.conn_id,
                    call.method,
                    redact(&parsed),
                    describe(&e)
                ));
            }
        }
    }
    Err(format!(
        "connection `{}`: no attempt was made",
        conn.conn_id
    ))
}

/// requests' handling of `data`: query parameters for GET, nothing for HEAD, else the body
/// (a mapping as JSON unless `Content-Type` asks for something else, then as form fields).
fn with_data(
    request: reqwest::RequestBuilder,
    method: &str,
    data: &Json,
    headers: &[(String, String)],
) -> reqwest::RequestBuilder {
    match (method, data) {
        (_, Json::Null) | ("HEAD", _) => request,
        ("GET", Json::Object(map)) => request.query(&form_pairs(map)),
        ("GET", Json::String(s)) => {
            let pairs: Vec<(String, String)> = s
                .trim_start_matches('?')
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (p.to_owned(), String::new()),
                })
                .collect();
            request.query(&pairs)
        }
        (_, Json::String(s)) => request.body(s.clone()),
        (_, Json::Object(map)) => match header_value(headers, "content-type") {
            Some(ct) if !ct.to_ascii_lowercase().contains("json") => {
                let body: String = form_pairs(map)
                    .iter()
                    .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
                    .collect::<Vec<_>>()
                    .join("&");
                request.body(body)
            }
            Some(_) => request.body(data.to_string()),
            None => request
                .header("Content-Type", "application/json")
                .body(data.to_string()),
        },
        (_, other) => match header_value(headers, "content-type") {
            Some(_) => request.body(other.to_string()),
            None => request
                .header("Content-Type", "application/json")
                .body(other.to_string()),
        },
    }
}

/// `application/x-www-form-urlencoded` escaping.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// The most of a response body flow reads (64 MiB): a bigger one fails the try rather than
/// the worker's memory.
const MAX_BODY: usize = 64 << 20;

async fn read_response(mut resp: reqwest::Response) -> Result<Response, String> {
    let status = resp.status();
    let url = resp.url().to_string();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(format!(
                        "the response from {url} is larger than {} MiB",
                        MAX_BODY >> 20
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(format!("reading the response from {url}: {}", describe(&e))),
        }
    }
    Ok(Response {
        status_code: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("").to_owned(),
        url,
        headers,
        text: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// A URL without its password, for the log.
fn redact(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    u.to_string()
}

/// The error and its causes, without the request's URL (which reqwest repeats).
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_connect() {
        "cannot connect".to_owned()
    } else if e.is_timeout() {
        "timed out".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(host: &str, schema: Option<&str>, port: Option<u16>) -> Connection {
        let mut c = Connection::new("h", "http").unwrap();
        c.host = Some(host.to_owned());
        c.schema = schema.map(str::to_owned);
        c.port = port;
        c
    }

    #[test]
    fn urls_as_http_hook() {
        assert_eq!(
            url_for(&base_url(&conn("example.com", None, None)), "run"),
            "http://example.com/run"
        );
        assert_eq!(
            url_for(
                &base_url(&conn("example.com", Some("https"), Some(8443))),
                "/run"
            ),
            "https://example.com:8443/run"
        );
        assert_eq!(
            url_for(&base_url(&conn("http://127.0.0.1", None, Some(9))), ""),
            "http://127.0.0.1:9"
        );
    }

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
    }
}
