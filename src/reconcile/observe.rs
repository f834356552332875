//! Stage 2, observe: what the cluster holds for each desired object of one stack. The live state
//! comes from few LISTs (`cluster::live`); then each object that may have changed since driftless
//! applied it is dry-run, `OBSERVE_CONCURRENCY` at a time. Which objects need no read or no
//! dry-run is decided by `plan::unchanged`; whether a refused change is recreated by
//! `plan::recreate`.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::Value;
use tracing::warn;

use super::bind::Bound;
use super::{StackContext, Takeover, in_flight};
use crate::cluster::Error as ClusterError;
use crate::cluster::{apply, live};
use crate::logging::Lap;
use crate::plan::Observation;
use crate::plan::{recreate, signature, unchanged};
use crate::stack::ObjectKey;

/// Dry-runs in flight at once while observing a stack.
const OBSERVE_CONCURRENCY: usize = 16;

/// What observing a stack found.
pub(super) struct Observed {
    /// One per desired object, in the stack's order.
    pub observations: Vec<Observation>,
    /// Fields a forced apply would take over from other managers.
    pub takeovers: Vec<Takeover>,
    /// Objects to delete and create again (an immutable field changed; opted in).
    pub recreate: Vec<String>,
    /// Why objects that would be recreated may not be: nothing of the stack is applied then.
    pub refused: Vec<String>,
    /// Objects read as metadata only (their whole object was not needed).
    pub partial: HashSet<ObjectKey>,
    /// Per object, in the stack's order: skipped unread (the incremental skip).
    pub skipped: Vec<bool>,
    /// Objects whose record may be renewed with their live signature if the plan finds them
    /// unchanged (`plan::unchanged::confirmed`): those dry-run after their signature was read,
    /// and those an older version's record vouches for exactly (`plan::unchanged::adopt`).
    pub renewals: HashMap<ObjectKey, Renewal>,
}

/// What the record of one object may take.
pub(super) struct Renewal {
    /// From the metadata-only LIST.
    pub live: String,
    /// Of the dry-run's result (of the live object when no dry-run was needed).
    pub would_be: Option<String>,
    pub resource_version: Option<String>,
    pub generation: Option<i64>,
}

/// What observing one object found.
struct One {
    observation: Observation,
    takeover: Option<Takeover>,
    recreate: bool,
    refused: Option<String>,
    renewal: Option<Renewal>,
}

/// Observes every object of the stack.
pub(super) async fn observe(
    ctx: &StackContext<'_>,
    objects: &[Bound<'_>],
    lap: &mut Lap<'_>,
) -> Result<Observed, ClusterError> {
    let hashes: Vec<Option<String>> = objects
        .iter()
        .map(|b| {
            let key = ctx.options.secret_hash_key.as_ref();
            apply::applied_hash(b.desired, key, &ctx.options.instance)
        })
        .collect();
    let skipped: Vec<bool> = objects
        .iter()
        .zip(&hashes)
        .map(|(b, hash)| {
            let last = ctx.recorded.get(&b.desired.key).map(|e| e.last_apply());
            unchanged::skip_unread(ctx.options.incremental, last.as_ref(), hash.as_deref())
        })
        .collect();
    let wants: Vec<live::Want<'_>> = objects
        .iter()
        .zip(&skipped)
        .filter(|(_, skipped)| !**skipped)
        .filter_map(|(b, _)| {
            b.resolved.as_ref().map(|r| live::Want {
                key: &b.desired.key,
                resource: &r.resource,
                namespace: b.namespace.as_deref(),
                // Incremental reads of a few objects: GETs (or a LIST of their namespace), not
                // a LIST of every object of the stack of that kind.
                recorded: !ctx.options.incremental && ctx.recorded.contains_key(&b.desired.key),
                status_subresource: r.status_subresource,
            })
        })
        .collect();
    lap.log("found the objects unchanged in Git");
    // Namespaces the stack never applied (a first sync) are looked up first: nothing is read in
    // one that does not exist (a LIST or GET there could only find nothing).
    let (first, rest): (Vec<live::Want<'_>>, Vec<live::Want<'_>>) =
        wants.into_iter().partition(|w| {
            w.key.kind == "Namespace" && w.key.group.is_empty() && !ctx.recorded.contains_key(w.key)
        });
    let (mut live_state, _) = live::fetch_with(ctx.client, &ctx.stack.name, &first, true).await?;
    let absent: BTreeSet<&str> = live_state
        .iter()
        .filter(|(_, live)| live.is_none())
        .map(|(k, _)| k.name.as_str())
        .collect();
    let (nowhere, rest): (Vec<live::Want<'_>>, Vec<live::Want<'_>>) = rest
        .into_iter()
        .partition(|w| w.namespace.is_some_and(|n| absent.contains(n)));
    let nowhere: Vec<ObjectKey> = nowhere.into_iter().map(|w| w.key.clone()).collect();
    // Metadata is enough to know an object is still as driftless applied it; the whole object
    // is read (GET) only for those that need a dry-run.
    let (found, signatures) = live::fetch_with(ctx.client, &ctx.stack.name, &rest, true).await?;
    live_state.extend(found);
    live_state.extend(nowhere.into_iter().map(|k| (k, None)));
    lap.log("read the live objects");
    // Namespaces this sync creates: what goes into them cannot exist yet, and a dry-run there
    // would only be refused (and cost the API server a namespace lookup).
    let new_namespaces: BTreeSet<String> = objects
        .iter()
        .filter(|b| b.desired.key.kind == "Namespace" && b.desired.key.group.is_empty())
        .filter(|b| matches!(live_state.get(&b.desired.key), Some(None)))
        .map(|b| b.desired.key.name.clone())
        .collect();
    let mut pending = Vec::new();
    for ((b, hash), skipped) in objects.iter().zip(&hashes).zip(&skipped) {
        if *skipped {
            continue;
        }
        let live = live_state.remove(&b.desired.key).flatten();
        let in_new_namespace = b
            .desired
            .key
            .namespace
            .as_ref()
            .is_some_and(|n| new_namespaces.contains(n));
        pending.push(observe_one(
            ctx,
            b,
            hash.as_deref(),
            live,
            signatures.get(&b.desired.key).map(String::as_str),
            in_new_namespace,
        ));
    }
    let mut read = in_flight(pending, OBSERVE_CONCURRENCY).await.into_iter();
    lap.log("dry-runs");
    let mut observed = Observed {
        observations: Vec::with_capacity(objects.len()),
        takeovers: Vec::new(),
        recreate: Vec::new(),
        refused: Vec::new(),
        partial: signatures.keys().cloned().collect(),
        skipped,
        renewals: HashMap::new(),
    };
    for (b, skipped) in objects.iter().zip(&observed.skipped) {
        let one = if *skipped {
            One::unchanged(unread(b, None))
        } else {
            // One result per object not skipped, in order.
            match read.next() {
                Some(result) => result?,
                None => continue,
            }
        };
        observed.takeovers.extend(one.takeover);
        if one.recreate {
            observed.recreate.push(one.observation.key.to_string());
        }
        observed.refused.extend(one.refused);
        if let Some(renewal) = one.renewal {
            observed
                .renewals
                .insert(one.observation.key.clone(), renewal);
        }
        observed.observations.push(one.observation);
    }
    Ok(observed)
}

impl One {
    fn unchanged(observation: Observation) -> One {
        One {
            observation,
            takeover: None,
            recreate: false,
            refused: None,
            renewal: None,
        }
    }
}

/// An observation without a dry-run: the object is unchanged since its last apply.
fn unread(b: &Bound<'_>, live: Option<Value>) -> Observation {
    Observation {
        key: b.desired.key.clone(),
        api_version: b.desired.api_version.clone(),
        live,
        would_be: None,
    }
}

/// One object's observation: unchanged since driftless applied it (no request), or its dry-run
/// result. `live_signature` is set when `live` was read as metadata only.
async fn observe_one(
    ctx: &StackContext<'_>,
    b: &Bound<'_>,
    hash: Option<&str>,
    live: Option<Value>,
    live_signature: Option<&str>,
    in_new_namespace: bool,
) -> Result<One, ClusterError> {
    let partial = live_signature.is_some();
    let key = &b.desired.key;
    let resolved = b.resolved.as_ref().filter(|_| !in_new_namespace);
    let Some(resolved) = resolved else {
        // The CRD comes with this revision, or the namespace: the server cannot dry-run it
        // yet; the change is the whole object.
        return Ok(One::unchanged(Observation {
            would_be: Some(b.desired.object.clone()),
            ..unread(b, None)
        }));
    };
    let api = resolved.api(ctx.client, b.namespace.as_deref());
    let instance = &ctx.options.instance;
    let unchanged = ctx.recorded.get(key).is_some_and(|e| {
        live.as_ref().is_some_and(|l| {
            unchanged::unchanged_since_apply(
                &e.last_apply(),
                hash,
                l,
                live_signature,
                &b.desired.object,
                instance,
            )
        })
    });
    if unchanged {
        // A record of an older version vouched for by the exact resourceVersion: the signature
        // the apply would have recorded is the live one.
        let adopted = ctx.recorded.get(key).and_then(|e| {
            let live = live.as_ref()?;
            let signature = live_signature.filter(|_| unchanged::adopt(&e.last_apply(), live))?;
            Some(Renewal {
                live: signature.to_owned(),
                would_be: Some(signature.to_owned()),
                resource_version: e.resource_version.clone(),
                generation: live.pointer("/metadata/generation").and_then(Value::as_i64),
            })
        });
        return Ok(One {
            renewal: adopted,
            ..One::unchanged(unread(b, live))
        });
    }
    // Read as metadata only: the whole object is needed for the diff. The read and the
    // dry-run are independent, so they go out together.
    let read = async {
        if partial {
            apply::get(&api, &key.name, &key.to_string()).await
        } else {
            Ok(live)
        }
    };
    let (live, dry_run) = futures::join!(
        read,
        apply::apply(
            &api,
            b.desired,
            apply::ApplyParams {
                force: ctx.stack.spec.force,
                dry_run: true,
                instance,
            }
        )
    );
    let live = live?;
    let mut takeover = None;
    let mut recreate = false;
    let mut refused = None;
    let mut renewal = None;
    let would_be = match dry_run {
        Ok((v, conflicts)) => {
            renewal = live_signature.map(|live| Renewal {
                live: live.to_owned(),
                would_be: signature::of_object(&v, resolved.status_subresource),
                resource_version: v
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                generation: v.pointer("/metadata/generation").and_then(Value::as_i64),
            });
            if !conflicts.is_empty() {
                takeover = Some(Takeover {
                    object: key.to_string(),
                    conflicts,
                });
            }
            v
        }
        Err(e) => {
            let Some(status) = refusal(&e) else {
                return Err(e);
            };
            let namespace_comes = key
                .namespace
                .as_ref()
                .is_some_and(|n| ctx.revision.desired_namespaces.contains(n));
            if status.code == 404 && live.is_none() && namespace_comes {
                // Its namespace is created by this sync: the server cannot dry-run it yet.
                b.desired.object.clone()
            } else {
                let owner = ctx.options.owner(&ctx.stack.name);
                let (code, message) = (status.code, status.message.as_str());
                match recreate::decide(
                    key,
                    &b.desired.object,
                    (code, message),
                    live.as_ref(),
                    owner,
                    &ctx.options.allow_recreate,
                ) {
                    recreate::Recreate::No => return Err(e),
                    recreate::Recreate::Yes => {
                        warn!(stack = %ctx.stack.name, object = %key, "immutable field changed: will delete and recreate ({})", recreate::RECREATE_ANNOTATION);
                        recreate = true;
                    }
                    recreate::Recreate::Refused(why) => {
                        warn!(stack = %ctx.stack.name, object = %key, "{why}");
                        refused = Some(why);
                    }
                }
                b.desired.object.clone()
            }
        }
    };
    Ok(One {
        observation: Observation {
            live,
            would_be: Some(would_be),
            ..unread(b, None)
        },
        takeover,
        recreate,
        refused,
        renewal,
    })
}

/// The API server's refusal inside an error, if that is what it is.
fn refusal(e: &ClusterError) -> Option<&kube::core::Status> {
    match e {
        ClusterError::Request {
            source: kube::Error::Api(s),
            ..
        } => Some(s),
        _ => None,
    }
}
