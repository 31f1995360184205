//! What a goroutine is doing, read from its `runtime.g`: its status and, while it waits, why.

use crate::{gobin::RuntimeLayout, memory::Memory};

/// `runtime.g.atomicstatus` values maptrace tells apart (`_Gidle` … `_Gdead`, runtime2.go).
pub mod gstatus {
    pub const IDLE: u32 = 0;
    pub const RUNNABLE: u32 = 1;
    pub const RUNNING: u32 = 2;
    pub const WAITING: u32 = 4;
    pub const DEAD: u32 = 6;
}

/// A goroutine's status, without the `_Gscan` bit (0x1000) the GC sets while it scans the stack.
pub fn goroutine_status(memory: &dyn Memory, layout: &RuntimeLayout, g: u64) -> Option<u32> {
    let mut status = [0u8; 4];
    memory.read(g.checked_add(layout.g_atomicstatus)?, &mut status).ok()?;
    Some(u32::from_le_bytes(status) & !0x1000)
}

/// A goroutine's wait reason while it waits, else "running" or "runnable".
pub fn goroutine_state(memory: &dyn Memory, layout: &RuntimeLayout, g: u64) -> Option<String> {
    Some(status_text(memory, layout, g, goroutine_status(memory, layout, g)?))
}

/// What [`goroutine_state`] says of a goroutine with this status.
pub fn status_text(memory: &dyn Memory, layout: &RuntimeLayout, g: u64, status: u32) -> String {
    match status {
        gstatus::RUNNABLE => "runnable".into(),
        gstatus::RUNNING => "running".into(),
        gstatus::WAITING => {
            let mut reason = [0u8; 1];
            match memory.read(g.wrapping_add(layout.g_waitreason), &mut reason) {
                Ok(()) => layout
                    .wait_reason(reason[0])
                    .map_or_else(|| format!("waiting ({})", reason[0]), str::to_string),
                Err(_) => "waiting".into(),
            }
        }
        other => format!("status {other}"),
    }
}
