//! The JSON Schema of the DAG file format, generated from the spec types in `spec.rs`.
//!
//! Editors use it for completion and validation (`flow dags schema > flow-dags.schema.json`).
//! A task's schema is assembled from the common keys and every operator's keys, since which
//! keys apply depends on `operator`.

use schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings};
use serde_json::{Map, Value, json};

use crate::spec::{DagSpec, TaskCommonSpec};

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
    schema_parts(&T::json_schema(generator))
}

/// Properties and required keys of an object schema.
fn schema_parts(schema: &Schema) -> (Map<String, Value>, Vec<Value>) {
    let value = schema.clone().to_value();
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
    for def in crate::operators::registry() {
        let mut op_props = Map::new();
        let mut required = Vec::new();
        for schema in def.schemas(generator) {
            let (p, r) = schema_parts(&schema);
            op_props.extend(p);
            required.extend(r);
        }
        let mut accepted: Vec<&str> = vec![def.name];
        accepted.extend_from_slice(def.aliases);
        for (k, v) in &op_props {
            props.insert(k.clone(), v.clone());
        }
        variants.push(json!({
            "if": {"properties": {"operator": {"enum": accepted}}, "required": ["operator"]},
            "then": {"required": required}
        }));
    }
    let operator_names: Vec<&str> = crate::operators::registry()
        .iter()
        .flat_map(|d| std::iter::once(d.name).chain(d.aliases.iter().copied()))
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
