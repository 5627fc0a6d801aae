//! `operator: time_delta`: waits until the data interval's end (or the run's time) plus
//! `delta` (Airflow's TimeDeltaSensor).

use chrono::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{OperatorKind, ReadOp};
use crate::build::{Ctx, read_duration};
use crate::dag::{Operator, Sensor, millis};
use crate::spec::{DurationSpec, Raw};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeDeltaSensor {
    #[serde(with = "millis")]
    pub delta: Duration,
    pub sensor: Sensor,
}

/// `operator: time_delta`: waits until the run's data interval end (or run time) plus `delta`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeDeltaSensorSpec {
    #[schemars(with = "serde_json::Value")]
    pub delta: Raw<DurationSpec>,
}

pub(crate) struct TimeDelta;

impl OperatorKind for TimeDelta {
    const NAME: &'static str = "time_delta";
    const ALIASES: &'static [&'static str] = &[
        "TimeDeltaSensor",
        "TimeDeltaSensorAsync",
        "airflow.sensors.time_delta.TimeDeltaSensor",
        "airflow.sensors.time_delta.TimeDeltaSensorAsync",
        "airflow.providers.standard.sensors.time_delta.TimeDeltaSensor",
        "airflow.providers.standard.sensors.time_delta.TimeDeltaSensorAsync",
    ];
    const MODULE: &'static str = "airflow.providers.standard.sensors.time_delta";
    const CLASS: &'static str = "TimeDeltaSensor";
    const TEMPLATE_FIELDS: &'static [&'static str] = &[];
    const UI_COLOR: &'static str = "#e6f1f2";
    const SENSOR: bool = true;
    type Spec = TimeDeltaSensorSpec;

    fn build(ctx: &mut Ctx<'_>, spec: Self::Spec, read: &mut ReadOp<'_>) -> Option<Operator> {
        let delta = read_duration(ctx, &spec.delta.node, "delta")?;
        let sensor = read.sensor(ctx)?;
        Some(Operator::TimeDelta(TimeDeltaSensor { delta, sensor }))
    }
}
