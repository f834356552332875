//! Leases: one `coordination.k8s.io/v1` Lease per (instance, stack) in `driftless-system`, held
//! by the one process that may write the stack, and one per live daemon of the instance (its
//! membership, so daemons share the stacks evenly). `Coordinator::tick` reads them, renews what
//! this process holds and takes what `plan::lease` says it should; every write is conditional on
//! the resourceVersion read, so two takers of one free Lease cannot both win.
//!
//! The `Fence` is what reconciles check before every write batch: a stack is held until its last
//! successful renewal (timed on the monotonic clock, from before the request was sent) plus two
//! thirds of the duration; a failed renewal, a Lease found changed, or a process paused past that
//! time (SIGSTOP, a suspended VM) loses it at once. Others take a Lease only after seeing it
//! unchanged for the whole duration, so a holder stops writing before anyone else starts.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use tracing::{info, warn};

mod sync;

pub use sync::SyncLeases;

use super::inventory::{INSTANCE_LABEL, NAMESPACE};
use super::{Error, Result};
use crate::plan::lease::{self as decide, Seen, Standing};

/// Label on driftless Leases: `stack` or `member`.
pub const LEASE_LABEL: &str = "driftless.dev/lease";
/// Label on a stack's Lease: the stack.
pub const STACK_LABEL: &str = "driftless.dev/stack";

/// How Leases are held: `leases:` in the host configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Time between renewals.
    pub renew: Duration,
    /// How long a Lease lasts without renewal (what others wait before taking it).
    pub duration: Duration,
    /// This process's holder identity.
    pub identity: String,
}

impl Settings {
    /// How long after a renewal this process still writes: two thirds of the duration, so a
    /// write in flight when it ends lands before anyone else may take the Lease.
    fn valid_for(&self) -> Duration {
        self.duration * 2 / 3
    }
}

/// A holder identity for this process: `<host>-<8 random hex digits>`.
pub fn default_identity() -> String {
    format!("{}-{:08x}", crate::host::host_name(), rand::random::<u32>())
}

/// The Lease of `stack` of `instance` (both DNS labels, so the name is unambiguous).
pub fn stack_lease_name(instance: &str, stack: &str) -> String {
    format!("stack.{instance}.{stack}")
}

fn member_lease_name_prefix(instance: &str) -> String {
    format!("member.{instance}.")
}

fn member_lease_name(instance: &str, identity: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(identity.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("member.{instance}.{hex}")
}

/// One stack held.
#[derive(Debug, Clone)]
struct Held {
    resource_version: String,
    renewed_at: Instant,
}

#[derive(Debug, Default)]
struct FenceState {
    held: BTreeMap<String, Held>,
    /// Who holds each stack as last seen (this process included), for the status.
    holders: BTreeMap<String, String>,
    /// Why each stack not held is not held (its holder, or the failed renewal).
    lost: BTreeMap<String, String>,
    valid_for: Duration,
    identity: String,
}

/// What this process holds, shared between the lease task and the reconciles that check it.
#[derive(Debug, Clone, Default)]
pub struct Fence {
    inner: Arc<Mutex<FenceState>>,
}

impl Fence {
    /// The fence of a process holding Leases with `settings` (nothing held yet).
    pub fn new(settings: &Settings) -> Fence {
        Fence {
            inner: Arc::new(Mutex::new(FenceState {
                valid_for: settings.valid_for(),
                identity: settings.identity.clone(),
                ..FenceState::default()
            })),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut FenceState) -> T) -> T {
        // A poisoned lock means a panic while it was held: the state is a plain map, still
        // consistent enough to report from; writes are refused below if nothing is held.
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// `Ok` while this process holds `stack`'s Lease; else the error that stops its writes.
    pub fn check(&self, stack: &str) -> Result<()> {
        self.with(|st| match st.held.get(stack) {
            Some(h) if h.renewed_at.elapsed() < st.valid_for => Ok(()),
            held => Err(Error::LeaseLost {
                stack: stack.to_owned(),
                holder: match held {
                    Some(_) => "nobody: it was not renewed in time (the process was paused or the API server slow)".to_owned(),
                    None => st
                        .lost
                        .get(stack)
                        .cloned()
                        .unwrap_or_else(|| "nobody: it was never taken".to_owned()),
                },
            }),
        })
    }

    /// Whether this process holds `stack` now.
    pub fn holds(&self, stack: &str) -> bool {
        self.check(stack).is_ok()
    }

    /// The stacks held now.
    pub fn held(&self) -> Vec<String> {
        self.with(|st| {
            st.held
                .iter()
                .filter(|(_, h)| h.renewed_at.elapsed() < st.valid_for)
                .map(|(s, _)| s.clone())
                .collect()
        })
    }

    /// Each stack's holder as last seen (identities shown bounded and escaped).
    pub fn holders(&self) -> BTreeMap<String, String> {
        self.with(|st| st.holders.clone())
    }

    /// This process's identity.
    pub fn identity(&self) -> String {
        self.with(|st| st.identity.clone())
    }

    fn lose(&self, stack: &str, why: String) {
        self.with(|st| {
            if st.held.remove(stack).is_some() {
                warn!(stack, "lease for stack {stack} lost to {why}");
            }
            st.lost.insert(stack.to_owned(), why);
        });
    }
}

/// Holds and takes Leases for one process.
pub struct Coordinator {
    client: Client,
    instance: String,
    settings: Settings,
    fence: Fence,
    /// Lease name → (resourceVersion, when first seen with it), for the observation rule.
    observed: HashMap<String, (String, Instant)>,
    /// Whether this process counts as a member (a daemon) and takes stacks by share; a CLI
    /// takes the stacks it syncs and nothing else.
    member: bool,
    ticks: u64,
}

/// What one tick found.
#[derive(Debug, Default)]
pub struct Tick {
    /// Stacks taken by this tick.
    pub taken: Vec<String>,
    /// Each wanted stack's standing for this process.
    pub standings: BTreeMap<String, Standing>,
}

impl Coordinator {
    /// A coordinator for a daemon (`member`: announces itself and takes its share) or a CLI.
    pub fn new(
        client: Client,
        instance: &str,
        settings: Settings,
        fence: Fence,
        member: bool,
    ) -> Coordinator {
        Coordinator {
            client,
            instance: instance.to_owned(),
            fence,
            settings,
            observed: HashMap::new(),
            member,
            ticks: 0,
        }
    }

    /// The fence reconciles check.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Whether the last tick could take stacks (a daemon's first one only looks around).
    pub fn may_take(&self) -> bool {
        !self.member || self.ticks > 1
    }

    /// The time between ticks.
    pub fn renew_interval(&self) -> Duration {
        self.settings.renew
    }

    fn api(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    /// One round: read the instance's Leases, renew the member Lease and the stacks held (a
    /// failure loses them), then take free stacks of `wanted` (a daemon: up to its share, and
    /// not on its first round, so daemons started together see each other first; a CLI: all).
    /// `None` wanted: nothing is taken (no revision yet).
    pub async fn tick(&mut self, wanted: Option<&[String]>) -> Tick {
        self.ticks += 1;
        let listed = match self.list().await {
            Ok(l) => l,
            Err(e) => {
                for stack in self.fence.held() {
                    self.fence
                        .lose(&stack, format!("nobody: the renewal failed ({e})"));
                }
                return Tick::default();
            }
        };
        let now = Utc::now();
        let me = self.settings.identity.clone();
        let mut members = usize::from(self.member);
        let mut stack_leases: BTreeMap<String, Lease> = BTreeMap::new();
        let mut my_member: Option<Lease> = None;
        let my_member_name = member_lease_name(&self.instance, &me);
        let mut holders = BTreeMap::new();
        let (stack_prefix, member_prefix) = (
            stack_lease_name(&self.instance, ""),
            member_lease_name_prefix(&self.instance),
        );
        // Leases are recognised by name, not by label: a label is easy to forge or to leave
        // out, and a Lease of the right name without our labels must still block a take.
        for lease in listed {
            let name = lease.metadata.name.clone().unwrap_or_default();
            if name == my_member_name {
                my_member = Some(lease);
            } else if name.starts_with(&member_prefix) {
                if matches!(self.standing(&lease, now), Standing::Held(_)) {
                    members += 1;
                }
            } else if let Some(stack) = name.strip_prefix(&stack_prefix) {
                let stack = stack.to_owned();
                match self.standing(&lease, now) {
                    Standing::Mine => {
                        holders.insert(stack.clone(), decide::shown_holder(&me));
                    }
                    Standing::Held(h) => {
                        holders.insert(stack.clone(), h);
                    }
                    Standing::Free => {}
                }
                stack_leases.insert(stack, lease);
            }
        }
        if self.member
            && let Err(e) = self.hold(&my_member_name, my_member.as_ref(), None).await
        {
            warn!("renewing this daemon's membership Lease: {e}");
        }
        // Renew what is held; anything else about a held stack's Lease means it is lost.
        for stack in self.fence.held() {
            let rv = self
                .fence
                .with(|st| st.held.get(&stack).map(|h| h.resource_version.clone()));
            let lease = stack_leases.get(&stack);
            let current_rv = lease.and_then(|l| l.metadata.resource_version.clone());
            if current_rv.is_none() || current_rv != rv {
                let why = holders
                    .get(&stack)
                    .cloned()
                    .unwrap_or_else(|| "nobody: its Lease was changed or removed".to_owned());
                self.fence.lose(&stack, why);
                continue;
            }
            let name = stack_lease_name(&self.instance, &stack);
            match self.hold(&name, lease, Some(&stack)).await {
                Ok(_) => {}
                Err(e) => self
                    .fence
                    .lose(&stack, format!("nobody: the renewal failed ({e})")),
            }
        }
        let held = self.fence.held();
        let mut standings: BTreeMap<String, Standing> = BTreeMap::new();
        for (stack, lease) in &stack_leases {
            let s = if held.contains(stack) {
                Standing::Mine
            } else {
                match self.standing(lease, now) {
                    // Found as ours but not held (lost, or a previous process of this identity).
                    Standing::Mine => Standing::Free,
                    other => other,
                }
            };
            if let Standing::Held(h) = &s {
                self.fence
                    .with(|st| st.lost.insert(stack.clone(), h.clone()));
            }
            standings.insert(stack.clone(), s);
        }
        let mut tick = Tick::default();
        if let Some(wanted) = wanted {
            let candidates = if !self.member {
                wanted
                    .iter()
                    .filter(|s| matches!(standings.get(*s), None | Some(Standing::Free)))
                    .cloned()
                    .collect()
            } else if self.ticks > 1 {
                decide::to_take(wanted, &standings, members, &me)
            } else {
                Vec::new()
            };
            for stack in candidates {
                let name = stack_lease_name(&self.instance, &stack);
                match self
                    .hold(&name, stack_leases.get(&stack), Some(&stack))
                    .await
                {
                    Ok(()) => {
                        info!(stack = %stack, identity = %me, "took the lease for stack {stack}");
                        standings.insert(stack.clone(), Standing::Mine);
                        holders.insert(stack.clone(), decide::shown_holder(&me));
                        tick.taken.push(stack);
                    }
                    Err(e) => warn!(stack = %stack, "taking the lease for stack {stack}: {e}"),
                }
            }
            for stack in wanted {
                standings.entry(stack.clone()).or_insert(Standing::Free);
            }
        }
        self.fence.with(|st| st.holders = holders);
        tick.standings = standings;
        tick
    }

    fn standing(&mut self, lease: &Lease, now: DateTime<Utc>) -> Standing {
        let name = lease.metadata.name.clone().unwrap_or_default();
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        let first_seen = match self.observed.get(&name) {
            Some((seen_rv, at)) if *seen_rv == rv => *at,
            _ => {
                let at = Instant::now();
                self.observed.insert(name, (rv, at));
                at
            }
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let seen = Seen {
            holder: spec.holder_identity,
            renew_time: spec.renew_time.and_then(|t| {
                DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
            }),
            duration_seconds: spec.lease_duration_seconds.map(i64::from),
            unchanged_for: first_seen.elapsed(),
        };
        decide::standing(&seen, &self.settings.identity, now, self.settings.duration)
    }

    async fn list(&self) -> Result<Vec<Lease>> {
        match self.api().list(&ListParams::default()).await {
            Ok(list) => Ok(list.items),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
            Err(e) => Err(request_error("Leases", "list", e)),
        }
    }

    /// Creates `name` held by this process, or replaces `current` (conditional on its
    /// resourceVersion) with this process as holder, renewed now. For a stack's Lease the
    /// fence records the new resourceVersion.
    async fn hold(
        &mut self,
        name: &str,
        current: Option<&Lease>,
        stack: Option<&str>,
    ) -> Result<()> {
        let sent_at = Instant::now();
        let now = Utc::now();
        let stamp = MicroTime(
            k8s_openapi::jiff::Timestamp::new(now.timestamp(), now.timestamp_subsec_nanos() as i32)
                .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now()),
        );
        let me = &self.settings.identity;
        let mut labels = BTreeMap::from([
            (INSTANCE_LABEL.to_owned(), self.instance.clone()),
            (
                LEASE_LABEL.to_owned(),
                if stack.is_some() { "stack" } else { "member" }.to_owned(),
            ),
        ]);
        if let Some(s) = stack {
            labels.insert(STACK_LABEL.to_owned(), s.to_owned());
        }
        let old = current.and_then(|l| l.spec.clone()).unwrap_or_default();
        let renewing = old.holder_identity.as_deref() == Some(me.as_str());
        let spec = LeaseSpec {
            holder_identity: Some(me.clone()),
            lease_duration_seconds: Some(self.settings.duration.as_secs().max(1) as i32),
            renew_time: Some(stamp.clone()),
            acquire_time: if renewing {
                old.acquire_time.clone()
            } else {
                Some(stamp)
            },
            lease_transitions: Some(
                old.lease_transitions
                    .unwrap_or(0)
                    .saturating_add(i32::from(!renewing && current.is_some())),
            ),
            ..LeaseSpec::default()
        };
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(NAMESPACE.to_owned()),
                labels: Some(labels),
                resource_version: current.and_then(|l| l.metadata.resource_version.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
        };
        let api = self.api();
        let written = match current {
            Some(_) => api.replace(name, &PostParams::default(), &lease).await,
            None => {
                super::inventory::ensure_namespace(&self.client).await?;
                api.create(&PostParams::default(), &lease).await
            }
        }
        .map_err(|e| request_error(name, "write", e))?;
        if let Some(stack) = stack {
            let rv = written.metadata.resource_version.unwrap_or_default();
            // What this process wrote is fresh: the observation rule starts again.
            self.observed
                .insert(name.to_owned(), (rv.clone(), Instant::now()));
            self.fence.with(|st| {
                st.lost.remove(stack);
                st.held.insert(
                    stack.to_owned(),
                    Held {
                        resource_version: rv,
                        renewed_at: sent_at,
                    },
                )
            });
        }
        Ok(())
    }

    /// Gives up every stack held (the holder cleared, conditionally), and the membership: on
    /// a clean stop, so others take the stacks at once instead of after the duration.
    pub async fn release_all(&mut self) {
        let listed = self.list().await.unwrap_or_default();
        let me = self.settings.identity.clone();
        let held = self.fence.held();
        self.fence.with(|st| st.held.clear());
        for mut lease in listed {
            let name = lease.metadata.name.clone().unwrap_or_default();
            let ours = lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(me.as_str());
            let is_held_stack = held
                .iter()
                .any(|s| name == stack_lease_name(&self.instance, s));
            let is_my_member = name == member_lease_name(&self.instance, &me);
            if !ours || !(is_held_stack || is_my_member) {
                continue;
            }
            if let Some(spec) = lease.spec.as_mut() {
                spec.holder_identity = None;
                spec.renew_time = None;
            }
            if let Err(e) = self
                .api()
                .replace(&name, &PostParams::default(), &lease)
                .await
            {
                warn!("releasing Lease {NAMESPACE}/{name}: {e}");
            }
        }
    }
}

fn request_error(name: &str, action: &'static str, source: kube::Error) -> Error {
    Error::Request {
        object: format!("Lease {NAMESPACE}/{name}"),
        action,
        message: super::message_of(&source),
        hint: super::hint_for(&source),
        source,
    }
}
