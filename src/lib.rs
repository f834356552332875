//! driftless: a GitOps reconciliation daemon that runs outside the Kubernetes cluster.
//!
//! The modules follow the data path of DESIGN.md §1; ARCHITECTURE.md is the code map.

// Errors carry the context a user acts on (stack, file, object, field) and travel only on the
// failure path, where their size costs nothing that matters.
#![allow(clippy::result_large_err)]

pub mod cli;
pub mod cluster;
pub mod config;
pub mod credentials;
pub mod daemon;
pub mod doctor;
pub mod expression;
pub mod health_checks;
pub mod hex;
pub mod host;
pub mod init;
pub mod jobs;
pub mod logging;
pub mod notify;
pub mod output;
pub mod parallel;
pub mod plan;
pub mod policy;
pub mod reconcile;
pub mod registry;
pub mod repo_walk;
pub mod revision;
pub mod runs;
pub mod server;
pub mod source;
pub mod stack;
pub mod state;
pub mod status;
pub mod sync_hooks;
pub mod targets;
pub mod yaml;
