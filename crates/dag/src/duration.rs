//! Durations and dates as users write them in DAG files.
//!
//! Durations: `90s`, `5m`, `1h30m`, `2d`, `1w`, `500ms`, plain seconds (`300`, `1.5`), or
//! dag-factory's `{__type__: datetime.timedelta, minutes: 5}`. Dates: ISO dates and date-times
//! (naive ones are in the DAG's time zone), dag-factory's relative `2 days`, or
//! `{__type__: datetime.datetime, year: 2025, month: 1, day: 1}`.

use chrono::{DateTime, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::de::{parse_float, parse_int};
use crate::yaml::{Node, Value};

/// Parses `1h30m`, `90s`, `2d`, `1w`, `250ms`, or a plain number of seconds (`300`, `1.5`, `0`).
/// Unit strings follow the schedule parser's rules, so intervals and delays read alike.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Some(secs) = parse_float(t) {
        return seconds(secs, text);
    }
    crate::schedule::parse_duration(t).map_err(|e| e.to_string())
}

fn seconds(secs: f64, text: &str) -> Result<Duration, String> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!(
            "duration `{text}` must be a non-negative number of seconds"
        ));
    }
    // 100 years is far beyond any timeout or delay anyone means; it keeps arithmetic safe.
    if secs > 100.0 * 365.0 * 86_400.0 {
        return Err(format!("duration `{text}` is longer than 100 years"));
    }
    Ok(Duration::milliseconds((secs * 1000.0).round() as i64))
}

/// Reads a duration node: a string, a number of seconds or a `datetime.timedelta` mapping.
pub fn duration_from_node(node: &Node) -> Result<Duration, String> {
    match &node.value {
        Value::Scalar(s) => parse_duration(&s.text),
        Value::Map(entries) => {
            let type_path = node.get("__type__").and_then(Node::as_str);
            if type_path != Some("datetime.timedelta") {
                return Err("a duration mapping needs `__type__: datetime.timedelta`".into());
            }
            let mut secs = 0.0;
            for (k, v) in entries {
                let key = k.as_str().unwrap_or_default();
                let factor = match key {
                    "__type__" => continue,
                    "weeks" => 604_800.0,
                    "days" => 86_400.0,
                    "hours" => 3_600.0,
                    "minutes" => 60.0,
                    "seconds" => 1.0,
                    "milliseconds" => 0.001,
                    "microseconds" => 0.000_001,
                    other => {
                        return Err(format!(
                            "unknown timedelta field `{other}`; use weeks, days, hours, minutes, seconds, milliseconds"
                        ));
                    }
                };
                let n = v
                    .as_str()
                    .and_then(parse_float)
                    .ok_or_else(|| format!("timedelta field `{key}` must be a number"))?;
                secs += n * factor;
            }
            seconds(secs, "timedelta")
        }
        _ => Err(format!("expected a duration, found {}", node.kind())),
    }
}

/// Resolves a local date-time in `tz`; in a DST gap it moves forward, in a fold it takes the
/// first occurrence (as pendulum does).
pub fn local_to_utc(naive: NaiveDateTime, tz: Tz) -> DateTime<Utc> {
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(dt) => dt.with_timezone(&Utc),
        LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        LocalResult::None => {
            let later = naive + Duration::hours(1);
            match tz.from_local_datetime(&later) {
                LocalResult::Single(dt) | LocalResult::Ambiguous(dt, _) => dt.with_timezone(&Utc),
                LocalResult::None => Utc.from_utc_datetime(&naive),
            }
        }
    }
}

/// Parses a date or date-time. Naive values are in `tz`; relative ones (`2 days`) count back
/// from the start of today in `tz`, as dag-factory does.
pub fn parse_date(text: &str, tz: Tz, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let t = text.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M:%S%:z",
    ] {
        if let Ok(dt) = DateTime::parse_from_str(t, fmt) {
            return Ok(dt.with_timezone(&Utc));
        }
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(t, fmt) {
            return Ok(local_to_utc(naive, tz));
        }
    }
    if let Ok(date) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(local_to_utc(date.and_time(chrono::NaiveTime::MIN), tz));
    }
    if let Some(delta) = parse_relative(t) {
        let today = now.with_timezone(&tz).date_naive();
        let midnight = local_to_utc(today.and_time(chrono::NaiveTime::MIN), tz);
        return Ok(midnight - delta);
    }
    Err(format!(
        "invalid date `{text}`; use `2025-01-01`, `2025-01-01T06:00:00` (optionally with an offset) or a relative `2 days`"
    ))
}

/// dag-factory's relative form: `3 days`, `1 hour`, `30 minutes`, `10 seconds`.
fn parse_relative(text: &str) -> Option<Duration> {
    let mut parts = text.split_whitespace();
    let n = parse_int(parts.next()?)?;
    let unit = parts.next()?;
    if parts.next().is_some() || n < 0 {
        return None;
    }
    let secs = match unit.trim_end_matches('s').to_ascii_lowercase().as_str() {
        "second" => 1,
        "minute" => 60,
        "hour" => 3_600,
        "day" => 86_400,
        "week" => 604_800,
        _ => return None,
    };
    Some(Duration::seconds(n.checked_mul(secs)?))
}

/// Reads a date node: a string or a `datetime.datetime` / `datetime.date` mapping.
pub fn date_from_node(node: &Node, tz: Tz, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    match &node.value {
        Value::Scalar(s) => parse_date(&s.text, tz, now),
        Value::Map(_) => {
            let type_path = node.get("__type__").and_then(Node::as_str).unwrap_or("");
            if !matches!(
                type_path,
                "datetime.datetime" | "datetime.date" | "pendulum.datetime" | "pendulum.DateTime"
            ) {
                return Err(format!(
                    "a date mapping needs `__type__: datetime.datetime`, found `{type_path}`"
                ));
            }
            let field = |name: &str, default: i64| -> Result<i64, String> {
                match node.get(name) {
                    None => Ok(default),
                    Some(v) => v
                        .as_str()
                        .and_then(parse_int)
                        .ok_or_else(|| format!("date field `{name}` must be an integer")),
                }
            };
            let (y, mo, d) = (field("year", -1)?, field("month", 1)?, field("day", 1)?);
            let (h, mi, s) = (field("hour", 0)?, field("minute", 0)?, field("second", 0)?);
            let date = i32::try_from(y)
                .ok()
                .and_then(|y| {
                    NaiveDate::from_ymd_opt(y, u32::try_from(mo).ok()?, u32::try_from(d).ok()?)
                })
                .ok_or_else(|| format!("invalid date {y}-{mo}-{d}"))?;
            let time = chrono::NaiveTime::from_hms_opt(
                u32::try_from(h).unwrap_or(99),
                u32::try_from(mi).unwrap_or(99),
                u32::try_from(s).unwrap_or(99),
            )
            .ok_or_else(|| format!("invalid time {h}:{mi}:{s}"))?;
            Ok(local_to_utc(date.and_time(time), tz))
        }
        _ => Err(format!("expected a date, found {}", node.kind())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::{Limits, parse};

    #[test]
    fn durations() {
        for (text, secs) in [
            ("90s", 90),
            ("5m", 300),
            ("1h30m", 5400),
            ("1h 30m", 5400),
            ("2d", 172_800),
            ("1w", 604_800),
            ("300", 300),
            ("0", 0),
        ] {
            assert_eq!(parse_duration(text).unwrap().num_seconds(), secs, "{text}");
        }
        assert_eq!(parse_duration("250ms").unwrap().num_milliseconds(), 250);
        assert_eq!(parse_duration("1.5").unwrap().num_milliseconds(), 1500);
        for bad in ["", "5x", "m5", "-3", "1h-2m", "abc", "30m1h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timedelta_mapping() {
        let n = parse(
            "{__type__: datetime.timedelta, minutes: 5, seconds: 30}",
            0,
            Limits::default(),
        )
        .unwrap();
        assert_eq!(duration_from_node(&n).unwrap().num_seconds(), 330);
        let n = parse(
            "{__type__: datetime.timedelta, fortnights: 1}",
            0,
            Limits::default(),
        )
        .unwrap();
        assert!(duration_from_node(&n).unwrap_err().contains("fortnights"));
    }

    #[test]
    fn dates() {
        let now = Utc.with_ymd_and_hms(2025, 3, 10, 15, 0, 0).unwrap();
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let d = parse_date("2025-01-01", berlin, now).unwrap();
        assert_eq!(d, Utc.with_ymd_and_hms(2024, 12, 31, 23, 0, 0).unwrap());
        let d = parse_date("2025-01-01T06:00:00+00:00", berlin, now).unwrap();
        assert_eq!(d, Utc.with_ymd_and_hms(2025, 1, 1, 6, 0, 0).unwrap());
        let d = parse_date("2 days", Tz::UTC, now).unwrap();
        assert_eq!(d, Utc.with_ymd_and_hms(2025, 3, 8, 0, 0, 0).unwrap());
        assert!(parse_date("2025-13-01", Tz::UTC, now).is_err());
        assert!(parse_date("yesterday", Tz::UTC, now).is_err());
    }
}
