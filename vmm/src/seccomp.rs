//! Seccomp filters: each VMM thread may make only the system calls its job needs.
//!
//! A thread calls [`apply`] (or [`apply_mode`] with the `--seccomp` choice) once, at the top
//! of its body, before it touches guest-controlled data. The filter binds the calling thread
//! and every thread it starts afterwards. The lists were measured with `strace -f` over the
//! guest test suite in every io mode and engine (docs/seccomp.md tells how to measure them
//! again), plus the error paths a run does not take (logging to stderr, `abort`).
//!
//! Argument filters narrow the calls a compromised thread could turn against the host:
//! `ioctl` only with the requests each kind issues (a vCPU thread cannot create VMs or
//! vCPUs), `mmap`/`mprotect` never with `PROT_EXEC` (no new code), `clone` only for threads
//! (no fork, hence no exec either), `prctl` only to name a thread or to set
//! `no_new_privs`, `tgkill` only inside this process, `fcntl` only to duplicate a
//! descriptor, `openat` only to create a file for writing (main and metrics threads) and
//! never to read one.
//!
//! Filters stack: a thread started by a filtered thread keeps its parent's filter as well as
//! its own, and the strictest answer wins. So the vCPU list holds everything the device and
//! worker threads need (the vCPU thread starts them when the driver sets DRIVER_OK).
//!
//! ```
//! use vmm::seccomp::{mode_from_str, SeccompMode, ThreadKind, Violation};
//! assert_eq!(mode_from_str("log").unwrap(), SeccompMode::Log);
//! assert_eq!(SeccompMode::default().violation(), Some(Violation::KillProcess));
//! // Every kind's filter compiles to a BPF program the kernel accepts in size.
//! for kind in ThreadKind::ALL {
//!     assert!(vmm::seccomp::program(kind, Violation::KillProcess).unwrap().len() < 4096);
//! }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use thiserror::Error;
use vmm_sys_util::ioctl::{ioctl_expr, _IOC_NONE, _IOC_READ, _IOC_WRITE};

/// Which job a thread does; each has its own allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// Runs `KVM_RUN` and the port I/O and MMIO exits: device configuration (which starts the
    /// device and worker threads at DRIVER_OK) and, in `--io-mode vcpu`, the disk I/O itself.
    Vcpu,
    /// A queue handler (iothread, dataplane or workers mode): epoll on kicks and completions,
    /// disk I/O, irqfd writes.
    Device,
    /// A pool worker (`--io-mode workers`): disk I/O from a channel, completion doorbells.
    Worker,
    /// The main thread once the vCPUs run: waits for the stop, kicks and joins the threads,
    /// runs the device shutdown hooks (final I/O, `fdatasync`, ioeventfd/irqfd release),
    /// writes the `--trace` and `--metrics` files.
    Main,
    /// The `--metrics-interval` thread: rewrites the metrics file (a temporary file renamed
    /// over it) every interval.
    Metrics,
    /// The thread of a connection to an NBD server: reconnects (a Unix or TCP socket,
    /// `connect`, the handshake; the server's address was looked up before), waits for room
    /// to finish a send, and adds a new socket to the queues' epoll sets.
    Network,
}

impl ThreadKind {
    /// Every kind, for loops in tests and documentation.
    pub const ALL: [ThreadKind; 6] = [
        ThreadKind::Vcpu,
        ThreadKind::Device,
        ThreadKind::Worker,
        ThreadKind::Main,
        ThreadKind::Metrics,
        ThreadKind::Network,
    ];

    fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Device => "device",
            ThreadKind::Worker => "worker",
            ThreadKind::Main => "main",
            ThreadKind::Metrics => "metrics",
            ThreadKind::Network => "network",
        }
    }
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the kernel does when a filtered thread makes a system call outside its list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// Kill the whole process with SIGSYS (a killed thread alone would leave the VM hung).
    KillProcess,
    /// Fail the call with this errno and go on (tests).
    Errno(i32),
    /// Allow the call and log it to the kernel log (`dmesg`, audit): for finding what a list
    /// misses.
    Log,
}

impl Violation {
    fn action(self) -> SeccompAction {
        match self {
            Violation::KillProcess => SeccompAction::KillProcess,
            Violation::Errno(errno) => SeccompAction::Errno(errno.unsigned_abs()),
            Violation::Log => SeccompAction::Log,
        }
    }
}

/// The `--seccomp on|off|log` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SeccompMode {
    /// Filters installed; a violation kills the VMM with SIGSYS.
    #[default]
    On,
    /// No filters.
    Off,
    /// Filters installed; a violation is allowed and logged by the kernel.
    Log,
}

impl SeccompMode {
    /// The violation action of this mode, `None` when no filter is installed.
    pub fn violation(self) -> Option<Violation> {
        match self {
            SeccompMode::On => Some(Violation::KillProcess),
            SeccompMode::Off => None,
            SeccompMode::Log => Some(Violation::Log),
        }
    }
}

impl FromStr for SeccompMode {
    type Err = SeccompError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on" => Ok(SeccompMode::On),
            "off" => Ok(SeccompMode::Off),
            "log" => Ok(SeccompMode::Log),
            other => Err(SeccompError::BadMode(other.to_string())),
        }
    }
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SeccompMode::On => "on",
            SeccompMode::Off => "off",
            SeccompMode::Log => "log",
        })
    }
}

/// Parses a `--seccomp` value: `on`, `off` or `log`.
pub fn mode_from_str(s: &str) -> Result<SeccompMode, SeccompError> {
    s.parse()
}

/// Why a filter could not be built or installed.
#[derive(Debug, Error)]
pub enum SeccompError {
    /// The rules do not compile (a bug in this module, caught by the tests).
    #[error("the seccomp filter of {kind} threads does not compile: {source}")]
    Build {
        /// Whose filter.
        kind: ThreadKind,
        /// What seccompiler reported.
        source: BackendError,
    },
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter of a {kind} thread: {source}; does the kernel have CONFIG_SECCOMP_FILTER? Run with --seccomp off to go without")]
    Install {
        /// Whose filter.
        kind: ThreadKind,
        /// What seccompiler reported.
        source: seccompiler::Error,
    },
    /// A `--seccomp` value we do not know.
    #[error("--seccomp {0} is unknown: write --seccomp on, off or log")]
    BadMode(String),
}

/// Installs `kind`'s filter on the calling thread (and the threads it starts from now on).
pub fn apply(kind: ThreadKind, violation: Violation) -> Result<(), SeccompError> {
    let install = |program: BpfProgram| {
        seccompiler::apply_filter(&program).map_err(|source| SeccompError::Install { kind, source })
    };
    // The refusals go first: once the allowlist is in, only a vCPU thread may still call
    // `seccomp` (for the threads it starts).
    for program in refusals(kind)? {
        install(program)?;
    }
    install(program(kind, violation)?)
}

/// The mode every VMM thread applies ([`apply_thread`]); [`SeccompMode::Off`] until
/// [`set_process_mode`] is called, so library users (and unit tests) that build devices
/// without going through `vmm::run` get no filters.
static PROCESS_MODE: AtomicU8 = AtomicU8::new(MODE_OFF);
const MODE_OFF: u8 = 0;
const MODE_ON: u8 = 1;
const MODE_LOG: u8 = 2;

/// Sets the mode [`apply_thread`] uses. `vmm::run` calls it once, after [`probe`].
pub fn set_process_mode(mode: SeccompMode) {
    let raw = match mode {
        SeccompMode::Off => MODE_OFF,
        SeccompMode::On => MODE_ON,
        SeccompMode::Log => MODE_LOG,
    };
    PROCESS_MODE.store(raw, Ordering::Relaxed);
}

/// The mode set by [`set_process_mode`].
pub fn process_mode() -> SeccompMode {
    match PROCESS_MODE.load(Ordering::Relaxed) {
        MODE_ON => SeccompMode::On,
        MODE_LOG => SeccompMode::Log,
        _ => SeccompMode::Off,
    }
}

/// Installs `kind`'s filter on the calling thread with the process's mode. Call it first
/// thing in every thread the VMM spawns.
///
/// A thread that cannot be confined must not run unconfined: the failure is reported and
/// the process aborts. [`probe`] at start-up makes this a can't-happen.
pub fn apply_thread(kind: ThreadKind) {
    if let Err(e) = apply_mode(kind, process_mode()) {
        eprintln!(
            "vmm: {e}; stopping rather than running an unconfined {} thread",
            kind.name()
        );
        std::process::abort();
    }
}

/// [`apply`] with the violation action of `mode`; does nothing for [`SeccompMode::Off`].
pub fn apply_mode(kind: ThreadKind, mode: SeccompMode) -> Result<(), SeccompError> {
    match mode.violation() {
        Some(violation) => apply(kind, violation),
        None => Ok(()),
    }
}

/// Checks, before any thread starts, that every filter compiles and that the kernel takes
/// one (installed on a short-lived thread), so a kernel without seccomp is a set-up error
/// rather than a failure inside a vCPU or device thread. Does nothing for
/// [`SeccompMode::Off`].
pub fn probe(mode: SeccompMode) -> Result<(), SeccompError> {
    let Some(violation) = mode.violation() else {
        return Ok(());
    };
    for kind in ThreadKind::ALL {
        refusals(kind)?;
        program(kind, violation)?;
    }
    std::thread::scope(|s| {
        s.spawn(|| apply(ThreadKind::Worker, violation))
            .join()
            .unwrap_or(Ok(()))
    })
}

/// `kind`'s allowlist compiled to BPF, without installing it.
pub fn program(kind: ThreadKind, violation: Violation) -> Result<BpfProgram, SeccompError> {
    let build = |source| SeccompError::Build { kind, source };
    let filter = SeccompFilter::new(
        rules(kind).map_err(build)?.0,
        violation.action(),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(build)?;
    BpfProgram::try_from(filter).map_err(build)
}

/// The system call numbers `kind` may make, with or without argument conditions.
pub fn allowed_syscalls(kind: ThreadKind) -> Vec<i64> {
    rules(kind)
        .map(|r| r.0.into_keys().collect())
        .unwrap_or_default()
}

/// Filters that fail a call with an errno whatever the violation action, for calls the C
/// library makes on its own and copes with failing. The allowlist lets them through, so these
/// decide (an errno outranks an allow when filters stack).
///
/// - `openat` for reading: glibc's malloc reads `/proc/sys/vm/overcommit_memory` the first
///   time a thread's arena shrinks (seen when a worker exits); refused, it assumes the
///   default. No thread may read a file, so this refusal costs nothing.
/// - `clone3` (vCPU threads): refused with `ENOSYS`, glibc falls back to `clone`, whose flags
///   (unlike `clone3`'s, which sit in memory) the allowlist can check for `CLONE_THREAD`.
fn refusals(kind: ThreadKind) -> Result<Vec<BpfProgram>, SeccompError> {
    let build = |source| SeccompError::Build { kind, source };
    let refuse = |rules, errno: i32| -> Result<BpfProgram, SeccompError> {
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno.unsigned_abs()),
            TargetArch::x86_64,
        )
        .map_err(build)?;
        BpfProgram::try_from(filter).map_err(build)
    };
    let read_only = SeccompRule::new(vec![opens_for_reading().map_err(build)?]).map_err(build)?;
    let mut programs = vec![refuse(
        BTreeMap::from([(libc::SYS_openat, vec![read_only])]),
        libc::EACCES,
    )?];
    if kind == ThreadKind::Vcpu {
        programs.push(refuse(
            BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
            libc::ENOSYS,
        )?);
    }
    Ok(programs)
}

/// `openat`'s access mode is `O_RDONLY`.
fn opens_for_reading() -> Result<SeccompCondition, BackendError> {
    arg_masked(2, libc::O_ACCMODE as u64, libc::O_RDONLY as u64)
}

const KVMIO: u32 = 0xAE;

/// `KVM_RUN`: `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = ioctl_expr(_IOC_NONE, KVMIO, 0x80, 0) as u64;
/// `KVM_GET_REGS`: `_IOR(KVMIO, 0x81, struct kvm_regs)`, read when reporting an internal error.
const KVM_GET_REGS: u64 = ioctl_expr(
    _IOC_READ,
    KVMIO,
    0x81,
    size_of::<kvm_bindings::kvm_regs>() as u32,
) as u64;
/// `KVM_IOEVENTFD`: `_IOW(KVMIO, 0x79, struct kvm_ioeventfd)`.
const KVM_IOEVENTFD: u64 = ioctl_expr(
    _IOC_WRITE,
    KVMIO,
    0x79,
    size_of::<kvm_bindings::kvm_ioeventfd>() as u32,
) as u64;
/// `KVM_IRQFD`: `_IOW(KVMIO, 0x76, struct kvm_irqfd)`.
const KVM_IRQFD: u64 = ioctl_expr(
    _IOC_WRITE,
    KVMIO,
    0x76,
    size_of::<kvm_bindings::kvm_irqfd>() as u32,
) as u64;
/// `KVM_SET_GSI_ROUTING`: `_IOW(KVMIO, 0x6a, struct kvm_irq_routing)` (the header only).
const KVM_SET_GSI_ROUTING: u64 = ioctl_expr(
    _IOC_WRITE,
    KVMIO,
    0x6a,
    size_of::<kvm_bindings::kvm_irq_routing>() as u32,
) as u64;
/// `BLKDISCARD`: `_IO(0x12, 119)`, the sync engine's discard on a block-device image.
const BLKDISCARD: u64 = ioctl_expr(_IOC_NONE, 0x12, 119, 0) as u64;

/// `io_uring_register` opcodes the io_uring engine uses when it builds its ring.
const IORING_REGISTER_BUFFERS: u64 = 0;
const IORING_REGISTER_FILES: u64 = 2;
const IORING_REGISTER_EVENTFD: u64 = 4;

/// The allowlist under construction: syscall number to the rules that allow it (an empty
/// list allows it whatever its arguments).
struct Rules(BTreeMap<i64, Vec<SeccompRule>>);

impl Rules {
    fn allow(&mut self, syscalls: &[i64]) {
        for &nr in syscalls {
            self.0.insert(nr, Vec::new());
        }
    }

    /// Allows `nr` when every condition holds (one rule; several calls add alternatives). A
    /// call already allowed outright stays so.
    fn allow_if(&mut self, nr: i64, conditions: Vec<SeccompCondition>) -> Result<(), BackendError> {
        let rule = SeccompRule::new(conditions)?;
        match self.0.get_mut(&nr) {
            Some(rules) if rules.is_empty() => {}
            Some(rules) => rules.push(rule),
            None => {
                self.0.insert(nr, vec![rule]);
            }
        }
        Ok(())
    }

    /// Allows `nr` when argument `arg` is one of `values` (compared as 32 bits).
    fn allow_values(&mut self, nr: i64, arg: u8, values: &[u64]) -> Result<(), BackendError> {
        for &v in values {
            self.allow_if(nr, vec![arg_eq(arg, v)?])?;
        }
        Ok(())
    }

    fn ioctls(&mut self, requests: &[u64]) -> Result<(), BackendError> {
        self.allow_values(libc::SYS_ioctl, 1, requests)
    }
}

fn arg_eq(arg: u8, value: u64) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
}

/// `(arg & mask) == value`.
fn arg_masked(arg: u8, mask: u64, value: u64) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(mask),
        value,
    )
}

fn rules(kind: ThreadKind) -> Result<Rules, BackendError> {
    let mut r = Rules(BTreeMap::new());
    running_thread(&mut r)?;
    match kind {
        ThreadKind::Worker => disk_io(&mut r)?,
        ThreadKind::Device => {
            disk_io(&mut r)?;
            epoll(&mut r);
        }
        ThreadKind::Vcpu => {
            disk_io(&mut r)?;
            epoll(&mut r);
            engine_setup(&mut r)?;
            thread_start(&mut r)?;
            r.ioctls(&[KVM_RUN, KVM_GET_REGS])?;
            r.ioctls(&[KVM_IOEVENTFD, KVM_IRQFD, KVM_SET_GSI_ROUTING])?;
        }
        ThreadKind::Main => {
            disk_io(&mut r)?;
            engine_setup(&mut r)?;
            output_files(&mut r)?;
            r.ioctls(&[KVM_IOEVENTFD, KVM_IRQFD, KVM_SET_GSI_ROUTING])?;
        }
        ThreadKind::Metrics => output_files(&mut r)?,
        ThreadKind::Network => network(&mut r)?,
    }
    Ok(r)
}

/// An NBD connection's thread: a stream socket of the server's family, connected with a
/// timeout (non-blocking connect, `poll`, `SO_ERROR`), socket timeouts and `TCP_NODELAY` set
/// for the handshake, then the same sends and receives as a queue's, and `epoll_ctl` to add
/// the new socket to each queue's set.
fn network(r: &mut Rules) -> Result<(), BackendError> {
    r.allow_values(
        libc::SYS_socket,
        0,
        &[
            libc::AF_UNIX as u64,
            libc::AF_INET as u64,
            libc::AF_INET6 as u64,
        ],
    )?;
    r.allow(&[
        libc::SYS_connect,
        libc::SYS_getsockopt,
        libc::SYS_setsockopt,
        libc::SYS_poll,
        libc::SYS_ppoll,
        libc::SYS_sendto,
        libc::SYS_sendmsg,
        libc::SYS_recvfrom,
        libc::SYS_recvmsg,
        libc::SYS_epoll_ctl,
    ]);
    // `set_nonblocking` (FIONBIO) around a connect with a timeout.
    r.ioctls(&[libc::FIONBIO])?;
    r.allow_values(
        libc::SYS_fcntl,
        1,
        &[libc::F_GETFL as u64, libc::F_SETFL as u64],
    )
}

/// What any running Rust thread needs: locks and channels (futex), sleeping, the allocator,
/// eventfd and stderr I/O, signal return, `abort`, and its own exit.
fn running_thread(r: &mut Rules) -> Result<(), BackendError> {
    r.allow(&[
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_clock_gettime,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_restart_syscall,
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigprocmask,
        libc::SYS_sigaltstack,
        libc::SYS_gettid,
        libc::SYS_getpid,
        // The first HashMap of a thread seeds its hasher.
        libc::SYS_getrandom,
        // glibc sizes its malloc arenas by the CPUs this thread may run on.
        libc::SYS_sched_getaffinity,
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_writev,
        libc::SYS_close,
        libc::SYS_brk,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_exit,
        libc::SYS_exit_group,
    ]);
    // Memory, never executable: no new code can be mapped.
    let no_exec = libc::PROT_EXEC as u64;
    r.allow_if(libc::SYS_mmap, vec![arg_masked(2, no_exec, 0)?])?;
    r.allow_if(libc::SYS_mprotect, vec![arg_masked(2, no_exec, 0)?])?;
    // Debug builds of std check that a descriptor is open before closing it (F_GETFD).
    r.allow_values(libc::SYS_fcntl, 1, &[libc::F_GETFD as u64])?;
    // `abort` signals its own thread; vCPU kicks signal threads of this process.
    r.allow_values(libc::SYS_tgkill, 0, &[u64::from(std::process::id())])?;
    // Passed on to the `refusals` filter, which fails it with EACCES.
    r.allow_if(libc::SYS_openat, vec![opens_for_reading()?])
}

/// What the engines do per request: sync `preadv`/`pwritev`/`fallocate`/`fdatasync` (and
/// `BLKDISCARD` on a block device), io_uring `io_uring_enter`, NBD `sendmsg`/`recv`/`recvmsg`.
fn disk_io(r: &mut Rules) -> Result<(), BackendError> {
    r.allow(&[
        libc::SYS_preadv,
        libc::SYS_pwritev,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_fdatasync,
        libc::SYS_fsync,
        libc::SYS_fallocate,
        libc::SYS_io_uring_enter,
        // A throttled queue arms its timer (or a group member's) when tokens run out.
        libc::SYS_timerfd_settime,
        // An NBD disk's engine writes its requests to the server's socket and reads the
        // replies from the thread that serves the queue, and polls its epoll set when it
        // must block (no socket is created or connected here).
        libc::SYS_sendmsg,
        libc::SYS_recvfrom,
        libc::SYS_recvmsg,
        libc::SYS_poll,
    ]);
    r.ioctls(&[BLKDISCARD])
}

/// A queue handler's event loop.
fn epoll(r: &mut Rules) {
    r.allow(&[
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
    ]);
}

/// Building an engine at DRIVER_OK (vCPU) or for the final sync (main): a duplicate of the
/// image descriptor, an eventfd, an io_uring ring, and a limited disk's throttle timers.
fn engine_setup(r: &mut Rules) -> Result<(), BackendError> {
    r.allow(&[
        libc::SYS_eventfd2,
        libc::SYS_io_uring_setup,
        libc::SYS_timerfd_create,
        // An NBD engine's completion fd is an epoll set of the socket and its eventfd.
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
    ]);
    r.allow_values(libc::SYS_fcntl, 1, &[libc::F_DUPFD_CLOEXEC as u64])?;
    r.allow_values(
        libc::SYS_io_uring_register,
        1,
        &[
            IORING_REGISTER_BUFFERS,
            IORING_REGISTER_FILES,
            IORING_REGISTER_EVENTFD,
        ],
    )
}

/// Writing the `--trace`/`--metrics` files: `File::create` (create or truncate, write only:
/// no file can be read) and the rename of the temporary metrics file.
fn output_files(r: &mut Rules) -> Result<(), BackendError> {
    let how = (libc::O_ACCMODE | libc::O_CREAT | libc::O_TRUNC) as u64;
    let create = (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC) as u64;
    r.allow_if(libc::SYS_openat, vec![arg_masked(2, how, create)?])?;
    r.allow(&[libc::SYS_rename, libc::SYS_renameat, libc::SYS_renameat2]);
    Ok(())
}

/// Starting a thread (glibc `pthread_create`, then Rust's start-up in the new thread) and
/// letting it install its own filter.
fn thread_start(r: &mut Rules) -> Result<(), BackendError> {
    r.allow(&[
        // Answered ENOSYS by the `refusals` filter: glibc then uses `clone`.
        libc::SYS_clone3,
        libc::SYS_rseq,
        libc::SYS_set_robust_list,
    ]);
    let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
    r.allow_if(libc::SYS_clone, vec![arg_masked(0, thread, thread)?])?;
    r.allow_values(
        libc::SYS_prctl,
        0,
        &[libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64],
    )?;
    // A new thread pins itself (`--cpu-affinity`) before installing its own filter, under the
    // one it inherited from its starter; pid 0 is the calling thread only.
    r.allow_values(libc::SYS_sched_setaffinity, 0, &[0])?;
    r.allow_values(
        libc::SYS_seccomp,
        0,
        &[u64::from(libc::SECCOMP_SET_MODE_FILTER)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        // Values as strace decodes them from <linux/kvm.h> and <linux/fs.h>.
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_IOEVENTFD, 0x4040_ae79);
        assert_eq!(KVM_IRQFD, 0x4020_ae76);
        assert_eq!(KVM_SET_GSI_ROUTING, 0x4008_ae6a);
        assert_eq!(BLKDISCARD, 0x1277);
    }
}
