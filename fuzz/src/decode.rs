//! Building harness cases from libFuzzer bytes.
//!
//! Values that must land inside the (small) guest memory to get anywhere are drawn mostly
//! from small ranges and sometimes raw, so the fuzzer reaches both the accepting paths and
//! the overflow / out-of-range ones.

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use pci_transport::VirtioPciParams;
use virtqueue_core::{Descriptor, RingLayout};

use crate::blk::BlkCase;
use crate::pci::{ConfigSpaceCase, FunctionCase, PciOp};
use crate::virtqueue::{QueueCase, QueueOp};

/// Most guest memory a case uses.
const MAX_MEMORY: usize = 0x4000;
/// Most operations a case runs.
const MAX_OPS: usize = 64;

/// An address: usually inside `len` bytes of memory (or just past it), sometimes anything.
fn addr(u: &mut Unstructured<'_>, len: usize) -> Result<u64> {
    Ok(match u.int_in_range(0u8..=15)? {
        0 => u.arbitrary()?,
        1 => u64::MAX - u64::from(u.arbitrary::<u8>()?),
        _ => u.int_in_range(0..=len as u64 + 32)?,
    })
}

/// A length: usually small or a multiple of 512, sometimes anything.
fn length(u: &mut Unstructured<'_>) -> Result<u32> {
    Ok(match u.int_in_range(0u8..=7)? {
        0 => u.arbitrary()?,
        1 | 2 => 512 * u32::from(u.int_in_range(0u8..=8)?),
        _ => u32::from(u.int_in_range(0u8..=64)?),
    })
}

/// Guest memory of a length drawn from `u`, filled with the next bytes of `u` (zero-padded).
fn memory(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let len = u.int_in_range(0..=MAX_MEMORY)?;
    let mut mem = vec![0u8; len];
    let bytes = u.bytes(len.min(u.len()))?;
    mem[..bytes.len()].copy_from_slice(bytes);
    Ok(mem)
}

fn ops<T>(
    u: &mut Unstructured<'_>,
    mut op: impl FnMut(&mut Unstructured<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    while !u.is_empty() && out.len() < MAX_OPS {
        out.push(op(u)?);
    }
    Ok(out)
}

/// A [`QueueCase`]: queue set-up, then memory, then operations.
pub fn queue_case(u: &mut Unstructured<'_>) -> Result<QueueCase> {
    let shape = u.int_in_range(0u8..=7)?;
    let size = match shape {
        0 => u.arbitrary()?,
        _ => 1u16 << u.int_in_range(0u8..=8)?,
    };
    let max_size = if u.ratio(1, 8)? { u.arbitrary()? } else { size };
    let event_idx = u.arbitrary()?;
    let ready = !u.ratio(1, 16)?;
    let next_avail = if u.ratio(1, 8)? {
        Some(u.arbitrary()?)
    } else {
        None
    };
    let next_used = if u.ratio(1, 8)? {
        Some(u.arbitrary()?)
    } else {
        None
    };
    let base = u64::from(u.arbitrary::<u16>()? & 0x3ff0);
    let raw: [u64; 3] = [u.arbitrary()?, u.arbitrary()?, u.arbitrary()?];
    let memory = memory(u)?;
    let (desc_table, avail_ring, used_ring) = match RingLayout::new(size) {
        Some(layout) if shape >= 2 => {
            let a = layout.addresses(base);
            (a.desc_table, a.avail_ring, a.used_ring)
        }
        _ => (raw[0] % 0x8000, raw[1] % 0x8000, raw[2] % 0x8000),
    };
    let len = memory.len();
    let ops = ops(u, |u| {
        Ok(match u.int_in_range(0u8..=15)? {
            0..=4 => QueueOp::Pop,
            5 | 6 => QueueOp::CompleteLast { len: length(u)? },
            7 => QueueOp::AddUsed {
                head: u.arbitrary()?,
                len: u.arbitrary()?,
            },
            8 | 9 => QueueOp::NeedsNotification,
            10 => QueueOp::SetNotification(u.arbitrary()?),
            11 => QueueOp::EnableNotification,
            12 | 13 => QueueOp::GuestWrite {
                addr: addr(u, len)?,
                value: u.arbitrary()?,
            },
            _ => QueueOp::ReadChain {
                desc_table: addr(u, len)?,
                queue_size: u.arbitrary()?,
                head: u.arbitrary()?,
            },
        })
    })?;
    Ok(QueueCase {
        memory,
        max_size,
        size,
        desc_table,
        avail_ring,
        used_ring,
        event_idx,
        ready,
        next_avail,
        next_used,
        ops,
    })
}

/// A [`BlkCase`]: limits, descriptors, a request header, then memory. The header (type
/// mostly one of the six defined, sector mostly small) is planted at the first descriptor's
/// address, so most cases get past the header and into the per-type rules.
pub fn blk_case(u: &mut Unstructured<'_>) -> Result<BlkCase> {
    let mut limits = blk_proto::DeviceLimits::new(match u.int_in_range(0u8..=3)? {
        0 => u.arbitrary()?,
        _ => u64::from(u.arbitrary::<u16>()?),
    });
    limits.read_only = u.ratio(1, 4)?;
    limits.flush = u.arbitrary()?;
    limits.discard = u.arbitrary()?;
    limits.write_zeroes = u.arbitrary()?;
    if u.ratio(1, 4)? {
        limits.seg_max = u.int_in_range(0..=300)?;
        limits.max_discard_sectors = u.arbitrary()?;
        limits.max_discard_seg = u.int_in_range(0..=20)?;
        limits.max_write_zeroes_sectors = u.arbitrary()?;
        limits.max_write_zeroes_seg = u.int_in_range(0..=20)?;
    }
    let mem_len = u.int_in_range(0usize..=0x2000)?;
    let count = u.int_in_range(0usize..=12)?;
    let mut descs = Vec::with_capacity(count);
    for _ in 0..count {
        descs.push(Descriptor {
            addr: addr(u, mem_len)?,
            len: length(u)?,
            flags: u.arbitrary::<u16>()? & 0x7,
            next: 0,
        });
    }
    let header = if u.ratio(3, 4)? {
        let types = [0u32, 1, 4, 8, 11, 13];
        let t = match u.int_in_range(0..=types.len())? {
            i if i < types.len() => types[i],
            _ => u.arbitrary()?,
        };
        let sector = if u.ratio(1, 4)? {
            u.arbitrary()?
        } else {
            u64::from(u.arbitrary::<u8>()?)
        };
        Some(blk_proto::OutHdr::new(blk_proto::RequestType::from_raw(t), sector).to_bytes())
    } else {
        None
    };
    let mut memory = vec![0u8; mem_len];
    let bytes = u.bytes(mem_len.min(u.len()))?;
    memory[..bytes.len()].copy_from_slice(bytes);
    if let (Some(hdr), Some(first)) = (header, descs.first()) {
        let at = usize::try_from(first.addr).unwrap_or(usize::MAX);
        if let Some(dst) = memory.get_mut(at..at.saturating_add(hdr.len())) {
            dst.copy_from_slice(&hdr);
        }
    }
    Ok(BlkCase {
        memory,
        descs,
        limits,
    })
}

fn data(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let len = match u.int_in_range(0u8..=15)? {
        0 => u.int_in_range(0..=9)?,
        1..=5 => 1,
        6..=10 => 2,
        _ => 4,
    };
    Ok(u.bytes(len.min(u.len()))?.to_vec())
}

/// A configuration-space or BAR0 offset: usually a register, sometimes anything.
fn pci_op(u: &mut Unstructured<'_>) -> Result<PciOp> {
    let width = |u: &mut Unstructured<'_>| -> Result<u8> {
        Ok(match u.int_in_range(0u8..=7)? {
            0 => u.int_in_range(0..=9)?,
            1 | 2 => 1,
            3 | 4 => 2,
            5 | 6 => 4,
            _ => 8,
        })
    };
    let bar_offset = |u: &mut Unstructured<'_>| -> Result<u64> {
        Ok(match u.int_in_range(0u8..=7)? {
            0 => u.arbitrary()?,
            1 => 0x1000,
            2 => 0x2000 + u64::from(u.int_in_range(0u8..=63)?),
            3 => 0x3000 + u64::from(u.int_in_range(0u8..=255)?),
            4 | 5 => 0x8000 + u64::from(u.int_in_range(0u16..=0x4ff)?),
            6 => 0x9000 + u64::from(u.int_in_range(0u8..=15)?),
            _ => u64::from(u.int_in_range(0u8..=0x3f)?),
        })
    };
    Ok(match u.int_in_range(0u8..=15)? {
        0 | 1 => PciOp::ConfigRead {
            offset: config_offset(u)?,
            len: width(u)?,
        },
        2..=5 => PciOp::ConfigWrite {
            offset: config_offset(u)?,
            data: data(u)?,
        },
        6 | 7 => PciOp::BarRead {
            bar: bar_index(u)?,
            offset: bar_offset(u)?,
            len: width(u)?,
        },
        8..=11 => PciOp::BarWrite {
            bar: bar_index(u)?,
            offset: bar_offset(u)?,
            data: data(u)?,
        },
        12 => PciOp::SignalMsix(u.int_in_range(0..=70)?),
        13 => PciOp::SignalQueue(u.int_in_range(0..=70)?),
        14 => match u.int_in_range(0u8..=3)? {
            0 => PciOp::SignalConfig,
            1 => PciOp::SetNeedsReset,
            2 => PciOp::SetIsr(u.arbitrary()?),
            _ => PciOp::SetDeviceConfig(data(u)?),
        },
        _ => PciOp::ConfigWrite {
            offset: 0x04,
            data: vec![0x06, 0x00],
        },
    })
}

fn config_offset(u: &mut Unstructured<'_>) -> Result<u16> {
    Ok(match u.int_in_range(0u8..=7)? {
        0 => u.arbitrary()?,
        _ => u16::from(u.arbitrary::<u8>()?),
    })
}

fn bar_index(u: &mut Unstructured<'_>) -> Result<u8> {
    Ok(if u.ratio(1, 16)? { u.arbitrary()? } else { 0 })
}

/// A [`FunctionCase`]: parameters (mostly valid), device configuration, operations.
pub fn function_case(u: &mut Unstructured<'_>) -> Result<FunctionCase> {
    let mut params = VirtioPciParams::new(
        2,
        u.int_in_range(0..=4)?,
        1 << u.int_in_range(0u8..=15)?,
        u.int_in_range(1..=8)?,
        u.arbitrary::<u64>()? | pci_transport::virtio_pci::features::VIRTIO_F_VERSION_1,
        u64::from(u.arbitrary::<u16>()?) << 16,
    );
    if u.ratio(1, 16)? {
        params.num_queues = u.arbitrary()?;
        params.max_queue_size = u.arbitrary()?;
        params.msix_vectors = u.arbitrary()?;
        params.bar0_address = u.arbitrary()?;
    }
    let config_len = u.int_in_range(0usize..=64)?;
    let device_config = u.bytes(config_len.min(u.len()))?.to_vec();
    let mut ops = Vec::new();
    while !u.is_empty() && ops.len() < MAX_OPS {
        if u.ratio(1, 12)? {
            ops.extend(init_sequence(u)?);
        } else {
            ops.push(pci_op(u)?);
        }
    }
    Ok(FunctionCase {
        params,
        device_config,
        ops,
    })
}

/// A driver initialisation (3.1.1) up to DRIVER_OK and MSI-X enabled, steps chosen by a mask.
fn init_sequence(u: &mut Unstructured<'_>) -> Result<Vec<PciOp>> {
    use pci_transport::virtio_pci::common_cfg::offset;
    use pci_transport::virtio_pci::device_status as s;
    let write = |offset: u64, value: u64, len: usize| PciOp::BarWrite {
        bar: 0,
        offset,
        data: value.to_le_bytes()[..len].to_vec(),
    };
    let keep: u16 = u.arbitrary()?;
    let queue = u64::from(u.int_in_range(0u8..=3)?);
    let vector = u64::from(u.int_in_range(0u8..=3)?);
    let features = u64::from(u.arbitrary::<u8>()? | 1);
    let status = |bits: u8| write(offset::DEVICE_STATUS, u64::from(bits), 1);
    let steps = [
        PciOp::ConfigWrite {
            offset: 0x04,
            data: vec![0x06, 0x00],
        },
        status(s::ACKNOWLEDGE | s::DRIVER),
        write(offset::DRIVER_FEATURE_SELECT, 1, 4),
        write(offset::DRIVER_FEATURE, features, 4),
        status(s::ACKNOWLEDGE | s::DRIVER | s::FEATURES_OK),
        write(offset::QUEUE_SELECT, queue, 2),
        write(offset::QUEUE_MSIX_VECTOR, vector, 2),
        write(offset::QUEUE_ENABLE, 1, 2),
        status(s::ACKNOWLEDGE | s::DRIVER | s::FEATURES_OK | s::DRIVER_OK),
        write(0x8000 + 16 * vector + 12, 0, 4),
        PciOp::ConfigWrite {
            offset: 0x8a,
            data: vec![0x00, 0x80],
        },
        PciOp::ConfigWrite {
            offset: 0x9a,
            data: vec![0x00, 0x80],
        },
        write(0x3000 + 4 * queue, queue, 2),
    ];
    Ok(steps
        .into_iter()
        .enumerate()
        .filter(|(i, _)| keep & (1 << i) == 0)
        .map(|(_, op)| op)
        .collect())
}

/// A [`ConfigSpaceCase`]: IDs, BARs, capabilities with masks, then accesses.
pub fn config_space_case(u: &mut Unstructured<'_>) -> Result<ConfigSpaceCase> {
    let ids = (u.arbitrary()?, u.arbitrary()?);
    let mut bars = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        let log2 = u.int_in_range(0u8..=40)?;
        let raw: u64 = u.arbitrary()?;
        let address = if u.ratio(1, 4)? {
            raw
        } else {
            raw & !((1u64 << log2.min(63)) - 1) & 0xffff_ffff
        };
        bars.push((
            u.int_in_range(0..=6)?,
            log2,
            u.arbitrary()?,
            u.arbitrary()?,
            address,
        ));
    }
    let mut caps = Vec::new();
    for _ in 0..u.int_in_range(0..=4)? {
        let len = u.int_in_range(0usize..=24)?;
        let bytes = u.bytes(len.min(u.len()))?.to_vec();
        let mask_len = u.int_in_range(0usize..=len)?;
        let mask = u.bytes(mask_len.min(u.len()))?.to_vec();
        let clear_len = u.int_in_range(0usize..=len)?;
        let clear = u.bytes(clear_len.min(u.len()))?.to_vec();
        caps.push((bytes, mask, clear));
    }
    let ops = ops(u, |u| {
        Ok(if u.arbitrary()? {
            PciOp::ConfigRead {
                offset: config_offset(u)?,
                len: u.int_in_range(0..=8)?,
            }
        } else {
            PciOp::ConfigWrite {
                offset: config_offset(u)?,
                data: data(u)?,
            }
        })
    })?;
    Ok(ConfigSpaceCase {
        ids,
        bars,
        caps,
        ops,
    })
}
