//! The garbage-collect post-step: the registry's offline garbage collection, run as a command
//! after a run that deleted something.

use super::spec;

/// Runs the configured garbage-collection command; its output's last lines are the result.
pub(super) async fn garbage_collect(gc: &spec::GarbageCollect) -> Result<String, String> {
    let Some((program, args)) = gc.command.split_first() else {
        return Err("empty command".to_owned());
    };
    let run = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(gc.timeout, run)
        .await
        .map_err(|_| format!("{program}: no result within {:?}", gc.timeout))?
        .map_err(|e| format!("{program}: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = text.lines().rev().take(5).collect();
    let tail = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
    if output.status.success() {
        Ok(format!("{program} succeeded: {tail}"))
    } else {
        Err(format!("{program} failed ({}): {tail}", output.status))
    }
}
