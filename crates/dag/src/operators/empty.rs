//! `operator: empty`: does nothing (Airflow's EmptyOperator, formerly DummyOperator).

use schemars::JsonSchema;
use serde::Deserialize;

use super::{OperatorKind, ReadOp};
use crate::build::Ctx;
use crate::dag::Operator;

/// `operator: empty`: does nothing (Airflow's EmptyOperator, formerly DummyOperator).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmptySpec {}

pub(crate) struct Empty;

impl OperatorKind for Empty {
    const NAME: &'static str = "empty";
    const ALIASES: &'static [&'static str] = &[
        "EmptyOperator",
        "DummyOperator",
        "airflow.operators.empty.EmptyOperator",
        "airflow.operators.dummy.DummyOperator",
        "airflow.operators.dummy_operator.DummyOperator",
        "airflow.providers.standard.operators.empty.EmptyOperator",
    ];
    const MODULE: &'static str = "airflow.providers.standard.operators.empty";
    const CLASS: &'static str = "EmptyOperator";
    const TEMPLATE_FIELDS: &'static [&'static str] = &[];
    const UI_COLOR: &'static str = "#e8f7e4";
    type Spec = EmptySpec;

    fn build(_: &mut Ctx<'_>, _: Self::Spec, _: &mut ReadOp<'_>) -> Option<Operator> {
        Some(Operator::Empty)
    }
}
