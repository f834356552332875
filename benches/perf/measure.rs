//! What one run of a tool cost: requests (from the API server's `apiserver_request_total`), the
//! CPU the API server and etcd used (from `/proc`), driftless's steps (from its debug log), and
//! the medians over runs.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::mix;
use crate::support::{self, TestEnv};

/// Request counts by verb (and `dryRun` separately).
pub type Counts = BTreeMap<String, f64>;

pub async fn counts(client: &kube::Client) -> Counts {
    let mut out = Counts::new();
    for sample in support::apiserver_requests(client).await {
        if !mix::RESOURCES.contains(&sample.label("resource"))
            || !sample.label("subresource").is_empty()
        {
            continue;
        }
        let verb = if sample.label("dry_run").is_empty() {
            sample.label("verb").to_owned()
        } else {
            format!("{}(dryRun)", sample.label("verb"))
        };
        *out.entry(verb).or_default() += sample.value;
    }
    out
}

pub fn delta(before: &Counts, after: &Counts) -> Counts {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

pub fn total(c: &Counts) -> f64 {
    c.values().sum()
}

pub fn dry_runs(c: &Counts) -> f64 {
    c.iter()
        .filter(|(verb, _)| verb.ends_with("(dryRun)"))
        .map(|(_, n)| n)
        .sum::<f64>()
        + 0.0
}

/// CPU clocks read from `/proc`: the API server's and etcd's CPU seconds so far, and the host's
/// busy and total jiffies (all cores).
#[derive(Clone, Copy, Default)]
pub struct Clocks {
    apiserver: f64,
    etcd: f64,
    busy: f64,
    total: f64,
}

/// Where the clocks are read: the test environment's server processes.
pub struct Servers {
    apiserver: Option<u32>,
    etcd: Option<u32>,
    ticks: f64,
}

impl Servers {
    /// The pids from `$DRIFTLESS_TESTENV_RUN/pids/` (the env file names the run directory).
    pub fn find(env: &TestEnv) -> Servers {
        let run = Path::new(env.var("DRIFTLESS_TESTENV_RUN")).join("pids");
        let pid = |name: &str| {
            let pid = std::fs::read_to_string(run.join(name))
                .ok()
                .and_then(|p| p.trim().parse().ok());
            if pid.is_none() {
                eprintln!(
                    "no pid file {}: its CPU share is not measured",
                    run.join(name).display()
                );
            }
            pid
        };
        let ticks = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0);
        Servers {
            apiserver: pid("kube-apiserver"),
            etcd: pid("etcd"),
            ticks,
        }
    }

    fn process_seconds(&self, pid: Option<u32>) -> f64 {
        let Some(pid) = pid else { return f64::NAN };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return f64::NAN;
        };
        // Fields after the command name in parentheses: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<f64> = rest
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0.0))
            .collect();
        match (fields.get(11), fields.get(12)) {
            (Some(u), Some(s)) => (u + s) / self.ticks,
            _ => f64::NAN,
        }
    }

    pub fn now(&self) -> Clocks {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let jiffies: Vec<f64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|f| f.parse().unwrap_or(0.0))
            .collect();
        let total: f64 = jiffies.iter().sum();
        // idle and iowait
        let idle = jiffies.get(3).copied().unwrap_or(0.0) + jiffies.get(4).copied().unwrap_or(0.0);
        Clocks {
            apiserver: self.process_seconds(self.apiserver),
            etcd: self.process_seconds(self.etcd),
            busy: total - idle,
            total,
        }
    }
}

/// CPU during one run: the API server's and etcd's share of the host (all cores), and how busy
/// the host was in all.
#[derive(Clone, Copy, Default, serde::Serialize)]
pub struct CpuShare {
    pub apiserver: f64,
    pub etcd: f64,
    pub host: f64,
}

pub fn share(before: Clocks, after: Clocks, wall: Duration, cores: f64) -> CpuShare {
    let capacity = wall.as_secs_f64() * cores;
    CpuShare {
        apiserver: (after.apiserver - before.apiserver) / capacity,
        etcd: (after.etcd - before.etcd) / capacity,
        host: (after.busy - before.busy) / (after.total - before.total).max(1.0),
    }
}

/// Milliseconds per step of one driftless run, from its debug log (`logging::Lap`).
pub type Steps = BTreeMap<String, f64>;

pub fn steps_of(stderr: &[u8]) -> Steps {
    let mut steps = Steps::new();
    for line in String::from_utf8_lossy(stderr).lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if let (Some(step), Some(ms)) = (v["message"].as_str(), v["ms"].as_f64()) {
            *steps.entry(step.to_owned()).or_default() += ms;
        }
    }
    steps
}

#[derive(Default)]
pub struct Samples {
    pub times: Vec<f64>,
    pub requests: Vec<Counts>,
    pub cpu: Vec<CpuShare>,
    pub steps: Vec<Steps>,
}

impl Samples {
    pub fn median_ms(&self) -> f64 {
        median(&self.times) * 1000.0
    }

    pub fn median_requests(&self) -> f64 {
        // `+ 0.0`: an empty sum is -0.0, which would print as "-0".
        median(&self.requests.iter().map(total).collect::<Vec<_>>()) + 0.0
    }

    pub fn median_dry_runs(&self) -> f64 {
        median(&self.requests.iter().map(dry_runs).collect::<Vec<_>>()) + 0.0
    }

    pub fn most_dry_runs(&self) -> f64 {
        self.requests.iter().map(dry_runs).fold(0.0, f64::max)
    }

    pub fn median_cpu(&self) -> CpuShare {
        let of = |f: fn(&CpuShare) -> f64| median(&self.cpu.iter().map(f).collect::<Vec<_>>());
        CpuShare {
            apiserver: of(|c| c.apiserver),
            etcd: of(|c| c.etcd),
            host: of(|c| c.host),
        }
    }

    /// The steps of the run with the median time.
    pub fn median_steps(&self) -> Option<(&Steps, f64)> {
        let mut order: Vec<usize> = (0..self.times.len()).collect();
        order.sort_by(|a, b| self.times[*a].total_cmp(&self.times[*b]));
        let i = *order.get(order.len() / 2)?;
        Some((self.steps.get(i)?, self.times[i] * 1000.0))
    }

    pub fn json(&self) -> Value {
        json!({"medianMs": self.median_ms(), "medianRequests": self.median_requests(),
            "medianDryRuns": self.median_dry_runs(), "mostDryRuns": self.most_dry_runs(),
            "cpuShare": self.median_cpu(),
            "timesMs": self.times.iter().map(|t| t * 1000.0).collect::<Vec<_>>(),
            "requests": self.requests, "cpu": self.cpu, "steps": self.steps})
    }
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    s[s.len() / 2]
}
