//! The vhost-user request handler: one virtio-blk device, its rings and the front end's memory,
//! as the messages of `docs/interop/vhost-user.rst` set them up.
//!
//! The `vhost` crate decodes the messages and sends the replies (REPLY_ACK included); this
//! file decides what each one does to the device. The rings themselves are served by
//! `blk-device` (one activation per ring, so each starts and stops on its own, as the protocol
//! wants) over the mapped memory, with `virtqueue-core` walking them.
//!
//! Any request this handler refuses is logged and marks the connection as failed
//! ([`VhostUserBlk::take_failure`]): the server answers it (when the front end asked for a
//! reply) and then disconnects. A front end that sends a bad table or a ring outside its
//! memory is broken or hostile, and serving it further would only serve it wrongly.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::sync::Arc;

use blk_device::config::MAX_QUEUE_SIZE;
use blk_device::device::BlockDevice;
use blk_device::mode::QueueSetup;
use blk_proto::features::VIRTIO_RING_F_EVENT_IDX;
use blk_proto::Features;
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVirtioFeatures,
    VhostUserVringAddrFlags, VhostUserVringState, VHOST_USER_CONFIG_SIZE,
};
use vhost::vhost_user::{Error, GpuBackend, Result, VhostUserBackendReqHandlerMut};
use vhost::VhostUserMemoryRegionBase;
use virtqueue_core::{GuestMemory, Queue};
use vmm_sys_util::eventfd::EventFd;

use crate::memory::{MemoryTable, RegionSpec};
use crate::notify::Notifiers;
use crate::vring::{RingAddrs, Vring};

/// Offset of `idx` in the used ring (2.7.8 "The Virtqueue Used Ring").
const USED_IDX_OFFSET: u64 = 2;

/// The device behind one socket, across its connections.
#[derive(Debug)]
pub struct VhostUserBlk {
    device: BlockDevice,
    notifiers: Arc<Notifiers>,
    vrings: Vec<Vring>,
    mem: Option<MemoryTable>,
    acked_features: u64,
    acked_protocol: u64,
    /// Why the connection must end, once a request was refused.
    failure: Option<String>,
}

/// Refuses a request: the server logs `why` and disconnects after the reply.
fn refuse<T>(this: &mut VhostUserBlk, why: String, err: Error) -> Result<T> {
    this.failure.get_or_insert(why);
    Err(err)
}

/// An eventfd from a file descriptor the front end sent, made non-blocking; `None` when it
/// is no eventfd. A pipe could block a ring thread's notification for good (nobody reads
/// it), and so could a blocking eventfd the front end filled up to its limit; QEMU's
/// eventfds are non-blocking already, so setting the flag on the shared file changes nothing
/// for it.
fn eventfd(file: File) -> Option<EventFd> {
    let fd = file.as_raw_fd();
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    if target.as_os_str() != "anon_inode:[eventfd]" {
        return None;
    }
    // SAFETY: fcntl on a descriptor we own; F_GETFL takes no argument, F_SETFL an int.
    let ok = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    if !ok {
        return None;
    }
    // SAFETY: `into_raw_fd` hands over sole ownership of an open eventfd, which the EventFd
    // now owns and closes.
    Some(unsafe { EventFd::from_raw_fd(file.into_raw_fd()) })
}

impl VhostUserBlk {
    /// Serves `device` to the front ends that connect.
    pub fn new(device: BlockDevice) -> Self {
        let queues = device.num_queues();
        VhostUserBlk {
            notifiers: Arc::new(Notifiers::new(queues)),
            vrings: (0..queues).map(|_| Vring::default()).collect(),
            device,
            mem: None,
            acked_features: 0,
            acked_protocol: 0,
            failure: None,
        }
    }

    /// The device.
    pub fn device(&self) -> &BlockDevice {
        &self.device
    }

    /// Why the last request was refused, if it was: the connection must end.
    pub fn take_failure(&mut self) -> Option<String> {
        self.failure.take()
    }

    /// The front end went away (or reset its ownership): every ring stops after its in-flight
    /// requests complete, and everything the front end set up is forgotten.
    pub fn disconnect(&mut self) {
        for i in 0..self.vrings.len() {
            self.stop_ring(i);
        }
        self.vrings.iter_mut().for_each(|v| *v = Vring::default());
        self.notifiers.clear();
        self.mem = None;
        self.acked_features = 0;
        self.acked_protocol = 0;
        self.failure = None;
        let _ = self.device.health().take_needs_reset();
    }

    fn vring_index(&mut self, index: u32) -> Result<usize> {
        match usize::try_from(index) {
            Ok(i) if i < self.vrings.len() => Ok(i),
            _ => refuse(
                self,
                format!(
                    "vring {index} does not exist: the device has {} queues",
                    self.vrings.len()
                ),
                Error::InvalidParam,
            ),
        }
    }

    fn protocol_features_acked(&self) -> bool {
        self.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0
    }

    /// Stops ring `i` after its in-flight requests complete, and records where the driver's
    /// next chain is: every chain popped has been answered, so the used `idx` in guest memory
    /// is the avail index the ring resumes at.
    fn stop_ring(&mut self, i: usize) {
        let Some(v) = self.vrings.get_mut(i) else {
            return;
        };
        let Some(active) = v.active.take() else {
            return;
        };
        active.stop();
        if let Some(mem) = &self.mem {
            let at = v.used_gpa.saturating_add(USED_IDX_OFFSET);
            match mem
                .guest_memory()
                .load_u16(at, std::sync::atomic::Ordering::Acquire)
            {
                Ok(idx) => v.base = idx,
                Err(e) => eprintln!("vhost-user-blk: vring {i}: cannot read the used index: {e}"),
            }
        }
    }

    /// Starts ring `i` if it has everything it needs and is enabled.
    fn refresh_ring(&mut self, i: usize) -> Result<()> {
        let Some(v) = self.vrings.get(i) else {
            return Ok(());
        };
        if v.active.is_some() || !v.enabled {
            return Ok(());
        }
        let (Some(mem), Some(addrs), Some(kick)) = (&self.mem, v.addrs, &v.kick) else {
            return Ok(());
        };
        let translate = |what: &str, ua: u64| {
            mem.to_guest(ua)
                .ok_or_else(|| format!("vring {i}: its {what} at {ua:#x} is in no memory region"))
        };
        let built = (|| {
            let mut queue = Queue::new(MAX_QUEUE_SIZE);
            queue.set_size(v.size);
            queue.set_desc_table_address(translate("descriptor table", addrs.desc)?);
            queue.set_avail_ring_address(translate("available ring", addrs.avail)?);
            let used = translate("used ring", addrs.used)?;
            queue.set_used_ring_address(used);
            queue.set_event_idx(Features(self.acked_features).contains(VIRTIO_RING_F_EVENT_IDX));
            queue.set_ready(true);
            if !queue.is_valid(mem.guest_memory()) {
                return Err(format!(
                    "vring {i}: size {} or its rings (desc {:#x}, avail {:#x}, used {used:#x}) \
                     lie outside guest memory or are misaligned",
                    v.size,
                    queue.desc_table_address(),
                    queue.avail_ring_address()
                ));
            }
            let used_idx = mem
                .guest_memory()
                .load_u16(used + USED_IDX_OFFSET, std::sync::atomic::Ordering::Acquire)
                .map_err(|e| format!("vring {i}: {e}"))?;
            queue.set_next_avail(v.base);
            queue.set_next_used(used_idx);
            let kick = kick
                .try_clone()
                .map_err(|e| format!("vring {i}: cannot duplicate its kick eventfd: {e}"))?;
            let index = u16::try_from(i).map_err(|_| format!("vring {i} out of range"))?;
            Ok::<_, String>((QueueSetup { index, queue, kick }, used))
        })();
        let (setup, used_gpa) = match built {
            Ok(b) => b,
            Err(why) => return refuse(self, why, Error::InvalidParam),
        };
        let activated = self.device.activate(
            Features(self.acked_features),
            mem.guest_memory().clone(),
            vec![setup],
            self.notifiers.clone(),
        );
        match activated {
            Ok(active) => {
                if let Some(v) = self.vrings.get_mut(i) {
                    v.active = Some(active);
                    v.used_gpa = used_gpa;
                }
                Ok(())
            }
            Err(e) => refuse(self, format!("vring {i}: {e}"), Error::BackendInternalError),
        }
    }

    /// The ring must be stopped for this message (its layout is changing under it).
    fn require_stopped(&mut self, i: usize, what: &str) -> Result<()> {
        if self.vrings.get(i).is_some_and(|v| v.active.is_some()) {
            return refuse(
                self,
                format!("{what} for vring {i} while it runs: stop it first (GET_VRING_BASE)"),
                Error::InvalidOperation("ring running"),
            );
        }
        Ok(())
    }

    fn unsupported<T>(&mut self, what: &'static str) -> Result<T> {
        refuse(
            self,
            format!("{what} is not supported (its protocol feature is not offered)"),
            Error::InvalidOperation(what),
        )
    }

    /// `fd` as the `what` eventfd of vring `i`, refused when it is no eventfd.
    fn received_eventfd(&mut self, i: usize, what: &str, fd: File) -> Result<Option<EventFd>> {
        match eventfd(fd) {
            Some(e) => Ok(Some(e)),
            None => refuse(
                self,
                format!("vring {i}: its {what} descriptor is no eventfd"),
                Error::InvalidParam,
            ),
        }
    }

    fn ring(&mut self, i: usize) -> &mut Vring {
        // `i` came from `vring_index`.
        &mut self.vrings[i]
    }
}

/// The ring addresses carry no flag we act on except logging, which is not offered.
fn check_addr_flags(flags: VhostUserVringAddrFlags) -> bool {
    !flags.contains(VhostUserVringAddrFlags::VHOST_VRING_F_LOG)
}

impl VhostUserBackendReqHandlerMut for VhostUserBlk {
    fn set_owner(&mut self) -> Result<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> Result<()> {
        self.disconnect();
        Ok(())
    }

    fn reset_device(&mut self) -> Result<()> {
        self.unsupported("RESET_DEVICE")
    }

    fn get_features(&mut self) -> Result<u64> {
        Ok(self.device.offered_features().bits()
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits())
    }

    fn set_features(&mut self, features: u64) -> Result<()> {
        let offered = self.get_features()?;
        if features & !offered != 0 {
            return refuse(
                self,
                format!("features {:#x} were never offered", features & !offered),
                Error::InvalidParam,
            );
        }
        self.acked_features = features;
        // Without VHOST_USER_F_PROTOCOL_FEATURES a ring is enabled as soon as it starts.
        if !self.protocol_features_acked() {
            self.vrings.iter_mut().for_each(|v| v.enabled = true);
        }
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> Result<Option<Vec<VhostUserMemoryRegionBase>>> {
        let specs: Vec<RegionSpec> = ctx
            .iter()
            .map(|r| RegionSpec {
                guest_phys_addr: r.guest_phys_addr,
                size: r.memory_size,
                user_addr: r.user_addr,
                mmap_offset: r.mmap_offset,
            })
            .collect();
        let table = match MemoryTable::map(&specs, files) {
            Ok(t) => t,
            Err(e) => {
                return refuse(
                    self,
                    format!("memory table refused: {e}"),
                    Error::InvalidParam,
                )
            }
        };
        // Running rings move to the new map: stopped where they are, restarted over it. A
        // ring that got its kick before any table starts now.
        (0..self.vrings.len()).for_each(|i| self.stop_ring(i));
        self.mem = Some(table);
        for i in 0..self.vrings.len() {
            self.refresh_ring(i)?;
        }
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> Result<()> {
        let i = self.vring_index(index)?;
        self.require_stopped(i, "SET_VRING_NUM")?;
        match u16::try_from(num) {
            Ok(n) if n.is_power_of_two() && n <= MAX_QUEUE_SIZE => {
                self.ring(i).size = n;
                Ok(())
            }
            _ => refuse(
                self,
                format!("vring {i}: size {num} is not a power of two up to {MAX_QUEUE_SIZE}"),
                Error::InvalidParam,
            ),
        }
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> Result<()> {
        let i = self.vring_index(index)?;
        self.require_stopped(i, "SET_VRING_ADDR")?;
        if !check_addr_flags(flags) {
            return refuse(
                self,
                format!("vring {i}: dirty logging asked for, never offered"),
                Error::InvalidParam,
            );
        }
        self.ring(i).addrs = Some(RingAddrs {
            desc: descriptor,
            avail: available,
            used,
        });
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> Result<()> {
        let i = self.vring_index(index)?;
        self.require_stopped(i, "SET_VRING_BASE")?;
        match u16::try_from(base) {
            Ok(b) => {
                self.ring(i).base = b;
                Ok(())
            }
            // Split rings only: the packed ring's wrap counter never fits here.
            Err(_) => refuse(
                self,
                format!("vring {i}: base {base:#x} is no split-ring index"),
                Error::InvalidParam,
            ),
        }
    }

    fn get_vring_base(&mut self, index: u32) -> Result<VhostUserVringState> {
        let i = self.vring_index(index)?;
        self.stop_ring(i);
        let v = self.ring(i);
        // Stopped until the front end sends a kick eventfd again.
        v.kick = None;
        Ok(VhostUserVringState::new(index, u32::from(v.base)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        let i = self.vring_index(u32::from(index))?;
        let Some(fd) = fd else {
            return refuse(
                self,
                format!("vring {i}: polling without a kick eventfd is not supported"),
                Error::InvalidParam,
            );
        };
        let kick = self.received_eventfd(i, "kick", fd)?;
        self.stop_ring(i);
        self.ring(i).kick = kick;
        self.refresh_ring(i)
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        let i = self.vring_index(u32::from(index))?;
        let call = fd
            .map(|fd| self.received_eventfd(i, "call", fd))
            .transpose()?;
        self.notifiers.set_call(i, call.flatten());
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        let i = self.vring_index(u32::from(index))?;
        let err = fd
            .map(|fd| self.received_eventfd(i, "error", fd))
            .transpose()?;
        self.notifiers.set_err(i, err.flatten());
        Ok(())
    }

    fn get_protocol_features(&mut self) -> Result<VhostUserProtocolFeatures> {
        Ok(VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK)
    }

    fn set_protocol_features(&mut self, features: u64) -> Result<()> {
        let offered = self.get_protocol_features()?.bits();
        if features & !offered != 0 {
            return refuse(
                self,
                format!(
                    "protocol features {:#x} were never offered",
                    features & !offered
                ),
                Error::InvalidParam,
            );
        }
        self.acked_protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> Result<u64> {
        Ok(self.vrings.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<()> {
        let i = self.vring_index(index)?;
        self.ring(i).enabled = enable;
        if enable {
            self.refresh_ring(i)
        } else {
            self.stop_ring(i);
            Ok(())
        }
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> Result<Vec<u8>> {
        match offset.checked_add(size) {
            Some(end) if end <= VHOST_USER_CONFIG_SIZE => {
                let mut buf = vec![0u8; size as usize];
                self.device.config().read(u64::from(offset), &mut buf);
                Ok(buf)
            }
            _ => refuse(
                self,
                format!("GET_CONFIG of {size} bytes at {offset} is out of range"),
                Error::InvalidParam,
            ),
        }
    }

    fn set_config(
        &mut self,
        _offset: u32,
        _buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> Result<()> {
        // No writable field is offered (CONFIG_WCE is not): writes are ignored, as a driver's
        // write to a read-only field is (4.1.4.3).
        Ok(())
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> Result<()> {
        self.unsupported("GPU_SET_SOCKET")
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> Result<File> {
        self.unsupported("GET_SHARED_OBJECT")
    }

    fn get_inflight_fd(
        &mut self,
        _inflight: &VhostUserInflight,
    ) -> Result<(VhostUserInflight, File)> {
        self.unsupported("GET_INFLIGHT_FD")
    }

    fn set_inflight_fd(&mut self, _inflight: &VhostUserInflight, _file: File) -> Result<()> {
        self.unsupported("SET_INFLIGHT_FD")
    }

    fn get_max_mem_slots(&mut self) -> Result<u64> {
        self.unsupported("GET_MAX_MEM_SLOTS")
    }

    fn add_mem_region(
        &mut self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy_listening: Option<bool>,
    ) -> Result<Option<VhostUserMemoryRegionBase>> {
        self.unsupported("ADD_MEM_REG")
    }

    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> Result<()> {
        self.unsupported("REM_MEM_REG")
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> Result<Option<File>> {
        self.unsupported("SET_DEVICE_STATE_FD")
    }

    fn check_device_state(&mut self) -> Result<()> {
        self.unsupported("CHECK_DEVICE_STATE")
    }

    fn get_shmem_config(&mut self) -> Result<VhostUserShMemConfig> {
        self.unsupported("GET_SHMEM_CONFIG")
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> Result<()> {
        self.unsupported("SET_LOG_BASE")
    }
}
