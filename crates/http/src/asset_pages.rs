//! The Assets pages: every asset with the tasks that update it, the DAGs scheduled on it and
//! its latest event; one asset's events with the runs they triggered; and, for operators, a
//! form that records an event by hand (as `POST /api/v2/assets/events` does).

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::Utc;
use flow_model::Permission;
use flow_store::{AssetEventQuery, AssetQuery};
use serde::Deserialize;

use crate::views::{self, Chrome, page};
use crate::{AppState, CurrentUser, HttpError};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/assets", get(list))
        .route("/assets/{asset_id}", get(detail))
        .route("/assets/{asset_id}/events", post(create_event))
}

/// How many assets the list shows; more are reached through the API.
const PAGE: i64 = 500;

async fn list(State(state): State<AppState>, user: CurrentUser) -> Result<Response, HttpError> {
    user.require(Permission::Read)?;
    let store = state.store();
    let (assets, total) = store
        .asset_query(&AssetQuery {
            order_by: Some(("uri".into(), false)),
            limit: PAGE,
            ..AssetQuery::default()
        })
        .await?;
    let ids: Vec<i64> = assets.iter().map(|a| a.id).collect();
    let refs = store.asset_references(&ids).await?;
    let last = store.asset_last_events(&ids).await?;
    let queued = store.asset_queued_events(None, None).await?;
    let items = assets
        .into_iter()
        .map(|a| {
            let mine = refs.get(&a.id).cloned().unwrap_or_default();
            let pick = |kind: &str| -> Vec<(String, String)> {
                mine.iter()
                    .filter(|r| r.kind == kind)
                    .map(|r| (r.dag_id.clone(), r.task_id.clone()))
                    .collect()
            };
            views::AssetItem {
                id: a.id,
                uri: a.uri,
                name: a.name,
                group: a.group,
                producers: pick("outlet"),
                consumers: pick("schedule").into_iter().map(|(d, _)| d).collect(),
                readers: pick("inlet"),
                last_event: views::fmt_time(&last.get(&a.id).map(|(_, t)| *t)),
                queued: queued
                    .iter()
                    .filter(|q| q.asset_id == a.id)
                    .map(|q| (q.dag_id.clone(), q.events))
                    .collect(),
            }
        })
        .collect();
    Ok(page(&views::AssetsPage {
        chrome: Chrome::of(&user),
        items,
        total,
    }))
}

async fn detail(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(asset_id): Path<i64>,
) -> Result<Response, HttpError> {
    user.require(Permission::Read)?;
    let store = state.store();
    let asset = store
        .asset_get(asset_id)
        .await?
        .ok_or_else(|| HttpError::NotFound(format!("no asset with id {asset_id}")))?;
    let refs = store
        .asset_references(&[asset_id])
        .await?
        .remove(&asset_id)
        .unwrap_or_default();
    let (events, total_events) = store
        .asset_event_query(&AssetEventQuery {
            asset_id: Some(asset_id),
            order_by: Some(("id".into(), true)),
            limit: 50,
            ..AssetEventQuery::default()
        })
        .await?;
    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    let runs = store.asset_event_runs(&ids).await?;
    let queued = store.asset_queued_events(None, Some(asset_id)).await?;
    let events = events
        .into_iter()
        .map(|e| views::AssetEventItem {
            id: e.id,
            timestamp: views::fmt_time(&Some(e.timestamp)),
            source: match (&e.source_dag_id, &e.source_task_id, &e.source_run_id) {
                (Some(d), Some(t), Some(r)) => {
                    Some((d.clone(), r.clone(), views::url_encode(r), t.clone()))
                }
                _ => None,
            },
            extra: if e.extra.as_object().is_some_and(|m| m.is_empty()) {
                String::new()
            } else {
                e.extra.to_string()
            },
            runs: runs
                .get(&e.id)
                .map(|rs| {
                    rs.iter()
                        .map(|r| {
                            (
                                r.dag_id.clone(),
                                r.run_id.clone(),
                                views::url_encode(&r.run_id),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    let pick = |kind: &str| -> Vec<(String, String)> {
        refs.iter()
            .filter(|r| r.kind == kind)
            .map(|r| (r.dag_id.clone(), r.task_id.clone()))
            .collect()
    };
    Ok(page(&views::AssetPage {
        chrome: Chrome::of(&user),
        can_operate: user.role.can(Permission::Operate),
        id: asset.id,
        uri: asset.uri,
        name: asset.name,
        group: asset.group,
        producers: pick("outlet"),
        consumers: pick("schedule").into_iter().map(|(d, _)| d).collect(),
        readers: pick("inlet"),
        queued: queued.into_iter().map(|q| (q.dag_id, q.events)).collect(),
        events,
        total_events,
    }))
}

#[derive(Deserialize)]
struct EventForm {
    csrf_token: String,
    #[serde(default)]
    extra: String,
}

async fn create_event(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(asset_id): Path<i64>,
    Form(form): Form<EventForm>,
) -> Result<Response, HttpError> {
    user.check_csrf(&form.csrf_token)?;
    user.require(Permission::Operate)?;
    let mut extra = match form.extra.trim() {
        "" => serde_json::Map::new(),
        text => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(m)) => m,
            Ok(_) => {
                return Err(HttpError::BadRequest(
                    "extra must be a JSON object, such as {\"rows\": 10}".into(),
                ));
            }
            Err(e) => return Err(HttpError::BadRequest(format!("extra is not JSON: {e}"))),
        },
    };
    if form.extra.len() > 64 * 1024 {
        return Err(HttpError::BadRequest(
            "extra is at most 64 KiB of JSON".into(),
        ));
    }
    extra.insert("from_ui".into(), serde_json::Value::Bool(true));
    let event = state
        .store()
        .asset_event_create(asset_id, &serde_json::Value::Object(extra), Utc::now())
        .await?
        .ok_or_else(|| HttpError::NotFound(format!("no asset with id {asset_id}")))?;
    let e = flow_store::AuditEvent {
        username: &user.username,
        event: "create asset event",
        extra: Some(&event.uri),
        ..flow_store::AuditEvent::default()
    };
    if let Err(err) = state.store().audit_record(&e, Utc::now()).await {
        tracing::warn!(error = %err, "could not write the audit log");
    }
    Ok(Redirect::to(&format!("/assets/{asset_id}")).into_response())
}
