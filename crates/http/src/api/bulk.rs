//! Airflow's bulk request and response shapes (`PATCH /api/v2/pools`,
//! `PATCH /api/v2/variables`, ...): a list of create, update and delete actions, each
//! answered with the ids done and the errors met.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::ApiError;

/// One action of a bulk request (Airflow's `BulkCreateAction` / `BulkUpdateAction` /
/// `BulkDeleteAction`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkAction {
    /// `create`, `update` or `delete`.
    pub action: String,
    /// Entities (create, update) or their ids (delete).
    pub entities: Vec<Value>,
    /// create: `fail` (the default), `skip` or `overwrite`.
    pub action_on_existence: Option<String>,
    /// update and delete: `fail` (the default) or `skip`.
    pub action_on_non_existence: Option<String>,
    /// update: the fields to change.
    pub update_mask: Option<Vec<String>>,
}

/// Airflow's `BulkBody`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkBody {
    pub actions: Vec<BulkAction>,
}

/// Airflow's `BulkActionResponse`.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct BulkActionResponse {
    pub success: Vec<String>,
    /// `{"error": ..., "status_code": ...}` per failed entity.
    pub errors: Vec<Value>,
}

/// Airflow's `BulkResponse`.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct BulkResponse {
    pub create: Option<BulkActionResponse>,
    pub update: Option<BulkActionResponse>,
    pub delete: Option<BulkActionResponse>,
}

impl BulkActionResponse {
    /// Records one entity's outcome: its id when done, nothing when skipped, the error's
    /// detail and status otherwise.
    pub fn record(&mut self, outcome: Result<Option<String>, ApiError>) {
        match outcome {
            Ok(Some(id)) => self.success.push(id),
            Ok(None) => {}
            Err(e) => self.errors.push(serde_json::json!({
                "error": match e.detail {
                    Value::String(s) => s,
                    other => other.to_string(),
                },
                "status_code": e.status.as_u16(),
            })),
        }
    }
}

impl BulkResponse {
    /// An empty response for `actions`, or Airflow's 422 for an unknown action, before any
    /// entity is touched.
    pub fn for_actions(actions: &[BulkAction]) -> Result<BulkResponse, ApiError> {
        let mut out = BulkResponse::default();
        for action in actions {
            out.slot(&action.action)?;
        }
        Ok(out)
    }

    /// Where the results of `action` go, or Airflow's 422 for an unknown action.
    pub fn slot(&mut self, action: &str) -> Result<&mut BulkActionResponse, ApiError> {
        let slot = match action {
            "create" => &mut self.create,
            "update" => &mut self.update,
            "delete" => &mut self.delete,
            other => {
                return Err(ApiError::invalid(
                    &["body", "actions", "action"],
                    format!("`{other}` is not an action: create, update or delete"),
                ));
            }
        };
        Ok(slot.get_or_insert_with(BulkActionResponse::default))
    }
}
