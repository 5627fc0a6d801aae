//! `time_delta`: the moment the sensor waits for.

use flow_dag::{Task, TimeDeltaSensor};

use crate::render::{RenderError, RenderedTask, RunContext, SensorWait};

pub(crate) fn render(
    _task: &Task,
    op: &TimeDeltaSensor,
    ctx: &RunContext,
) -> Result<RenderedTask, RenderError> {
    // Airflow's TimeDeltaSensor: the data interval's end plus delta (the run's time
    // for runs without an interval).
    let base = ctx.data_interval_end.unwrap_or(ctx.run_after);
    Ok(RenderedTask::Sensor {
        wait: SensorWait::Until(base + op.delta),
        sensor: op.sensor.clone(),
    })
}
