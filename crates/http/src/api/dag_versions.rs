//! `/api/v2/dags/{dag_id}/dagVersions`: every version of a DAG the processor stored (a new
//! serialized hash), as Airflow 3's `DagVersionResponse`; each version's source is at
//! `GET /api/v2/dagSources/{dag_id}?version_number=N`.

use axum::extract::{Path, RawQuery, State};
use axum::response::Json;
use flow_model::Permission;
use flow_store::DagVersionRow;
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::dags::time;
use super::{ApiError, ApiResult, ApiUser, dag_not_found, paging, query_pairs};
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get_one))
}

/// Airflow's `DagVersionResponse`, with flow's `dag_hash`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DagVersionResponse {
    /// A UUID derived from the DAG and the version number (stable across calls).
    pub id: String,
    pub version_number: i64,
    pub dag_id: String,
    pub bundle_name: Option<String>,
    pub bundle_version: Option<String>,
    pub bundle_url: Option<String>,
    pub created_at: Option<String>,
    pub dag_display_name: String,
    /// The serialized DAG's hash: equal hashes, equal DAGs.
    pub dag_hash: String,
}

/// Airflow's `DAGVersionCollectionResponse`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DagVersionCollection {
    pub dag_versions: Vec<DagVersionResponse>,
    pub total_entries: i64,
}

fn uuid_of(dag_id: &str, version: i64) -> String {
    let digest = Sha256::digest(format!("{dag_id}\u{0}{version}").as_bytes());
    let h: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-5{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn response(v: &DagVersionRow) -> DagVersionResponse {
    DagVersionResponse {
        id: uuid_of(&v.dag_id, v.version_number),
        version_number: v.version_number,
        dag_id: v.dag_id.clone(),
        bundle_name: Some("dags-folder".to_owned()),
        bundle_version: None,
        bundle_url: None,
        created_at: time(Some(v.created_at)),
        dag_display_name: v.dag_id.clone(),
        dag_hash: v.dag_hash.clone(),
    }
}

#[utoipa::path(get, path = "/api/v2/dags/{dag_id}/dagVersions", tag = "DagVersion",
    summary = "Every stored version of a DAG",
    params(
        ("dag_id" = String, Path),
        ("limit" = Option<i64>, Query, minimum = 0),
        ("offset" = Option<i64>, Query, minimum = 0),
        ("order_by" = Option<String>, Query, description = "version_number (or id), `-` for the newest first"),
    ),
    responses((status = 200, body = DagVersionCollection)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn list(
    State(state): State<AppState>,
    user: ApiUser,
    Path(dag_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<DagVersionCollection>> {
    user.require(Permission::Read)?;
    let pairs = query_pairs(raw.as_deref())?;
    let (limit, offset) = paging(&pairs)?;
    let desc = match pairs
        .iter()
        .find(|(k, _)| k == "order_by")
        .map(|(_, v)| v.as_str())
    {
        None | Some("id" | "version_number") => false,
        Some("-id" | "-version_number") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Ordering with '{other}' is disallowed or the attribute does not exist on the model"
            )));
        }
    };
    if state.store().dag_get(&dag_id).await?.is_none() {
        return Err(dag_not_found(&dag_id));
    }
    let (rows, total) = state
        .store()
        .dag_versions(
            &dag_id,
            desc,
            i64::try_from(limit).unwrap_or(100),
            i64::try_from(offset).unwrap_or(i64::MAX),
        )
        .await?;
    Ok(Json(DagVersionCollection {
        dag_versions: rows.iter().map(response).collect(),
        total_entries: total,
    }))
}

#[utoipa::path(get, path = "/api/v2/dags/{dag_id}/dagVersions/{version_number}", tag = "DagVersion",
    summary = "One version of a DAG",
    params(("dag_id" = String, Path), ("version_number" = i64, Path)),
    responses((status = 200, body = DagVersionResponse)),
    security(("HTTPBearer" = []), ("HTTPBasic" = [])))]
async fn get_one(
    State(state): State<AppState>,
    user: ApiUser,
    Path((dag_id, version_number)): Path<(String, i64)>,
) -> ApiResult<Json<DagVersionResponse>> {
    user.require(Permission::Read)?;
    let (row, _) = state
        .store()
        .dag_version_get(&dag_id, version_number)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "The DagVersion with dag_id: `{dag_id}` and version_number: `{version_number}` was not found"
            ))
        })?;
    Ok(Json(response(&row)))
}
