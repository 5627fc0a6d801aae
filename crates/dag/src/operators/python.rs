//! `operator: python` and TaskFlow `decorator:` tasks: a Python function called in a `python3`
//! process (Airflow's PythonOperator and `@task`).

use std::path::PathBuf;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::{OperatorKind, ReadOp};
use crate::build::{Ctx, check_templates_in, is_dotted_identifier, is_identifier, read_arg};
use crate::dag::{Arg, Operator};
use crate::de::to_json;
use crate::spec::{AnyValue, Raw};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PythonOperator {
    pub callable: PythonCallable,
    pub op_args: Vec<Arg>,
    pub op_kwargs: IndexMap<String, Arg>,
    pub templates_dict: IndexMap<String, Json>,
    pub show_return_value_in_logs: bool,
    /// A TaskFlow (`decorator:`) task: extra keys are the function's keyword arguments.
    pub decorated: bool,
}

/// Where the Python function lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PythonCallable {
    /// `module.function`, importable with the dags folder on `sys.path`.
    Module { module: String, function: String },
    /// A function in a file (dag-factory's `python_callable_file` + `python_callable_name`).
    File { path: PathBuf, function: String },
}

/// `operator: python` or a `decorator:` task: calls a Python function in a `python3` process.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PythonSpec {
    /// `module.function`, importable from the dags folder.
    pub python_callable: Option<String>,
    /// The function's name, with `python_callable_file`.
    pub python_callable_name: Option<String>,
    /// The file defining the function; `$CONFIG_ROOT_DIR` is the dags folder.
    pub python_callable_file: Option<String>,
    #[schemars(with = "Option<Vec<serde_json::Value>>")]
    pub op_args: Option<Raw<AnyValue>>,
    #[schemars(with = "Option<IndexMap<String, serde_json::Value>>")]
    pub op_kwargs: Option<Raw<AnyValue>>,
    #[schemars(with = "Option<IndexMap<String, serde_json::Value>>")]
    pub templates_dict: Option<Raw<AnyValue>>,
    pub show_return_value_in_logs: Option<bool>,
}

pub(crate) struct Python;

impl OperatorKind for Python {
    const NAME: &'static str = "python";
    const ALIASES: &'static [&'static str] = &[
        "PythonOperator",
        "airflow.operators.python.PythonOperator",
        "airflow.operators.python_operator.PythonOperator",
        "airflow.providers.standard.operators.python.PythonOperator",
    ];
    const MODULE: &'static str = "airflow.providers.standard.operators.python";
    const CLASS: &'static str = "PythonOperator";
    const TEMPLATE_FIELDS: &'static [&'static str] = &["templates_dict", "op_args", "op_kwargs"];
    const UI_COLOR: &'static str = "#ffefeb";
    type Spec = PythonSpec;

    fn build(ctx: &mut Ctx<'_>, spec: Self::Spec, read: &mut ReadOp<'_>) -> Option<Operator> {
        let (node, fallback) = (read.node, read.fallback);
        let (decorated, kwargs_node) = (read.decorated, read.kwargs);
        let references = &mut *read.references;
        let span_of = |key: &str| node.get(key).map_or(fallback, |n| n.span);
        let callable = match (
            &spec.python_callable,
            &spec.python_callable_name,
            &spec.python_callable_file,
        ) {
            (Some(path), None, None) => match path.rsplit_once('.') {
                Some((module, function))
                    if is_dotted_identifier(module) && is_identifier(function) =>
                {
                    PythonCallable::Module {
                        module: module.to_owned(),
                        function: function.to_owned(),
                    }
                }
                _ => {
                    ctx.error(
                        span_of("python_callable"),
                        format!("`python_callable`: `{path}` is not of the form `module.function`"),
                    );
                    return None;
                }
            },
            (None, Some(function), Some(file)) => {
                if !is_identifier(function) {
                    ctx.error(
                        span_of("python_callable_name"),
                        format!("`python_callable_name`: `{function}` is not a Python identifier"),
                    );
                    return None;
                }
                let path = ctx.callable_file(file);
                PythonCallable::File {
                    path,
                    function: function.to_owned(),
                }
            }
            (None, Some(_), None) | (None, None, Some(_)) => {
                ctx.error(
                    fallback,
                    "`python_callable_name` and `python_callable_file` go together",
                );
                return None;
            }
            (Some(_), _, _) => {
                ctx.error(span_of("python_callable"), "set `python_callable` or `python_callable_name` + `python_callable_file`, not both");
                return None;
            }
            (None, None, None) => {
                ctx.error(fallback, "no `python_callable`: set `module.function`, or `python_callable_name` + `python_callable_file`");
                return None;
            }
        };
        let op_args = match &spec.op_args {
            None => Vec::new(),
            Some(raw) => match raw.node.as_seq() {
                Some(items) => items
                    .iter()
                    .map(|i| read_arg(i, decorated, references))
                    .collect(),
                None => {
                    ctx.error(
                        raw.node.span,
                        format!("`op_args`: expected a list, found {}", raw.node.kind()),
                    );
                    Vec::new()
                }
            },
        };
        let mut op_kwargs = IndexMap::new();
        if let Some(raw) = &spec.op_kwargs {
            match raw.node.as_map() {
                Some(entries) => {
                    for (k, v) in entries {
                        op_kwargs.insert(
                            k.as_str().unwrap_or("null").to_owned(),
                            read_arg(v, decorated, references),
                        );
                    }
                }
                None if raw.node.is_null() => {}
                None => ctx.error(
                    raw.node.span,
                    format!("`op_kwargs`: expected a mapping, found {}", raw.node.kind()),
                ),
            }
        }
        for (k, v) in kwargs_node.as_map().unwrap_or_default() {
            op_kwargs.insert(
                k.as_str().unwrap_or("null").to_owned(),
                read_arg(v, true, references),
            );
        }
        for field in ["op_args", "op_kwargs", "templates_dict"] {
            if let Some(n) = node.get(field) {
                check_templates_in(ctx, field, n);
            }
        }
        let templates_dict = match &spec.templates_dict {
            None => IndexMap::new(),
            Some(raw) => match to_json(&raw.node) {
                Json::Object(m) => m.into_iter().collect(),
                Json::Null => IndexMap::new(),
                _ => {
                    ctx.error(raw.node.span, "`templates_dict`: expected a mapping");
                    IndexMap::new()
                }
            },
        };
        Some(Operator::Python(PythonOperator {
            callable,
            op_args,
            op_kwargs,
            templates_dict,
            show_return_value_in_logs: spec.show_return_value_in_logs.unwrap_or(true),
            decorated,
        }))
    }
}
