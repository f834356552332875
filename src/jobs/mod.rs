//! Scheduled jobs declared in Git: their format (`model`), crontab schedules (`schedule`) and
//! scheduling decisions (`scheduler`), all pure; run records and locks (`runs`), the kinds'
//! runners (`image_cleanup`, `backup`, each with its own pure retention decisions) and the
//! dispatch that runs one job and records it (`runner`).

pub mod backup;
pub mod common;
pub mod host;
pub mod image_cleanup;
pub mod model;
pub mod runner;
pub mod runs;
pub mod schedule;
pub mod scheduler;
