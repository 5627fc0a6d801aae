//! `kafka_consume`: group and `apply` rendered; run by `io_ops::consume`.

use flow_dag::{KafkaConsumeOperator, Task};

use crate::render::{RenderError, RenderedTask, Renderer, RunContext, default_group};

pub(crate) fn render(
    task: &Task,
    op: &KafkaConsumeOperator,
    ctx: &RunContext,
) -> Result<RenderedTask, RenderError> {
    let r = Renderer::new(task, ctx);
    Ok(RenderedTask::KafkaConsume {
        conn_id: op.conn_id.clone(),
        topics: op.topics.clone(),
        group_id: match &op.group_id {
            Some(g) => r.string("group_id", g)?,
            None => default_group(ctx),
        },
        max_messages: op.max_messages,
        max_batch_size: op.max_batch_size,
        poll_timeout: op.poll_timeout.to_std().unwrap_or_default(),
        apply: op
            .apply
            .as_deref()
            .map(|a| r.string("apply", a))
            .transpose()?,
        push_to_xcom: op.push_to_xcom,
        xcom_max_messages: op.xcom_max_messages,
    })
}
