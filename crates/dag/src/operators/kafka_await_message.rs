//! `operator: kafka_await_message`: a sensor waiting for a message that matches `filter` (the
//! Kafka provider's AwaitMessageSensor).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::kafka::{check_filter, kafka_conn_id, read_topics};
use super::{OperatorKind, ReadOp};
use crate::build::{Ctx, check_template};
use crate::dag::{Operator, Sensor};
use crate::spec::{AnyValue, Raw};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KafkaAwaitMessageSensor {
    pub conn_id: String,
    pub topics: Vec<String>,
    /// Templated; `None` means `flow-<dag_id>-<task_id>`.
    pub group_id: Option<String>,
    /// A minijinja expression over the message and the run's `params`, `conf`, `run_id`.
    pub filter: String,
    pub sensor: Sensor,
}

/// `operator: kafka_await_message`: a sensor that waits for a message matching `filter`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaAwaitMessageSpec {
    pub kafka_conn_id: Option<String>,
    pub kafka_config_id: Option<String>,
    #[schemars(with = "serde_json::Value")]
    pub topics: Raw<AnyValue>,
    /// A minijinja expression over `key`, `value` (parsed JSON when it is JSON), `headers`,
    /// `topic`, `partition`, `offset`, `timestamp`, and the run's `params`, `conf` and
    /// `run_id` (default: any message matches), e.g. `value.order_id == params.order_id`.
    pub filter: Option<String>,
    /// The consumer group (default `flow-<dag_id>-<task_id>`; templated).
    pub group_id: Option<String>,
}

pub(crate) struct KafkaAwaitMessage;

impl OperatorKind for KafkaAwaitMessage {
    const NAME: &'static str = "kafka_await_message";
    const ALIASES: &'static [&'static str] = &[
        "AwaitMessageSensor",
        "airflow.providers.apache.kafka.sensors.kafka.AwaitMessageSensor",
    ];
    const MODULE: &'static str = "airflow.providers.apache.kafka.sensors.kafka";
    const CLASS: &'static str = "AwaitMessageSensor";
    const TEMPLATE_FIELDS: &'static [&'static str] = &["topics", "group_id"];
    const UI_COLOR: &'static str = "#e6f1f2";
    const SENSOR: bool = true;
    type Spec = KafkaAwaitMessageSpec;

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
        let filter = spec.filter.unwrap_or_else(|| "true".to_owned());
        check_filter(ctx, &filter, span_of("filter"));
        let sensor = read.sensor(ctx)?;
        Some(Operator::KafkaAwaitMessage(KafkaAwaitMessageSensor {
            conn_id,
            topics,
            group_id: spec.group_id,
            filter,
            sensor,
        }))
    }
}
