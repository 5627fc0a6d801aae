//! The user's own settings: the time zone pages show times in (Airflow's timezone selector).
//! Kept in a cookie of the browser, as Airflow keeps it in the browser's storage.

use axum::Form;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::auth;
use crate::views::{self, Chrome, TIMEZONE_COOKIE, page, url_encode};
use crate::{AppState, CurrentUser, HttpError};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/settings", get(settings_page))
        .route("/settings/timezone", post(set_timezone))
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

async fn settings_page(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(q): Query<NextQuery>,
) -> Result<Response, HttpError> {
    let current = views::ui_timezone().name().to_owned();
    Ok(page(&views::SettingsPage {
        chrome: Chrome::of(&user),
        zones: chrono_tz::TZ_VARIANTS
            .iter()
            .map(|z| z.name().to_owned())
            .collect(),
        current,
        default_zone: state.default_ui_timezone().name().to_owned(),
        next: auth::safe_next(q.next.as_deref()),
        now: views::fmt_time(&Some(chrono::Utc::now())),
    }))
}

#[derive(Deserialize)]
struct TimezoneForm {
    csrf_token: String,
    timezone: String,
    next: Option<String>,
}

/// Keeps the chosen zone for a year; an empty choice goes back to the server's default.
async fn set_timezone(
    user: CurrentUser,
    Form(form): Form<TimezoneForm>,
) -> Result<Response, HttpError> {
    user.check_csrf(&form.csrf_token)?;
    let name = form.timezone.trim();
    let cookie = if name.is_empty() {
        format!("{TIMEZONE_COOKIE}=; Path=/; Max-Age=0; SameSite=Lax")
    } else {
        let tz: chrono_tz::Tz = name.parse().map_err(|_| {
            HttpError::BadRequest(format!(
                "timezone: `{name}` is not a time zone (an IANA name such as UTC or Europe/Paris)"
            ))
        })?;
        format!(
            "{TIMEZONE_COOKIE}={}; Path=/; Max-Age=31536000; SameSite=Lax",
            url_encode(tz.name())
        )
    };
    let mut response = Redirect::to(&auth::safe_next(form.next.as_deref())).into_response();
    let value = HeaderValue::from_str(&cookie)
        .map_err(|_| HttpError::BadRequest("timezone: not a valid value".into()))?;
    response.headers_mut().append(header::SET_COOKIE, value);
    Ok(response)
}
