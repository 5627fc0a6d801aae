//! `operator: sql_sensor`: waits until a query's first row says so (Airflow's SqlSensor).
//! `success` and `failure` are expressions over `first_cell` (and the whole `row`) instead of
//! Python callables.

use minijinja::Environment;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::sql::{SqlStatements, read_parameters, read_statements, sql_conn_id};
use super::{OperatorKind, ReadOp};
use crate::build::Ctx;
use crate::dag::{Operator, Sensor};
use crate::spec::{AnyValue, Raw};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlSensorSpec {
    /// A `postgres`, `mysql` or `sqlite` connection.
    pub conn_id: String,
    /// The query (templated), or a `.sql` file beside the DAG.
    #[schemars(with = "serde_json::Value")]
    pub sql: Raw<AnyValue>,
    #[schemars(with = "Option<serde_json::Value>")]
    pub parameters: Option<Raw<AnyValue>>,
    /// An expression over `first_cell` and `row`: true means done (default: `first_cell`
    /// is truthy, as Python's `bool`).
    pub success: Option<String>,
    /// An expression over `first_cell` and `row`: true fails the try at once.
    pub failure: Option<String>,
    /// No row fails the try instead of poking again (default false).
    pub fail_on_empty: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SqlSensor {
    pub conn_id: String,
    pub sql: SqlStatements,
    pub parameters: Json,
    pub success: Option<String>,
    pub failure: Option<String>,
    pub fail_on_empty: bool,
    pub sensor: Sensor,
}

pub(crate) struct SqlSensorKind;

impl OperatorKind for SqlSensorKind {
    const NAME: &'static str = "sql_sensor";
    const ALIASES: &'static [&'static str] = &[
        "SqlSensor",
        "airflow.providers.common.sql.sensors.sql.SqlSensor",
        "airflow.sensors.sql.SqlSensor",
        "airflow.sensors.sql_sensor.SqlSensor",
    ];
    const MODULE: &'static str = "airflow.providers.common.sql.sensors.sql";
    const CLASS: &'static str = "SqlSensor";
    const TEMPLATE_FIELDS: &'static [&'static str] = &["sql", "parameters"];
    const UI_COLOR: &'static str = "#7c7287";
    const SENSOR: bool = true;
    const DEFERRABLE: bool = false;
    type Spec = SqlSensorSpec;

    fn build(ctx: &mut Ctx<'_>, spec: Self::Spec, read: &mut ReadOp<'_>) -> Option<Operator> {
        let conn_id = sql_conn_id(ctx, read, vec![("conn_id", Some(spec.conn_id))]);
        let sql = read_statements(ctx, &spec.sql.node);
        let parameters = read_parameters(ctx, spec.parameters.as_ref());
        for (key, expr) in [("success", &spec.success), ("failure", &spec.failure)] {
            if let Some(e) = expr {
                check_expression(ctx, key, e, read);
            }
        }
        let sensor = read.sensor(ctx)?;
        Some(Operator::SqlSensor(SqlSensor {
            conn_id: conn_id?,
            sql: sql?,
            parameters,
            success: spec.success,
            failure: spec.failure,
            fail_on_empty: spec.fail_on_empty.unwrap_or(false),
            sensor,
        }))
    }
}

/// An expression, checked for syntax now so a typo is reported with its line.
pub(crate) fn check_expression(ctx: &mut Ctx<'_>, key: &str, source: &str, read: &ReadOp<'_>) {
    let env = Environment::new();
    if let Err(e) = env.compile_expression(source) {
        ctx.error(
            read.span_of(key),
            format!("`{key}`: not a valid expression: {e}"),
        );
    }
}
