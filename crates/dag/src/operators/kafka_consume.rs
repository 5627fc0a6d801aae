//! `operator: kafka_consume`: messages in batches, each handed to `apply` and/or XCom before
//! its offsets are committed (the Kafka provider's ConsumeFromTopicOperator).

use chrono::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::kafka::{kafka_conn_id, read_topics};
use super::{OperatorKind, ReadOp};
use crate::build::{Ctx, check_template, read_duration};
use crate::dag::{Operator, millis};
use crate::spec::{AnyValue, DurationSpec, Raw};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KafkaConsumeOperator {
    pub conn_id: String,
    pub topics: Vec<String>,
    /// Templated; `None` means `flow-<dag_id>-<task_id>`.
    pub group_id: Option<String>,
    pub max_messages: u64,
    pub max_batch_size: u64,
    #[serde(with = "millis")]
    pub poll_timeout: Duration,
    /// A templated bash command fed each batch as JSON lines.
    pub apply: Option<String>,
    pub push_to_xcom: bool,
    pub xcom_max_messages: u64,
}

/// `operator: kafka_consume`: reads messages in batches, hands each batch to `apply` and/or
/// XCom, and commits offsets only after a batch was handled.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaConsumeSpec {
    pub kafka_conn_id: Option<String>,
    pub kafka_config_id: Option<String>,
    /// A topic or a list of topics.
    #[schemars(with = "serde_json::Value")]
    pub topics: Raw<AnyValue>,
    /// The consumer group (default `flow-<dag_id>-<task_id>`; templated).
    pub group_id: Option<String>,
    /// Stop after this many messages (default 1000).
    pub max_messages: Option<u64>,
    /// Messages per batch (default 100).
    pub max_batch_size: Option<u64>,
    /// Stop when no message arrives for this long (default 60s, as Airflow's).
    #[schemars(with = "Option<serde_json::Value>")]
    pub poll_timeout: Option<Raw<DurationSpec>>,
    /// A bash command (templated) that gets each batch as JSON lines on stdin; a non-zero
    /// exit fails the try without committing the batch.
    pub apply: Option<String>,
    /// Push the consumed messages as the `return_value` XCom (default: true without `apply`).
    pub push_to_xcom: Option<bool>,
    /// More messages than this in XCom fails the task (default 1000).
    pub xcom_max_messages: Option<u64>,
}

pub(crate) struct KafkaConsume;

impl OperatorKind for KafkaConsume {
    const NAME: &'static str = "kafka_consume";
    const ALIASES: &'static [&'static str] = &[
        "ConsumeFromTopicOperator",
        "airflow.providers.apache.kafka.operators.consume.ConsumeFromTopicOperator",
    ];
    const MODULE: &'static str = "airflow.providers.apache.kafka.operators.consume";
    const CLASS: &'static str = "ConsumeFromTopicOperator";
    const TEMPLATE_FIELDS: &'static [&'static str] = &["topics", "group_id", "apply"];
    const UI_COLOR: &'static str = "#ffefeb";
    type Spec = KafkaConsumeSpec;

    fn build(ctx: &mut Ctx<'_>, spec: Self::Spec, read: &mut ReadOp<'_>) -> Option<Operator> {
        let (node, fallback) = (read.node, read.fallback);
        let span_of = |key: &str| node.get(key).map_or(fallback, |n| n.span);
        let conn_id = kafka_conn_id(
            ctx,
            node,
            fallback,
            spec.kafka_conn_id,
            spec.kafka_config_id,
        );
        let topics = read_topics(ctx, &spec.topics.node);
        if let Some(g) = &spec.group_id {
            check_template(ctx, "group_id", g, span_of("group_id"));
        }
        if let Some(a) = &spec.apply {
            check_template(ctx, "apply", a, span_of("apply"));
        }
        let mut count = |key: &str, value: Option<u64>, default: u64| -> u64 {
            match value {
                Some(0) => {
                    ctx.error(span_of(key), format!("`{key}` must be at least 1"));
                    default
                }
                Some(n) => n,
                None => default,
            }
        };
        let max_messages = count("max_messages", spec.max_messages, 1000);
        let max_batch_size = count("max_batch_size", spec.max_batch_size, 100);
        let xcom_max_messages = count("xcom_max_messages", spec.xcom_max_messages, 1000);
        let poll_timeout = match &spec.poll_timeout {
            Some(raw) => read_duration(ctx, &raw.node, "poll_timeout")?,
            None => Duration::seconds(60),
        };
        let push_to_xcom = spec.push_to_xcom.unwrap_or(spec.apply.is_none());
        Some(Operator::KafkaConsume(KafkaConsumeOperator {
            conn_id,
            topics,
            group_id: spec.group_id,
            max_messages,
            max_batch_size,
            poll_timeout,
            apply: spec.apply,
            push_to_xcom,
            xcom_max_messages,
        }))
    }
}
