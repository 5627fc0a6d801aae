//! Task instance states, dag run states and dag run types, with Airflow's exact strings and UI
//! colours.
//!
//! These strings are stored in the database and returned by the REST API, so they must be
//! Airflow's byte for byte. Which state may follow which lives in `transition`, not here.

use crate::string_enum::string_enum;

string_enum! {
    /// The state of one try of one task in one dag run (Airflow's `TaskInstanceState`, plus
    /// `none`, which Airflow stores as SQL `NULL`).
    pub enum TaskInstanceState as "task instance state" {
        /// Created with its dag run, waiting for its trigger rule. Airflow's `None`; the variant
        /// has another name so it cannot be confused with `Option::None`.
        NoStatus => "none",
        /// Dependencies met; waiting for a free slot.
        Scheduled => "scheduled",
        /// Handed to the workers; waiting to be claimed.
        Queued => "queued",
        /// Claimed by a worker, which heartbeats while it runs.
        Running => "running",
        Success => "success",
        /// Cleared while running: the worker kills it and runs it again.
        Restarting => "restarting",
        Failed => "failed",
        /// Failed with tries left; scheduled again after `retry_delay`.
        UpForRetry => "up_for_retry",
        /// A sensor in reschedule mode waiting for its next poke.
        UpForReschedule => "up_for_reschedule",
        /// Its trigger rule can no longer be met because upstream tasks failed.
        UpstreamFailed => "upstream_failed",
        Skipped => "skipped",
        /// Waiting on a trigger run by the triggerer, holding no worker slot.
        Deferred => "deferred",
        /// Its task was deleted from the DAG after the run was created.
        Removed => "removed",
        /// A running task asked externally to stop; its worker kills it.
        Shutdown => "shutdown",
    }
}

impl TaskInstanceState {
    /// Whether nothing more will happen to this task instance unless someone clears it
    /// (Airflow's `State.finished`).
    pub const fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Success | Self::Failed | Self::Skipped | Self::UpstreamFailed | Self::Removed
        )
    }

    /// The complement of [`is_finished`](Self::is_finished) (Airflow's `State.unfinished`,
    /// plus `shutdown`, which always moves on to `failed` or `up_for_retry`).
    pub const fn is_unfinished(self) -> bool {
        !self.is_finished()
    }

    /// The one state that stands for several task instances (a mapped task's, in the grid),
    /// by Airflow's priority: trouble first (failed, upstream_failed, retries), then work in
    /// progress, then no state, then the calm endings. `None` for no instances.
    pub fn summary(states: impl IntoIterator<Item = Self>) -> Option<Self> {
        const PRIORITY: [TaskInstanceState; 14] = [
            TaskInstanceState::Failed,
            TaskInstanceState::UpstreamFailed,
            TaskInstanceState::UpForRetry,
            TaskInstanceState::UpForReschedule,
            TaskInstanceState::Queued,
            TaskInstanceState::Scheduled,
            TaskInstanceState::Deferred,
            TaskInstanceState::Running,
            TaskInstanceState::Restarting,
            TaskInstanceState::Shutdown,
            TaskInstanceState::NoStatus,
            TaskInstanceState::Success,
            TaskInstanceState::Skipped,
            TaskInstanceState::Removed,
        ];
        let present: Vec<Self> = states.into_iter().collect();
        PRIORITY.into_iter().find(|s| present.contains(s))
    }

    /// The CSS colour name Airflow's UI shows for this state (Airflow's `State.state_color`).
    pub const fn color(self) -> &'static str {
        match self {
            Self::NoStatus => "lightblue",
            Self::Scheduled => "tan",
            Self::Queued => "gray",
            Self::Running => "lime",
            Self::Success => "green",
            Self::Restarting => "violet",
            Self::Failed => "red",
            Self::UpForRetry => "gold",
            Self::UpForReschedule => "turquoise",
            Self::UpstreamFailed => "orange",
            Self::Skipped => "hotpink",
            Self::Deferred => "mediumpurple",
            Self::Removed => "lightgrey",
            // Airflow dropped `shutdown` from its colour map; older Airflow UIs showed it blue.
            Self::Shutdown => "blue",
        }
    }
}

string_enum! {
    /// The state of a dag run: `queued -> running -> success | failed`.
    pub enum DagRunState as "dag run state" {
        /// Created but not started, e.g. held back by `max_active_runs`.
        Queued => "queued",
        Running => "running",
        Success => "success",
        Failed => "failed",
    }
}

impl DagRunState {
    /// Whether the run is over (Airflow's `State.finished_dr_states`).
    pub const fn is_finished(self) -> bool {
        matches!(self, Self::Success | Self::Failed)
    }

    /// The complement of [`is_finished`](Self::is_finished).
    pub const fn is_unfinished(self) -> bool {
        !self.is_finished()
    }

    /// The UI colour; Airflow uses the task instance colour of the state with the same name.
    pub const fn color(self) -> &'static str {
        match self {
            Self::Queued => "gray",
            Self::Running => "lime",
            Self::Success => "green",
            Self::Failed => "red",
        }
    }
}

string_enum! {
    /// Why a dag run exists. The string is also the prefix of the run ids flow generates.
    pub enum DagRunType as "dag run type" {
        /// Created by the scheduler for a schedule tick.
        Scheduled => "scheduled",
        /// Triggered from the UI, API or CLI.
        Manual => "manual",
        /// Created by `flow dags backfill`.
        Backfill => "backfill",
        /// Triggered by an event such as a Kafka message (Airflow's `asset_triggered` plays
        /// this part).
        Event => "event",
        /// Created by the scheduler when the assets a DAG is scheduled on were updated.
        AssetTriggered => "asset_triggered",
    }
}

impl DagRunType {
    /// The prefix of generated run ids: the type's string and a double underscore, as Airflow's
    /// `DagRunType.generate_run_id` writes them.
    pub const fn run_id_prefix(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled__",
            Self::Manual => "manual__",
            Self::Backfill => "backfill__",
            Self::Event => "event__",
            Self::AssetTriggered => "asset_triggered__",
        }
    }

    /// Airflow's run id for a run of this type at `logical_date_iso`, which the caller formats
    /// (e.g. `2025-01-01T00:00:00+00:00`) because this crate has no date type.
    pub fn generate_run_id(&self, logical_date_iso: &str) -> String {
        format!("{}{logical_date_iso}", self.run_id_prefix())
    }

    /// Recovers the type from a run id's prefix. Run ids users choose themselves carry no known
    /// prefix; like Airflow's `DagRunType.from_run_id`, we call those manual.
    pub fn from_run_id(run_id: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|run_type| run_id.starts_with(run_type.run_id_prefix()))
            .unwrap_or(Self::Manual)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_instance_state_strings_and_colors_are_airflows() {
        use TaskInstanceState::*;
        let expected = [
            (NoStatus, "none", "lightblue"),
            (Scheduled, "scheduled", "tan"),
            (Queued, "queued", "gray"),
            (Running, "running", "lime"),
            (Success, "success", "green"),
            (Restarting, "restarting", "violet"),
            (Failed, "failed", "red"),
            (UpForRetry, "up_for_retry", "gold"),
            (UpForReschedule, "up_for_reschedule", "turquoise"),
            (UpstreamFailed, "upstream_failed", "orange"),
            (Skipped, "skipped", "hotpink"),
            (Deferred, "deferred", "mediumpurple"),
            (Removed, "removed", "lightgrey"),
            (Shutdown, "shutdown", "blue"),
        ];
        assert_eq!(TaskInstanceState::ALL.len(), expected.len());
        for ((state, string, color), listed) in expected.into_iter().zip(TaskInstanceState::ALL) {
            assert_eq!(state, listed, "ALL is in declaration order");
            assert_eq!(state.as_str(), string);
            assert_eq!(state.to_string(), string);
            assert_eq!(state.color(), color);
            assert_eq!(TaskInstanceState::parse(string), Ok(state));
            assert_eq!(string.parse::<TaskInstanceState>(), Ok(state));
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{string}\""));
            assert_eq!(
                serde_json::from_str::<TaskInstanceState>(&json).unwrap(),
                state
            );
        }
    }

    #[test]
    fn summary_puts_trouble_first() {
        use TaskInstanceState::*;
        assert_eq!(
            TaskInstanceState::summary([Success, Failed, Running]),
            Some(Failed)
        );
        assert_eq!(
            TaskInstanceState::summary([Success, Running]),
            Some(Running)
        );
        assert_eq!(
            TaskInstanceState::summary([Success, NoStatus]),
            Some(NoStatus)
        );
        assert_eq!(
            TaskInstanceState::summary([Success, Skipped]),
            Some(Success)
        );
        assert_eq!(TaskInstanceState::summary([]), None);
        // Every state has a place.
        for s in TaskInstanceState::ALL {
            assert_eq!(TaskInstanceState::summary([s]), Some(s));
        }
    }

    #[test]
    fn finished_is_airflows_state_finished() {
        use TaskInstanceState::*;
        let finished: Vec<_> = TaskInstanceState::ALL
            .into_iter()
            .filter(|s| s.is_finished())
            .collect();
        assert_eq!(
            finished,
            [Success, Failed, UpstreamFailed, Skipped, Removed]
        );
        for state in TaskInstanceState::ALL {
            assert_eq!(state.is_unfinished(), !state.is_finished(), "{state}");
        }
    }

    #[test]
    fn bad_task_instance_state_names_value_and_lists_valid_ones() {
        let err = TaskInstanceState::parse("Running").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown task instance state `Running`; expected one of: none, scheduled, queued, \
             running, success, restarting, failed, up_for_retry, up_for_reschedule, \
             upstream_failed, skipped, deferred, removed, shutdown"
        );
        // `NoStatus` is only a Rust name; the string is `none`.
        assert!(TaskInstanceState::parse("no_status").is_err());
        let err = serde_json::from_str::<TaskInstanceState>("\"sucess\"").unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown task instance state `sucess`"),
            "{err}"
        );
    }

    #[test]
    fn dag_run_state_strings_colors_and_finished() {
        use DagRunState::*;
        let expected = [
            (Queued, "queued", "gray", false),
            (Running, "running", "lime", false),
            (Success, "success", "green", true),
            (Failed, "failed", "red", true),
        ];
        assert_eq!(DagRunState::ALL.len(), expected.len());
        for ((state, string, color, finished), listed) in expected.into_iter().zip(DagRunState::ALL)
        {
            assert_eq!(state, listed);
            assert_eq!(state.as_str(), string);
            assert_eq!(state.to_string(), string);
            assert_eq!(state.color(), color);
            assert_eq!(state.is_finished(), finished);
            assert_eq!(state.is_unfinished(), !finished);
            assert_eq!(string.parse::<DagRunState>(), Ok(state));
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{string}\"")
            );
        }
        assert_eq!(
            DagRunState::parse("done").unwrap_err().to_string(),
            "unknown dag run state `done`; expected one of: queued, running, success, failed"
        );
    }

    #[test]
    fn dag_run_type_strings_and_run_ids() {
        use DagRunType::*;
        let expected = [
            (Scheduled, "scheduled"),
            (Manual, "manual"),
            (Backfill, "backfill"),
            (Event, "event"),
            (AssetTriggered, "asset_triggered"),
        ];
        assert_eq!(DagRunType::ALL.len(), expected.len());
        for ((run_type, string), listed) in expected.into_iter().zip(DagRunType::ALL) {
            assert_eq!(run_type, listed);
            assert_eq!(run_type.as_str(), string);
            assert_eq!(run_type.run_id_prefix(), format!("{string}__"));
            assert_eq!(string.parse::<DagRunType>(), Ok(run_type));
            assert_eq!(
                serde_json::to_string(&run_type).unwrap(),
                format!("\"{string}\"")
            );
            let run_id = run_type.generate_run_id("2025-01-01T00:00:00+00:00");
            assert_eq!(run_id, format!("{string}__2025-01-01T00:00:00+00:00"));
            assert_eq!(DagRunType::from_run_id(&run_id), run_type);
        }
        assert_eq!(
            Scheduled.generate_run_id("2025-01-01T00:00:00+00:00"),
            "scheduled__2025-01-01T00:00:00+00:00"
        );
        // A run id the user chose is a manual run, as in Airflow.
        assert_eq!(DagRunType::from_run_id("my_rerun"), Manual);
        assert_eq!(DagRunType::from_run_id("scheduled_2025"), Manual);
        assert!(DagRunType::parse("dataset_triggered").is_err());
    }

    #[test]
    fn generated_run_ids_are_valid_run_ids() {
        for run_type in DagRunType::ALL {
            let run_id = run_type.generate_run_id("2025-01-01T00:00:00.123456+00:00");
            assert!(crate::RunId::parse(run_id).is_ok());
        }
    }
}
