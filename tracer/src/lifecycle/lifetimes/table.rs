//! The live table: tracked objects by address, so that "every tracked object in `[base, end)`" (a span) is a
//! range query, plus a count of tracked objects per birth cycle for the eviction policy.

use std::collections::BTreeMap;

/// One tracked object; its address is the map key. 24 bytes (32 with the key): cycles are `u32` because
/// they are in Go (`work.cycles` and `memstats.numgc` are `uint32`), the site is an index into the
/// engine's site table, and two bits of that index say whether the current cycle's sweep confirmed that
/// the object survived and whether it has a finalizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    pub size: u64,
    pub time_ns: u64,
    /// Site index (30 bits) | [`CONFIRMED`] | [`FINALIZER`].
    meta: u32,
    pub born: u32,
}

/// Set when a sweep for the last completed cycle found the object marked; cleared at every cycle end.
const CONFIRMED: u32 = 1 << 31;
/// Set while the object has a finalizer: the sweep that finds it unmarked resurrects it instead.
const FINALIZER: u32 = 1 << 30;
const FLAGS: u32 = CONFIRMED | FINALIZER;
/// Largest site index an [`Entry`] can hold.
pub(super) const MAX_SITES: usize = FINALIZER as usize;

impl Entry {
    pub fn new(size: u64, time_ns: u64, site: u32, born: u32) -> Self {
        debug_assert!((site as usize) < MAX_SITES);
        Entry {
            size,
            time_ns,
            meta: site & !FLAGS,
            born,
        }
    }

    pub fn site(&self) -> usize {
        (self.meta & !FLAGS) as usize
    }

    pub fn confirmed(&self) -> bool {
        self.meta & CONFIRMED != 0
    }

    pub fn set_confirmed(&mut self, on: bool) {
        self.set(CONFIRMED, on);
    }

    pub fn has_finalizer(&self) -> bool {
        self.meta & FINALIZER != 0
    }

    pub fn set_finalizer(&mut self, on: bool) {
        self.set(FINALIZER, on);
    }

    fn set(&mut self, flag: u32, on: bool) {
        if on {
            self.meta |= flag;
        } else {
            self.meta &= !flag;
        }
    }
}

/// Converts a cycle number from the API (`u64`) to the stored `u32`. Go's counters are `uint32`, so a
/// larger value is a caller bug; it saturates rather than wrapping into an old cycle.
pub(super) fn cycle32(cycle: u64) -> u32 {
    u32::try_from(cycle).unwrap_or(u32::MAX)
}

#[derive(Default)]
pub(super) struct Table {
    pub objects: BTreeMap<u64, Entry>,
    /// Tracked objects per birth cycle (no zero counts).
    born_counts: BTreeMap<u32, u64>,
}

impl Table {
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// The caller has made sure `addr` is free.
    pub fn insert(&mut self, addr: u64, e: Entry) {
        let old = self.objects.insert(addr, e);
        debug_assert!(old.is_none(), "{addr:#x} was still tracked");
        *self.born_counts.entry(e.born).or_default() += 1;
    }

    pub fn remove(&mut self, addr: u64) -> Option<Entry> {
        let e = self.objects.remove(&addr)?;
        self.uncount(e.born, 1);
        Some(e)
    }

    fn uncount(&mut self, born: u32, n: u64) {
        if let Some(c) = self.born_counts.get_mut(&born) {
            *c = c.saturating_sub(n);
            if *c == 0 {
                self.born_counts.remove(&born);
            }
        }
    }

    /// The tracked object whose `[addr, addr + max(size, 1))` contains `addr`, preferring one that starts
    /// exactly there.
    pub fn containing(&self, addr: u64) -> Option<u64> {
        let (&start, e) = self.objects.range(..=addr).next_back()?;
        (start == addr || addr - start < e.size).then_some(start)
    }

    /// Removes the `n` oldest objects (by birth cycle, then allocation time, then address), calling
    /// `gone` for each. Two passes over the table at most, no allocation beyond one `Vec<u64>` of the
    /// allocation times in the boundary birth cycle.
    pub fn evict_oldest(&mut self, n: usize, mut gone: impl FnMut(u64, &Entry)) -> usize {
        let n = n.min(self.objects.len()) as u64;
        if n == 0 {
            return 0;
        }
        // Whole birth cycles older than `boundary` go; `in_boundary` objects of `boundary` itself.
        let mut acc = 0u64;
        let mut cut = None;
        for (&born, &count) in &self.born_counts {
            if acc + count >= n {
                cut = Some((born, n - acc, count));
                break;
            }
            acc += count;
        }
        let Some((boundary, in_boundary, boundary_count)) = cut else {
            debug_assert!(false, "born_counts out of step with the table");
            return 0;
        };
        // Within the boundary cycle: every object allocated before `time_cut`, and `ties` of those at it.
        let (time_cut, mut ties) = if in_boundary == boundary_count {
            (u64::MAX, u64::MAX)
        } else {
            let mut times: Vec<u64> = self
                .objects
                .values()
                .filter(|e| e.born == boundary)
                .map(|e| e.time_ns)
                .collect();
            let k = (in_boundary - 1) as usize;
            let (_, &mut nth, _) = times.select_nth_unstable(k);
            let below = times.iter().filter(|&&t| t < nth).count() as u64;
            (nth, in_boundary - below)
        };
        let mut evicted = 0usize;
        self.objects.retain(|&addr, e| {
            let go = e.born < boundary
                || (e.born == boundary
                    && (e.time_ns < time_cut
                        || (e.time_ns == time_cut && ties > 0 && {
                            ties -= 1;
                            true
                        })));
            if go {
                gone(addr, e);
                evicted += 1;
            }
            !go
        });
        let older: Vec<u32> = self.born_counts.range(..boundary).map(|(&b, _)| b).collect();
        for b in older {
            self.born_counts.remove(&b);
        }
        self.uncount(boundary, in_boundary);
        debug_assert_eq!(evicted as u64, n);
        debug_assert_eq!(self.born_counts.values().sum::<u64>(), self.objects.len() as u64);
        evicted
    }
}
