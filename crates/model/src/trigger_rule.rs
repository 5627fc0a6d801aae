//! Trigger rules and their evaluation: given how a task's upstream task instances stand, may it
//! be scheduled now, must it wait, or can its rule never be met any more?
//!
//! The evaluation is a pure function of state counts so the scheduler can call it for thousands
//! of task instances per loop without touching the database. It mirrors Airflow's
//! `TriggerRuleDep._evaluate_direct_relatives` with `flag_upstream_failed=True` (the mode the
//! scheduler uses), including its quirks. What it deliberately leaves out, because flow has no
//! such tasks: setup/teardown constraints, dynamic task mapping, and `depends_on_past`'s
//! "wait for past depends before skipping".

use crate::TaskInstanceState;
use crate::string_enum::string_enum;

string_enum! {
    /// When a task may run, in terms of its direct upstream tasks' states.
    #[derive(Default)]
    pub enum TriggerRule as "trigger rule" {
        /// Every upstream succeeded (Airflow's default).
        #[default]
        AllSuccess => "all_success",
        /// Every upstream failed or is upstream_failed.
        AllFailed => "all_failed",
        /// Every upstream finished, whatever the outcome.
        AllDone => "all_done",
        /// Every upstream finished, none was skipped, and at least one succeeded.
        AllDoneMinOneSuccess => "all_done_min_one_success",
        /// Every upstream was skipped.
        AllSkipped => "all_skipped",
        /// At least one upstream succeeded; does not wait for the others.
        OneSuccess => "one_success",
        /// At least one upstream failed or is upstream_failed; does not wait for the others.
        OneFailed => "one_failed",
        /// At least one upstream succeeded or failed; does not wait for the others.
        OneDone => "one_done",
        /// No upstream failed: each succeeded or was skipped.
        NoneFailed => "none_failed",
        /// No upstream failed and at least one succeeded.
        NoneFailedMinOneSuccess => "none_failed_min_one_success",
        /// No upstream was skipped, once all have finished.
        NoneSkipped => "none_skipped",
        /// Run as soon as the dag run starts, whatever happens upstream.
        Always => "always",
        /// For Airflow teardown tasks: all done, and at least one upstream setup task succeeded.
        AllDoneSetupSuccess => "all_done_setup_success",
    }
}

/// How a task's direct upstream task instances stand: Airflow's `_UpstreamTIStates` without
/// the setup counts, plus the number of upstream task instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamStates {
    pub success: usize,
    pub skipped: usize,
    pub failed: usize,
    pub upstream_failed: usize,
    pub removed: usize,
    /// Upstreams in a finished state: the five counts above added up (`removed` counts as done).
    pub done: usize,
    /// All upstream task instances, finished or not.
    pub total: usize,
}

impl UpstreamStates {
    /// Counts the states of a task's direct upstream task instances.
    pub fn from_states(states: impl IntoIterator<Item = TaskInstanceState>) -> Self {
        let mut counts = Self::default();
        for state in states {
            counts.total += 1;
            if state.is_finished() {
                counts.done += 1;
            }
            match state {
                TaskInstanceState::Success => counts.success += 1,
                TaskInstanceState::Skipped => counts.skipped += 1,
                TaskInstanceState::Failed => counts.failed += 1,
                TaskInstanceState::UpstreamFailed => counts.upstream_failed += 1,
                TaskInstanceState::Removed => counts.removed += 1,
                // Unfinished upstreams only count towards `total`.
                _ => {}
            }
        }
        counts
    }

    /// Whether every upstream has finished (Airflow's `upstream_done`).
    fn all_done(&self) -> bool {
        self.done >= self.total
    }
}

/// What the scheduler should do with a task instance in state `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerDecision {
    /// The rule is met: move it to `scheduled`.
    Schedule,
    /// The rule is not met yet but still can be: leave it in `none`.
    Wait,
    /// The rule can never be met and the task should be `skipped`.
    Skip,
    /// The rule can never be met because of upstream failures: `upstream_failed`.
    UpstreamFailed,
}

impl TriggerRule {
    /// Decides, from the states of the task's direct upstreams, whether it may be scheduled.
    ///
    /// Each arm follows Airflow in two steps, in Airflow's order: first the check that marks the
    /// task skipped or upstream_failed (Airflow's `flag_upstream_failed` block), then the check
    /// that lets it run. When the first step decides, the second is not consulted, as in
    /// Airflow where the state change wins.
    ///
    /// On `removed` upstreams: Airflow only ever sees one for a mapped task instance, where its
    /// "all ..." counts subtract removed upstreams from the expected number; we evaluate every
    /// task that way, so a removed upstream counts neither for nor against `all_success`,
    /// `all_failed` and `none_failed`. Rules whose Airflow code does not subtract them
    /// (`all_skipped`, `one_*`, the `none_failed_min_one_success` skip check) keep Airflow's
    /// behaviour; see the tests for the resulting cells.
    pub fn evaluate(self, upstream: &UpstreamStates) -> TriggerDecision {
        use TriggerDecision::{Schedule, Skip, UpstreamFailed, Wait};

        // Airflow passes the dependency outright for a task without upstream tasks.
        if upstream.total == 0 {
            return Schedule;
        }
        let u = upstream;
        let any_failure = u.failed + u.upstream_failed > 0;
        let pass_if = |met: bool| if met { Schedule } else { Wait };

        match self {
            TriggerRule::Always => Schedule,
            TriggerRule::AllSuccess => {
                if any_failure {
                    UpstreamFailed
                } else if u.skipped > 0 {
                    Skip
                } else {
                    pass_if(u.success + u.removed >= u.total)
                }
            }
            TriggerRule::AllFailed => {
                if u.success + u.skipped > 0 {
                    Skip
                } else {
                    pass_if(u.failed + u.upstream_failed + u.removed >= u.total)
                }
            }
            TriggerRule::AllDone => pass_if(u.all_done()),
            TriggerRule::AllDoneMinOneSuccess => {
                // Airflow treats a skipped upstream as "not done" for this rule, and since a
                // skip is final the rule can never be met: skip at once.
                if u.skipped > 0 {
                    Skip
                } else if !u.all_done() {
                    Wait
                } else if u.success == 0 {
                    UpstreamFailed
                } else {
                    Schedule
                }
            }
            TriggerRule::AllSkipped => {
                if u.success + u.failed + u.upstream_failed > 0 {
                    Skip
                } else {
                    // Airflow does not subtract removed upstreams here, so one removed upstream
                    // leaves the task waiting until the dag run is failed as deadlocked.
                    pass_if(u.skipped >= u.total)
                }
            }
            TriggerRule::OneSuccess => {
                if u.all_done() && u.done == u.skipped {
                    Skip
                } else if u.all_done() && u.success == 0 {
                    UpstreamFailed
                } else {
                    pass_if(u.success > 0)
                }
            }
            TriggerRule::OneFailed => {
                if u.all_done() && !any_failure {
                    Skip
                } else {
                    pass_if(any_failure)
                }
            }
            TriggerRule::OneDone => {
                // `upstream_failed` is neither a success nor a failure for this rule.
                if u.all_done() && u.success + u.failed == 0 {
                    Skip
                } else {
                    pass_if(u.success + u.failed > 0)
                }
            }
            TriggerRule::NoneFailed => {
                if any_failure {
                    UpstreamFailed
                } else {
                    pass_if(u.success + u.skipped + u.removed >= u.total)
                }
            }
            TriggerRule::NoneFailedMinOneSuccess => {
                if any_failure {
                    UpstreamFailed
                } else if u.skipped == u.total {
                    Skip
                } else {
                    // As in Airflow, the "min one success" half is only the skip check above:
                    // skipped and removed upstreams with no success still pass here.
                    pass_if(u.success + u.skipped + u.removed >= u.total)
                }
            }
            TriggerRule::NoneSkipped => {
                if u.skipped > 0 {
                    Skip
                } else {
                    pass_if(u.all_done())
                }
            }
            // Airflow additionally requires one successful *setup* upstream, and skips or fails
            // the task when its setups all skipped or none succeeded. flow has no setup tasks
            // and `UpstreamStates` carries no setup counts, so this is `all_done`, which is
            // exactly what Airflow does for a task with no setup upstreams.
            TriggerRule::AllDoneSetupSuccess => pass_if(u.all_done()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_parse_and_serde() {
        let expected = [
            "all_success",
            "all_failed",
            "all_done",
            "all_done_min_one_success",
            "all_skipped",
            "one_success",
            "one_failed",
            "one_done",
            "none_failed",
            "none_failed_min_one_success",
            "none_skipped",
            "always",
            "all_done_setup_success",
        ];
        assert_eq!(TriggerRule::ALL.len(), expected.len());
        for (rule, string) in TriggerRule::ALL.into_iter().zip(expected) {
            assert_eq!(rule.as_str(), string);
            assert_eq!(rule.to_string(), string);
            assert_eq!(string.parse::<TriggerRule>(), Ok(rule));
            let json = serde_json::to_string(&rule).unwrap();
            assert_eq!(json, format!("\"{string}\""));
            assert_eq!(serde_json::from_str::<TriggerRule>(&json).unwrap(), rule);
        }
        assert_eq!(TriggerRule::default(), TriggerRule::AllSuccess);
    }

    #[test]
    fn bad_rule_lists_valid_rules() {
        let err = "all_sucess".parse::<TriggerRule>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown trigger rule `all_sucess`; expected one of: all_success, all_failed, \
             all_done, all_done_min_one_success, all_skipped, one_success, one_failed, one_done, \
             none_failed, none_failed_min_one_success, none_skipped, always, \
             all_done_setup_success"
        );
        // Airflow's removed pre-2.x aliases are not accepted.
        assert!("dummy".parse::<TriggerRule>().is_err());
        assert!("none_failed_or_skipped".parse::<TriggerRule>().is_err());
    }

    #[test]
    fn counts_states() {
        use TaskInstanceState::*;
        let counts = UpstreamStates::from_states([
            Success,
            Success,
            Skipped,
            Failed,
            UpstreamFailed,
            Removed,
            Running,
            NoStatus,
            UpForRetry,
            Shutdown,
        ]);
        assert_eq!(
            counts,
            UpstreamStates {
                success: 2,
                skipped: 1,
                failed: 1,
                upstream_failed: 1,
                removed: 1,
                done: 6,
                total: 10,
            }
        );
        assert_eq!(UpstreamStates::from_states([]), UpstreamStates::default());
    }

    /// Every rule against every upstream mix, one letter per rule:
    /// `S` schedule, `W` wait, `K` skip, `U` upstream_failed.
    ///
    /// Cross-checked by hand against Airflow's
    /// `airflow-core/src/airflow/ti_deps/deps/trigger_rule_dep.py` (apache/airflow main, 3.x;
    /// the same logic as 2.9/2.10 plus `all_done_min_one_success`),
    /// `TriggerRuleDep._evaluate_direct_relatives` with `flag_upstream_failed=True`, taking the
    /// `ti.map_index > -1` branches that subtract `removed` (the only case in which Airflow
    /// sees removed upstreams) and no setup tasks.
    #[test]
    fn decision_table() {
        use TaskInstanceState::*;

        const COLUMNS: [TriggerRule; 13] = [
            TriggerRule::AllSuccess,
            TriggerRule::AllFailed,
            TriggerRule::AllDone,
            TriggerRule::AllDoneMinOneSuccess,
            TriggerRule::AllSkipped,
            TriggerRule::OneSuccess,
            TriggerRule::OneFailed,
            TriggerRule::OneDone,
            TriggerRule::NoneFailed,
            TriggerRule::NoneFailedMinOneSuccess,
            TriggerRule::NoneSkipped,
            TriggerRule::Always,
            TriggerRule::AllDoneSetupSuccess,
        ];
        assert_eq!(COLUMNS, TriggerRule::ALL, "one column per rule");

        #[rustfmt::skip]
        let table: &[(&[TaskInstanceState], &str)] = &[
            //                                          all_success
            //                                          |all_failed
            //                                          ||all_done
            //                                          |||all_done_min_one_success
            //                                          ||||all_skipped
            //                                          |||||one_success
            //                                          ||||||one_failed
            //                                          |||||||one_done
            //                                          ||||||||none_failed
            //                                          |||||||||none_failed_min_one_success
            //                                          ||||||||||none_skipped
            //                                          |||||||||||always
            //                                          ||||||||||||all_done_setup_success
            (&[],                                       "SSSSSSSSSSSSS"),
            // A single upstream in each state.
            (&[NoStatus],                               "WWWWWWWWWWWSW"),
            (&[Scheduled],                              "WWWWWWWWWWWSW"),
            (&[Queued],                                 "WWWWWWWWWWWSW"),
            (&[Running],                                "WWWWWWWWWWWSW"),
            (&[Success],                                "SKSSKSKSSSSSS"),
            (&[Restarting],                             "WWWWWWWWWWWSW"),
            (&[Failed],                                 "USSUKUSSUUSSS"),
            (&[UpForRetry],                             "WWWWWWWWWWWSW"),
            (&[UpForReschedule],                        "WWWWWWWWWWWSW"),
            (&[UpstreamFailed],                         "USSUKUSKUUSSS"),
            (&[Skipped],                                "KKSKSKKKSKKSS"),
            (&[Deferred],                               "WWWWWWWWWWWSW"),
            (&[Removed],                                "SSSUWUKKSSSSS"),
            (&[Shutdown],                               "WWWWWWWWWWWSW"),
            // All upstreams alike.
            (&[Success, Success, Success],              "SKSSKSKSSSSSS"),
            (&[Skipped, Skipped, Skipped],              "KKSKSKKKSKKSS"),
            (&[Failed, Failed, Failed],                 "USSUKUSSUUSSS"),
            (&[UpstreamFailed, UpstreamFailed],         "USSUKUSKUUSSS"),
            (&[Removed, Removed],                       "SSSUWUKKSSSSS"),
            (&[Running, NoStatus],                      "WWWWWWWWWWWSW"),
            // Finished mixes.
            (&[Success, Skipped],                       "KKSKKSKSSSKSS"),
            (&[Success, Failed],                        "UKSSKSSSUUSSS"),
            (&[Success, UpstreamFailed],                "UKSSKSSSUUSSS"),
            (&[Success, Removed],                       "SKSSKSKSSSSSS"),
            (&[Skipped, Failed],                        "UKSKKUSSUUKSS"),
            (&[Skipped, UpstreamFailed],                "UKSKKUSKUUKSS"),
            (&[Skipped, Removed],                       "KKSKWUKKSSKSS"),
            (&[Failed, UpstreamFailed],                 "USSUKUSSUUSSS"),
            (&[Failed, Removed],                        "USSUKUSSUUSSS"),
            (&[Success, Skipped, Failed, UpstreamFailed, Removed],
                                                        "UKSKKSSSUUKSS"),
            // Some upstreams still unfinished.
            (&[Success, Running],                       "WKWWKSWSWWWSW"),
            (&[Skipped, Running],                       "KKWKWWWWWWKSW"),
            (&[Failed, Running],                        "UWWWKWSSUUWSW"),
            (&[UpstreamFailed, Running],                "UWWWKWSWUUWSW"),
            (&[Removed, Running],                       "WWWWWWWWWWWSW"),
            (&[Success, Skipped, UpForRetry],           "KKWKKSWSWWKSW"),
            (&[Success, Success, Deferred],             "WKWWKSWSWWWSW"),
        ];

        let mut failures = Vec::new();
        for (states, expected_row) in table {
            let upstream = UpstreamStates::from_states(states.iter().copied());
            assert_eq!(expected_row.len(), COLUMNS.len(), "row for {states:?}");
            for (rule, expected) in COLUMNS.into_iter().zip(expected_row.chars()) {
                let expected = match expected {
                    'S' => TriggerDecision::Schedule,
                    'W' => TriggerDecision::Wait,
                    'K' => TriggerDecision::Skip,
                    'U' => TriggerDecision::UpstreamFailed,
                    other => panic!("bad cell {other:?} in row for {states:?}"),
                };
                let actual = rule.evaluate(&upstream);
                if actual != expected {
                    failures.push(format!(
                        "{rule} with {states:?}: {actual:?}, want {expected:?}"
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// Every unfinished state is just "not done yet" to every rule.
    #[test]
    fn unfinished_upstream_states_are_interchangeable() {
        let unfinished = TaskInstanceState::ALL
            .into_iter()
            .filter(|s| s.is_unfinished());
        for state in unfinished {
            let with = UpstreamStates::from_states([TaskInstanceState::Success, state]);
            let with_running = UpstreamStates::from_states([
                TaskInstanceState::Success,
                TaskInstanceState::Running,
            ]);
            assert_eq!(with, with_running, "{state}");
        }
    }
}
