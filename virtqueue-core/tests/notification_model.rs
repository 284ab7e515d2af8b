//! Kick and interrupt suppression (VIRTIO 1.x, 2.7.7 and 2.7.10) against a model of the spec:
//! with `VIRTIO_F_EVENT_IDX` the other side is notified iff the index range moved since the
//! last decision contains the event index; without it iff something moved and the flag is
//! clear.

use proptest::prelude::*;
use virtqueue_core::event::vring_need_event;
use virtqueue_core::{DriverQueue, Queue, RingLayout, SliceMemory};

const SIZE: u16 = 16;
const BASE: u64 = 0x1000;

/// The spec's wording, checked by enumeration: did the index pass through `event`?
fn crossed(event: u16, new: u16, old: u16) -> bool {
    (0..new.wrapping_sub(old)).any(|k| old.wrapping_add(k) == event)
}

fn setup(mem: &SliceMemory<'_>, event_idx: bool) -> (DriverQueue, Queue) {
    let addrs = RingLayout::new(SIZE).unwrap().addresses(BASE);
    let driver = DriverQueue::new(mem, SIZE, addrs, event_idx).unwrap();
    let mut q = Queue::new(SIZE);
    q.set_desc_table_address(addrs.desc_table);
    q.set_avail_ring_address(addrs.avail_ring);
    q.set_used_ring_address(addrs.used_ring);
    q.set_event_idx(event_idx);
    q.set_ready(true);
    (driver, q)
}

proptest! {
    #[test]
    fn need_event_matches_enumeration(event: u16, old: u16, delta in 0u16..2000) {
        let new = old.wrapping_add(delta);
        prop_assert_eq!(vring_need_event(event, new, old), crossed(event, new, old));
    }
}

#[derive(Debug, Clone)]
enum IrqOp {
    /// Driver publishes a chain.
    Add,
    /// Device completes up to n popped chains in one published batch.
    Complete(u8),
    /// Device decides whether to interrupt.
    Decide,
    DisableInterrupts,
    EnableInterrupts,
    /// Driver sets used_event = last_used + k.
    UsedEvent(u8),
    PopUsed,
}

fn irq_op() -> impl Strategy<Value = IrqOp> {
    prop_oneof![
        3 => Just(IrqOp::Add),
        3 => (1u8..5).prop_map(IrqOp::Complete),
        3 => Just(IrqOp::Decide),
        1 => Just(IrqOp::DisableInterrupts),
        1 => Just(IrqOp::EnableInterrupts),
        1 => (0u8..8).prop_map(IrqOp::UsedEvent),
        2 => Just(IrqOp::PopUsed),
    ]
}

#[derive(Debug, Clone)]
enum KickOp {
    Add,
    Pop,
    Suppress(bool),
    EnableAndRecheck,
    ShouldKick,
    Complete,
}

fn kick_op() -> impl Strategy<Value = KickOp> {
    prop_oneof![
        3 => Just(KickOp::Add),
        2 => Just(KickOp::Pop),
        1 => any::<bool>().prop_map(KickOp::Suppress),
        1 => Just(KickOp::EnableAndRecheck),
        3 => Just(KickOp::ShouldKick),
        2 => Just(KickOp::Complete),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn interrupt_decisions_match_the_model(
        event_idx: bool,
        ops in prop::collection::vec(irq_op(), 1..150),
    ) {
        let mut bytes = vec![0u8; 0x4000];
        let mem = SliceMemory::new(&mut bytes);
        let (mut d, mut q) = setup(&mem, event_idx);
        // Model state: what the driver wrote and what the device last decided on.
        let (mut used_event, mut no_interrupt, mut signalled) = (0u16, false, 0u16);
        let mut popped = Vec::new();
        for op in ops {
            match op {
                IrqOp::Add => {
                    if d.num_free() > 0 {
                        d.add(&mem, &[(0x3000, 8)], &[]).unwrap();
                        popped.push(q.pop(&mem).unwrap().unwrap().head_index());
                    }
                }
                IrqOp::Complete(n) => {
                    for _ in 0..n.min(popped.len() as u8) {
                        let head = popped.remove(0);
                        q.push_used(&mem, head, 0).unwrap();
                    }
                    q.publish_used(&mem).unwrap();
                }
                IrqOp::Decide => {
                    let new = q.next_used();
                    let expected = if event_idx {
                        crossed(used_event, new, signalled)
                    } else {
                        new != signalled && !no_interrupt
                    };
                    prop_assert_eq!(q.needs_notification(&mem).unwrap(), expected);
                    signalled = new;
                }
                IrqOp::DisableInterrupts => {
                    d.disable_interrupts(&mem).unwrap();
                    no_interrupt = true;
                }
                IrqOp::EnableInterrupts => {
                    let pending = d.enable_interrupts(&mem).unwrap();
                    prop_assert_eq!(pending, q.next_used() != d.last_used());
                    no_interrupt = false;
                    if event_idx {
                        used_event = d.last_used();
                    }
                }
                IrqOp::UsedEvent(k) => {
                    used_event = d.last_used().wrapping_add(u16::from(k));
                    d.set_used_event(&mem, used_event).unwrap();
                }
                IrqOp::PopUsed => {
                    let _ = d.pop_used(&mem).unwrap();
                }
            }
        }
    }

    #[test]
    fn kick_decisions_match_the_model(
        event_idx: bool,
        ops in prop::collection::vec(kick_op(), 1..150),
    ) {
        let mut bytes = vec![0u8; 0x4000];
        let mem = SliceMemory::new(&mut bytes);
        let (mut d, mut q) = setup(&mem, event_idx);
        // Model state: what the device wrote and what the driver last decided on.
        let (mut avail_event, mut no_notify, mut kicked) = (0u16, false, 0u16);
        let mut popped = Vec::new();
        for op in ops {
            match op {
                KickOp::Add => {
                    if d.num_free() > 0 {
                        d.add(&mem, &[(0x3000, 8)], &[]).unwrap();
                    }
                }
                KickOp::Pop => {
                    if let Some(chain) = q.pop(&mem).unwrap() {
                        popped.push(chain.head_index());
                    }
                }
                KickOp::Suppress(enable) => {
                    q.set_notification(&mem, enable).unwrap();
                    if event_idx && enable {
                        avail_event = q.next_avail();
                    }
                    if !event_idx {
                        no_notify = !enable;
                    }
                }
                KickOp::EnableAndRecheck => {
                    let more = q.enable_notification(&mem).unwrap();
                    prop_assert_eq!(more, d.avail_idx() != q.next_avail());
                    if event_idx {
                        avail_event = q.next_avail();
                    } else {
                        no_notify = false;
                    }
                }
                KickOp::ShouldKick => {
                    let new = d.avail_idx();
                    let expected = if event_idx {
                        crossed(avail_event, new, kicked)
                    } else {
                        new != kicked && !no_notify
                    };
                    prop_assert_eq!(d.should_kick(&mem), expected);
                    kicked = new;
                }
                KickOp::Complete => {
                    if let Some(head) = popped.pop() {
                        q.add_used(&mem, head, 0).unwrap();
                        d.pop_used(&mem).unwrap().unwrap();
                    }
                }
            }
        }
    }
}
