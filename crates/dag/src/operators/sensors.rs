//! Sensors over files and commands: `file_sensor` (Airflow's FileSensor: a path or glob under
//! an `fs` connection's base path), `python_sensor` (a callable returning a bool or a
//! `PokeReturnValue`) and `bash_sensor` (a command's exit code).

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::bash::{Bash, BashOperator, BashSpec};
use super::python::{Python, PythonOperator, PythonSpec};
use super::{OperatorKind, ReadOp};
use crate::build::{Ctx, check_template};
use crate::dag::{Operator, Sensor};

/// The connection FileSensor uses by default (Airflow's `fs_default`, base path `/`).
pub const DEFAULT_FS_CONN_ID: &str = "fs_default";

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSensorSpec {
    /// A path or glob (templated); relative paths are under the connection's `path` extra.
    pub filepath: String,
    /// An `fs` connection whose extra `path` is the base directory (default `fs_default`).
    pub fs_conn_id: Option<String>,
    /// `**` matches across directories (default false).
    pub recursive: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileSensor {
    /// Templated.
    pub filepath: String,
    pub fs_conn_id: String,
    pub recursive: bool,
    pub sensor: Sensor,
}

pub(crate) struct FileSensorKind;

impl OperatorKind for FileSensorKind {
    const NAME: &'static str = "file_sensor";
    const ALIASES: &'static [&'static str] = &[
        "FileSensor",
        "airflow.sensors.filesystem.FileSensor",
        "airflow.contrib.sensors.file_sensor.FileSensor",
        "airflow.providers.standard.sensors.filesystem.FileSensor",
    ];
    const MODULE: &'static str = "airflow.providers.standard.sensors.filesystem";
    const CLASS: &'static str = "FileSensor";
    const TEMPLATE_FIELDS: &'static [&'static str] = &["filepath"];
    const UI_COLOR: &'static str = "#91818a";
    const SENSOR: bool = true;
    type Spec = FileSensorSpec;

    fn build(ctx: &mut Ctx<'_>, spec: Self::Spec, read: &mut ReadOp<'_>) -> Option<Operator> {
        if spec.filepath.trim().is_empty() {
            ctx.error(read.span_of("filepath"), "`filepath` is empty");
        }
        check_template(ctx, "filepath", &spec.filepath, read.span_of("filepath"));
        let fs_conn_id = spec
            .fs_conn_id
            .unwrap_or_else(|| DEFAULT_FS_CONN_ID.to_owned());
        if let Err(e) = flow_model::ids::validate_id("conn_id", &fs_conn_id) {
            ctx.error(read.span_of("fs_conn_id"), format!("`fs_conn_id`: {e}"));
        }
        let sensor = read.sensor(ctx)?;
        Some(Operator::FileSensor(FileSensor {
            filepath: spec.filepath,
            fs_conn_id,
            recursive: spec.recursive.unwrap_or(false),
            sensor,
        }))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PythonSensor {
    pub python: PythonOperator,
    pub sensor: Sensor,
}

pub(crate) struct PythonSensorKind;

impl OperatorKind for PythonSensorKind {
    const NAME: &'static str = "python_sensor";
    const ALIASES: &'static [&'static str] = &[
        "PythonSensor",
        "airflow.sensors.python.PythonSensor",
        "airflow.providers.standard.sensors.python.PythonSensor",
    ];
    const MODULE: &'static str = "airflow.providers.standard.sensors.python";
    const CLASS: &'static str = "PythonSensor";
    const TEMPLATE_FIELDS: &'static [&'static str] = &["templates_dict", "op_args", "op_kwargs"];
    const UI_COLOR: &'static str = "#e6f1f2";
    const SENSOR: bool = true;
    // Airflow's PythonSensor has no trigger: a callable runs in a worker.
    const DEFERRABLE: bool = false;
    type Spec = PythonSpec;

    fn build(ctx: &mut Ctx<'_>, spec: Self::Spec, read: &mut ReadOp<'_>) -> Option<Operator> {
        let python = match Python::build(ctx, spec, read)? {
            Operator::Python(p) => p,
            _ => return None,
        };
        let sensor = read.sensor(ctx)?;
        Some(Operator::PythonSensor(PythonSensor { python, sensor }))
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BashSensorSpec {
    /// Done when it exits 0 (templated).
    pub bash_command: String,
    pub env: Option<IndexMap<String, String>>,
    pub append_env: Option<bool>,
    pub cwd: Option<String>,
    pub output_encoding: Option<String>,
    /// This exit code means "not yet"; any other non-zero code fails the try. Without it
    /// every non-zero code means "not yet" (Airflow's default).
    pub retry_exit_code: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BashSensor {
    pub bash: BashOperator,
    pub retry_exit_code: Option<i32>,
    pub sensor: Sensor,
}

pub(crate) struct BashSensorKind;

impl OperatorKind for BashSensorKind {
    const NAME: &'static str = "bash_sensor";
    const ALIASES: &'static [&'static str] = &[
        "BashSensor",
        "airflow.sensors.bash.BashSensor",
        "airflow.providers.standard.sensors.bash.BashSensor",
    ];
    const MODULE: &'static str = "airflow.providers.standard.sensors.bash";
    const CLASS: &'static str = "BashSensor";
    const TEMPLATE_FIELDS: &'static [&'static str] = &["bash_command", "env"];
    const UI_COLOR: &'static str = "#e6f1f2";
    const SENSOR: bool = true;
    const DEFERRABLE: bool = false;
    type Spec = BashSensorSpec;

    fn build(ctx: &mut Ctx<'_>, spec: Self::Spec, read: &mut ReadOp<'_>) -> Option<Operator> {
        let bash_spec = BashSpec {
            bash_command: spec.bash_command,
            env: spec.env,
            append_env: spec.append_env,
            cwd: spec.cwd,
            skip_on_exit_code: None,
            output_encoding: spec.output_encoding,
        };
        let mut bash = match Bash::build(ctx, bash_spec, read)? {
            Operator::Bash(b) => b,
            _ => return None,
        };
        // A sensor's exit codes mean done or not yet; none skips.
        bash.skip_on_exit_code.clear();
        let sensor = read.sensor(ctx)?;
        Some(Operator::BashSensor(BashSensor {
            bash,
            retry_exit_code: spec.retry_exit_code,
            sensor,
        }))
    }
}
