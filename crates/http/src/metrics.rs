//! `/metrics`: this process's Prometheus metrics, with the gauges read from the metadata
//! database at scrape time (pools, DAGs, import errors, unfinished task instances). A scrape
//! while the database is down still answers, with `flow_metadata_db_up 0` and the gauges as
//! they were, so that an alert can say which is wrong.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use flow_store::{MonitorCounts, Store};

use crate::AppState;

/// How long a scrape waits for the database before answering without it.
const DB_WAIT: Duration = Duration::from_secs(2);

pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(web_metrics))
}

/// The router of `--metrics-port` for `flow scheduler`, `flow worker` and `flow triggerer`:
/// `/metrics` alone.
pub fn metrics_router(store: Store) -> Router {
    Router::new()
        .route("/metrics", get(component_metrics))
        .with_state(store)
}

async fn web_metrics(State(state): State<AppState>) -> Response {
    scrape(state.store()).await
}

async fn component_metrics(State(store): State<Store>) -> Response {
    scrape(&store).await
}

async fn scrape(store: &Store) -> Response {
    let m = flow_metrics::metrics();
    match tokio::time::timeout(DB_WAIT, store.monitor_counts()).await {
        Ok(Ok(counts)) => {
            m.metadata_db_up.set(1);
            set_counts(&counts);
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "metrics: the metadata database did not answer");
            m.metadata_db_up.set(0);
        }
        Err(_) => {
            m.metadata_db_up.set(0);
        }
    }
    let mut response = m.encode().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(flow_metrics::CONTENT_TYPE),
    );
    response
}

fn set_counts(c: &MonitorCounts) {
    let m = flow_metrics::metrics();
    m.dagbag_size.set(c.dags);
    m.dag_processing_import_errors.set(c.import_errors);
    // Every unfinished state gets a series, 0 when none is in it, so a query never sees a
    // series vanish when a state empties.
    for state in [
        "scheduled",
        "queued",
        "running",
        "deferred",
        "up_for_retry",
        "up_for_reschedule",
        "restarting",
    ] {
        let n = c.task_instances.get(state).copied().unwrap_or(0);
        m.task_instances
            .get_or_create(&[("state", state.to_owned())])
            .set(n);
    }
    // A deleted pool's series go; the others are set afresh.
    for family in [&m.pool_open_slots, &m.pool_used_slots, &m.pool_queued_slots] {
        family.clear();
    }
    for p in &c.pools {
        let label = [("pool", p.name.clone())];
        // An unlimited pool (slots -1) shows -1 open slots.
        let open = if p.slots < 0 { -1 } else { p.open() };
        m.pool_open_slots.get_or_create(&label).set(open);
        m.pool_used_slots
            .get_or_create(&label)
            .set(p.occupied() - p.queued);
        m.pool_queued_slots.get_or_create(&label).set(p.queued);
    }
}
