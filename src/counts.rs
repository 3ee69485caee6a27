//! Counts kept per key (connections per address, calls per address,
//! watches per caller), shared by the places that cap them.

use std::collections::HashMap;
use std::hash::Hash;

/// Takes one from a count of a map, forgetting the key at zero.
pub fn release<K: Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}
