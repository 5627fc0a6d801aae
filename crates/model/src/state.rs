//! Task instance states, dag run states and run types, with Airflow's exact strings.
