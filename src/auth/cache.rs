//! The answers auth keeps (verified tokens, the webhook's answers): bounded
//! by entries and by bytes, and counted in the hub's [`Meter`], so that what
//! clients can make the server remember is part of `--max-memory` and of
//! `/stats`' `memory_bytes`.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

use crate::hub::Meter;

/// Entries one cache keeps at most, whatever their size.
pub const MAX_ENTRIES: usize = 65_536;
/// Bytes a cache entry takes besides its key's own: the map's slot, the
/// value and the allocator's rounding.
const ENTRY: usize = 96;

/// A map that forgets when full: first the entries no longer alive, then
/// everything.
#[derive(Debug)]
pub struct Bounded<K, V, S> {
    map: HashMap<K, (V, usize), S>,
    bytes: usize,
    budget: usize,
    meter: Meter,
}

impl<K: Hash + Eq, V, S: BuildHasher + Default> Bounded<K, V, S> {
    /// An empty cache of at most `budget` bytes, counted in `meter`.
    pub fn new(budget: usize, meter: Meter) -> Self {
        Bounded {
            map: HashMap::default(),
            bytes: 0,
            budget,
            meter,
        }
    }

    /// The value for `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(key).map(|(v, _)| v)
    }

    /// Forgets `key`.
    pub fn remove<Q>(&mut self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some((_, cost)) = self.map.remove(key) {
            self.take(cost);
        }
    }

    /// Keeps `value` for `key`, which with its value takes `size` bytes of
    /// its own; makes room first by dropping what is not `alive`, then
    /// everything. An entry larger than the budget is not kept.
    pub fn insert(&mut self, key: K, value: V, size: usize, alive: impl Fn(&V) -> bool) {
        let cost = size + ENTRY;
        if cost > self.budget {
            return;
        }
        if self.map.len() >= MAX_ENTRIES || self.bytes + cost > self.budget {
            let mut freed = 0;
            self.map.retain(|_, (v, c)| {
                let keep = alive(v);
                if !keep {
                    freed += *c;
                }
                keep
            });
            self.take(freed);
            if self.map.len() >= MAX_ENTRIES || self.bytes + cost > self.budget {
                self.map.clear();
                self.take(self.bytes);
            }
        }
        if let Some((_, old)) = self.map.insert(key, (value, cost)) {
            self.take(old);
        }
        self.bytes += cost;
        self.meter.add(cost);
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn take(&mut self, cost: usize) {
        self.bytes -= cost;
        self.meter.sub(cost);
    }
}

impl<K, V, S> Drop for Bounded<K, V, S> {
    fn drop(&mut self) {
        self.meter.sub(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::RandomState;

    #[test]
    fn stays_within_its_budget_and_counts_what_it_holds() {
        type Cache = Bounded<u32, bool, RandomState>;
        let one = ENTRY + 4;
        let meter = Meter::default();
        let mut cache = Cache::new(10 * one, meter.clone());
        for k in 0..1000 {
            cache.insert(k, k % 2 == 0, 4, |_| true);
            assert!(cache.bytes() <= 10 * one);
            assert_eq!(meter.bytes(), cache.bytes());
        }
        drop(cache);
        assert_eq!(meter.bytes(), 0, "a dropped cache is uncounted");

        // The live entries survive a clean-up; the dead ones go first.
        let mut cache = Cache::new(3 * one, meter.clone());
        cache.insert(1, true, 4, |_| true);
        cache.insert(2, false, 4, |_| true);
        cache.insert(3, false, 4, |_| true);
        cache.insert(4, true, 4, |alive| *alive);
        assert_eq!(cache.get(&1), Some(&true));
        assert_eq!(cache.get(&2), None);
        assert_eq!(cache.get(&4), Some(&true));
        // Replacing a key does not count it twice; removing it uncounts it.
        cache.insert(4, false, 4, |_| true);
        cache.remove(&1);
        assert_eq!((cache.bytes(), meter.bytes()), (one, one));
        // Too large to keep at all.
        cache.insert(9, true, 10_000, |_| true);
        assert_eq!(cache.get(&9), None);
    }
}
