//! Pure work on many items split across the cores: one mechanism for every module that does it
//! (the stored revision's serialising and hashing, policy evaluation), with no dependencies of
//! its own.

/// `work` over `items` in as many parts as there are cores (at most `max_threads`), the parts'
/// results joined in order; on one thread when there are fewer than `from` items. A panic in a
/// part is re-raised here, as it would be without threads.
pub fn in_parts<T: Sync, R: Send>(
    items: &[T],
    from: usize,
    max_threads: usize,
    work: impl Fn(&[T]) -> Vec<R> + Sync,
) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, max_threads.max(1));
    if threads == 1 || items.len() < from.max(1) {
        return work(items);
    }
    let part = items.len().div_ceil(threads);
    let work = &work;
    std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .chunks(part)
            .map(|part| scope.spawn(move || work(part)))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_joined_in_order_whatever_the_size() {
        let items: Vec<u32> = (0..1000).collect();
        for from in [0, 10, 5000] {
            let out = in_parts(&items, from, 8, |part| {
                part.iter().map(|i| i * 2).collect::<Vec<_>>()
            });
            assert_eq!(
                out,
                items.iter().map(|i| i * 2).collect::<Vec<_>>(),
                "from {from}"
            );
        }
        assert!(in_parts(&[] as &[u32], 0, 8, |p| p.to_vec()).is_empty());
    }
}
