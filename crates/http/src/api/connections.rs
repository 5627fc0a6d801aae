//! `/api/v2/connections`: Airflow's connection routes. Secrets are encrypted in the store and
//! never leave it in clear: responses show `***` for the password and for sensitive extra
//! keys, and a PATCH that sends `***` back keeps the stored value.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Json;
use chrono::Utc;
use flow_model::{Connection, Permission};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::schema::{ConnectionCollection, ConnectionResponse, ConnectionTestResponse};
use super::{ApiError, ApiResult, ApiUser, Body, audit, paging, query_pairs, read_body};
use crate::{AppState, DISABLED_MESSAGE};

/// What the API shows instead of a secret.
const MASK: &str = "***";

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(test))
        .routes(routes!(get_one, patch, delete))
}

/// Airflow's `ConnectionBody`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionBody {
    pub connection_id: String,
    pub conn_type: String,
    pub description: Option<String>,
    pub host: Option<String>,
    pub login: Option<String>,
    pub schema: Option<String>,
    pub port: Option<u16>,
    pub password: Option<String>,
    /// A JSON object, as text.
    pub extra: Option<String>,
}

fn cipher(state: &AppState) -> ApiResult<&flow_store::Cipher> {
    state.cipher().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this server has no fernet key for connections",
        )
    })
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "The Connection with connection_id: `{id}` was not found"
    ))
}

fn response(c: &Connection) -> ConnectionResponse {
    let c = c.masked();
    ConnectionResponse {
        connection_id: c.conn_id,
        conn_type: c.conn_type,
        description: c.description,
        host: c.host,
        login: c.login,
        schema: c.schema,
        port: c.port,
        password: c.password,
        extra: c.extra,
    }
}

/// A field of a connection's input that is wrong, and why (the API's 422 names it as
/// `["body", field]`, the Connections page next to the field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadField {
    pub field: &'static str,
    pub message: String,
}

/// The input as a connection, checked as `flow connections add` checks it. Against
/// `existing`, secrets sent back masked (`***`) keep their stored values: the password, the
/// whole extra as shown, or each sensitive extra key of an edited extra.
pub(crate) fn connection_from(
    b: ConnectionBody,
    existing: Option<&Connection>,
) -> Result<Connection, BadField> {
    let mut c = Connection::new(&b.connection_id, &b.conn_type).map_err(|e| BadField {
        field: match e {
            flow_model::ConnectionError::MissingType => "conn_type",
            _ => "connection_id",
        },
        message: e.to_string(),
    })?;
    c.description = b.description;
    c.host = b.host;
    c.login = b.login;
    c.schema = b.schema;
    c.port = b.port;
    // A masked value sent back means "unchanged".
    c.password = match (b.password, existing) {
        (Some(p), Some(old)) if p == MASK => old.password.clone(),
        (p, _) => p,
    };
    c.extra = match (b.extra, existing) {
        (Some(e), Some(old)) if old.masked().extra.as_deref() == Some(e.as_str()) => {
            old.extra.clone()
        }
        (Some(e), _) if e.trim().is_empty() => None,
        (Some(e), old) => match serde_json::from_str::<Value>(&e) {
            Ok(Value::Object(map)) => Some(keep_masked_extra(map, old).unwrap_or(e)),
            _ => {
                return Err(BadField {
                    field: "extra",
                    message: "`extra` must be a JSON object (as text)".into(),
                });
            }
        },
        (None, _) => None,
    };
    Ok(c)
}

/// An edited extra whose sensitive keys still say `***`: those keys get their stored values
/// back (the form showed them masked). `None` when nothing was masked.
fn keep_masked_extra(
    mut map: serde_json::Map<String, Value>,
    old: Option<&Connection>,
) -> Option<String> {
    let old: serde_json::Map<String, Value> = old
        .and_then(|o| o.extra.as_deref())
        .and_then(|text| serde_json::from_str(text).ok())?;
    let mut kept = false;
    for (key, value) in map.iter_mut() {
        let masked = value.as_str() == Some(MASK) && flow_model::connection::is_sensitive_name(key);
        if let (true, Some(stored)) = (masked, old.get(key)) {
            *value = stored.clone();
            kept = true;
        }
    }
    kept.then(|| Value::Object(map).to_string())
}

/// The body as a connection, or FastAPI's 422 naming the field.
fn from_body(b: ConnectionBody, existing: Option<&Connection>) -> ApiResult<Connection> {
    connection_from(b, existing).map_err(|bad| ApiError::invalid(&["body", bad.field], bad.message))
}

#[utoipa::path(get, path = "/api/v2/connections", tag = "Connection",
    summary = "Connections, secrets masked",
    params(
        ("limit" = Option<i64>, Query, minimum = 0),
        ("offset" = Option<i64>, Query, minimum = 0),
        ("connection_id_pattern" = Option<String>, Query),
    ),
    responses((status = 200, body = ConnectionCollection)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn list(
    State(state): State<AppState>,
    user: ApiUser,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<ConnectionCollection>> {
    user.require(Permission::Operate)?;
    let pairs = query_pairs(raw.as_deref())?;
    let (limit, offset) = paging(&pairs)?;
    let pattern = pairs
        .iter()
        .find(|(k, _)| k == "connection_id_pattern")
        .map(|(_, v)| v.to_lowercase());
    let all: Vec<Connection> = state
        .store()
        .connection_list(cipher(&state)?)
        .await?
        .into_iter()
        .filter(|c| {
            pattern
                .as_deref()
                .is_none_or(|p| c.conn_id.to_lowercase().contains(p.trim_matches('%')))
        })
        .collect();
    Ok(Json(ConnectionCollection {
        connections: all.iter().skip(offset).take(limit).map(response).collect(),
        total_entries: all.len(),
    }))
}

#[utoipa::path(get, path = "/api/v2/connections/{connection_id}", tag = "Connection",
    summary = "One connection, secrets masked",
    params(("connection_id" = String, Path)),
    responses((status = 200, body = ConnectionResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn get_one(
    State(state): State<AppState>,
    user: ApiUser,
    Path(id): Path<String>,
) -> ApiResult<Json<ConnectionResponse>> {
    user.require(Permission::Operate)?;
    let c = state
        .store()
        .connection_get(&id, cipher(&state)?)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(response(&c)))
}

#[utoipa::path(post, path = "/api/v2/connections", tag = "Connection",
    summary = "Add a connection (its secrets are encrypted at rest)",
    request_body = ConnectionBody,
    responses((status = 201, body = ConnectionResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn create(
    State(state): State<AppState>,
    user: ApiUser,
    body: Body<ConnectionBody>,
) -> ApiResult<(StatusCode, Json<ConnectionResponse>)> {
    user.require(Permission::Operate)?;
    let c = from_body(read_body(body)?, None)?;
    if !state
        .store()
        .connection_add(&c, cipher(&state)?, Utc::now())
        .await?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "The connection with connection_id: `{}` already exists",
                c.conn_id
            ),
        ));
    }
    audit(&state, &user, "post_connection", None, None).await;
    Ok((StatusCode::CREATED, Json(response(&c))))
}

#[utoipa::path(patch, path = "/api/v2/connections/{connection_id}", tag = "Connection",
    summary = "Change a connection (`***` keeps a secret as it is)",
    params(
        ("connection_id" = String, Path),
        ("update_mask" = Option<Vec<String>>, Query, explode = true),
    ),
    request_body = ConnectionBody,
    responses((status = 200, body = ConnectionResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn patch(
    State(state): State<AppState>,
    user: ApiUser,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    body: Body<ConnectionBody>,
) -> ApiResult<Json<ConnectionResponse>> {
    user.require(Permission::Operate)?;
    let body = read_body(body)?;
    if body.connection_id != id {
        return Err(ApiError::bad_request(
            "The connection_id in the request body does not match the URL parameter",
        ));
    }
    let key = cipher(&state)?;
    let old = state
        .store()
        .connection_get(&id, key)
        .await?
        .ok_or_else(|| not_found(&id))?;
    let new = from_body(body, Some(&old))?;
    // With an update mask only the named fields change, as in Airflow.
    let mask: Vec<String> = query_pairs(raw.as_deref())?
        .into_iter()
        .filter(|(k, _)| k == "update_mask")
        .flat_map(|(_, v)| {
            v.split(',')
                .map(str::trim)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    let merged = if mask.is_empty() {
        new
    } else {
        let mut m = old.clone();
        for field in &mask {
            match field.as_str() {
                "conn_type" => m.conn_type = new.conn_type.clone(),
                "description" => m.description = new.description.clone(),
                "host" => m.host = new.host.clone(),
                "login" => m.login = new.login.clone(),
                "schema" => m.schema = new.schema.clone(),
                "port" => m.port = new.port,
                "password" => m.password = new.password.clone(),
                "extra" => m.extra = new.extra.clone(),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "update_mask: `{other}` is not a field of a connection"
                    )));
                }
            }
        }
        m
    };
    if !state
        .store()
        .connection_update(&merged, key, Utc::now())
        .await?
    {
        return Err(not_found(&id));
    }
    audit(&state, &user, "patch_connection", None, None).await;
    Ok(Json(response(&merged)))
}

#[utoipa::path(delete, path = "/api/v2/connections/{connection_id}", tag = "Connection",
    summary = "Delete a connection",
    params(("connection_id" = String, Path)),
    responses((status = 204, description = "Deleted")),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn delete(
    State(state): State<AppState>,
    user: ApiUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    user.require(Permission::Operate)?;
    if !state.store().connection_delete(&id).await? {
        return Err(not_found(&id));
    }
    audit(&state, &user, "delete_connection", None, None).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Whether `body` points where `stored` does: the same host and port (blank is unset, as
/// in Airflow) and, when it sends an extra, the same extra apart from its secrets (a Kafka
/// connection's brokers are in its extra).
fn same_destination(body: &ConnectionBody, stored: &Connection) -> bool {
    let blank = |s: &Option<String>| s.clone().filter(|v| !v.trim().is_empty());
    // Extras compared as shown, so that secrets (sent back as `***`) do not count.
    let shown_extra = |text: &Option<String>| {
        let mut c = stored.clone();
        c.extra = blank(text);
        c.masked().extra
    };
    // Without an extra the test uses none of the stored one.
    let extra_same =
        blank(&body.extra).is_none() || shown_extra(&body.extra) == shown_extra(&stored.extra);
    blank(&body.host) == blank(&stored.host) && body.port == stored.port && extra_same
}

/// Whether the body brings its own password (not empty, not the mask).
fn own_credentials(body: &ConnectionBody) -> bool {
    body.password
        .as_deref()
        .is_some_and(|p| !p.is_empty() && p != MASK)
}

#[utoipa::path(post, path = "/api/v2/connections/test", tag = "Connection",
    summary = "Test a connection (when `[core] test_connection` is Enabled)",
    description = "Secrets sent as `***` are the stored connection's, but only for its own \
        host, port and extra; testing another destination needs its own credentials.",
    request_body = ConnectionBody,
    responses((status = 200, body = ConnectionTestResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn test(
    State(state): State<AppState>,
    user: ApiUser,
    body: Body<ConnectionBody>,
) -> ApiResult<Json<ConnectionTestResponse>> {
    user.require(Permission::Operate)?;
    if state.connection_testing().mode() != crate::TestConnectionMode::Enabled {
        return Err(ApiError::new(StatusCode::FORBIDDEN, DISABLED_MESSAGE));
    }
    let body = read_body(body)?;
    let stored = state
        .store()
        .connection_get(&body.connection_id, cipher(&state)?)
        .await?;
    // Airflow 3.3's rule: stored secrets only go where the stored connection points.
    let stored = match stored {
        Some(old) if !same_destination(&body, &old) => {
            if !own_credentials(&body) {
                return Err(ApiError::bad_request(
                    "The host or port to test differs from the stored connection. \
                     Include the credentials to test in the request body.",
                ));
            }
            None
        }
        other => other,
    };
    let conn = from_body(body, stored.as_ref())?;
    let conn_id = conn.conn_id.clone();
    let (status, message) = state
        .connection_testing()
        .run(conn)
        .await
        .unwrap_or_else(|| (false, DISABLED_MESSAGE.to_owned()));
    audit(&state, &user, "test_connection", None, None).await;
    tracing::info!(conn_id, status, "connection tested");
    Ok(Json(ConnectionTestResponse { status, message }))
}
