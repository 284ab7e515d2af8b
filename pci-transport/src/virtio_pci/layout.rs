//! Where [`VirtioPciFunction`](super::function::VirtioPciFunction) places its structures.
//!
//! Everything lives in BAR0, a 64-bit non-prefetchable memory BAR of 64 KiB (non-prefetchable
//! because reading the ISR has a side effect). Each structure starts on its own 4 KiB page so
//! a VMM can map or trap them independently:
//!
//! | offset   | structure                     | length                          |
//! |----------|-------------------------------|---------------------------------|
//! | `0x0000` | common configuration          | [`COMMON_CFG_LEN`] (0x40)       |
//! | `0x1000` | ISR status                    | [`ISR_LEN`] (1)                 |
//! | `0x2000` | device-specific configuration | up to [`DEVICE_CFG_MAX_LEN`]    |
//! | `0x3000` | notifications                 | `num_queues * 4`                |
//! | `0x8000` | MSI-X table                   | `vectors * 16`                  |
//! | `0x9000` | MSI-X pending bit array       | 8 (64 vectors)                  |
//!
//! `queue_notify_off` of queue `q` is `q` and `notify_off_multiplier` is 4, so queue `q` is
//! notified by writing its index (16 bits) at `BAR0 + 0x3000 + 4 * q`: one distinct address
//! per queue, which is what a VMM needs to attach one ioeventfd per queue.

pub use super::common_cfg::COMMON_CFG_LEN;

/// The BAR holding every structure.
pub const BAR_INDEX: u8 = 0;
/// Size of BAR0.
pub const BAR_SIZE: u64 = 0x1_0000;
/// Offset of the common configuration structure.
pub const COMMON_CFG_OFFSET: u64 = 0x0000;
/// Offset of the ISR status byte.
pub const ISR_OFFSET: u64 = 0x1000;
/// Length of the ISR status structure.
pub const ISR_LEN: u64 = 1;
/// Offset of the device-specific configuration.
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
/// Largest device-specific configuration supported.
pub const DEVICE_CFG_MAX_LEN: usize = 0x1000;
/// Offset of the notification region.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// `notify_off_multiplier`: bytes between two queues' notification addresses.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// Offset of the MSI-X table.
pub const MSIX_TABLE_OFFSET: u64 = 0x8000;
/// Offset of the MSI-X pending bit array.
pub const MSIX_PBA_OFFSET: u64 = 0x9000;
