//! A map that holds at most so many entries and, when full, forgets its oldest insertion: the
//! memory of long-running caches (followed packets, flows, nftables walks) stays bounded
//! without forgetting everything at once.

use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasher, Hash},
};

pub struct BoundedMap<K, V, S = std::collections::hash_map::RandomState> {
    map: HashMap<K, V, S>,
    /// Keys in insertion order (a key re-inserted after removal appears again).
    order: VecDeque<K>,
    max: usize,
}

impl<K: Hash + Eq + Clone, V, S: BuildHasher + Default> BoundedMap<K, V, S> {
    pub fn new(max: usize) -> Self {
        BoundedMap {
            map: HashMap::default(),
            order: VecDeque::new(),
            max: max.max(1),
        }
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k)
    }

    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.map.get_mut(k)
    }

    pub fn contains_key(&self, k: &K) -> bool {
        self.map.contains_key(k)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Inserts or replaces; a new key past the bound pushes the oldest out.
    pub fn insert(&mut self, k: K, v: V) {
        if self.map.insert(k.clone(), v).is_none() {
            self.order.push_back(k);
            while self.map.len() > self.max {
                let Some(old) = self.order.pop_front() else {
                    break;
                };
                self.map.remove(&old);
            }
        }
    }

    /// The value for `k`, inserted with `make` if absent.
    pub fn entry_or_insert_with(&mut self, k: K, make: impl FnOnce() -> V) -> &mut V {
        if !self.map.contains_key(&k) {
            self.insert(k.clone(), make());
        }
        self.map.get_mut(&k).expect("just inserted")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_goes_first_and_the_bound_holds() {
        let mut m: BoundedMap<u32, u32> = BoundedMap::new(3);
        for i in 0..5 {
            m.insert(i, i * 10);
        }
        assert_eq!(m.len(), 3);
        assert!(!m.contains_key(&0) && !m.contains_key(&1));
        assert_eq!(m.get(&4), Some(&40));
        // Replacing does not count as new.
        m.insert(4, 41);
        assert_eq!(m.len(), 3);
        assert_eq!(m.get(&2), Some(&20));
        *m.entry_or_insert_with(9, || 90) += 1;
        assert_eq!(m.get(&9), Some(&91));
        assert!(!m.contains_key(&2));
    }
}
