//! Schedules and timetables: turns a DAG's `schedule` string into Airflow's run plan.
//!
//! A [`Schedule`] is what the user wrote (cron, preset, interval, `@once`, `@continuous`,
//! none), parsed and validated once. A [`Timetable`] adds the DAG's time zone and the
//! [`TimetableKind`] and answers Airflow's timetable questions: the next automated run after
//! the last one ([`Timetable::next_dagrun_info`]), the data interval of a manual run, the runs
//! a backfill covers. The rules are ported from Airflow's `airflow/timetables/` (`interval.py`,
//! `trigger.py`, `simple.py`, `_cron.py`, `_delta.py`), including its quirks, so a DAG moved
//! from Airflow keeps its `logical_date`s, data intervals and DST behaviour.
//!
//! This module deliberately does no I/O and never reads the clock: `now` is always a
//! parameter, so every rule is tested with fixed instants. It does not decide whether a run
//! may start (max_active_runs, pools); it only says which runs exist and when they are due.
//!
//! Time zones: a cron is evaluated on the wall clock of the DAG's IANA zone, exactly as
//! croniter sees it (naive local time), then mapped to an instant with Airflow's DST rules:
//! - a cron whose hour field covers every hour (`0 * * * *`, `*/15 * * * *`) steps by the
//!   wall-clock distance between ticks, applied as elapsed time, so it fires once per real
//!   hour through both transitions;
//! - any other cron fires at its wall-clock time; a time skipped by spring-forward is moved
//!   forward by the gap (02:30 in a 02:00-03:00 gap fires at 03:30), and a time repeated by
//!   fall-back fires at its second occurrence (Airflow's `make_aware` sets `fold=1`).

use std::cmp::max;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What went wrong turning user input into a schedule. Messages are written for the DAG
/// author: they quote the input and, for cron, name the offending field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// A single token that is neither a preset, an interval nor `none`.
    #[error(
        "invalid schedule `{input}`: expected a 5-field cron expression (`0 3 * * *`), a preset \
         (`@daily`, `@hourly`, ...), an interval (`30m`, `1h30m`, `90s`, `2d`, `1w`), `@once`, \
         `@continuous` or none{hint}"
    )]
    Unrecognized {
        /// The rejected input.
        input: String,
        /// Extra advice, empty or starting with "; ".
        hint: String,
    },
    /// `@something` that is not one of Airflow's presets.
    #[error(
        "unknown schedule preset `{preset}`; known presets are @once, @continuous, @hourly, \
         @daily, @midnight, @weekly, @monthly, @quarterly, @yearly and @annually"
    )]
    UnknownPreset {
        /// The rejected preset, as written.
        preset: String,
    },
    /// A cron expression with the wrong number of fields.
    #[error("cron expression `{expr}` has {count} fields; {advice}")]
    CronFieldCount {
        /// The expression as written.
        expr: String,
        /// How many whitespace-separated fields it has.
        count: usize,
        /// What to write instead.
        advice: &'static str,
    },
    /// One field of a cron expression is invalid.
    #[error("cron expression `{expr}`: {field} field {message}")]
    CronField {
        /// The expression as written.
        expr: String,
        /// Which field is wrong.
        field: CronField,
        /// What is wrong with it, quoting the offending part.
        message: String,
    },
    /// Every field is valid but together they name no date, e.g. `0 0 30 2 *`.
    #[error("cron expression `{expr}` never fires: {reason}")]
    CronNeverFires {
        /// The expression as written.
        expr: String,
        /// Why no date matches.
        reason: String,
    },
    /// The cron engine refused an expression this module accepted (should not happen; kept
    /// so a mismatch surfaces as an error instead of a panic).
    #[error("cron expression `{expr}` could not be compiled: {message}")]
    CronEngine {
        /// The expression as written.
        expr: String,
        /// The engine's message.
        message: String,
    },
    /// An interval such as `30m` that does not parse or is not positive.
    #[error("invalid interval `{input}`: {reason}")]
    Duration {
        /// The rejected input.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A time zone name that is not in the IANA database.
    #[error("unknown time zone `{name}`; use an IANA name such as `UTC` or `Europe/Berlin`")]
    UnknownTimezone {
        /// The rejected name.
        name: String,
    },
}

/// The five fields of a cron expression, in order, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CronField {
    /// 0-59.
    Minute,
    /// 0-23.
    Hour,
    /// 1-31, or `L` for the last day of the month.
    DayOfMonth,
    /// 1-12 or JAN-DEC.
    Month,
    /// 0-7 (0 and 7 are Sunday) or SUN-SAT; `n#k` for the k-th such weekday of the month.
    DayOfWeek,
}

impl fmt::Display for CronField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CronField::Minute => "minute",
            CronField::Hour => "hour",
            CronField::DayOfMonth => "day-of-month",
            CronField::Month => "month",
            CronField::DayOfWeek => "day-of-week",
        })
    }
}

/// A DAG's parsed `schedule`.
///
/// Serializes as its canonical string (the [`fmt::Display`] form), which
/// [`parse_schedule`] reads back to the same value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// No automated runs; manual and API triggers only (`schedule: null`).
    None,
    /// Exactly one automated run, at the start date (`@once`).
    Once,
    /// A new run as soon as the previous one finishes (`@continuous`).
    Continuous,
    /// A 5-field cron expression, with presets such as `@daily` already expanded and
    /// whitespace normalized to single spaces.
    Cron {
        /// The normalized expression, e.g. `0 0 * * *`.
        expr: String,
    },
    /// A fixed interval (Airflow's `timedelta` schedule), always positive.
    Interval(Duration),
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::None => f.write_str("None"),
            Schedule::Once => f.write_str("@once"),
            Schedule::Continuous => f.write_str("@continuous"),
            Schedule::Cron { expr } => f.write_str(expr),
            Schedule::Interval(d) => f.write_str(&format_duration(*d)),
        }
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_schedule(s)
    }
}

impl Serialize for Schedule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        parse_schedule(&s).map_err(serde::de::Error::custom)
    }
}

/// Airflow's cron presets (`airflow.utils.dates.cron_presets`, plus the aliases croniter
/// itself accepts: `@midnight`, `@annually`).
const CRON_PRESETS: [(&str, &str); 8] = [
    ("hourly", "0 * * * *"),
    ("daily", "0 0 * * *"),
    ("midnight", "0 0 * * *"),
    ("weekly", "0 0 * * 0"),
    ("monthly", "0 0 1 * *"),
    ("quarterly", "0 0 1 */3 *"),
    ("yearly", "0 0 1 1 *"),
    ("annually", "0 0 1 1 *"),
];

/// Parses a DAG's `schedule` string.
///
/// Accepted, in this order:
/// - empty or `none` (any case): [`Schedule::None`];
/// - `@once`, `@continuous`, and the cron presets `@hourly`, `@daily`, `@midnight`,
///   `@weekly`, `@monthly`, `@quarterly`, `@yearly`, `@annually` (any case, as croniter);
/// - anything with whitespace: a 5-field cron with Vixie/croniter semantics (when both
///   day-of-month and day-of-week are restricted a day matches if either does);
/// - a single token: an interval, see [`parse_duration`].
///
/// Cron syntax: `*`, `?` (day fields), lists, ranges (wrapping ranges such as `22-2` as
/// croniter allows), steps, month and weekday names, `L` alone in day-of-month, `n#k` in
/// day-of-week. Rejected with an explanation: seconds or year fields, `W`, weekday `L`,
/// `H`, and expressions that can never fire (`0 0 30 2 *`).
pub fn parse_schedule(s: &str) -> Result<Schedule, ScheduleError> {
    let trimmed = s.trim();
    if trimmed.is_empty() || trimmed.eq_ignore_ascii_case("none") {
        return Ok(Schedule::None);
    }
    if let Some(name) = trimmed.strip_prefix('@') {
        let lower = name.to_ascii_lowercase();
        return match lower.as_str() {
            "once" => Ok(Schedule::Once),
            "continuous" => Ok(Schedule::Continuous),
            _ => CRON_PRESETS
                .iter()
                .find(|(preset, _)| *preset == lower)
                .map(|(_, expr)| Schedule::Cron {
                    expr: (*expr).to_owned(),
                })
                .ok_or_else(|| ScheduleError::UnknownPreset {
                    preset: trimmed.to_owned(),
                }),
        };
    }
    let tokens: Vec<&str> = trimmed.split_whitespace().collect();
    if tokens.len() > 1 {
        // `1h 30m` is an interval with a space, not a short cron: every part is a number
        // with a unit letter, which no cron field has in its first position.
        let interval_like = tokens.len() < 5
            && tokens.iter().all(|t| {
                t.starts_with(|c: char| c.is_ascii_digit())
                    && t.contains(|c: char| c.is_ascii_alphabetic())
            });
        if interval_like {
            return parse_duration(trimmed).map(Schedule::Interval);
        }
        let compiled = CompiledCron::parse(trimmed)?;
        return Ok(Schedule::Cron {
            expr: compiled.expr,
        });
    }
    // One token: an interval. A token that starts like a number is clearly an attempt at
    // one, so its specific error is more useful than the generic list of forms.
    if trimmed.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.') {
        return parse_duration(trimmed).map(Schedule::Interval);
    }
    let lower = trimmed.to_ascii_lowercase();
    let is_preset_name = ["once", "continuous"].contains(&lower.as_str())
        || CRON_PRESETS.iter().any(|(p, _)| *p == lower);
    let hint = if is_preset_name {
        format!("; did you mean `@{lower}`?")
    } else if trimmed.contains(['*', ',', '/']) {
        "; a cron expression needs 5 fields separated by spaces".to_owned()
    } else {
        String::new()
    };
    Err(ScheduleError::Unrecognized {
        input: trimmed.to_owned(),
        hint,
    })
}

/// Duration units in the order they must appear, with their length in milliseconds.
const DURATION_UNITS: [(&str, i64); 6] = [
    ("w", 7 * 86_400_000),
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Parses an interval such as `30m`, `1h30m`, `90s`, `2d`, `1w` or plain seconds (`300`).
///
/// Units are `w`, `d`, `h`, `m`, `s` and `ms`, lowercase, each at most once and from largest
/// to smallest (`1h30m`, not `30m1h`); spaces between parts are allowed (`1h 30m`). Days and
/// weeks are fixed 24-hour multiples, as Python's `timedelta`. Fractions (`1.5h`) are rejected
/// rather than rounded: `1h30m` says the same thing exactly. Zero and negative intervals are
/// rejected, as Airflow's `DeltaMixin.validate` does.
pub fn parse_duration(s: &str) -> Result<Duration, ScheduleError> {
    let input = s.trim();
    let fail = |reason: String| ScheduleError::Duration {
        input: input.to_owned(),
        reason,
    };
    if input.is_empty() {
        return Err(fail(
            "it is empty; write e.g. `30m`, `1h30m`, `90s` or `300` (seconds)".into(),
        ));
    }
    if input.starts_with('-') {
        return Err(fail("an interval must be positive".into()));
    }
    if input.contains(['.', ',']) {
        return Err(fail(
            "fractions are not supported; combine units instead, e.g. `1h30m` for 1.5 hours".into(),
        ));
    }
    let too_large = || fail("it is too large".into());
    let total_ms: i64 = if input.bytes().all(|b| b.is_ascii_digit()) {
        // Plain seconds, as dag-factory and Airflow's config accept.
        let secs: i64 = input.parse().map_err(|_| too_large())?;
        secs.checked_mul(1_000).ok_or_else(too_large)?
    } else {
        let mut total: i64 = 0;
        // Index into DURATION_UNITS of the previous part, to enforce largest-first order.
        let mut previous: Option<usize> = None;
        let mut rest = input;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(fail(format!(
                    "expected a number before `{rest}`; write e.g. `1h30m`"
                )));
            }
            let (number, after) = rest.split_at(digits);
            let letters = after.bytes().take_while(u8::is_ascii_alphabetic).count();
            let (unit, after) = after.split_at(letters);
            let Some(index) = DURATION_UNITS.iter().position(|(u, _)| *u == unit) else {
                let what = if unit.is_empty() {
                    format!("`{number}` has no unit")
                } else {
                    format!("unknown unit `{unit}`")
                };
                return Err(fail(format!(
                    "{what}; use w (weeks), d (days), h (hours), m (minutes), s (seconds) or ms"
                )));
            };
            if previous.is_some_and(|p| p >= index) {
                return Err(fail(
                    "units must appear once each, largest first (e.g. `1h30m`)".into(),
                ));
            }
            previous = Some(index);
            let value: i64 = number.parse().map_err(|_| too_large())?;
            let part = value
                .checked_mul(DURATION_UNITS[index].1)
                .ok_or_else(too_large)?;
            total = total.checked_add(part).ok_or_else(too_large)?;
            rest = after.trim_start();
        }
        total
    };
    if total_ms == 0 {
        return Err(fail("an interval must be positive, not zero".into()));
    }
    Duration::try_milliseconds(total_ms).ok_or_else(too_large)
}

/// Formats a duration the way [`parse_duration`] reads it: `30m`, `1h30m`, `1w2d`.
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.num_milliseconds();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    if ms < 0 {
        out.push('-');
        ms = ms.saturating_neg();
    }
    for (unit, len) in DURATION_UNITS {
        let n = ms / len;
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
            ms -= n * len;
        }
    }
    out
}

/// Parses an IANA time zone name (`UTC`, `Europe/Berlin`).
pub fn parse_timezone(name: &str) -> Result<Tz, ScheduleError> {
    name.trim()
        .parse::<Tz>()
        .map_err(|_| ScheduleError::UnknownTimezone {
            name: name.to_owned(),
        })
}

/// Which family of Airflow timetables a periodic schedule (cron or interval) uses.
/// `@once`, `@continuous` and none behave the same under both.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimetableKind {
    /// Airflow 2's default (`CronDataIntervalTimetable`, `DeltaDataIntervalTimetable`): a run
    /// covers `[previous tick, tick)`, its `logical_date` is the interval start and it becomes
    /// due at the interval end.
    #[default]
    DataInterval,
    /// `timetable: trigger`, Airflow 3's default (`CronTriggerTimetable`,
    /// `DeltaTriggerTimetable`): a run fires at each tick with a zero-width interval, and its
    /// `logical_date` is the tick itself.
    Trigger,
}

/// The data a run covers, `[start, end)`; zero-width (`start == end`) for trigger runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DataInterval {
    /// Inclusive start; the run's `data_interval_start`.
    pub start: DateTime<Utc>,
    /// Exclusive end; the run's `data_interval_end`.
    pub end: DateTime<Utc>,
}

impl DataInterval {
    /// The zero-width interval at `at` (Airflow's `DataInterval.exact`).
    pub fn exact(at: DateTime<Utc>) -> Self {
        Self { start: at, end: at }
    }
}

/// One automated run as the timetable plans it (Airflow's `DagRunInfo`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DagRunInfo {
    /// The run's `logical_date` (formerly `execution_date`).
    pub logical_date: DateTime<Utc>,
    /// The data the run covers.
    pub data_interval: DataInterval,
    /// The earliest instant the run may be created and started.
    pub run_after: DateTime<Utc>,
}

impl DagRunInfo {
    /// A run covering `[start, end)`, due at `end` (Airflow's `DagRunInfo.interval`).
    pub fn interval(start: DateTime<Utc>, end: DateTime<Utc>) -> Self {
        Self {
            logical_date: start,
            data_interval: DataInterval { start, end },
            run_after: end,
        }
    }

    /// A zero-width run at `at`, due at `at` (Airflow's `DagRunInfo.exact`).
    pub fn exact(at: DateTime<Utc>) -> Self {
        Self {
            logical_date: at,
            data_interval: DataInterval::exact(at),
            run_after: at,
        }
    }
}

/// Bounds on automated runs (Airflow's `TimeRestriction`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeRestriction {
    /// The DAG's `start_date`: no run's data interval starts before it.
    pub earliest: Option<DateTime<Utc>>,
    /// The DAG's `end_date`: a data-interval run is excluded when its interval *starts* after
    /// it (so the interval starting exactly at `end_date` still runs); a trigger run when its
    /// tick is after it.
    pub latest: Option<DateTime<Utc>>,
    /// Whether missed runs since `start_date` are all created (`true`) or only the latest.
    pub catchup: bool,
}

/// A schedule in a time zone: the object the scheduler asks for runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timetable {
    /// What the DAG declared.
    pub schedule: Schedule,
    /// The DAG's time zone; cron fields are read on this zone's wall clock.
    pub timezone: Tz,
    /// Data-interval (Airflow 2) or trigger (Airflow 3) semantics for cron and intervals.
    pub kind: TimetableKind,
}

impl Timetable {
    /// Bundles the three parts.
    pub fn new(schedule: Schedule, timezone: Tz, kind: TimetableKind) -> Self {
        Self {
            schedule,
            timezone,
            kind,
        }
    }

    /// Checks what [`parse_schedule`] would have checked, for a [`Schedule`] built by hand.
    /// A timetable that fails this never schedules anything.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        match &self.schedule {
            Schedule::Cron { expr } => CompiledCron::parse(expr).map(|_| ()),
            Schedule::Interval(d) if *d <= Duration::zero() => Err(ScheduleError::Duration {
                input: format_duration(*d),
                reason: "an interval must be positive".into(),
            }),
            _ => Ok(()),
        }
    }

    /// Airflow's `next_dagrun_info`: the next automated run after the one whose data interval
    /// was `last_automated_data_interval` (`None`: no automated run yet). The result may lie in
    /// the future; it is due once `run_after <= now`. `now` matters only where Airflow reads
    /// the clock: catchup=false, `@once` without a start date, `@continuous`, and the first
    /// trigger run without a start date.
    pub fn next_dagrun_info(
        &self,
        last_automated_data_interval: Option<DataInterval>,
        restriction: &TimeRestriction,
        now: DateTime<Utc>,
    ) -> Option<DagRunInfo> {
        self.plan()?
            .next_dagrun_info(last_automated_data_interval, restriction, now)
    }

    /// Airflow's `infer_manual_data_interval` for a run triggered by hand at `run_after`.
    ///
    /// Cron data intervals give the last complete interval (a daily DAG triggered at 01:00 on
    /// the 25th covers the 24th); interval schedules give `[run_after - interval, run_after)`;
    /// everything else (trigger kind, `@once`, `@continuous`, none) is zero-width at
    /// `run_after`.
    pub fn infer_manual_data_interval(&self, run_after: DateTime<Utc>) -> DataInterval {
        let inferred = match self.plan() {
            Some(Plan::Intervals(steps @ Steps::Cron { .. })) => {
                steps.align_to_prev(run_after).and_then(|end| {
                    Some(DataInterval {
                        start: steps.prev(end)?,
                        end,
                    })
                })
            }
            Some(Plan::Intervals(Steps::Delta(d))) => {
                run_after.checked_sub_signed(d).map(|start| DataInterval {
                    start,
                    end: run_after,
                })
            }
            _ => None,
        };
        inferred.unwrap_or(DataInterval::exact(run_after))
    }

    /// All automated runs due at `now` (`run_after <= now`), in order, following `last`,
    /// honouring catchup, start and end dates; at most `limit`. This is what a scheduler loop
    /// creates: with catchup every missed interval, without it only the latest.
    /// `@continuous` yields at most one run, as Airflow keeps one continuous run at a time.
    pub fn due_runs(
        &self,
        last: Option<DataInterval>,
        restriction: &TimeRestriction,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Vec<DagRunInfo> {
        self.chain(last, restriction, now, limit, |info| info.run_after <= now)
    }

    /// The next `n` automated runs after `last`, due or not (for `flow dags next-runs`). Runs
    /// already overdue come first, as the scheduler would create them.
    pub fn upcoming_runs(
        &self,
        last: Option<DataInterval>,
        restriction: &TimeRestriction,
        now: DateTime<Utc>,
        n: usize,
    ) -> Vec<DagRunInfo> {
        self.chain(last, restriction, now, n, |_| true)
    }

    /// The runs a backfill over `[start, end]` creates: every run whose `logical_date` falls in
    /// the range, as Airflow's `iter_dagrun_infos_between` (catchup on, `start`/`end` as start
    /// and end date, aligned to the schedule); at most `limit`. `@once` gives one run at
    /// `start`; none and `@continuous` have no periodic runs to backfill and give nothing.
    pub fn runs_in_range(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        limit: usize,
    ) -> Vec<DagRunInfo> {
        if matches!(self.schedule, Schedule::Continuous) || start > end {
            return Vec::new();
        }
        let restriction = TimeRestriction {
            earliest: Some(start),
            latest: Some(end),
            catchup: true,
        };
        // With catchup on and a start date, no branch reads the clock, so `now` is inert.
        self.chain(None, &restriction, start, limit, |_| true)
    }

    /// One line for humans: `0 3 * * * (Europe/Berlin)`, `every 30m`, `@once`,
    /// `@continuous`, `None`.
    pub fn summary(&self) -> String {
        match &self.schedule {
            Schedule::Cron { expr } => format!("{expr} ({})", self.timezone.name()),
            Schedule::Interval(d) => format!("every {}", format_duration(*d)),
            other => other.to_string(),
        }
    }

    /// Follows `next_dagrun_info` from `last` while `keep` accepts the runs, up to `limit`.
    fn chain(
        &self,
        mut last: Option<DataInterval>,
        restriction: &TimeRestriction,
        now: DateTime<Utc>,
        limit: usize,
        keep: impl Fn(&DagRunInfo) -> bool,
    ) -> Vec<DagRunInfo> {
        let mut runs: Vec<DagRunInfo> = Vec::new();
        // Compiled once: a catch-up over years would otherwise re-parse the cron per run.
        let Some(plan) = self.plan() else {
            return runs;
        };
        while runs.len() < limit {
            let Some(info) = plan.next_dagrun_info(last, restriction, now) else {
                break;
            };
            // A timetable that stops advancing (possible only through a DST corner or a
            // hand-built schedule) must end the list rather than loop forever.
            if runs
                .last()
                .is_some_and(|prev| info.logical_date <= prev.logical_date)
                || !keep(&info)
            {
                break;
            }
            runs.push(info);
            if matches!(self.schedule, Schedule::Continuous) {
                break;
            }
            last = Some(info.data_interval);
        }
        runs
    }

    /// Compiles the schedule into the rules it follows; `None` if a hand-built cron or
    /// interval is invalid, so that it never schedules instead of failing later.
    fn plan(&self) -> Option<Plan> {
        let steps = match &self.schedule {
            Schedule::None => return Some(Plan::Never),
            Schedule::Once => return Some(Plan::Once),
            Schedule::Continuous => return Some(Plan::Continuous),
            Schedule::Cron { expr } => Steps::Cron {
                cron: Box::new(CompiledCron::parse(expr).ok()?),
                tz: self.timezone,
            },
            Schedule::Interval(d) if *d > Duration::zero() => Steps::Delta(*d),
            Schedule::Interval(_) => return None,
        };
        Some(match self.kind {
            TimetableKind::DataInterval => Plan::Intervals(steps),
            TimetableKind::Trigger => Plan::Triggers(steps),
        })
    }
}

/// Which Airflow timetable class a [`Timetable`] behaves as.
enum Plan {
    /// `NullTimetable`.
    Never,
    /// `OnceTimetable`.
    Once,
    /// `ContinuousTimetable`.
    Continuous,
    /// `CronDataIntervalTimetable` / `DeltaDataIntervalTimetable`.
    Intervals(Steps),
    /// `CronTriggerTimetable` / `DeltaTriggerTimetable` with a zero interval.
    Triggers(Steps),
}

impl Plan {
    fn next_dagrun_info(
        &self,
        last: Option<DataInterval>,
        restriction: &TimeRestriction,
        now: DateTime<Utc>,
    ) -> Option<DagRunInfo> {
        match self {
            Plan::Never => None,
            Plan::Once => once_next(last, restriction, now),
            Plan::Continuous => continuous_next(last, restriction, now),
            Plan::Intervals(steps) => interval_next(steps, last, restriction, now),
            Plan::Triggers(steps) => trigger_next(steps, last, restriction, now),
        }
    }
}

/// `OnceTimetable.next_dagrun_info`: one run at the start date (or now without one),
/// regardless of catchup, unless the end date is before it.
fn once_next(
    last: Option<DataInterval>,
    restriction: &TimeRestriction,
    now: DateTime<Utc>,
) -> Option<DagRunInfo> {
    if last.is_some() {
        return None;
    }
    let run_after = restriction.earliest.unwrap_or(now);
    if restriction.latest.is_some_and(|latest| run_after > latest) {
        return None;
    }
    Some(DagRunInfo::exact(run_after))
}

/// `ContinuousTimetable.next_dagrun_info`. The first run covers `[start_date, now]` (or is
/// zero-width at a future start date), each later one `[previous end, now]`, so logical dates
/// stay distinct. Not zero-width in general: that is Airflow's rule, and run ids built from
/// logical dates depend on it.
fn continuous_next(
    last: Option<DataInterval>,
    restriction: &TimeRestriction,
    now: DateTime<Utc>,
) -> Option<DagRunInfo> {
    let start_date = restriction.earliest.unwrap_or(now);
    let (start, end) = match last {
        // The last run ended in the future: the start date moved; keep its width.
        Some(last) if last.end > now => (
            start_date,
            start_date.checked_add_signed(last.end - last.start)?,
        ),
        Some(last) => (last.end, now),
        None => (start_date, max(start_date, now)),
    };
    if restriction.latest.is_some_and(|latest| end > latest) {
        return None;
    }
    Some(DagRunInfo::interval(start, end))
}

/// `_DataIntervalTimetable.next_dagrun_info` (Airflow 2 semantics).
fn interval_next(
    steps: &Steps,
    last: Option<DataInterval>,
    restriction: &TimeRestriction,
    now: DateTime<Utc>,
) -> Option<DagRunInfo> {
    let earliest = if restriction.catchup {
        match restriction.earliest {
            Some(e) => Some(steps.align_to_next(e)?),
            None => None,
        }
    } else {
        Some(steps.skip_to_latest(restriction.earliest, now)?)
    };
    let start = match last {
        // Without a start date, a data-interval timetable has nothing to anchor its first
        // interval to and schedules nothing (catchup=false always sets `earliest` above).
        None => earliest?,
        Some(last) => {
            // Re-aligning the previous end makes a changed schedule take effect at once.
            let aligned = steps.align_to_prev(last.end)?;
            earliest.map_or(aligned, |e| max(aligned, e))
        }
    };
    if restriction.latest.is_some_and(|latest| start > latest) {
        return None;
    }
    Some(DagRunInfo::interval(start, steps.next(start)?))
}

/// `_TriggerTimetable.next_dagrun_info` with Airflow's default `interval=timedelta()`.
fn trigger_next(
    steps: &Steps,
    last: Option<DataInterval>,
    restriction: &TimeRestriction,
    now: DateTime<Utc>,
) -> Option<DagRunInfo> {
    let next = if restriction.catchup {
        match (last, restriction.earliest) {
            (Some(last), _) => steps.next(last.end)?,
            (None, None) => steps.calc_first_run(now)?,
            (None, Some(earliest)) => steps.align_to_next(earliest)?,
        }
    } else {
        // The most recent tick at or before now, unless the last run or the start date
        // demand a later one.
        let mut next = steps.align_to_prev(now)?;
        match (last, restriction.earliest) {
            (Some(last), _) => next = max(next, steps.next(last.end)?),
            (None, None) => next = max(next, steps.calc_first_run(now)?),
            (None, Some(_)) => {}
        }
        if let Some(earliest) = restriction.earliest {
            next = max(next, steps.align_to_next(earliest)?);
        }
        next
    };
    if restriction.latest.is_some_and(|latest| latest < next) {
        return None;
    }
    Some(DagRunInfo::exact(next))
}

/// How a periodic schedule steps through time: Airflow's `CronMixin` and `DeltaMixin`.
/// Every method returns `None` only when a cron has no further match (beyond year 5000).
enum Steps {
    /// A cron read on `tz`'s wall clock (boxed: croner's pattern is a few hundred bytes).
    Cron { cron: Box<CompiledCron>, tz: Tz },
    /// A fixed interval of elapsed time.
    Delta(Duration),
}

impl Steps {
    /// `_get_next`: the first tick strictly after `current`.
    fn next(&self, current: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Steps::Cron { cron, tz } => {
                let naive = wall_clock(*tz, current)?;
                let scheduled = cron.naive_next(naive)?;
                if cron.every_hour {
                    // Wall-clock distance applied as elapsed time: the fold hour is run
                    // twice and the skipped hour not at all, one run per real hour.
                    current.checked_add_signed(scheduled - naive)
                } else {
                    localize(*tz, scheduled)
                }
            }
            Steps::Delta(d) => current.checked_add_signed(*d),
        }
    }

    /// `_get_prev`: the last tick strictly before `current`.
    fn prev(&self, current: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Steps::Cron { cron, tz } => {
                let naive = wall_clock(*tz, current)?;
                let scheduled = cron.naive_prev(naive)?;
                if cron.every_hour {
                    current.checked_sub_signed(naive - scheduled)
                } else {
                    localize(*tz, scheduled)
                }
            }
            Steps::Delta(d) => current.checked_sub_signed(*d),
        }
    }

    /// `_align_to_next`: `current` if it is a tick, else the next tick. Intervals have no
    /// grid, so any instant is aligned.
    fn align_to_next(&self, current: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Steps::Cron { .. } => {
                let next = self.next(current)?;
                Some(if self.prev(next)? == current {
                    current
                } else {
                    next
                })
            }
            Steps::Delta(_) => Some(current),
        }
    }

    /// `_align_to_prev`: `current` if it is a tick, else the previous tick.
    fn align_to_prev(&self, current: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Steps::Cron { .. } => {
                let prev = self.prev(current)?;
                Some(if self.next(prev)? == current {
                    current
                } else {
                    prev
                })
            }
            Steps::Delta(_) => Some(current),
        }
    }

    /// `_skip_to_latest` (catchup=false): the start of the latest complete interval at `now`,
    /// but not before the start date.
    fn skip_to_latest(
        &self,
        earliest: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        match self {
            Steps::Cron { .. } => {
                let last_start = self.prev(now)?;
                // On a boundary the interval ending now is complete; between boundaries it
                // is the one before. (Airflow asserts the remaining case, "next tick before
                // now", cannot happen; treating it like "between" keeps us panic-free.)
                let new_start = if self.next(last_start)? == now {
                    last_start
                } else {
                    self.prev(last_start)?
                };
                match earliest {
                    Some(e) => Some(max(new_start, self.align_to_next(e)?)),
                    None => Some(new_start),
                }
            }
            Steps::Delta(d) => {
                // Airflow rounds now down to a multiple of the interval since the Unix epoch,
                // not since the start date, so intervals realign to the epoch grid here.
                let step = d.num_microseconds()?;
                let micros = now.timestamp_micros();
                let rounded = DateTime::from_timestamp_micros(micros - micros.rem_euclid(step))?;
                let new_start = rounded.checked_sub_signed(*d)?;
                Some(earliest.map_or(new_start, |e| max(new_start, e)))
            }
        }
    }

    /// `_calc_first_run` of the trigger timetables, for a DAG without a start date.
    ///
    /// Cron: Airflow's default `run_immediately=False` takes the same branch as `None` in its
    /// code: the most recent tick if it is at most max(10% of the gap between ticks, 5
    /// minutes) ago, else the next tick. Interval: now.
    fn calc_first_run(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Steps::Cron { .. } => {
                let past = self.align_to_prev(now)?;
                let next = self.align_to_next(now)?;
                let buffer = max((next - past) / 10, Duration::minutes(5));
                Some(if now - past <= buffer { past } else { next })
            }
            Steps::Delta(_) => Some(now),
        }
    }
}

/// The wall-clock time of `instant` in `tz`; `None` only at the edges of chrono's range
/// (where `naive_local` would panic).
fn wall_clock(tz: Tz, instant: DateTime<Utc>) -> Option<NaiveDateTime> {
    let offset = tz.offset_from_utc_datetime(&instant.naive_utc()).fix();
    instant.naive_utc().checked_add_offset(offset)
}

/// Airflow's `make_aware` with `fold=1`: a wall-clock time in `tz` as an instant.
/// Repeated times (fall-back) take their second occurrence; skipped times (spring-forward)
/// are read with the offset in force before the gap, i.e. moved forward by the gap's length.
fn localize(tz: Tz, naive: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(dt) => Some(dt.with_timezone(&Utc)),
        LocalResult::Ambiguous(_, later) => Some(later.with_timezone(&Utc)),
        LocalResult::None => {
            // Two days earlier is safely before the transition and after any previous one.
            let before = naive.checked_sub_signed(Duration::days(2))?;
            let offset = tz.offset_from_utc_datetime(&before).fix().local_minus_utc();
            let utc = naive.checked_sub_signed(Duration::seconds(i64::from(offset)))?;
            Some(utc.and_utc())
        }
    }
}

/// A validated cron expression, ready to evaluate on naive wall-clock time the way
/// croniter does.
#[derive(Clone, Debug)]
struct CompiledCron {
    /// The normalized expression (single spaces, as written otherwise).
    expr: String,
    /// The evaluator, built from a canonical pattern whose `*` fields are exactly croniter's.
    cron: Cron,
    /// Whether the hour field covers all 24 hours (croniter's `expanded[1] == ["*"]`), which
    /// switches Airflow's DST handling to elapsed time (`_covers_every_hour`).
    every_hour: bool,
}

/// One parsed cron field.
#[derive(Default)]
struct FieldSet {
    /// Bit `v` set: value `v` matches (weekdays 0-6, Sunday 0).
    values: u64,
    /// Day-of-month `L`: the last day of the month.
    last_day: bool,
    /// Day-of-week `w#k` entries: (weekday, occurrence 1-5).
    nth: Vec<(u32, u32)>,
    /// The field was literally `*` or `?`.
    literal_star: bool,
}

const FIELD_ORDER: [CronField; 5] = [
    CronField::Minute,
    CronField::Hour,
    CronField::DayOfMonth,
    CronField::Month,
    CronField::DayOfWeek,
];

const MONTH_NAMES: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
/// The longest each month can be (February in a leap year).
const MONTH_MAX_DAYS: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

impl CronField {
    /// Values a user may write (7 is Sunday as well as 0).
    fn bounds(self) -> (u32, u32) {
        match self {
            CronField::Minute => (0, 59),
            CronField::Hour => (0, 23),
            CronField::DayOfMonth => (1, 31),
            CronField::Month => (1, 12),
            CronField::DayOfWeek => (0, 7),
        }
    }

    /// One full cycle of the field, which `*` and open-ended steps cover.
    fn cycle(self) -> (u32, u32) {
        match self {
            CronField::DayOfWeek => (0, 6),
            other => other.bounds(),
        }
    }

    fn full_mask(self) -> u64 {
        let (lo, hi) = self.cycle();
        (lo..=hi).fold(0, |mask, v| mask | (1 << v))
    }

    fn names(self) -> &'static [&'static str] {
        match self {
            CronField::Month => &MONTH_NAMES,
            CronField::DayOfWeek => &WEEKDAY_NAMES,
            _ => &[],
        }
    }
}

impl CompiledCron {
    /// Validates a 5-field expression and builds its evaluator.
    fn parse(input: &str) -> Result<Self, ScheduleError> {
        let fields: Vec<&str> = input.split_whitespace().collect();
        let expr = fields.join(" ");
        let advice = match fields.len() {
            5 => None,
            6 => Some(
                "flow takes 5 fields (minute hour day-of-month month day-of-week); a seconds \
                 field is not supported",
            ),
            7 => Some(
                "flow takes 5 fields (minute hour day-of-month month day-of-week); seconds and \
                 year fields are not supported",
            ),
            _ => Some("expected 5 fields: minute hour day-of-month month day-of-week"),
        };
        if let Some(advice) = advice {
            return Err(ScheduleError::CronFieldCount {
                expr,
                count: fields.len(),
                advice,
            });
        }
        let parse = |i: usize| {
            parse_field(FIELD_ORDER[i], fields[i]).map_err(|message| ScheduleError::CronField {
                expr: expr.clone(),
                field: FIELD_ORDER[i],
                message,
            })
        };
        let (minute, hour, dom, month, dow) =
            (parse(0)?, parse(1)?, parse(2)?, parse(3)?, parse(4)?);

        // croniter collapses a field that lists every value into `*`, except that a full
        // day field stays a list (keeping OR semantics) unless the *other* day field contains
        // a `*` character. Which day fields count as `*` decides OR versus single-field
        // matching, so it is reproduced exactly.
        let full = |set: &FieldSet, field: CronField| {
            set.values == field.full_mask() && !set.last_day && set.nth.is_empty()
        };
        let minute_star = minute.literal_star || full(&minute, CronField::Minute);
        let hour_star = hour.literal_star || full(&hour, CronField::Hour);
        let month_star = month.literal_star || full(&month, CronField::Month);
        let dom_star =
            dom.literal_star || (full(&dom, CronField::DayOfMonth) && fields[4].contains('*'));
        let dow_star =
            dow.literal_star || (full(&dow, CronField::DayOfWeek) && fields[2].contains('*'));

        if !dow.nth.is_empty() && !dom_star {
            // croniter keeps `#` as an extra condition on both sides of the OR and fails at
            // run time; refusing it here is clearer.
            return Err(ScheduleError::CronField {
                expr,
                field: CronField::DayOfWeek,
                message: format!(
                    "`{}` uses `#`, which cannot be combined with a restricted day-of-month",
                    fields[4]
                ),
            });
        }
        if dow_star && !dom_star && !dom.last_day {
            let possible = (1..=12u32).any(|m| {
                month.values & (1 << m) != 0
                    && (1..=MONTH_MAX_DAYS[(m - 1) as usize]).any(|d| dom.values & (1 << d) != 0)
            });
            if !possible {
                return Err(ScheduleError::CronNeverFires {
                    expr,
                    reason: format!(
                        "day-of-month `{}` does not occur in month `{}`",
                        fields[2], fields[3]
                    ),
                });
            }
        }

        let list = |set: &FieldSet, star: bool, extra: Vec<String>| -> String {
            if star {
                return "*".to_owned();
            }
            let mut parts: Vec<String> = (0..64u32)
                .filter(|v| set.values & (1 << v) != 0)
                .map(|v| v.to_string())
                .collect();
            parts.extend(extra);
            parts.join(",")
        };
        let dom_extra = if dom.last_day {
            vec!["L".to_owned()]
        } else {
            Vec::new()
        };
        let dow_extra = dow.nth.iter().map(|(w, k)| format!("{w}#{k}")).collect();
        let canonical = [
            list(&minute, minute_star, Vec::new()),
            list(&hour, hour_star, Vec::new()),
            list(&dom, dom_star, dom_extra),
            list(&month, month_star, Vec::new()),
            list(&dow, dow_star, dow_extra),
        ]
        .join(" ");
        // Day-of-month and day-of-week are OR-ed when both are restricted (croner's default,
        // croniter's `day_or=True`); a `*` day field is ignored.
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .dom_and_dow(false)
            .build()
            .parse(&canonical)
            .map_err(|e| ScheduleError::CronEngine {
                expr: expr.clone(),
                message: e.to_string(),
            })?;
        Ok(Self {
            expr,
            cron,
            every_hour: hour_star,
        })
    }

    /// croniter's `get_next` on naive time: the first match strictly after `t`.
    fn naive_next(&self, t: NaiveDateTime) -> Option<NaiveDateTime> {
        // croner walks whole seconds; flooring keeps "strictly after" exact because every
        // match falls on second 0.
        let floor = t.with_nanosecond(0)?;
        self.cron.find_next_occurrence(&floor, false).ok()
    }

    /// croniter's `get_prev` on naive time: the last match strictly before `t`.
    fn naive_prev(&self, t: NaiveDateTime) -> Option<NaiveDateTime> {
        let floor = t.with_nanosecond(0)?;
        // A fractional `t` lies after its floor, so the floor itself is a candidate.
        let inclusive = floor != t;
        self.cron.find_previous_occurrence(&floor, inclusive).ok()
    }
}

/// Parses one cron field into the values it matches; the error is the message that follows
/// "<field> field".
fn parse_field(field: CronField, raw: &str) -> Result<FieldSet, String> {
    let mut set = FieldSet::default();
    let day_field = matches!(field, CronField::DayOfMonth | CronField::DayOfWeek);
    if raw == "*" || (raw == "?" && day_field) {
        set.literal_star = true;
        set.values = field.full_mask();
        return Ok(set);
    }
    for elem in raw.split(',') {
        if elem.is_empty() {
            return Err(format!("`{raw}` has an empty list element"));
        }
        if elem.contains('?') {
            return Err(format!(
                "`{raw}`: `?` must stand alone, and only in day-of-month or day-of-week"
            ));
        }
        if is_hash_expression(elem) {
            return Err(format!(
                "`{elem}`: hashed and random (`H`, `R`) expressions are not supported"
            ));
        }
        if field == CronField::DayOfMonth {
            if elem.eq_ignore_ascii_case("l") {
                set.last_day = true;
                continue;
            }
            if elem.contains(['w', 'W']) {
                return Err(format!(
                    "`{elem}`: `W` (nearest weekday) is not supported; use plain days or `L`"
                ));
            }
        }
        if field == CronField::DayOfWeek {
            if let Some((day, k)) = elem.split_once('#') {
                let day = parse_value(field, day)? % 7;
                let k = parse_number(k)
                    .filter(|k| (1..=5).contains(k))
                    .ok_or_else(|| format!("`{elem}`: the occurrence after `#` must be 1-5"))?;
                set.nth.push((day, k));
                continue;
            }
            if elem.contains(['l', 'L']) {
                return Err(format!(
                    "`{elem}`: `L` (last weekday of the month) is not supported; `#` is \
                     (e.g. `5#2`, the second Friday)"
                ));
            }
        }
        if field == CronField::DayOfMonth && elem.contains(['l', 'L']) {
            return Err(format!(
                "`{elem}`: `L` must stand alone (the last day of the month)"
            ));
        }
        let (range, step) = match elem.split_once('/') {
            Some((range, step)) => {
                let step = parse_number(step)
                    .ok_or_else(|| format!("`{elem}`: step `{step}` is not a number"))?;
                if step == 0 {
                    return Err(format!("`{elem}`: step must be at least 1"));
                }
                (range, Some(step))
            }
            None => (elem, None),
        };
        let (cycle_lo, cycle_hi) = field.cycle();
        let (lo, hi) = if range == "*" {
            (cycle_lo, cycle_hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (parse_value(field, a)?, parse_value(field, b)?)
        } else {
            let a = parse_value(field, range)?;
            // `a/n` means from a to the end of the field, stepping n.
            (a, if step.is_some() { cycle_hi } else { a })
        };
        // Sunday may be written 7; fold it to 0 before ranges so `5-7` and `7-2` work.
        let fold = |v: u32| {
            if field == CronField::DayOfWeek {
                v % 7
            } else {
                v
            }
        };
        let (lo, hi) = (fold(lo), fold(hi));
        let sequence: Vec<u32> = if lo <= hi {
            (lo..=hi).collect()
        } else {
            // croniter reads a backwards range as wrapping around: hours `22-2` are 22-23
            // and 0-2.
            (lo..=cycle_hi).chain(cycle_lo..=hi).collect()
        };
        for v in sequence.into_iter().step_by(step.unwrap_or(1) as usize) {
            set.values |= 1 << v;
        }
    }
    if !set.nth.is_empty() && set.values != 0 {
        return Err(format!(
            "`{raw}` mixes `#` with plain weekdays, which croniter does not support"
        ));
    }
    Ok(set)
}

/// croniter's Jenkins-style `H`, `H(0-29)`, `H/15` (and `R`), which Airflow never enables.
fn is_hash_expression(elem: &str) -> bool {
    let mut chars = elem.chars();
    matches!(chars.next(), Some('h' | 'H' | 'r' | 'R'))
        && matches!(chars.next(), None | Some('(' | '/'))
}

/// Digits only: Rust's integer parser would also take a leading `+`.
fn parse_number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_value(field: CronField, token: &str) -> Result<u32, String> {
    let (lo, hi) = field.bounds();
    if let Some(v) = parse_number(token) {
        return if (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(format!("`{token}` out of range {lo}-{hi}"))
        };
    }
    let names = field.names();
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(token)) {
        // Months are 1-based, weekdays 0-based (Sunday 0).
        return Ok(i as u32 + lo);
    }
    if token.is_empty() {
        return Err("has an empty range bound".to_owned());
    }
    let expected = match field {
        CronField::Month => format!("a number {lo}-{hi} or a month name (JAN-DEC)"),
        CronField::DayOfWeek => format!("a number {lo}-{hi} or a weekday name (SUN-SAT)"),
        _ => format!("a number {lo}-{hi}"),
    };
    Err(format!("`{token}` is not valid; expected {expected}"))
}

#[cfg(test)]
mod tests;
