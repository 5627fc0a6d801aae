//! Temporary stand-in; replaced by the real timetable module.
use chrono::{DateTime, Utc};

#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    None,
    Once,
    Continuous,
    Cron { expr: String },
    Interval(chrono::Duration),
}
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ScheduleError(pub String);
pub fn parse_schedule(s: &str) -> Result<Schedule, ScheduleError> {
    if s.is_empty() {
        return Ok(Schedule::None);
    }
    Ok(Schedule::Cron {
        expr: s.to_string(),
    })
}
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TimetableKind {
    DataInterval,
    Trigger,
}
#[derive(Debug, Clone)]
pub struct Timetable {
    pub schedule: Schedule,
    pub timezone: chrono_tz::Tz,
    pub kind: TimetableKind,
}
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DataInterval {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DagRunInfo {
    pub logical_date: DateTime<Utc>,
    pub data_interval: DataInterval,
    pub run_after: DateTime<Utc>,
}
#[derive(Clone, Copy, Debug)]
pub struct TimeRestriction {
    pub earliest: Option<DateTime<Utc>>,
    pub latest: Option<DateTime<Utc>>,
    pub catchup: bool,
}
impl Timetable {
    pub fn upcoming_runs(
        &self,
        _last: Option<DataInterval>,
        _r: &TimeRestriction,
        _now: DateTime<Utc>,
        _n: usize,
    ) -> Vec<DagRunInfo> {
        Vec::new()
    }
    pub fn summary(&self) -> String {
        String::new()
    }
}
