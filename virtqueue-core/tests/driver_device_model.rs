//! Random driver operations against device pops, checked against a model of the queue:
//! every published chain is popped exactly once, in order, with the same buffers (direct and
//! indirect), and the driver sees exactly the completions the device added, in any order.

use std::collections::VecDeque;

use proptest::prelude::*;
use virtqueue_core::{DriverError, DriverQueue, GuestMemory, Queue, RingLayout, SliceMemory};

const MEM_SIZE: usize = 0x20000;
const RINGS: u64 = 0x1000;
const TABLES: u64 = 0x8000;
const TABLE_BYTES: u64 = 128; // 8 indirect entries
const BUFFERS: u64 = 0x10000;

type Buffers = Vec<(u64, u32)>;

#[derive(Debug, Clone)]
enum Op {
    Add {
        indirect: bool,
        readable: Buffers,
        writable: Buffers,
    },
    Pop,
    Complete {
        pick: usize,
        len: u32,
    },
    PopUsed,
}

fn buffers(max: usize) -> impl Strategy<Value = Buffers> {
    prop::collection::vec((BUFFERS..BUFFERS + 0x8000, 0u32..0x8000), 0..=max)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<bool>(), buffers(4), buffers(4))
            .prop_map(|(indirect, readable, writable)| Op::Add { indirect, readable, writable }),
        3 => Just(Op::Pop),
        2 => (any::<usize>(), any::<u32>()).prop_map(|(pick, len)| Op::Complete { pick, len }),
        2 => Just(Op::PopUsed),
    ]
}

/// What the model knows about a chain in flight.
#[derive(Debug, Clone, PartialEq)]
struct Chain {
    head: u16,
    readable: Buffers,
    writable: Buffers,
}

struct Harness<'m> {
    mem: SliceMemory<'m>,
    driver: DriverQueue,
    device: Queue,
    /// Published, not yet popped, in publication order.
    published: VecDeque<Chain>,
    /// Popped by the device, not yet completed.
    in_device: Vec<u16>,
    /// Completed by the device, not yet seen by the driver.
    used: VecDeque<(u16, u32)>,
    /// Descriptors each in-flight head holds, and its indirect table slot.
    held: Vec<(u16, u16, Option<usize>)>,
    free_tables: Vec<usize>,
}

impl<'m> Harness<'m> {
    fn new(bytes: &'m mut [u8], size: u16) -> Self {
        let mem = SliceMemory::new(bytes);
        let addrs = RingLayout::new(size).unwrap().addresses(RINGS);
        let driver = DriverQueue::new(&mem, size, addrs, false).unwrap();
        let mut device = Queue::new(size);
        device.set_desc_table_address(addrs.desc_table);
        device.set_avail_ring_address(addrs.avail_ring);
        device.set_used_ring_address(addrs.used_ring);
        device.set_ready(true);
        assert!(device.is_valid(&mem));
        let free_tables = (0..usize::from(size)).collect();
        Harness {
            mem,
            driver,
            device,
            published: VecDeque::new(),
            in_device: Vec::new(),
            used: VecDeque::new(),
            held: Vec::new(),
            free_tables,
        }
    }

    fn model_free(&self) -> u16 {
        self.driver.size() - self.held.iter().map(|h| h.1).sum::<u16>()
    }

    fn add(&mut self, indirect: bool, readable: Buffers, writable: Buffers) {
        let n = readable.len() + writable.len();
        let size = usize::from(self.driver.size());
        let needed = if indirect { 1 } else { n };
        let table = indirect.then(|| self.free_tables.last().copied()).flatten();
        let result = match table {
            Some(slot) => {
                let addr = TABLES + slot as u64 * TABLE_BYTES;
                self.driver
                    .add_indirect(&self.mem, addr, &readable, &writable)
            }
            None if indirect => return, // no table slot: skip
            None => self.driver.add(&self.mem, &readable, &writable),
        };
        let expected_err = if n == 0 {
            Some(DriverError::EmptyChain)
        } else if n > size {
            Some(DriverError::ChainTooLong(n))
        } else if needed > usize::from(self.model_free()) {
            Some(DriverError::NoFreeDescriptors {
                needed,
                available: usize::from(self.model_free()),
            })
        } else {
            None
        };
        match (result, expected_err) {
            (Err(e), Some(expected)) => assert_eq!(e, expected),
            (Ok(head), None) => {
                assert!(head < self.driver.size());
                assert!(
                    self.held.iter().all(|h| h.0 != head),
                    "head {head} reused in flight"
                );
                if table.is_some() {
                    self.free_tables.pop();
                }
                self.held.push((head, needed as u16, table));
                self.published.push_back(Chain {
                    head,
                    readable,
                    writable,
                });
            }
            (r, e) => panic!("driver returned {r:?}, model expected {e:?}"),
        }
        assert_eq!(self.driver.num_free(), self.model_free());
    }

    fn pop(&mut self) {
        let chain = self.device.pop(&self.mem).unwrap();
        let Some(expected) = self.published.pop_front() else {
            assert!(chain.is_none());
            return;
        };
        let chain = chain.expect("published chain not popped");
        let parts = |it: &mut dyn Iterator<Item = virtqueue_core::Descriptor>| -> Buffers {
            it.map(|d| (d.addr, d.len)).collect()
        };
        let got = Chain {
            head: chain.head_index(),
            readable: parts(&mut chain.readable()),
            writable: parts(&mut chain.writable()),
        };
        assert_eq!(got, expected);
        assert!(chain.writable().all(|d| d.is_device_writable()));
        assert!(chain.readable().all(|d| !d.is_device_writable()));
        self.in_device.push(got.head);
    }

    fn complete(&mut self, pick: usize, len: u32) {
        if self.in_device.is_empty() {
            return;
        }
        let head = self.in_device.swap_remove(pick % self.in_device.len());
        self.device.add_used(&self.mem, head, len).unwrap();
        self.used.push_back((head, len));
    }

    fn pop_used(&mut self) {
        let got = self.driver.pop_used(&self.mem).unwrap();
        assert_eq!(got, self.used.pop_front());
        if let Some((head, _)) = got {
            let i = self.held.iter().position(|h| h.0 == head).unwrap();
            let (_, _, table) = self.held.swap_remove(i);
            self.free_tables.extend(table);
        }
        assert_eq!(self.driver.num_free(), self.model_free());
    }

    /// Pops, completes and collects everything still in flight.
    fn drain(&mut self) {
        while !self.published.is_empty() {
            self.pop();
        }
        assert_eq!(self.device.pop(&self.mem), Ok(None));
        while !self.in_device.is_empty() {
            self.complete(0, 7);
        }
        while !self.used.is_empty() {
            self.pop_used();
        }
        assert_eq!(self.driver.pop_used(&self.mem), Ok(None));
        assert_eq!(self.driver.num_free(), self.driver.size());
        assert!(self.mem.check_range(0, MEM_SIZE as u64));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn driver_and_device_agree_with_the_model(
        size in prop::sample::select(vec![1u16, 2, 4, 8, 16, 256]),
        ops in prop::collection::vec(op(), 1..200),
    ) {
        let mut bytes = vec![0u8; MEM_SIZE];
        let mut h = Harness::new(&mut bytes, size);
        for op in ops {
            match op {
                Op::Add { indirect, readable, writable } => h.add(indirect, readable, writable),
                Op::Pop => h.pop(),
                Op::Complete { pick, len } => h.complete(pick, len),
                Op::PopUsed => h.pop_used(),
            }
        }
        h.drain();
    }
}

/// The free-running indices wrap around u16 without losing chains.
#[test]
fn indices_wrap_around() {
    let mut bytes = vec![0u8; MEM_SIZE];
    let mut h = Harness::new(&mut bytes, 4);
    for i in 0..70_000u32 {
        h.add(
            i % 3 == 0,
            vec![(BUFFERS, i % 100)],
            vec![(BUFFERS + 0x100, 1)],
        );
        h.pop();
        h.complete(0, i);
        h.pop_used();
    }
    assert_eq!(h.device.next_avail(), (70_000u32 % 65_536) as u16);
    h.drain();
}
