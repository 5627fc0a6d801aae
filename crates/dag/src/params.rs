//! Run parameters: a DAG's and a task's `Param`s merged with a run's conf, and each value
//! checked against its `Param`'s JSON Schema, as Airflow's `ParamsDict.validate` does.
//!
//! The same check runs when a run is created (so a bad conf is refused with Airflow's 400
//! before anything runs) and when a try renders its templates. Messages are Python
//! `jsonschema`'s, wrapped as Airflow wraps them, so that clients see the same text:
//! `Invalid input for param name: 5 is not of type 'string'` followed by the failed keyword,
//! the schema and the instance.
//!
//! Keywords checked: `type`, `enum`, `const`, `pattern`, `format` (date, date-time, time,
//! email, uuid, ipv4), `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`,
//! `multipleOf`, `minLength`, `maxLength`, `minItems`, `maxItems`, `items`, `required`,
//! `properties`. Others are accepted and ignored.

use indexmap::IndexMap;
use serde_json::{Map, Value as Json};

use crate::Param;

/// A param without a value, or a value its schema rejects. `message` is the full text after
/// `Invalid input for param <name>: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid input for param {name}: {message}")]
pub struct ParamError {
    pub name: String,
    pub message: String,
}

/// Merges params as Airflow does and validates the result: DAG params, overridden by task
/// params, overridden by the run's conf (Airflow's `dag_run_conf_overrides_params`).
///
/// Every key of `conf` (a JSON object) lands in params, declared or not, as in Airflow. A
/// declared param with neither a default nor a conf value is an error, as Airflow's "No value
/// passed and Param has no default value".
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
        let Some(value) = value else {
            return Err(ParamError {
                name: (*name).to_owned(),
                message: "No value passed and Param has no default value".to_owned(),
            });
        };
        validate(&param.schema, &value).map_err(|message| ParamError {
            name: (*name).to_owned(),
            message,
        })?;
        out.insert((*name).to_owned(), value);
    }
    for (k, v) in conf.into_iter().flatten() {
        if !declared.contains_key(k.as_str()) {
            out.insert(k.clone(), v.clone());
        }
    }
    Ok(out)
}

/// The check a run's creation makes: the DAG's params with `conf` applied (task params are
/// checked when their task runs, as in Airflow).
pub fn validate_conf(dag: &IndexMap<String, Param>, conf: &Json) -> Result<(), ParamError> {
    merge_params(dag, &IndexMap::new(), conf).map(|_| ())
}

/// Checks `value` against `schema`; the error is jsonschema's text: the message, the failed
/// keyword with its schema, and the instance.
pub fn validate(schema: &Map<String, Json>, value: &Json) -> Result<(), String> {
    check(schema, value, "").map_err(|v| {
        format!(
            "{}\n\nFailed validating '{}' in schema{}:\n    {}\n\nOn instance{}:\n    {}",
            v.message,
            v.keyword,
            v.schema_path,
            py_repr(&Json::Object(v.schema.clone())),
            v.instance_path,
            py_repr(&v.instance)
        )
    })
}

/// One failed keyword, where it failed, and what it saw.
#[derive(Debug)]
struct Violation {
    message: String,
    keyword: &'static str,
    schema: Map<String, Json>,
    /// `['items']`, ... (empty at the top).
    schema_path: String,
    instance: Json,
    /// `[0]`, `['key']`, ... (empty at the top).
    instance_path: String,
}

/// The keywords in the order jsonschema would report them (the schema's own order), first
/// failure wins.
fn check(schema: &Map<String, Json>, v: &Json, path: &str) -> Result<(), Box<Violation>> {
    let fail = |keyword: &'static str, message: String| {
        Box::new(Violation {
            message,
            keyword,
            schema: schema.clone(),
            schema_path: String::new(),
            instance: v.clone(),
            instance_path: path.to_owned(),
        })
    };
    for (keyword, expected) in schema {
        match keyword.as_str() {
            "type" => {
                let types: Vec<&str> = match expected {
                    Json::String(s) => vec![s.as_str()],
                    Json::Array(items) => items.iter().filter_map(Json::as_str).collect(),
                    _ => Vec::new(),
                };
                if !types.is_empty() && !types.iter().any(|t| type_matches(t, v)) {
                    let names: Vec<String> = types.iter().map(|t| format!("'{t}'")).collect();
                    return Err(fail(
                        "type",
                        format!("{} is not of type {}", py_repr(v), names.join(", ")),
                    ));
                }
            }
            "enum" => {
                if let Json::Array(allowed) = expected
                    && !allowed.iter().any(|a| json_eq(a, v))
                {
                    return Err(fail(
                        "enum",
                        format!("{} is not one of {}", py_repr(v), py_repr(expected)),
                    ));
                }
            }
            "const" if !json_eq(expected, v) => {
                return Err(fail("const", format!("{} was expected", py_repr(expected))));
            }
            "pattern" => {
                if let (Some(s), Some(p)) = (v.as_str(), expected.as_str()) {
                    // Python's re.search: the pattern may match anywhere unless it anchors.
                    let matches = regex::Regex::new(p).map(|re| re.is_match(s));
                    if !matches.unwrap_or(false) {
                        return Err(fail(
                            "pattern",
                            format!("{} does not match {}", py_repr(v), py_repr(expected)),
                        ));
                    }
                }
            }
            "format" => {
                if let (Some(s), Some(f)) = (v.as_str(), expected.as_str())
                    && !format_matches(f, s)
                {
                    return Err(fail("format", format!("{} is not a '{f}'", py_repr(v))));
                }
            }
            "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum" | "multipleOf" => {
                if let (Some(x), Some(bound)) = (number(v), expected.as_f64()) {
                    let (bad, text) = match keyword.as_str() {
                        "minimum" => (x < bound, "is less than the minimum of"),
                        "maximum" => (x > bound, "is greater than the maximum of"),
                        "exclusiveMinimum" => {
                            (x <= bound, "is less than or equal to the minimum of")
                        }
                        "exclusiveMaximum" => {
                            (x >= bound, "is greater than or equal to the maximum of")
                        }
                        _ => (
                            bound != 0.0 && (x / bound).fract() != 0.0,
                            "is not a multiple of",
                        ),
                    };
                    if bad {
                        return Err(fail(
                            static_keyword(keyword),
                            format!("{} {text} {}", py_repr(v), py_repr(expected)),
                        ));
                    }
                }
            }
            "minLength" | "maxLength" => {
                if let (Some(s), Some(n)) = (v.as_str(), expected.as_u64()) {
                    let len = s.chars().count() as u64;
                    if keyword == "minLength" && len < n {
                        return Err(fail("minLength", format!("{} is too short", py_repr(v))));
                    }
                    if keyword == "maxLength" && len > n {
                        return Err(fail("maxLength", format!("{} is too long", py_repr(v))));
                    }
                }
            }
            "minItems" | "maxItems" => {
                if let (Some(items), Some(n)) = (v.as_array(), expected.as_u64()) {
                    let len = items.len() as u64;
                    if keyword == "minItems" && len < n {
                        return Err(fail("minItems", format!("{} is too short", py_repr(v))));
                    }
                    if keyword == "maxItems" && len > n {
                        return Err(fail("maxItems", format!("{} is too long", py_repr(v))));
                    }
                }
            }
            "items" => {
                if let (Some(items), Some(sub)) = (v.as_array(), expected.as_object()) {
                    for (i, item) in items.iter().enumerate() {
                        check(sub, item, &format!("{path}[{i}]")).map_err(|mut inner| {
                            inner.schema_path = format!("['items']{}", inner.schema_path);
                            inner
                        })?;
                    }
                }
            }
            "required" => {
                if let (Some(object), Some(names)) = (v.as_object(), expected.as_array()) {
                    for name in names.iter().filter_map(Json::as_str) {
                        if !object.contains_key(name) {
                            return Err(fail(
                                "required",
                                format!("'{name}' is a required property"),
                            ));
                        }
                    }
                }
            }
            "properties" => {
                if let (Some(object), Some(props)) = (v.as_object(), expected.as_object()) {
                    for (name, sub) in props {
                        if let (Some(value), Some(sub)) = (object.get(name), sub.as_object()) {
                            check(sub, value, &format!("{path}['{name}']")).map_err(
                                |mut inner| {
                                    inner.schema_path =
                                        format!("['properties']['{name}']{}", inner.schema_path);
                                    inner
                                },
                            )?;
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn static_keyword(k: &str) -> &'static str {
    match k {
        "minimum" => "minimum",
        "maximum" => "maximum",
        "exclusiveMinimum" => "exclusiveMinimum",
        "exclusiveMaximum" => "exclusiveMaximum",
        _ => "multipleOf",
    }
}

/// A number, but not a boolean (JSON Schema keeps them apart, as Python's jsonschema does).
fn number(v: &Json) -> Option<f64> {
    match v {
        Json::Number(n) => n.as_f64(),
        _ => None,
    }
}

/// Equality as Python compares JSON values: `1 == 1.0`, but `true != 1`.
fn json_eq(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
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

/// The formats Airflow's FormatChecker checks without optional packages, plus uuid and ipv4.
fn format_matches(format: &str, s: &str) -> bool {
    match format {
        "date" => chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() && s.len() == 10,
        "date-time" => chrono::DateTime::parse_from_rfc3339(s).is_ok(),
        "time" => {
            chrono::NaiveTime::parse_from_str(s, "%H:%M:%S%.f").is_ok()
                || chrono::DateTime::parse_from_rfc3339(&format!("1970-01-01T{s}")).is_ok()
        }
        "email" => s.contains('@'),
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "uuid" => {
            let hex: String = s.chars().filter(|c| *c != '-').collect();
            hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit())
        }
        _ => true,
    }
}

/// A JSON value as Python's `repr` shows it: `'text'`, `True`, `None`, `{'k': 1}`.
pub fn py_repr(v: &Json) -> String {
    match v {
        Json::Null => "None".to_owned(),
        Json::Bool(true) => "True".to_owned(),
        Json::Bool(false) => "False".to_owned(),
        Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 1e16 => format!("{f:.1}"),
            _ => n.to_string(),
        },
        Json::String(s) => py_str_repr(s),
        Json::Array(items) => {
            let inner: Vec<String> = items.iter().map(py_repr).collect();
            format!("[{}]", inner.join(", "))
        }
        Json::Object(m) => {
            let inner: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{}: {}", py_str_repr(k), py_repr(v)))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
    }
}

/// Python's `repr` of a string: single quotes unless the text has one and no double quote.
/// (The template engine prints strings inside containers with it too.)
pub fn py_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
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

    fn dag_params(name: &str, p: Param) -> IndexMap<String, Param> {
        IndexMap::from([(name.to_owned(), p)])
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

    /// The exact texts Airflow 3.3.2 answered with (HTTP 400 on trigger).
    #[test]
    fn messages_are_airflows() {
        let name = dag_params(
            "name",
            param(
                Some(json!("a")),
                json!({"type": "string", "pattern": "^[a-z]+$"}),
            ),
        );
        assert_eq!(
            validate_conf(&name, &json!({"name": "x; touch /tmp/pwned"}))
                .unwrap_err()
                .to_string(),
            "Invalid input for param name: 'x; touch /tmp/pwned' does not match '^[a-z]+$'\n\n\
             Failed validating 'pattern' in schema:\n    {'type': 'string', 'pattern': '^[a-z]+$'}\n\n\
             On instance:\n    'x; touch /tmp/pwned'"
        );
        let err = validate_conf(&name, &json!({"name": 5})).unwrap_err();
        assert!(
            err.message
                .starts_with("5 is not of type 'string'\n\nFailed validating 'type'"),
            "{err}"
        );
        assert!(validate_conf(&name, &json!({"name": "ok"})).is_ok());
        assert!(
            validate_conf(&name, &json!({})).is_ok(),
            "the default holds"
        );

        let color = dag_params(
            "color",
            param(Some(json!("red")), json!({"enum": ["red", "green"]})),
        );
        let err = validate_conf(&color, &json!({"color": "blue"})).unwrap_err();
        assert!(
            err.message
                .starts_with("'blue' is not one of ['red', 'green']"),
            "{err}"
        );
        let n = dag_params(
            "n",
            param(Some(json!(5)), json!({"type": "integer", "minimum": 3})),
        );
        let err = validate_conf(&n, &json!({"n": 1})).unwrap_err();
        assert!(
            err.message.starts_with("1 is less than the minimum of 3"),
            "{err}"
        );
        let required = dag_params("who", param(None, json!({"type": "string"})));
        assert_eq!(
            validate_conf(&required, &json!({}))
                .unwrap_err()
                .to_string(),
            "Invalid input for param who: No value passed and Param has no default value"
        );
    }

    #[test]
    fn other_keywords() {
        let check = |schema: Json, v: Json| validate(schema.as_object().unwrap(), &v);
        assert!(check(json!({"type": ["string", "null"]}), json!(null)).is_ok());
        assert!(check(json!({"type": "integer"}), json!(true)).is_err());
        assert!(check(json!({"type": "number", "minimum": 0}), json!(true)).is_err());
        assert!(check(json!({"minLength": 2}), json!("ab")).is_ok());
        assert!(
            check(json!({"maxLength": 2}), json!("abc"))
                .unwrap_err()
                .starts_with("'abc' is too long")
        );
        assert!(check(json!({"format": "date"}), json!("2025-01-31")).is_ok());
        assert!(
            check(json!({"format": "date"}), json!("2025-02-31"))
                .unwrap_err()
                .starts_with("'2025-02-31' is not a 'date'")
        );
        assert!(
            check(
                json!({"format": "date-time"}),
                json!("2025-01-01T00:00:00Z")
            )
            .is_ok()
        );
        assert!(check(json!({"exclusiveMaximum": 3}), json!(3)).is_err());
        assert!(check(json!({"multipleOf": 0.5}), json!(1.5)).is_ok());
        let err = check(
            json!({"type": "array", "items": {"type": "integer"}}),
            json!([1, "x"]),
        )
        .unwrap_err();
        assert!(
            err.starts_with(
                "'x' is not of type 'integer'\n\nFailed validating 'type' in schema['items']"
            ),
            "{err}"
        );
        assert!(err.contains("On instance[1]:"), "{err}");
        assert!(
            check(json!({"type": "object", "required": ["a"]}), json!({}))
                .unwrap_err()
                .starts_with("'a' is a required property")
        );
        assert_eq!(
            py_repr(&json!({"a": [1, 2.5, 1.0, "it's", null, true]})),
            "{'a': [1, 2.5, 1.0, \"it's\", None, True]}"
        );
    }
}
