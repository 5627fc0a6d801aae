//! `kafka_await_message`: the sensor's group rendered, its filter evaluated per message by
//! `io_ops::sense` or the triggerer.

use flow_dag::{KafkaAwaitMessageSensor, Task};

use crate::render::{RenderError, RenderedTask, Renderer, RunContext, SensorWait, default_group};

pub(crate) fn render(
    task: &Task,
    op: &KafkaAwaitMessageSensor,
    ctx: &RunContext,
) -> Result<RenderedTask, RenderError> {
    let r = Renderer::new(task, ctx);
    let context = serde_json::json!({
        "params": ctx.params,
        "conf": ctx.conf,
        "run_id": ctx.run_id,
    });
    Ok(RenderedTask::Sensor {
        wait: SensorWait::KafkaMessage {
            conn_id: op.conn_id.clone(),
            topics: op.topics.clone(),
            group_id: match &op.group_id {
                Some(g) => r.string("group_id", g)?,
                None => default_group(ctx),
            },
            filter: op.filter.clone(),
            context,
        },
        sensor: op.sensor.clone(),
    })
}
