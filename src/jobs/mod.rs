//! Scheduled jobs declared in Git: the scheduler and the job kinds.

pub mod schedule;
