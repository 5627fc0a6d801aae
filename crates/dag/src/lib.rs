//! flow-dag
