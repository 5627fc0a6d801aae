//! Pins the schedule semantics to Airflow's: every expected instant is written out in UTC,
//! worked out by hand from Airflow's `timetables/` code.

use super::*;
use chrono_tz::{America::New_York, Europe::Berlin};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn cron(expr: &str) -> Schedule {
    parse_schedule(expr).unwrap()
}

fn tt(schedule: &str, tz: Tz, kind: TimetableKind) -> Timetable {
    Timetable::new(parse_schedule(schedule).unwrap(), tz, kind)
}

fn utc_intervals(schedule: &str) -> Timetable {
    tt(schedule, chrono_tz::UTC, TimetableKind::DataInterval)
}

fn restriction(start: &str, catchup: bool) -> TimeRestriction {
    TimeRestriction {
        earliest: Some(t(start)),
        latest: None,
        catchup,
    }
}

fn logical_dates(runs: &[DagRunInfo]) -> Vec<String> {
    runs.iter()
        .map(|r| r.logical_date.format("%Y-%m-%dT%H:%MZ").to_string())
        .collect()
}

fn error(input: &str) -> String {
    parse_schedule(input).unwrap_err().to_string()
}

// ---------------------------------------------------------------- parsing

#[test]
fn none_and_simple_presets() {
    for s in ["", "  ", "none", "None", "NONE"] {
        assert_eq!(parse_schedule(s).unwrap(), Schedule::None, "{s:?}");
    }
    assert_eq!(parse_schedule("@once").unwrap(), Schedule::Once);
    assert_eq!(parse_schedule("@continuous").unwrap(), Schedule::Continuous);
}

#[test]
fn cron_presets_expand_to_airflows_expressions() {
    let cases = [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@quarterly", "0 0 1 */3 *"),
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@Daily", "0 0 * * *"),
    ];
    for (preset, expr) in cases {
        assert_eq!(
            parse_schedule(preset).unwrap(),
            Schedule::Cron { expr: expr.into() },
            "{preset}"
        );
    }
}

#[test]
fn cron_whitespace_is_normalized() {
    assert_eq!(
        parse_schedule("  0   3 *\t* *  ").unwrap(),
        Schedule::Cron {
            expr: "0 3 * * *".into()
        }
    );
}

#[test]
fn cron_syntax_croniter_accepts() {
    for expr in [
        "*/15 * * * *",
        "0 9-17 * * mon-fri",
        "0 0 * JAN,jul *",
        "0 22-2 * * *",
        "0 0 L * *",
        "0 0 1,15,L * *",
        "0 0 * * 5#3",
        "0 0 ? * 7",
        "5/10 * * * *",
        "0 0 * * 5-7",
    ] {
        assert!(
            parse_schedule(expr).is_ok(),
            "{expr}: {:?}",
            parse_schedule(expr)
        );
    }
}

#[test]
fn intervals() {
    let cases = [
        ("30m", Duration::minutes(30)),
        ("1h30m", Duration::minutes(90)),
        ("1h 30m", Duration::minutes(90)),
        ("90s", Duration::seconds(90)),
        ("2d", Duration::days(2)),
        ("1w", Duration::weeks(1)),
        ("300", Duration::seconds(300)),
        ("1d12h", Duration::hours(36)),
        ("500ms", Duration::milliseconds(500)),
    ];
    for (input, expected) in cases {
        assert_eq!(parse_duration(input).unwrap(), expected, "{input}");
        assert_eq!(parse_schedule(input).unwrap(), Schedule::Interval(expected));
    }
}

#[test]
fn bad_intervals_explain_themselves() {
    let cases = [
        ("", "empty"),
        ("0", "not zero"),
        ("0m", "not zero"),
        ("-5m", "must be positive"),
        ("1.5h", "fractions are not supported"),
        ("5x", "unknown unit `x`"),
        ("5M", "unknown unit `M`"),
        ("30m1h", "largest first"),
        ("1h1h", "largest first"),
        ("h", "expected a number"),
        ("99999999999999999999s", "too large"),
    ];
    for (input, needle) in cases {
        let message = parse_duration(input).unwrap_err().to_string();
        assert!(message.contains(needle), "{input:?}: {message}");
    }
    assert!(error("1.5h").contains("invalid interval `1.5h`"));
}

#[test]
fn durations_round_trip_through_format() {
    for s in ["30m", "1h30m", "90s", "1m30s", "2d", "1w", "1w1d", "500ms"] {
        let d = parse_duration(s).unwrap();
        assert_eq!(parse_duration(&format_duration(d)).unwrap(), d, "{s}");
    }
    assert_eq!(format_duration(Duration::seconds(90)), "1m30s");
    assert_eq!(format_duration(Duration::days(8)), "1w1d");
}

#[test]
fn bad_cron_fields_are_named() {
    let cases = [
        ("61 * * * *", "minute field `61` out of range 0-59"),
        ("* 24 * * *", "hour field `24` out of range 0-23"),
        ("0 0 0 * *", "day-of-month field `0` out of range 1-31"),
        ("0 0 32 * *", "day-of-month field `32` out of range 1-31"),
        ("0 0 * 13 *", "month field `13` out of range 1-12"),
        ("0 0 * * 8", "day-of-week field `8` out of range 0-7"),
        ("*/0 * * * *", "minute field `*/0`: step must be at least 1"),
        ("0 0 * foo *", "month field `foo` is not valid"),
        ("0 0 * * funday", "day-of-week field `funday` is not valid"),
        (
            "0 0 1,,2 * *",
            "day-of-month field `1,,2` has an empty list element",
        ),
        ("0 0 15W * *", "`W` (nearest weekday) is not supported"),
        (
            "0 0 * * 5L",
            "`L` (last weekday of the month) is not supported",
        ),
        ("0 0 * * 5#6", "occurrence after `#` must be 1-5"),
        (
            "0 0 1 * 5#2",
            "cannot be combined with a restricted day-of-month",
        ),
        (
            "H * * * *",
            "hashed and random (`H`, `R`) expressions are not supported",
        ),
        ("0 +1 * * *", "hour field `+1` is not valid"),
    ];
    for (input, needle) in cases {
        let message = error(input);
        assert!(message.contains(needle), "{input}: {message}");
        assert!(
            message.contains(&format!("`{input}`")),
            "{input}: {message}"
        );
    }
}

#[test]
fn wrong_field_counts() {
    let six = error("0 0 3 * * *");
    assert!(six.contains("has 6 fields"), "{six}");
    assert!(six.contains("seconds field is not supported"), "{six}");
    let seven = error("0 0 3 * * * 2025");
    assert!(seven.contains("has 7 fields"), "{seven}");
    let four = error("0 3 * *");
    assert!(four.contains("has 4 fields; expected 5 fields"), "{four}");
}

#[test]
fn impossible_dates_are_rejected() {
    let message = error("0 0 30 2 *");
    assert!(message.contains("never fires"), "{message}");
    assert!(parse_schedule("0 0 31 4,6 *").is_err());
    // Leap day exists, and with a weekday restriction the OR keeps the expression alive.
    assert!(parse_schedule("0 0 29 2 *").is_ok());
    assert!(parse_schedule("0 0 30 2 1").is_ok());
    assert!(parse_schedule("0 0 31 * *").is_ok());
}

#[test]
fn unknown_presets_and_unrecognized_tokens() {
    let message = error("@fortnightly");
    assert!(
        message.contains("unknown schedule preset `@fortnightly`"),
        "{message}"
    );
    let message = error("daily");
    assert!(message.contains("did you mean `@daily`?"), "{message}");
    let message = error("*/5");
    assert!(message.contains("needs 5 fields"), "{message}");
    assert!(error("weekly-ish").contains("invalid schedule `weekly-ish`"));
}

#[test]
fn schedule_display_round_trips() {
    for s in ["None", "@once", "@continuous", "0 3 * * *", "1h30m"] {
        let schedule = parse_schedule(s).unwrap();
        assert_eq!(schedule.to_string(), s);
        assert_eq!(parse_schedule(&schedule.to_string()).unwrap(), schedule);
    }
}

#[test]
fn timezone_names() {
    assert_eq!(parse_timezone("Europe/Berlin").unwrap(), Berlin);
    assert_eq!(parse_timezone("UTC").unwrap(), chrono_tz::UTC);
    assert!(
        parse_timezone("Mars/Olympus")
            .unwrap_err()
            .to_string()
            .contains("`Mars/Olympus`")
    );
}

// ---------------------------------------------------------------- cron ticks

/// The data-interval starts of a cron in `tz` from `start` (catchup on), i.e. its ticks.
fn ticks(expr: &str, tz: Tz, start: &str, n: usize) -> Vec<String> {
    let table = tt(expr, tz, TimetableKind::DataInterval);
    let runs = table.upcoming_runs(None, &restriction(start, true), t(start), n);
    runs.iter()
        .map(|r| r.logical_date.format("%Y-%m-%dT%H:%MZ").to_string())
        .collect()
}

#[test]
fn vixie_or_when_both_day_fields_are_restricted() {
    // 2025-10-01 is a Wednesday; Mondays are the 6th, 13th, 20th, 27th; Nov 1 is a Saturday.
    assert_eq!(
        ticks("0 0 1 * 1", chrono_tz::UTC, "2025-09-30T00:00:00Z", 7),
        [
            "2025-10-01T00:00Z",
            "2025-10-06T00:00Z",
            "2025-10-13T00:00Z",
            "2025-10-20T00:00Z",
            "2025-10-27T00:00Z",
            "2025-11-01T00:00Z",
            "2025-11-03T00:00Z",
        ]
    );
}

#[test]
fn croniter_star_rules_for_day_fields() {
    // croniter (unlike Vixie cron) treats `*/2` as a restriction, so it is OR-ed with Monday:
    // odd days, plus Monday the 6th.
    assert_eq!(
        ticks("0 0 */2 * 1", chrono_tz::UTC, "2025-09-30T12:00:00Z", 6),
        [
            "2025-10-01T00:00Z",
            "2025-10-03T00:00Z",
            "2025-10-05T00:00Z",
            "2025-10-06T00:00Z",
            "2025-10-07T00:00Z",
            "2025-10-09T00:00Z",
        ]
    );
    // With only one day field restricted, only that one counts.
    assert_eq!(
        ticks("0 0 * * mon", chrono_tz::UTC, "2025-10-01T00:00:00Z", 2),
        ["2025-10-06T00:00Z", "2025-10-13T00:00Z"]
    );
}

#[test]
fn last_day_and_nth_weekday() {
    assert_eq!(
        ticks("0 0 L * *", chrono_tz::UTC, "2024-01-15T00:00:00Z", 3),
        [
            "2024-01-31T00:00Z",
            "2024-02-29T00:00Z",
            "2024-03-31T00:00Z"
        ]
    );
    // Third Friday: 2025-01-17, 2025-02-21.
    assert_eq!(
        ticks("0 0 * * 5#3", chrono_tz::UTC, "2025-01-01T00:00:00Z", 2),
        ["2025-01-17T00:00Z", "2025-02-21T00:00Z"]
    );
}

#[test]
fn wrapping_ranges_and_start_steps() {
    assert_eq!(
        ticks("0 22-1 * * *", chrono_tz::UTC, "2025-01-01T12:00:00Z", 4),
        [
            "2025-01-01T22:00Z",
            "2025-01-01T23:00Z",
            "2025-01-02T00:00Z",
            "2025-01-02T01:00Z"
        ]
    );
    assert_eq!(
        ticks("5/20 * * * *", chrono_tz::UTC, "2025-01-01T00:00:00Z", 4),
        [
            "2025-01-01T00:05Z",
            "2025-01-01T00:25Z",
            "2025-01-01T00:45Z",
            "2025-01-01T01:05Z"
        ]
    );
}

#[test]
fn presets_align_start_date_up_to_the_first_tick() {
    // 2025-01-01 is a Wednesday; @weekly ticks on Sundays.
    let weekly = utc_intervals("@weekly");
    let first = weekly
        .next_dagrun_info(
            None,
            &restriction("2025-01-01T00:00:00Z", true),
            t("2026-01-01T00:00:00Z"),
        )
        .unwrap();
    assert_eq!(
        first,
        DagRunInfo::interval(t("2025-01-05T00:00:00Z"), t("2025-01-12T00:00:00Z"))
    );

    let monthly = utc_intervals("@monthly");
    let first = monthly
        .next_dagrun_info(
            None,
            &restriction("2025-01-15T10:00:00Z", true),
            t("2026-01-01T00:00:00Z"),
        )
        .unwrap();
    assert_eq!(
        first,
        DagRunInfo::interval(t("2025-02-01T00:00:00Z"), t("2025-03-01T00:00:00Z"))
    );

    let yearly = utc_intervals("@yearly");
    let first = yearly
        .next_dagrun_info(
            None,
            &restriction("2025-06-01T00:00:00Z", true),
            t("2030-01-01T00:00:00Z"),
        )
        .unwrap();
    assert_eq!(
        first,
        DagRunInfo::interval(t("2026-01-01T00:00:00Z"), t("2027-01-01T00:00:00Z"))
    );

    assert_eq!(
        ticks("@quarterly", chrono_tz::UTC, "2025-02-10T00:00:00Z", 3),
        [
            "2025-04-01T00:00Z",
            "2025-07-01T00:00Z",
            "2025-10-01T00:00Z"
        ]
    );

    // A start date exactly on a tick is its own first interval.
    let daily = utc_intervals("@daily");
    let first = daily
        .next_dagrun_info(
            None,
            &restriction("2025-01-01T00:00:00Z", true),
            t("2026-01-01T00:00:00Z"),
        )
        .unwrap();
    assert_eq!(first.logical_date, t("2025-01-01T00:00:00Z"));
}

#[test]
fn leap_day() {
    assert_eq!(
        ticks("0 0 29 2 *", chrono_tz::UTC, "2025-01-01T00:00:00Z", 2),
        ["2028-02-29T00:00Z", "2032-02-29T00:00Z"]
    );
}

#[test]
fn cron_is_read_on_the_dag_time_zone() {
    // 03:00 in Berlin is 02:00Z in winter and 01:00Z in summer.
    assert_eq!(
        ticks("0 3 * * *", Berlin, "2025-01-01T00:00:00Z", 1),
        ["2025-01-01T02:00Z"]
    );
    assert_eq!(
        ticks("0 3 * * *", Berlin, "2025-07-01T00:00:00Z", 1),
        ["2025-07-01T01:00Z"]
    );
}

// ---------------------------------------------------------------- DST (Airflow's _cron.py)

#[test]
fn fixed_hour_in_the_spring_forward_gap_moves_forward() {
    // Berlin 2025-03-30: 02:00 CET jumps to 03:00 CEST (01:00Z). "0 2 * * *" has no 02:00
    // that day; Airflow fires at 03:00 CEST = 01:00Z, then at 02:00 CEST = 00:00Z.
    let table = tt("0 2 * * *", Berlin, TimetableKind::DataInterval);
    let runs = table.upcoming_runs(
        None,
        &restriction("2025-03-29T00:00:00Z", true),
        t("2025-03-29T00:00:00Z"),
        3,
    );
    assert_eq!(
        runs.iter().map(|r| r.data_interval).collect::<Vec<_>>(),
        [
            DataInterval {
                start: t("2025-03-29T01:00:00Z"),
                end: t("2025-03-30T01:00:00Z")
            },
            DataInterval {
                start: t("2025-03-30T01:00:00Z"),
                end: t("2025-03-31T00:00:00Z")
            },
            DataInterval {
                start: t("2025-03-31T00:00:00Z"),
                end: t("2025-04-01T00:00:00Z")
            },
        ]
    );
}

#[test]
fn fixed_hour_in_the_fall_back_fold_fires_once_at_the_second_occurrence() {
    // New York 2025-11-02: 02:00 EDT falls back to 01:00 EST (06:00Z), so 01:30 happens at
    // 05:30Z and 06:30Z. Airflow's make_aware uses fold=1: the second one, 06:30Z.
    let table = tt("30 1 * * *", New_York, TimetableKind::DataInterval);
    let runs = table.upcoming_runs(
        None,
        &restriction("2025-11-01T00:00:00Z", true),
        t("2025-11-01T00:00:00Z"),
        3,
    );
    assert_eq!(
        logical_dates(&runs),
        [
            "2025-11-01T05:30Z",
            "2025-11-02T06:30Z",
            "2025-11-03T06:30Z"
        ]
    );
    assert_eq!(runs[0].run_after, t("2025-11-02T06:30:00Z"));
}

#[test]
fn hourly_cron_runs_every_real_hour_through_spring_forward() {
    // Berlin 2025-03-30: wall clock 01:00 CET (00:00Z) -> 03:00 CEST (01:00Z).
    let table = tt("0 * * * *", Berlin, TimetableKind::DataInterval);
    let runs = table.upcoming_runs(
        None,
        &restriction("2025-03-29T23:00:00Z", true),
        t("2025-03-29T23:00:00Z"),
        4,
    );
    assert_eq!(
        logical_dates(&runs),
        [
            "2025-03-29T23:00Z",
            "2025-03-30T00:00Z",
            "2025-03-30T01:00Z",
            "2025-03-30T02:00Z"
        ]
    );
    assert_eq!(runs[1].data_interval.end, t("2025-03-30T01:00:00Z"));
}

#[test]
fn hourly_cron_runs_the_fold_hour_twice_through_fall_back() {
    // Berlin 2025-10-26: 03:00 CEST (01:00Z) -> 02:00 CET. 02:00 local happens at 00:00Z
    // and 01:00Z; both run, one real hour apart.
    let table = tt("0 * * * *", Berlin, TimetableKind::DataInterval);
    let runs = table.upcoming_runs(
        None,
        &restriction("2025-10-25T23:00:00Z", true),
        t("2025-10-25T23:00:00Z"),
        4,
    );
    assert_eq!(
        logical_dates(&runs),
        [
            "2025-10-25T23:00Z",
            "2025-10-26T00:00Z",
            "2025-10-26T01:00Z",
            "2025-10-26T02:00Z"
        ]
    );
    // Half past, New York fall back (06:00Z): 01:30 EDT (05:30Z), 01:30 EST (06:30Z).
    let table = tt("30 * * * *", New_York, TimetableKind::DataInterval);
    let runs = table.upcoming_runs(
        None,
        &restriction("2025-11-02T04:00:00Z", true),
        t("2025-11-02T04:00:00Z"),
        4,
    );
    assert_eq!(
        logical_dates(&runs),
        [
            "2025-11-02T04:30Z",
            "2025-11-02T05:30Z",
            "2025-11-02T06:30Z",
            "2025-11-02T07:30Z"
        ]
    );
}

#[test]
fn trigger_kind_uses_the_same_dst_rules() {
    let table = tt("0 2 * * *", Berlin, TimetableKind::Trigger);
    let runs = table.upcoming_runs(
        None,
        &restriction("2025-03-29T00:00:00Z", true),
        t("2025-03-29T00:00:00Z"),
        3,
    );
    assert_eq!(
        logical_dates(&runs),
        [
            "2025-03-29T01:00Z",
            "2025-03-30T01:00Z",
            "2025-03-31T00:00Z"
        ]
    );
}

// ---------------------------------------------------------------- catchup and bounds

#[test]
fn catchup_creates_every_complete_interval() {
    let daily = utc_intervals("@daily");
    let runs = daily.due_runs(
        None,
        &restriction("2025-01-01T00:00:00Z", true),
        t("2025-01-10T12:00:00Z"),
        100,
    );
    assert_eq!(runs.len(), 9);
    assert_eq!(
        runs[0],
        DagRunInfo::interval(t("2025-01-01T00:00:00Z"), t("2025-01-02T00:00:00Z"))
    );
    assert_eq!(runs[8].logical_date, t("2025-01-09T00:00:00Z"));
    assert_eq!(runs[8].run_after, t("2025-01-10T00:00:00Z"));
    // The limit caps, and continuing from the last run picks up where it stopped.
    let first = daily.due_runs(
        None,
        &restriction("2025-01-01T00:00:00Z", true),
        t("2025-01-10T12:00:00Z"),
        4,
    );
    assert_eq!(first.len(), 4);
    let rest = daily.due_runs(
        Some(first[3].data_interval),
        &restriction("2025-01-01T00:00:00Z", true),
        t("2025-01-10T12:00:00Z"),
        100,
    );
    assert_eq!(rest.len(), 5);
    assert_eq!(rest[0].logical_date, t("2025-01-05T00:00:00Z"));
}

#[test]
fn no_catchup_skips_to_the_latest_complete_interval() {
    let daily = utc_intervals("@daily");
    let r = restriction("2025-01-01T00:00:00Z", false);
    let runs = daily.due_runs(None, &r, t("2025-01-10T12:00:00Z"), 100);
    assert_eq!(
        runs,
        [DagRunInfo::interval(
            t("2025-01-09T00:00:00Z"),
            t("2025-01-10T00:00:00Z")
        )]
    );
    // After a long pause, still only the latest.
    let runs = daily.due_runs(
        Some(runs[0].data_interval),
        &r,
        t("2025-01-20T08:00:00Z"),
        100,
    );
    assert_eq!(logical_dates(&runs), ["2025-01-19T00:00Z"]);
    // Exactly on a boundary the interval ending now is complete and due.
    let runs = daily.due_runs(None, &r, t("2025-01-10T00:00:00Z"), 100);
    assert_eq!(logical_dates(&runs), ["2025-01-09T00:00Z"]);
    // A start date in the future wins over skipping.
    let future = restriction("2025-02-01T00:00:00Z", false);
    let next = daily
        .next_dagrun_info(None, &future, t("2025-01-10T12:00:00Z"))
        .unwrap();
    assert_eq!(next.logical_date, t("2025-02-01T00:00:00Z"));
    assert!(
        daily
            .due_runs(None, &future, t("2025-01-10T12:00:00Z"), 10)
            .is_empty()
    );
}

#[test]
fn data_intervals_need_a_start_date_with_catchup() {
    let daily = utc_intervals("@daily");
    let r = TimeRestriction {
        earliest: None,
        latest: None,
        catchup: true,
    };
    assert_eq!(
        daily.next_dagrun_info(None, &r, t("2025-01-10T12:00:00Z")),
        None
    );
    // Without catchup Airflow skips to the latest interval even without a start date.
    let r = TimeRestriction {
        catchup: false,
        ..r
    };
    let next = daily
        .next_dagrun_info(None, &r, t("2025-01-10T12:00:00Z"))
        .unwrap();
    assert_eq!(next.logical_date, t("2025-01-09T00:00:00Z"));
}

#[test]
fn end_date_excludes_intervals_starting_after_it() {
    let daily = utc_intervals("@daily");
    // Airflow compares the interval *start* with end_date: the interval starting exactly at
    // end_date still runs (and finishes a day later).
    let r = TimeRestriction {
        earliest: Some(t("2025-01-01T00:00:00Z")),
        latest: Some(t("2025-01-05T00:00:00Z")),
        catchup: true,
    };
    let runs = daily.due_runs(None, &r, t("2025-03-01T00:00:00Z"), 100);
    assert_eq!(runs.len(), 5);
    assert_eq!(runs[4].data_interval.end, t("2025-01-06T00:00:00Z"));
    let r = TimeRestriction {
        latest: Some(t("2025-01-04T12:00:00Z")),
        ..r
    };
    let runs = daily.due_runs(None, &r, t("2025-03-01T00:00:00Z"), 100);
    assert_eq!(logical_dates(&runs).last().unwrap(), "2025-01-04T00:00Z");
    assert_eq!(runs.len(), 4);
}

#[test]
fn a_changed_schedule_realigns_the_next_interval() {
    // The last run was hourly and ended at 10:30; the DAG is now daily. Airflow aligns the
    // previous end back to the new grid: the next interval starts at midnight.
    let daily = utc_intervals("@daily");
    let last = DataInterval {
        start: t("2025-01-05T09:30:00Z"),
        end: t("2025-01-05T10:30:00Z"),
    };
    let next = daily
        .next_dagrun_info(
            Some(last),
            &restriction("2025-01-01T00:00:00Z", true),
            t("2025-01-05T11:00:00Z"),
        )
        .unwrap();
    assert_eq!(
        next,
        DagRunInfo::interval(t("2025-01-05T00:00:00Z"), t("2025-01-06T00:00:00Z"))
    );
}

// ---------------------------------------------------------------- intervals

#[test]
fn intervals_are_anchored_at_the_start_date() {
    let every = utc_intervals("30m");
    let r = restriction("2025-01-01T00:10:00Z", true);
    let runs = every.due_runs(None, &r, t("2025-01-01T01:45:00Z"), 100);
    assert_eq!(
        runs.iter().map(|r| r.data_interval).collect::<Vec<_>>(),
        [
            DataInterval {
                start: t("2025-01-01T00:10:00Z"),
                end: t("2025-01-01T00:40:00Z")
            },
            DataInterval {
                start: t("2025-01-01T00:40:00Z"),
                end: t("2025-01-01T01:10:00Z")
            },
            DataInterval {
                start: t("2025-01-01T01:10:00Z"),
                end: t("2025-01-01T01:40:00Z")
            },
        ]
    );
}

#[test]
fn intervals_without_catchup_realign_to_the_epoch_grid() {
    // Airflow's DeltaDataIntervalTimetable._skip_to_latest rounds now down to a multiple of
    // the interval since 1970, then steps back one interval.
    let every = utc_intervals("30m");
    let r = restriction("2025-01-01T00:10:00Z", false);
    let runs = every.due_runs(None, &r, t("2025-01-01T12:05:00Z"), 100);
    assert_eq!(
        runs,
        [DagRunInfo::interval(
            t("2025-01-01T11:30:00Z"),
            t("2025-01-01T12:00:00Z")
        )]
    );
}

#[test]
fn interval_days_are_elapsed_time_across_dst() {
    let every = tt("1d", Berlin, TimetableKind::DataInterval);
    let runs = every.upcoming_runs(
        None,
        &restriction("2025-03-29T23:00:00Z", true),
        t("2025-03-29T23:00:00Z"),
        2,
    );
    assert_eq!(
        logical_dates(&runs),
        ["2025-03-29T23:00Z", "2025-03-30T23:00Z"]
    );
}

// ---------------------------------------------------------------- @once, @continuous, None

#[test]
fn once_runs_exactly_once_at_the_start_date() {
    let once = utc_intervals("@once");
    for catchup in [true, false] {
        let r = restriction("2025-01-01T06:00:00Z", catchup);
        let runs = once.due_runs(None, &r, t("2025-02-01T00:00:00Z"), 10);
        assert_eq!(runs, [DagRunInfo::exact(t("2025-01-01T06:00:00Z"))]);
        assert_eq!(
            once.next_dagrun_info(Some(runs[0].data_interval), &r, t("2025-03-01T00:00:00Z")),
            None
        );
    }
    // Without a start date: now.
    let r = TimeRestriction::default();
    assert_eq!(
        once.next_dagrun_info(None, &r, t("2025-01-01T06:00:00Z")),
        Some(DagRunInfo::exact(t("2025-01-01T06:00:00Z")))
    );
    // An end date before the start date: never.
    let r = TimeRestriction {
        latest: Some(t("2024-12-31T00:00:00Z")),
        ..restriction("2025-01-01T00:00:00Z", true)
    };
    assert_eq!(
        once.next_dagrun_info(None, &r, t("2025-02-01T00:00:00Z")),
        None
    );
}

#[test]
fn continuous_runs_one_at_a_time_whenever_asked() {
    let continuous = utc_intervals("@continuous");
    let r = restriction("2025-01-01T00:00:00Z", false);
    let now = t("2025-01-10T12:00:00Z");
    let runs = continuous.due_runs(None, &r, now, 10);
    assert_eq!(runs, [DagRunInfo::interval(t("2025-01-01T00:00:00Z"), now)]);
    let later = t("2025-01-10T12:07:00Z");
    let next = continuous.due_runs(Some(runs[0].data_interval), &r, later, 10);
    assert_eq!(next, [DagRunInfo::interval(now, later)]);
    // A future start date: the first run waits for it, zero-width.
    let r = restriction("2025-02-01T00:00:00Z", true);
    assert!(continuous.due_runs(None, &r, now, 10).is_empty());
    assert_eq!(
        continuous.next_dagrun_info(None, &r, now),
        Some(DagRunInfo::exact(t("2025-02-01T00:00:00Z")))
    );
    // Past the end date: stop.
    let r = TimeRestriction {
        latest: Some(t("2025-01-05T00:00:00Z")),
        ..restriction("2025-01-01T00:00:00Z", true)
    };
    assert_eq!(continuous.next_dagrun_info(None, &r, now), None);
    assert_eq!(
        continuous
            .upcoming_runs(None, &restriction("2025-01-01T00:00:00Z", true), now, 5)
            .len(),
        1
    );
}

#[test]
fn none_never_schedules() {
    let none = utc_intervals("none");
    let r = restriction("2025-01-01T00:00:00Z", true);
    assert_eq!(
        none.next_dagrun_info(None, &r, t("2025-02-01T00:00:00Z")),
        None
    );
    assert!(
        none.due_runs(None, &r, t("2025-02-01T00:00:00Z"), 10)
            .is_empty()
    );
    assert!(
        none.runs_in_range(t("2025-01-01T00:00:00Z"), t("2025-02-01T00:00:00Z"), 10)
            .is_empty()
    );
}

// ---------------------------------------------------------------- trigger kind

#[test]
fn trigger_runs_are_zero_width_at_each_tick() {
    let hourly = tt("@hourly", chrono_tz::UTC, TimetableKind::Trigger);
    let r = restriction("2025-01-01T00:00:00Z", true);
    let runs = hourly.due_runs(None, &r, t("2025-01-01T02:30:00Z"), 10);
    assert_eq!(
        runs,
        [
            DagRunInfo::exact(t("2025-01-01T00:00:00Z")),
            DagRunInfo::exact(t("2025-01-01T01:00:00Z")),
            DagRunInfo::exact(t("2025-01-01T02:00:00Z")),
        ]
    );
    // Catchup counts the tick at the start date itself: ten daily ticks by 2025-01-10.
    let daily = tt("@daily", chrono_tz::UTC, TimetableKind::Trigger);
    assert_eq!(
        daily
            .due_runs(None, &r, t("2025-01-10T12:00:00Z"), 100)
            .len(),
        10
    );
}

#[test]
fn trigger_without_catchup_starts_at_the_latest_tick() {
    let hourly = tt("0 * * * *", chrono_tz::UTC, TimetableKind::Trigger);
    let r = restriction("2025-01-01T00:00:00Z", false);
    let runs = hourly.due_runs(None, &r, t("2025-01-10T12:34:00Z"), 10);
    assert_eq!(runs, [DagRunInfo::exact(t("2025-01-10T12:00:00Z"))]);
    // After a pause, skip the missed ticks.
    let runs = hourly.due_runs(
        Some(runs[0].data_interval),
        &r,
        t("2025-01-10T17:10:00Z"),
        10,
    );
    assert_eq!(runs, [DagRunInfo::exact(t("2025-01-10T17:00:00Z"))]);
    // Not yet due: the next tick.
    let next = hourly
        .next_dagrun_info(Some(runs[0].data_interval), &r, t("2025-01-10T17:10:00Z"))
        .unwrap();
    assert_eq!(next, DagRunInfo::exact(t("2025-01-10T18:00:00Z")));
}

#[test]
fn trigger_first_run_without_start_date_uses_airflows_buffer() {
    // Within max(10% of the gap, 5 minutes) of the previous tick: run that tick now.
    let hourly = tt("0 * * * *", chrono_tz::UTC, TimetableKind::Trigger);
    let r = TimeRestriction::default();
    assert_eq!(
        hourly.next_dagrun_info(None, &r, t("2025-01-10T12:03:00Z")),
        Some(DagRunInfo::exact(t("2025-01-10T12:00:00Z")))
    );
    // Later than that: wait for the next tick.
    assert_eq!(
        hourly.next_dagrun_info(None, &r, t("2025-01-10T12:30:00Z")),
        Some(DagRunInfo::exact(t("2025-01-10T13:00:00Z")))
    );
}

#[test]
fn trigger_end_date_compares_the_tick() {
    let daily = tt("@daily", chrono_tz::UTC, TimetableKind::Trigger);
    let r = TimeRestriction {
        earliest: Some(t("2025-01-01T00:00:00Z")),
        latest: Some(t("2025-01-03T00:00:00Z")),
        catchup: true,
    };
    let runs = daily.due_runs(None, &r, t("2025-02-01T00:00:00Z"), 100);
    assert_eq!(
        logical_dates(&runs),
        [
            "2025-01-01T00:00Z",
            "2025-01-02T00:00Z",
            "2025-01-03T00:00Z"
        ]
    );
}

#[test]
fn trigger_intervals_follow_delta_trigger_timetable() {
    let every = tt("2h", chrono_tz::UTC, TimetableKind::Trigger);
    let r = restriction("2025-01-01T00:30:00Z", true);
    let runs = every.due_runs(None, &r, t("2025-01-01T05:00:00Z"), 10);
    assert_eq!(
        logical_dates(&runs),
        [
            "2025-01-01T00:30Z",
            "2025-01-01T02:30Z",
            "2025-01-01T04:30Z"
        ]
    );
    // Without catchup an overdue interval runs right away, at now.
    let r = restriction("2025-01-01T00:30:00Z", false);
    let runs = every.due_runs(
        Some(runs[0].data_interval),
        &r,
        t("2025-01-01T05:00:00Z"),
        10,
    );
    assert_eq!(runs, [DagRunInfo::exact(t("2025-01-01T05:00:00Z"))]);
}

// ---------------------------------------------------------------- manual runs and backfill

#[test]
fn manual_runs_infer_the_last_complete_interval() {
    let daily = utc_intervals("@daily");
    assert_eq!(
        daily.infer_manual_data_interval(t("2025-01-25T01:00:00Z")),
        DataInterval {
            start: t("2025-01-24T00:00:00Z"),
            end: t("2025-01-25T00:00:00Z")
        }
    );
    // On a tick, the interval ending at that tick.
    assert_eq!(
        daily.infer_manual_data_interval(t("2025-01-25T00:00:00Z")),
        DataInterval {
            start: t("2025-01-24T00:00:00Z"),
            end: t("2025-01-25T00:00:00Z")
        }
    );
    let every = utc_intervals("30m");
    assert_eq!(
        every.infer_manual_data_interval(t("2025-01-25T01:07:00Z")),
        DataInterval {
            start: t("2025-01-25T00:37:00Z"),
            end: t("2025-01-25T01:07:00Z")
        }
    );
    let trigger = tt("@daily", chrono_tz::UTC, TimetableKind::Trigger);
    let at = t("2025-01-25T01:07:00Z");
    assert_eq!(
        trigger.infer_manual_data_interval(at),
        DataInterval::exact(at)
    );
    for s in ["none", "@once", "@continuous"] {
        assert_eq!(
            utc_intervals(s).infer_manual_data_interval(at),
            DataInterval::exact(at)
        );
    }
}

#[test]
fn backfill_covers_logical_dates_in_the_range() {
    let daily = utc_intervals("@daily");
    let runs = daily.runs_in_range(t("2025-01-01T06:00:00Z"), t("2025-01-05T00:00:00Z"), 100);
    assert_eq!(
        logical_dates(&runs),
        [
            "2025-01-02T00:00Z",
            "2025-01-03T00:00Z",
            "2025-01-04T00:00Z",
            "2025-01-05T00:00Z"
        ]
    );
    assert_eq!(
        daily
            .runs_in_range(t("2025-01-01T00:00:00Z"), t("2025-12-31T00:00:00Z"), 7)
            .len(),
        7
    );
    let trigger = tt("@daily", chrono_tz::UTC, TimetableKind::Trigger);
    assert_eq!(
        trigger.runs_in_range(t("2025-01-01T00:00:00Z"), t("2025-01-03T00:00:00Z"), 100),
        [
            DagRunInfo::exact(t("2025-01-01T00:00:00Z")),
            DagRunInfo::exact(t("2025-01-02T00:00:00Z")),
            DagRunInfo::exact(t("2025-01-03T00:00:00Z")),
        ]
    );
    let once = utc_intervals("@once");
    assert_eq!(
        once.runs_in_range(t("2025-01-01T00:00:00Z"), t("2025-01-03T00:00:00Z"), 100),
        [DagRunInfo::exact(t("2025-01-01T00:00:00Z"))]
    );
    assert!(
        utc_intervals("@continuous")
            .runs_in_range(t("2025-01-01T00:00:00Z"), t("2025-01-03T00:00:00Z"), 100)
            .is_empty()
    );
    assert!(
        daily
            .runs_in_range(t("2025-01-03T00:00:00Z"), t("2025-01-01T00:00:00Z"), 100)
            .is_empty()
    );
}

#[test]
fn upcoming_runs_list_future_ticks() {
    let table = tt("0 3 * * *", Berlin, TimetableKind::DataInterval);
    let r = restriction("2025-01-01T00:00:00Z", false);
    let runs = table.upcoming_runs(None, &r, t("2025-01-10T12:00:00Z"), 3);
    // The latest complete interval (due now), then the next two.
    assert_eq!(
        logical_dates(&runs),
        [
            "2025-01-09T02:00Z",
            "2025-01-10T02:00Z",
            "2025-01-11T02:00Z"
        ]
    );
    assert_eq!(runs[1].run_after, t("2025-01-11T02:00:00Z"));
}

// ---------------------------------------------------------------- summary and validation

#[test]
fn summaries() {
    assert_eq!(
        tt("0 3 * * *", Berlin, TimetableKind::DataInterval).summary(),
        "0 3 * * * (Europe/Berlin)"
    );
    assert_eq!(utc_intervals("@daily").summary(), "0 0 * * * (UTC)");
    assert_eq!(utc_intervals("30m").summary(), "every 30m");
    assert_eq!(utc_intervals("@once").summary(), "@once");
    assert_eq!(utc_intervals("@continuous").summary(), "@continuous");
    assert_eq!(utc_intervals("").summary(), "None");
}

#[test]
fn hand_built_invalid_schedules_never_run() {
    let bad = Timetable::new(
        cron("0 0 * * *"),
        chrono_tz::UTC,
        TimetableKind::DataInterval,
    );
    assert!(bad.validate().is_ok());
    let bad = Timetable::new(
        Schedule::Cron {
            expr: "61 * * * *".into(),
        },
        chrono_tz::UTC,
        TimetableKind::DataInterval,
    );
    assert!(bad.validate().is_err());
    let r = restriction("2025-01-01T00:00:00Z", true);
    assert_eq!(
        bad.next_dagrun_info(None, &r, t("2025-02-01T00:00:00Z")),
        None
    );
    let at = t("2025-02-01T00:00:00Z");
    assert_eq!(bad.infer_manual_data_interval(at), DataInterval::exact(at));
    let zero = Timetable::new(
        Schedule::Interval(Duration::zero()),
        chrono_tz::UTC,
        TimetableKind::DataInterval,
    );
    assert!(zero.validate().is_err());
    assert!(zero.due_runs(None, &r, at, 10).is_empty());
}

#[test]
fn extreme_instants_do_not_panic() {
    let extremes = [DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC];
    for schedule in ["@daily", "0 * * * *", "30m", "@once", "@continuous", "none"] {
        for kind in [TimetableKind::DataInterval, TimetableKind::Trigger] {
            let table = tt(schedule, Berlin, kind);
            for now in extremes {
                for catchup in [true, false] {
                    let r = TimeRestriction {
                        earliest: Some(now),
                        latest: Some(now),
                        catchup,
                    };
                    let _ = table.due_runs(None, &r, now, 3);
                    let _ = table.upcoming_runs(None, &TimeRestriction::default(), now, 3);
                    let _ = table.infer_manual_data_interval(now);
                    let _ = table.runs_in_range(now, now, 3);
                }
            }
        }
    }
}

#[test]
fn minutely_catchup_over_a_week() {
    let minutely = utc_intervals("* * * * *");
    let r = restriction("2024-02-26T00:00:00Z", true);
    let runs = minutely.due_runs(None, &r, t("2024-03-04T00:00:00Z"), 100_000);
    // Through the leap day: 7 days of minutes, each interval one minute wide.
    assert_eq!(runs.len(), 7 * 24 * 60);
    assert!(
        runs.iter()
            .all(|r| r.run_after - r.logical_date == Duration::minutes(1))
    );
}
