//! A bounded LRU cache of loaded models, keyed by bundle hash and sized in
//! bytes, with single-flight loading: however many requests arrive for a
//! model that is not loaded, one load runs and the others wait for it.
//!
//! Must never: run two loads of one key at once, hold more than its
//! capacity once a load completes (the entry just loaded stays even if it
//! alone exceeds the capacity; everything else is evicted first), or cache
//! a failure (the next request tries again).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

/// Anything with a memory size.
pub trait Weighted {
    /// Approximate bytes held.
    fn weight(&self) -> usize;
}

#[derive(Debug)]
struct Slot<V> {
    cell: Arc<OnceCell<Arc<V>>>,
    /// Set once loaded: (weight, last use tick).
    loaded: Option<(usize, u64)>,
}

#[derive(Debug)]
struct Inner<V> {
    slots: HashMap<[u8; 32], Slot<V>>,
    tick: u64,
    used: usize,
}

/// Whether a lookup found the value loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// It was in the cache.
    Hit,
    /// It was loaded (by this call or one it waited for).
    Miss,
}

/// The cache.
#[derive(Debug)]
pub struct ModelCache<V> {
    inner: Mutex<Inner<V>>,
    capacity: usize,
}

impl<V: Weighted> ModelCache<V> {
    /// A cache holding at most `capacity` bytes of values.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                slots: HashMap::new(),
                tick: 0,
                used: 0,
            }),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<V>> {
        // A panic while holding the lock cannot leave the map half-updated
        // in a way that matters (each update is a single insert or remove).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value for `key`, loading it with `load` if needed.
    pub async fn get_or_load<F, Fut, E>(
        &self,
        key: [u8; 32],
        load: F,
    ) -> Result<(Arc<V>, Lookup), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let cell = {
            let mut inner = self.lock();
            inner.tick += 1;
            let tick = inner.tick;
            let slot = inner.slots.entry(key).or_insert_with(|| Slot {
                cell: Arc::new(OnceCell::new()),
                loaded: None,
            });
            if let (Some(v), Some((_, last))) = (slot.cell.get(), slot.loaded.as_mut()) {
                *last = tick;
                return Ok((v.clone(), Lookup::Hit));
            }
            slot.cell.clone()
        };
        let value = cell
            .get_or_try_init(|| async { load().await.map(Arc::new) })
            .await?
            .clone();
        self.account(key, &cell, &value);
        Ok((value, Lookup::Miss))
    }

    /// Record a completed load (once per slot) and evict down to capacity.
    fn account(&self, key: [u8; 32], cell: &Arc<OnceCell<Arc<V>>>, value: &Arc<V>) {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let Some(slot) = inner.slots.get_mut(&key) else {
            return; // evicted meanwhile; the caller still holds its Arc
        };
        if !Arc::ptr_eq(&slot.cell, cell) {
            return;
        }
        match slot.loaded.as_mut() {
            Some((_, last)) => *last = tick,
            None => {
                let w = value.weight();
                slot.loaded = Some((w, tick));
                inner.used += w;
            }
        }
        while inner.used > self.capacity {
            let victim = inner
                .slots
                .iter()
                .filter(|(k, _)| **k != key)
                .filter_map(|(k, s)| s.loaded.map(|(w, t)| (t, *k, w)))
                .min();
            let Some((_, k, w)) = victim else { break };
            inner.slots.remove(&k);
            inner.used -= w;
        }
    }

    /// Bytes held by loaded values.
    pub fn used(&self) -> usize {
        self.lock().used
    }

    /// Whether `key` is loaded.
    #[cfg(test)]
    pub fn contains(&self, key: &[u8; 32]) -> bool {
        self.lock()
            .slots
            .get(key)
            .is_some_and(|s| s.loaded.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug)]
    struct V(usize);
    impl Weighted for V {
        fn weight(&self) -> usize {
            self.0
        }
    }

    fn k(b: u8) -> [u8; 32] {
        [b; 32]
    }

    #[tokio::test]
    async fn concurrent_misses_trigger_one_load() {
        let cache = Arc::new(ModelCache::<V>::new(100));
        let loads = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (cache, loads) = (cache.clone(), loads.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_load(k(1), || async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        Ok::<_, ()>(V(10))
                    })
                    .await
                    .unwrap()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().0.0, 10);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        let (_, lookup) = cache
            .get_or_load(k(1), || async { Err::<V, ()>(()) })
            .await
            .unwrap();
        assert_eq!(lookup, Lookup::Hit);
    }

    #[tokio::test]
    async fn evicts_least_recently_used_by_bytes() {
        let cache = ModelCache::<V>::new(100);
        for b in 1..=3 {
            cache
                .get_or_load(k(b), || async { Ok::<_, ()>(V(40)) })
                .await
                .unwrap();
        }
        // 120 > 100: the oldest (1) went.
        assert!(!cache.contains(&k(1)) && cache.contains(&k(2)) && cache.contains(&k(3)));
        assert_eq!(cache.used(), 80);
        // Touch 2, load 4: 3 is now the least recently used.
        cache
            .get_or_load(k(2), || async { Err::<V, ()>(()) })
            .await
            .unwrap();
        cache
            .get_or_load(k(4), || async { Ok::<_, ()>(V(40)) })
            .await
            .unwrap();
        assert!(cache.contains(&k(2)) && !cache.contains(&k(3)) && cache.contains(&k(4)));
        // One value larger than the whole cache stays, alone.
        cache
            .get_or_load(k(5), || async { Ok::<_, ()>(V(500)) })
            .await
            .unwrap();
        assert!(cache.contains(&k(5)));
        assert_eq!(cache.used(), 500);
    }

    #[tokio::test]
    async fn failures_are_not_cached() {
        let cache = ModelCache::<V>::new(100);
        assert_eq!(
            cache
                .get_or_load(k(1), || async { Err::<V, &str>("refused") })
                .await
                .unwrap_err(),
            "refused"
        );
        assert!(!cache.contains(&k(1)));
        let (v, lookup) = cache
            .get_or_load(k(1), || async { Ok::<_, &str>(V(1)) })
            .await
            .unwrap();
        assert_eq!((v.0, lookup), (1, Lookup::Miss));
    }
}
