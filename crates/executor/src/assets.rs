//! Assets in a try: the events a success records (one per outlet, with its extra), and the
//! events that triggered the run, as templates and Python callables see them.

use flow_dag::Task;
use flow_dag::assets::{Asset, Outlet};
use flow_store::{AssetEventRow, NewAssetEvent};
use serde_json::{Map, Value as Json, json};

fn asset_json(a: &Asset) -> Json {
    json!({"uri": a.uri, "name": a.name, "group": a.group, "extra": a.extra})
}

/// `{{ outlets }}`: the task's assets (aliases as `{"name": ...}`).
pub(crate) fn outlets_json(task: &Task) -> Json {
    Json::Array(
        task.outlets
            .iter()
            .map(|o| match o {
                Outlet::Asset { asset, .. } => asset_json(asset),
                Outlet::Alias { name } => json!({"name": name, "alias": true}),
            })
            .collect(),
    )
}

/// `{{ inlets }}`.
pub(crate) fn inlets_json(task: &Task) -> Json {
    Json::Array(task.inlets.iter().map(asset_json).collect())
}

/// `triggering_asset_events`: the consumed events by asset URI, oldest first, each as
/// Airflow's `AssetEvent` (with its `asset`).
pub fn triggering_events_json(events: &[AssetEventRow]) -> Json {
    let mut out: Map<String, Json> = Map::new();
    for e in events {
        let entry = out
            .entry(e.uri.clone())
            .or_insert_with(|| Json::Array(Vec::new()));
        if let Json::Array(list) = entry {
            list.push(json!({
                "id": e.id,
                "asset_id": e.asset_id,
                "uri": e.uri,
                "asset": {"uri": e.uri, "name": e.name, "group": e.group},
                "extra": e.extra,
                "source_dag_id": e.source_dag_id,
                "source_task_id": e.source_task_id,
                "source_run_id": e.source_run_id,
                "source_map_index": e.source_map_index,
                "timestamp": e.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Micros, false),
            }));
        }
    }
    Json::Object(out)
}

/// An extra must be a mapping: a mapping, or text that is a JSON mapping (a bash task's
/// XCom is its last line); anything else is kept under `value`.
fn as_extra(v: &Json) -> Map<String, Json> {
    match v {
        Json::Object(m) => m.clone(),
        Json::Null => Map::new(),
        Json::String(s) if s.trim_start().starts_with('{') => {
            match serde_json::from_str::<Json>(s) {
                Ok(Json::Object(m)) => m,
                _ => {
                    let mut m = Map::new();
                    m.insert("value".into(), v.clone());
                    m
                }
            }
        }
        other => {
            let mut m = Map::new();
            m.insert("value".into(), other.clone());
            m
        }
    }
}

/// The events a successful try records: one per asset outlet, its extra from the XCom the
/// outlet names (`extra_from_xcom`) and from what a Python callable set in
/// `outlet_events[asset].extra`; plus the assets the callable added to its alias outlets.
pub(crate) fn outlet_events(
    task: &Task,
    return_value: Option<&Json>,
    pushed: &[(String, Json)],
    python: Option<&Json>,
) -> Vec<NewAssetEvent> {
    let extras = python
        .and_then(|p| p.get("extras"))
        .and_then(Json::as_object);
    let mut out = Vec::new();
    for o in &task.outlets {
        match o {
            Outlet::Asset {
                asset,
                extra_from_xcom,
            } => {
                let mut extra = Map::new();
                if let Some(key) = extra_from_xcom {
                    let value = if key == "return_value" {
                        return_value
                    } else {
                        pushed.iter().find(|(k, _)| k == key).map(|(_, v)| v)
                    };
                    if let Some(v) = value {
                        extra.extend(as_extra(v));
                    }
                }
                if let Some(m) = extras {
                    for key in [&asset.uri, &asset.name] {
                        if let Some(v) = m.get(key.as_str()) {
                            extra.extend(as_extra(v));
                        }
                    }
                }
                out.push(NewAssetEvent {
                    uri: asset.uri.clone(),
                    name: asset.name.clone(),
                    extra: Json::Object(extra),
                });
            }
            Outlet::Alias { name } => {
                let added = python
                    .and_then(|p| p.get("added"))
                    .and_then(Json::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                for a in added {
                    if a.get("alias").and_then(Json::as_str) != Some(name.as_str()) {
                        continue;
                    }
                    let Some(uri) = a.get("uri").and_then(Json::as_str) else {
                        continue;
                    };
                    let uri = uri.trim();
                    // What a callable adds is checked as a DAG file's URIs are.
                    if flow_dag::assets::check_uri(uri).is_err() {
                        continue;
                    }
                    let name = a
                        .get("name")
                        .and_then(Json::as_str)
                        .filter(|n| !n.trim().is_empty() && n.len() <= 1500)
                        .unwrap_or(uri);
                    out.push(NewAssetEvent {
                        uri: uri.to_owned(),
                        name: name.to_owned(),
                        extra: Json::Object(as_extra(a.get("extra").unwrap_or(&Json::Null))),
                    });
                }
            }
        }
    }
    out
}
