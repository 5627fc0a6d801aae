//! Static files, embedded in the binary so that `flow` runs without a front-end build.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::AppState;

const FILES: &[(&str, &str, &str)] = &[
    (
        "flow.css",
        "text/css; charset=utf-8",
        include_str!("../../../web/static/flow.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../../../web/static/favicon.svg"),
    ),
    (
        "flow.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/static/flow.js"),
    ),
];

pub fn routes() -> Router<AppState> {
    Router::new().route("/static/{file}", get(serve)).route(
        "/favicon.ico",
        get(|| async { axum::response::Redirect::permanent("/static/favicon.svg") }),
    )
}

async fn serve(Path(file): Path<String>) -> Response {
    let Some((_, mime, body)) = FILES.iter().find(|(name, _, _)| *name == file) else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    embedded(body, mime, "public, max-age=300")
}

/// A file embedded in the binary, with its type and caching policy.
pub(crate) fn embedded(
    body: &'static str,
    mime: &'static str,
    cache_control: &'static str,
) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    response
}
