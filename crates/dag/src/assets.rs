//! Assets (Airflow 2's datasets): what a task updates (`outlets`) and reads (`inlets`), and
//! the conditions that schedule a DAG on them (`schedule: [uri, ...]`, `&`/`|` conditions,
//! cron or assets).
//!
//! An asset is known by its URI: a task's outlet and a DAG's schedule meet when they name the
//! same URI, whatever names they give it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::build::Ctx;
use crate::yaml::{Node, Span, Value};

/// Airflow's limit on asset URIs and names.
const MAX_URI_LEN: usize = 1500;

/// The default `group` of an asset, as Airflow's.
pub const DEFAULT_GROUP: &str = "asset";

fn default_group() -> String {
    DEFAULT_GROUP.to_owned()
}

fn is_default_group(g: &str) -> bool {
    g == DEFAULT_GROUP
}

/// An asset a DAG refers to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Asset {
    pub uri: String,
    /// The URI unless the file names it.
    pub name: String,
    #[serde(default = "default_group", skip_serializing_if = "is_default_group")]
    pub group: String,
    /// The asset's own metadata (not an event's).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, Json>,
}

impl Asset {
    fn plain(uri: &str) -> Asset {
        Asset {
            uri: uri.to_owned(),
            name: uri.to_owned(),
            group: default_group(),
            extra: serde_json::Map::new(),
        }
    }
}

/// What a task's success updates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outlet {
    /// One event per success, its `extra` taken from an XCom of the try when
    /// `extra_from_xcom` names one (flow's), and from `outlet_events[...]` in Python.
    Asset {
        #[serde(flatten)]
        asset: Asset,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        extra_from_xcom: Option<String>,
    },
    /// Airflow's `AssetAlias`: the task names the assets at run time
    /// (`outlet_events[AssetAlias(name)].add(Asset(uri))`); no event unless it does.
    Alias { name: String },
}

/// When a DAG scheduled on assets runs: every asset of an `All`, any of an `Any`, updated
/// since its last asset-triggered run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssetCondition {
    Asset(Asset),
    All(Vec<AssetCondition>),
    Any(Vec<AssetCondition>),
}

impl AssetCondition {
    /// Whether the condition holds when the assets for which `updated(uri)` is true have
    /// new events.
    pub fn is_met(&self, updated: &dyn Fn(&str) -> bool) -> bool {
        match self {
            AssetCondition::Asset(a) => updated(&a.uri),
            AssetCondition::All(items) => items.iter().all(|c| c.is_met(updated)),
            AssetCondition::Any(items) => items.iter().any(|c| c.is_met(updated)),
        }
    }

    /// Every asset named, once each, in order of appearance.
    pub fn assets(&self) -> Vec<&Asset> {
        let mut out: Vec<&Asset> = Vec::new();
        self.collect(&mut out);
        out
    }

    fn collect<'a>(&'a self, out: &mut Vec<&'a Asset>) {
        match self {
            AssetCondition::Asset(a) => {
                if !out.iter().any(|x| x.uri == a.uri) {
                    out.push(a);
                }
            }
            AssetCondition::All(items) | AssetCondition::Any(items) => {
                for c in items {
                    c.collect(out);
                }
            }
        }
    }

    /// The condition as dag-factory writes it: `(a & b) | c`.
    pub fn expression(&self) -> String {
        match self {
            AssetCondition::Asset(a) => a.uri.clone(),
            AssetCondition::All(items) => join(items, " & "),
            AssetCondition::Any(items) => join(items, " | "),
        }
    }

    /// Airflow 3's `asset_expression` (`{"all": [{"asset": {"uri": ..., "name": ...}}]}`).
    pub fn airflow_expression(&self) -> Json {
        match self {
            AssetCondition::Asset(a) => serde_json::json!({
                "asset": {"uri": a.uri, "name": a.name, "group": a.group}
            }),
            AssetCondition::All(items) => serde_json::json!({
                "all": items.iter().map(AssetCondition::airflow_expression).collect::<Vec<_>>()
            }),
            AssetCondition::Any(items) => serde_json::json!({
                "any": items.iter().map(AssetCondition::airflow_expression).collect::<Vec<_>>()
            }),
        }
    }
}

fn join(items: &[AssetCondition], sep: &str) -> String {
    if items.len() == 1 {
        return items[0].expression();
    }
    items
        .iter()
        .map(|c| match c {
            AssetCondition::Asset(_) => c.expression(),
            _ => format!("({})", c.expression()),
        })
        .collect::<Vec<_>>()
        .join(sep)
}

/// The class paths of Airflow's asset objects as dag-factory writes them.
fn is_asset_type(t: &str) -> bool {
    matches!(
        t.rsplit('.').next(),
        Some("Asset" | "Dataset" | "Model" | "AssetRef")
    )
}

fn is_alias_type(t: &str) -> bool {
    matches!(t.rsplit('.').next(), Some("AssetAlias" | "DatasetAlias"))
}

fn is_or_time_type(t: &str) -> bool {
    matches!(
        t.rsplit('.').next(),
        Some("AssetOrTimeSchedule" | "DatasetOrTimeSchedule")
    )
}

/// Checks a URI as Airflow 3 does before it accepts an asset.
pub fn check_uri(uri: &str) -> Result<(), String> {
    if uri.trim().is_empty() {
        return Err("an asset URI must not be empty".into());
    }
    if uri.len() > MAX_URI_LEN {
        return Err(format!(
            "an asset URI is at most {MAX_URI_LEN} characters; this one has {}",
            uri.len()
        ));
    }
    if !uri.is_ascii() {
        return Err(format!(
            "asset URI `{uri}` must only consist of ASCII characters"
        ));
    }
    if let Some((scheme, _)) = uri.split_once("://")
        && scheme.eq_ignore_ascii_case("airflow")
    {
        return Err(format!(
            "asset URI `{uri}`: the `airflow` scheme is reserved"
        ));
    }
    Ok(())
}

fn asset_from_uri(ctx: &mut Ctx<'_>, uri: &str, span: Span) -> Option<Asset> {
    let uri = uri.trim();
    match check_uri(uri) {
        Ok(()) => Some(Asset::plain(uri)),
        Err(e) => {
            ctx.error(span, e);
            None
        }
    }
}

/// `s3://bucket/key` or `{__type__: airflow.sdk.Asset, uri: ..., name: ..., group: ...,
/// extra: {...}}` (also `airflow.datasets.Dataset`).
fn read_asset_object(ctx: &mut Ctx<'_>, node: &Node, what: &str) -> Option<Asset> {
    const KEYS: &[&str] = &["__type__", "uri", "name", "group", "extra", "watchers"];
    for (k, _) in node.as_map().unwrap_or_default() {
        let key = k.as_str().unwrap_or("null");
        if !KEYS.contains(&key) {
            ctx.error(
                k.span,
                format!("`{what}`: {}", crate::de::unknown_key_message(key, KEYS)),
            );
        }
    }
    if let Some(w) = node.get("watchers") {
        ctx.warn(
            w.span,
            format!("`{what}`: asset `watchers` are not supported; events come from task outlets and the REST API"),
        );
    }
    let text = |key: &str| node.get(key).and_then(Node::as_str).map(str::trim);
    let (uri, name) = match (text("uri"), text("name")) {
        (Some(u), Some(n)) => (u.to_owned(), n.to_owned()),
        (Some(u), None) => (u.to_owned(), u.to_owned()),
        (None, Some(n)) => (n.to_owned(), n.to_owned()),
        (None, None) => {
            ctx.error(
                node.span,
                format!("`{what}`: an asset needs a `uri` or a `name`"),
            );
            return None;
        }
    };
    if let Err(e) = check_uri(&uri) {
        ctx.error(node.get("uri").map_or(node.span, |n| n.span), e);
        return None;
    }
    if name.len() > MAX_URI_LEN {
        ctx.error(
            node.span,
            format!("`{what}`: an asset name is at most {MAX_URI_LEN} characters"),
        );
        return None;
    }
    let group = text("group").map_or_else(default_group, str::to_owned);
    let extra = match node.get("extra") {
        None => serde_json::Map::new(),
        Some(e) => match crate::de::to_json(e) {
            Json::Object(m) => m,
            Json::Null => serde_json::Map::new(),
            _ => {
                ctx.error(e.span, format!("`{what}`: an asset's `extra` is a mapping"));
                serde_json::Map::new()
            }
        },
    };
    Some(Asset {
        uri,
        name,
        group,
        extra,
    })
}

/// Datasets defined in a file of their own (dag-factory's `datasets: [{name, uri}]`), by name.
type DatasetFile = HashMap<String, String>;

/// Reads `task.outlets`: a list of URIs and asset or alias objects, or dag-factory's
/// `{file: path, datasets: [names]}`.
pub(crate) fn read_outlets(ctx: &mut Ctx<'_>, node: &Node) -> Vec<Outlet> {
    if node.get("file").is_some() || node.get("datasets").is_some() {
        return read_named_from_file(ctx, node, "outlets")
            .into_iter()
            .map(|asset| Outlet::Asset {
                asset,
                extra_from_xcom: None,
            })
            .collect();
    }
    let items: Vec<&Node> = match &node.value {
        Value::Null => return Vec::new(),
        Value::Seq(items) => items.iter().collect(),
        _ => vec![node],
    };
    let mut out = Vec::new();
    for item in items {
        let type_path = item.get("__type__").and_then(Node::as_str).unwrap_or("");
        if item.as_map().is_some() && is_alias_type(type_path) {
            match item.get("name").and_then(Node::as_str) {
                Some(name) if !name.trim().is_empty() => out.push(Outlet::Alias {
                    name: name.trim().to_owned(),
                }),
                _ => ctx.error(item.span, "`outlets`: an asset alias needs a `name`"),
            }
            continue;
        }
        let extra_from_xcom = match item.get("extra_from_xcom") {
            None => None,
            Some(n) => match n.as_str() {
                Some("true" | "True") => Some("return_value".to_owned()),
                Some("false" | "False") => None,
                Some(key) if !key.trim().is_empty() => Some(key.trim().to_owned()),
                _ => {
                    ctx.error(
                        n.span,
                        "`outlets`: `extra_from_xcom` is `true` (the return value) or an XCom key",
                    );
                    None
                }
            },
        };
        let item_node = without_key(item, "extra_from_xcom");
        if let Some(asset) = read_asset(ctx, &item_node, "outlets") {
            out.push(Outlet::Asset {
                asset,
                extra_from_xcom,
            });
        }
    }
    out
}

/// Reads `task.inlets`: as outlets, without aliases.
pub(crate) fn read_inlets(ctx: &mut Ctx<'_>, node: &Node) -> Vec<Asset> {
    if node.get("file").is_some() || node.get("datasets").is_some() {
        return read_named_from_file(ctx, node, "inlets");
    }
    match &node.value {
        Value::Null => Vec::new(),
        Value::Seq(items) => items
            .iter()
            .filter_map(|i| read_asset(ctx, i, "inlets"))
            .collect(),
        _ => read_asset(ctx, node, "inlets").into_iter().collect(),
    }
}

fn without_key(node: &Node, key: &str) -> Node {
    match &node.value {
        Value::Map(entries) => Node::new(
            node.span,
            Value::Map(
                entries
                    .iter()
                    .filter(|(k, _)| k.as_str() != Some(key))
                    .cloned()
                    .collect(),
            ),
        ),
        _ => node.clone(),
    }
}

/// One asset: a URI string or an asset object.
fn read_asset(ctx: &mut Ctx<'_>, node: &Node, what: &str) -> Option<Asset> {
    match &node.value {
        Value::Scalar(s) => asset_from_uri(ctx, &s.text, node.span),
        Value::Map(_) => {
            let type_path = node.get("__type__").and_then(Node::as_str).unwrap_or("");
            if !type_path.is_empty() && !is_asset_type(type_path) {
                ctx.error(
                    node.span,
                    format!("`{what}`: `{type_path}` is not an asset class; use airflow.sdk.Asset (or airflow.datasets.Dataset)"),
                );
                return None;
            }
            read_asset_object(ctx, node, what)
        }
        _ => {
            ctx.error(
                node.span,
                format!(
                    "`{what}`: expected an asset URI or an asset object, found {}",
                    node.kind()
                ),
            );
            None
        }
    }
}

/// `{file: $CONFIG_ROOT_DIR/datasets.yml, datasets: [name, ...]}` for inlets and outlets.
fn read_named_from_file(ctx: &mut Ctx<'_>, node: &Node, what: &str) -> Vec<Asset> {
    check_only(ctx, node, &["file", "datasets"], what);
    let (Some(file), Some(datasets)) = (node.get("file"), node.get("datasets")) else {
        ctx.error(
            node.span,
            format!("`{what}`: dag-factory's form needs both `file` and `datasets`"),
        );
        return Vec::new();
    };
    let Some(defs) = read_dataset_file(ctx, file) else {
        return Vec::new();
    };
    let names: Vec<(String, Span)> = match &datasets.value {
        Value::Seq(items) => items
            .iter()
            .filter_map(|i| i.as_str().map(|s| (s.trim().to_owned(), i.span)))
            .collect(),
        Value::Scalar(s) => vec![(s.text.trim().to_owned(), datasets.span)],
        _ => {
            ctx.error(
                datasets.span,
                format!("`{what}`: `datasets` is a list of names"),
            );
            Vec::new()
        }
    };
    names
        .into_iter()
        .filter_map(|(name, span)| resolve_name(ctx, &defs, &name, span, file))
        .collect()
}

fn resolve_name(
    ctx: &mut Ctx<'_>,
    defs: &DatasetFile,
    name: &str,
    span: Span,
    file: &Node,
) -> Option<Asset> {
    match defs.get(name) {
        Some(uri) => Some(Asset {
            name: name.to_owned(),
            ..Asset::plain(uri)
        }),
        None => {
            let hint = crate::de::did_you_mean_hint(name, defs.keys().map(String::as_str));
            ctx.error(
                span,
                format!(
                    "dataset `{name}` is not defined in {}{hint}",
                    file.as_str().unwrap_or("the file")
                ),
            );
            None
        }
    }
}

fn check_only(ctx: &mut Ctx<'_>, node: &Node, keys: &[&str], what: &str) {
    for (k, _) in node.as_map().unwrap_or_default() {
        let key = k.as_str().unwrap_or("null");
        if !keys.contains(&key) {
            ctx.error(
                k.span,
                format!("`{what}`: {}", crate::de::unknown_key_message(key, keys)),
            );
        }
    }
}

/// Where `file:` points: `$CONFIG_ROOT_DIR` (dag-factory's variable for the folder DAG
/// configs live in) is the dags folder; a relative path is relative to the DAG file. Other
/// environment variables are not expanded: a DAG must not depend on the parser's environment.
fn dataset_file_path(ctx: &Ctx<'_>, text: &str) -> Result<PathBuf, String> {
    let text = text.trim();
    let expanded = if let Some(rest) = text
        .strip_prefix("$CONFIG_ROOT_DIR")
        .or_else(|| text.strip_prefix("${CONFIG_ROOT_DIR}"))
    {
        format!(
            "{}/{}",
            ctx.dags_root.display(),
            rest.trim_start_matches('/')
        )
    } else {
        text.to_owned()
    };
    if expanded.contains('$') {
        return Err(format!(
            "`file`: `{text}`: environment variables are not expanded here; use $CONFIG_ROOT_DIR (the dags folder) or a path relative to the DAG file"
        ));
    }
    let path = Path::new(&expanded);
    let dag_dir = ctx
        .files
        .first()
        .and_then(|f| f.parent())
        .map_or_else(|| ctx.dags_root.to_path_buf(), Path::to_path_buf);
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        dag_dir.join(path)
    };
    let resolved = std::fs::canonicalize(&full)
        .map_err(|e| format!("`file`: cannot read {}: {e}", full.display()))?;
    let inside = std::fs::canonicalize(ctx.dags_root).is_ok_and(|r| resolved.starts_with(r));
    if !inside {
        return Err(format!(
            "`file`: {} is outside the dags folder; dataset files must be inside it",
            full.display()
        ));
    }
    Ok(resolved)
}

/// Reads a file of dataset definitions (`datasets: [{name, uri}]`) by name.
fn read_dataset_file(ctx: &mut Ctx<'_>, file: &Node) -> Option<DatasetFile> {
    let Some(text) = file.as_str() else {
        ctx.error(file.span, "`file` is a path");
        return None;
    };
    let path = match dataset_file_path(ctx, text) {
        Ok(p) => p,
        Err(e) => {
            ctx.error(file.span, e);
            return None;
        }
    };
    let source = match crate::loader::read_regular_file(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| String::from_utf8(b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            ctx.error(
                file.span,
                format!("`file`: cannot read {}: {e}", path.display()),
            );
            return None;
        }
    };
    let hash = crate::loader::source_hash(source.as_bytes());
    if !ctx.dependencies.iter().any(|(p, _)| *p == path) {
        ctx.dependencies.push((path.clone(), hash));
    }
    let root = match crate::yaml::parse(&source, 0, crate::yaml::Limits::default()) {
        Ok(r) => r,
        Err(e) => {
            ctx.error(
                file.span,
                format!(
                    "`file`: {}:{}:{}: {}",
                    path.display(),
                    e.span.line,
                    e.span.col,
                    e.message
                ),
            );
            return None;
        }
    };
    match dataset_definitions(&root) {
        Ok(defs) => Some(defs),
        Err((span, message)) => {
            ctx.error(
                file.span,
                format!(
                    "`file`: {}:{}:{}: {message}",
                    path.display(),
                    span.line,
                    span.col
                ),
            );
            None
        }
    }
}

/// Whether a file's top level is dag-factory's dataset definitions: a `datasets:` list and
/// nothing else.
pub fn is_dataset_file(root: &Node) -> bool {
    root.as_map().is_some_and(|entries| {
        !entries.is_empty()
            && entries
                .iter()
                .all(|(k, v)| k.as_str() == Some("datasets") && v.as_seq().is_some())
    })
}

/// The definitions of a dataset file, by name, or the first problem with its span.
pub fn dataset_definitions(root: &Node) -> Result<DatasetFile, (Span, String)> {
    let Some(items) = root.get("datasets").and_then(Node::as_seq) else {
        return Err((
            root.span,
            "a dataset file has a top-level `datasets:` list of `{name, uri}`".into(),
        ));
    };
    let mut defs = HashMap::new();
    for item in items {
        let (Some(name), Some(uri)) = (
            item.get("name").and_then(Node::as_str),
            item.get("uri").and_then(Node::as_str),
        ) else {
            return Err((item.span, "each dataset needs a `name` and a `uri`".into()));
        };
        check_uri(uri.trim()).map_err(|e| (item.span, e))?;
        if defs
            .insert(name.trim().to_owned(), uri.trim().to_owned())
            .is_some()
        {
            return Err((item.span, format!("dataset `{name}` is defined twice")));
        }
    }
    Ok(defs)
}

/// An asset schedule read from `schedule:`: the condition, and the timetable node of
/// `AssetOrTimeSchedule` (cron or assets), if any.
pub(crate) struct AssetSchedule<'n> {
    pub condition: AssetCondition,
    pub timetable: Option<&'n Node>,
}

/// Whether `schedule:` is asset-based: a list of assets, an asset object, `__and__`/`__or__`,
/// dag-factory's `{datasets: ..., file: ..., timetable: ...}`, or `AssetOrTimeSchedule`.
pub(crate) fn is_asset_schedule(node: &Node) -> bool {
    match &node.value {
        Value::Seq(_) => true,
        Value::Map(_) => {
            let type_path = node.get("__type__").and_then(Node::as_str);
            match type_path {
                Some(t) => {
                    is_asset_type(t)
                        || is_alias_type(t)
                        || is_or_time_type(t)
                        || t.ends_with("builtins.list")
                }
                None => {
                    node.get("datasets").is_some()
                        || node.get("assets").is_some()
                        || node.get("__and__").is_some()
                        || node.get("__or__").is_some()
                }
            }
        }
        _ => false,
    }
}

/// Reads an asset schedule (see [`is_asset_schedule`]); `None` after reporting its errors.
pub(crate) fn read_asset_schedule<'n>(
    ctx: &mut Ctx<'_>,
    node: &'n Node,
) -> Option<AssetSchedule<'n>> {
    let type_path = node.get("__type__").and_then(Node::as_str).unwrap_or("");
    if is_or_time_type(type_path) || node.get("datasets").is_some() || node.get("assets").is_some()
    {
        check_only(
            ctx,
            node,
            &["__type__", "datasets", "assets", "file", "timetable"],
            "schedule",
        );
        let Some(assets) = node.get("datasets").or_else(|| node.get("assets")) else {
            ctx.error(
                node.span,
                "`schedule`: `AssetOrTimeSchedule` needs `assets`",
            );
            return None;
        };
        let defs = match node.get("file") {
            Some(f) => Some(read_dataset_file(ctx, f)?),
            None => None,
        };
        let condition = read_condition(ctx, assets, defs.as_ref(), node.get("file"))?;
        return Some(AssetSchedule {
            condition,
            timetable: node.get("timetable"),
        });
    }
    if is_alias_type(type_path) {
        ctx.error(
            node.span,
            "`schedule`: scheduling on an asset alias is not supported; schedule on the assets",
        );
        return None;
    }
    let condition = read_condition(ctx, node, None, None)?;
    Some(AssetSchedule {
        condition,
        timetable: None,
    })
}

/// A condition: a string (`(a & b) | c`), a list (all of), `__and__`/`__or__` lists, or an
/// asset object; names resolve through `defs` when a dataset file is given.
fn read_condition(
    ctx: &mut Ctx<'_>,
    node: &Node,
    defs: Option<&DatasetFile>,
    file: Option<&Node>,
) -> Option<AssetCondition> {
    match &node.value {
        Value::Scalar(s) => parse_condition(&s.text)
            .map_err(|e| ctx.error(node.span, format!("`schedule`: {e}")))
            .ok()
            .and_then(|c| resolve(ctx, c, defs, file, node.span)),
        Value::Seq(items) => {
            if items.is_empty() {
                ctx.error(
                    node.span,
                    "`schedule`: an empty list of assets never triggers; use `schedule: null`",
                );
                return None;
            }
            let mut all = Vec::new();
            for item in items {
                // A list item that is a bare string is one asset (dag-factory's list of URIs),
                // never a condition.
                let c = match &item.value {
                    Value::Scalar(s) => match defs {
                        Some(d) => resolve_name(ctx, d, s.text.trim(), item.span, file?)
                            .map(AssetCondition::Asset),
                        None => asset_from_uri(ctx, &s.text, item.span).map(AssetCondition::Asset),
                    },
                    _ => read_condition(ctx, item, defs, file),
                };
                all.push(c);
            }
            let all: Option<Vec<_>> = all.into_iter().collect();
            Some(AssetCondition::All(all?))
        }
        Value::Map(_) => {
            let type_path = node.get("__type__").and_then(Node::as_str).unwrap_or("");
            for (key, make) in [
                ("__and__", AssetCondition::All as fn(_) -> _),
                ("__or__", AssetCondition::Any),
            ] {
                if let Some(items) = node.get(key) {
                    check_only(ctx, node, &[key], "schedule");
                    let Some(seq) = items.as_seq().filter(|s| !s.is_empty()) else {
                        ctx.error(
                            items.span,
                            format!("`schedule`: `{key}` is a list of assets or conditions"),
                        );
                        return None;
                    };
                    let parts: Option<Vec<_>> =
                        seq.iter()
                            .map(|i| match &i.value {
                                Value::Scalar(s) => match defs {
                                    Some(d) => resolve_name(ctx, d, s.text.trim(), i.span, file?)
                                        .map(AssetCondition::Asset),
                                    None => asset_from_uri(ctx, &s.text, i.span)
                                        .map(AssetCondition::Asset),
                                },
                                _ => read_condition(ctx, i, defs, file),
                            })
                            .collect::<Vec<_>>()
                            .into_iter()
                            .collect();
                    return Some(make(parts?));
                }
            }
            if type_path.ends_with("builtins.list") {
                check_only(ctx, node, &["__type__", "items"], "schedule");
                let Some(items) = node.get("items") else {
                    ctx.error(node.span, "`schedule`: `builtins.list` needs `items`");
                    return None;
                };
                return read_condition(ctx, items, defs, file);
            }
            if is_asset_type(type_path) {
                return read_asset_object(ctx, node, "schedule").map(AssetCondition::Asset);
            }
            ctx.error(
                node.span,
                format!("`schedule`: expected an asset, a list of assets or an `__and__`/`__or__` condition, found `{type_path}`"),
            );
            None
        }
        Value::Null => {
            ctx.error(node.span, "`schedule`: the asset condition is empty");
            None
        }
    }
}

/// Names in a parsed condition string become assets: through the dataset file, or as URIs.
fn resolve(
    ctx: &mut Ctx<'_>,
    c: Parsed,
    defs: Option<&DatasetFile>,
    file: Option<&Node>,
    span: Span,
) -> Option<AssetCondition> {
    match c {
        Parsed::Atom(name) => match (defs, file) {
            (Some(d), Some(f)) => resolve_name(ctx, d, &name, span, f).map(AssetCondition::Asset),
            _ => asset_from_uri(ctx, &name, span).map(AssetCondition::Asset),
        },
        Parsed::All(items) => items
            .into_iter()
            .map(|i| resolve(ctx, i, defs, file, span))
            .collect::<Vec<_>>()
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .map(AssetCondition::All),
        Parsed::Any(items) => items
            .into_iter()
            .map(|i| resolve(ctx, i, defs, file, span))
            .collect::<Vec<_>>()
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .map(AssetCondition::Any),
    }
}

/// A condition string before its names are resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Atom(String),
    All(Vec<Parsed>),
    Any(Vec<Parsed>),
}

/// Parses `((a & b) | c)`: `&` binds tighter than `|`, as in Python; an atom is a URI or a
/// name (anything but spaces, `&`, `|` and parentheses).
pub fn parse_condition(text: &str) -> Result<Parsed, String> {
    let tokens = tokenize(text)?;
    if tokens.is_empty() {
        return Err("the asset condition is empty".into());
    }
    let mut pos = 0;
    let parsed = parse_or(&tokens, &mut pos, 0)?;
    if pos < tokens.len() {
        return Err(format!(
            "asset condition `{text}`: unexpected `{}` at token {}",
            tokens[pos].text(),
            pos + 1
        ));
    }
    Ok(parsed)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    And,
    Or,
    Open,
    Close,
    Atom(String),
}

impl Token {
    fn text(&self) -> &str {
        match self {
            Token::And => "&",
            Token::Or => "|",
            Token::Open => "(",
            Token::Close => ")",
            Token::Atom(a) => a,
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut atom = String::new();
    let flush = |atom: &mut String, out: &mut Vec<Token>| {
        if !atom.is_empty() {
            out.push(Token::Atom(std::mem::take(atom)));
        }
    };
    for ch in text.chars() {
        let token = match ch {
            '&' => Some(Token::And),
            '|' => Some(Token::Or),
            '(' => Some(Token::Open),
            ')' => Some(Token::Close),
            c if c.is_whitespace() => None,
            c => {
                atom.push(c);
                continue;
            }
        };
        flush(&mut atom, &mut out);
        if let Some(t) = token {
            out.push(t);
        }
    }
    flush(&mut atom, &mut out);
    // Two atoms in a row mean a missing operator (or a URI with a space).
    for pair in out.windows(2) {
        if let [Token::Atom(a), Token::Atom(b)] = pair {
            return Err(format!(
                "asset condition `{text}`: `{a}` and `{b}` need `&` or `|` between them"
            ));
        }
    }
    Ok(out)
}

/// Parentheses nest at most this deep: deeper would overflow the parser's stack and the
/// serialized DAG's nesting.
const MAX_CONDITION_DEPTH: usize = 16;

fn parse_or(tokens: &[Token], pos: &mut usize, depth: usize) -> Result<Parsed, String> {
    if depth > MAX_CONDITION_DEPTH {
        return Err(format!(
            "asset condition: parentheses nest deeper than {MAX_CONDITION_DEPTH} levels"
        ));
    }
    let mut items = vec![parse_and(tokens, pos, depth)?];
    while tokens.get(*pos) == Some(&Token::Or) {
        *pos += 1;
        items.push(parse_and(tokens, pos, depth)?);
    }
    Ok(if items.len() == 1 {
        items.remove(0)
    } else {
        Parsed::Any(items)
    })
}

fn parse_and(tokens: &[Token], pos: &mut usize, depth: usize) -> Result<Parsed, String> {
    let mut items = vec![parse_atom(tokens, pos, depth)?];
    while tokens.get(*pos) == Some(&Token::And) {
        *pos += 1;
        items.push(parse_atom(tokens, pos, depth)?);
    }
    Ok(if items.len() == 1 {
        items.remove(0)
    } else {
        Parsed::All(items)
    })
}

fn parse_atom(tokens: &[Token], pos: &mut usize, depth: usize) -> Result<Parsed, String> {
    match tokens.get(*pos) {
        Some(Token::Atom(a)) => {
            *pos += 1;
            Ok(Parsed::Atom(a.clone()))
        }
        Some(Token::Open) => {
            *pos += 1;
            let inner = parse_or(tokens, pos, depth + 1)?;
            if tokens.get(*pos) != Some(&Token::Close) {
                return Err("asset condition: a `(` is never closed".into());
            }
            *pos += 1;
            Ok(inner)
        }
        Some(t) => Err(format!(
            "asset condition: expected an asset before `{}`",
            t.text()
        )),
        None => Err("asset condition: it ends where an asset is expected".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn atom(s: &str) -> Parsed {
        Parsed::Atom(s.into())
    }

    #[test]
    fn conditions_parse_with_python_precedence() {
        assert_eq!(
            parse_condition("((s3://b/1 & s3://b/2) | s3://b/3)").unwrap(),
            Parsed::Any(vec![
                Parsed::All(vec![atom("s3://b/1"), atom("s3://b/2")]),
                atom("s3://b/3")
            ])
        );
        assert_eq!(
            parse_condition("a | b & c").unwrap(),
            Parsed::Any(vec![atom("a"), Parsed::All(vec![atom("b"), atom("c")])])
        );
        let deep = format!("{}a{}", "(".repeat(10_000), ")".repeat(10_000));
        for bad in ["", "a &", "(a | b", "a b", "a & | b", ")", deep.as_str()] {
            assert!(parse_condition(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn conditions_evaluate_over_updated_assets() {
        let a = |u: &str| AssetCondition::Asset(Asset::plain(u));
        let c = AssetCondition::Any(vec![AssetCondition::All(vec![a("x"), a("y")]), a("z")]);
        assert!(!c.is_met(&|u| u == "x"));
        assert!(c.is_met(&|u| u == "x" || u == "y"));
        assert!(c.is_met(&|u| u == "z"));
        assert_eq!(c.expression(), "(x & y) | z");
        assert_eq!(c.assets().len(), 3);
    }
}
