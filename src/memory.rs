//! Sizes checked before anything is allocated from them: what a setting would need against
//! what the machine has, so that `--batch-size 1000000000000` is an error naming the flag, not
//! an allocation failure that aborts the process.

use crate::error::{Error, Result};

/// Memory the system can give this process now, in bytes: `MemAvailable` of `/proc/meminfo`
/// (Linux), less when the process's address space is limited (`ulimit -v`: the limit less what
/// it has mapped), or `None` where neither can be read.
pub fn available_memory() -> Option<u64> {
    let field = |text: &str, key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].split_whitespace().next()?.parse().ok()
    };
    let system = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| field(&info, "MemAvailable:"))
        .map(|kib| kib.saturating_mul(1024));
    let limits = std::fs::read_to_string("/proc/self/limits").ok();
    let limit = limits.as_deref().and_then(|l| field(l, "Max address space")); // bytes, or "unlimited"
    let mapped = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| field(&s, "VmSize:"))
        .map(|kib| kib.saturating_mul(1024));
    let room = limit.map(|limit| limit.saturating_sub(mapped.unwrap_or(0)));
    match (system, room) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Where the available memory is unknown, sizes are still checked against this: more than any
/// machine this runs on has.
const UNKNOWN_AVAILABLE: u64 = 1 << 44; // 16 TiB

/// Checks that `count` items of about `bytes_each` bytes fit in the available memory; the error
/// names `what` (the flag) and its value, what it would need and what there is.
pub fn check_memory(what: &str, count: usize, bytes_each: u64) -> Result<()> {
    let needed = (count as u128).saturating_mul(u128::from(bytes_each));
    let (available, known) = match available_memory() {
        Some(bytes) => (bytes, true),
        None => (UNKNOWN_AVAILABLE, false),
    };
    if needed > u128::from(available) {
        return Err(Error::InvalidConfig(format!(
            "{what} {count} would need about {} of memory, and {} {}: choose a smaller value",
            human_bytes(needed),
            if known { "this machine has" } else { "no machine has" },
            if known {
                format!("{} available", human_bytes(u128::from(available)))
            } else {
                human_bytes(u128::from(available))
            }
        )));
    }
    Ok(())
}

/// Bytes a training step keeps per token, roughly and on the generous side, for a model of
/// width `d`, feed-forward width `f`, `h` heads and `layers` layers (a decoder layer counted
/// twice: it attends twice), over sequences of up to `seq` positions and a vocabulary of
/// `vocab`, in elements of `elem` bytes. Per layer: the Q, K, V and output activations, the
/// norms' and residuals' outputs (9 `d`), the feed-forward hidden layer and its activation
/// (2 `f`) and the attention scores and weights (2 `h seq`); then the logits, their softmax and
/// gradient (3 `vocab`); doubled for the gradients of the backward pass.
pub const fn training_bytes_per_token(
    d: usize,
    f: usize,
    h: usize,
    layers: usize,
    seq: usize,
    vocab: usize,
    elem: usize,
) -> u64 {
    (2 * elem * (layers * (9 * d + 2 * f + 2 * h * seq) + 3 * vocab)) as u64
}

/// `bytes` as `12.3 GiB`.
pub fn human_bytes(bytes: u128) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_beyond_the_machine_are_refused_by_name() {
        let err = check_memory("--batch-size", 1_000_000_000_000, 1 << 20).unwrap_err().to_string();
        assert!(err.contains("--batch-size 1000000000000 would need about 931.3 PiB"), "{err}");
        assert!(check_memory("--batch-size", 64, 1 << 20).is_ok());
        // No overflow, however large.
        assert!(check_memory("--steps", usize::MAX, u64::MAX).is_err());
    }

    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
