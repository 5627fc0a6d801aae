//! `GET /api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/wait` (Airflow 3.1's, experimental there):
//! streams the run's state as NDJSON, one line every `interval` seconds, until it finishes;
//! the last line carries the return values of the tasks named by `result`.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use flow_model::{DagRunState, Permission};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, ApiResult, ApiUser, find_run, query_pairs};
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(wait))
}

/// How long one wait may stream: a client wanting longer asks again.
const MAX_WAIT_SECS: f64 = 24.0 * 3600.0;

fn finished(state: DagRunState) -> bool {
    matches!(state, DagRunState::Success | DagRunState::Failed)
}

#[utoipa::path(get, path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/wait", tag = "DagRun",
    summary = "Stream the run's state (NDJSON) every `interval` seconds until it finishes, then the return values of the `result` tasks",
    params(
        ("dag_id" = String, Path),
        ("dag_run_id" = String, Path),
        ("interval" = f64, Query, description = "Seconds between lines (0.1 to 3600)"),
        ("result" = Option<Vec<String>>, Query, explode = true, description = "Task ids whose return values the last line carries"),
    ),
    responses((status = 200, content_type = "application/x-ndjson", body = String)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn wait(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, run_id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    user.require(Permission::Read)?;
    let pairs = query_pairs(raw.as_deref())?;
    let interval: f64 = pairs
        .iter()
        .find(|(k, _)| k == "interval")
        .ok_or_else(|| ApiError::invalid(&["query", "interval"], "Field required"))?
        .1
        .parse()
        .ok()
        .filter(|v: &f64| (0.1..=3600.0).contains(v))
        .ok_or_else(|| {
            ApiError::invalid(&["query", "interval"], "interval is 0.1 to 3600 seconds")
        })?;
    let results: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "result")
        .flat_map(|(_, v)| v.split(',').map(str::to_owned))
        .filter(|v| !v.is_empty())
        .collect();
    find_run(&state, &dag_id, &run_id).await?;
    let store = state.store().clone();
    let started = std::time::Instant::now();
    let step = std::time::Duration::from_secs_f64(interval);
    // (first line, done): a line now, then one every interval; the stream ends after the
    // finished state.
    let stream = futures_util::stream::unfold((true, false), move |(first, done)| {
        let (store, dag_id, run_id, results) = (
            store.clone(),
            dag_id.clone(),
            run_id.clone(),
            results.clone(),
        );
        async move {
            if done {
                return None;
            }
            if !first {
                tokio::time::sleep(step).await;
            }
            let line = |v: Value| Ok::<_, std::convert::Infallible>(format!("{v}\n"));
            let run = match store.dag_run_get(&dag_id, &run_id).await {
                Ok(Some(r)) => r,
                Ok(None) => return Some((line(json!({"state": "deleted"})), (false, true))),
                // An outage is said, and the wait goes on.
                Err(e) => {
                    return Some((
                        line(json!({"state": null, "error": e.to_string()})),
                        (false, false),
                    ));
                }
            };
            if finished(run.state) {
                let mut out = json!({"state": run.state.as_str()});
                if !results.is_empty() {
                    let xcoms = store
                        .xcom_list_for_run(&dag_id, &run_id)
                        .await
                        .unwrap_or_default();
                    let mut map = serde_json::Map::new();
                    for task in &results {
                        let mut values: Vec<(i64, Value)> = xcoms
                            .iter()
                            .filter(|x| x.task_id == *task && x.key == "return_value")
                            .map(|x| (x.map_index, x.value.clone()))
                            .collect();
                        values.sort_by_key(|(m, _)| *m);
                        let value = match values.as_slice() {
                            [] => Value::Null,
                            [(-1, v)] => v.clone(),
                            many => Value::Array(many.iter().map(|(_, v)| v.clone()).collect()),
                        };
                        map.insert(task.clone(), value);
                    }
                    out["results"] = Value::Object(map);
                }
                return Some((line(out), (false, true)));
            }
            if started.elapsed().as_secs_f64() > MAX_WAIT_SECS {
                let out = json!({"state": run.state.as_str(), "timed_out": true});
                return Some((line(out), (false, true)));
            }
            Some((line(json!({"state": run.state.as_str()})), (false, false)))
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}
