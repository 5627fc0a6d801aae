//! The variables a task's templates see: the metadata database's, overridden by the worker's
//! environment (`FLOW_VAR_<KEY>`, `AIRFLOW_VAR_<KEY>`), which Airflow's secrets backends read
//! before the database.

use std::collections::HashMap;

/// `stored` (key, value) pairs with the environment's overrides: an override is kept under
/// its upper-case key (`FOO`, which lookups of `foo` in any case fall back to) and replaces a
/// stored variable whose upper-cased key matches. `FLOW_VAR_` wins over `AIRFLOW_VAR_`.
pub fn variables_with_env(
    stored: impl IntoIterator<Item = (String, String)>,
    env: impl IntoIterator<Item = (String, String)>,
) -> HashMap<String, String> {
    let mut overrides: HashMap<String, (u8, String)> = HashMap::new();
    for (name, value) in env {
        let (rank, key) = if let Some(k) = name.strip_prefix("FLOW_VAR_") {
            (2, k)
        } else if let Some(k) = name.strip_prefix("AIRFLOW_VAR_") {
            (1, k)
        } else {
            continue;
        };
        if key.is_empty() {
            continue;
        }
        let key = key.to_uppercase();
        if overrides.get(&key).is_none_or(|(r, _)| *r < rank) {
            overrides.insert(key, (rank, value));
        }
    }
    let mut out: HashMap<String, String> = stored
        .into_iter()
        .map(|(k, v)| match overrides.get(&k.to_uppercase()) {
            Some((_, env)) => (k, env.clone()),
            None => (k, v),
        })
        .collect();
    for (key, (_, value)) in overrides {
        out.insert(key, value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_overrides_the_database() {
        let vars = variables_with_env(
            [
                ("region".to_owned(), "db".to_owned()),
                ("other".to_owned(), "kept".to_owned()),
            ],
            [
                ("AIRFLOW_VAR_REGION".to_owned(), "airflow-env".to_owned()),
                ("FLOW_VAR_REGION".to_owned(), "flow-env".to_owned()),
                ("AIRFLOW_VAR_ONLY_ENV".to_owned(), "x".to_owned()),
                ("PATH".to_owned(), "/bin".to_owned()),
            ],
        );
        assert_eq!(vars["region"], "flow-env");
        assert_eq!(vars["REGION"], "flow-env");
        assert_eq!(vars["other"], "kept");
        assert_eq!(vars["ONLY_ENV"], "x");
        assert!(!vars.contains_key("PATH"));
    }
}
