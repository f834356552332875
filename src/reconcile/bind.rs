//! Stage 1, bind: every desired object of the revision to the API resource that serves it, before
//! anything is written. An unknown kind (not served, and no CRD of this revision defines it) or a
//! namespaced object without a namespace aborts the reconcile here.

use std::collections::{BTreeMap, BTreeSet};

use super::Error;
use crate::cluster::Error as ClusterError;
use crate::cluster::discovery::{Kinds, Resolved};
use crate::plan::prune::KeySet;
use crate::stack::{DesiredObject, RenderedStack};

/// A desired object bound to the API resource that serves it.
pub(super) struct Bound<'a> {
    pub desired: &'a DesiredObject,
    /// `None` while the kind awaits a CRD of this revision.
    pub resolved: Option<Resolved>,
    /// Where requests about it go (`None`: cluster-scoped, or not known until its CRD exists).
    pub namespace: Option<String>,
}

impl Bound<'_> {
    /// The resource serving this object: as bound, or (a custom resource of a CRD applied
    /// earlier in this sync) as `kinds` now resolves it.
    pub fn resolve(&self, kinds: &Kinds) -> Result<Resolved, ClusterError> {
        match &self.resolved {
            Some(r) => Ok(r.clone()),
            None => kinds
                .resolve(&self.desired.api_version, &self.desired.key.kind)
                .ok_or_else(|| unknown_kind(self.desired)),
        }
    }
}

/// The revision, bound: each stack's objects, and what the whole revision declares.
pub(super) struct BoundRevision<'a> {
    pub stacks: BTreeMap<String, Vec<Bound<'a>>>,
    /// Every object any stack of the revision declares (never a prune candidate).
    pub desired_keys: KeySet<'a>,
    /// The Namespaces the revision declares.
    pub desired_namespaces: BTreeSet<String>,
}

impl<'a> BoundRevision<'a> {
    /// Binds every object of `stacks`; the first that cannot be served is an error.
    pub fn bind(kinds: &Kinds, stacks: &'a [RenderedStack]) -> Result<BoundRevision<'a>, Error> {
        // Kinds the revision's own CRDs will define.
        let pending_crds: BTreeSet<(String, String)> = stacks
            .iter()
            .flat_map(|s| &s.objects)
            .filter(|o| o.key.kind == "CustomResourceDefinition")
            .filter_map(|o| {
                Some((
                    o.object.pointer("/spec/group")?.as_str()?.to_owned(),
                    o.object.pointer("/spec/names/kind")?.as_str()?.to_owned(),
                ))
            })
            .collect();
        let mut bound = BTreeMap::new();
        for stack in stacks {
            let list = stack
                .objects
                .iter()
                .map(|o| bind(kinds, &pending_crds, o))
                .collect::<Result<Vec<_>, _>>()?;
            bound.insert(stack.name.clone(), list);
        }
        let all = || stacks.iter().flat_map(|s| &s.objects);
        Ok(BoundRevision {
            stacks: bound,
            desired_keys: all().map(|o| &o.key).collect(),
            desired_namespaces: all()
                .filter(|o| o.key.kind == "Namespace" && o.key.group.is_empty())
                .map(|o| o.key.name.clone())
                .collect(),
        })
    }

    /// The objects of one stack.
    pub fn of(&self, stack: &str) -> &[Bound<'a>] {
        self.stacks
            .get(stack)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Every managed kind, each once (for drift watches).
    pub fn resources(&self) -> Vec<Resolved> {
        let mut resources: Vec<Resolved> = Vec::new();
        for r in self
            .stacks
            .values()
            .flatten()
            .filter_map(|b| b.resolved.as_ref())
        {
            if !resources
                .iter()
                .any(|x| x.group == r.resource.group && x.kind == r.resource.kind)
            {
                resources.push(r.clone());
            }
        }
        resources
    }
}

fn bind<'a>(
    kinds: &Kinds,
    pending_crds: &BTreeSet<(String, String)>,
    o: &'a DesiredObject,
) -> Result<Bound<'a>, Error> {
    match kinds.resolve(&o.api_version, &o.key.kind) {
        Some(resolved) => {
            if resolved.namespaced && o.key.namespace.is_none() {
                return Err(ClusterError::NoNamespace {
                    place: format!("{} ({})", o.key, o.place),
                    kind: o.key.kind.clone(),
                }
                .into());
            }
            Ok(Bound {
                desired: o,
                namespace: resolved
                    .namespace_for(o.key.namespace.as_deref())
                    .map(str::to_owned),
                resolved: Some(resolved),
            })
        }
        None if pending_crds.contains(&(o.key.group.clone(), o.key.kind.clone())) => Ok(Bound {
            desired: o,
            resolved: None,
            namespace: o.key.namespace.clone(),
        }),
        None => Err(unknown_kind(o).into()),
    }
}

fn unknown_kind(o: &DesiredObject) -> ClusterError {
    ClusterError::UnknownKind {
        place: o.place.to_string(),
        api_version: o.api_version.clone(),
        kind: o.key.kind.clone(),
    }
}
