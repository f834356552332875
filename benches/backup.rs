//! PostgreSQL backup throughput: `driftless`'s Backup job (pg_dump -Fc streamed to a local
//! destination while pg_restore reads it back, sha256, re-hash after upload, manifest) against a
//! plain `pg_dump -Fc > file` of the same database, and the same job encrypted with age
//! (`spec.encryption`: every byte encrypted in the stream, the stored file read back and
//! decrypted with the host's identity, both digests checked). Needs the test environment
//! (`tests/env/testenv up`); run with `cargo bench --bench backup` (README "Benchmarks").
//!
//! Prints the throughputs (database size / wall time, best of `ROUNDS`) and their ratios; the
//! goal is a ratio of at least 0.9 for the unencrypted job.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use driftless::jobs::backup;
use driftless::jobs::model::Job;

const ROUNDS: usize = 3;

fn main() {
    // `cargo test --all-targets` runs bench targets without `--bench`: nothing to measure then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("backup benchmark: run with `cargo bench --bench backup`");
        return;
    }
    // As the integration tests: `$DRIFTLESS_TESTENV`, else this checkout's environment.
    let env_file = std::env::var_os("DRIFTLESS_TESTENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".testenv/env"));
    let text = std::fs::read_to_string(&env_file).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (start it with tests/env/testenv up)",
            env_file.display()
        )
    });
    let vars: HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let rows: u64 = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1_000_000);
    let bin = Path::new(&vars["PG_BINDIR"]).to_owned();
    let pg = |program: &str| {
        let mut c = Command::new(bin.join(program));
        for k in ["PGHOST", "PGPORT", "PGUSER", "PGPASSWORD"] {
            c.env(k, &vars[k]);
        }
        c
    };
    let run = |c: &mut Command| {
        let out = c.output().expect("spawn");
        assert!(
            out.status.success(),
            "{c:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let db = format!("bench_{:x}", rand::random::<u32>());
    run(pg("psql").args(["-d", "postgres", "-c", &format!("CREATE DATABASE {db}")]));
    run(pg("psql").args([
        "-d",
        &db,
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        &format!(
        "CREATE TABLE events (id bigserial PRIMARY KEY, at timestamptz, kind int, payload text);
         INSERT INTO events (at, kind, payload) SELECT now() - g * interval '1 second', g % 17,
           md5(g::text) || repeat(chr(65 + g % 26), 20 + g % 40) FROM generate_series(1, {rows}) g;"
    ),
    ]));
    let size: u64 = run(pg("psql").args([
        "-tA",
        "-d",
        &db,
        "-c",
        "SELECT pg_database_size(current_database())",
    ]))
    .parse()
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("pg"), &vars["PGPASSWORD"]).unwrap();
    // The host's age identity; the encrypted job names its public key.
    let identity = age::x25519::Identity::generate();
    std::fs::write(
        creds.join("backup-identity"),
        format!(
            "{}\n",
            age::secrecy::ExposeSecret::expose_secret(&identity.to_string())
        ),
    )
    .unwrap();
    let backup_job = |name: &str, encryption: serde_json::Value| {
        Job::from_spec(
            "Backup",
            name,
            "bench",
            "bench/jobs.yaml",
            serde_json::json!({
                "schedule": "@daily",
                "source": {"postgres": {"host": vars["PGHOST"], "port": vars["PGPORT"].parse::<u16>().unwrap(),
                    "database": db, "username": vars["PGUSER"], "passwordFile": "pg"}},
                "destination": {"local": {"path": dir.path().join("backups")}},
                "retention": {"keepLast": 1},
                "encryption": encryption,
            }),
        )
        .unwrap()
    };
    let job = backup_job("bench", serde_json::Value::Null);
    let spec = job.backup().unwrap();
    let encrypted_job = backup_job(
        "bench-encrypted",
        serde_json::json!({"ageRecipients": [identity.to_public().to_string()]}),
    );
    let encrypted_spec = encrypted_job.backup().unwrap();
    // The host configuration's `jobs:` settings: the PostgreSQL tools and where backups go.
    let host = driftless::jobs::host::HostSettings {
        host: driftless::jobs::host::host_name(),
        instance: "bench".to_owned(),
        postgres_bin_dir: Some(bin.clone()),
        local_backup_root: Some(dir.path().to_owned()),
        config_dirs: vec![driftless::jobs::host::CONFIG_DIR.into()],
        encryption: driftless::jobs::backup::crypt::HostRules {
            identity_file: Some("backup-identity".to_owned()),
            ..Default::default()
        },
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let state = dir.path().join("state");
    let mut plain = Vec::new();
    let mut ours = Vec::new();
    let mut encrypted = Vec::new();
    let mut dump_bytes = 0;
    for _ in 0..ROUNDS {
        let file = std::fs::File::create(dir.path().join("plain.dump")).unwrap();
        let t = Instant::now();
        let status = pg("pg_dump")
            .args(["-Fc", "-d", &db])
            .stdout(file)
            .status()
            .unwrap();
        assert!(status.success());
        plain.push(t.elapsed());
        dump_bytes = std::fs::metadata(dir.path().join("plain.dump"))
            .unwrap()
            .len();

        let t = Instant::now();
        let inputs = backup::Inputs {
            cluster: None,
            credentials: &driftless::credentials::Credentials::in_dir(Some(creds.to_path_buf())),
            state_dir: &state,
            revision: None,
            host: &host,
        };
        let report = rt
            .block_on(backup::run(&job, spec, &inputs, false))
            .unwrap();
        assert!(report.ok(), "{:?}", report.errors);
        ours.push(t.elapsed());

        let t = Instant::now();
        let report = rt
            .block_on(backup::run(&encrypted_job, encrypted_spec, &inputs, false))
            .unwrap();
        assert!(report.ok(), "{:?}", report.errors);
        assert!(report.backup.as_ref().is_some_and(|b| b.encrypted));
        encrypted.push(t.elapsed());
    }
    run(pg("psql").args(["-d", "postgres", "-c", &format!("DROP DATABASE {db}")]));
    let best = |v: &[Duration]| v.iter().min().copied().unwrap_or_default();
    let (p, o, e) = (best(&plain), best(&ours), best(&encrypted));
    let mib = |d: Duration| size as f64 / 1048576.0 / d.as_secs_f64();
    println!(
        "database: {rows} rows, {:.1} MiB; dump {:.1} MiB",
        size as f64 / 1048576.0,
        dump_bytes as f64 / 1048576.0
    );
    println!(
        "pg_dump -Fc > file:       {:>7.2} s  {:>7.1} MiB/s (best of {ROUNDS})",
        p.as_secs_f64(),
        mib(p)
    );
    println!(
        "driftless Backup (local): {:>7.2} s  {:>7.1} MiB/s (best of {ROUNDS})",
        o.as_secs_f64(),
        mib(o)
    );
    println!(
        "driftless Backup, age:    {:>7.2} s  {:>7.1} MiB/s (best of {ROUNDS})",
        e.as_secs_f64(),
        mib(e)
    );
    println!(
        "throughput ratio: {:.2} (goal >= 0.9); encrypted/unencrypted: {:.2}",
        p.as_secs_f64() / o.as_secs_f64(),
        o.as_secs_f64() / e.as_secs_f64()
    );
}
