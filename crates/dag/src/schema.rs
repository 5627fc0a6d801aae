//! The JSON Schema of the DAG file format, generated from the spec types in `spec.rs`.
//!
//! Editors use it for completion and validation (`flow dags schema > flow-dags.schema.json`).
//! A task's schema is assembled from the common keys and every operator's keys, since which
//! keys apply depends on `operator`.

use schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings};
use serde_json::{Map, Value, json};

use crate::spec::{
    BashSpec, DagSpec, DateTimeSensorSpec, EmptySpec, KafkaAwaitMessageSpec, KafkaConsumeSpec,
    KafkaProduceSpec, PythonSpec, TaskCommonSpec, TimeDeltaSensorSpec,
};

/// The schema of a whole DAG file: `dag_id -> DAG`, plus an optional `default:` block.
pub fn dag_file_schema() -> Value {
    let mut generator = SchemaSettings::draft2020_12().into_generator();
    let dag = generator.subschema_for::<DagSpec>();
    let mut root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "flow DAG file",
        "description": "Maps dag ids to DAG specs; an optional `default` block is merged into every DAG of the file (dag-factory format).",
        "type": "object",
        "properties": { "default": dag.clone() },
        // `x-...` keys hold YAML anchors and are not DAGs.
        "patternProperties": { "^x-": {}, "^(?!x-)[A-Za-z0-9_.-]{1,250}$": dag },
        "additionalProperties": false
    });
    let defs: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    if let Some(obj) = root.as_object_mut() {
        obj.insert("$defs".into(), Value::Object(defs));
    }
    root
}

/// Properties and required keys of a struct's schema.
fn object_parts<T: JsonSchema>(
    generator: &mut SchemaGenerator,
) -> (Map<String, Value>, Vec<Value>) {
    let schema: Schema = T::json_schema(generator);
    let value = schema.to_value();
    let props = value
        .get("properties")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let required = value
        .get("required")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    (props, required)
}

/// A task: the common keys plus, depending on `operator`, that operator's keys.
pub(crate) fn task_schema(generator: &mut SchemaGenerator) -> Schema {
    let (common, _) = object_parts::<TaskCommonSpec>(generator);
    let mut props = common.clone();
    let mut variants = Vec::new();
    for (names, (op_props, required)) in [
        (
            crate::operators::OPERATORS[0],
            object_parts::<BashSpec>(generator),
        ),
        (
            crate::operators::OPERATORS[1],
            object_parts::<PythonSpec>(generator),
        ),
        (
            crate::operators::OPERATORS[2],
            object_parts::<EmptySpec>(generator),
        ),
        (
            crate::operators::OPERATORS[3],
            object_parts::<KafkaProduceSpec>(generator),
        ),
        (
            crate::operators::OPERATORS[4],
            object_parts::<KafkaConsumeSpec>(generator),
        ),
        (
            crate::operators::OPERATORS[5],
            object_parts::<KafkaAwaitMessageSpec>(generator),
        ),
        (
            crate::operators::OPERATORS[6],
            object_parts::<TimeDeltaSensorSpec>(generator),
        ),
        (
            crate::operators::OPERATORS[7],
            object_parts::<DateTimeSensorSpec>(generator),
        ),
    ] {
        let mut accepted: Vec<&str> = vec![names.0];
        accepted.extend_from_slice(names.1);
        for (k, v) in &op_props {
            props.insert(k.clone(), v.clone());
        }
        variants.push(json!({
            "if": {"properties": {"operator": {"enum": accepted}}, "required": ["operator"]},
            "then": {"required": required}
        }));
    }
    let operator_names: Vec<&str> = crate::operators::OPERATORS
        .iter()
        .flat_map(|(short, aliases)| std::iter::once(*short).chain(aliases.iter().copied()))
        .collect();
    props.insert(
        "operator".into(),
        json!({"description": "Operator short name or Airflow class path", "enum": operator_names}),
    );
    let value = json!({
        "type": "object",
        "description": "A task: `operator` (or `decorator`) plus that operator's keys and the common task keys.",
        "properties": props,
        "allOf": variants,
        "anyOf": [{"required": ["operator"]}, {"required": ["decorator"]}]
    });
    Schema::try_from(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_has_dag_and_task_keys() {
        let schema = dag_file_schema();
        let text = serde_json::to_string(&schema).unwrap();
        for key in [
            "schedule",
            "default_args",
            "bash_command",
            "python_callable",
            "trigger_rule",
            "task_groups",
        ] {
            assert!(text.contains(&format!("\"{key}\"")), "missing {key}");
        }
    }
}
