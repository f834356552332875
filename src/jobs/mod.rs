//! Scheduled jobs declared in Git: their format (`model`), crontab schedules (`schedule`) and
//! scheduling decisions (`scheduler`), all pure. The job kinds' runners (ImageCleanup, Backup)
//! and the daemon's scheduler task come with the issues that build those kinds.

pub mod model;
pub mod retention;
pub mod schedule;
pub mod scheduler;
