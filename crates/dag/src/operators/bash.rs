//! `operator: bash`: a shell command (Airflow's BashOperator).

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::{OperatorKind, ReadOp};
use crate::build::{Ctx, MAPPED_PLACEHOLDER, check_template, check_templates_in};
use crate::dag::Operator;
use crate::de::to_json;
use crate::spec::{AnyValue, Raw};
use crate::yaml::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BashOperator {
    /// A Jinja template, rendered at run time.
    pub bash_command: String,
    pub env: Option<IndexMap<String, String>>,
    pub append_env: bool,
    pub cwd: Option<String>,
    /// Exit codes meaning "skipped" (Airflow's default: 99).
    pub skip_on_exit_code: Vec<i32>,
    pub output_encoding: String,
}

/// `operator: bash`: runs a shell command (Airflow's BashOperator).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BashSpec {
    /// The command, a Jinja template; run with `bash -c`.
    pub bash_command: String,
    /// Environment variables (templated). Replaces the inherited environment unless
    /// `append_env` is true.
    pub env: Option<IndexMap<String, String>>,
    pub append_env: Option<bool>,
    /// Working directory (templated).
    pub cwd: Option<String>,
    /// Exit codes that mean "skipped" (default 99).
    #[schemars(with = "Option<serde_json::Value>")]
    pub skip_on_exit_code: Option<Raw<AnyValue>>,
    pub output_encoding: Option<String>,
}

pub(crate) struct Bash;

impl OperatorKind for Bash {
    const NAME: &'static str = "bash";
    const ALIASES: &'static [&'static str] = &[
        "BashOperator",
        "airflow.operators.bash.BashOperator",
        "airflow.operators.bash_operator.BashOperator",
        "airflow.providers.standard.operators.bash.BashOperator",
    ];
    const MODULE: &'static str = "airflow.providers.standard.operators.bash";
    const CLASS: &'static str = "BashOperator";
    const TEMPLATE_FIELDS: &'static [&'static str] = &["bash_command", "env", "cwd"];
    const UI_COLOR: &'static str = "#f0ede4";
    const MAPPABLE: &'static [&'static str] = &["bash_command"];
    type Spec = BashSpec;

    fn build(ctx: &mut Ctx<'_>, spec: Self::Spec, read: &mut ReadOp<'_>) -> Option<Operator> {
        let (node, fallback) = (read.node, read.fallback);
        let span_of = |key: &str| node.get(key).map_or(fallback, |n| n.span);
        // A mapped command is checked where it is written (`expand` or `partial`).
        if spec.bash_command != MAPPED_PLACEHOLDER {
            if spec.bash_command.trim().is_empty() {
                ctx.error(span_of("bash_command"), "`bash_command` is empty");
            }
            check_template(
                ctx,
                "bash_command",
                &spec.bash_command,
                span_of("bash_command"),
            );
        }
        if let Some(env) = node.get("env") {
            check_templates_in(ctx, "env", env);
        }
        if let Some(cwd) = &spec.cwd {
            check_template(ctx, "cwd", cwd, span_of("cwd"));
        }
        // Absent: Airflow's default, 99. `null`: no exit code means skipped.
        let explicit_null = node
            .get("skip_on_exit_code")
            .is_some_and(|n| matches!(n.value, Value::Null));
        let skip_on_exit_code = match &spec.skip_on_exit_code {
            _ if explicit_null => Vec::new(),
            None => vec![99],
            Some(raw) => match to_json(&raw.node) {
                Json::Null => Vec::new(),
                Json::Number(n) => n
                    .as_i64()
                    .and_then(|n| i32::try_from(n).ok())
                    .into_iter()
                    .collect(),
                Json::Array(items) => items
                    .iter()
                    .filter_map(|i| i.as_i64().and_then(|n| i32::try_from(n).ok()))
                    .collect(),
                _ => {
                    ctx.error(
                        raw.node.span,
                        "`skip_on_exit_code` must be an exit code or a list of exit codes",
                    );
                    Vec::new()
                }
            },
        };
        Some(Operator::Bash(BashOperator {
            bash_command: spec.bash_command,
            env: spec.env,
            append_env: spec.append_env.unwrap_or(false),
            cwd: spec.cwd,
            skip_on_exit_code,
            output_encoding: spec.output_encoding.unwrap_or_else(|| "utf-8".to_owned()),
        }))
    }
}
