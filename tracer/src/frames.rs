//! Has the frame that created a site's objects returned? (design.md: the creating frame is the
//! site's frame on goroutine G; it has returned when G exited, or when G's stack no longer holds
//! it.) Every record carries its goroutine's stack, so each record of G after a creation tells
//! whether the creating frame is still there: it is iff the new stack still ends with the chain of
//! return addresses from the site's caller outwards (depth from the stack top, which survives the
//! runtime copying stacks). A goroutine that makes no later record leaves the question open until
//! the target exits.

use std::collections::HashMap;

/// What is known of a site's creating frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameState {
    /// Every goroutine that created objects at the site has since left the frame (or exited).
    Returned,
    /// A creating goroutine's latest record still had the frame on its stack.
    Active,
}

/// One creating frame still believed active: its site and its callers' return addresses.
struct OpenFrame {
    site: u64,
    chain: Vec<u64>,
}

/// Creating frames per goroutine, closed as later stacks show them gone.
#[derive(Default)]
pub struct CreatingFrames {
    open: HashMap<u64, Vec<OpenFrame>>,
    /// Open frames per site.
    open_per_site: HashMap<u64, u32>,
}

impl CreatingFrames {
    /// A record of goroutine `goid` with `stack` (innermost first): closes that goroutine's open
    /// frames the stack no longer holds. Call it for every record before [`Self::created`].
    pub fn observe(&mut self, goid: u64, stack: &[u64]) {
        let Some(frames) = self.open.get_mut(&goid) else { return };
        let per_site = &mut self.open_per_site;
        frames.retain(|f| {
            let held = holds(stack, &f.chain);
            if !held {
                if let Some(n) = per_site.get_mut(&f.site) {
                    *n = n.saturating_sub(1);
                }
            }
            held
        });
        if frames.is_empty() {
            self.open.remove(&goid);
        }
    }

    /// Goroutine `goid` allocated at `site`, whose frame is `stack[site_index]`.
    pub fn created(&mut self, site: u64, goid: u64, stack: &[u64], site_index: usize) {
        let chain = stack.get(site_index + 1..).unwrap_or_default();
        let frames = self.open.entry(goid).or_default();
        if frames.iter().any(|f| f.site == site && f.chain == chain) {
            return;
        }
        frames.push(OpenFrame { site, chain: chain.to_vec() });
        *self.open_per_site.entry(site).or_default() += 1;
    }

    /// The state of `site`'s creating frames; every frame has returned once the target exited.
    pub fn state(&self, site: u64, target_exited: bool) -> FrameState {
        if target_exited || self.open_per_site.get(&site).copied().unwrap_or(0) == 0 {
            FrameState::Returned
        } else {
            FrameState::Active
        }
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
        f.created(100, 7, &creation, 1);
        assert_eq!(f.state(100, false), FrameState::Active);
        // Deeper in the same frame: still active.
        f.observe(7, &[0x1, 0x5, 0x2, 0x10, 0x20, 0x30]);
        assert_eq!(f.state(100, false), FrameState::Active);
        // main.main allocating by itself at another line: the site's frame is gone.
        f.observe(7, &[0x1, 0x11, 0x20, 0x30]);
        assert_eq!(f.state(100, false), FrameState::Returned);
    }

    #[test]
    fn other_goroutines_do_not_close_a_frame() {
        let mut f = CreatingFrames::default();
        f.created(100, 7, &[0x1, 0x2, 0x10, 0x20, 0x30], 1);
        f.observe(8, &[0x1, 0x11, 0x20, 0x30]);
        assert_eq!(f.state(100, false), FrameState::Active);
        assert_eq!(f.state(100, true), FrameState::Returned, "everything returned once the target exited");
    }

    #[test]
    fn a_site_is_returned_only_when_every_creator_left_it() {
        let mut f = CreatingFrames::default();
        f.created(100, 7, &[0x1, 0x2, 0x10, 0x20, 0x30], 1);
        f.created(100, 8, &[0x1, 0x2, 0x12, 0x20, 0x30], 1);
        f.created(100, 8, &[0x1, 0x2, 0x12, 0x20, 0x30], 1); // the same frame again: counted once
        f.observe(7, &[0x1, 0x11, 0x20, 0x30]);
        assert_eq!(f.state(100, false), FrameState::Active);
        f.observe(8, &[0x1, 0x13, 0x20, 0x30]);
        assert_eq!(f.state(100, false), FrameState::Returned);
        // Called again from the same place: open again.
        f.created(100, 7, &[0x1, 0x2, 0x10, 0x20, 0x30], 1);
        assert_eq!(f.state(100, false), FrameState::Active);
        assert_eq!(f.state(999, false), FrameState::Returned, "a site never created has nothing open");
    }

    #[test]
    fn holds_compares_from_the_stack_top() {
        assert!(holds(&[1, 2, 0x10, 0x20, 0x30], &CHAIN));
        assert!(!holds(&CHAIN, &CHAIN), "the chain alone has no frame for the site");
        assert!(!holds(&[1, 0x10, 0x21, 0x30], &CHAIN));
    }
}
