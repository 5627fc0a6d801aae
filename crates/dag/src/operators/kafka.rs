//! What the Kafka operators and the `schedule: {kafka: ...}` trigger share: the connection id,
//! topic names and filter expressions.

use minijinja::Environment;

use crate::build::Ctx;
use crate::dag::DEFAULT_KAFKA_CONN_ID;
use crate::yaml::{Node, Span, Value};

/// `kafka_conn_id`, or the provider's `kafka_config_id`, or `kafka_default`.
pub(crate) fn kafka_conn_id(
    ctx: &mut Ctx<'_>,
    node: &Node,
    fallback: Span,
    conn_id: Option<String>,
    config_id: Option<String>,
) -> String {
    if conn_id.is_some() && config_id.is_some() {
        let span = node.get("kafka_config_id").map_or(fallback, |n| n.span);
        ctx.error(span, "set `kafka_conn_id` or `kafka_config_id`, not both");
    }
    let id = conn_id
        .or(config_id)
        .unwrap_or_else(|| DEFAULT_KAFKA_CONN_ID.to_owned());
    if let Err(e) = flow_model::ids::validate_id("conn_id", &id) {
        let span = node
            .get("kafka_conn_id")
            .or_else(|| node.get("kafka_config_id"))
            .map_or(fallback, |n| n.span);
        ctx.error(span, e.to_string());
    }
    id
}

/// A topic name as Kafka allows it: 1 to 249 of `[A-Za-z0-9._-]`.
pub(crate) fn check_topic(ctx: &mut Ctx<'_>, field: &str, topic: &str, span: Span) {
    let ok = !topic.is_empty()
        && topic.len() <= 249
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        ctx.error(
            span,
            format!(
                "`{field}`: `{topic}` is not a Kafka topic name (1 to 249 of A-Z a-z 0-9 . _ -)"
            ),
        );
    }
}

/// `topics`: one topic or a list of them.
pub(crate) fn read_topics(ctx: &mut Ctx<'_>, node: &Node) -> Vec<String> {
    let topics: Vec<(String, Span)> = match &node.value {
        Value::Scalar(s) => vec![(s.text.clone(), node.span)],
        Value::Seq(items) => items
            .iter()
            .filter_map(|i| match i.as_str() {
                Some(t) => Some((t.to_owned(), i.span)),
                None => {
                    ctx.error(i.span, "`topics`: each topic must be a string");
                    None
                }
            })
            .collect(),
        _ => {
            ctx.error(node.span, "`topics`: expected a topic or a list of topics");
            Vec::new()
        }
    };
    if topics.is_empty() && matches!(node.value, Value::Seq(_)) {
        ctx.error(node.span, "`topics`: the list is empty");
    }
    for (t, span) in &topics {
        check_topic(ctx, "topics", t, *span);
    }
    topics.into_iter().map(|(t, _)| t).collect()
}

/// A filter expression, checked for syntax now so a typo is reported with its line.
pub(crate) fn check_filter(ctx: &mut Ctx<'_>, source: &str, span: Span) {
    let env = Environment::new();
    if let Err(e) = env.compile_expression(source) {
        ctx.error(span, format!("`filter`: not a valid expression: {e}"));
    }
}
