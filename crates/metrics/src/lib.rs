//! The process's Prometheus metrics: one registry per process, the families every layer
//! records into (the store its state changes, the scheduler its passes, the worker its
//! slots, the web server what it reads at scrape time), and the text exposition that
//! `/metrics` serves.
//!
//! Names are Airflow's metrics in Prometheus style (`scheduler_heartbeat` ->
//! `flow_scheduler_heartbeat_total`, `dagrun.schedule_delay.<dag_id>` ->
//! `flow_dagrun_schedule_delay_seconds{dag_id}`). Labels stay bounded: DAG ids, task ids,
//! pools, files, states and fixed hand-off names, never run ids or try numbers.

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The `Content-Type` of `/metrics` (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// A label set of `N` labels with fixed names.
pub type Labels<const N: usize> = [(&'static str, String); N];

/// A gauge holding a float (seconds, ratios).
pub type FloatGauge = Gauge<f64, AtomicU64>;

/// The hand-offs a task instance and a run go through, each a histogram series of
/// `flow_handoff_seconds`, so that a user sees where latency goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handoff {
    /// A run's creation (queued) to its start (running).
    RunQueuedToRunning,
    /// A task instance's trigger rule met (scheduled) to queued for a worker.
    TiScheduledToQueued,
    /// Queued to claimed by a worker (running).
    TiQueuedToRunning,
    /// Running to its outcome (the try's duration).
    TiRunningToFinished,
    /// The last upstream's outcome to this task instance being scheduled.
    TiUpstreamFinishedToScheduled,
}

impl Handoff {
    pub const ALL: [Handoff; 5] = [
        Handoff::RunQueuedToRunning,
        Handoff::TiScheduledToQueued,
        Handoff::TiQueuedToRunning,
        Handoff::TiRunningToFinished,
        Handoff::TiUpstreamFinishedToScheduled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Handoff::RunQueuedToRunning => "run_queued_to_running",
            Handoff::TiScheduledToQueued => "ti_scheduled_to_queued",
            Handoff::TiQueuedToRunning => "ti_queued_to_running",
            Handoff::TiRunningToFinished => "ti_running_to_finished",
            Handoff::TiUpstreamFinishedToScheduled => "ti_upstream_finished_to_scheduled",
        }
    }
}

/// Makes histograms with fixed buckets for a family.
#[derive(Debug, Clone, Copy)]
pub struct Buckets {
    start: f64,
    factor: f64,
    count: u16,
}

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(self.start, self.factor, self.count))
    }
}

/// Latencies from half a millisecond (flow's hand-offs) to about a minute (Airflow's).
const LATENCY: Buckets = Buckets {
    start: 0.0005,
    factor: 2.0,
    count: 18,
};

/// Run durations from a tenth of a second to about seven hours.
const RUN_DURATION: Buckets = Buckets {
    start: 0.1,
    factor: 4.0,
    count: 10,
};

/// Registers metrics and remembers the names they are exported under.
struct Register<'a> {
    registry: &'a mut Registry,
    names: &'a mut Vec<String>,
}

impl Register<'_> {
    fn add(&mut self, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
        self.names.push(name.to_owned());
        self.registry.register(name, help, metric);
    }

    /// A counter: exported with `_total`, as the text format wants.
    fn counter(
        &mut self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.names.push(format!("{name}_total"));
        self.registry.register(name, help, metric);
    }
}

/// Every metric this process records. Families the process does not use stay empty (a
/// scheduler exports no executor slots), so one dashboard reads every component.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The exported names (counters with `_total`), for checks of what reads them.
    names: Vec<String>,
    pub scheduler_heartbeat: Counter,
    pub scheduler_pass_duration: Histogram,
    pub dagrun_schedule_delay: Family<Labels<1>, Histogram, Buckets>,
    pub dagrun_duration: Family<Labels<2>, Histogram, Buckets>,
    pub handoff: Family<Labels<1>, Histogram, Buckets>,
    pub ti_start: Family<Labels<2>, Counter>,
    pub ti_finish: Family<Labels<3>, Counter>,
    pub zombies_killed: Counter,
    pub pool_open_slots: Family<Labels<1>, Gauge>,
    pub pool_used_slots: Family<Labels<1>, Gauge>,
    pub pool_queued_slots: Family<Labels<1>, Gauge>,
    pub executor_open_slots: Gauge,
    pub executor_running_tasks: Gauge,
    pub dag_processing_last_duration: Family<Labels<1>, FloatGauge>,
    pub dag_processing_import_errors: Gauge,
    pub dagbag_size: Gauge,
    pub triggers_running: Gauge,
    pub kafka_trigger_consumer_lag: Family<Labels<2>, Gauge>,
    pub callbacks: Family<Labels<2>, Counter>,
    pub asset_events: Counter,
    pub metadata_db_up: Gauge,
    pub task_instances: Family<Labels<1>, Gauge>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            scheduler_heartbeat: Counter::default(),
            scheduler_pass_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            dagrun_schedule_delay: Family::new_with_constructor(LATENCY),
            dagrun_duration: Family::new_with_constructor(RUN_DURATION),
            handoff: Family::new_with_constructor(LATENCY),
            ti_start: Family::default(),
            ti_finish: Family::default(),
            zombies_killed: Counter::default(),
            pool_open_slots: Family::default(),
            pool_used_slots: Family::default(),
            pool_queued_slots: Family::default(),
            executor_open_slots: Gauge::default(),
            executor_running_tasks: Gauge::default(),
            dag_processing_last_duration: Family::default(),
            dag_processing_import_errors: Gauge::default(),
            dagbag_size: Gauge::default(),
            triggers_running: Gauge::default(),
            kafka_trigger_consumer_lag: Family::default(),
            callbacks: Family::default(),
            asset_events: Counter::default(),
            metadata_db_up: Gauge::default(),
            task_instances: Family::default(),
            registry: Registry::default(),
            names: Vec::new(),
        };
        let mut names = Vec::new();
        let mut r = Register {
            registry: &mut registry,
            names: &mut names,
        };
        r.counter(
            "flow_scheduler_heartbeat",
            "Scheduler loop passes (Airflow's scheduler_heartbeat)",
            m.scheduler_heartbeat.clone(),
        );
        r.add(
            "flow_scheduler_pass_duration_seconds",
            "Time one scheduler pass took: runs created, rules evaluated, task instances queued",
            m.scheduler_pass_duration.clone(),
        );
        r.add(
            "flow_dagrun_schedule_delay_seconds",
            "A scheduled run's creation after it was due (Airflow's dagrun.schedule_delay)",
            m.dagrun_schedule_delay.clone(),
        );
        r.add(
            "flow_dagrun_duration_seconds",
            "Finished runs' durations by DAG and state (Airflow's dagrun.duration)",
            m.dagrun_duration.clone(),
        );
        r.add(
            "flow_handoff_seconds",
            "Latency of each hand-off of a run or task instance between flow's components",
            m.handoff.clone(),
        );
        r.counter(
            "flow_ti_start",
            "Tries started, by DAG and task (Airflow's ti.start)",
            m.ti_start.clone(),
        );
        r.counter(
            "flow_ti_finish",
            "Tries ended, by DAG, task and state (Airflow's ti.finish)",
            m.ti_finish.clone(),
        );
        r.counter(
            "flow_zombies_killed",
            "Task instances whose worker stopped heartbeating, rescued by the scheduler",
            m.zombies_killed.clone(),
        );
        r.add(
            "flow_pool_open_slots",
            "Free slots per pool",
            m.pool_open_slots.clone(),
        );
        r.add(
            "flow_pool_used_slots",
            "Slots per pool taken by running (and deferred, where counted) task instances",
            m.pool_used_slots.clone(),
        );
        r.add(
            "flow_pool_queued_slots",
            "Slots per pool wanted by queued task instances",
            m.pool_queued_slots.clone(),
        );
        r.add(
            "flow_executor_open_slots",
            "Free task slots of this process's worker",
            m.executor_open_slots.clone(),
        );
        r.add(
            "flow_executor_running_tasks",
            "Task instances this process's worker is running",
            m.executor_running_tasks.clone(),
        );
        r.add(
            "flow_dag_processing_last_duration_seconds",
            "Time the last parse of each DAG file took",
            m.dag_processing_last_duration.clone(),
        );
        r.add(
            "flow_dag_processing_import_errors",
            "DAG files that failed to load at the last parse",
            m.dag_processing_import_errors.clone(),
        );
        r.add(
            "flow_dagbag_size",
            "DAGs loaded from the dags folder at the last parse",
            m.dagbag_size.clone(),
        );
        r.add(
            "flow_triggers_running",
            "Deferred waits this process's triggerer is running",
            m.triggers_running.clone(),
        );
        r.add(
            "flow_kafka_trigger_consumer_lag",
            "Messages of each topic partition not yet read by Kafka triggers and sensors",
            m.kafka_trigger_consumer_lag.clone(),
        );
        r.counter(
            "flow_callbacks",
            "Callback attempts by event (on_failure_callback, ...) and outcome",
            m.callbacks.clone(),
        );
        r.counter(
            "flow_asset_events",
            "Asset events recorded (Airflow's asset.updates)",
            m.asset_events.clone(),
        );
        r.add(
            "flow_metadata_db_up",
            "1 when the metadata database answered this scrape's queries, 0 when it did not",
            m.metadata_db_up.clone(),
        );
        r.add(
            "flow_task_instances",
            "Task instances of active runs by state, at scrape time",
            m.task_instances.clone(),
        );
        Metrics {
            registry,
            names,
            ..m
        }
    }

    /// Observes one hand-off's latency; negative spans (clock skew between hosts) count as 0.
    pub fn observe_handoff(&self, handoff: Handoff, span: Duration) {
        self.handoff
            .get_or_create(&[("handoff", handoff.as_str().to_owned())])
            .observe(span.as_secs_f64());
    }

    /// Sets the Kafka trigger consumer lag of each (topic, partition, messages) read.
    pub fn set_kafka_lag(&self, lags: &[(String, i32, i64)]) {
        for (topic, partition, lag) in lags {
            self.kafka_trigger_consumer_lag
                .get_or_create(&[
                    ("topic", topic.clone()),
                    ("partition", partition.to_string()),
                ])
                .set(*lag);
        }
    }

    /// The names every metric is exported under (counters with `_total`).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would be a bug in a label.
        if prometheus_text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Seconds from `from` to `to` in microseconds since the epoch, 0 when negative.
pub fn span_us(from_us: i64, to_us: i64) -> Duration {
    Duration::from_micros(u64::try_from(to_us.saturating_sub(from_us)).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric `docs/grafana-dashboard.json` queries is one this registry exports (with
    /// the suffixes Prometheus adds: `_total`, `_bucket`, `_sum`, `_count`).
    #[test]
    fn the_grafana_dashboard_reads_only_exported_metrics() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/grafana-dashboard.json"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let names: std::collections::BTreeSet<&str> =
            metrics().names().iter().map(String::as_str).collect();
        let mut used = 0;
        for (i, _) in text.match_indices("flow_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name == "flow_" || name == "flow_overview" {
                continue;
            }
            used += 1;
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(
                names.contains(base),
                "the dashboard reads `{name}`, which flow does not export ({names:?})"
            );
        }
        assert!(used > 10, "the dashboard queries flow's metrics");
    }

    #[test]
    fn exposition_parses_and_moves() {
        let m = metrics();
        m.scheduler_heartbeat.inc();
        m.ti_finish
            .get_or_create(&[
                ("dag_id", "etl".into()),
                ("task_id", "load \"x\"\n".into()),
                ("state", "success".into()),
            ])
            .inc();
        m.observe_handoff(Handoff::TiQueuedToRunning, Duration::from_millis(3));
        let text = m.encode();
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
        let finish = scrape
            .samples
            .iter()
            .find(|s| s.metric == "flow_ti_finish_total")
            .unwrap();
        assert_eq!(finish.labels.get("dag_id"), Some("etl"));
        assert!(
            text.contains(r#"task_id="load \"x\"\n""#),
            "label values are escaped: {text}"
        );
        let count = scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "flow_handoff_seconds_count"
                    && s.labels.get("handoff") == Some("ti_queued_to_running")
            })
            .unwrap();
        // The parser reads a histogram's `_count` line as an untyped sample.
        assert!(
            matches!(count.value, prometheus_parse::Value::Untyped(n) if n >= 1.0),
            "{:?}",
            count.value
        );
    }
}
