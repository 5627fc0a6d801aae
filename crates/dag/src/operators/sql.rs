//! `operator: sql`: statements on a `postgres`, `mysql` or `sqlite` connection, the result rows
//! as the XCom (Airflow's SQLExecuteQueryOperator, and the PostgresOperator, MySqlOperator and
//! SqliteOperator that preceded it).

use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::{OperatorKind, ReadOp};
use crate::build::{Ctx, check_template, check_templates_in};
use crate::dag::Operator;
use crate::de::to_json;
use crate::spec::{AnyValue, Raw};
use crate::yaml::{Node, Span, Value};

/// What the YAML may say: Airflow's arguments, with the legacy operators' connection keys.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlSpec {
    /// A `postgres`, `mysql` or `sqlite` connection.
    pub conn_id: Option<String>,
    /// PostgresOperator's name for `conn_id` (default `postgres_default`).
    pub postgres_conn_id: Option<String>,
    /// MySqlOperator's name for `conn_id` (default `mysql_default`).
    pub mysql_conn_id: Option<String>,
    /// SqliteOperator's name for `conn_id` (default `sqlite_default`).
    pub sqlite_conn_id: Option<String>,
    /// Overrides the connection's `schema` (the database).
    pub database: Option<String>,
    /// A statement, a list of statements, or a `.sql` file beside the DAG (all templated).
    #[schemars(with = "serde_json::Value")]
    pub sql: Raw<AnyValue>,
    /// Bound into the statements: a list for `%s` (`?` on SQLite), a mapping for
    /// `%(name)s` (`:name` on SQLite). Templated.
    #[schemars(with = "Option<serde_json::Value>")]
    pub parameters: Option<Raw<AnyValue>>,
    /// Split a string of several statements on `;` (default false, as Airflow).
    pub split_statements: Option<bool>,
    /// Commit after each statement instead of once at the end (default false).
    pub autocommit: Option<bool>,
    /// Only the last statement's rows are the XCom (default true).
    pub return_last: Option<bool>,
    /// Log the result rows (default false).
    pub show_return_value_in_logs: Option<bool>,
}

/// The statements, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum SqlStatements {
    /// One string: a statement, several (with `split_statements`), or a `.sql` file name.
    Text(String),
    /// One statement per item.
    List(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SqlOperator {
    pub conn_id: String,
    pub database: Option<String>,
    /// Templated.
    pub sql: SqlStatements,
    /// `null`, a list or a mapping; every string in it templated.
    pub parameters: Json,
    pub split_statements: bool,
    pub autocommit: bool,
    pub return_last: bool,
    pub show_return_value_in_logs: bool,
}

pub(crate) struct Sql;

impl OperatorKind for Sql {
    const NAME: &'static str = "sql";
    const ALIASES: &'static [&'static str] = &[
        "SQLExecuteQueryOperator",
        "airflow.providers.common.sql.operators.sql.SQLExecuteQueryOperator",
        "PostgresOperator",
        "airflow.providers.postgres.operators.postgres.PostgresOperator",
        "airflow.operators.postgres_operator.PostgresOperator",
        "MySqlOperator",
        "airflow.providers.mysql.operators.mysql.MySqlOperator",
        "airflow.operators.mysql_operator.MySqlOperator",
        "SqliteOperator",
        "airflow.providers.sqlite.operators.sqlite.SqliteOperator",
        "airflow.operators.sqlite_operator.SqliteOperator",
    ];
    const MODULE: &'static str = "airflow.providers.common.sql.operators.sql";
    const CLASS: &'static str = "SQLExecuteQueryOperator";
    const TEMPLATE_FIELDS: &'static [&'static str] = &["sql", "parameters", "conn_id", "database"];
    const UI_COLOR: &'static str = "#cdaaed";
    type Spec = SqlSpec;

    fn build(ctx: &mut Ctx<'_>, spec: Self::Spec, read: &mut ReadOp<'_>) -> Option<Operator> {
        let conn_id = sql_conn_id(
            ctx,
            read,
            vec![
                ("conn_id", spec.conn_id),
                ("postgres_conn_id", spec.postgres_conn_id),
                ("mysql_conn_id", spec.mysql_conn_id),
                ("sqlite_conn_id", spec.sqlite_conn_id),
            ],
        )?;
        let sql = read_statements(ctx, &spec.sql.node)?;
        let parameters = read_parameters(ctx, spec.parameters.as_ref());
        Some(Operator::Sql(SqlOperator {
            conn_id,
            database: spec.database,
            sql,
            parameters,
            split_statements: spec.split_statements.unwrap_or(false),
            autocommit: spec.autocommit.unwrap_or(false),
            return_last: spec.return_last.unwrap_or(true),
            show_return_value_in_logs: spec.show_return_value_in_logs.unwrap_or(false),
        }))
    }
}

/// The one connection key set, or the legacy operator's default connection.
pub(crate) fn sql_conn_id(
    ctx: &mut Ctx<'_>,
    read: &ReadOp<'_>,
    keys: Vec<(&'static str, Option<String>)>,
) -> Option<String> {
    let set: Vec<(&str, String)> = keys
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    let (key, id) = match set.as_slice() {
        [] => {
            let default = match read.alias.rsplit('.').next().unwrap_or_default() {
                "PostgresOperator" => "postgres_default",
                "MySqlOperator" => "mysql_default",
                "SqliteOperator" => "sqlite_default",
                _ => {
                    ctx.error(
                        read.fallback,
                        "`conn_id` is required: a postgres, mysql or sqlite connection",
                    );
                    return None;
                }
            };
            return Some(default.to_owned());
        }
        [(key, id)] => (*key, id.clone()),
        [_, (second, _), ..] => {
            ctx.error(
                read.span_of(second),
                format!("set one connection key, not `{}` and `{second}`", set[0].0),
            );
            return None;
        }
    };
    if let Err(e) = flow_model::ids::validate_id("conn_id", &id) {
        ctx.error(read.span_of(key), format!("`{key}`: {e}"));
        return None;
    }
    Some(id)
}

/// `sql`: a string or a list of strings, each a template; a `.sql` file name must exist.
pub(crate) fn read_statements(ctx: &mut Ctx<'_>, node: &Node) -> Option<SqlStatements> {
    match &node.value {
        Value::Scalar(s) => {
            let text = s.text.clone();
            if text.trim().is_empty() {
                ctx.error(node.span, "`sql` is empty");
                return None;
            }
            check_sql_text(ctx, &text, node.span);
            Some(SqlStatements::Text(text))
        }
        Value::Seq(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item.as_str() {
                    Some(text) if !text.trim().is_empty() => {
                        check_sql_text(ctx, text, item.span);
                        out.push(text.to_owned());
                    }
                    _ => ctx.error(
                        item.span,
                        "`sql`: each statement must be a non-empty string",
                    ),
                }
            }
            if out.is_empty() {
                ctx.error(node.span, "`sql`: the list is empty");
                return None;
            }
            Some(SqlStatements::List(out))
        }
        _ => {
            ctx.error(
                node.span,
                format!(
                    "`sql`: expected a statement, a list of statements or a .sql file, found {}",
                    node.kind()
                ),
            );
            None
        }
    }
}

/// A template, or the name of a `.sql` template file in the DAG's folder or the dags folder.
fn check_sql_text(ctx: &mut Ctx<'_>, text: &str, span: Span) {
    if !is_sql_file(text) {
        check_template(ctx, "sql", text, span);
        return;
    }
    let name = Path::new(text.trim());
    let dirs = [
        ctx.files.first().and_then(|f| f.parent()),
        Some(ctx.dags_root),
    ];
    let found = name.is_absolute() && name.is_file()
        || dirs.iter().flatten().any(|d| d.join(name).is_file());
    if !found {
        ctx.error(
            span,
            format!(
                "`sql`: template file `{}` not found beside the DAG file or in the dags folder",
                name.display()
            ),
        );
    }
}

/// Whether `sql` names a template file, as Airflow decides for `template_ext = (".sql",)`.
pub fn is_sql_file(text: &str) -> bool {
    let t = text.trim();
    t.ends_with(".sql") && !t.contains('\n') && !t.contains(' ')
}

/// `parameters`: a list or a mapping (every string templated), or nothing.
pub(crate) fn read_parameters(ctx: &mut Ctx<'_>, raw: Option<&Raw<AnyValue>>) -> Json {
    let Some(raw) = raw else {
        return Json::Null;
    };
    check_templates_in(ctx, "parameters", &raw.node);
    match to_json(&raw.node) {
        v @ (Json::Array(_) | Json::Object(_) | Json::Null) => v,
        Json::String(s) if crate::template::has_markup(&s) => Json::String(s),
        other => {
            ctx.error(
                raw.node.span,
                format!("`parameters`: expected a list or a mapping, found `{other}`"),
            );
            Json::Null
        }
    }
}
