//! `operator: kafka_produce`: messages to a topic, each delivery confirmed (the Kafka
//! provider's ProduceToTopicOperator).

use chrono::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::kafka::{check_topic, kafka_conn_id};
use super::{OperatorKind, ReadOp};
use crate::build::{Ctx, check_template, check_templates_in, read_duration};
use crate::dag::{Operator, millis};
use crate::de::to_json;
use crate::spec::{AnyValue, DurationSpec, Raw};
use crate::template;
use crate::yaml::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KafkaProduceOperator {
    pub conn_id: String,
    /// Templated.
    pub topic: String,
    pub messages: KafkaMessages,
    #[serde(with = "millis")]
    pub delivery_timeout: Duration,
}

/// Where a produce task's messages come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "source", rename_all = "snake_case")]
pub enum KafkaMessages {
    /// Items of a YAML list, every string in them templated.
    List(Vec<Json>),
    /// One template that renders to a JSON list.
    Template(String),
    /// A bash command; each stdout line is a message value.
    Command(String),
}

/// `operator: kafka_produce`: produces messages to a topic and waits for every delivery.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaProduceSpec {
    /// A `kafka` connection (default `kafka_default`).
    pub kafka_conn_id: Option<String>,
    /// The Kafka provider's name for `kafka_conn_id`.
    pub kafka_config_id: Option<String>,
    /// The topic (templated).
    pub topic: String,
    /// A list of `{key, value, headers}` (or bare values), each field templated; or one
    /// template that renders to such a list, e.g. `"{{ ti.xcom_pull(task_ids='extract') }}"`.
    #[schemars(with = "Option<serde_json::Value>")]
    pub messages: Option<Raw<AnyValue>>,
    /// A bash command (templated) whose stdout lines are the messages' values.
    pub command: Option<String>,
    /// How long a message may wait for its delivery confirmation (default 30s).
    #[schemars(with = "Option<serde_json::Value>")]
    pub delivery_timeout: Option<Raw<DurationSpec>>,
}

pub(crate) struct KafkaProduce;

impl OperatorKind for KafkaProduce {
    const NAME: &'static str = "kafka_produce";
    const ALIASES: &'static [&'static str] = &[
        "ProduceToTopicOperator",
        "airflow.providers.apache.kafka.operators.produce.ProduceToTopicOperator",
    ];
    const MODULE: &'static str = "airflow.providers.apache.kafka.operators.produce";
    const CLASS: &'static str = "ProduceToTopicOperator";
    const TEMPLATE_FIELDS: &'static [&'static str] = &["topic", "messages", "command"];
    const UI_COLOR: &'static str = "#ffefeb";
    type Spec = KafkaProduceSpec;

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
        check_template(ctx, "topic", &spec.topic, span_of("topic"));
        if !template::has_markup(&spec.topic) {
            check_topic(ctx, "topic", &spec.topic, span_of("topic"));
        }
        let messages = match (&spec.messages, &spec.command) {
            (Some(_), Some(_)) => {
                ctx.error(span_of("command"), "set `messages` or `command`, not both");
                return None;
            }
            (None, None) => {
                ctx.error(
                    fallback,
                    "`kafka_produce` needs `messages` (a list or a template) or `command`",
                );
                return None;
            }
            (None, Some(cmd)) => {
                check_template(ctx, "command", cmd, span_of("command"));
                KafkaMessages::Command(cmd.clone())
            }
            (Some(raw), None) => match &raw.node.value {
                Value::Seq(_) => {
                    check_templates_in(ctx, "messages", &raw.node);
                    match to_json(&raw.node) {
                        Json::Array(items) => KafkaMessages::List(items),
                        _ => KafkaMessages::List(Vec::new()),
                    }
                }
                Value::Scalar(s) => {
                    check_template(ctx, "messages", &s.text, raw.node.span);
                    KafkaMessages::Template(s.text.clone())
                }
                _ => {
                    ctx.error(
                        raw.node.span,
                        "`messages`: expected a list of {key, value, headers} or a template that renders to one",
                    );
                    return None;
                }
            },
        };
        let delivery_timeout = match &spec.delivery_timeout {
            Some(raw) => read_duration(ctx, &raw.node, "delivery_timeout")?,
            None => Duration::seconds(30),
        };
        Some(Operator::KafkaProduce(KafkaProduceOperator {
            conn_id,
            topic: spec.topic,
            messages,
            delivery_timeout,
        }))
    }
}
