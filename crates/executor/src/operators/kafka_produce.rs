//! `kafka_produce`: the topic and every message rendered; run by `io_ops::produce`.

use flow_dag::{KafkaMessages, KafkaProduceOperator, Task};

use crate::render::{RenderError, RenderedTask, Renderer, RunContext};

pub(crate) fn render(
    task: &Task,
    op: &KafkaProduceOperator,
    ctx: &RunContext,
) -> Result<RenderedTask, RenderError> {
    let r = Renderer::new(task, ctx);
    let messages = match &op.messages {
        KafkaMessages::List(items) => Ok(items
            .iter()
            .enumerate()
            .map(|(i, v)| r.json(&format!("messages[{i}]"), v))
            .collect::<Result<Vec<_>, _>>()?),
        KafkaMessages::Template(source) => Ok(r.list("messages", source)?),
        KafkaMessages::Command(cmd) => Err(r.string("command", cmd)?),
    };
    Ok(RenderedTask::KafkaProduce {
        conn_id: op.conn_id.clone(),
        topic: r.string("topic", &op.topic)?,
        messages,
        delivery_timeout: op.delivery_timeout.to_std().unwrap_or_default(),
    })
}
