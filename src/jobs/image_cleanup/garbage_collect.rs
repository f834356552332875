//! The garbage-collect post-step: the registry's offline garbage collection, run after a run that
//! deleted something. The program is a command of the host configuration (`jobs.commands`), named
//! by the job: a commit can choose among the programs the host allows, never name one. It runs
//! without a shell, with a minimal environment (nothing of driftless' own, so no credential
//! reaches it), standard input closed, in `/`, and is killed at its timeout.

use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::config::{HostCommand, HostCommands};

/// The whole environment of a host command: a fixed `PATH` (also where a program named without a
/// directory is looked up) and a locale, nothing inherited.
const ENVIRONMENT: [(&str, &str); 2] = [
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("LC_ALL", "C.UTF-8"),
];

/// Output kept per stream: the report shows the last lines.
const OUTPUT_TAIL: usize = 16 * 1024;

/// Lines of output shown in the report.
const TAIL_LINES: usize = 5;

/// The host command `name`, or what to add to the host configuration.
pub(super) fn lookup<'a>(
    commands: &'a HostCommands,
    name: &str,
) -> Result<&'a HostCommand, String> {
    commands.get(name).ok_or_else(|| {
        let defined = if commands.is_empty() {
            "none is defined".to_owned()
        } else {
            format!(
                "defined: {}",
                commands.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        };
        format!(
            "spec.garbageCollect.command names {name:?}, and the host configuration has no \
             jobs.commands.{name} ({defined}): add `jobs: {{commands: {{{name}: {{command: \
             [program, args…], timeout: 30m}}}}}}` to the host configuration (driftless.yaml)"
        )
    })
}

/// Runs `command` (`name` in the host configuration); its output's last lines are the result.
pub(super) async fn run(name: &str, command: &HostCommand) -> Result<String, String> {
    let Some((program, args)) = command.command.split_first() else {
        return Err(format!("jobs.commands.{name}: empty command"));
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .envs(ENVIRONMENT)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("jobs.commands.{name} ({program}): cannot start: {e}"))?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let finished = tokio::time::timeout(command.timeout, async {
        let (out, err, status) = tokio::join!(tail(stdout), tail(stderr), child.wait());
        (out, err, status)
    })
    .await;
    let Ok((out, err, status)) = finished else {
        // The readers are dropped with the future: a process the command left behind may still
        // hold the pipes open.
        let _ = child.kill().await;
        return Err(format!(
            "jobs.commands.{name} ({program}): no result within {:?} (jobs.commands.{name}.timeout); killed",
            command.timeout
        ));
    };
    let status = status.map_err(|e| format!("jobs.commands.{name} ({program}): {e}"))?;
    let text = String::from_utf8_lossy(&out).to_string() + &String::from_utf8_lossy(&err);
    let lines: Vec<&str> = text.lines().rev().take(TAIL_LINES).collect();
    let tail = lines.into_iter().rev().collect::<Vec<_>>().join(" | ");
    if status.success() {
        Ok(format!("{name} ({program}) succeeded: {tail}"))
    } else {
        Err(format!("{name} ({program}) failed ({status}): {tail}"))
    }
}

/// The last `OUTPUT_TAIL` bytes of a stream, read to its end.
async fn tail(stream: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let Some(mut stream) = stream else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * OUTPUT_TAIL {
            kept.drain(..kept.len() - OUTPUT_TAIL);
        }
    }
    if kept.len() > OUTPUT_TAIL {
        kept.drain(..kept.len() - OUTPUT_TAIL);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn command(argv: &[&str], timeout: Duration) -> HostCommand {
        HostCommand {
            command: argv.iter().map(|a| a.to_string()).collect(),
            timeout,
        }
    }

    #[tokio::test]
    async fn runs_without_a_shell_and_with_a_minimal_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env.txt");
        let script = dir.path().join("gc.sh");
        std::fs::write(&script, "#!/bin/sh\nenv > \"$1\"\necho \"argument: $2\"\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let c = command(
            &[
                script.to_str().unwrap(),
                out.to_str().unwrap(),
                "$(touch pwned); echo x",
            ],
            Duration::from_secs(30),
        );
        let result = run("registry-gc", &c).await.unwrap();
        // The argument reached the program as one word, unexpanded: no shell in between.
        assert!(
            result.contains("succeeded: argument: $(touch pwned); echo x"),
            "{result}"
        );
        // Nothing of this process' environment (HOME, cargo's variables, …) reaches it: only
        // what we set and what the shell running the script adds itself.
        assert!(std::env::vars().any(|(k, _)| k == "HOME" || k.starts_with("CARGO")));
        let env = std::fs::read_to_string(&out).unwrap();
        let names: Vec<&str> = env
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, _)| k)
            .collect();
        for name in &names {
            assert!(
                ["PATH", "LC_ALL", "PWD", "SHLVL", "_", "OLDPWD"].contains(name),
                "{name} reached the command: {env}"
            );
        }
        assert!(env.contains("PATH=/usr/local/sbin:"), "{env}");
        assert!(env.contains("PWD=/\n"), "{env}");
    }

    #[tokio::test]
    async fn failures_and_timeouts_are_reported() {
        let c = command(&["false"], Duration::from_secs(30));
        let e = run("gc", &c).await.unwrap_err();
        assert!(e.starts_with("gc (false) failed (exit status: 1)"), "{e}");
        let c = command(&["sleep", "30"], Duration::from_millis(200));
        let t0 = std::time::Instant::now();
        let e = run("gc", &c).await.unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(10));
        assert!(
            e.contains("no result within 200ms (jobs.commands.gc.timeout)"),
            "{e}"
        );
        let c = command(&["/nonexistent/registry"], Duration::from_secs(30));
        let e = run("gc", &c).await.unwrap_err();
        assert!(e.contains("cannot start"), "{e}");
    }

    #[test]
    fn a_missing_command_says_what_to_add() {
        let mut commands = HostCommands::new();
        let e = lookup(&commands, "registry-gc").unwrap_err();
        assert!(
            e.contains("no jobs.commands.registry-gc (none is defined)")
                && e.contains("to the host configuration"),
            "{e}"
        );
        commands.insert("other".into(), command(&["true"], Duration::from_secs(1)));
        let e = lookup(&commands, "registry-gc").unwrap_err();
        assert!(e.contains("defined: other"), "{e}");
        assert!(lookup(&commands, "other").is_ok());
    }

    #[test]
    fn the_host_configuration_defines_commands() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("driftless.yaml");
        std::fs::write(
            &path,
            "jobs:\n  commands:\n    registry-gc: {command: [/usr/bin/systemctl, start, gc.service], timeout: 5m}\n    quick: {command: [/bin/true]}\n",
        )
        .unwrap();
        let config = crate::config::HostConfig::load(&path, true).unwrap();
        let gc = &config.jobs.commands["registry-gc"];
        assert_eq!(gc.command, ["/usr/bin/systemctl", "start", "gc.service"]);
        assert_eq!(gc.timeout, Duration::from_secs(300));
        assert_eq!(
            config.jobs.commands["quick"].timeout,
            Duration::from_secs(1800)
        );
        for (text, want) in [
            (
                "jobs: {commands: {gc: {command: []}}}\n",
                "jobs.commands.gc.command: give the program",
            ),
            (
                "jobs: {commands: {Registry_GC: {command: [x]}}}\n",
                "jobs.commands: name \"Registry_GC\" must be a DNS label",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = crate::config::HostConfig::load(&path, true)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
