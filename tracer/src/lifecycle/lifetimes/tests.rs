//! Synthetic event streams, written the way the runtime produces them: cycle N's mark termination, then
//! its sweeps interleaved with allocations (in other spans, and in spans already swept), then cycle N+1.

use super::*;

const A: u64 = 0xa; // site ids
const B: u64 = 0xb;
const C: u64 = 0xc;
const D: u64 = 0xd;

fn cfg(k: u32, max: usize) -> LifecycleConfig {
    LifecycleConfig {
        retain_cycles: k,
        max_tracked: max,
    }
}

fn engine() -> Lifecycle {
    Lifecycle::new(LifecycleConfig::default())
}

fn alloc(lc: &mut Lifecycle, addr: u64, size: u64, site: u64, born: u64, t: u64) {
    lc.on_alloc(Alloc {
        addr,
        size,
        site,
        born_cycle: born,
        time_ns: t,
    });
    check(lc);
}

/// A mark bitmap of `nelems` objects with the listed indices set.
fn marks(nelems: u64, live: &[u64]) -> Vec<u8> {
    let mut m = vec![0u8; nelems.div_ceil(8) as usize];
    for &i in live {
        m[(i / 8) as usize] |= 1 << (i % 8);
    }
    m
}

fn sweep(lc: &mut Lifecycle, base: u64, elemsize: u64, nelems: u64, live: &[u64], t: u64) {
    let m = marks(nelems, live);
    lc.on_span_swept(
        &SweptSpan {
            base,
            elemsize,
            nelems,
            marks: &m,
        },
        t,
    );
    check(lc);
}

fn cycle(lc: &mut Lifecycle, n: u64, t: u64) {
    lc.on_cycle_end(n, t);
    check(lc);
}

fn free(lc: &mut Lifecycle, addr: u64, t: u64) {
    lc.on_free(addr, t);
    check(lc);
}

fn site(lc: &Lifecycle, id: u64) -> &SiteLifecycle {
    lc.site(id).unwrap_or_else(|| panic!("no site {id:#x}"))
}

fn survived(lc: &Lifecycle, addr: u64) -> u64 {
    lc.object(addr)
        .unwrap_or_else(|| panic!("{addr:#x} is not tracked"))
        .cycles_survived
}

fn alive(lc: &Lifecycle, addr: u64) -> bool {
    lc.object(addr).is_some()
}

/// The bookkeeping invariants, checked after every event.
fn check(lc: &Lifecycle) {
    let mut live: HashMap<u64, (Totals, Totals)> = HashMap::new();
    for o in lc.objects() {
        let (l, r) = live.entry(o.site).or_default();
        l.count += 1;
        l.bytes += o.size;
        if o.retained {
            r.count += 1;
            r.bytes += o.size;
        }
    }
    let mut tracked = 0;
    for (id, s) in lc.sites() {
        let (l, r) = live.get(&id).copied().unwrap_or_default();
        assert_eq!((s.live_count, s.live_bytes), (l.count, l.bytes), "site {id:#x} live");
        assert_eq!(
            (s.retained_count, s.retained_bytes),
            (r.count, r.bytes),
            "site {id:#x} retained"
        );
        assert_eq!(
            s.allocated_count,
            s.live_count + s.freed_count + s.evicted_count,
            "site {id:#x} counts"
        );
        assert_eq!(
            s.allocated_bytes,
            s.live_bytes + s.freed_bytes + s.evicted_bytes,
            "site {id:#x} bytes"
        );
        assert_eq!(s.freed_count, s.freed_by_sweep + s.freed_by_reuse + s.freed_exact);
        assert_eq!(s.survival_cycles.len(), s.freed_count);
        assert_eq!(s.lifetime_ns.len(), s.freed_count);
        tracked += s.live_count;
    }
    assert_eq!(tracked, lc.tracked() as u64);
    assert_eq!(lc.evicted(), lc.sites().map(|(_, s)| s.evicted_count).sum::<u64>());
}

#[test]
fn entry_is_small() {
    assert_eq!(size_of::<table::Entry>(), 24);
    assert_eq!(size_of::<(u64, table::Entry)>(), 32);
}

#[test]
fn objects_that_die_at_their_first_sweep() {
    let mut lc = engine();
    cycle(&mut lc, 1, 1_000);
    // Span 0x1000: 8 x 32 B. Three objects allocated after cycle 1's mark termination.
    for (i, t) in [(0, 1_100), (1, 1_200), (2, 1_300)] {
        alloc(&mut lc, 0x1000 + 32 * i, 32, A, 1, t);
    }
    cycle(&mut lc, 2, 2_000);
    assert_eq!(site(&lc, A).live_count, 3, "nothing dies before its span is swept");
    sweep(&mut lc, 0x1000, 32, 8, &[0], 2_500);
    let s = site(&lc, A);
    assert_eq!(
        (s.live_count, s.freed_count, s.freed_by_sweep, s.freed_bytes),
        (1, 2, 2, 64)
    );
    assert_eq!(s.survival_cycles.max(), 0);
    assert_eq!(s.survival_cycles.count_at(0), 2);
    // 2_500 - 1_200 and 2_500 - 1_300, within the histogram's precision.
    assert!(
        s.lifetime_ns.equivalent(s.lifetime_ns.max(), 1_300),
        "{}",
        s.lifetime_ns.max()
    );
    assert!(alive(&lc, 0x1000) && !alive(&lc, 0x1020) && !alive(&lc, 0x1040));
    assert_eq!(survived(&lc, 0x1000), 1, "the sweep confirmed cycle 2");
}

#[test]
fn survivors_count_cycles_and_become_retained_after_k() {
    let mut lc = engine(); // K = 2
    cycle(&mut lc, 1, 0);
    alloc(&mut lc, 0x2000, 64, A, 1, 10);
    alloc(&mut lc, 0x2040, 64, A, 1, 11);
    let step = |lc: &mut Lifecycle, n: u64, live: &[u64]| {
        cycle(lc, n, n * 100);
        sweep(lc, 0x2000, 64, 128, live, n * 100 + 50);
    };
    cycle(&mut lc, 2, 200);
    assert_eq!(survived(&lc, 0x2000), 0, "cycle 2 is pending until the span is swept");
    sweep(&mut lc, 0x2000, 64, 128, &[0, 1], 250);
    assert_eq!(survived(&lc, 0x2000), 1);
    assert_eq!(site(&lc, A).retained_count, 0);
    cycle(&mut lc, 3, 300);
    assert_eq!(survived(&lc, 0x2000), 1, "still 1 until cycle 3's sweep");
    assert_eq!(site(&lc, A).retained_count, 0);
    sweep(&mut lc, 0x2000, 64, 128, &[0, 1], 350);
    assert_eq!(survived(&lc, 0x2000), 2);
    assert_eq!(
        (site(&lc, A).retained_count, site(&lc, A).retained_bytes),
        (2, 128),
        "retained at the sweep"
    );
    step(&mut lc, 4, &[0]); // the second one dies after 2 cycles
    let s = site(&lc, A);
    assert_eq!((s.retained_count, s.live_count, s.freed_count), (1, 1, 1));
    assert_eq!(s.survival_cycles.max(), 2);
    assert_eq!(survived(&lc, 0x2000), 3);
    assert!(lc.object(0x2000).unwrap().retained);
    assert_eq!(lc.retained_objects().count(), 1);
}

#[test]
fn unswept_spans_are_settled_by_the_next_cycle_end() {
    // Without any sweep event for its span (lost, or not captured), an object still counts cycle c as
    // survived once cycle c+1 has ended: c's sweeps were all done before c+1 started.
    let mut lc = engine();
    cycle(&mut lc, 1, 0);
    alloc(&mut lc, 0x2000, 64, A, 1, 10);
    cycle(&mut lc, 2, 200);
    cycle(&mut lc, 3, 300);
    assert_eq!(survived(&lc, 0x2000), 1);
    assert_eq!(site(&lc, A).retained_count, 0);
    cycle(&mut lc, 4, 400);
    assert_eq!(survived(&lc, 0x2000), 2);
    assert_eq!(site(&lc, A).retained_count, 1, "recomputed at the cycle end");
}

#[test]
fn allocation_during_mark_does_not_count_that_cycle() {
    let mut lc = engine();
    cycle(&mut lc, 4, 400);
    alloc(&mut lc, 0x3000, 48, A, 4, 410); // after cycle 4's mark termination
                                           // Cycle 5 starts (work.cycles = 5); this one is allocated black during cycle 5's mark.
    alloc(&mut lc, 0x3030, 48, B, 5, 510);
    cycle(&mut lc, 5, 550);
    // The allocated-black object is marked, but even stale bits must not free it: born 5 >= sweep cycle 5.
    sweep(&mut lc, 0x3000, 48, 16, &[0], 560);
    assert!(alive(&lc, 0x3030));
    assert_eq!(lc.stats().sweep_too_young, 1);
    assert_eq!(survived(&lc, 0x3000), 1, "born in 4, survived cycle 5");
    assert_eq!(survived(&lc, 0x3030), 0, "born in 5's mark: cycle 5 does not count");
    cycle(&mut lc, 6, 650);
    sweep(&mut lc, 0x3000, 48, 16, &[0, 1], 660);
    assert_eq!((survived(&lc, 0x3000), survived(&lc, 0x3030)), (2, 1));
    assert_eq!((site(&lc, A).retained_count, site(&lc, B).retained_count), (1, 0));
}

#[test]
fn tiny_objects_in_one_block_die_together() {
    let mut lc = engine();
    cycle(&mut lc, 1, 0);
    // A 16-byte noscan span: block 1 holds three tiny values, block 2 one.
    let base = 0x4000;
    alloc(&mut lc, base + 16, 4, A, 1, 1);
    alloc(&mut lc, base + 20, 4, B, 1, 2);
    alloc(&mut lc, base + 24, 8, A, 1, 3);
    alloc(&mut lc, base + 32, 8, C, 1, 4);
    assert_eq!(lc.tracked(), 4, "neighbours in a tiny block do not retire each other");
    cycle(&mut lc, 2, 100);
    sweep(&mut lc, base, 16, 512, &[2], 110);
    assert_eq!((site(&lc, A).freed_count, site(&lc, B).freed_count), (2, 1));
    assert!(alive(&lc, base + 32));
    // One live value keeps the whole block: all of them survive.
    alloc(&mut lc, base + 48, 2, A, 2, 120);
    alloc(&mut lc, base + 50, 2, B, 2, 121);
    alloc(&mut lc, base + 56, 8, C, 2, 122);
    cycle(&mut lc, 3, 200);
    sweep(&mut lc, base, 16, 512, &[2, 3], 210);
    assert_eq!(lc.tracked(), 4);
    assert!([48, 50, 56].iter().all(|o| survived(&lc, base + o) == 1));
}

#[test]
fn interior_pointers_map_to_their_slot() {
    let mut lc = engine();
    cycle(&mut lc, 7, 0);
    // 1024-byte size class with malloc headers: objects are returned at slot + 8.
    let base = 0x10_0000;
    alloc(&mut lc, base + 8, 1000, A, 7, 1);
    alloc(&mut lc, base + 1024 + 8, 1000, A, 7, 2);
    alloc(&mut lc, base + 2048 + 8, 1000, A, 7, 3);
    cycle(&mut lc, 8, 100);
    sweep(&mut lc, base, 1024, 8, &[0, 2], 110);
    assert!(alive(&lc, base + 8) && !alive(&lc, base + 1032) && alive(&lc, base + 2056));
    // An exact free may name any byte of the object.
    free(&mut lc, base + 2048 + 500, 120);
    assert!(!alive(&lc, base + 2056));
    assert_eq!(site(&lc, A).freed_exact, 1);
}

#[test]
fn sweeps_interleave_with_allocation_in_other_and_same_spans() {
    let mut lc = engine();
    let (x, y) = (0x5_0000, 0x6_0000); // two 64-byte spans
    cycle(&mut lc, 3, 0);
    alloc(&mut lc, x, 64, A, 3, 1);
    alloc(&mut lc, y, 64, B, 3, 2);
    cycle(&mut lc, 4, 100);
    sweep(&mut lc, x, 64, 64, &[0], 110); // X swept for cycle 4
                                          // Allocation in X's free slot 1 after X's sweep, and in Y before Y's sweep.
    alloc(&mut lc, x + 64, 64, C, 4, 120);
    alloc(&mut lc, y + 128, 64, C, 4, 121);
    // Y's sweep for cycle 4 cannot know y+128 (its slot was free in cycle 4's bitmap): born 4, untouched.
    sweep(&mut lc, y, 64, 64, &[0], 130);
    assert!(alive(&lc, y + 128));
    // A stale report of X's cycle-4 sweep (same bitmap) arrives again: the new object must not die.
    sweep(&mut lc, x, 64, 64, &[0], 140);
    assert!(alive(&lc, x + 64));
    assert_eq!(lc.stats().sweep_too_young, 2);
    // Cycle 5 judges them; x+64 survives, y+128 dies having survived nothing.
    cycle(&mut lc, 5, 200);
    sweep(&mut lc, x, 64, 64, &[0, 1], 210);
    alloc(&mut lc, x + 128, 64, C, 5, 215);
    sweep(&mut lc, y, 64, 64, &[0], 220);
    assert_eq!(survived(&lc, x + 64), 1);
    assert!(!alive(&lc, y + 128));
    assert_eq!(site(&lc, C).survival_cycles.count_at(0), 1);
    cycle(&mut lc, 6, 300);
    sweep(&mut lc, x, 64, 64, &[0, 2], 310);
    let c = site(&lc, C);
    assert_eq!((c.live_count, c.freed_count), (1, 2));
    assert_eq!(
        c.survival_cycles.count_at(1),
        1,
        "x+64 survived cycle 5, died at 6's sweep"
    );
    assert_eq!(survived(&lc, x + 128), 1);
    assert_eq!(survived(&lc, x), 3);
}

#[test]
fn address_reuse_retires_the_old_object() {
    let mut lc = engine();
    cycle(&mut lc, 1, 0);
    alloc(&mut lc, 0x7000, 32, A, 1, 10);
    cycle(&mut lc, 2, 100);
    // Its sweep was lost; a new object at the same address proves the old one died.
    alloc(&mut lc, 0x7000, 32, B, 2, 150);
    assert_eq!(site(&lc, A).freed_by_reuse, 1);
    assert_eq!(lc.object(0x7000).unwrap().site, B);
    // A span reused for a larger size class: the new object covers two old starts.
    alloc(&mut lc, 0x8000, 16, A, 2, 160);
    alloc(&mut lc, 0x8010, 16, A, 2, 161);
    alloc(&mut lc, 0x8020, 16, A, 2, 162);
    alloc(&mut lc, 0x8000, 32, C, 2, 170);
    assert_eq!(site(&lc, A).freed_by_reuse, 3);
    assert!(alive(&lc, 0x8020));
    assert_eq!(lc.stats().freed_by_reuse, 3);
}

#[test]
fn zero_size_allocations_are_not_objects() {
    let mut lc = engine();
    cycle(&mut lc, 1, 0);
    alloc(&mut lc, 0x55_0000, 0, A, 1, 1); // runtime.zerobase
    alloc(&mut lc, 0x55_0000, 0, A, 1, 2);
    assert_eq!(
        (lc.tracked(), lc.stats().zero_size_allocs, lc.stats().freed_by_reuse),
        (0, 2, 0)
    );
    assert!(lc.site(A).is_none());
}

#[test]
fn exact_frees() {
    let mut lc = engine();
    cycle(&mut lc, 1, 0);
    alloc(&mut lc, 0x9000, 64, A, 1, 10);
    alloc(&mut lc, 0x9040, 64, A, 1, 11);
    cycle(&mut lc, 2, 100);
    free(&mut lc, 0x9000, 120); // freeSpecial during cycle 2's sweep
    free(&mut lc, 0x9000, 121); // twice: the second is untracked
    free(&mut lc, 0xdead_0000, 122);
    assert_eq!(lc.stats().untracked_frees, 2);
    // The sweep that follows has its bit clear too: it must not count it again.
    sweep(&mut lc, 0x9000, 64, 64, &[1], 130);
    let s = site(&lc, A);
    assert_eq!((s.freed_exact, s.freed_by_sweep, s.live_count), (1, 0, 1));
    assert!(s.lifetime_ns.equivalent(s.lifetime_ns.max(), 110));
}

#[test]
fn truncated_mark_bitmaps_leave_unknown_objects_alone() {
    let mut lc = engine();
    cycle(&mut lc, 1, 0);
    let base = 0xa000;
    for i in [3u64, 9, 20, 63] {
        alloc(&mut lc, base + 16 * i, 16, A, 1, i);
    }
    alloc(&mut lc, base - 16, 16, B, 1, 100); // just below the span
    alloc(&mut lc, base + 64 * 16, 16, B, 1, 101); // just past it
    cycle(&mut lc, 2, 200);
    // 64 objects but only two bytes of marks: objects 0..16 are known (9 survived), the rest not.
    let m = marks(16, &[9]);
    lc.on_span_swept(
        &SweptSpan {
            base,
            elemsize: 16,
            nelems: 64,
            marks: &m,
        },
        210,
    );
    check(&lc);
    assert!(!alive(&lc, base + 48) && alive(&lc, base + 144) && alive(&lc, base + 320) && alive(&lc, base + 1008));
    assert_eq!(lc.stats().unknown_mark_bits, 2);
    assert_eq!(survived(&lc, base + 144), 1);
    assert_eq!(survived(&lc, base + 320), 0, "unknown: not confirmed either");
    assert_eq!(site(&lc, B).live_count, 2);
    // No marks at all (the kernel could not read them): nothing changes.
    lc.on_span_swept(
        &SweptSpan {
            base,
            elemsize: 16,
            nelems: 64,
            marks: &[],
        },
        220,
    );
    assert_eq!(lc.tracked(), 5);
    // Degenerate spans are ignored, and a span reaching the top of the address space does not overflow.
    lc.on_span_swept(
        &SweptSpan {
            base,
            elemsize: 0,
            nelems: 64,
            marks: &m,
        },
        230,
    );
    lc.on_span_swept(
        &SweptSpan {
            base: u64::MAX - 100,
            elemsize: 64,
            nelems: 64,
            marks: &m,
        },
        231,
    );
    assert_eq!(lc.stats().ignored_sweeps, 1);
    check(&lc);
}

#[test]
fn eviction_drops_the_oldest_born_first() {
    let mut lc = Lifecycle::new(cfg(1, 4)); // batches of max(1, 4/16) = 1
    cycle(&mut lc, 1, 0);
    alloc(&mut lc, 0x100, 8, A, 1, 30); // born 1, allocated last of cycle 1
    alloc(&mut lc, 0x200, 8, A, 1, 10); // born 1, oldest
    cycle(&mut lc, 2, 100);
    sweep(&mut lc, 0x100, 8, 512, &[0, 32], 110); // both survive cycle 2: retained (K = 1)
    alloc(&mut lc, 0x300, 8, B, 2, 120);
    alloc(&mut lc, 0x400, 8, B, 2, 130);
    assert_eq!(lc.tracked(), 4);
    alloc(&mut lc, 0x500, 8, C, 2, 140);
    assert_eq!((lc.tracked(), lc.evicted()), (4, 1));
    assert!(!alive(&lc, 0x200) && alive(&lc, 0x100), "born 1 at time 10 goes first");
    let a = site(&lc, A);
    assert_eq!(
        (
            a.evicted_count,
            a.evicted_bytes,
            a.evicted_retained_count,
            a.retained_count
        ),
        (1, 8, 1, 1)
    );
    alloc(&mut lc, 0x600, 8, C, 2, 150);
    assert!(!alive(&lc, 0x100));
    alloc(&mut lc, 0x700, 8, C, 2, 160);
    assert!(!alive(&lc, 0x300), "then born 2 by allocation time");
    assert_eq!(
        (site(&lc, A).live_count, site(&lc, B).evicted_count, lc.evicted()),
        (0, 1, 3)
    );
    // An evicted object's later death is not seen and changes nothing.
    cycle(&mut lc, 3, 200);
    sweep(&mut lc, 0x100, 8, 512, &[], 210);
    assert_eq!(site(&lc, A).freed_count, 0);
    assert_eq!(site(&lc, A).allocated_count, 2, "allocation counts stay exact");
}

#[test]
fn eviction_in_batches_with_ties() {
    let mut lc = Lifecycle::new(cfg(2, 64)); // batches of 4
    cycle(&mut lc, 1, 0);
    for i in 0..32 {
        alloc(&mut lc, 0x1_0000 + 16 * i, 16, A, 1, 5); // one timestamp for all
    }
    cycle(&mut lc, 2, 100);
    for i in 0..32 {
        alloc(&mut lc, 0x2_0000 + 16 * i, 16, B, 2, 100 + i);
    }
    assert_eq!((lc.tracked(), lc.evicted()), (64, 0));
    alloc(&mut lc, 0x3_0000, 16, C, 2, 200);
    assert_eq!((lc.tracked(), lc.evicted()), (61, 4));
    assert_eq!((site(&lc, A).evicted_count, site(&lc, B).evicted_count), (4, 0));
    for i in 1..=3 {
        alloc(&mut lc, 0x3_0000 + 16 * i, 16, C, 2, 200 + i);
    }
    alloc(&mut lc, 0x3_0040, 16, C, 2, 210);
    assert_eq!((lc.tracked(), lc.evicted()), (61, 8));
    // A tiny bound still works.
    let mut one = Lifecycle::new(cfg(2, 0));
    alloc(&mut one, 0x10, 8, A, 1, 1);
    alloc(&mut one, 0x20, 8, A, 1, 2);
    assert_eq!((one.tracked(), one.evicted()), (1, 1));
}

#[test]
fn trend_rule() {
    use Trend::*;
    assert_eq!(trend_of(&[]), Unknown);
    assert_eq!(trend_of(&[10, 20]), Unknown);
    assert_eq!(trend_of(&[100, 105, 110]), Growing);
    assert_eq!(trend_of(&[100, 104, 109]), Stable, "under 10%");
    assert_eq!(trend_of(&[100, 100, 120]), Stable, "one step of two");
    assert_eq!(
        trend_of(&[100, 130, 125, 160, 190, 185, 220, 250]),
        Stable,
        "two dips in 7 steps"
    );
    assert_eq!(
        trend_of(&[100, 130, 125, 160, 190, 200, 220, 250]),
        Growing,
        "one dip in 7 steps"
    );
    assert_eq!(
        trend_of(&[100, 100, 100, 100, 100, 100, 100, 150]),
        Stable,
        "a single jump"
    );
    assert_eq!(trend_of(&[100, 90, 80]), Shrinking);
    assert_eq!(trend_of(&[0, 0, 0]), Stable);
    assert_eq!(trend_of(&[0, 1, 2]), Growing);
    assert_eq!(trend_of(&[500, 510, 490, 505, 495, 500]), Stable);
    // Only the newest window counts: old growth followed by a plateau is stable.
    assert_eq!(trend_of(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9, 9, 9, 9, 9, 9]), Stable);
}

#[test]
fn trends_of_a_growing_cache_churn_a_stable_table_and_a_draining_queue() {
    let mut lc = engine();
    // Sites own spans: A (cache) at 0x100000, B (churn) 0x200000, C (table) 0x300000, D (queue) 0x400000.
    let (ea, eb, ec, ed) = (0x10_0000u64, 0x20_0000u64, 0x30_0000u64, 0x40_0000u64);
    let mut next_a = 0;
    let mut d_live: Vec<u64> = (0..200).collect();
    cycle(&mut lc, 10, 0);
    for i in 0..100 {
        alloc(&mut lc, ec + 32 * i, 32, C, 10, i);
    }
    for &i in &d_live {
        alloc(&mut lc, ed + 32 * i, 32, D, 10, 200 + i);
    }
    let mut t = 1_000;
    for n in 11..=22u64 {
        // During the cycle: the cache gains 10 entries, churn allocates 50 short-lived buffers.
        for _ in 0..10 {
            alloc(&mut lc, ea + 32 * next_a, 32, A, n - 1, t);
            next_a += 1;
            t += 1;
        }
        for i in 0..50 {
            alloc(&mut lc, eb + 32 * i, 32, B, n - 1, t);
            t += 1;
        }
        cycle(&mut lc, n, t);
        // Sweeps: the cache and the table keep everything, churn loses everything, the queue drains 15.
        let all_a: Vec<u64> = (0..next_a).collect();
        sweep(&mut lc, ea, 32, 4096, &all_a, t + 1);
        sweep(&mut lc, eb, 32, 4096, &[], t + 2);
        sweep(&mut lc, ec, 32, 4096, &(0..100).collect::<Vec<_>>(), t + 3);
        d_live.truncate(d_live.len().saturating_sub(15));
        sweep(&mut lc, ed, 32, 4096, &d_live, t + 4);
        t += 100;
        if n == 12 {
            assert_eq!(site(&lc, A).trend(), Trend::Unknown, "two samples");
        }
    }
    assert_eq!(site(&lc, A).trend(), Trend::Growing);
    assert_eq!(site(&lc, B).trend(), Trend::Stable);
    assert_eq!(site(&lc, C).trend(), Trend::Stable);
    assert_eq!(site(&lc, D).trend(), Trend::Shrinking);
    assert_eq!(site(&lc, A).live_by_cycle.len(), 12);
    assert_eq!(site(&lc, A).live_by_cycle.back(), Some(&(22, 120, 120 * 32)));
    // Churn: every buffer died at its first sweep, and at every cycle end 50 were in flight.
    let b = site(&lc, B);
    assert_eq!((b.freed_by_sweep, b.survival_cycles.max(), b.live_count), (600, 0, 0));
    assert!(b.live_by_cycle.iter().all(|s| s.1 == 50));
    // Cache: entries older than 2 cycles are retained; the table entirely so.
    assert_eq!(site(&lc, C).retained_count, 100);
    assert_eq!(
        site(&lc, A).retained_count,
        110,
        "all but the 10 entries born in 21 (survived 1)"
    );
    let snapshot = lc.live_survival();
    assert_eq!((snapshot[&C].min(), snapshot[&C].max()), (12, 12));
    assert_eq!(
        (snapshot[&A].min(), snapshot[&A].max(), snapshot[&A].len()),
        (1, 12, 120)
    );
    // History is bounded.
    for n in 23..=40 {
        cycle(&mut lc, n, n * 10_000);
    }
    assert_eq!(site(&lc, A).live_by_cycle.len(), LIVE_HISTORY);
    assert_eq!(site(&lc, A).live_by_cycle.front().unwrap().0, 25);
    assert_eq!(site(&lc, A).trend(), Trend::Stable);
}

#[test]
fn cycle_gaps_and_stale_cycle_ends() {
    let mut lc = engine();
    cycle(&mut lc, 5, 0);
    alloc(&mut lc, 0x100, 8, A, 5, 1);
    cycle(&mut lc, 5, 2);
    cycle(&mut lc, 4, 3);
    assert_eq!((lc.stats().stale_cycle_ends, lc.last_cycle()), (2, Some(5)));
    cycle(&mut lc, 9, 10); // 6, 7 and 8 were lost
    assert_eq!(lc.stats().missed_cycles, 3);
    assert_eq!(
        survived(&lc, 0x100),
        3,
        "cycles 6, 7, 8 are settled; 9 awaits its sweep"
    );
    assert_eq!(site(&lc, A).retained_count, 1);
}

#[test]
fn cycle_of_a_sweep_without_a_cycle_end() {
    // Attached mid-cycle: no cycle end yet, allocations say work.cycles = 12.
    let mut lc = engine();
    let m = marks(8, &[]);
    lc.on_span_swept(
        &SweptSpan {
            base: 0x100,
            elemsize: 16,
            nelems: 8,
            marks: &m,
        },
        0,
    );
    assert_eq!(lc.stats().ignored_sweeps, 1, "no cycle number known yet");
    alloc(&mut lc, 0x100, 16, A, 12, 1);
    assert_eq!(lc.sweep_cycle(), Some(12));
    sweep(&mut lc, 0x100, 16, 8, &[], 2);
    assert!(alive(&lc, 0x100), "born in the sweep's own cycle");
    // A cycle-end event was lost but an allocation shows cycle 13 started: sweeps now are 13's.
    alloc(&mut lc, 0x200, 16, A, 13, 3);
    sweep(&mut lc, 0x100, 16, 8, &[], 4);
    assert!(!alive(&lc, 0x100));
    // The probe may also supply the cycle itself.
    let m = marks(8, &[]);
    lc.on_span_swept_in(
        &SweptSpan {
            base: 0x200,
            elemsize: 16,
            nelems: 8,
            marks: &m,
        },
        14,
        5,
    );
    assert!(!alive(&lc, 0x200));
    assert_eq!(site(&lc, A).freed_by_sweep, 2);
}

#[test]
fn retained_matching_takes_the_callers_predicate() {
    let mut lc = Lifecycle::new(cfg(1, 100));
    cycle(&mut lc, 1, 0);
    alloc(&mut lc, 0x100, 8, A, 1, 1);
    alloc(&mut lc, 0x108, 8, A, 1, 2);
    alloc(&mut lc, 0x110, 8, B, 1, 3);
    cycle(&mut lc, 2, 10);
    sweep(&mut lc, 0x100, 8, 64, &[0, 1, 2], 11);
    // Say the caller knows 0x108's creating frame is still on its goroutine's stack.
    let by_site = lc.retained_matching(|o| o.addr != 0x108);
    assert_eq!(by_site[&A], Totals { count: 1, bytes: 8 });
    assert_eq!(by_site[&B], Totals { count: 1, bytes: 8 });
    assert_eq!(lc.objects_in(0x100..0x110).count(), 2);
    assert_eq!(lc.object_containing(0x10c).map(|o| o.addr), Some(0x108));
}

/// A hand-written trace in the shape maptrace records: a request handler allocating a session (site A,
/// 48-byte class) with a tiny key (site B, tiny 16-byte blocks) and a 1 KiB buffer (site C, malloc
/// header at +8), of which sessions are cached, keys and buffers are request-scoped; one session has a
/// finalizer whose freeSpecial is seen.
#[test]
fn recorded_stream() {
    #[derive(Debug)]
    enum Ev {
        Cycle(u64),
        New(u64, u64, u64, u64), // addr, size, site, born
        Sweep(u64, u64, u64, Vec<u64>),
        Free(u64),
    }
    use Ev::*;
    let (sa, sb, sc) = (0x00c0_0001_0000_u64, 0x00c0_0002_0000_u64, 0x00c0_0004_0000_u64);
    let events = vec![
        Cycle(41),
        // Request 1, after cycle 41's mark termination (work.cycles = 41): session, two keys, buffer.
        New(sa, 40, A, 41),
        New(sb, 5, B, 41),
        New(sb + 8, 8, B, 41),
        New(sc + 8, 1000, C, 41),
        // Request 2.
        New(sa + 48, 40, A, 41),
        New(sb + 16, 5, B, 41),
        New(sc + 1024 + 8, 1000, C, 41),
        // Cycle 42 starts; request 3 runs during its mark (allocated black, born 42).
        New(sa + 96, 40, A, 42),
        New(sb + 24, 6, B, 42),
        New(sc + 2048 + 8, 1000, C, 42),
        Cycle(42),
        // The background sweeper takes the buffer span first: requests 1 and 2 are done, their buffers
        // die; request 3's slot is marked (black) and too young to judge anyway.
        Sweep(sc, 1024, 8, vec![2]),
        // Request 4 runs between sweeps: its buffer reuses slot 0, freed by the sweep just seen.
        New(sa + 144, 40, A, 42),
        New(sc + 8, 1000, C, 42),
        // Tiny span: block 0 (request 1's keys) dies; block 1 (request 2's key, request 3's) lives on.
        Sweep(sb, 16, 256, vec![1]),
        New(sb, 7, B, 42), // block 0 reused after its sweep
        // Sessions 0 and 1 survive 42; 2 and 3 were born in 42: untouched.
        Sweep(sa, 48, 170, vec![0, 1, 2]),
        New(sb + 32, 3, B, 42),
        New(sa + 192, 40, A, 42),
        // Cycle 43: session 1 lost its last reference; block 1's keys die, so does request 3's buffer.
        Cycle(43),
        Sweep(sa, 48, 170, vec![0, 2, 3, 4]),
        Free(sa + 48), // freeSpecial for session 1 during that sweep: already gone, untracked
        Sweep(sb, 16, 256, vec![0, 2]),
        Sweep(sc, 1024, 8, vec![0]),
        New(sc + 1024 + 8, 1000, C, 43),
        New(sb + 16, 4, B, 43),
        // Cycle 44: nothing dies; sessions 2..4 become retained (K = 2).
        Cycle(44),
        Sweep(sa, 48, 170, vec![0, 2, 3, 4]),
        Sweep(sc, 1024, 8, vec![0, 1]),
        Sweep(sb, 16, 256, vec![0, 1, 2]),
        New(sa + 240, 40, A, 44),
        Free(sa + 96 + 20), // session 2 is removed with its finalizer special: exact, interior address
        Cycle(45),
        Sweep(sa, 48, 170, vec![0, 3, 4, 5]),
        Sweep(sb, 16, 256, vec![0, 2]),
        Sweep(sc, 1024, 8, vec![0, 1]),
        Cycle(46),
        Sweep(sa, 48, 170, vec![0, 3, 4, 5]),
        Sweep(sb, 16, 256, vec![0]),
        Sweep(sc, 1024, 8, vec![]),
        New(sc + 8, 1000, C, 46),
        New(sb + 8, 5, B, 46),
        Cycle(47),
        Sweep(sa, 48, 170, vec![0, 3, 4, 5]),
        Sweep(sb, 16, 256, vec![0]),
        Sweep(sc, 1024, 8, vec![0]),
        New(sa + 288, 40, A, 47),
        New(sb + 48, 8, B, 47),
        Cycle(48),
        Sweep(sb, 16, 256, vec![0]),
        Sweep(sa, 48, 170, vec![0, 3, 4, 5, 6]),
        // The buffer span's sweep for 48 is lost (ring buffer full): sc+8 died unseen.
        Cycle(49),
        New(sc + 8, 1000, C, 49), // its address is reused: that retires it
    ];
    assert!(events.len() >= 50, "{}", events.len());
    let mut lc = engine();
    for (i, ev) in events.into_iter().enumerate() {
        let t = 1_000_000 * (i as u64 + 1);
        match ev {
            Cycle(n) => lc.on_cycle_end(n, t),
            New(addr, size, site, born) => lc.on_alloc(Alloc {
                addr,
                size,
                site,
                born_cycle: born,
                time_ns: t,
            }),
            Sweep(base, elemsize, nelems, live) => {
                let m = marks(nelems, &live);
                lc.on_span_swept(
                    &SweptSpan {
                        base,
                        elemsize,
                        nelems,
                        marks: &m,
                    },
                    t,
                );
            }
            Free(addr) => lc.on_free(addr, t),
        }
        check(&lc);
    }
    // Sessions 0 (born 41), 3, 4 (42), 5 (44), 6 (47) are cached; 1 was swept at 43, 2 freed exactly at 44.
    // Cycle 49's sweep of their span is still to come: they count cycles through 48.
    let a = site(&lc, A);
    assert_eq!(
        (a.allocated_count, a.live_count, a.freed_by_sweep, a.freed_exact),
        (7, 5, 1, 1)
    );
    let live_a: Vec<(u64, u64)> = lc
        .objects_in(sa..sa + 48 * 170)
        .map(|o| (o.addr - sa, o.cycles_survived))
        .collect();
    assert_eq!(live_a, vec![(0, 7), (144, 6), (192, 6), (240, 4), (288, 1)]);
    assert_eq!((a.retained_count, a.retained_bytes), (4, 160));
    assert_eq!(a.survival_cycles.count_at(1), 1, "session 1 survived 42 only");
    assert_eq!(
        a.survival_cycles.count_at(2),
        1,
        "session 2 (born 42) survived 43 and 44"
    );
    // Keys: the block-0 key re-allocated in 42 and the one born in 46 live on; seven died at sweeps.
    let b = site(&lc, B);
    assert_eq!((b.allocated_count, b.freed_by_sweep, b.freed_by_reuse), (9, 7, 0));
    assert_eq!(
        lc.objects_in(sb..sb + 4096).map(|o| o.addr - sb).collect::<Vec<_>>(),
        vec![0, 8]
    );
    let b_survival: Vec<u64> = (0..4).map(|n| b.survival_cycles.count_at(n)).collect();
    assert_eq!(
        b_survival,
        vec![4, 2, 0, 1],
        "block 2's key lived from 42 to 46's sweep"
    );
    // Buffers: slot 0 was reused three times, twice after a seen sweep, once after a lost one.
    let c = site(&lc, C);
    assert_eq!(
        (c.allocated_count, c.live_count, c.freed_by_sweep, c.freed_by_reuse),
        (7, 1, 5, 1)
    );
    // Three died at their first sweep, two at 46's after 3 and 2 cycles; the unseen death counts what was
    // known when its address was reused (47 and 48).
    let c_survival: Vec<u64> = (0..4).map(|n| c.survival_cycles.count_at(n)).collect();
    assert_eq!(c_survival, vec![3, 0, 2, 1]);
    assert_eq!(c.retained_count, 0);
    assert_eq!(lc.stats().untracked_frees, 1);
    assert_eq!(lc.stats().sweep_too_young, 4);
    assert_eq!(lc.stats().freed_by_sweep, 13);
    assert_eq!(lc.last_cycle(), Some(49));
}

#[test]
fn a_finalizer_resurrects_its_object_for_one_sweep() {
    let mut lc = engine();
    cycle(&mut lc, 1, 10);
    alloc(&mut lc, 0x1000, 32, A, 1, 11);
    alloc(&mut lc, 0x1020, 32, A, 1, 11);
    alloc(&mut lc, 0x1040, 32, A, 1, 11);
    lc.on_finalizer(0x1000, true);
    lc.on_finalizer(0x1040, true);
    lc.on_finalizer(0x1040, false); // SetFinalizer(x, nil)
    cycle(&mut lc, 2, 20);
    sweep(&mut lc, 0x1000, 32, 4, &[], 21);
    assert!(alive(&lc, 0x1000), "resurrected: its finalizer is queued");
    assert!(!alive(&lc, 0x1020) && !alive(&lc, 0x1040));
    assert_eq!(lc.stats().resurrected, 1);
    // The finalizer ran; the next cycle finds it unreachable again, and this time frees it.
    cycle(&mut lc, 3, 30);
    sweep(&mut lc, 0x1000, 32, 4, &[], 31);
    assert!(!alive(&lc, 0x1000));
    assert_eq!(site(&lc, A).freed_by_sweep, 3);
}

#[test]
fn lifetimes_and_sizes_in_buckets() {
    let mut lc = engine();
    cycle(&mut lc, 1, 0);
    alloc(&mut lc, 0x1000, 8, A, 1, 0);
    alloc(&mut lc, 0x1010, 8, A, 1, 0);
    alloc(&mut lc, 0x2000, 5000, B, 1, 0);
    cycle(&mut lc, 2, 2_000_000_000);
    sweep(&mut lc, 0x1000, 16, 2, &[1], 2_000_000_000); // 0x1000 dies after 2 s; 0x1010 lives
    let d = lc.distributions(&[1.0, 10.0], &[16.0, 4096.0]);
    assert_eq!(d.size_bytes.upper_bounds, vec![16.0, 4096.0, f64::INFINITY]);
    assert_eq!(d.size_bytes.counts, vec![2, 0, 1]);
    assert_eq!(d.size_bytes.count, 3);
    assert_eq!(d.lifetime_seconds.counts, vec![0, 1, 0], "one death, after ~2 s");
    assert!((d.lifetime_seconds.sum - 2.0).abs() < 0.2, "{}", d.lifetime_seconds.sum);
}
