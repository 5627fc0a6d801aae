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

/// A problem found in a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateIssue {
    /// The template does not parse; `line` is 1-based within the template.
    Syntax { line: usize, message: String },
    /// Names used at the top level that Airflow's context does not define.
    UnknownNames(Vec<String>),
}

/// Checks one template string. Strings without template markers are skipped cheaply.
pub fn check(env: &Environment<'_>, source: &str) -> Option<TemplateIssue> {
    if !(source.contains("{{") || source.contains("{%") || source.contains("{#")) {
        return None;
    }
    let template = match env.template_from_str(source) {
        Ok(t) => t,
        Err(e) => {
            return Some(TemplateIssue::Syntax {
                line: e.line().unwrap_or(1),
                message: e.detail().unwrap_or("invalid template").to_owned(),
            });
        }
    };
    let undeclared: HashSet<String> = template.undeclared_variables(false);
    let mut unknown: Vec<String> = undeclared
        .into_iter()
        .filter(|name| CONTEXT_NAMES.binary_search(&name.as_str()).is_err())
        .collect();
    if unknown.is_empty() {
        return None;
    }
    unknown.sort();
    Some(TemplateIssue::UnknownNames(unknown))
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
        assert_eq!(check(&env, "echo plain"), None);
        assert_eq!(check(&env, "echo {{ ds }} {{ params.x }}"), None);
        assert_eq!(
            check(&env, "echo {{ dss }}"),
            Some(TemplateIssue::UnknownNames(vec!["dss".into()]))
        );
        match check(&env, "echo\n{{ ds }").unwrap() {
            TemplateIssue::Syntax { line, .. } => assert_eq!(line, 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(check(&env, "{% for x in [1] %}{{ x }}{% endfor %}"), None);
    }
}
