//! `operator: date_time`: waits until `target_time` (Airflow's DateTimeSensor).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{OperatorKind, ReadOp};
use crate::build::{Ctx, check_template};
use crate::dag::{Operator, Sensor};
use crate::template;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DateTimeSensor {
    /// Templated; an ISO 8601 date-time after rendering.
    pub target_time: String,
    pub sensor: Sensor,
}

/// `operator: date_time`: waits until `target_time` (templated, ISO 8601).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DateTimeSensorSpec {
    pub target_time: String,
}

pub(crate) struct DateTime;

impl OperatorKind for DateTime {
    const NAME: &'static str = "date_time";
    const ALIASES: &'static [&'static str] = &[
        "DateTimeSensor",
        "DateTimeSensorAsync",
        "airflow.sensors.date_time.DateTimeSensor",
        "airflow.sensors.date_time.DateTimeSensorAsync",
        "airflow.providers.standard.sensors.date_time.DateTimeSensor",
        "airflow.providers.standard.sensors.date_time.DateTimeSensorAsync",
    ];
    const MODULE: &'static str = "airflow.providers.standard.sensors.date_time";
    const CLASS: &'static str = "DateTimeSensor";
    const TEMPLATE_FIELDS: &'static [&'static str] = &["target_time"];
    const UI_COLOR: &'static str = "#e6f1f2";
    const SENSOR: bool = true;
    type Spec = DateTimeSensorSpec;

    fn build(ctx: &mut Ctx<'_>, spec: Self::Spec, read: &mut ReadOp<'_>) -> Option<Operator> {
        let span = read.span_of("target_time");
        check_template(ctx, "target_time", &spec.target_time, span);
        if !template::has_markup(&spec.target_time)
            && chrono::DateTime::parse_from_rfc3339(spec.target_time.trim()).is_err()
            && chrono::NaiveDateTime::parse_from_str(spec.target_time.trim(), "%Y-%m-%dT%H:%M:%S")
                .is_err()
        {
            ctx.error(
                span,
                format!(
                    "`target_time`: `{}` is not an ISO 8601 date-time",
                    spec.target_time
                ),
            );
        }
        let sensor = read.sensor(ctx)?;
        Some(Operator::DateTime(DateTimeSensor {
            target_time: spec.target_time,
            sensor,
        }))
    }
}
