//! The XComs of one dag run, fetched before the task starts, and Airflow's `xcom_pull` rules
//! over them.
//!
//! Templates are rendered without touching the database: the worker loads the run's XComs
//! once and hands them over here. This module knows nothing of where they came from.
//!
//! Most tasks never look at an XCom, and a wide run has thousands of them, so the worker first
//! renders with [`XcomMap::unfetched`]: any lookup marks it as wanted, and the worker then
//! fetches the run's XComs and renders again. Loading them for every try would make a run of
//! n tasks read O(n^2) rows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value as Json;

/// Airflow's default XCom key: a task's return value.
pub const RETURN_VALUE: &str = "return_value";

/// XComs of one dag run: `(task_id, key, map_index) -> value`. `map_index` is -1 for an
/// unmapped task, as in Airflow.
#[derive(Debug, Clone, Default)]
pub struct XcomMap {
    entries: BTreeMap<(String, String, i64), Json>,
    /// `Some` while the run's XComs have not been fetched: a lookup sets the flag (shared by
    /// clones) and finds nothing.
    unfetched: Option<Arc<AtomicBool>>,
}

impl PartialEq for XcomMap {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries && self.unfetched.is_some() == other.unfetched.is_some()
    }
}

/// Which map indexes to pull.
#[derive(Debug, Clone, PartialEq)]
pub enum MapIndexes {
    /// Not given: the unmapped value, or all values of a mapped task (Airflow 3's rule).
    Any,
    One(i64),
    Many(Vec<i64>),
}

impl XcomMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// A map standing for XComs not fetched yet: empty, and remembering whether anything
    /// looked into it ([`XcomMap::was_wanted`]).
    pub fn unfetched() -> Self {
        XcomMap {
            entries: BTreeMap::new(),
            unfetched: Some(Arc::new(AtomicBool::new(false))),
        }
    }

    /// Whether this map stands for XComs not fetched yet.
    pub fn is_unfetched(&self) -> bool {
        self.unfetched.is_some()
    }

    /// Whether a lookup found this map unfetched: what was rendered with it may be wrong.
    pub fn was_wanted(&self) -> bool {
        self.unfetched
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    }

    fn note_lookup(&self) {
        if let Some(flag) = &self.unfetched {
            flag.store(true, Ordering::Relaxed);
        }
    }

    pub fn insert(
        &mut self,
        task_id: impl Into<String>,
        key: impl Into<String>,
        map_index: i64,
        value: Json,
    ) {
        self.entries
            .insert((task_id.into(), key.into(), map_index), value);
    }

    pub fn get(&self, task_id: &str, key: &str, map_index: i64) -> Option<&Json> {
        self.note_lookup();
        self.entries
            .get(&(task_id.to_owned(), key.to_owned(), map_index))
    }

    pub fn is_empty(&self) -> bool {
        self.note_lookup();
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.note_lookup();
        self.entries.len()
    }

    /// All entries, ordered by task id, key and map index.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, i64, &Json)> {
        self.note_lookup();
        self.entries
            .iter()
            .map(|((t, k, m), v)| (t.as_str(), k.as_str(), *m, v))
    }

    /// Values of a mapped task's instances under `key`, ordered by map index.
    fn mapped(&self, task_id: &str, key: &str) -> Vec<&Json> {
        self.iter()
            .filter(|(t, k, m, _)| *t == task_id && *k == key && *m >= 0)
            .map(|(_, _, _, v)| v)
            .collect()
    }

    /// The value a task produced for `key`: the unmapped value, or for a mapped task the list
    /// of its instances' values in map index order. This is what a `+task` argument
    /// (Airflow's `XComArg`) resolves to.
    pub fn output(&self, task_id: &str, key: &str) -> Option<Json> {
        if let Some(v) = self.get(task_id, key, -1) {
            return Some(v.clone());
        }
        let mapped = self.mapped(task_id, key);
        if mapped.is_empty() {
            None
        } else {
            Some(Json::Array(mapped.into_iter().cloned().collect()))
        }
    }

    /// The value for one task and a map index selection; `None` if nothing matches.
    fn pull_one(&self, task_id: &str, key: &str, map_indexes: &MapIndexes) -> Option<Json> {
        match map_indexes {
            MapIndexes::Any => self.output(task_id, key),
            MapIndexes::One(i) => self.get(task_id, key, *i).cloned(),
            MapIndexes::Many(indexes) => Some(Json::Array(
                indexes
                    .iter()
                    .filter_map(|i| self.get(task_id, key, *i).cloned())
                    .collect(),
            )),
        }
    }

    /// Airflow's `ti.xcom_pull`.
    ///
    /// - `task_ids` a single id: that task's value (or `None`).
    /// - `task_ids` a list: a list with one value per task id, in `task_ids` order, `None`
    ///   where a task pushed nothing (Airflow 3 keeps the positions).
    /// - no `task_ids`: Airflow 2 pulls the key from any task of the run; here the first task
    ///   in id order that has it.
    pub fn pull(&self, task_ids: &TaskIds, key: &str, map_indexes: &MapIndexes) -> Option<Json> {
        match task_ids {
            TaskIds::One(task_id) => self.pull_one(task_id, key, map_indexes),
            TaskIds::Many(ids) => {
                let mut out = Vec::new();
                for id in ids {
                    match (map_indexes, self.pull_one(id, key, map_indexes)) {
                        (MapIndexes::Many(_), Some(Json::Array(values))) => out.extend(values),
                        (_, Some(v)) => out.push(v),
                        (MapIndexes::Many(_), None) => {}
                        (_, None) => out.push(Json::Null),
                    }
                }
                Some(Json::Array(out))
            }
            TaskIds::All => {
                let first = self
                    .iter()
                    .find(|(_, k, m, _)| {
                        *k == key
                            && match map_indexes {
                                MapIndexes::Any => true,
                                MapIndexes::One(i) => m == i,
                                MapIndexes::Many(list) => list.contains(m),
                            }
                    })
                    .map(|(t, _, _, _)| t.to_owned())?;
                self.pull_one(&first, key, map_indexes)
            }
        }
    }
}

/// The `task_ids` argument of `xcom_pull`.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskIds {
    All,
    One(String),
    Many(Vec<String>),
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sample() -> XcomMap {
        let mut x = XcomMap::new();
        x.insert("extract", RETURN_VALUE, -1, json!("42"));
        x.insert("extract", "rows", -1, json!(7));
        x.insert("mapped", RETURN_VALUE, 1, json!("b"));
        x.insert("mapped", RETURN_VALUE, 0, json!("a"));
        x.insert("mapped", RETURN_VALUE, 2, json!("c"));
        x
    }

    #[test]
    fn unfetched_remembers_a_lookup() {
        let x = XcomMap::unfetched();
        let shared = x.clone();
        assert!(!x.was_wanted());
        assert_eq!(
            shared.pull(&TaskIds::One("a".into()), RETURN_VALUE, &MapIndexes::Any),
            None
        );
        assert!(x.was_wanted(), "a clone shares the flag");
        let fetched = sample();
        assert!(fetched.get("extract", "rows", -1).is_some());
        assert!(!fetched.was_wanted() && !fetched.is_unfetched());
    }

    #[test]
    fn pull_forms() {
        let x = sample();
        let one = |t: &str| TaskIds::One(t.into());
        assert_eq!(
            x.pull(&one("extract"), RETURN_VALUE, &MapIndexes::Any),
            Some(json!("42"))
        );
        assert_eq!(
            x.pull(&one("extract"), "rows", &MapIndexes::Any),
            Some(json!(7))
        );
        assert_eq!(x.pull(&one("nope"), RETURN_VALUE, &MapIndexes::Any), None);
        assert_eq!(
            x.pull(&one("mapped"), RETURN_VALUE, &MapIndexes::Any),
            Some(json!(["a", "b", "c"]))
        );
        assert_eq!(
            x.pull(&one("mapped"), RETURN_VALUE, &MapIndexes::One(1)),
            Some(json!("b"))
        );
        assert_eq!(
            x.pull(
                &one("mapped"),
                RETURN_VALUE,
                &MapIndexes::Many(vec![2, 0, 9])
            ),
            Some(json!(["c", "a"]))
        );
        assert_eq!(
            x.pull(
                &TaskIds::Many(vec!["extract".into(), "nope".into(), "mapped".into()]),
                RETURN_VALUE,
                &MapIndexes::Any
            ),
            Some(json!(["42", null, ["a", "b", "c"]])),
            "positions are kept, as in Airflow 3"
        );
        assert_eq!(
            x.pull(&TaskIds::All, "rows", &MapIndexes::Any),
            Some(json!(7))
        );
        assert_eq!(x.pull(&TaskIds::All, "missing", &MapIndexes::Any), None);
    }
}
