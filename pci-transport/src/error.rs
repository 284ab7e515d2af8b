//! The crate's error type: failures the *owner* can cause while building a function.
//!
//! Guest-driven accesses never fail with an error: the PCI and virtio rules say what a device does
//! with a bad access (ignore the write, read all-ones or zero), and this crate does exactly that.

use core::fmt;

/// A mistake in how the owner (the VMM) set up a PCI function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A BAR index was not in `0..=5`, or a 64-bit BAR started at index 5.
    InvalidBarIndex(u8),
    /// The BAR slot (or one half of a 64-bit pair) is already used.
    BarInUse(u8),
    /// A BAR size was not a power of two, too small (< 16 bytes) or too large for its kind.
    InvalidBarSize(u64),
    /// A pre-assigned BAR address was not aligned to the BAR size or did not fit the BAR kind.
    InvalidBarAddress(u64),
    /// There is no room left in the 256-byte configuration space for another capability.
    CapabilitySpaceExhausted,
    /// A capability was shorter than its two header bytes (ID and next pointer).
    CapabilityTooShort,
    /// An owner access to configuration space fell outside the 256-byte header region.
    ConfigOffsetOutOfRange(u16),
    /// More virtqueues were requested than this crate stores.
    TooManyQueues {
        /// What the owner asked for.
        requested: u16,
        /// The most this crate supports ([`crate::MAX_QUEUES`]).
        max: u16,
    },
    /// A maximum queue size was zero, not a power of two, or above 32768.
    InvalidQueueSize(u16),
    /// An MSI-X table size was zero or larger than this crate stores.
    InvalidMsixTableSize {
        /// What the owner asked for.
        requested: u16,
        /// The most this crate supports ([`crate::MAX_MSIX_VECTORS`]).
        max: u16,
    },
    /// Device-specific configuration was larger than the region reserved for it.
    DeviceConfigTooLarge {
        /// Length the owner passed.
        len: usize,
        /// The capacity of the device-specific configuration region.
        max: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidBarIndex(i) => write!(
                f,
                "BAR index {i} is not usable (0..=5, 64-bit BARs need two slots)"
            ),
            Self::BarInUse(i) => write!(f, "BAR slot {i} is already in use"),
            Self::InvalidBarSize(s) => write!(
                f,
                "BAR size {s:#x} is not a power of two in the allowed range"
            ),
            Self::InvalidBarAddress(a) => write!(
                f,
                "BAR address {a:#x} is not aligned to the BAR size or does not fit"
            ),
            Self::CapabilitySpaceExhausted => write!(
                f,
                "no room left in configuration space for another capability"
            ),
            Self::CapabilityTooShort => write!(
                f,
                "a capability needs at least its ID and next-pointer bytes"
            ),
            Self::ConfigOffsetOutOfRange(o) => {
                write!(f, "configuration space offset {o:#x} is out of range")
            }
            Self::TooManyQueues { requested, max } => write!(
                f,
                "{requested} virtqueues requested, at most {max} supported"
            ),
            Self::InvalidQueueSize(s) => {
                write!(f, "queue size {s} is not a power of two in 1..=32768")
            }
            Self::InvalidMsixTableSize { requested, max } => {
                write!(f, "MSI-X table size {requested} is not in 1..={max}")
            }
            Self::DeviceConfigTooLarge { len, max } => {
                write!(
                    f,
                    "device-specific configuration of {len} bytes exceeds the {max}-byte region"
                )
            }
        }
    }
}

impl core::error::Error for Error {}
