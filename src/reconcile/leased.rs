//! A CLI `sync` under Leases: the stacks it writes (and the stacks of its source that left the
//! revision, when their Leases are free) are taken first, exactly as a daemon holds them, and
//! the reconcile is fenced by them; a stack a daemon holds is refused naming the holder, or
//! waited for with `wait_lease`.

use kube::Client;

use super::{Error, Options, Report};
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
    let mut optional = Vec::new();
    if options.only.is_empty() {
        let listed = crate::cluster::inventory::list(client, &options.instance).await?;
        for inv in listed.own {
            if !names.contains(&inv.stack)
                && inv.source == options.source
                && crate::stack::load::is_dns_label(&inv.stack)
            {
                optional.push(inv.stack);
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
    let report = super::reconcile(client, stacks, &options).await;
    leases.release().await;
    report
}
