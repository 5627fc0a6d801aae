//! The `params` a task sees: DAG params, overridden by task params, overridden by the run's
//! conf (Airflow's `dag_run_conf_overrides_params`, on by default), then checked against each
//! `Param`'s schema.

use flow_dag::Param;
use indexmap::IndexMap;
use serde_json::{Map, Value as Json};

/// A param without a value, or a value its schema rejects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("params.{name}: {message}")]
pub struct ParamError {
    pub name: String,
    pub message: String,
}

/// Merges params as Airflow does and validates the result.
///
/// Every key of `conf` (a JSON object) lands in params, declared or not, as in Airflow. A
/// declared param with neither a default nor a conf value is an error, as Airflow's
/// "No value passed and Param has no default value". Schema keywords checked: `type`, `enum`,
/// `minimum`, `maximum`, `minLength`, `maxLength` (`pattern` and `format` are not checked).
pub fn merge_params(
    dag: &IndexMap<String, Param>,
    task: &IndexMap<String, Param>,
    conf: &Json,
) -> Result<Map<String, Json>, ParamError> {
    let mut declared: IndexMap<&str, &Param> = IndexMap::new();
    for (name, param) in dag.iter().chain(task.iter()) {
        declared.insert(name, param);
    }
    let conf = conf.as_object();
    let mut out = Map::new();
    for (name, param) in &declared {
        let value = conf
            .and_then(|c| c.get(*name))
            .or(param.default.as_ref())
            .cloned();
        match value {
            Some(v) => {
                check(&param.schema, &v).map_err(|message| ParamError {
                    name: (*name).to_owned(),
                    message,
                })?;
                out.insert((*name).to_owned(), v);
            }
            None => {
                return Err(ParamError {
                    name: (*name).to_owned(),
                    message: "no value passed and the param has no default".to_owned(),
                });
            }
        }
    }
    for (k, v) in conf.into_iter().flatten() {
        if !declared.contains_key(k.as_str()) {
            out.insert(k.clone(), v.clone());
        }
    }
    Ok(out)
}

fn type_matches(t: &str, v: &Json) -> bool {
    match t {
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        "boolean" => v.is_boolean(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        "null" => v.is_null(),
        _ => true,
    }
}

fn check(schema: &Map<String, Json>, v: &Json) -> Result<(), String> {
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Json::String(s) => vec![s.as_str()],
            Json::Array(items) => items.iter().filter_map(Json::as_str).collect(),
            _ => Vec::new(),
        };
        if !types.is_empty() && !types.iter().any(|t| type_matches(t, v)) {
            return Err(format!("{v} is not of type {}", types.join(" or ")));
        }
    }
    if let Some(Json::Array(allowed)) = schema.get("enum")
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(Json::to_string).collect();
        return Err(format!("{v} is not one of {}", list.join(", ")));
    }
    if let Some(x) = v.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Json::as_f64)
            && x < min
        {
            return Err(format!("{v} is less than the minimum of {min}"));
        }
        if let Some(max) = schema.get("maximum").and_then(Json::as_f64)
            && x > max
        {
            return Err(format!("{v} is greater than the maximum of {max}"));
        }
    }
    if let Some(s) = v.as_str() {
        let len = s.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Json::as_u64)
            && len < min
        {
            return Err(format!("{v} is shorter than {min} characters"));
        }
        if let Some(max) = schema.get("maxLength").and_then(Json::as_u64)
            && len > max
        {
            return Err(format!("{v} is longer than {max} characters"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn param(default: Option<Json>, schema: Json) -> Param {
        Param {
            default,
            schema: schema.as_object().cloned().unwrap_or_default(),
            description: None,
            title: None,
        }
    }

    #[test]
    fn precedence_dag_task_conf() {
        let mut dag = IndexMap::new();
        dag.insert("a".to_owned(), Param::plain(json!(1)));
        dag.insert("b".to_owned(), Param::plain(json!("dag")));
        dag.insert("c".to_owned(), Param::plain(json!("dag")));
        let mut task = IndexMap::new();
        task.insert("b".to_owned(), Param::plain(json!("task")));
        task.insert("c".to_owned(), Param::plain(json!("task")));
        let merged = merge_params(&dag, &task, &json!({"c": "conf", "extra": true})).unwrap();
        assert_eq!(
            Json::Object(merged),
            json!({"a": 1, "b": "task", "c": "conf", "extra": true})
        );
    }

    #[test]
    fn schema_checks() {
        let mut dag = IndexMap::new();
        dag.insert(
            "rate".to_owned(),
            param(
                Some(json!(0.5)),
                json!({"type": "number", "minimum": 0, "maximum": 1}),
            ),
        );
        assert!(merge_params(&dag, &IndexMap::new(), &json!({})).is_ok());
        let err = merge_params(&dag, &IndexMap::new(), &json!({"rate": 2})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "params.rate: 2 is greater than the maximum of 1"
        );
        let err = merge_params(&dag, &IndexMap::new(), &json!({"rate": "x"})).unwrap_err();
        assert_eq!(err.to_string(), "params.rate: \"x\" is not of type number");

        let mut required = IndexMap::new();
        required.insert("who".to_owned(), param(None, json!({"enum": ["a", "b"]})));
        assert!(merge_params(&required, &IndexMap::new(), &Json::Null).is_err());
        assert!(merge_params(&required, &IndexMap::new(), &json!({"who": "c"})).is_err());
        assert!(merge_params(&required, &IndexMap::new(), &json!({"who": "a"})).is_ok());
    }
}
