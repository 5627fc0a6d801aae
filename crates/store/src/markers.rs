//! Clearing across DAGs: a cleared ExternalTaskMarker also clears the task it names in the
//! other DAG's run at the same logical date, with that task's downstream tasks, following
//! further markers up to the marker's `recursion_depth` (Airflow's dependent-DAG clear).

use chrono::{DateTime, Utc};
use flow_dag::{Dag, Operator};
use flow_model::TaskInstanceState as S;

use crate::{Result, Store, TiKey};

impl Store {
    /// `keys` (task instances of `dag` to clear, each with its task's retries) plus what the
    /// ExternalTaskMarkers among them reach in other DAGs.
    pub async fn clear_across_markers(
        &self,
        dag: &Dag,
        keys: Vec<(TiKey, i64)>,
    ) -> Result<Vec<(TiKey, i64)>> {
        let mut out = keys;
        // (dag, marker keys, depth left)
        let mut work: Vec<(Dag, Vec<TiKey>, Option<u32>)> = vec![(
            dag.clone(),
            out.iter().map(|(k, _)| k.clone()).collect(),
            None,
        )];
        while let Some((dag, keys, depth)) = work.pop() {
            for key in keys {
                let Some(task) = dag.task(&key.task_id) else {
                    continue;
                };
                let Operator::ExternalTaskMarker(marker) = &task.operator else {
                    continue;
                };
                let depth = depth.unwrap_or(marker.recursion_depth);
                if depth == 0 {
                    continue;
                }
                let Some(run) = self.dag_run_get(&key.dag_id, &key.run_id).await? else {
                    continue;
                };
                let at = marker
                    .logical_date
                    .as_deref()
                    .and_then(|d| DateTime::parse_from_rfc3339(d.trim()).ok())
                    .map(|d| d.with_timezone(&Utc))
                    .or(run.logical_date);
                let Some(at) = at else { continue };
                let Some((data, _)) = self.serialized_dag_get(&marker.external_dag_id).await?
                else {
                    continue;
                };
                let Ok(external) = Dag::from_json(&data) else {
                    continue;
                };
                let Some(ext_run) = self.dag_run_at(&marker.external_dag_id, at).await? else {
                    continue;
                };
                let mut reach = external.all_downstream(&marker.external_task_id);
                reach.push(marker.external_task_id.clone());
                let mut found = Vec::new();
                for ti in self
                    .ti_list_for_run(&marker.external_dag_id, &ext_run.run_id)
                    .await?
                {
                    if !reach.contains(&ti.key.task_id)
                        || matches!(ti.state, S::NoStatus | S::Removed)
                        || out.iter().any(|(k, _)| *k == ti.key)
                    {
                        continue;
                    }
                    let retries = external
                        .task(&ti.key.task_id)
                        .map_or(0, |t| i64::from(t.retries));
                    found.push(ti.key.clone());
                    out.push((ti.key, retries));
                }
                work.push((external, found, Some(depth - 1)));
            }
        }
        Ok(out)
    }
}
