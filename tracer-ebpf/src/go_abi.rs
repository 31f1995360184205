//! Go's internal register ABI (ABIInternal) as seen from a uprobe's `pt_regs`.
//!
//! Go passes integer arguments and results in its own register order and keeps the current
//! goroutine (`g`) in a fixed register, so libbpf-style `arg(n)` helpers (System V order) do not
//! apply. Everything architecture-specific in the eBPF crate lives here.

use aya_ebpf::programs::ProbeContext;
use tracer_common::CLOSURE_CONTEXT;

#[cfg(bpf_target_arch = "x86_64")]
mod arch {
    use aya_ebpf::bindings::pt_regs;

    pub fn regs(ctx: &super::ProbeContext) -> &pt_regs {
        // SAFETY: the kernel passes a valid pt_regs to every uprobe program.
        unsafe { &*ctx.regs }
    }

    /// RAX, RBX, RCX, RDI, RSI, R8, R9, R10, R11.
    pub fn int_reg(r: &pt_regs, n: u8) -> u64 {
        // The verifier only allows context loads at constant offsets: load each register with
        // its own instruction (volatile, so they are not folded into one computed load), then
        // index the copy on the stack.
        // The copy has 16 slots and the index is masked so that the verifier can bound it.
        let mut regs = [0u64; 16];
        for (slot, reg) in regs
            .iter_mut()
            .zip([&r.rax, &r.rbx, &r.rcx, &r.rdi, &r.rsi, &r.r8, &r.r9, &r.r10, &r.r11])
        {
            *slot = unsafe { core::ptr::read_volatile(reg) };
        }
        regs[(n & 15) as usize]
    }

    pub fn g(r: &pt_regs) -> u64 {
        r.r14
    }

    pub fn closure_context(r: &pt_regs) -> u64 {
        r.rdx
    }

    pub fn sp(r: &pt_regs) -> u64 {
        r.rsp
    }

    /// At a function's entry and at its RET the return address is the word at SP.
    pub fn return_address(r: &pt_regs) -> u64 {
        // SAFETY: bpf_probe_read_user checks the user address.
        unsafe { aya_ebpf::helpers::bpf_probe_read_user(sp(r) as *const u64) }.unwrap_or(0)
    }
}

#[cfg(bpf_target_arch = "aarch64")]
mod arch {
    use aya_ebpf::bindings::user_pt_regs as pt_regs;

    pub fn regs(ctx: &super::ProbeContext) -> &pt_regs {
        // SAFETY: on arm64 the kernel's pt_regs starts with user_pt_regs.
        unsafe { &*(ctx.regs as *const pt_regs) }
    }

    /// R0–R15.
    pub fn int_reg(r: &pt_regs, n: u8) -> u64 {
        // Constant-offset context loads only (see the amd64 twin).
        let mut regs = [0u64; 16];
        for (i, slot) in regs.iter_mut().enumerate() {
            *slot = unsafe { core::ptr::read_volatile(&r.regs[i]) };
        }
        regs[(n & 15) as usize]
    }

    pub fn g(r: &pt_regs) -> u64 {
        r.regs[28]
    }

    pub fn closure_context(r: &pt_regs) -> u64 {
        r.regs[26]
    }

    pub fn sp(r: &pt_regs) -> u64 {
        r.sp
    }

    /// At entry and at RET the return address is in the link register.
    pub fn return_address(r: &pt_regs) -> u64 {
        r.regs[30]
    }
}

/// The `n`th integer argument at a function's entry (or the `n`th result at its RET), or the
/// closure context for [`CLOSURE_CONTEXT`].
pub fn int_reg(ctx: &ProbeContext, n: u8) -> u64 {
    if n == CLOSURE_CONTEXT {
        return arch::closure_context(arch::regs(ctx));
    }
    arch::int_reg(arch::regs(ctx), n)
}

/// Word `n` above SP: with ABI0 (assembly functions) word 0 is the return address and the
/// arguments follow.
pub fn stack_word(ctx: &ProbeContext, n: u8) -> u64 {
    let addr = arch::sp(arch::regs(ctx)) + 8 * n as u64;
    // SAFETY: bpf_probe_read_user checks the user address.
    unsafe { aya_ebpf::helpers::bpf_probe_read_user(addr as *const u64) }.unwrap_or(0)
}

/// The current goroutine's `g` pointer.
pub fn g(ctx: &ProbeContext) -> u64 {
    arch::g(arch::regs(ctx))
}

/// Bytes between SP and the top of the goroutine's stack (`g.stack.hi`, the second word of `g`
/// in every Go version). Unlike SP it survives the runtime moving the stack.
pub fn stack_depth(ctx: &ProbeContext, g: u64) -> u64 {
    // SAFETY: bpf_probe_read_user checks the user address.
    let hi = unsafe { aya_ebpf::helpers::bpf_probe_read_user((g + 8) as *const u64) }.unwrap_or(0);
    hi.wrapping_sub(arch::sp(arch::regs(ctx)))
}

/// The probed function's return address in its caller.
pub fn return_address(ctx: &ProbeContext) -> u64 {
    arch::return_address(arch::regs(ctx))
}
