//! Has the frame that created a site's objects returned? (The creating frame is the site's frame, the first non-runtime
//! one, on goroutine G; it has returned when G exited, or when G's stack no longer holds it.) Every record carries its
//! goroutine's stack, so each record of G after a creation tells whether the creating frame is still there: it is iff
//! the new stack still ends with the chain of return addresses from the site's caller outwards (depth from the stack
//! top, which survives the runtime copying stacks). A goroutine that makes no later record leaves the question open
//! until the target exits.
//!
//! Objects are judged one by one: an object made before the oldest creating frame still open at
//! its site was opened belongs to a frame that has since returned (each goroutine runs one frame
//! instance at a time), so a loop that keeps calling the site does not hide what earlier calls
//! left behind.

use std::collections::HashMap;

/// One creating frame still believed active: its site, its callers' return addresses, and when
/// its first object was made.
struct OpenFrame {
    site: u64,
    chain: Vec<u64>,
    opened_ns: u64,
}

/// Creating frames per goroutine, closed as later stacks show them gone.
#[derive(Default)]
pub struct CreatingFrames {
    open: HashMap<u64, Vec<OpenFrame>>,
}

impl CreatingFrames {
    /// A record of goroutine `goid` with `stack` (innermost first): closes that goroutine's open
    /// frames the stack no longer holds. Call it for every record before [`Self::created`].
    pub fn observe(&mut self, goid: u64, stack: &[u64]) {
        let Some(frames) = self.open.get_mut(&goid) else { return };
        frames.retain(|f| holds(stack, &f.chain));
        if frames.is_empty() {
            self.open.remove(&goid);
        }
    }

    /// Goroutine `goid` allocated at `site` at `time_ns`, the site's frame being `stack[site_index]`.
    pub fn created(&mut self, site: u64, goid: u64, stack: &[u64], site_index: usize, time_ns: u64) {
        let chain = stack.get(site_index + 1..).unwrap_or_default();
        let frames = self.open.entry(goid).or_default();
        if frames.iter().any(|f| f.site == site && f.chain == chain) {
            return;
        }
        frames.push(OpenFrame {
            site,
            chain: chain.to_vec(),
            opened_ns: time_ns,
        });
    }

    /// Whether the frame that made an object at `site` at `time_ns` has returned (everything has
    /// once the target exited).
    pub fn returned(&self, site: u64, time_ns: u64, target_exited: bool) -> bool {
        if target_exited {
            return true;
        }
        let oldest_open = self
            .open
            .values()
            .flatten()
            .filter(|f| f.site == site)
            .map(|f| f.opened_ns)
            .min();
        oldest_open.is_none_or(|opened| time_ns < opened)
    }
}

/// Whether `stack` still holds a frame whose callers are `chain`: the stack must end with the
/// chain and have a frame inside it.
fn holds(stack: &[u64], chain: &[u64]) -> bool {
    stack.len() > chain.len() && stack.ends_with(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Return addresses: 0x10 in main.main (calling the site), 0x20 in runtime.main, 0x30 goexit.
    const CHAIN: [u64; 3] = [0x10, 0x20, 0x30];

    #[test]
    fn a_later_stack_without_the_frame_closes_it() {
        let mut f = CreatingFrames::default();
        let creation = [0x1, 0x2, 0x10, 0x20, 0x30]; // probe, site (index 1), chain
        f.observe(7, &creation);
        f.created(100, 7, &creation, 1, 10);
        assert!(!f.returned(100, 10, false));
        // Deeper in the same frame: still open.
        f.observe(7, &[0x1, 0x5, 0x2, 0x10, 0x20, 0x30]);
        assert!(!f.returned(100, 10, false));
        // main.main allocating by itself at another line: the site's frame is gone.
        f.observe(7, &[0x1, 0x11, 0x20, 0x30]);
        assert!(f.returned(100, 10, false));
    }

    #[test]
    fn other_goroutines_do_not_close_a_frame() {
        let mut f = CreatingFrames::default();
        f.created(100, 7, &[0x1, 0x2, 0x10, 0x20, 0x30], 1, 10);
        f.observe(8, &[0x1, 0x11, 0x20, 0x30]);
        assert!(!f.returned(100, 10, false));
        assert!(f.returned(100, 10, true), "everything returned once the target exited");
    }

    #[test]
    fn objects_of_earlier_calls_have_returned_while_a_new_call_runs() {
        let mut f = CreatingFrames::default();
        f.created(100, 7, &[0x1, 0x2, 0x10, 0x20, 0x30], 1, 10);
        f.observe(7, &[0x1, 0x11, 0x20, 0x30]); // returned
        f.created(100, 7, &[0x1, 0x2, 0x10, 0x20, 0x30], 1, 50); // called again
        f.created(100, 7, &[0x1, 0x2, 0x10, 0x20, 0x30], 1, 60); // the same call: still opened at 50
        assert!(f.returned(100, 10, false), "made by the first call");
        assert!(
            !f.returned(100, 50, false) && !f.returned(100, 60, false),
            "made by the running call"
        );
        // A second goroutine's older open frame holds back everything after its start.
        f.created(100, 8, &[0x1, 0x2, 0x12, 0x20, 0x30], 1, 40);
        assert!(f.returned(100, 30, false));
        assert!(!f.returned(100, 45, false));
        assert!(f.returned(999, 1_000, false), "a site never created has nothing open");
    }

    #[test]
    fn holds_compares_from_the_stack_top() {
        assert!(holds(&[1, 2, 0x10, 0x20, 0x30], &CHAIN));
        assert!(!holds(&CHAIN, &CHAIN), "the chain alone has no frame for the site");
        assert!(!holds(&[1, 0x10, 0x21, 0x30], &CHAIN));
    }
}
