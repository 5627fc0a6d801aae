//! `/docs`: Swagger UI over `/api/v2/openapi.json`, as Airflow serves it, from files embedded
//! in the binary (swagger-ui-dist from npm, `web/vendor/swagger-ui`), so that the docs work
//! without reaching a CDN and within the site's Content-Security-Policy (no inline script).

use axum::Router;
use axum::response::{Html, Response};
use axum::routing::get;

use crate::AppState;

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>flow REST API</title>
<link rel="icon" href="/static/favicon.svg">
<link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body>
</html>
"#;

const INIT: &str = r##"window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/api/v2/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    persistAuthorization: true
  });
});
"##;

const BUNDLE: &str = include_str!("../../../../web/vendor/swagger-ui/swagger-ui-bundle.js");
const CSS: &str = include_str!("../../../../web/vendor/swagger-ui/swagger-ui.css");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/docs", get(|| async { Html(PAGE) }))
        .route(
            "/docs/init.js",
            get(|| async { asset(INIT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/docs/swagger-ui-bundle.js",
            get(|| async { asset(BUNDLE, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/docs/swagger-ui.css",
            get(|| async { asset(CSS, "text/css; charset=utf-8") }),
        )
}

/// Swagger UI's files change only with flow's version: cached for a day.
fn asset(body: &'static str, mime: &'static str) -> Response {
    crate::assets::embedded(body, mime, "public, max-age=86400")
}
