//! `date_time`: `target_time` rendered and parsed.

use flow_dag::{DateTimeSensor, Task};

use crate::render::{RenderError, RenderedTask, Renderer, RunContext, SensorWait, parse_datetime};

pub(crate) fn render(
    task: &Task,
    op: &DateTimeSensor,
    ctx: &RunContext,
) -> Result<RenderedTask, RenderError> {
    let r = Renderer::new(task, ctx);
    let text = r.string("target_time", &op.target_time)?;
    let at = parse_datetime(text.trim()).ok_or_else(|| {
        RenderError::new(
            "target_time",
            format!("`{text}` is not an ISO 8601 date-time"),
        )
    })?;
    Ok(RenderedTask::Sensor {
        wait: SensorWait::Until(at),
        sensor: op.sensor.clone(),
    })
}
