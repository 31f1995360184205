//! maptrace's kernel side: uprobes on the Go runtime's allocation functions.
//!
//! Each program copies registers and a stack into maps or the ring buffer and nothing more;
//! what a record means is decided in userspace. Return values are read by uprobes placed on
//! every RET instruction of a function (never uretprobes: they corrupt moved Go stacks), and
//! state between entry and RET is keyed by goroutine, not thread (goroutines migrate, and an
//! entry can fire twice when the stack grows: the second simply overwrites the first).
#![no_std]
#![no_main]

mod go_abi;

use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_attach_cookie, bpf_get_stack, bpf_ktime_get_ns, bpf_probe_read_user, generated},
    macros::{map, uprobe},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::ProbeContext,
    EbpfContext,
};
use tracer_common::{
    AllocEntry, AllocKey, ConstructorCookie, ContainerEntry, ContainerKind, CycleRecord, ObjectEventCookie,
    ProbeConfig, Record, RecordKind, SampleBudget, SpanRecord, INLINE_MARKS_OFFSET, INLINE_MARK_BYTES, MAX_IN_FLIGHT,
    MAX_MARK_BYTES, MAX_SAMPLE_SHIFT, MAX_STACK_DEPTH, RING_BUFFER_BYTES, WAKE_AFTER_BYTES,
};

/// This target's runtime layout, set by userspace at load time.
#[no_mangle]
static CONFIG: ProbeConfig = ProbeConfig {
    goid_offset: 0,
    gc_cycles_addr: 0,
    span_start_addr: 0,
    span_npages: 0,
    span_nelems: 0,
    span_nelems_size: 0,
    span_elemsize: 0,
    span_gcmark_bits: 0,
    inline_marks_min: 0,
    inline_marks_max: 0,
    finalizer_loop_start: 0,
    finalizer_loop_end: 0,
    special_kind: 0,
    special_kind_cleanup: 0,
    special_cleanup_handle: 0,
    special_kind_profile: 0,
    samples_per_cpu_second: 0,
};

#[map]
static RECORDS: RingBuf = RingBuf::with_byte_size(RING_BUFFER_BYTES, 0);

/// Records that did not fit in the ring buffer (index 0), summed over CPUs by userspace.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Sampled mode's trap budget, per CPU (index 0).
#[map]
static BUDGET: PerCpuArray<SampleBudget> = PerCpuArray::with_max_entries(1, 0);

#[map]
static ALLOC_IN_FLIGHT: LruHashMap<AllocKey, AllocEntry> = LruHashMap::with_max_entries(MAX_IN_FLIGHT, 0);

/// The last pointer reported per goroutine. On Go 1.27 mallocgc hands small sizes to a
/// size-specialized function that is probed too: both return the same pointer, reported once.
#[map]
static LAST_ALLOC: LruHashMap<u64, u64> = LruHashMap::with_max_entries(MAX_IN_FLIGHT, 0);

#[map]
static CONSTRUCTOR_IN_FLIGHT: LruHashMap<u64, ContainerEntry> = LruHashMap::with_max_entries(MAX_IN_FLIGHT, 0);

/// Entry of `mallocgc` and its size-specialized variants: (size, typ, …). Zero-size requests
/// return the shared `zerobase` and allocate nothing.
#[uprobe]
pub fn alloc_entry(ctx: ProbeContext) -> u32 {
    let size = go_abi::int_reg(&ctx, 0);
    if size == 0 {
        return 0;
    }
    let g = go_abi::g(&ctx);
    let key = AllocKey {
        g,
        depth: go_abi::stack_depth(&ctx, g),
    };
    let entry = AllocEntry {
        size,
        type_ptr: go_abi::int_reg(&ctx, 1),
    };
    let _ = ALLOC_IN_FLIGHT.insert(&key, &entry, 0);
    0
}

/// A RET of the `mallocgc` family: the pointer is the first result.
#[uprobe]
pub fn alloc_ret(ctx: ProbeContext) -> u32 {
    let g = go_abi::g(&ctx);
    let depth = go_abi::stack_depth(&ctx, g);
    let key = AllocKey { g, depth };
    let Some(entry) = ALLOC_IN_FLIGHT.get_ptr(&key) else {
        return 0;
    };
    // SAFETY: the value is copied out before the key is removed.
    let entry = unsafe { *entry };
    let _ = ALLOC_IN_FLIGHT.remove(&key);
    let ptr = go_abi::int_reg(&ctx, 0);
    // SAFETY: per-goroutine key.
    if LAST_ALLOC.get_ptr(&g).is_some_and(|last| unsafe { *last } == ptr) {
        return 0;
    }
    let _ = LAST_ALLOC.insert(&g, &ptr, 0);

    let mut container = ContainerKind::None as u32;
    if let Some(c) = CONSTRUCTOR_IN_FLIGHT.get_ptr_mut(&g) {
        // SAFETY: per-goroutine key: only this goroutine's probes touch this entry.
        unsafe {
            if depth > (*c).depth {
                (*c).alloc_count += 1;
                (*c).bytes += entry.size;
                container = (*c).kind;
            }
        }
    }
    emit(
        &ctx,
        g,
        RecordKind::Alloc,
        container,
        ptr,
        entry.size,
        entry.type_ptr,
        1,
    );
    0
}

/// Entry of a slice or map constructor; the attach cookie says which kind and where its type is.
/// A constructor called by another (makemap → makeslice for the swiss-map directory) belongs to
/// the outer one, so a deeper entry does not replace a pending one.
#[uprobe]
pub fn constructor_entry(ctx: ProbeContext) -> u32 {
    let g = go_abi::g(&ctx);
    let depth = go_abi::stack_depth(&ctx, g);
    if let Some(outer) = CONSTRUCTOR_IN_FLIGHT.get_ptr(&g) {
        // SAFETY: per-goroutine key.
        if depth > unsafe { (*outer).depth } {
            return 0;
        }
    }
    // SAFETY: the helper only reads the current probe's cookie.
    let cookie = ConstructorCookie::decode(unsafe { bpf_get_attach_cookie(ctx.as_ptr()) });
    let type_ptr = match cookie.type_arg {
        Some(n) => go_abi::int_reg(&ctx, n),
        None => 0,
    };
    let entry = ContainerEntry {
        kind: cookie.kind as u32,
        _pad: 0,
        depth,
        type_ptr,
        alloc_count: 0,
        bytes: 0,
    };
    let _ = CONSTRUCTOR_IN_FLIGHT.insert(&g, &entry, 0);
    0
}

/// A RET of a slice or map constructor: the outermost one reports (at the depth of its entry).
/// One that allocated nothing (a stack buffer, a map that does not escape) reports nothing.
#[uprobe]
pub fn constructor_ret(ctx: ProbeContext) -> u32 {
    let g = go_abi::g(&ctx);
    let Some(entry) = CONSTRUCTOR_IN_FLIGHT.get_ptr(&g) else {
        return 0;
    };
    // SAFETY: copied out before removal.
    let entry = unsafe { *entry };
    if go_abi::stack_depth(&ctx, g) != entry.depth {
        return 0;
    }
    let _ = CONSTRUCTOR_IN_FLIGHT.remove(&g);
    if entry.alloc_count > 0 {
        emit(
            &ctx,
            g,
            RecordKind::Container,
            entry.kind,
            go_abi::int_reg(&ctx, 0),
            entry.bytes,
            entry.type_ptr,
            entry.alloc_count,
        );
    }
    0
}

/// Entry of a finalizer or cleanup function of the runtime; the attach cookie says which record
/// to make and where its object pointer is.
#[uprobe]
pub fn object_event(ctx: ProbeContext) -> u32 {
    // SAFETY: the helper only reads the current probe's cookie.
    let Some(cookie) = ObjectEventCookie::decode(unsafe { bpf_get_attach_cookie(ctx.as_ptr()) }) else {
        return 0;
    };
    if cookie.from_finalizer_loop {
        // SAFETY: plain reads of a loader-initialised global.
        let (start, end) = unsafe {
            (
                core::ptr::read_volatile(&CONFIG.finalizer_loop_start),
                core::ptr::read_volatile(&CONFIG.finalizer_loop_end),
            )
        };
        let ret = go_abi::return_address(&ctx);
        if ret < start || ret >= end {
            return 0;
        }
    }
    let arg = |n: u8| {
        if cookie.stack_args {
            go_abi::stack_word(&ctx, n)
        } else {
            go_abi::int_reg(&ctx, n)
        }
    };
    let mut ptr = arg(cookie.ptr_arg);
    if cookie.deref_ptr {
        ptr = read_u64(ptr);
    }
    let aux = cookie.aux_arg.map_or(0, arg);
    let type_ptr = cookie.type_arg.map_or(0, arg);
    emit(&ctx, go_abi::g(&ctx), cookie.kind, 0, ptr, aux, type_ptr, 0);
    0
}

/// Entry of `runtime.mProf_Malloc`, where the runtime's own allocation sampler (MemProfileRate)
/// records a sampled allocation; the attach cookie says which registers hold the pointer and the
/// size. The trap budget ([`SampleBudget`]) decides whether it is sent, and with what weight.
#[uprobe]
pub fn sampled_alloc(ctx: ProbeContext) -> u32 {
    // SAFETY: the helper only reads the current probe's cookie.
    let Some(cookie) = ObjectEventCookie::decode(unsafe { bpf_get_attach_cookie(ctx.as_ptr()) }) else {
        return 0;
    };
    let Some(budget) = BUDGET.get_ptr_mut(0) else { return 0 };
    // SAFETY: a plain read of a loader-initialised global.
    let limit = unsafe { core::ptr::read_volatile(&CONFIG.samples_per_cpu_second) };
    // SAFETY: the helper only reads a clock.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: this CPU's slot; a uprobe program is not preempted by another on the same CPU.
    let weight = unsafe {
        let b = &mut *budget;
        if now.wrapping_sub(b.window_start_ns) >= 1_000_000_000 {
            if b.sent > limit && b.shift < MAX_SAMPLE_SHIFT {
                b.shift += 1;
            } else if b.sent * 4 < limit && b.shift > 0 {
                b.shift -= 1;
            }
            b.window_start_ns = now;
            b.sent = 0;
        }
        b.total_hits += 1;
        let mask = (1u64 << (b.shift & 63)) - 1;
        if b.total_hits & mask != 0 {
            b.thinned += 1;
            return 0;
        }
        b.sent += 1;
        if b.sent >= 2 * limit && b.shift < MAX_SAMPLE_SHIFT {
            b.shift += 1;
            b.sent = limit;
        }
        mask + 1
    };
    let ptr = go_abi::int_reg(&ctx, cookie.ptr_arg);
    let size = cookie.aux_arg.map_or(0, |a| go_abi::int_reg(&ctx, a));
    emit(&ctx, go_abi::g(&ctx), RecordKind::Sampled, 0, ptr, size, 0, weight);
    0
}

/// Entry of `runtime.freeSpecial(s *special, p unsafe.Pointer, size uintptr)`: a sweep unlinked
/// a special of a dead object. Sent: cleanup specials (the cleanup is queued) and, in sampled
/// mode, profile specials (a sampled object died). Finalizers are `queuefinalizer`'s.
#[uprobe]
pub fn special_freed(ctx: ProbeContext) -> u32 {
    // SAFETY: a plain read of a loader-initialised global.
    let cfg = unsafe { core::ptr::read_volatile(&CONFIG) };
    let special = go_abi::int_reg(&ctx, 0);
    // SAFETY: checked user read.
    let kind = u64::from(unsafe { bpf_probe_read_user((special + cfg.special_kind) as *const u8) }.unwrap_or(0));
    let object = go_abi::int_reg(&ctx, 1);
    if cfg.special_kind_profile != 0 && kind == cfg.special_kind_profile {
        emit(&ctx, go_abi::g(&ctx), RecordKind::SampleFreed, 0, object, 0, 0, 0);
    } else if cfg.special_kind_cleanup != 0 && kind == cfg.special_kind_cleanup {
        let handle = read_u64(special + cfg.special_cleanup_handle);
        emit(
            &ctx,
            go_abi::g(&ctx),
            RecordKind::CleanupQueued,
            0,
            object,
            handle,
            0,
            0,
        );
    }
    0
}

/// Does nothing: the benchmark attaches it in place of the others to measure the traps alone.
#[uprobe]
pub fn empty(_ctx: ProbeContext) -> u32 {
    0
}

/// Entry of `runtime.gcMarkTermination`: cycle N's marking is complete, its sweep follows.
#[uprobe]
pub fn gc_cycle_end(_ctx: ProbeContext) -> u32 {
    let Some(mut slot) = RECORDS.reserve::<CycleRecord>(0) else {
        count_lost();
        return 0;
    };
    // SAFETY: the helper only reads a clock.
    let record = CycleRecord {
        kind: RecordKind::CycleEnd as u32,
        _pad: 0,
        cycle: gc_cycle(),
        ktime_ns: unsafe { bpf_ktime_get_ns() },
    };
    slot.write(record);
    slot.submit(BPF_RB_FORCE_WAKEUP.into());
    0
}

/// Entry of `runtime.(*sweepLocked).sweep` (the one function that sweeps every span): copy the
/// span's bounds and the mark bits the last cycle left, before sweep frees the unmarked slots.
#[uprobe]
pub fn span_sweep(ctx: ProbeContext) -> u32 {
    // SAFETY: a plain read of a loader-initialised global.
    let cfg = unsafe { core::ptr::read_volatile(&CONFIG) };
    // sweepLocked is {mspan *mspan}: the receiver points at the span pointer.
    let span = read_u64(go_abi::int_reg(&ctx, 0));
    if span == 0 {
        return 0;
    }
    let Some(mut slot) = RECORDS.reserve::<SpanRecord>(0) else {
        count_lost();
        return 0;
    };
    let r = slot.as_mut_ptr();
    let base = read_u64(span + cfg.span_start_addr);
    let elemsize = read_u64(span + cfg.span_elemsize);
    let nelems = if cfg.span_nelems_size == 2 {
        // SAFETY: checked user read.
        unsafe { bpf_probe_read_user((span + cfg.span_nelems) as *const u16) }.unwrap_or(0) as u64
    } else {
        read_u64(span + cfg.span_nelems)
    };
    let inline = elemsize >= cfg.inline_marks_min && elemsize <= cfg.inline_marks_max && cfg.inline_marks_max != 0;
    let (marks_addr, cap) = if inline {
        (base + INLINE_MARKS_OFFSET, INLINE_MARK_BYTES as u64)
    } else {
        (read_u64(span + cfg.span_gcmark_bits), MAX_MARK_BYTES as u64)
    };
    let mut len = nelems.div_ceil(8);
    if len > cap {
        len = cap;
    }
    // SAFETY: `r` is a reserved, exclusively owned SpanRecord; reads are checked helpers and
    // `len` is bounded by the array size for the verifier.
    unsafe {
        (*r).kind = RecordKind::SpanSwept as u32;
        (*r).base = base;
        (*r).npages = read_u64(span + cfg.span_npages);
        (*r).elemsize = elemsize;
        (*r).nelems = nelems;
        (*r).ktime_ns = bpf_ktime_get_ns();
        let len = (len as usize) & (MAX_MARK_BYTES * 2 - 1);
        let ok = len > 0
            && len <= MAX_MARK_BYTES
            && generated::bpf_probe_read_user((&raw mut (*r).marks).cast(), len as u32, marks_addr as *const _) == 0;
        (*r).marks_len = if ok { len as u32 } else { 0 };
    }
    slot.submit(batched_wakeup());
    0
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn emit(
    ctx: &ProbeContext,
    g: u64,
    kind: RecordKind,
    container: u32,
    ptr: u64,
    size: u64,
    type_ptr: u64,
    alloc_count: u64,
) {
    let Some(mut slot) = RECORDS.reserve::<Record>(0) else {
        count_lost();
        return;
    };
    let r = slot.as_mut_ptr();
    // SAFETY: `r` points to a reserved, exclusively owned Record-sized slot.
    unsafe {
        (*r).kind = kind as u32;
        (*r).container = container;
        (*r).goid = goid(g);
        (*r).g = g;
        (*r).ptr = ptr;
        (*r).size = size;
        (*r).type_ptr = type_ptr;
        (*r).alloc_count = alloc_count;
        (*r).ktime_ns = bpf_ktime_get_ns();
        (*r).gc_cycle = gc_cycle();
        (*r).caller_pc = go_abi::return_address(ctx);
        (*r)._pad = 0;
        let n = bpf_get_stack(
            ctx.as_ptr(),
            (*r).stack.as_mut_ptr().cast(),
            (MAX_STACK_DEPTH * 8) as u32,
            BPF_F_USER_STACK as u64,
        );
        (*r).stack_len = if n > 0 { (n as u32) / 8 } else { 0 };
    }
    let frequent = matches!(
        kind,
        RecordKind::Alloc | RecordKind::Container | RecordKind::Sampled | RecordKind::SampleFreed
    );
    slot.submit(if frequent {
        batched_wakeup()
    } else {
        BPF_RB_FORCE_WAKEUP.into()
    });
}

/// Submit flags for a frequent record: wake userspace only when [`WAKE_AFTER_BYTES`] are waiting
/// (its timer drains the rest). Rare records (cycles, finalizers, cleanups) wake it at once, even
/// behind batched ones: userspace reads the target's memory for some of them (a cleanup's
/// function) while it still holds what the record names.
#[inline(always)]
fn batched_wakeup() -> u64 {
    if RECORDS.query(BPF_RB_AVAIL_DATA.into()) >= WAKE_AFTER_BYTES {
        BPF_RB_FORCE_WAKEUP.into()
    } else {
        BPF_RB_NO_WAKEUP.into()
    }
}

fn count_lost() {
    if let Some(lost) = LOST.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *lost += 1 };
    }
}

fn read_u64(addr: u64) -> u64 {
    // SAFETY: the helper checks the user address.
    unsafe { bpf_probe_read_user(addr as *const u64) }.unwrap_or(0)
}

fn goid(g: u64) -> u64 {
    // SAFETY: a plain read of a loader-initialised global.
    let off = unsafe { core::ptr::read_volatile(&CONFIG.goid_offset) };
    read_u64(g + off)
}

/// The target's `work.cycles` (a uint32), 0 when its address is unknown.
fn gc_cycle() -> u64 {
    // SAFETY: a plain read of a loader-initialised global.
    let addr = unsafe { core::ptr::read_volatile(&CONFIG.gc_cycles_addr) };
    if addr == 0 {
        return 0;
    }
    // SAFETY: checked user read.
    unsafe { bpf_probe_read_user(addr as *const u32) }.unwrap_or(0) as u64
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
