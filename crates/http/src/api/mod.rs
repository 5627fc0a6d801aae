//! The REST API under `/api/v2`, following Apache Airflow 3's stable REST API (paths, JSON
//! field names, list envelopes, the `{"detail": ...}` error shape, 401 vs 403), so that
//! Airflow's tooling works against flow. `docs/airflow-rest-api-v2.md` records the shapes.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, FromRef, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use flow_model::{Permission, Role};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

mod assets;
pub mod backfills;
mod bulk;
pub mod config;
pub(crate) mod connections;
mod dag_runs;
mod dag_versions;
mod dags;
mod docs;
pub mod jwt;
mod misc;
mod monitor;
mod pools;
mod run_wait;
pub mod schema;
mod task_instances;
mod ti_dependencies;
mod variables;

/// How long an API token lives (Airflow's `[api_auth] jwt_expiration_time` default: a day).
const TOKEN_TTL_SECS: i64 = 24 * 3600;

/// The security schemes every protected route declares: a bearer token from `/auth/token`,
/// or HTTP basic credentials.
pub const SECURED: &str = "HTTPBearer";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "flow REST API",
        description = "Apache Airflow 3's stable REST API (v2), served by flow. Get a token from \
            `POST /auth/token` and send it as `Authorization: Bearer <token>`; HTTP basic \
            credentials work too.",
    ),
    modifiers(&SecuritySchemes),
    components(schemas(schema::ErrorBody)),
)]
struct ApiDoc;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            SECURED,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "HTTPBasic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
    }
}

/// Every API route with its OpenAPI operation: a route cannot be served without being in the
/// spec, because both come from the same `routes!` registration.
fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(token))
        .routes(routes!(version))
        .routes(routes!(health))
        .merge(dags::routes())
        .merge(dag_runs::routes())
        .merge(task_instances::routes())
        .merge(ti_dependencies::routes())
        .merge(misc::routes())
        .merge(connections::routes())
        .merge(pools::routes())
        .merge(variables::routes())
        .merge(assets::routes())
        .merge(backfills::routes())
        .merge(run_wait::routes())
        .merge(dag_versions::routes())
        .merge(config::routes())
        .merge(monitor::routes())
}

/// The OpenAPI document served at `/api/v2/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut spec) = api_router().split_for_parts();
    spec.info.version = env!("CARGO_PKG_VERSION").to_owned();
    add_error_responses(&mut spec);
    spec
}

pub fn routes() -> Router<AppState> {
    let (router, _) = api_router().split_for_parts();
    let spec: Arc<String> = Arc::new(serde_json::to_string(&openapi()).unwrap_or_default());
    router
        .route(
            "/api/v2/openapi.json",
            get(move || {
                let spec = Arc::clone(&spec);
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        spec.as_str().to_owned(),
                    )
                }
            }),
        )
        .route(
            "/api/v2/{*rest}",
            axum::routing::any(|| async { ApiError::not_found("Not Found") }),
        )
        .layer(axum::middleware::map_response(json_errors))
        .merge(docs::routes())
}

/// Error responses that axum produces before a handler runs (an unknown method, a body over
/// the size limit, an undecodable path) come as plain text; API clients get Airflow's
/// `{"detail": ...}` instead.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_owned();
    let detail = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!(
            "Request body too large: at most {} bytes are accepted",
            crate::BODY_LIMIT
        )
    } else if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let mut out = ApiError::new(status, detail).into_response();
    if let Some(allow) = allow {
        out.headers_mut().insert(header::ALLOW, allow);
    }
    out
}

/// Declares on every operation the errors every route can answer with, in Airflow's shape:
/// 401 and 403 where a token is required, 404, 422 for invalid input, 413 where a body is
/// read, and 503 when the metadata database does not answer.
fn add_error_responses(spec: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let error = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("HTTPExceptionResponse")))
                        .build(),
                )
                .build(),
        )
    };
    for item in spec.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in operations.into_iter().flatten() {
            let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
            let has_body = op.request_body.is_some();
            let responses = &mut op.responses.responses;
            let mut add = |code: &str, description: &str| {
                responses
                    .entry(code.to_owned())
                    .or_insert_with(|| error(description));
            };
            if secured {
                add("401", "Not authenticated, or the token expired");
                add(
                    "403",
                    "The token is invalid, or the user's role may not do this",
                );
            }
            if has_body {
                add("413", "The request body is over the size limit");
                add("415", "The request body is not JSON");
            }
            add("400", "Bad request");
            add("404", "Not found");
            add("405", "Method not allowed");
            add("422", "Invalid input; the detail names the field");
            add("503", "The metadata database did not answer");
        }
    }
}

/// An API error: a status and Airflow's `{"detail": ...}` body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: serde_json::Value,
}

impl ApiError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            detail: serde_json::Value::String(detail.into()),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, what)
    }

    pub fn bad_request(what: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, what)
    }

    /// A 422 in FastAPI's validation shape, naming the offending field.
    pub fn invalid(location: &[&str], msg: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            detail: serde_json::json!([{ "loc": location, "msg": msg.into(), "type": "value_error" }]),
        }
    }
}

impl From<flow_store::StoreError> for ApiError {
    fn from(e: flow_store::StoreError) -> Self {
        tracing::warn!(error = %e, "API request failed on the database");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the metadata database could not answer; try again",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(schema::ErrorBody {
                detail: self.detail,
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A JSON body that could not be read: 413 over the size limit, 415 without a JSON content
/// type, otherwise 422 naming what was wrong.
pub fn body_error(e: &axum::extract::rejection::JsonRejection) -> ApiError {
    match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Request body too large: at most {} bytes are accepted",
                crate::BODY_LIMIT
            ),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Expected request with `Content-Type: application/json`",
        ),
        _ => ApiError::invalid(&["body"], e.body_text()),
    }
}

/// A JSON request body, or the error [`body_error`] describes.
pub type Body<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

/// The body of a request, or Airflow's error for an unreadable one.
pub fn read_body<T>(body: Body<T>) -> ApiResult<T> {
    body.map(|Json(b)| b).map_err(|e| body_error(&e))
}

/// A query string as `(key, value)` pairs in order, keeping repeated keys (`tags=a&tags=b`)
/// as Airflow's clients send lists.
pub fn query_pairs(raw: Option<&str>) -> ApiResult<Vec<(String, String)>> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    let uri: axum::http::Uri = format!("/?{raw}")
        .parse()
        .map_err(|_| ApiError::bad_request("malformed query string"))?;
    let axum::extract::Query(pairs) =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
    Ok(pairs)
}

/// `limit` (default 50, at most 100, as Airflow clamps it) and `offset` from a query.
pub fn paging(pairs: &[(String, String)]) -> ApiResult<(usize, usize)> {
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let limit = dags::parse_int("limit", get("limit"), 50)?.min(100);
    let offset = dags::parse_int("offset", get("offset"), 0)?;
    Ok((
        usize::try_from(limit).unwrap_or(0),
        usize::try_from(offset).unwrap_or(usize::MAX),
    ))
}

/// The DAG as the store last loaded it, with its hash; `None` when there is no such DAG.
pub async fn load_dag(
    state: &AppState,
    dag_id: &str,
) -> ApiResult<Option<(flow_dag::Dag, String)>> {
    let Some((data, hash)) = state.store().serialized_dag_get(dag_id).await? else {
        return Ok(None);
    };
    let dag = flow_dag::Dag::from_json(&data)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Some((dag, hash)))
}

/// A run, or Airflow's 404 naming it.
pub async fn find_run(
    state: &AppState,
    dag_id: &str,
    run_id: &str,
) -> ApiResult<flow_store::DagRunRow> {
    state
        .store()
        .dag_run_get(dag_id, run_id)
        .await?
        .ok_or_else(|| run_not_found(dag_id, run_id))
}

/// Airflow's 404 for a DAG.
pub fn dag_not_found(dag_id: &str) -> ApiError {
    ApiError::not_found(format!("The Dag with ID: `{dag_id}` was not found"))
}

/// Airflow's 404 for a run.
pub fn run_not_found(dag_id: &str, run_id: &str) -> ApiError {
    ApiError::not_found(format!(
        "The DagRun with dag_id: `{dag_id}` and run_id: `{run_id}` was not found"
    ))
}

/// Records an API action in the audit log; a failure to record is logged, not returned.
pub async fn audit(
    state: &AppState,
    user: &ApiUser,
    event: &str,
    dag_id: Option<&str>,
    run_id: Option<&str>,
) {
    let e = flow_store::AuditEvent {
        username: &user.username,
        event,
        dag_id,
        run_id,
        extra: Some("api"),
        ..flow_store::AuditEvent::default()
    };
    if let Err(err) = state.store().audit_record(&e, Utc::now()).await {
        tracing::warn!(error = %err, "could not write the audit log");
    }
}

/// The caller of an API route: a valid bearer token (or HTTP basic credentials).
#[derive(Debug, Clone)]
pub struct ApiUser {
    pub username: String,
    pub role: Role,
}

impl ApiUser {
    pub fn require(&self, permission: Permission) -> ApiResult<()> {
        if self.role.can(permission) {
            Ok(())
        } else {
            Err(ApiError::new(StatusCode::FORBIDDEN, "Forbidden"))
        }
    }
}

impl<S> FromRequestParts<S> for ApiUser
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        authenticate(&state, &parts.headers, peer).await
    }
}

async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    peer: Option<std::net::IpAddr>,
) -> ApiResult<ApiUser> {
    let unauthenticated = || ApiError::new(StatusCode::UNAUTHORIZED, "Not authenticated");
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(unauthenticated)?;
    let (scheme, credentials) = value.split_once(' ').ok_or_else(unauthenticated)?;
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(unauthenticated)?;
        let (username, password) = decoded.split_once(':').ok_or_else(unauthenticated)?;
        let (user, _) = check_password(state, username, password, peer).await?;
        return Ok(user);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(unauthenticated());
    }
    let claims = jwt::verify(
        state.secret_key(),
        credentials.trim(),
        Utc::now().timestamp(),
    )
    .map_err(|e| match e {
        jwt::TokenError::Expired => ApiError::new(StatusCode::UNAUTHORIZED, "Token Expired"),
        jwt::TokenError::Invalid => ApiError::new(StatusCode::FORBIDDEN, "Invalid JWT token"),
    })?;
    // The user must still exist, be active, and have the password the token was issued for.
    let found = state.store().user_for_login(&claims.sub).await?;
    match found {
        Some((user, hash)) if user.active && jwt::fingerprint(&hash) == claims.ver => Ok(ApiUser {
            username: user.username,
            role: user.role,
        }),
        _ => Err(ApiError::new(StatusCode::FORBIDDEN, "Invalid JWT token")),
    }
}

/// Verifies a username and password (rate limited as the login form is).
async fn check_password(
    state: &AppState,
    username: &str,
    password: &str,
    peer: Option<std::net::IpAddr>,
) -> ApiResult<(ApiUser, String)> {
    let limiter = state.limiter();
    match limiter.check(peer, username) {
        crate::auth::LoginVerdict::Allowed => {}
        crate::auth::LoginVerdict::SlowDown(pause) => tokio::time::sleep(pause).await,
        crate::auth::LoginVerdict::Blocked(wait) => {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many failed logins for this user from this address; try again in {}s",
                    wait.as_secs().max(1)
                ),
            ));
        }
    }
    let found = state.store().user_for_login(username).await?;
    let hash = found
        .as_ref()
        .map_or_else(|| crate::auth::dummy_hash().to_owned(), |(_, h)| h.clone());
    let (pw, h) = (password.to_owned(), hash.clone());
    let ok = tokio::task::spawn_blocking(move || crate::auth::verify_password(&pw, &h))
        .await
        .unwrap_or(false);
    match found {
        Some((user, _)) if ok && user.active => {
            limiter.record_success(peer, username);
            Ok((
                ApiUser {
                    username: user.username,
                    role: user.role,
                },
                hash,
            ))
        }
        _ => {
            limiter.record_failure(peer, username);
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Invalid credentials",
            ))
        }
    }
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[schema(as = LoginBody)]
struct TokenBody {
    username: String,
    password: String,
}

/// `POST /auth/token`: JSON or form `{username, password}` -> 201 `{"access_token": ...}`.
#[utoipa::path(post, path = "/auth/token", tag = "Login",
    summary = "Get an API token",
    request_body(content(
        (TokenBody = "application/json"),
        (TokenBody = "application/x-www-form-urlencoded"),
    )),
    responses(
        (status = 201, description = "A signed JWT, valid for a day", body = schema::TokenResponse),
        (status = 401, description = "Wrong username or password", body = schema::ErrorBody),
        (status = 413, description = "The request body is over the size limit", body = schema::ErrorBody),
        (status = 415, description = "Neither JSON nor a form", body = schema::ErrorBody),
        (status = 429, description = "Too many failed attempts", body = schema::ErrorBody),
    ))]
async fn token(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let parsed: TokenBody = if content_type.starts_with("application/json") {
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid(&["body"], e.to_string()))?
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        serde_urlencoded_form(&body)?
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported Media Type",
        ));
    };
    if parsed.username.is_empty() || parsed.password.is_empty() {
        return Err(ApiError::bad_request(
            "Username and password must be provided",
        ));
    }
    let (user, hash) =
        check_password(&state, &parsed.username, &parsed.password, Some(peer.ip())).await?;
    let now = Utc::now().timestamp();
    let claims = jwt::Claims {
        sub: user.username,
        ver: jwt::fingerprint(&hash),
        iat: now,
        exp: now + TOKEN_TTL_SECS,
    };
    let token = jwt::sign(state.secret_key(), &claims)
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "could not sign"))?;
    Ok((
        StatusCode::CREATED,
        Json(schema::TokenResponse {
            access_token: token,
        }),
    )
        .into_response())
}

/// A form-encoded body, decoded as a query string is (the same encoding).
fn serde_urlencoded_form(body: &[u8]) -> ApiResult<TokenBody> {
    let text =
        std::str::from_utf8(body).map_err(|e| ApiError::invalid(&["body"], e.to_string()))?;
    let uri: axum::http::Uri = format!("/?{text}")
        .parse()
        .map_err(|_| ApiError::invalid(&["body"], "not a form body"))?;
    let axum::extract::Query(form) = axum::extract::Query::<TokenBody>::try_from_uri(&uri)
        .map_err(|e| ApiError::invalid(&["body"], e.body_text()))?;
    Ok(form)
}

#[utoipa::path(get, path = "/api/v2/version", tag = "Version",
    summary = "flow's version (no token needed)",
    responses((status = 200, body = schema::VersionInfo)))]
async fn version() -> Json<schema::VersionInfo> {
    Json(schema::VersionInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        git_version: None,
    })
}

/// Airflow's health shape: always 200, statuses inside.
#[utoipa::path(get, path = "/api/v2/monitor/health", tag = "Monitor",
    summary = "The metadata database and the scheduler's heartbeat (no token needed)",
    responses((status = 200, body = schema::HealthInfo)))]
async fn health(State(state): State<AppState>) -> Json<schema::HealthInfo> {
    let (db_ok, heartbeat, scheduler_ok) = crate::health_status(state.store()).await;
    let fresh = |at: DateTime<Utc>| (Utc::now() - at) < chrono::Duration::seconds(30);
    let triggerer = state
        .store()
        .job_latest("TriggererJob")
        .await
        .ok()
        .flatten()
        .map(|(_, at)| (fresh(at), at));
    // flow's addition to Airflow's shape: the consumers of Kafka-triggered DAGs.
    let kafka = state
        .store()
        .job_latest("KafkaTriggerJob")
        .await
        .ok()
        .flatten()
        .map(|(s, at)| (s.clone(), s == "running" && fresh(at), at));
    let status = |ok: bool| Some(if ok { "healthy" } else { "unhealthy" }.to_owned());
    Json(schema::HealthInfo {
        metadatabase: schema::ComponentHealth {
            status: status(db_ok),
        },
        scheduler: schema::SchedulerHealth {
            status: status(scheduler_ok),
            latest_scheduler_heartbeat: heartbeat.map(|h| h.to_rfc3339()),
        },
        triggerer: match triggerer {
            Some((ok, at)) => schema::TriggererHealth {
                status: status(ok),
                latest_triggerer_heartbeat: Some(at.to_rfc3339()),
            },
            None => schema::TriggererHealth {
                status: None,
                latest_triggerer_heartbeat: None,
            },
        },
        kafka_triggers: kafka.map(|(state, ok, at)| schema::KafkaTriggerHealth {
            status: status(ok),
            state,
            latest_heartbeat: at.to_rfc3339(),
        }),
        dag_processor: schema::DagProcessorHealth {
            status: None,
            latest_dag_processor_heartbeat: None,
        },
    })
}

/// The fields an `update_mask` query parameter names (repeated, or comma-separated).
pub fn update_mask(raw: Option<&str>) -> ApiResult<Vec<String>> {
    Ok(query_pairs(raw)?
        .into_iter()
        .filter(|(k, _)| k == "update_mask")
        .flat_map(|(_, v)| {
            v.split(',')
                .map(|f| f.trim().to_owned())
                .filter(|f| !f.is_empty())
                .collect::<Vec<_>>()
        })
        .collect())
}

/// Airflow's `*_pattern` parameters: SQL `ILIKE '%pattern%'` (`%` any run, `_` one
/// character), case-insensitive.
pub fn like(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = format!("%{}%", pattern.to_lowercase()).chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    // matched[j]: the pattern so far matches the first j characters of the text. Linear in
    // both lengths per step, whatever the pattern (a user's `%_%_%...` cannot blow up).
    let mut matched = vec![false; t.len() + 1];
    matched[0] = true;
    for c in p {
        let mut next = vec![false; t.len() + 1];
        match c {
            '%' => {
                let mut any = false;
                for j in 0..=t.len() {
                    any |= matched[j];
                    next[j] = any;
                }
            }
            _ => {
                for j in 1..=t.len() {
                    next[j] = matched[j - 1] && (c == '_' || t[j - 1] == c);
                }
            }
        }
        matched = next;
    }
    matched[t.len()]
}

#[cfg(test)]
mod like_tests {
    use super::like;

    #[test]
    fn like_patterns() {
        assert!(like("etl%", "etl_pool"));
        assert!(like("POOL", "etl_pool"));
        assert!(like("e_l%", "etl_pool"));
        assert!(!like("x%", "etl_pool"));
        assert!(like("tl_p", "etl_pool"), "a pattern matches anywhere");
        assert!(!like("tl_x", "etl_pool"));
        let long = "%_".repeat(200);
        assert!(!like(&format!("{long}z"), &"a".repeat(250)), "no blow-up");
    }
}
