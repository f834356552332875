//! Scheduled jobs declared in Git: their format (`model`), crontab schedules (`schedule`),
//! scheduling decisions (`scheduler`) and retention decisions (`retention`), all pure; run
//! records and locks (`runs`), the kinds' runners (`image_cleanup`, `backup`) and the dispatch that runs one
//! job and records it (`runner`).

pub mod backup;
pub mod host;
pub mod image_cleanup;
pub mod model;
pub mod retention;
pub mod runner;
pub mod runs;
pub mod schedule;
pub mod scheduler;
