//! Syntax checks for templated fields at load time.
//!
//! Fields such as `bash_command` are Jinja templates rendered when the task runs. Parsing them
//! when the file is loaded turns a typo like `{{ ds }` into an import error with a position,
//! instead of a failed task at 3 a.m. Rendering itself lives with the executor.

use std::collections::HashSet;

use minijinja::Environment;

/// Names Airflow puts in the template context. A top-level name outside this list is probably a
/// typo, but macros and params can add names, so it is only a warning.
pub const CONTEXT_NAMES: &[&str] = &[
    "conf",
    "conn",
    "dag",
    "dag_run",
    "data_interval_end",
    "data_interval_start",
    "ds",
    "ds_nodash",
    "execution_date",
    "expanded_ti_count",
    "inlet_events",
    "inlets",
    "logical_date",
    "macros",
    "map_index_template",
    "next_ds",
    "next_ds_nodash",
    "next_execution_date",
    "outlet_events",
    "outlets",
    "params",
    "prev_data_interval_end_success",
    "prev_data_interval_start_success",
    "prev_ds",
    "prev_ds_nodash",
    "prev_end_date_success",
    "prev_execution_date",
    "prev_execution_date_success",
    "prev_start_date_success",
    "run_id",
    "start_date",
    "task",
    "task_instance",
    "task_instance_key_str",
    "test_mode",
    "ti",
    "tomorrow_ds",
    "tomorrow_ds_nodash",
    "triggering_asset_events",
    "triggering_dataset_events",
    "try_number",
    "ts",
    "ts_nodash",
    "ts_nodash_with_tz",
    "var",
    "yesterday_ds",
    "yesterday_ds_nodash",
];

/// Names flow keeps in the context that Airflow 3 removed (a template using them runs here
/// but fails on Airflow 3 with "'name' is undefined").
pub const REMOVED_IN_AIRFLOW_3: &[&str] = &[
    "execution_date",
    "next_ds",
    "next_ds_nodash",
    "next_execution_date",
    "prev_ds",
    "prev_ds_nodash",
    "prev_execution_date",
    "prev_execution_date_success",
    "tomorrow_ds",
    "tomorrow_ds_nodash",
    "yesterday_ds",
    "yesterday_ds_nodash",
];

/// A problem found in a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateIssue {
    /// The template does not parse; `line` is 1-based within the template.
    Syntax { line: usize, message: String },
    /// Names used at the top level that Airflow's context does not define.
    UnknownNames(Vec<String>),
    /// Names used that Airflow 3 no longer defines.
    RemovedInAirflow3(Vec<String>),
}

/// Checks one template string. Strings without template markers are skipped cheaply.
pub fn check(env: &Environment<'_>, source: &str) -> Vec<TemplateIssue> {
    if !(source.contains("{{") || source.contains("{%") || source.contains("{#")) {
        return Vec::new();
    }
    let template = match env.template_from_str(source) {
        Ok(t) => t,
        Err(e) => {
            return vec![TemplateIssue::Syntax {
                line: e.line().unwrap_or(1),
                message: e.detail().unwrap_or("invalid template").to_owned(),
            }];
        }
    };
    let undeclared: HashSet<String> = template.undeclared_variables(false);
    let mut issues = Vec::new();
    let mut unknown: Vec<String> = undeclared
        .iter()
        .filter(|name| CONTEXT_NAMES.binary_search(&name.as_str()).is_err())
        .cloned()
        .collect();
    if !unknown.is_empty() {
        unknown.sort();
        issues.push(TemplateIssue::UnknownNames(unknown));
    }
    let mut removed: Vec<String> = undeclared
        .into_iter()
        .filter(|name| REMOVED_IN_AIRFLOW_3.binary_search(&name.as_str()).is_ok())
        .collect();
    if !removed.is_empty() {
        removed.sort();
        issues.push(TemplateIssue::RemovedInAirflow3(removed));
    }
    issues
}

/// The run inputs a shell command template prints without quoting: `dag_run.conf` (any of
/// its values) and `params.NAME`, in `{{ ... }}` expressions that do not end in a filter that
/// makes them safe for a shell (`shell_quote`, `int`, `float`). A run's conf can set them to
/// any text, so the command can be made to run anything.
pub fn unquoted_inputs(source: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = source;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let expr = after[..end].trim_matches(|c: char| c == '-' || c.is_whitespace());
        rest = &after[end + 2..];
        let last_filter = expr.rsplit('|').next().unwrap_or("").trim();
        let safe = expr.contains('|')
            && ["shell_quote", "int", "float"]
                .iter()
                .any(|f| last_filter == *f || last_filter.starts_with(&format!("{f}(")));
        if safe {
            continue;
        }
        if expr.contains("dag_run.conf") {
            found.push("dag_run.conf".to_owned());
        }
        found.extend(param_names(expr).into_iter().map(|p| format!("params.{p}")));
    }
    found.dedup();
    found
}

/// `params.NAME`, `params['NAME']` and `params.get('NAME'...)` in an expression.
fn param_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("params") {
        let before_ok = rest[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '.'));
        let after = &rest[i + "params".len()..];
        rest = after;
        if !before_ok {
            continue;
        }
        let ident = |s: &str| -> String {
            s.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        };
        let name = if let Some(a) = after.strip_prefix(".get(") {
            quoted(a.trim_start())
        } else if let Some(a) = after.strip_prefix('.') {
            Some(ident(a)).filter(|n| !n.is_empty())
        } else if let Some(a) = after.strip_prefix('[') {
            quoted(a.trim_start())
        } else {
            None
        };
        out.extend(name);
    }
    out
}

/// The text of a leading `'...'` or `"..."`.
fn quoted(s: &str) -> Option<String> {
    let q = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let inner = &s[1..];
    inner.find(q).map(|end| inner[..end].to_owned())
}

/// The environment templates are checked with (Jinja's defaults, as Airflow uses them).
pub fn environment() -> Environment<'static> {
    Environment::new()
}

/// Whether a string holds template markup at all (plain strings are checked as values).
pub fn has_markup(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_names_are_sorted() {
        assert!(CONTEXT_NAMES.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn checks() {
        let env = environment();
        assert_eq!(check(&env, "echo plain"), vec![]);
        assert_eq!(check(&env, "echo {{ ds }} {{ params.x }}"), vec![]);
        assert_eq!(
            check(&env, "echo {{ dss }}"),
            vec![TemplateIssue::UnknownNames(vec!["dss".into()])]
        );
        match &check(&env, "echo\n{{ ds }")[0] {
            TemplateIssue::Syntax { line, .. } => assert_eq!(*line, 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(check(&env, "{% for x in [1] %}{{ x }}{% endfor %}"), vec![]);
        assert_eq!(
            check(&env, "{{ execution_date }} {{ next_ds }} {{ ds }}"),
            vec![TemplateIssue::RemovedInAirflow3(vec![
                "execution_date".into(),
                "next_ds".into()
            ])]
        );
    }

    #[test]
    fn removed_names_are_sorted() {
        assert!(REMOVED_IN_AIRFLOW_3.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn unquoted_run_inputs() {
        assert_eq!(
            unquoted_inputs("echo {{ params.name }} {{ dag_run.conf['x'] }} {{ ds }}"),
            ["params.name", "dag_run.conf"]
        );
        assert_eq!(
            unquoted_inputs("echo {{ params['a b'] }} {{ params.get('c', 1) }}"),
            ["params.a b", "params.c"]
        );
        assert!(
            unquoted_inputs("echo {{ params.name | shell_quote }} {{ params.n | int }}").is_empty()
        );
        assert!(unquoted_inputs("echo {{ myparams.x }} {{ ti.xcom_pull('t') }}").is_empty());
    }
}
