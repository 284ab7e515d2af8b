//! The back end as a front end drives it: the `vhost` crate's `Frontend` (or hand-written
//! bytes, for the malformed cases) against the real binary, with guest memory in a memfd and
//! the rings driven by virtqueue-core's driver side.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtqueue_core::{DriverQueue, GuestMemory, RingAddresses};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const DISK_BYTES: u64 = 1 << 20;
const QSIZE: u16 = 16;
/// The front end's (made-up) virtual address of guest physical 0.
const USER_BASE: u64 = 0x7f00_0000_0000;

/// The back end's process, ended when dropped.
struct Server {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(queues: u16) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        let data: Vec<u8> = (0..DISK_BYTES).map(|i| (i / 512) as u8).collect();
        std::fs::write(&img, data).unwrap();
        let socket = dir.path().join("vu.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_vhost-user-blk"))
            .arg("--socket")
            .arg(&socket)
            .arg("--disk")
            .arg(format!(
                "path={},queues={queues},serial=proto",
                img.display()
            ))
            .arg("--metrics")
            .arg(dir.path().join("metrics.json"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "no socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        Server {
            child,
            socket,
            _dir: dir,
        }
    }

    fn image(&self) -> PathBuf {
        self.socket.with_file_name("disk.img")
    }

    /// SIGTERM; whether it exited 0, and the counters it wrote (read before the temporary
    /// directory goes with `self`).
    fn terminate(mut self) -> (bool, String) {
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        };
        let metrics = std::fs::read_to_string(self.socket.with_file_name("metrics.json"));
        (status.success(), metrics.unwrap_or_default())
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Guest memory: one memfd, mapped by the test as the regions say and sent to the back end.
struct Memory {
    file: File,
    regions: Vec<(u64, u64, u64)>,
    mem: GuestMemoryMmap,
}

impl Memory {
    /// `regions`: `(guest address, size, offset in the memfd)`.
    fn new(regions: &[(u64, u64, u64)]) -> Memory {
        Memory::memfd(regions, libc::MFD_ALLOW_SEALING)
    }

    /// With `flags` for memfd_create (without MFD_ALLOW_SEALING, nobody can seal it).
    fn memfd(regions: &[(u64, u64, u64)], flags: libc::c_uint) -> Memory {
        // SAFETY: a NUL-terminated name and valid flags.
        let fd = unsafe { libc::memfd_create(c"guest".as_ptr(), flags) };
        assert!(fd >= 0);
        // SAFETY: memfd_create returned a new descriptor nobody else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        let end = regions.iter().map(|r| r.2 + r.1).max().unwrap();
        file.set_len(end).unwrap();
        let ranges: Vec<_> = regions
            .iter()
            .map(|&(gpa, size, off)| {
                let f = FileOffset::new(file.try_clone().unwrap(), off);
                (GuestAddress(gpa), size as usize, Some(f))
            })
            .collect();
        let mem = GuestMemoryMmap::from_ranges_with_files(&ranges).unwrap();
        Memory {
            file,
            regions: regions.to_vec(),
            mem,
        }
    }

    fn table(&self) -> Vec<VhostUserMemoryRegionInfo> {
        self.regions
            .iter()
            .map(|&(gpa, size, off)| VhostUserMemoryRegionInfo {
                guest_phys_addr: gpa,
                memory_size: size,
                userspace_addr: USER_BASE + gpa,
                mmap_offset: off,
                mmap_handle: self.file.as_raw_fd(),
            })
            .collect()
    }
}

/// A connection whose replies time out rather than hang a test when the back end misbehaves.
fn frontend(socket: &Path, queues: u64) -> Frontend {
    let s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    Frontend::from_stream(s, queues)
}

/// A connected, negotiated front end.
fn connect(socket: &Path, queues: u64) -> Frontend {
    let mut fe = frontend(socket, queues);
    fe.set_owner().unwrap();
    let features = fe.get_features().unwrap();
    // VERSION_1 and VHOST_USER_F_PROTOCOL_FEATURES are offered.
    assert_ne!(features & (1 << 32), 0);
    assert_ne!(features & (1 << 30), 0);
    fe.set_features(features).unwrap();
    let pf = fe.get_protocol_features().unwrap();
    assert!(pf.contains(VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG));
    fe.set_protocol_features(pf).unwrap();
    fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    assert_eq!(fe.get_queue_num().unwrap(), queues);
    fe
}

/// A ring of queue `q` at guest address `base`, with its eventfds, set up and enabled.
struct Ring {
    driver: DriverQueue,
    call: EventFd,
    kick: EventFd,
}

fn ring_addrs(base: u64) -> RingAddresses {
    RingAddresses {
        desc_table: base,
        avail_ring: base + 0x400,
        used_ring: base + 0x800,
    }
}

fn start_ring(fe: &mut Frontend, mem: &Memory, q: usize, base: u64) -> Result<Ring, vhost::Error> {
    let addrs = ring_addrs(base);
    let driver = DriverQueue::new(&mem.mem, QSIZE, addrs, true).unwrap();
    let call = EventFd::new(EFD_NONBLOCK).unwrap();
    fe.set_vring_call(q, &call)?;
    let kick = start_raw_ring(
        fe,
        q,
        USER_BASE + addrs.desc_table,
        USER_BASE + addrs.avail_ring,
        USER_BASE + addrs.used_ring,
    )?;
    Ok(Ring { driver, call, kick })
}

/// `(guest address, length)` of each buffer of a chain.
type Buffers = Vec<(u64, u32)>;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;

/// One request: header, `len` data bytes at `data`, status; waits for its completion and
/// returns the status byte.
fn request(
    mem: &Memory,
    ring: &mut Ring,
    scratch: u64,
    t: u32,
    sector: u64,
    data: u64,
    len: u32,
) -> u8 {
    let mut hdr = [0u8; 16];
    hdr[..4].copy_from_slice(&t.to_le_bytes());
    hdr[8..].copy_from_slice(&sector.to_le_bytes());
    mem.mem.write(scratch, &hdr).unwrap();
    let status = scratch + 16;
    mem.mem.write(status, &[0xff]).unwrap();
    let (readable, writable): (Buffers, Buffers) = if t == T_OUT {
        (vec![(scratch, 16), (data, len)], vec![(status, 1)])
    } else {
        (vec![(scratch, 16)], vec![(data, len), (status, 1)])
    };
    ring.driver.add(&mem.mem, &readable, &writable).unwrap();
    ring.kick.write(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some((_, _)) = ring.driver.pop_used(&mem.mem).unwrap() {
            break;
        }
        assert!(Instant::now() < deadline, "no completion");
        let _ = ring.call.read();
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut s = [0u8];
    mem.mem.read(status, &mut s).unwrap();
    s[0]
}

/// A write then a read back through queue `ring`, and a read of the image's own pattern.
fn io_roundtrip(mem: &Memory, ring: &mut Ring, sector: u64) {
    let buf = 0x20000;
    let pattern: Vec<u8> = (0..4096u32)
        .map(|i| (i * 7 + sector as u32) as u8)
        .collect();
    mem.mem.write(buf, &pattern).unwrap();
    assert_eq!(request(mem, ring, 0x10000, T_OUT, sector, buf, 4096), 0);
    mem.mem.write(buf, &[0u8; 4096]).unwrap();
    assert_eq!(request(mem, ring, 0x10000, T_IN, sector, buf, 4096), 0);
    let mut back = vec![0u8; 4096];
    mem.mem.read(buf, &mut back).unwrap();
    assert_eq!(back, pattern);
    // Sector 1000 still holds what the image was created with.
    assert_eq!(request(mem, ring, 0x10000, T_IN, 1000, buf, 512), 0);
    mem.mem.read(buf, &mut back[..512]).unwrap();
    assert!(back[..512].iter().all(|&b| b == (1000 % 256) as u8));
}

fn one_region() -> Memory {
    Memory::new(&[(0, 1 << 20, 0)])
}

/// The connection was dropped by the back end: the next request fails.
fn assert_disconnected(fe: &Frontend) {
    assert!(
        fe.get_features().is_err(),
        "the back end kept the connection"
    );
}

#[test]
fn io_on_two_queues_then_stop_restart_and_reconnect() {
    let server = Server::start(2);
    let mem = one_region();
    let mut fe = connect(&server.socket, 2);
    let cfg = fe
        .get_config(
            0,
            60,
            vhost::vhost_user::message::VhostUserConfigFlags::empty(),
            &[0; 60],
        )
        .unwrap()
        .1;
    let capacity = u64::from_le_bytes(cfg[..8].try_into().unwrap());
    assert_eq!(capacity, DISK_BYTES / 512);
    assert_eq!(
        u16::from_le_bytes(cfg[34..36].try_into().unwrap()),
        2,
        "num_queues"
    );
    fe.set_mem_table(&mem.table()).unwrap();
    let mut r0 = start_ring(&mut fe, &mem, 0, 0x1000).unwrap();
    let mut r1 = start_ring(&mut fe, &mem, 1, 0x2000).unwrap();
    io_roundtrip(&mem, &mut r0, 8);
    io_roundtrip(&mem, &mut r1, 16);
    // Stopping reports where the driver's next chain is: three requests went through.
    assert_eq!(fe.get_vring_base(0).unwrap(), 3);
    // A guest reset: new rings elsewhere, from index 0, and they serve.
    let mut r0 = start_ring(&mut fe, &mem, 0, 0x3000).unwrap();
    io_roundtrip(&mem, &mut r0, 24);
    drop(fe);
    // The next front end is served.
    let mut fe = connect(&server.socket, 2);
    fe.set_mem_table(&mem.table()).unwrap();
    let mut r0 = start_ring(&mut fe, &mem, 0, 0x4000).unwrap();
    io_roundtrip(&mem, &mut r0, 32);
    drop(fe);
    let (ok, metrics) = server.terminate();
    assert!(ok, "SIGTERM must exit 0");
    // 3 requests per round trip, 4 round trips.
    assert!(metrics.contains("\"requests\":12,"), "{metrics}");
}

#[test]
fn disconnect_with_a_request_in_flight() {
    let mut server = Server::start(1);
    let mem = one_region();
    let mut fe = connect(&server.socket, 1);
    fe.set_mem_table(&mem.table()).unwrap();
    let mut r = start_ring(&mut fe, &mem, 0, 0x1000).unwrap();
    mem.mem.write(0x10000, &[0u8; 16]).unwrap();
    r.driver
        .add(
            &mem.mem,
            &[(0x10000, 16)],
            &[(0x20000, 65536), (0x10010, 1)],
        )
        .unwrap();
    r.kick.write(1).unwrap();
    drop(fe);
    let mut fe = connect(&server.socket, 1);
    fe.set_mem_table(&mem.table()).unwrap();
    let mut r = start_ring(&mut fe, &mem, 0, 0x2000).unwrap();
    io_roundtrip(&mem, &mut r, 0);
    assert!(server.alive());
    // SIGTERM with the front end connected and its ring running: exit 0. (Whether a request
    // made available just before is served first is a race: only popped requests are in
    // flight, and those are waited for.)
    assert!(server.terminate().0, "SIGTERM must exit 0");
    drop(fe);
}

/// Bytes of a message header: request code, flags (version 1), payload size.
fn header(code: u32, flags: u32, size: u32) -> Vec<u8> {
    [code, flags, size]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

#[test]
fn malformed_messages_end_the_connection_not_the_server() {
    let mut server = Server::start(1);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown request", header(9999, 1, 0)),
        ("wrong version", header(1, 2, 0)),
        (
            "GET_FEATURES with a payload",
            [header(1, 1, 8), vec![0; 8]].concat(),
        ),
        ("oversized payload", header(2, 1, 0x10_0000)),
        (
            "SET_VRING_NUM too short",
            [header(8, 1, 4), vec![0; 4]].concat(),
        ),
        (
            "SET_MEM_TABLE without fds",
            [header(5, 1, 40), vec![1; 40]].concat(),
        ),
    ];
    for (what, bytes) in cases {
        let mut s = UnixStream::connect(&server.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(&bytes).unwrap();
        let mut buf = [0u8; 64];
        // The back end closes the connection without a reply; a timeout means it kept it.
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("{what}: {n} bytes of reply"),
            Err(e) => panic!("{what}: the connection stayed open ({e})"),
        }
        assert!(server.alive(), "{what}: the server died");
    }
    // And serves a well-behaved front end afterwards.
    let mem = one_region();
    let mut fe = connect(&server.socket, 1);
    fe.set_mem_table(&mem.table()).unwrap();
    let mut r = start_ring(&mut fe, &mem, 0, 0x1000).unwrap();
    io_roundtrip(&mem, &mut r, 0);
}

#[test]
fn region_tables_with_overlaps_are_refused_holes_are_served() {
    let mut server = Server::start(1);
    // Overlapping guest ranges.
    let mem = Memory::new(&[(0, 0x10_0000, 0)]);
    let mut overlapping = mem.table();
    overlapping.push(VhostUserMemoryRegionInfo {
        guest_phys_addr: 0x8_0000,
        userspace_addr: USER_BASE + 0x100_0000,
        ..overlapping[0]
    });
    let fe = connect(&server.socket, 1);
    assert!(fe.set_mem_table(&overlapping).is_err());
    assert_disconnected(&fe);
    drop(fe);
    // A region longer than its file.
    let short = Memory::new(&[(0, 0x10_0000, 0)]);
    let mut table = short.table();
    table[0].memory_size = 0x20_0000;
    let fe = connect(&server.socket, 1);
    assert!(fe.set_mem_table(&table).is_err());
    assert_disconnected(&fe);
    drop(fe);
    // A memfd the front end may truncate under us (it refuses seals).
    let unsealable = Memory::memfd(&[(0, 0x10_0000, 0)], 0);
    let fe = connect(&server.socket, 1);
    assert!(fe.set_mem_table(&unsealable.table()).is_err());
    assert_disconnected(&fe);
    drop(fe);
    assert!(server.alive());
    // A hole from 0x8000 to 1 MiB: the ring and buffers sit on both sides of it.
    let holes = Memory::new(&[(0, 0x8000, 0), (0x10_0000, 0x40_0000, 0x8000)]);
    let mut fe = connect(&server.socket, 1);
    fe.set_mem_table(&holes.table()).unwrap();
    let mut r = start_ring(&mut fe, &holes, 0, 0x1000).unwrap();
    let buf = 0x10_0000;
    holes.mem.write(buf, &[0x5a; 4096]).unwrap();
    assert_eq!(request(&holes, &mut r, 0x2000, T_OUT, 4, buf, 4096), 0);
    // A data buffer in the hole: the request fails (IOERR), the ring goes on.
    let status = request(&holes, &mut r, 0x2000, T_IN, 4, 0x9000, 4096);
    assert_ne!(status, 0, "a buffer in the hole was accepted");
    assert_eq!(
        request(&holes, &mut r, 0x2000, T_IN, 4, buf + 4096, 4096),
        0
    );
    let mut back = [0u8; 4096];
    holes.mem.read(buf + 4096, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0x5a));
}

/// Sets up ring `q` with the front end's addresses `desc`, `avail`, `used` as given and
/// starts it; returns its kick eventfd.
fn start_raw_ring(
    fe: &mut Frontend,
    q: usize,
    desc: u64,
    avail: u64,
    used: u64,
) -> Result<EventFd, vhost::Error> {
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    fe.set_vring_num(q, QSIZE)?;
    fe.set_vring_addr(
        q,
        &VringConfigData {
            queue_max_size: QSIZE,
            queue_size: QSIZE,
            flags: 0,
            desc_table_addr: desc,
            used_ring_addr: used,
            avail_ring_addr: avail,
            log_addr: None,
        },
    )?;
    fe.set_vring_base(q, 0)?;
    fe.set_vring_kick(q, &kick)?;
    fe.set_vring_enable(q, true)?;
    Ok(kick)
}

#[test]
fn rings_outside_memory_are_refused() {
    let server = Server::start(1);
    let mem = one_region();
    let end = USER_BASE + (1 << 20);
    let cases = [
        (
            "a descriptor table in no region",
            end + 0x1000,
            USER_BASE + 0x400,
            USER_BASE + 0x800,
        ),
        (
            "an available ring crossing the region's end",
            USER_BASE,
            end - 0x10,
            USER_BASE + 0x800,
        ),
        (
            "a misaligned used ring",
            USER_BASE,
            USER_BASE + 0x400,
            USER_BASE + 0x802,
        ),
    ];
    for (what, desc, avail, used) in cases {
        let mut fe = connect(&server.socket, 1);
        fe.set_mem_table(&mem.table()).unwrap();
        assert!(
            start_raw_ring(&mut fe, 0, desc, avail, used).is_err(),
            "{what}: started"
        );
        assert_disconnected(&fe);
    }
    let fe = connect(&server.socket, 1);
    fe.set_mem_table(&mem.table()).unwrap();
    assert!(fe.set_vring_num(0, 1000).is_err(), "size 1000 accepted");
    assert_disconnected(&fe);
    drop(fe);
    // A vring the device does not have (the front end believes in 2 queues).
    let mut fe = frontend(&server.socket, 2);
    fe.set_features(fe.get_features().unwrap()).unwrap();
    let pf = fe.get_protocol_features().unwrap();
    fe.set_protocol_features(pf).unwrap();
    fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    assert!(
        fe.set_vring_num(1, QSIZE).is_err(),
        "vring 1 of a 1-queue device accepted"
    );
    drop(fe);
    // A call "eventfd" that is a pipe nobody reads: a notification could block on it.
    let mut pipe = [0i32; 2];
    // SAFETY: pipe(2) fills the two-element array.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    // SAFETY: the pipe's write end is ours alone; the EventFd owns and closes it.
    let not_an_eventfd = unsafe { EventFd::from_raw_fd(pipe[1]) };
    // SAFETY: the read end is ours alone; the File owns and closes it.
    let _read_end = unsafe { File::from_raw_fd(pipe[0]) };
    let fe = connect(&server.socket, 1);
    assert!(
        fe.set_vring_call(0, &not_an_eventfd).is_err(),
        "a pipe accepted as call fd"
    );
    assert_disconnected(&fe);
    drop(fe);
    let mut fe = connect(&server.socket, 1);
    fe.set_mem_table(&mem.table()).unwrap();
    let mut r = start_ring(&mut fe, &mem, 0, 0x1000).unwrap();
    io_roundtrip(&mem, &mut r, 0);
    assert!(server.image().exists());
}
