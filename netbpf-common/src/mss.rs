//! The MSS clamp's arithmetic, as TCPMSS does it, apart from the packet:
//! which MSS a path carries, what an inserted option says, when an option
//! is lowered, and the checksum words a lowered MSS changes. The tc
//! program reads and writes packets around these; the unit tests run on
//! the host.
#![expect(
    clippy::inline_always,
    reason = "the kernel programs call these, each with its own constants folded in (a socket family decides which context fields may be touched): inlined on purpose"
)]

use crate::{MSS_V4_DEFAULT, MSS_V4_OVERHEAD, MSS_V6_DEFAULT, MSS_V6_OVERHEAD};

/// The MSS a path carries: the lower of the `forward` and `reverse` route
/// MTUs less the IP and TCP headers of the family; None when nothing is
/// left.
#[inline(always)]
#[must_use]
pub fn path_mss(forward: u16, reverse: u16, ipv4: bool) -> Option<u16> {
    let overhead = if ipv4 {
        MSS_V4_OVERHEAD
    } else {
        MSS_V6_OVERHEAD
    };
    forward
        .min(reverse)
        .checked_sub(overhead)
        .filter(|mss| *mss > 0)
}

/// The MSS of an option added to a segment that had none: the clamp's
/// `target`, at most the protocol's default (what a peer assumes without
/// the option).
#[inline(always)]
#[must_use]
pub fn inserted_mss(target: u16, ipv4: bool) -> u16 {
    target.min(if ipv4 { MSS_V4_DEFAULT } else { MSS_V6_DEFAULT })
}

/// What an MSS option of `old` becomes: `target` when larger, else it
/// stays (None).
#[inline(always)]
#[must_use]
pub fn lowered_mss(old: u16, target: u16) -> Option<u16> {
    (old > target).then_some(target)
}

/// The 16-bit words of the TCP checksum that change when the MSS at
/// option offset `at` (from the start of the options, which start at an
/// even offset) goes from `old` to `new`, in packet byte order. The
/// checksum sums words from the start of the header: an MSS at an odd
/// offset straddles two words, one byte in each, and counts byte-swapped.
/// (TCPMSS misses this and breaks the checksum there.)
#[inline(always)]
#[must_use]
pub fn checksum_words(old: u16, new: u16, at: usize) -> ([u8; 2], [u8; 2]) {
    let (old, new) = (old.to_be_bytes(), new.to_be_bytes());
    if at.is_multiple_of(2) {
        (old, new)
    } else {
        ([old[1], old[0]], [new[1], new[0]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_carries_its_lower_mtu_less_the_headers() {
        assert_eq!(path_mss(1380, 1500, true), Some(1340));
        assert_eq!(path_mss(1500, 1380, false), Some(1320));
        assert_eq!(path_mss(40, 1500, true), None, "nothing left");
        assert_eq!(path_mss(u16::MAX, u16::MAX, true), Some(u16::MAX - 40));
    }

    #[test]
    fn an_inserted_option_says_no_more_than_the_default() {
        assert_eq!(inserted_mss(1340, true), 536);
        assert_eq!(inserted_mss(500, true), 500);
        assert_eq!(inserted_mss(1340, false), 1220);
    }

    #[test]
    fn only_a_larger_mss_is_lowered() {
        assert_eq!(lowered_mss(1460, 1340), Some(1340));
        assert_eq!(lowered_mss(1340, 1340), None);
        assert_eq!(lowered_mss(1200, 1340), None);
    }

    /// The TCP checksum's one's complement sum of `bytes` (16-bit words).
    fn sum(bytes: &[u8]) -> u16 {
        let mut sum: u32 = bytes
            .chunks(2)
            .map(|word| u32::from(u16::from_be_bytes([word[0], *word.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        u16::try_from(sum).unwrap()
    }

    /// RFC 1624's update of a checksum `check` when word `old` becomes
    /// `new`: what `bpf_l4_csum_replace` does.
    fn replaced(check: u16, old: [u8; 2], new: [u8; 2]) -> u16 {
        let mut sum = u32::from(!check)
            + u32::from(!u16::from_be_bytes(old))
            + u32::from(u16::from_be_bytes(new));
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !u16::try_from(sum).unwrap()
    }

    #[test]
    fn the_checksum_follows_an_mss_at_an_even_or_an_odd_offset() {
        for at in [0, 1, 2, 3, 5, 36] {
            // A header's options with the MSS option's value at `at + 2`.
            let mut options = [0x5au8; 40];
            let value = at + 2;
            options[value..value + 2].copy_from_slice(&1460u16.to_be_bytes());
            let check = !sum(&options);
            let (old, new) = checksum_words(1460, 1340, at);
            options[value..value + 2].copy_from_slice(&1340u16.to_be_bytes());
            // The option's value sits at `at + 2`: the same parity as `at`.
            assert_eq!(replaced(check, old, new), !sum(&options), "at {at}");
        }
    }
}
