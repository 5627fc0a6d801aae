//! The operators flow knows, one module each: its YAML spec, its validation and its
//! serialized form, behind [`OperatorKind`], registered in [`registry`]. The registry is the
//! one list of operators: it resolves names and Airflow class paths, tells the builder which
//! keys a task may have, and feeds the JSON Schema and the API's task shape.
//!
//! Rendering and execution live in flow-executor's `operators` modules of the same names:
//! the scheduler and the web server parse DAGs and must not link database drivers or HTTP
//! clients. Adding an operator is a module here, a module there, and a line in each registry.

use std::sync::LazyLock;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;

use crate::build::{Ctx, read_spec, split_keys};
use crate::dag::Operator;
use crate::spec::field_names;
use crate::yaml::{Node, Span};

pub(crate) mod bash;
pub(crate) mod branch;
pub(crate) mod cross_dag;
pub(crate) mod date_time;
pub(crate) mod email;
pub(crate) mod empty;
pub(crate) mod http;
pub(crate) mod http_sensor;
pub(crate) mod kafka;
pub(crate) mod kafka_await_message;
pub(crate) mod kafka_consume;
pub(crate) mod kafka_produce;
pub(crate) mod python;
pub(crate) mod sensor;
pub(crate) mod sensors;
pub(crate) mod sql;
pub(crate) mod sql_sensor;
pub(crate) mod time_delta;

/// One operator: what it is called, what Airflow calls it, and how its keys are read.
pub(crate) trait OperatorKind {
    /// The short name (`bash`), also the `kind` of its serialized form.
    const NAME: &'static str;
    /// Bare class names and Airflow 2 / Airflow 3 class paths meaning the same operator.
    const ALIASES: &'static [&'static str];
    /// Airflow's module path and class, as the API shows them.
    const MODULE: &'static str;
    const CLASS: &'static str;
    /// The keys Airflow renders as templates (the API's `template_fields`).
    const TEMPLATE_FIELDS: &'static [&'static str];
    /// Airflow's `ui_color` for the class.
    const UI_COLOR: &'static str = "#fff";
    /// Sensors also take the shared sensor keys ([`sensor::SensorSpec`]).
    const SENSOR: bool = false;
    /// Whether a sensor may hand its wait to the triggerer (`mode: deferrable`).
    const DEFERRABLE: bool = true;
    /// Required keys that `expand` or `partial` may supply instead of the task itself.
    const MAPPABLE: &'static [&'static str] = &[];
    /// The keys the operator takes, as written in YAML; also its JSON Schema.
    type Spec: DeserializeOwned + JsonSchema;
    /// Validates the spec and makes the serialized operator; reports problems on `ctx`.
    fn build(ctx: &mut Ctx<'_>, spec: Self::Spec, read: &mut ReadOp<'_>) -> Option<Operator>;
}

/// What reading an operator's keys may need besides the keys themselves.
pub(crate) struct ReadOp<'a> {
    /// The operator's own keys (for a sensor, without the shared sensor keys).
    pub node: &'a Node,
    /// Where errors point when a key has no position of its own (the task's name).
    pub fallback: Span,
    /// A TaskFlow (`decorator:`) task's extra keys: the function's keyword arguments.
    pub kwargs: &'a Node,
    pub decorated: bool,
    /// The operator's name as written (`PostgresOperator`, a class path), or `python` for a
    /// decorated task.
    pub alias: &'a str,
    /// Named by an Airflow `...Async` class: deferrable unless `mode` says otherwise.
    pub async_alias: bool,
    /// Other tasks' outputs the arguments use (`+task`), to become dependencies.
    pub references: &'a mut Vec<(String, Span)>,
    /// A sensor's shared keys, read by [`ReadOp::sensor`].
    pub sensor_keys: Option<&'a Node>,
}

impl ReadOp<'_> {
    /// The position of `key`, or the fallback.
    pub fn span_of(&self, key: &str) -> Span {
        self.node.get(key).map_or(self.fallback, |n| n.span)
    }

    /// The same read over other keys (an operator reading part of its keys as another's).
    pub fn with_node<'b>(&'b mut self, node: &'b Node) -> ReadOp<'b> {
        ReadOp {
            node,
            fallback: self.fallback,
            kwargs: self.kwargs,
            decorated: self.decorated,
            alias: self.alias,
            async_alias: self.async_alias,
            references: &mut *self.references,
            sensor_keys: self.sensor_keys,
        }
    }

    /// A sensor's shared settings (`mode`, `poke_interval`, `timeout`, `soft_fail`), checked.
    pub fn sensor(&self, ctx: &mut Ctx<'_>) -> Option<crate::dag::Sensor> {
        let keys = self.sensor_keys?;
        sensor::read(ctx, keys, self.fallback, self.async_alias)
    }
}

/// An operator in the registry.
pub struct OperatorDef {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub module: &'static str,
    pub class: &'static str,
    pub template_fields: &'static [&'static str],
    pub ui_color: &'static str,
    pub sensor: bool,
    /// Every key the operator takes (the shared sensor keys included for sensors).
    pub fields: Vec<&'static str>,
    pub(crate) mappable: &'static [&'static str],
    schema: fn(&mut SchemaGenerator) -> Vec<Schema>,
    read: fn(&mut Ctx<'_>, &mut ReadOp<'_>) -> Option<Operator>,
}

impl std::fmt::Debug for OperatorDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorDef")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl OperatorDef {
    fn of<K: OperatorKind>() -> Self {
        let mut fields = field_names::<K::Spec>().to_vec();
        if K::SENSOR {
            fields.extend_from_slice(sensor::FIELDS);
        }
        OperatorDef {
            name: K::NAME,
            aliases: K::ALIASES,
            module: K::MODULE,
            class: K::CLASS,
            template_fields: K::TEMPLATE_FIELDS,
            ui_color: K::UI_COLOR,
            sensor: K::SENSOR,
            fields,
            mappable: K::MAPPABLE,
            schema: schemas_of::<K>,
            read: read_with::<K>,
        }
    }

    /// The JSON Schemas of the operator's keys (its own, then the sensor keys for sensors).
    pub(crate) fn schemas(&self, generator: &mut SchemaGenerator) -> Vec<Schema> {
        (self.schema)(generator)
    }

    pub(crate) fn read(&self, ctx: &mut Ctx<'_>, read: &mut ReadOp<'_>) -> Option<Operator> {
        (self.read)(ctx, read)
    }
}

fn schemas_of<K: OperatorKind>(generator: &mut SchemaGenerator) -> Vec<Schema> {
    let mut schemas = vec![K::Spec::json_schema(generator)];
    if K::SENSOR {
        schemas.push(sensor::SensorSpec::json_schema(generator));
    }
    schemas
}

fn read_with<K: OperatorKind>(ctx: &mut Ctx<'_>, read: &mut ReadOp<'_>) -> Option<Operator> {
    if !K::SENSOR {
        let spec: K::Spec = read_spec(ctx, read.node, read.fallback)?;
        return K::build(ctx, spec, read);
    }
    let (shared, own) = split_keys(read.node, sensor::FIELDS);
    let spec: K::Spec = read_spec(ctx, &own, read.fallback)?;
    let mut own_read = ReadOp {
        node: &own,
        fallback: read.fallback,
        kwargs: read.kwargs,
        decorated: read.decorated,
        alias: read.alias,
        async_alias: read.async_alias,
        references: &mut *read.references,
        sensor_keys: Some(&shared),
    };
    let operator = K::build(ctx, spec, &mut own_read)?;
    if !K::DEFERRABLE
        && let Some(sensor) = operator.sensor()
        && sensor.mode == crate::dag::SensorMode::Deferrable
    {
        let span = shared
            .get("deferrable")
            .or_else(|| shared.get("mode"))
            .map_or(read.fallback, |n| n.span);
        ctx.error(
            span,
            format!(
                "`{}` cannot be deferrable (Airflow's {} has no trigger); use mode poke or reschedule",
                K::NAME,
                K::CLASS
            ),
        );
        return None;
    }
    Some(operator)
}

/// Every operator, in the order the README lists them.
pub fn registry() -> &'static [OperatorDef] {
    static REGISTRY: LazyLock<Vec<OperatorDef>> = LazyLock::new(|| {
        vec![
            OperatorDef::of::<bash::Bash>(),
            OperatorDef::of::<python::Python>(),
            OperatorDef::of::<empty::Empty>(),
            OperatorDef::of::<kafka_produce::KafkaProduce>(),
            OperatorDef::of::<kafka_consume::KafkaConsume>(),
            OperatorDef::of::<kafka_await_message::KafkaAwaitMessage>(),
            OperatorDef::of::<time_delta::TimeDelta>(),
            OperatorDef::of::<date_time::DateTime>(),
            OperatorDef::of::<sql::Sql>(),
            OperatorDef::of::<sql_sensor::SqlSensorKind>(),
            OperatorDef::of::<http::Http>(),
            OperatorDef::of::<http_sensor::HttpSensorKind>(),
            OperatorDef::of::<branch::BranchPython>(),
            OperatorDef::of::<branch::BranchBash>(),
            OperatorDef::of::<branch::ShortCircuit>(),
            OperatorDef::of::<branch::BranchDayOfWeek>(),
            OperatorDef::of::<branch::BranchDateTime>(),
            OperatorDef::of::<branch::LatestOnly>(),
            OperatorDef::of::<cross_dag::TriggerDagRun>(),
            OperatorDef::of::<cross_dag::ExternalTaskSensorKind>(),
            OperatorDef::of::<cross_dag::ExternalTaskMarkerKind>(),
            OperatorDef::of::<sensors::FileSensorKind>(),
            OperatorDef::of::<sensors::PythonSensorKind>(),
            OperatorDef::of::<sensors::BashSensorKind>(),
            OperatorDef::of::<email::Email>(),
        ]
    });
    &REGISTRY
}

/// The operator with this short name.
pub fn get(name: &str) -> Option<&'static OperatorDef> {
    registry().iter().find(|d| d.name == name)
}

/// TaskFlow decorators, and the operator each makes out of `python_callable`.
pub const DECORATORS: &[(&str, &str)] = &[
    ("task", "python"),
    ("airflow.decorators.task", "python"),
    ("airflow.decorators.python_task", "python"),
    ("airflow.sdk.task", "python"),
    ("airflow.sdk.definitions.decorators.task", "python"),
    (
        "airflow.providers.standard.decorators.python.python_task",
        "python",
    ),
    ("task.branch", "branch_python"),
    ("airflow.decorators.task.branch", "branch_python"),
    ("airflow.decorators.branch_task", "branch_python"),
    ("airflow.sdk.task.branch", "branch_python"),
    (
        "airflow.providers.standard.decorators.branch_python.branch_task",
        "branch_python",
    ),
    ("task.short_circuit", "short_circuit"),
    ("airflow.decorators.task.short_circuit", "short_circuit"),
    ("airflow.decorators.short_circuit_task", "short_circuit"),
    ("airflow.sdk.task.short_circuit", "short_circuit"),
    (
        "airflow.providers.standard.decorators.short_circuit.short_circuit_task",
        "short_circuit",
    ),
];

/// The operator a TaskFlow decorator makes.
pub fn decorator_operator(name: &str) -> Option<&'static str> {
    let name = name.trim();
    DECORATORS
        .iter()
        .find(|(d, _)| *d == name)
        .map(|(_, op)| *op)
}

/// Resolves an operator name or class path to its short name.
pub fn resolve(name: &str) -> Option<&'static str> {
    let name = name.trim();
    registry()
        .iter()
        .find(|d| d.name == name || d.aliases.contains(&name))
        .map(|d| d.name)
}

/// `bash, python, empty, ...`, for error messages.
pub fn known_list() -> String {
    registry()
        .iter()
        .map(|d| d.name)
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn is_decorator(name: &str) -> bool {
    decorator_operator(name).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_aliases() {
        assert_eq!(resolve("bash"), Some("bash"));
        assert_eq!(
            resolve("airflow.providers.standard.operators.bash.BashOperator"),
            Some("bash")
        );
        assert_eq!(
            resolve("airflow.operators.dummy_operator.DummyOperator"),
            Some("empty")
        );
        assert_eq!(
            resolve("airflow.operators.python.PythonOperator"),
            Some("python")
        );
        assert_eq!(resolve("airflow.operators.bash.BashOperatorr"), None);
        assert!(is_decorator("airflow.sdk.task"));
    }

    #[test]
    fn names_and_aliases_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for def in registry() {
            assert!(seen.insert(def.name), "{} registered twice", def.name);
            for alias in def.aliases {
                assert!(seen.insert(alias), "{alias} names two operators");
            }
        }
    }

    #[test]
    fn sensors_take_the_shared_keys() {
        let def = get("time_delta").unwrap();
        assert!(def.sensor);
        for key in ["delta", "mode", "poke_interval", "timeout", "soft_fail"] {
            assert!(def.fields.contains(&key), "{key}");
        }
        assert!(!get("bash").unwrap().fields.contains(&"mode"));
    }
}
