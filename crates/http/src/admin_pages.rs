//! The admin pages: Connections (Op and Admin, as the connections API) and Users (Admin).
//!
//! Connections are checked by the API's own rules (`api::connections::connection_from`) and
//! shown the way the API shows them: the password only as set or not, sensitive extra values
//! as `***`. No secret is ever written into a page, not even into an edit form: an empty
//! password keeps the stored one and `***` in an extra keeps the stored value.
//!
//! Users follow `flow users create`'s rules (`auth::check_username`, `check_password`);
//! the store refuses to delete or demote the last Admin, and Admins may not delete or demote
//! themselves. A deleted user's sessions end with the row; a reset password ends the user's
//! other sessions (and, with the hash they are bound to, their API tokens).

use askama::Template;
use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::Utc;
use flow_model::{Connection, Permission, Role};
use flow_store::{AuditEvent, NewUser, UserChange};
use serde::Deserialize;

use crate::api::connections::{BadField, ConnectionBody, connection_from};
use crate::views::{Chrome, fmt_time, page, url_encode};
use crate::{AppState, CurrentUser, HttpError, TestConnectionMode, auth};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/connections", get(connections_page).post(connection_add))
        .route(
            "/connections/{conn_id}/edit",
            get(connection_edit_page).post(connection_edit),
        )
        .route("/connections/{conn_id}/delete", post(connection_delete))
        .route("/connections/{conn_id}/test", post(connection_test))
        .route("/users", get(users_page).post(user_create))
        .route("/users/role", post(user_role))
        .route("/users/password", post(user_password))
        .route("/users/delete", post(user_delete))
}

/// What an edit form shows for a secret it keeps.
const MASK: &str = "***";

/// Connection types the form suggests (any type may be typed).
const CONN_TYPES: &[&str] = &[
    "postgres", "mysql", "sqlite", "http", "https", "kafka", "smtp", "fs", "generic",
];

/// Records an action; a failure to record is logged, not shown (the action itself happened).
async fn audit(state: &AppState, username: &str, event: &str, extra: &str) {
    let e = AuditEvent {
        username,
        event,
        extra: Some(extra),
        ..AuditEvent::default()
    };
    if let Err(err) = state.store().audit_record(&e, Utc::now()).await {
        tracing::warn!(error = %err, event, "could not write the audit log");
    }
}

/// A page with a status other than 200 (a form sent back with its error).
fn page_with(status: StatusCode, body: &impl Template) -> Response {
    let mut response = page(body);
    *response.status_mut() = status;
    response
}

// ---- connections ----

fn cipher(state: &AppState) -> Result<&flow_store::Cipher, HttpError> {
    state.cipher().ok_or_else(|| {
        HttpError::BadRequest("this server has no fernet key for connections".into())
    })
}

/// One connection as the list shows it: no password, secret extra values masked.
struct ConnectionItem {
    conn_id: String,
    conn_id_url: String,
    conn_type: String,
    host: String,
    port: String,
    schema: String,
    login: String,
    password_set: bool,
    extra: String,
    description: String,
}

impl ConnectionItem {
    fn of(c: &Connection) -> Self {
        let shown = c.masked();
        ConnectionItem {
            conn_id_url: url_encode(&c.conn_id),
            password_set: c.password.is_some(),
            port: c.port.map(|p| p.to_string()).unwrap_or_default(),
            conn_id: shown.conn_id,
            conn_type: shown.conn_type,
            host: shown.host.unwrap_or_default(),
            schema: shown.schema.unwrap_or_default(),
            login: shown.login.unwrap_or_default(),
            extra: shown.extra.unwrap_or_default(),
            description: shown.description.unwrap_or_default(),
        }
    }
}

/// The add or edit form's values (never a password) and its error, naming the field.
#[derive(Default)]
struct ConnectionFormView {
    editing: bool,
    conn_id: String,
    conn_type: String,
    description: String,
    host: String,
    port: String,
    schema: String,
    login: String,
    /// Masked as the API masks it.
    extra: String,
    password_set: bool,
    /// `connection_id`, `conn_type`, `port`, `extra`, or empty.
    error_field: String,
    error: String,
}

impl ConnectionFormView {
    fn of(c: &Connection) -> Self {
        let item = ConnectionItem::of(c);
        ConnectionFormView {
            editing: true,
            conn_id: item.conn_id,
            conn_type: item.conn_type,
            description: item.description,
            host: item.host,
            port: item.port,
            schema: item.schema,
            login: item.login,
            extra: item.extra,
            password_set: item.password_set,
            ..ConnectionFormView::default()
        }
    }

    /// The form as it was sent, with its error (the password is not sent back).
    fn refused(form: &ConnectionForm, editing: bool, password_set: bool, bad: BadField) -> Self {
        ConnectionFormView {
            editing,
            conn_id: form.conn_id.clone(),
            conn_type: form.conn_type.clone(),
            description: form.description.clone(),
            host: form.host.clone(),
            port: form.port.clone(),
            schema: form.schema.clone(),
            login: form.login.clone(),
            extra: form.extra.clone(),
            password_set,
            error_field: bad.field.to_owned(),
            error: format!("{}: {}", bad.field, bad.message),
        }
    }
}

/// The result of a Test, shown above the list.
struct TestResult {
    conn_id: String,
    ok: bool,
    message: String,
}

#[derive(Template)]
#[template(path = "connections.html")]
struct ConnectionsPage {
    chrome: Chrome,
    connections: Vec<ConnectionItem>,
    form: ConnectionFormView,
    conn_types: &'static [&'static str],
    test: Option<TestResult>,
    /// `enabled`, `disabled` (button shown, off) or `hidden`.
    test_mode: &'static str,
}

#[derive(Template)]
#[template(path = "connection_edit.html")]
struct ConnectionEditPage {
    chrome: Chrome,
    conn_id_url: String,
    form: ConnectionFormView,
    conn_types: &'static [&'static str],
}

fn test_mode(state: &AppState) -> &'static str {
    match state.connection_testing().mode() {
        TestConnectionMode::Enabled => "enabled",
        TestConnectionMode::Disabled => "disabled",
        TestConnectionMode::Hidden => "hidden",
    }
}

/// The Connections page with `form` in its add form and `test` above the list.
async fn render_connections(
    state: &AppState,
    user: &CurrentUser,
    form: ConnectionFormView,
    test: Option<TestResult>,
) -> Result<ConnectionsPage, HttpError> {
    let connections = state
        .store()
        .connection_list(cipher(state)?)
        .await?
        .iter()
        .map(ConnectionItem::of)
        .collect();
    Ok(ConnectionsPage {
        chrome: Chrome::of(user),
        connections,
        form,
        conn_types: CONN_TYPES,
        test,
        test_mode: test_mode(state),
    })
}

async fn connections_page(
    State(state): State<AppState>,
    user: CurrentUser,
) -> Result<Response, HttpError> {
    // As the connections API: Op and Admin.
    user.require(Permission::Operate)?;
    let body = render_connections(&state, &user, ConnectionFormView::default(), None).await?;
    Ok(page(&body))
}

#[derive(Deserialize)]
struct ConnectionForm {
    csrf_token: String,
    #[serde(default)]
    conn_id: String,
    #[serde(default)]
    conn_type: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    port: String,
    #[serde(default)]
    schema: String,
    #[serde(default)]
    login: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    clear_password: Option<String>,
    #[serde(default)]
    extra: String,
}

fn blank_to_none(s: &str) -> Option<String> {
    (!s.trim().is_empty()).then(|| s.to_owned())
}

/// The form as the API's body. On an edit an empty password keeps the stored one (sent as
/// the mask) unless "clear" is ticked.
fn form_body(
    form: &ConnectionForm,
    conn_id: &str,
    editing: bool,
) -> Result<ConnectionBody, BadField> {
    let port = match form.port.trim() {
        "" => None,
        text => Some(text.parse::<u16>().map_err(|_| BadField {
            field: "port",
            message: format!("`{text}` is not a port (a whole number from 0 to 65535)"),
        })?),
    };
    let password = if form.clear_password.is_some() {
        None
    } else if form.password.is_empty() {
        editing.then(|| MASK.to_owned())
    } else {
        Some(form.password.clone())
    };
    Ok(ConnectionBody {
        connection_id: conn_id.trim().to_owned(),
        conn_type: form.conn_type.trim().to_owned(),
        description: blank_to_none(&form.description),
        host: blank_to_none(form.host.trim()),
        login: blank_to_none(&form.login),
        schema: blank_to_none(form.schema.trim()),
        port,
        password,
        extra: blank_to_none(&form.extra),
    })
}

async fn connection_add(
    State(state): State<AppState>,
    user: CurrentUser,
    Form(form): Form<ConnectionForm>,
) -> Result<Response, HttpError> {
    user.check_csrf(&form.csrf_token)?;
    user.require(Permission::Operate)?;
    let checked = form_body(&form, &form.conn_id, false).and_then(|b| connection_from(b, None));
    let conn = match checked {
        Ok(c) => c,
        Err(bad) => {
            let view = ConnectionFormView::refused(&form, false, false, bad);
            let body = render_connections(&state, &user, view, None).await?;
            return Ok(page_with(StatusCode::BAD_REQUEST, &body));
        }
    };
    if !state
        .store()
        .connection_add(&conn, cipher(&state)?, Utc::now())
        .await?
    {
        let bad = BadField {
            field: "connection_id",
            message: format!("a connection `{}` already exists", conn.conn_id),
        };
        let view = ConnectionFormView::refused(&form, false, false, bad);
        let body = render_connections(&state, &user, view, None).await?;
        return Ok(page_with(StatusCode::CONFLICT, &body));
    }
    audit(&state, &user.username, "add connection", &conn.conn_id).await;
    Ok(Redirect::to("/connections").into_response())
}

async fn stored_connection(state: &AppState, conn_id: &str) -> Result<Connection, HttpError> {
    state
        .store()
        .connection_get(conn_id, cipher(state)?)
        .await?
        .ok_or_else(|| HttpError::NotFound(format!("no connection `{conn_id}`")))
}

async fn connection_edit_page(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(conn_id): Path<String>,
) -> Result<Response, HttpError> {
    user.require(Permission::Operate)?;
    let conn = stored_connection(&state, &conn_id).await?;
    Ok(page(&ConnectionEditPage {
        chrome: Chrome::of(&user),
        conn_id_url: url_encode(&conn.conn_id),
        form: ConnectionFormView::of(&conn),
        conn_types: CONN_TYPES,
    }))
}

async fn connection_edit(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(conn_id): Path<String>,
    Form(mut form): Form<ConnectionForm>,
) -> Result<Response, HttpError> {
    user.check_csrf(&form.csrf_token)?;
    user.require(Permission::Operate)?;
    let old = stored_connection(&state, &conn_id).await?;
    // The id is the page's, whatever the (read-only) field says.
    form.conn_id.clone_from(&old.conn_id);
    let checked = form_body(&form, &old.conn_id, true).and_then(|b| connection_from(b, Some(&old)));
    let conn = match checked {
        Ok(c) => c,
        Err(bad) => {
            let view = ConnectionFormView::refused(&form, true, old.password.is_some(), bad);
            let body = ConnectionEditPage {
                chrome: Chrome::of(&user),
                conn_id_url: url_encode(&old.conn_id),
                form: view,
                conn_types: CONN_TYPES,
            };
            return Ok(page_with(StatusCode::BAD_REQUEST, &body));
        }
    };
    if !state
        .store()
        .connection_update(&conn, cipher(&state)?, Utc::now())
        .await?
    {
        return Err(HttpError::NotFound(format!("no connection `{conn_id}`")));
    }
    audit(&state, &user.username, "edit connection", &conn.conn_id).await;
    Ok(Redirect::to("/connections").into_response())
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf_token: String,
}

async fn connection_delete(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(conn_id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, HttpError> {
    user.check_csrf(&form.csrf_token)?;
    user.require(Permission::Operate)?;
    if !state.store().connection_delete(&conn_id).await? {
        return Err(HttpError::NotFound(format!("no connection `{conn_id}`")));
    }
    audit(&state, &user.username, "delete connection", &conn_id).await;
    Ok(Redirect::to("/connections").into_response())
}

/// Tests a stored connection and shows what the test said above the list (a test changes
/// nothing, so there is nothing to redirect to).
async fn connection_test(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(conn_id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, HttpError> {
    user.check_csrf(&form.csrf_token)?;
    user.require(Permission::Operate)?;
    let conn = stored_connection(&state, &conn_id).await?;
    let Some((ok, message)) = state.connection_testing().run(conn).await else {
        let test = TestResult {
            conn_id,
            ok: false,
            message: crate::DISABLED_MESSAGE.to_owned(),
        };
        let view = ConnectionFormView::default();
        let body = render_connections(&state, &user, view, Some(test)).await?;
        return Ok(page_with(StatusCode::FORBIDDEN, &body));
    };
    audit(
        &state,
        &user.username,
        "test connection",
        &format!("{conn_id}: {}", if ok { "passed" } else { "failed" }),
    )
    .await;
    let test = TestResult {
        conn_id,
        ok,
        message,
    };
    let body = render_connections(&state, &user, ConnectionFormView::default(), Some(test)).await?;
    Ok(page(&body))
}

// ---- users ----

/// One user as the list shows it.
struct UserItem {
    username: String,
    role: String,
    email: String,
    name: String,
    created: String,
    last_login: String,
    active: bool,
    /// The signed-in Admin: no delete, no role change.
    is_me: bool,
}

impl UserItem {
    fn has_role(&self, role: &str) -> bool {
        self.role == role
    }
}

/// The create form as it was sent (never the password).
#[derive(Default)]
struct UserFormView {
    username: String,
    role: String,
    email: String,
    first_name: String,
    last_name: String,
}

impl UserFormView {
    fn has_role(&self, role: &str) -> bool {
        self.role == role
    }
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    chrome: Chrome,
    users: Vec<UserItem>,
    roles: Vec<&'static str>,
    form: UserFormView,
    notice: String,
    error: String,
}

/// The Users page with a notice or an error above the list.
async fn render_users(
    state: &AppState,
    user: &CurrentUser,
    form: UserFormView,
    notice: String,
    error: String,
) -> Result<UsersPage, HttpError> {
    let users = state
        .store()
        .user_list()
        .await?
        .into_iter()
        .map(|u| UserItem {
            is_me: u.username == user.username,
            name: format!("{} {}", u.first_name, u.last_name)
                .trim()
                .to_owned(),
            role: u.role.as_str().to_owned(),
            created: fmt_time(&Some(u.created_at)),
            last_login: fmt_time(&u.last_login),
            active: u.active,
            email: u.email,
            username: u.username,
        })
        .collect();
    Ok(UsersPage {
        chrome: Chrome::of(user),
        users,
        roles: Role::ALL.iter().map(|r| r.as_str()).collect(),
        form,
        notice,
        error,
    })
}

/// The Users page again, refusing what was asked with `status` and `error`.
async fn users_refused(
    state: &AppState,
    user: &CurrentUser,
    status: StatusCode,
    form: UserFormView,
    error: String,
) -> Result<Response, HttpError> {
    let body = render_users(state, user, form, String::new(), error).await?;
    Ok(page_with(status, &body))
}

#[derive(Deserialize, Default)]
struct UsersQuery {
    /// The user whose password was just reset.
    reset: Option<String>,
}

async fn users_page(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(q): Query<UsersQuery>,
) -> Result<Response, HttpError> {
    user.require(Permission::ManageUsers)?;
    let mut body = render_users(
        &state,
        &user,
        UserFormView {
            role: Role::Viewer.as_str().to_owned(),
            ..UserFormView::default()
        },
        String::new(),
        String::new(),
    )
    .await?;
    // Only a name on the list is echoed, so the link cannot carry arbitrary text.
    if let Some(name) = q
        .reset
        .filter(|n| body.users.iter().any(|u| &u.username == n))
    {
        body.notice = format!(
            "The password of {name} was reset; their other sessions and API tokens have ended."
        );
    }
    Ok(page(&body))
}

#[derive(Deserialize)]
struct UserCreateForm {
    csrf_token: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    first_name: String,
    #[serde(default)]
    last_name: String,
    #[serde(default)]
    password: String,
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse_loose(text.trim()).map_err(|e| format!("role: {e}"))
}

async fn user_create(
    State(state): State<AppState>,
    user: CurrentUser,
    Form(form): Form<UserCreateForm>,
) -> Result<Response, HttpError> {
    user.check_csrf(&form.csrf_token)?;
    user.require(Permission::ManageUsers)?;
    let username = form.username.trim();
    let view = UserFormView {
        username: username.to_owned(),
        role: form.role.clone(),
        email: form.email.clone(),
        first_name: form.first_name.clone(),
        last_name: form.last_name.clone(),
    };
    let checked = auth::check_username(username)
        .and_then(|()| auth::check_password(&form.password))
        .and_then(|()| parse_role(&form.role));
    let role = match checked {
        Ok(role) => role,
        Err(e) => return users_refused(&state, &user, StatusCode::BAD_REQUEST, view, e).await,
    };
    let hash = hash_off_thread(form.password).await?;
    let created = state
        .store()
        .user_create(
            &NewUser {
                username,
                email: form.email.trim(),
                first_name: form.first_name.trim(),
                last_name: form.last_name.trim(),
                password_hash: &hash,
                role,
            },
            Utc::now(),
        )
        .await?;
    if !created {
        let error = format!("user `{username}` already exists");
        return users_refused(&state, &user, StatusCode::CONFLICT, view, error).await;
    }
    audit(
        &state,
        &user.username,
        "create user",
        &format!("{username} ({role})"),
    )
    .await;
    Ok(Redirect::to("/users").into_response())
}

/// argon2 takes tens of milliseconds of CPU: off the async threads.
async fn hash_off_thread(password: String) -> Result<String, HttpError> {
    tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .map_err(|e| HttpError::Internal(e.to_string()))?
}

#[derive(Deserialize)]
struct UserRoleForm {
    csrf_token: String,
    username: String,
    role: String,
}

async fn user_role(
    State(state): State<AppState>,
    user: CurrentUser,
    Form(form): Form<UserRoleForm>,
) -> Result<Response, HttpError> {
    user.check_csrf(&form.csrf_token)?;
    user.require(Permission::ManageUsers)?;
    let refuse = |status, error: String| {
        users_refused(&state, &user, status, UserFormView::default(), error)
    };
    let role = match parse_role(&form.role) {
        Ok(r) => r,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e).await,
    };
    if form.username == user.username && role != Role::Admin {
        let error = "You cannot take the Admin role from yourself; another Admin can.".to_owned();
        return refuse(StatusCode::BAD_REQUEST, error).await;
    }
    match state.store().user_set_role(&form.username, role).await? {
        UserChange::Done => {}
        UserChange::Missing => {
            return Err(HttpError::NotFound(format!("no user `{}`", form.username)));
        }
        UserChange::LastAdmin => {
            let error = format!(
                "{} is the last Admin and cannot be demoted; make another user Admin first.",
                form.username
            );
            return refuse(StatusCode::CONFLICT, error).await;
        }
    }
    audit(
        &state,
        &user.username,
        "set user role",
        &format!("{}: {role}", form.username),
    )
    .await;
    Ok(Redirect::to("/users").into_response())
}

#[derive(Deserialize)]
struct UserPasswordForm {
    csrf_token: String,
    username: String,
    #[serde(default)]
    password: String,
}

async fn user_password(
    State(state): State<AppState>,
    user: CurrentUser,
    Form(form): Form<UserPasswordForm>,
) -> Result<Response, HttpError> {
    user.check_csrf(&form.csrf_token)?;
    user.require(Permission::ManageUsers)?;
    if let Err(e) = auth::check_password(&form.password) {
        let view = UserFormView::default();
        return users_refused(&state, &user, StatusCode::BAD_REQUEST, view, e).await;
    }
    let hash = hash_off_thread(form.password).await?;
    // An Admin resetting their own password stays signed in here; every other session ends.
    let keep = (form.username == user.username).then_some(user.session_id.as_str());
    if !state
        .store()
        .user_set_password(&form.username, &hash, keep)
        .await?
    {
        return Err(HttpError::NotFound(format!("no user `{}`", form.username)));
    }
    audit(
        &state,
        &user.username,
        "reset user password",
        &form.username,
    )
    .await;
    Ok(Redirect::to(&format!("/users?reset={}", url_encode(&form.username))).into_response())
}

#[derive(Deserialize)]
struct UserDeleteForm {
    csrf_token: String,
    username: String,
}

async fn user_delete(
    State(state): State<AppState>,
    user: CurrentUser,
    Form(form): Form<UserDeleteForm>,
) -> Result<Response, HttpError> {
    user.check_csrf(&form.csrf_token)?;
    user.require(Permission::ManageUsers)?;
    if form.username == user.username {
        let error = "You cannot delete yourself; another Admin can.".to_owned();
        let view = UserFormView::default();
        return users_refused(&state, &user, StatusCode::BAD_REQUEST, view, error).await;
    }
    match state.store().user_delete(&form.username).await? {
        UserChange::Done => {}
        UserChange::Missing => {
            return Err(HttpError::NotFound(format!("no user `{}`", form.username)));
        }
        UserChange::LastAdmin => {
            let error = format!(
                "{} is the last Admin and cannot be deleted; make another user Admin first.",
                form.username
            );
            let view = UserFormView::default();
            return users_refused(&state, &user, StatusCode::CONFLICT, view, error).await;
        }
    }
    audit(&state, &user.username, "delete user", &form.username).await;
    Ok(Redirect::to("/users").into_response())
}
