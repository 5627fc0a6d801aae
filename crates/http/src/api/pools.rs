//! `/api/v2/pools`: Airflow's pool routes (list, get, create, patch, delete, bulk), with the
//! slots each pool's task instances take by state. `default_pool` can be resized but not
//! renamed or deleted, as in Airflow.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Json;
use flow_model::Permission;
use flow_store::{DEFAULT_POOL, PoolRow, PoolWrite};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::bulk::{BulkAction, BulkBody, BulkResponse};
use super::{
    ApiError, ApiResult, ApiUser, Body, audit, like, paging, query_pairs, read_body, update_mask,
};
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create, bulk))
        .routes(routes!(get_one, patch, delete))
}

/// Airflow's `PoolResponse`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PoolResponse {
    pub name: String,
    /// Number of slots; -1 for unlimited.
    pub slots: i64,
    pub description: Option<String>,
    pub include_deferred: bool,
    pub occupied_slots: i64,
    pub running_slots: i64,
    pub queued_slots: i64,
    pub scheduled_slots: i64,
    /// -1 for an unlimited pool.
    pub open_slots: i64,
    pub deferred_slots: i64,
    pub team_name: Option<String>,
}

/// Airflow's `PoolCollectionResponse`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PoolCollection {
    pub pools: Vec<PoolResponse>,
    pub total_entries: usize,
}

/// Airflow's `PoolBody`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolBody {
    pub name: String,
    /// Number of slots; -1 for unlimited.
    pub slots: i64,
    pub description: Option<String>,
    #[serde(default)]
    pub include_deferred: bool,
    /// Accepted for Airflow's clients; flow has no teams.
    pub team_name: Option<String>,
}

/// Airflow's `PoolPatchBody`: every field optional (`name` is accepted for `pool`).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolPatchBody {
    #[serde(alias = "name")]
    pub pool: Option<String>,
    pub slots: Option<i64>,
    pub description: Option<String>,
    pub include_deferred: Option<bool>,
    /// Accepted for Airflow's clients; flow has no teams.
    #[allow(dead_code)]
    pub team_name: Option<String>,
}

fn response(p: &PoolRow) -> PoolResponse {
    PoolResponse {
        name: p.name.clone(),
        slots: p.slots,
        description: (!p.description.is_empty()).then(|| p.description.clone()),
        include_deferred: p.include_deferred,
        occupied_slots: p.occupied(),
        running_slots: p.running,
        queued_slots: p.queued,
        scheduled_slots: p.scheduled,
        open_slots: if p.slots < 0 { -1 } else { p.open() },
        deferred_slots: p.deferred,
        team_name: None,
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("The Pool with name: `{name}` was not found"))
}

fn exists(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        format!("The Pool with name: `{name}` already exists"),
    )
}

fn check_name(name: &str, field: &str) -> ApiResult<()> {
    flow_model::PoolId::parse(name)
        .map(|_| ())
        .map_err(|e| ApiError::invalid(&["body", field], format!("pool name: {e}")))
}

fn check_slots(slots: i64) -> ApiResult<()> {
    if slots < -1 {
        return Err(ApiError::invalid(
            &["body", "slots"],
            "slots must be -1 (unlimited) or more",
        ));
    }
    Ok(())
}

async fn find(state: &AppState, name: &str) -> ApiResult<PoolRow> {
    state
        .store()
        .pool_get(name)
        .await?
        .ok_or_else(|| not_found(name))
}

#[utoipa::path(get, path = "/api/v2/pools", tag = "Pool",
    summary = "Pools with the slots their task instances take",
    params(
        ("limit" = Option<i64>, Query, minimum = 0),
        ("offset" = Option<i64>, Query, minimum = 0),
        ("order_by" = Option<String>, Query, description = "name, slots, description or include_deferred (also pool, id); `-` for descending"),
        ("pool_name_pattern" = Option<String>, Query, description = "SQL LIKE pattern (`%` and `_`), case-insensitive"),
    ),
    responses((status = 200, body = PoolCollection)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn list(
    State(state): State<AppState>,
    user: ApiUser,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<PoolCollection>> {
    user.require(Permission::Read)?;
    let pairs = query_pairs(raw.as_deref())?;
    let (limit, offset) = paging(&pairs)?;
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let mut pools = state.store().pool_rows().await?;
    if let Some(pattern) = get("pool_name_pattern") {
        pools.retain(|p| like(pattern, &p.name));
    }
    let order = get("order_by").unwrap_or("id");
    let (desc, field) = match order.strip_prefix('-') {
        Some(f) => (true, f),
        None => (false, order),
    };
    match field {
        "id" | "name" | "pool" => pools.sort_by(|a, b| a.name.cmp(&b.name)),
        "slots" => pools.sort_by_key(|p| p.slots),
        "description" => pools.sort_by(|a, b| a.description.cmp(&b.description)),
        "include_deferred" => pools.sort_by_key(|p| p.include_deferred),
        other => {
            return Err(ApiError::bad_request(format!(
                "Ordering with '{other}' is disallowed or the attribute does not exist on the model"
            )));
        }
    }
    if desc {
        pools.reverse();
    }
    Ok(Json(PoolCollection {
        total_entries: pools.len(),
        pools: pools
            .iter()
            .skip(offset)
            .take(limit)
            .map(response)
            .collect(),
    }))
}

#[utoipa::path(get, path = "/api/v2/pools/{pool_name}", tag = "Pool",
    summary = "One pool",
    params(("pool_name" = String, Path)),
    responses((status = 200, body = PoolResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn get_one(
    State(state): State<AppState>,
    user: ApiUser,
    Path(name): Path<String>,
) -> ApiResult<Json<PoolResponse>> {
    user.require(Permission::Read)?;
    Ok(Json(response(&find(&state, &name).await?)))
}

#[utoipa::path(post, path = "/api/v2/pools", tag = "Pool",
    summary = "Add a pool",
    request_body = PoolBody,
    responses((status = 201, body = PoolResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn create(
    State(state): State<AppState>,
    user: ApiUser,
    body: Body<PoolBody>,
) -> ApiResult<(StatusCode, Json<PoolResponse>)> {
    user.require(Permission::Operate)?;
    let b = read_body(body)?;
    create_one(&state, &b, false).await?;
    audit(&state, &user, "post_pool", None, None).await;
    Ok((
        StatusCode::CREATED,
        Json(response(&find(&state, &b.name).await?)),
    ))
}

/// Creates `b`, or (with `overwrite`) replaces the pool of that name.
async fn create_one(state: &AppState, b: &PoolBody, overwrite: bool) -> ApiResult<()> {
    check_name(&b.name, "name")?;
    check_slots(b.slots)?;
    let description = b.description.as_deref().unwrap_or("");
    let store = state.store();
    match store
        .pool_create(&b.name, b.slots, description, b.include_deferred)
        .await?
    {
        PoolWrite::Done => Ok(()),
        PoolWrite::Exists if overwrite => {
            store
                .pool_update(&b.name, &b.name, b.slots, description, b.include_deferred)
                .await?;
            Ok(())
        }
        PoolWrite::Exists | PoolWrite::Missing => Err(exists(&b.name)),
    }
}

#[utoipa::path(patch, path = "/api/v2/pools/{pool_name}", tag = "Pool",
    summary = "Change a pool (only slots and include_deferred of default_pool)",
    params(
        ("pool_name" = String, Path),
        ("update_mask" = Option<Vec<String>>, Query, explode = true),
    ),
    request_body = PoolPatchBody,
    responses((status = 200, body = PoolResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn patch(
    State(state): State<AppState>,
    user: ApiUser,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    body: Body<PoolPatchBody>,
) -> ApiResult<Json<PoolResponse>> {
    user.require(Permission::Operate)?;
    let body = read_body(body)?;
    let mask = update_mask(raw.as_deref())?;
    let renamed = patch_one(&state, &name, body, &mask).await?;
    audit(&state, &user, "patch_pool", None, None).await;
    Ok(Json(response(&find(&state, &renamed).await?)))
}

/// Applies a patch to the pool `name`; returns its name afterwards.
async fn patch_one(
    state: &AppState,
    name: &str,
    body: PoolPatchBody,
    mask: &[String],
) -> ApiResult<String> {
    let old = find(state, name).await?;
    // Without a mask, the fields sent; with one, the fields it names.
    let wants = |field: &str, sent: bool| {
        if mask.is_empty() {
            sent
        } else {
            mask.iter()
                .any(|m| m == field || (field == "pool" && m == "name"))
        }
    };
    for m in mask {
        if !matches!(
            m.as_str(),
            "pool" | "name" | "slots" | "description" | "include_deferred" | "team_name"
        ) {
            return Err(ApiError::bad_request(format!(
                "update_mask: `{m}` is not a field of a pool"
            )));
        }
    }
    let new_name = match &body.pool {
        Some(n) if wants("pool", true) => n.clone(),
        _ => old.name.clone(),
    };
    let changes_other = new_name != old.name || (wants("description", body.description.is_some()));
    if old.name == DEFAULT_POOL && changes_other {
        return Err(ApiError::bad_request(
            "Only slots and included_deferred can be modified on Default Pool",
        ));
    }
    check_name(&new_name, "pool")?;
    let slots = match body.slots {
        Some(s) if wants("slots", true) => s,
        None if wants("slots", false) && !mask.is_empty() => {
            return Err(ApiError::invalid(
                &["body", "slots"],
                "slots is in update_mask but not in the body",
            ));
        }
        _ => old.slots,
    };
    check_slots(slots)?;
    let description = if wants("description", body.description.is_some()) {
        body.description.unwrap_or_default()
    } else {
        old.description.clone()
    };
    let include_deferred = match body.include_deferred {
        Some(v) if wants("include_deferred", true) => v,
        _ => old.include_deferred,
    };
    match state
        .store()
        .pool_update(name, &new_name, slots, &description, include_deferred)
        .await?
    {
        PoolWrite::Done => Ok(new_name),
        PoolWrite::Missing => Err(not_found(name)),
        PoolWrite::Exists => Err(exists(&new_name)),
    }
}

#[utoipa::path(delete, path = "/api/v2/pools/{pool_name}", tag = "Pool",
    summary = "Delete a pool (not default_pool)",
    params(("pool_name" = String, Path)),
    responses((status = 204, description = "Deleted")),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn delete(
    State(state): State<AppState>,
    user: ApiUser,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    user.require(Permission::Operate)?;
    delete_one(&state, &name).await?;
    audit(&state, &user, "delete_pool", None, None).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_one(state: &AppState, name: &str) -> ApiResult<()> {
    if name == DEFAULT_POOL {
        return Err(ApiError::bad_request("Default Pool can't be deleted"));
    }
    match state.store().pool_delete(name).await? {
        PoolWrite::Done => Ok(()),
        PoolWrite::Missing | PoolWrite::Exists => Err(not_found(name)),
    }
}

#[utoipa::path(patch, path = "/api/v2/pools", tag = "Pool",
    summary = "Create, update and delete pools in one request",
    request_body = BulkBody,
    responses((status = 200, body = BulkResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn bulk(
    State(state): State<AppState>,
    user: ApiUser,
    body: Body<BulkBody>,
) -> ApiResult<Json<BulkResponse>> {
    user.require(Permission::Operate)?;
    let body = read_body(body)?;
    let mut out = BulkResponse::for_actions(&body.actions)?;
    for action in &body.actions {
        for entity in &action.entities {
            let outcome = bulk_one(&state, action, entity).await;
            out.slot(&action.action)?.record(outcome);
        }
    }
    audit(&state, &user, "bulk_pools", None, None).await;
    Ok(Json(out))
}

/// One entity of a bulk action: the pool's name when it was done, `None` when skipped.
async fn bulk_one(
    state: &AppState,
    action: &BulkAction,
    entity: &Value,
) -> ApiResult<Option<String>> {
    let skip_missing = action.action_on_non_existence.as_deref() == Some("skip");
    match action.action.as_str() {
        "create" => {
            let b: PoolBody = serde_json::from_value(entity.clone())
                .map_err(|e| ApiError::invalid(&["body", "entities"], e.to_string()))?;
            let on_existence = action.action_on_existence.as_deref().unwrap_or("fail");
            let exists = state.store().pool_get(&b.name).await?.is_some();
            if exists && on_existence == "skip" {
                return Ok(None);
            }
            create_one(state, &b, on_existence == "overwrite").await?;
            Ok(Some(b.name))
        }
        "update" => {
            let b: PoolBody = serde_json::from_value(entity.clone())
                .map_err(|e| ApiError::invalid(&["body", "entities"], e.to_string()))?;
            if skip_missing && state.store().pool_get(&b.name).await?.is_none() {
                return Ok(None);
            }
            let patch = PoolPatchBody {
                pool: Some(b.name.clone()),
                slots: Some(b.slots),
                description: b.description,
                include_deferred: Some(b.include_deferred),
                team_name: b.team_name,
            };
            let mask = action.update_mask.clone().unwrap_or_default();
            Ok(Some(patch_one(state, &b.name, patch, &mask).await?))
        }
        _ => {
            let name = match entity {
                Value::String(s) => s.clone(),
                Value::Object(o) => o
                    .get("name")
                    .or_else(|| o.get("pool"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                _ => String::new(),
            };
            if skip_missing && state.store().pool_get(&name).await?.is_none() {
                return Ok(None);
            }
            delete_one(state, &name).await?;
            Ok(Some(name))
        }
    }
}
