//! `/api/v2/config`: flow's settings in Airflow 3's `Config` shape (sections of key/value
//! options), JSON or the INI-like text of `Accept: text/plain`. Only when the configuration is
//! exposed (`[webserver] expose_config`, Airflow's `[api] expose_config`), and only to roles
//! that may read it (Op and Admin, as Airflow's FAB roles). The CLI hands the web server a
//! snapshot in which secrets are already `< hidden >`.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use flow_model::Permission;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::schema::ErrorBody;
use super::{ApiError, ApiResult, ApiUser, query_pairs};
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_config))
        .routes(routes!(get_config_value))
}

/// Airflow's `ConfigOption` (flow always sends the value alone, never its source).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConfigOption {
    pub key: String,
    pub value: String,
}

/// Airflow's `ConfigSection`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConfigSection {
    pub name: String,
    pub options: Vec<ConfigOption>,
}

/// Airflow's `Config`: sections in order.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Config {
    pub sections: Vec<ConfigSection>,
}

impl Config {
    /// Airflow's text form: `[section]` then `key = value` lines, a blank line between
    /// sections.
    fn text(&self) -> String {
        let sections: Vec<String> = self
            .sections
            .iter()
            .map(|s| {
                let options: Vec<String> = s
                    .options
                    .iter()
                    .map(|o| format!("{} = {}", o.key, o.value))
                    .collect();
                format!("[{}]\n{}\n", s.name, options.join("\n"))
            })
            .collect();
        sections.join("\n")
    }
}

/// The snapshot, if the configuration is exposed; Airflow's 403 otherwise. The role check
/// comes first, as in Airflow. Admin only (the permission Admin alone holds): Airflow's FAB
/// roles let Op read it too, but the deployment's settings are an administrator's business.
fn exposed(state: &AppState, user: &ApiUser) -> ApiResult<Config> {
    user.require(Permission::ManageUsers)?;
    state.exposed_config().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "Your flow administrator chose not to expose the configuration, most likely for \
             security reasons.",
        )
    })
}

/// JSON by default, text with `Accept: text/plain`, 406 for anything else.
fn respond(config: Config, headers: &HeaderMap) -> ApiResult<Response> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if accept.starts_with("text/plain") {
        let mut response = config.text().into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return Ok(response);
    }
    if !(accept.starts_with("application/json") || accept.starts_with("*/*")) {
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "Only application/json or text/plain is supported",
        ));
    }
    Ok(Json(config).into_response())
}

#[utoipa::path(get, path = "/api/v2/config", tag = "Config",
    summary = "Every setting (secrets `< hidden >`), when `expose_config` is on",
    params(("section" = Option<String>, Query, description = "only this section")),
    responses(
        (status = 200, content((Config = "application/json"), (String = "text/plain"))),
        (status = 403, description = "Not an Op or Admin, or the configuration is not exposed", body = ErrorBody),
        (status = 404, description = "No such section", body = ErrorBody),
        (status = 406, description = "Neither JSON nor plain text was acceptable", body = ErrorBody),
    ),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn get_config(
    State(state): State<AppState>,
    user: ApiUser,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let config = exposed(&state, &user)?;
    let pairs = query_pairs(raw.as_deref())?;
    let Some((_, wanted)) = pairs.iter().find(|(k, v)| k == "section" && !v.is_empty()) else {
        return respond(config, &headers);
    };
    let section = config
        .sections
        .into_iter()
        .find(|s| s.name == *wanted)
        .ok_or_else(|| ApiError::not_found(format!("Section {wanted} not found.")))?;
    respond(
        Config {
            sections: vec![section],
        },
        &headers,
    )
}

#[utoipa::path(get, path = "/api/v2/config/section/{section}/option/{option}", tag = "Config",
    summary = "One setting (a secret is `< hidden >`), when `expose_config` is on",
    params(("section" = String, Path), ("option" = String, Path)),
    responses(
        (status = 200, content((Config = "application/json"), (String = "text/plain"))),
        (status = 403, description = "Not an Op or Admin, or the configuration is not exposed", body = ErrorBody),
        (status = 404, description = "No such option", body = ErrorBody),
        (status = 406, description = "Neither JSON nor plain text was acceptable", body = ErrorBody),
    ),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn get_config_value(
    State(state): State<AppState>,
    user: ApiUser,
    Path((section, option)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let config = exposed(&state, &user)?;
    let found = config
        .sections
        .iter()
        .filter(|s| s.name.eq_ignore_ascii_case(&section))
        .flat_map(|s| &s.options)
        .find(|o| o.key.eq_ignore_ascii_case(&option))
        .ok_or_else(|| ApiError::not_found(format!("Option [{section}/{option}] not found.")))?;
    let answer = Config {
        sections: vec![ConfigSection {
            name: section,
            options: vec![ConfigOption {
                key: option,
                value: found.value.clone(),
            }],
        }],
    };
    respond(answer, &headers)
}
