//! A CLI `sync` under Leases: the stacks it writes (and the stacks of its source that left the
//! revision, when their Leases are free) are taken first, exactly as a daemon holds them, and
//! the reconcile is fenced by them; a stack a daemon holds is refused naming the holder, or
//! waited for with `wait_lease`.

use kube::Client;

use super::{Error, Options, Report};
use crate::cluster::discovery::Kinds;
use crate::stack::RenderedStack;

/// Reconciles `stacks` holding their Leases (a dry run takes none).
pub async fn reconcile_leased(
    client: &Client,
    stacks: &[RenderedStack],
    mut options: Options,
    settings: crate::cluster::lease::Settings,
    wait_lease: bool,
) -> Result<Report, Error> {
    if options.dry_run {
        return super::reconcile(client, stacks, &options).await;
    }
    // Unknown stacks are refused before any Lease is taken for them.
    if let Some(name) = options
        .only
        .iter()
        .find(|n| !stacks.iter().any(|s| &s.name == *n))
    {
        return Err(Error::UnknownStack(name.clone()));
    }
    let names: Vec<String> = if options.only.is_empty() {
        stacks.iter().map(|s| s.name.clone()).collect()
    } else {
        options.only.clone()
    };
    // Stacks of this source that left the revision are written too (removed or handed over)
    // when their Leases are free.
    // The inventories are listed before the Leases are taken, as the API server's watch cache
    // holds them (`list_cached`: no wait, possibly a moment old), only to nominate Leases; the
    // records of the stacks this sync writes are read again by GET once their Leases are held,
    // so what the reconcile bases its writes on is what nobody else can change any more.
    // Discovery goes out meanwhile.
    let (listed, kinds) = futures::join!(
        crate::cluster::inventory::list_cached(client, &options.instance),
        Kinds::discover(client)
    );
    let listed = listed?;
    let mut optional = Vec::new();
    if options.only.is_empty() {
        for inv in &listed.own {
            if !names.contains(&inv.stack)
                && inv.source == options.source
                && crate::stack::load::is_dns_label(&inv.stack)
            {
                optional.push(inv.stack.clone());
            }
        }
    }
    let leases = crate::cluster::lease::SyncLeases::take(
        client.clone(),
        &options.instance,
        settings,
        &names,
        &optional,
        wait_lease,
    )
    .await?;
    options.fence = Some(leases.fence());
    let held: Vec<String> = names.iter().chain(&optional).cloned().collect();
    let report = match (
        kinds,
        crate::cluster::inventory::refresh(client, &options.instance, listed, &held).await,
    ) {
        (Ok(kinds), Ok(listed)) => {
            let read = super::Read { kinds, listed };
            super::reconcile_discovered(client, stacks, &options, Some(read)).await
        }
        (Err(e), _) | (_, Err(e)) => Err(e.into()),
    };
    leases.release().await;
    report
}
