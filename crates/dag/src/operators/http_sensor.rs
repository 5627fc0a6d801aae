//! `operator: http_sensor`: pokes an endpoint until it answers and `response_check` holds
//! (Airflow's HttpSensor). A status in `response_error_codes_allowlist` (default 404) means
//! "not yet"; another error status fails the try.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::http::{HttpRequest, RequestKeys, read_request, response_check};
use super::{OperatorKind, ReadOp};
use crate::build::Ctx;
use crate::dag::{Operator, Sensor};
use crate::spec::{AnyValue, Raw};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSensorSpec {
    /// An `http` connection (default `http_default`).
    pub http_conn_id: Option<String>,
    /// Appended to the connection's URL (templated).
    pub endpoint: String,
    /// Default `GET`.
    pub method: Option<String>,
    /// Query parameters for GET, the body otherwise (templated).
    #[schemars(with = "Option<serde_json::Value>")]
    pub request_params: Option<Raw<AnyValue>>,
    pub headers: Option<IndexMap<String, String>>,
    /// An expression over `response`: true means done (default: any successful answer).
    pub response_check: Option<String>,
    /// dag-factory's form: `lambda response: <expression>`.
    pub response_check_lambda: Option<String>,
    #[schemars(with = "Option<IndexMap<String, serde_json::Value>>")]
    pub extra_options: Option<Raw<AnyValue>>,
    /// Statuses that mean "not yet" rather than failure (default `["404"]`).
    pub response_error_codes_allowlist: Option<Vec<String>>,
    /// requests' keep-alive switch: accepted, without effect.
    pub tcp_keep_alive: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpSensor {
    pub request: HttpRequest,
    pub response_check: Option<String>,
    pub allowlist: Vec<u16>,
    pub sensor: Sensor,
}

pub(crate) struct HttpSensorKind;

impl OperatorKind for HttpSensorKind {
    const NAME: &'static str = "http_sensor";
    const ALIASES: &'static [&'static str] = &[
        "HttpSensor",
        "airflow.providers.http.sensors.http.HttpSensor",
        "airflow.sensors.http_sensor.HttpSensor",
    ];
    const MODULE: &'static str = "airflow.providers.http.sensors.http";
    const CLASS: &'static str = "HttpSensor";
    const TEMPLATE_FIELDS: &'static [&'static str] = &["endpoint", "request_params", "headers"];
    const UI_COLOR: &'static str = "#e6f1f2";
    const SENSOR: bool = true;
    type Spec = HttpSensorSpec;

    fn build(ctx: &mut Ctx<'_>, spec: Self::Spec, read: &mut ReadOp<'_>) -> Option<Operator> {
        // requests' keep-alive switch has no counterpart: connections are not kept.
        let _ = spec.tcp_keep_alive;
        let check = response_check(ctx, read, spec.response_check, spec.response_check_lambda);
        let mut allowlist = Vec::new();
        for code in spec
            .response_error_codes_allowlist
            .unwrap_or_else(|| vec!["404".to_owned()])
        {
            match code.trim().parse::<u16>() {
                Ok(c) if (100..600).contains(&c) => allowlist.push(c),
                _ => ctx.error(
                    read.span_of("response_error_codes_allowlist"),
                    format!("`response_error_codes_allowlist`: `{code}` is not an HTTP status"),
                ),
            }
        }
        let request = read_request(
            ctx,
            read,
            RequestKeys {
                conn_id: spec.http_conn_id,
                method: spec.method,
                default_method: "GET",
                endpoint: Some(spec.endpoint),
                data: spec.request_params,
                headers: spec.headers,
                extra_options: spec.extra_options,
                retry_attempts: Some(1),
            },
        );
        let sensor = read.sensor(ctx)?;
        Some(Operator::HttpSensor(HttpSensor {
            request: request?,
            response_check: check?,
            allowlist,
            sensor,
        }))
    }
}
