//! What every sensor shares: how it waits (`mode`, `deferrable`), how often it looks
//! (`poke_interval`) and how long it may take (`timeout`, `soft_fail`). A sensor's own spec
//! holds only its own keys; the registry adds these.

use chrono::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::build::{Ctx, read_duration, read_spec};
use crate::dag::{millis, millis_opt};
use crate::spec::{DurationSpec, Raw};
use crate::yaml::{Node, Span};

/// The keys every sensor takes besides its own.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SensorSpec {
    /// `poke` (hold a worker slot), `reschedule` (free it between pokes) or `deferrable`.
    pub mode: Option<String>,
    /// Airflow's switch for deferrable mode.
    pub deferrable: Option<bool>,
    /// How often to look (default 60s).
    #[schemars(with = "Option<serde_json::Value>")]
    pub poke_interval: Option<Raw<DurationSpec>>,
    /// Fail (or skip, with `soft_fail`) when the condition is not met after this long
    /// (default 7 days).
    #[schemars(with = "Option<serde_json::Value>")]
    pub timeout: Option<Raw<DurationSpec>>,
    pub soft_fail: Option<bool>,
    /// Double the wait after each poke that is not yet, with jitter (default false).
    pub exponential_backoff: Option<bool>,
    /// The longest wait between pokes with `exponential_backoff`.
    #[schemars(with = "Option<serde_json::Value>")]
    pub max_wait: Option<Raw<DurationSpec>>,
}

/// The names of [`SensorSpec`]'s keys.
pub(crate) static FIELDS: &[&str] = &[
    "mode",
    "deferrable",
    "poke_interval",
    "timeout",
    "soft_fail",
    "exponential_backoff",
    "max_wait",
];

/// How a sensor waits (Airflow's `mode`, with `deferrable` as a third mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensorMode {
    /// Holds its worker slot for the whole wait.
    Poke,
    /// Frees the slot between pokes (state `up_for_reschedule`).
    Reschedule,
    /// Hands the wait to the triggerer (state `deferred`); no slot, no process.
    Deferrable,
}

impl SensorMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "poke" => Some(Self::Poke),
            "reschedule" => Some(Self::Reschedule),
            "deferrable" | "defer" => Some(Self::Deferrable),
            _ => None,
        }
    }
}

/// Settings every sensor has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sensor {
    pub mode: SensorMode,
    #[serde(with = "millis")]
    pub poke_interval: Duration,
    #[serde(with = "millis")]
    pub timeout: Duration,
    /// On timeout: skipped instead of failed.
    pub soft_fail: bool,
    /// Poke intervals grow exponentially (Airflow's `exponential_backoff`).
    #[serde(default)]
    pub exponential_backoff: bool,
    /// Caps the grown interval.
    #[serde(default, with = "millis_opt")]
    pub max_wait: Option<Duration>,
}

impl Sensor {
    /// The wait after the `poke`-th poke that was not yet done (1-based): `poke_interval`, or
    /// with `exponential_backoff` Airflow's doubling with a deterministic jitter
    /// (`min + seed % min` for `min = poke_interval * 2^(poke-1)`), capped by `max_wait`.
    pub fn next_interval(&self, poke: u32, seed: u64) -> Duration {
        if !self.exponential_backoff {
            return self.poke_interval;
        }
        let base = self.poke_interval.num_milliseconds().max(1000);
        let factor = 1i64 << poke.saturating_sub(1).min(20);
        let min = base.saturating_mul(factor);
        let jittered =
            min.saturating_add(i64::try_from(seed % u64::try_from(min).unwrap_or(1)).unwrap_or(0));
        let wait = Duration::milliseconds(jittered);
        match self.max_wait {
            Some(max) => wait.min(max),
            None => wait,
        }
    }
}

/// The settings every sensor shares: `mode` (or `deferrable: true`), `poke_interval`,
/// `timeout`, `soft_fail`. Airflow's defaults: poke every 60 s, time out after 7 days. Read from
/// the sensor keys of a task, type-checked by [`SensorSpec`] first.
pub(crate) fn read(
    ctx: &mut Ctx<'_>,
    node: &Node,
    fallback: Span,
    async_alias: bool,
) -> Option<Sensor> {
    let spec: SensorSpec = read_spec(ctx, node, fallback)?;
    let (mode, deferrable) = (spec.mode.as_deref(), spec.deferrable);
    let span_of = |key: &str| node.get(key).map_or(fallback, |n| n.span);
    let mode = match (mode, deferrable) {
        (Some(m), Some(true)) if m != "deferrable" => {
            ctx.error(
                span_of("deferrable"),
                format!("`deferrable: true` contradicts `mode: {m}`"),
            );
            SensorMode::Deferrable
        }
        (_, Some(true)) => SensorMode::Deferrable,
        (Some(m), _) => SensorMode::parse(m).unwrap_or_else(|| {
            ctx.error(
                span_of("mode"),
                format!("`mode`: unknown mode `{m}`; valid modes: poke, reschedule, deferrable"),
            );
            SensorMode::Poke
        }),
        (None, _) if async_alias => SensorMode::Deferrable,
        (None, _) => SensorMode::Poke,
    };
    let poke_interval = spec
        .poke_interval
        .and_then(|r| read_duration(ctx, &r.node, "poke_interval"))
        .unwrap_or_else(|| Duration::seconds(60));
    if poke_interval <= Duration::zero() {
        ctx.error(
            span_of("poke_interval"),
            "`poke_interval` must be longer than zero",
        );
    }
    let timeout = spec
        .timeout
        .and_then(|r| read_duration(ctx, &r.node, "timeout"))
        .unwrap_or_else(|| Duration::days(7));
    let max_wait = spec
        .max_wait
        .and_then(|r| read_duration(ctx, &r.node, "max_wait"));
    if let Some(m) = max_wait
        && m <= Duration::zero()
    {
        ctx.error(span_of("max_wait"), "`max_wait` must be longer than zero");
    }
    Some(Sensor {
        mode,
        poke_interval,
        timeout,
        soft_fail: spec.soft_fail.unwrap_or(false),
        exponential_backoff: spec.exponential_backoff.unwrap_or(false),
        max_wait,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::field_names;

    #[test]
    fn fields_match_the_spec() {
        assert_eq!(field_names::<SensorSpec>(), FIELDS);
    }

    #[test]
    fn exponential_backoff_doubles_with_jitter_and_caps() {
        let mut s = Sensor {
            mode: SensorMode::Poke,
            poke_interval: Duration::seconds(2),
            timeout: Duration::days(1),
            soft_fail: false,
            exponential_backoff: false,
            max_wait: None,
        };
        assert_eq!(s.next_interval(5, 123), Duration::seconds(2));
        s.exponential_backoff = true;
        let first = s.next_interval(1, 500);
        assert_eq!(first, Duration::milliseconds(2500));
        let fourth = s.next_interval(4, 0);
        assert_eq!(fourth, Duration::seconds(16));
        s.max_wait = Some(Duration::seconds(10));
        assert_eq!(s.next_interval(4, 0), Duration::seconds(10));
    }
}
