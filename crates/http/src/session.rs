//! The logged-in user of a request, from the signed session cookie.

use axum::extract::{FromRef, FromRequestParts, OriginalUri};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use chrono::Utc;
use flow_model::{Permission, Role};

use crate::auth::{self, SESSION_COOKIE};
use crate::{AppState, HttpError};

/// The user behind a request. Extracting it requires a live session: without one the request
/// is sent to the login page (and comes back afterwards).
#[derive(Debug, Clone)]
pub struct CurrentUser {
    pub username: String,
    pub role: Role,
    pub session_id: String,
    /// The token every state-changing form of this session must carry.
    pub csrf_token: String,
}

impl CurrentUser {
    pub fn require(&self, permission: Permission) -> Result<(), HttpError> {
        if self.role.can(permission) {
            Ok(())
        } else {
            Err(HttpError::Forbidden)
        }
    }

    /// Checks a submitted CSRF token against the session's.
    pub fn check_csrf(&self, submitted: &str) -> Result<(), HttpError> {
        if auth::constant_time_eq(submitted, &self.csrf_token) {
            Ok(())
        } else {
            Err(HttpError::Csrf)
        }
    }

    /// Whether the user may see action buttons (the server checks again on submit).
    pub fn can_edit(&self) -> bool {
        self.role.can(Permission::EditDags)
    }
}

/// The value of cookie `name`, if the request has it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl<S> FromRequestParts<S> for CurrentUser
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let next = parts
            .extensions
            .get::<OriginalUri>()
            .map_or_else(|| parts.uri.to_string(), |u| u.0.to_string());
        let login = || HttpError::LoginRequired { next: next.clone() };
        let signed = cookie(&parts.headers, SESSION_COOKIE).ok_or_else(login)?;
        let id = state.inner.signer.verify(signed).ok_or_else(login)?;
        let session = state
            .store()
            .session_get(id, Utc::now())
            .await?
            .ok_or_else(login)?;
        Ok(CurrentUser {
            username: session.user.username,
            role: session.user.role,
            session_id: session.id,
            csrf_token: session.csrf_token,
        })
    }
}
