//! A bounded memo for per-target lookups (PC → source position, type pointer → Go type). The keys come from the
//! target: a program may make types at run time without end, and a session lives as long as its process, so
//! the memo is emptied when full rather than grown; what is looked up again is worked out again.

use std::collections::HashMap;
use std::hash::Hash;

/// Entries a memo holds: more PCs and types than a large program's sites use.
pub const MEMO_ENTRIES: usize = 1 << 16;

pub struct Memo<K, V> {
    entries: HashMap<K, V>,
    capacity: usize,
}

impl<K: Eq + Hash, V: Clone> Memo<K, V> {
    pub fn new(capacity: usize) -> Self {
        Memo {
            entries: HashMap::new(),
            capacity,
        }
    }

    /// The value for `key`, computed by `make` unless it is remembered.
    pub fn get_or(&mut self, key: K, make: impl FnOnce() -> V) -> V {
        if let Some(v) = self.entries.get(&key) {
            return v.clone();
        }
        if self.entries.len() >= self.capacity {
            self.entries.clear();
        }
        let v = make();
        self.entries.insert(key, v.clone());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_memo_starts_over() {
        let mut memo = Memo::new(2);
        let mut made = Vec::new();
        for k in [1, 2, 1, 3, 1] {
            assert_eq!(
                memo.get_or(k, || {
                    made.push(k);
                    k * 10
                }),
                k * 10
            );
        }
        // 1 and 2 made, 1 remembered; 3 found the memo full, so 1 was made again.
        assert_eq!(made, [1, 2, 3, 1]);
        assert_eq!(memo.entries.len(), 2);
    }
}
