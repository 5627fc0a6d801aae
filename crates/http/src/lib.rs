//! flow's web server: the dashboard (server-rendered askama pages) and, later, the REST API.
//!
//! Like every other part of flow it only talks to the metadata store: a page is a few reads,
//! an action is a store call plus an audit row. This crate is the only place where errors
//! become HTTP responses.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use flow_store::Store;

mod admin_pages;
pub mod api;
mod asset_pages;
mod assets;
pub mod auth;
mod charts;
mod cluster_pages;
mod connection_test;
mod diff;
mod graph;
mod grid;
pub mod metrics;
mod pages;
mod session;
mod user_settings;
mod views;

pub use api::config::{Config as ExposedConfig, ConfigOption, ConfigSection};
pub use connection_test::{ConnectionTesting, DISABLED_MESSAGE, TestConnectionMode};
pub use session::CurrentUser;
pub use views::url_encode;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    signer: auth::CookieSigner,
    /// Signs API tokens too (kept out of Debug output).
    secret_key: SecretKey,
    limiter: auth::LoginLimiter,
    /// Send cookies with `Secure` (set when served behind HTTPS).
    secure_cookies: bool,
    /// Encrypts connection secrets; without it the connections API answers 503.
    cipher: Option<flow_store::Cipher>,
    /// What `GET /api/v2/config` shows; `None`: not exposed.
    exposed_config: Option<ExposedConfig>,
    /// `[core] test_connection` and the function that tests.
    connection_testing: ConnectionTesting,
    /// The time zone pages show times in until a user picks one.
    default_ui_timezone: chrono_tz::Tz,
}

/// How the web server is set up.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Signs session cookies; at least 32 bytes.
    pub secret_key: Vec<u8>,
    pub secure_cookies: bool,
    /// The Fernet key(s) of connection secrets (`/api/v2/connections`).
    pub cipher: Option<flow_store::Cipher>,
    /// The settings `GET /api/v2/config` shows, secrets already hidden; `None` when
    /// `expose_config` is off (the API answers 403).
    pub exposed_config: Option<ExposedConfig>,
    /// Whether the Connections page and `POST /api/v2/connections/test` test connections
    /// (Airflow's `[core] test_connection`, `Disabled` by default), and how.
    pub connection_testing: ConnectionTesting,
    /// The time zone pages show times in until a user picks one (Airflow's
    /// `default_ui_timezone`, UTC by default).
    pub default_ui_timezone: chrono_tz::Tz,
}

impl AppState {
    pub fn new(store: Store, config: WebConfig) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                store,
                signer: auth::CookieSigner::new(&config.secret_key),
                secret_key: SecretKey(config.secret_key.clone()),
                limiter: auth::LoginLimiter::default(),
                secure_cookies: config.secure_cookies,
                cipher: config.cipher,
                exposed_config: config.exposed_config,
                connection_testing: config.connection_testing,
                default_ui_timezone: config.default_ui_timezone,
            }),
        }
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn secret_key(&self) -> &[u8] {
        &self.inner.secret_key.0
    }

    pub(crate) fn cipher(&self) -> Option<&flow_store::Cipher> {
        self.inner.cipher.as_ref()
    }

    pub(crate) fn exposed_config(&self) -> Option<&ExposedConfig> {
        self.inner.exposed_config.as_ref()
    }

    pub(crate) fn connection_testing(&self) -> &ConnectionTesting {
        &self.inner.connection_testing
    }

    pub(crate) fn default_ui_timezone(&self) -> chrono_tz::Tz {
        self.inner.default_ui_timezone
    }

    pub(crate) fn limiter(&self) -> &auth::LoginLimiter {
        &self.inner.limiter
    }
}

/// Key bytes that never appear in logs or debug output.
struct SecretKey(Vec<u8>);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// Whether the metadata database answers, and the latest scheduler heartbeat with whether it
/// is recent (Airflow's `scheduler_health_check_threshold`, 30 s): what `/health` and
/// `/api/v2/monitor/health` report.
pub(crate) async fn health_status(
    store: &Store,
) -> (bool, Option<chrono::DateTime<chrono::Utc>>, bool) {
    let db_ok = store.ping().await.is_ok();
    let heartbeat = store
        .job_latest_heartbeat("SchedulerJob")
        .await
        .ok()
        .flatten();
    let scheduler_ok =
        heartbeat.is_some_and(|h| chrono::Utc::now() - h < chrono::Duration::seconds(30));
    (db_ok, heartbeat, scheduler_ok)
}

/// Largest request body accepted (forms and JSON): a trigger's conf fits easily.
pub(crate) const BODY_LIMIT: usize = 1024 * 1024;

/// The whole site.
pub fn router(state: AppState) -> Router {
    pages::routes()
        .merge(assets::routes())
        .merge(asset_pages::routes())
        .merge(admin_pages::routes())
        .merge(metrics::routes())
        .merge(cluster_pages::routes())
        .merge(user_settings::routes())
        .merge(grid::routes())
        .merge(api::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            views::with_user_timezone,
        ))
        .layer(axum::middleware::from_fn(refuse_nul))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Refuses a request with a NUL character in its URL or its (form or JSON) body with 400:
/// no id can contain one, and PostgreSQL cannot store one in a text column, so letting it
/// through would only turn bad input into a database error.
async fn refuse_nul(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let api =
        request.uri().path().starts_with("/api/") || request.uri().path().starts_with("/auth/");
    let refuse = |status: StatusCode, message: String| {
        if api {
            api::ApiError::new(status, message).into_response()
        } else {
            views::error_page(status, &message)
        }
    };
    let uri = request.uri().to_string();
    if uri.contains("%00") || uri.contains('\0') {
        return refuse(
            StatusCode::BAD_REQUEST,
            "NUL characters are not allowed in the URL".into(),
        );
    }
    let has_body = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_none_or(|v| v.as_bytes() != b"0")
        && request.method() != axum::http::Method::GET;
    if !has_body {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, BODY_LIMIT).await else {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body too large: at most {BODY_LIMIT} bytes are accepted"),
        );
    };
    let lower = bytes.to_ascii_lowercase();
    if bytes.contains(&0)
        || lower.windows(6).any(|w| w == b"\\u0000")
        || lower.windows(3).any(|w| w == b"%00")
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            "NUL characters are not allowed in the request body".into(),
        );
    }
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

/// Headers on every response: a strict Content-Security-Policy (no inline script or style,
/// nothing from elsewhere), no framing, no MIME sniffing, and no caching of anything but the
/// static assets (which set their own `Cache-Control`): pages and API answers show what a
/// signed-in user may see, and must not outlive the session in a browser or proxy cache.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; \
             object-src 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// Serves the site on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tracing::info!(address = %listener.local_addr()?, "webserver listening");
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Why a request failed, as the user will see it.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("your role may not do this")]
    Forbidden,
    #[error("the form has expired or did not come from this site; reload the page and try again")]
    Csrf,
    /// Not logged in: go to the login page, then come back to `next`.
    #[error("login required")]
    LoginRequired { next: String },
    #[error("too many failed logins; wait a few minutes")]
    TooManyAttempts,
    /// Details go to the server log, not to the page.
    #[error("the metadata database could not answer; try again")]
    Store(#[from] flow_store::StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = match &self {
            HttpError::NotFound(_) => StatusCode::NOT_FOUND,
            HttpError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HttpError::Forbidden | HttpError::Csrf => StatusCode::FORBIDDEN,
            HttpError::TooManyAttempts => StatusCode::TOO_MANY_REQUESTS,
            HttpError::LoginRequired { next } => {
                let target = format!("/login?next={}", url_encode(next));
                return Redirect::to(&target).into_response();
            }
            HttpError::Store(e) => {
                tracing::warn!(error = %e, "request failed on the database");
                StatusCode::SERVICE_UNAVAILABLE
            }
            HttpError::Internal(e) => {
                tracing::error!(error = %e, "request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        views::error_page(status, &self.to_string())
    }
}
