//! The live state of many objects with few requests. Objects this stack applied before (in its
//! inventory) carry the stack label: one cluster-wide, label-selected LIST per kind reads them
//! all. Objects not applied yet (or missing from that list: deleted, or relabelled behind our
//! back) are looked up per namespace: a LIST of the namespace when several are wanted there, a
//! GET otherwise. Absence is only concluded from an unfiltered read, never from a
//! label-selected one. Requests run with bounded concurrency.

use std::collections::{BTreeMap, HashMap};

use futures::StreamExt;
use kube::Client;
use kube::api::{ApiResource, DynamicObject, ListParams, PartialObjectMeta};
use serde_json::Value;

use super::apply::{api_for, redact_secret};
use super::{Error, Result};
use crate::stack::render::{ObjectKey, STACK_LABEL};

/// Concurrent reads: the metadata LISTs of a stack of up to 32 kinds go out at once.
const CONCURRENCY: usize = 32;
/// From this many objects of one kind in one namespace on, a LIST replaces the GETs.
const LIST_THRESHOLD: usize = 3;

/// One object whose live state is wanted.
pub struct Want<'a> {
    pub key: &'a ObjectKey,
    pub resource: &'a ApiResource,
    /// The namespace to read it in (`None`: cluster-scoped).
    pub namespace: Option<&'a str>,
    /// Whether the stack's inventory records it (so it should carry the stack label).
    pub recorded: bool,
    /// Whether its kind has a status subresource (for its `plan::signature`).
    pub status_subresource: bool,
}

type Found = HashMap<(Option<String>, String), Value>;
/// Objects read as metadata only, with their signatures (`plan::signature`).
pub type Signatures = HashMap<ObjectKey, String>;
/// Live states of some objects (`None`: absent).
type States = Vec<(ObjectKey, Option<Value>)>;

fn resource_id(r: &ApiResource) -> String {
    format!("{}/{}/{}", r.group, r.version, r.plural)
}

/// Every page of a LIST, each item handed to `each`; `what` names the list in errors.
async fn list_pages<K>(
    api: &kube::Api<K>,
    mut params: ListParams,
    what: &str,
    mut each: impl FnMut(K),
) -> Result<()>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    loop {
        let page = api.list(&params).await.map_err(|source| Error::Request {
            object: what.to_owned(),
            action: "list",
            message: super::message_of(&source),
            hint: super::hint_for(&source),
            source,
        })?;
        page.items.into_iter().for_each(&mut each);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => params = params.continue_token(&c),
            None => return Ok(()),
        }
    }
}

/// Lists `resource` (in `namespace`, or everywhere), optionally label-selected, every page.
async fn list(
    client: &Client,
    resource: &ApiResource,
    namespace: Option<&str>,
    selector: Option<&str>,
) -> Result<Found> {
    let api = api_for(client, resource, namespace);
    let mut params = ListParams::default().limit(500);
    if let Some(s) = selector {
        params = params.labels(s);
    }
    let what = format!(
        "{}{}",
        resource.plural,
        namespace.map(|n| format!(" in {n}")).unwrap_or_default()
    );
    let mut out = Found::new();
    list_pages(&api, params, &what, |mut item: DynamicObject| {
        // Never looked at here (diffs drop them too), and often half an object's size.
        item.metadata.managed_fields = None;
        out.insert(
            (
                item.metadata.namespace.clone(),
                item.metadata.name.clone().unwrap_or_default(),
            ),
            to_value(item, resource),
        );
    })
    .await?;
    Ok(out)
}

/// Lists the metadata (`PartialObjectMetadata`) of `resource` everywhere, label-selected, every
/// page: what tells whether an object is still as driftless applied it (its signature, taken
/// before `managedFields` are dropped), at a fraction of the size. The second map holds each
/// item's signature.
async fn list_metadata(
    client: &Client,
    resource: &ApiResource,
    selector: &str,
    status_subresource: bool,
) -> Result<(Found, HashMap<(Option<String>, String), String>)> {
    let api: kube::Api<PartialObjectMeta<DynamicObject>> =
        kube::Api::all_with(client.clone(), resource);
    let params = ListParams::default().limit(500).labels(selector);
    let mut out = Found::new();
    let mut signatures = HashMap::new();
    list_pages(&api, params, &resource.plural, |mut item| {
        let signature = crate::plan::signature::of(&item.metadata, status_subresource);
        item.metadata.managed_fields = None;
        let key = (
            item.metadata.namespace.clone(),
            item.metadata.name.clone().unwrap_or_default(),
        );
        let metadata = serde_json::to_value(&item.metadata).unwrap_or(Value::Null);
        signatures.insert(key.clone(), signature);
        out.insert(
            key,
            serde_json::json!({
                "apiVersion": resource.api_version,
                "kind": resource.kind,
                "metadata": metadata,
            }),
        );
    })
    .await?;
    Ok((out, signatures))
}

/// A listed item as a GET would return it: list items carry no `apiVersion`/`kind`.
fn to_value(item: DynamicObject, resource: &ApiResource) -> Value {
    let mut v = serde_json::to_value(item).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        map.insert(
            "apiVersion".into(),
            Value::String(resource.api_version.clone()),
        );
        map.insert("kind".into(), Value::String(resource.kind.clone()));
    }
    redact_secret(&mut v);
    v
}

/// Reads the live state of every wanted object: `Some(object)` or `None` when it does not exist.
pub async fn fetch(
    client: &Client,
    stack: &str,
    wants: &[Want<'_>],
) -> Result<HashMap<ObjectKey, Option<Value>>> {
    Ok(fetch_with(client, stack, wants, false).await?.0)
}

/// `fetch`; with `metadata_only`, recorded objects found by the label-selected LISTs come as
/// `apiVersion`, `kind` and `metadata` (without `managedFields`) only, and are returned in the
/// second map with their signatures (read the whole object with a GET where more is needed).
pub async fn fetch_with(
    client: &Client,
    stack: &str,
    wants: &[Want<'_>],
    metadata_only: bool,
) -> Result<(HashMap<ObjectKey, Option<Value>>, Signatures)> {
    let mut out: HashMap<ObjectKey, Option<Value>> = HashMap::new();
    let mut partial = Signatures::new();
    // 1. Recorded objects: one label-selected LIST per kind, cluster-wide.
    let mut by_resource: BTreeMap<String, (&ApiResource, bool)> = BTreeMap::new();
    for w in wants.iter().filter(|w| w.recorded) {
        by_resource.insert(resource_id(w.resource), (w.resource, w.status_subresource));
    }
    let selector = format!("{STACK_LABEL}={stack}");
    let lists: Vec<_> = by_resource
        .iter()
        .map(|(id, (r, status_subresource))| {
            let selector = selector.as_str();
            async move {
                let found = if metadata_only {
                    list_metadata(client, r, selector, *status_subresource).await
                } else {
                    list(client, r, None, Some(selector))
                        .await
                        .map(|f| (f, HashMap::new()))
                };
                (id.clone(), found)
            }
        })
        .collect();
    type Listed = (Found, HashMap<(Option<String>, String), String>);
    let listed: Vec<(String, Result<Listed>)> = futures::stream::iter(lists)
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut labelled: HashMap<String, Listed> = HashMap::new();
    for (id, found) in listed {
        labelled.insert(id, found?);
    }
    let mut rest: Vec<&Want<'_>> = Vec::new();
    for w in wants {
        let hit = w.recorded.then(|| {
            let (found, signatures) = labelled.get_mut(&resource_id(w.resource))?;
            let at = (w.namespace.map(str::to_owned), w.key.name.clone());
            Some((found.remove(&at)?, signatures.remove(&at)))
        });
        match hit.flatten() {
            Some((v, signature)) => {
                if let Some(signature) = signature {
                    partial.insert(w.key.clone(), signature);
                }
                out.insert(w.key.clone(), Some(v));
            }
            None => rest.push(w),
        }
    }
    // 2. The others: per kind and namespace, a LIST or GETs.
    let mut groups: BTreeMap<(String, Option<String>), Vec<&Want<'_>>> = BTreeMap::new();
    for w in rest {
        groups
            .entry((resource_id(w.resource), w.namespace.map(str::to_owned)))
            .or_default()
            .push(w);
    }
    let reads: Vec<_> = groups
        .into_values()
        .map(|group| async move {
            let first = group[0];
            if group.len() >= LIST_THRESHOLD {
                let mut found = list(client, first.resource, first.namespace, None).await?;
                Ok(group
                    .iter()
                    .map(|w| {
                        let v = found.remove(&(w.namespace.map(str::to_owned), w.key.name.clone()));
                        (w.key.clone(), v)
                    })
                    .collect::<States>())
            } else {
                let mut got = Vec::new();
                for w in &group {
                    let api = api_for(client, w.resource, w.namespace);
                    let v = super::apply::get(&api, &w.key.name, &w.key.to_string()).await?;
                    got.push((w.key.clone(), v));
                }
                Ok(got)
            }
        })
        .collect();
    let results: Vec<Result<States>> = futures::stream::iter(reads)
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for r in results {
        out.extend(r?);
    }
    Ok((out, partial))
}
/// Every object of a kind in all namespaces, page by page (500 a page): `each` sees each page's
/// objects. For cluster-wide scans that are not about managed objects (the images workloads
/// use, for ImageCleanup's protection).
pub async fn for_each_in_cluster(
    client: &Client,
    resource: &ApiResource,
    mut each: impl FnMut(&DynamicObject),
) -> std::result::Result<(), kube::Error> {
    let api: kube::Api<DynamicObject> = kube::Api::all_with(client.clone(), resource);
    let mut params = ListParams::default().limit(500);
    loop {
        let list = api.list(&params).await?;
        list.items.iter().for_each(&mut each);
        match list.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => params = params.continue_token(&c),
            None => return Ok(()),
        }
    }
}
