//! `/api/v2/variables`: Airflow's variable routes (list, get, create, patch, delete, bulk).
//! A variable whose key or description names a secret is encrypted at rest and its value is
//! shown as `***`. As in Airflow, Op and Admin read and change variables.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Json;
use chrono::Utc;
use flow_model::Permission;
use flow_store::Variable;
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

/// What the API shows instead of a secret.
const MASK: &str = "***";

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create, bulk))
        .routes(routes!(get_one, patch, delete))
}

/// Airflow's `VariableResponse`.
#[derive(Debug, Serialize, ToSchema)]
pub struct VariableResponse {
    pub key: String,
    /// `***` for a variable holding a secret.
    pub value: Option<String>,
    pub description: Option<String>,
    pub is_encrypted: bool,
    pub team_name: Option<String>,
}

/// Airflow's `VariableCollectionResponse`.
#[derive(Debug, Serialize, ToSchema)]
pub struct VariableCollection {
    pub variables: Vec<VariableResponse>,
    pub total_entries: usize,
}

/// Airflow's `VariableBody`: a value that is not a string is stored as its JSON text.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VariableBody {
    pub key: String,
    pub value: Value,
    pub description: Option<String>,
    /// Accepted for Airflow's clients; flow has no teams.
    #[allow(dead_code)]
    pub team_name: Option<String>,
}

fn cipher(state: &AppState) -> ApiResult<&flow_store::Cipher> {
    state.cipher().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this server has no fernet key for variables",
        )
    })
}

fn response(v: &Variable) -> VariableResponse {
    let secret = v.is_sensitive();
    VariableResponse {
        key: v.key.clone(),
        value: Some(if secret {
            MASK.to_owned()
        } else {
            v.value.clone()
        }),
        description: v.description.clone(),
        is_encrypted: secret,
        team_name: None,
    }
}

fn not_found(key: &str) -> ApiError {
    ApiError::not_found(format!("The Variable with key: `{key}` was not found"))
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The body as a variable; `existing` keeps a secret's value when `***` is sent back.
fn from_body(b: &VariableBody, existing: Option<&Variable>) -> ApiResult<Variable> {
    flow_store::check_variable_key(&b.key).map_err(|e| ApiError::invalid(&["body", "key"], e))?;
    let value = match (&b.value, existing) {
        (Value::String(s), Some(old)) if s == MASK && old.is_sensitive() => old.value.clone(),
        (Value::Null, _) => {
            return Err(ApiError::invalid(
                &["body", "value"],
                "a variable needs a value",
            ));
        }
        (v, _) => text_of(v),
    };
    Ok(Variable {
        key: b.key.clone(),
        value,
        description: b.description.clone(),
    })
}

async fn find(state: &AppState, key: &str) -> ApiResult<Variable> {
    state
        .store()
        .variable_get(key, Some(cipher(state)?))
        .await?
        .ok_or_else(|| not_found(key))
}

#[utoipa::path(get, path = "/api/v2/variables", tag = "Variable",
    summary = "Variables, secret values masked",
    params(
        ("limit" = Option<i64>, Query, minimum = 0),
        ("offset" = Option<i64>, Query, minimum = 0),
        ("order_by" = Option<String>, Query, description = "key, id, description or is_encrypted; `-` for descending"),
        ("variable_key_pattern" = Option<String>, Query, description = "SQL ILIKE pattern, matched anywhere in the key"),
        ("variable_key_prefix_pattern" = Option<String>, Query, description = "the key starts with this"),
    ),
    responses((status = 200, body = VariableCollection)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn list(
    State(state): State<AppState>,
    user: ApiUser,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<VariableCollection>> {
    // Airflow shows variables to Op and Admin only (values are configuration).
    user.require(Permission::Operate)?;
    let pairs = query_pairs(raw.as_deref())?;
    let (limit, offset) = paging(&pairs)?;
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let mut vars = state.store().variable_list(Some(cipher(&state)?)).await?;
    if let Some(pattern) = get("variable_key_pattern") {
        vars.retain(|v| like(pattern, &v.key));
    }
    if let Some(prefix) = get("variable_key_prefix_pattern") {
        vars.retain(|v| v.key.starts_with(prefix));
    }
    let order = get("order_by").unwrap_or("id");
    let (desc, field) = match order.strip_prefix('-') {
        Some(f) => (true, f),
        None => (false, order),
    };
    match field {
        "id" | "key" => vars.sort_by(|a, b| a.key.cmp(&b.key)),
        "description" => vars.sort_by(|a, b| a.description.cmp(&b.description)),
        "is_encrypted" => vars.sort_by_key(Variable::is_sensitive),
        other => {
            return Err(ApiError::bad_request(format!(
                "Ordering with '{other}' is disallowed or the attribute does not exist on the model"
            )));
        }
    }
    if desc {
        vars.reverse();
    }
    Ok(Json(VariableCollection {
        total_entries: vars.len(),
        variables: vars.iter().skip(offset).take(limit).map(response).collect(),
    }))
}

#[utoipa::path(get, path = "/api/v2/variables/{variable_key}", tag = "Variable",
    summary = "One variable, its value masked if secret",
    params(("variable_key" = String, Path)),
    responses((status = 200, body = VariableResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn get_one(
    State(state): State<AppState>,
    user: ApiUser,
    Path(key): Path<String>,
) -> ApiResult<Json<VariableResponse>> {
    // Airflow shows variables to Op and Admin only (values are configuration).
    user.require(Permission::Operate)?;
    Ok(Json(response(&find(&state, &key).await?)))
}

#[utoipa::path(post, path = "/api/v2/variables", tag = "Variable",
    summary = "Add a variable (a secret one is encrypted at rest)",
    request_body = VariableBody,
    responses((status = 201, body = VariableResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn create(
    State(state): State<AppState>,
    user: ApiUser,
    body: Body<VariableBody>,
) -> ApiResult<(StatusCode, Json<VariableResponse>)> {
    user.require(Permission::Operate)?;
    let v = from_body(&read_body(body)?, None)?;
    create_one(&state, &v, false).await?;
    audit(&state, &user, "post_variable", None, None).await;
    Ok((StatusCode::CREATED, Json(response(&v))))
}

async fn create_one(state: &AppState, v: &Variable, overwrite: bool) -> ApiResult<()> {
    if !state
        .store()
        .variable_set(v, Some(cipher(state)?), !overwrite, Utc::now())
        .await?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("The Variable with key: `{}` already exists", v.key),
        ));
    }
    Ok(())
}

#[utoipa::path(patch, path = "/api/v2/variables/{variable_key}", tag = "Variable",
    summary = "Change a variable (`***` keeps a secret value as it is)",
    params(
        ("variable_key" = String, Path),
        ("update_mask" = Option<Vec<String>>, Query, explode = true),
    ),
    request_body = VariableBody,
    responses((status = 200, body = VariableResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn patch(
    State(state): State<AppState>,
    user: ApiUser,
    Path(key): Path<String>,
    RawQuery(raw): RawQuery,
    body: Body<VariableBody>,
) -> ApiResult<Json<VariableResponse>> {
    user.require(Permission::Operate)?;
    let body = read_body(body)?;
    if body.key != key {
        return Err(ApiError::bad_request(
            "Invalid body, key from request body doesn't match uri parameter",
        ));
    }
    let mask = update_mask(raw.as_deref())?;
    let v = patch_one(&state, &body, &mask).await?;
    audit(&state, &user, "patch_variable", None, None).await;
    Ok(Json(response(&v)))
}

async fn patch_one(state: &AppState, body: &VariableBody, mask: &[String]) -> ApiResult<Variable> {
    let old = find(state, &body.key).await?;
    let new = from_body(body, Some(&old))?;
    let merged = if mask.is_empty() {
        new
    } else {
        let mut m = old.clone();
        for field in mask {
            match field.as_str() {
                "value" => m.value = new.value.clone(),
                "description" => m.description = new.description.clone(),
                "key" | "team_name" => {}
                other => {
                    return Err(ApiError::bad_request(format!(
                        "update_mask: `{other}` is not a field of a variable"
                    )));
                }
            }
        }
        m
    };
    state
        .store()
        .variable_set(&merged, Some(cipher(state)?), false, Utc::now())
        .await?;
    Ok(merged)
}

#[utoipa::path(delete, path = "/api/v2/variables/{variable_key}", tag = "Variable",
    summary = "Delete a variable",
    params(("variable_key" = String, Path)),
    responses((status = 204, description = "Deleted")),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn delete(
    State(state): State<AppState>,
    user: ApiUser,
    Path(key): Path<String>,
) -> ApiResult<StatusCode> {
    user.require(Permission::Operate)?;
    if !state.store().variable_delete(&key).await? {
        return Err(not_found(&key));
    }
    audit(&state, &user, "delete_variable", None, None).await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(patch, path = "/api/v2/variables", tag = "Variable",
    summary = "Create, update and delete variables in one request",
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
    audit(&state, &user, "bulk_variables", None, None).await;
    Ok(Json(out))
}

async fn bulk_one(
    state: &AppState,
    action: &BulkAction,
    entity: &Value,
) -> ApiResult<Option<String>> {
    let skip_missing = action.action_on_non_existence.as_deref() == Some("skip");
    let parse = || -> ApiResult<VariableBody> {
        serde_json::from_value(entity.clone())
            .map_err(|e| ApiError::invalid(&["body", "entities"], e.to_string()))
    };
    let exists = |key: String| async move {
        Ok::<_, ApiError>(
            state
                .store()
                .variable_get(&key, Some(cipher(state)?))
                .await?
                .is_some(),
        )
    };
    match action.action.as_str() {
        "create" => {
            let b = parse()?;
            let on_existence = action.action_on_existence.as_deref().unwrap_or("fail");
            if on_existence == "skip" && exists(b.key.clone()).await? {
                return Ok(None);
            }
            let old = state
                .store()
                .variable_get(&b.key, Some(cipher(state)?))
                .await?;
            let v = from_body(&b, old.as_ref())?;
            create_one(state, &v, on_existence == "overwrite").await?;
            Ok(Some(v.key))
        }
        "update" => {
            let b = parse()?;
            if skip_missing && !exists(b.key.clone()).await? {
                return Ok(None);
            }
            let mask = action.update_mask.clone().unwrap_or_default();
            Ok(Some(patch_one(state, &b, &mask).await?.key))
        }
        _ => {
            let key = match entity {
                Value::String(s) => s.clone(),
                Value::Object(o) => o
                    .get("key")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                _ => String::new(),
            };
            if state.store().variable_delete(&key).await? {
                return Ok(Some(key));
            }
            if skip_missing {
                return Ok(None);
            }
            Err(not_found(&key))
        }
    }
}
