//! The seccomp filters on real threads: what each kind may still do, what it is refused, and
//! that the default action kills the process with SIGSYS.
//!
//! A filter binds its thread for good, so every test applies it in a thread of its own (the
//! test harness may run tests on its main thread).

mod real_guest;

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use vmm::seccomp::{
    allowed_syscalls, apply, apply_mode, mode_from_str, SeccompMode, ThreadKind, Violation,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const EPERM: Violation = Violation::Errno(libc::EPERM);

/// Runs `body` in a new thread (whose filter dies with it) and returns its result.
fn in_thread<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(body)
        .join()
        .expect("test thread panicked")
}

/// The errno of the last failed call, or 0 when `ret` says it succeeded.
fn errno_of(ret: libc::c_long) -> i32 {
    if ret >= 0 {
        return 0;
    }
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn socket() -> i32 {
    // SAFETY: plain syscall with integer arguments; a returned descriptor is closed.
    let ret = unsafe { libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_STREAM, 0) };
    if ret >= 0 {
        // SAFETY: `ret` is a descriptor we own.
        unsafe { libc::close(ret as i32) };
    }
    errno_of(ret)
}

/// Opens `/proc/sys/vm/overcommit_memory` for reading, as glibc's malloc does when a heap
/// shrinks.
fn openat() -> i32 {
    let path = c"/proc/sys/vm/overcommit_memory";
    // SAFETY: the path is NUL-terminated; a returned descriptor is closed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if ret >= 0 {
        // SAFETY: `ret` is a descriptor we own.
        unsafe { libc::close(ret as i32) };
    }
    errno_of(ret)
}

fn execve() -> i32 {
    let path = c"/bin/true";
    let argv = [path.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    // SAFETY: NUL-terminated path and null-terminated argv/envp arrays that outlive the call.
    // Were the call to succeed the test process would become /bin/true and the test fail.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_execve,
            path.as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
        )
    };
    errno_of(ret)
}

/// A fork through raw `clone` (no CLONE_THREAD); a child that got through exits at once.
fn fork() -> i32 {
    // SAFETY: clone with SIGCHLD only is fork; the child calls only `_exit`, and the parent
    // reaps it.
    let ret = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
    if ret == 0 {
        // SAFETY: in the child: leave at once.
        unsafe { libc::_exit(0) };
    }
    if ret > 0 {
        // SAFETY: reaps the child created above.
        unsafe { libc::waitpid(ret as i32, std::ptr::null_mut(), 0) };
    }
    errno_of(ret)
}

fn clock_gettime() -> i32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: the raw syscall (not the vDSO) writes one timespec to `ts`.
    let ret = unsafe { libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut ts) };
    errno_of(ret)
}

fn ioctl(request: u64) -> i32 {
    // SAFETY: descriptor -1 cannot be acted on; the kernel fails the call with EBADF (or the
    // filter with EPERM) before looking at the argument.
    let ret = unsafe { libc::syscall(libc::SYS_ioctl, -1, request, 0) };
    errno_of(ret)
}

fn mmap(prot: i32) -> i32 {
    // SAFETY: a fresh anonymous mapping, unmapped right away.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    }
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(p, 4096) };
    0
}

/// Eventfd write and read, as kicks, irqfds and doorbells do.
fn eventfd_round_trip(evt: &EventFd) {
    evt.write(3).expect("eventfd write");
    assert_eq!(evt.read().expect("eventfd read"), 3);
}

const KVM_RUN: u64 = 0xae80;
const KVM_CREATE_VCPU: u64 = 0xae41;
const TIOCGWINSZ: u64 = libc::TIOCGWINSZ;

#[test]
fn every_kind_keeps_its_work_and_loses_the_rest() {
    for kind in ThreadKind::ALL {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let (socket, openat, execve, fork, clock) = in_thread(move || {
            apply(kind, EPERM).unwrap();
            eventfd_round_trip(&evt);
            eprintln!("seccomp test: {kind} thread can still log");
            let buf = vec![0u8; 1 << 20]; // allocator: mmap/munmap
            drop(buf);
            (socket(), openat(), execve(), fork(), clock_gettime())
        });
        assert_eq!(clock, 0, "{kind}: clock_gettime");
        // Only an NBD connection's thread makes sockets (to reconnect).
        let want_socket = if kind == ThreadKind::Network {
            0
        } else {
            libc::EPERM
        };
        assert_eq!(socket, want_socket, "{kind}: socket");
        // Refused with EACCES whatever the violation action: glibc copes with that.
        assert_eq!(openat, libc::EACCES, "{kind}: openat");
        assert_eq!(execve, libc::EPERM, "{kind}: execve");
        assert_eq!(fork, libc::EPERM, "{kind}: fork");
    }
}

#[test]
fn only_vcpu_threads_run_the_guest() {
    for kind in ThreadKind::ALL {
        let (run, create, tty) = in_thread(move || {
            apply(kind, EPERM).unwrap();
            (ioctl(KVM_RUN), ioctl(KVM_CREATE_VCPU), ioctl(TIOCGWINSZ))
        });
        let want_run = if kind == ThreadKind::Vcpu {
            libc::EBADF
        } else {
            libc::EPERM
        };
        assert_eq!(run, want_run, "{kind}: KVM_RUN");
        assert_eq!(create, libc::EPERM, "{kind}: KVM_CREATE_VCPU");
        assert_eq!(tty, libc::EPERM, "{kind}: TIOCGWINSZ");
    }
}

#[test]
fn no_thread_maps_new_code() {
    for kind in ThreadKind::ALL {
        let (rw, rx) = in_thread(move || {
            apply(kind, EPERM).unwrap();
            (
                mmap(libc::PROT_READ | libc::PROT_WRITE),
                mmap(libc::PROT_READ | libc::PROT_EXEC),
            )
        });
        assert_eq!(rw, 0, "{kind}: rw mapping");
        assert_eq!(rx, libc::EPERM, "{kind}: executable mapping");
    }
}

#[test]
fn a_vcpu_thread_starts_device_and_worker_threads() {
    // At DRIVER_OK the vCPU thread starts the queue handlers and workers; they inherit its
    // filter, then add their own.
    let started = in_thread(|| {
        apply(ThreadKind::Vcpu, EPERM).unwrap();
        [ThreadKind::Device, ThreadKind::Worker].map(|kind| {
            let evt = EventFd::new(EFD_NONBLOCK).unwrap();
            std::thread::Builder::new()
                .name(format!("{kind}-child"))
                .spawn(move || {
                    apply(kind, EPERM).unwrap();
                    eventfd_round_trip(&evt);
                    let epoll = if kind == ThreadKind::Device {
                        vmm_sys_util::epoll::Epoll::new().map(drop).is_ok()
                    } else {
                        true
                    };
                    (epoll, socket(), ioctl(KVM_RUN))
                })
                .map(|h| h.join().unwrap())
        })
    });
    for (kind, r) in [ThreadKind::Device, ThreadKind::Worker].iter().zip(started) {
        let (epoll, socket, run) = r.unwrap_or_else(|e| panic!("{kind}: spawn failed: {e}"));
        assert!(epoll, "{kind}: epoll");
        assert_eq!(socket, libc::EPERM, "{kind}: socket");
        assert_eq!(run, libc::EPERM, "{kind}: KVM_RUN");
    }
}

#[test]
fn a_network_thread_connects_as_an_nbd_reconnection_does() {
    // What backend-nbd's connection thread does on a reconnection: a Unix or TCP connect
    // (with a timeout), socket options, a blocking handshake, then a non-blocking socket
    // added to a queue's epoll set.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = tcp.local_addr().unwrap();
    let epoll = vmm_sys_util::epoll::Epoll::new().unwrap();
    let set = std::os::fd::AsRawFd::as_raw_fd(&epoll);
    let (u, t) = in_thread(move || {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        use std::time::Duration;
        apply(ThreadKind::Network, EPERM).unwrap();
        let u = std::os::unix::net::UnixStream::connect(&path).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            s.write_all(b"hello")?;
            s.set_nonblocking(true)?;
            Ok(())
        });
        let t = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).and_then(
            |mut s| {
                s.set_nodelay(true)?;
                s.set_write_timeout(Some(Duration::from_secs(1)))?;
                s.write_all(b"hello")?;
                s.set_nonblocking(true)?;
                let ev = libc::epoll_event {
                    events: libc::EPOLLIN as u32,
                    u64: 1,
                };
                // SAFETY: adds a live socket to a live epoll set with a valid event.
                let added = unsafe {
                    libc::epoll_ctl(
                        set,
                        libc::EPOLL_CTL_ADD,
                        s.as_raw_fd(),
                        &ev as *const _ as *mut _,
                    )
                };
                match added {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            },
        );
        (u.map_err(|e| e.to_string()), t.map_err(|e| e.to_string()))
    });
    assert_eq!(u, Ok(()), "unix");
    assert_eq!(t, Ok(()), "tcp");
    drop((unix, tcp, epoll));
}

#[test]
fn device_and_worker_threads_cannot_start_threads() {
    for kind in [ThreadKind::Device, ThreadKind::Worker, ThreadKind::Main] {
        let spawned = in_thread(move || {
            apply(kind, EPERM).unwrap();
            std::thread::Builder::new().spawn(|| ()).map(|h| h.join())
        });
        assert!(spawned.is_err(), "{kind}: spawned a thread");
    }
}

#[test]
fn the_vcpu_list_covers_the_threads_it_starts() {
    let vcpu = allowed_syscalls(ThreadKind::Vcpu);
    for kind in [ThreadKind::Device, ThreadKind::Worker] {
        let missing: Vec<_> = allowed_syscalls(kind)
            .into_iter()
            .filter(|nr| !vcpu.contains(nr))
            .collect();
        assert!(
            missing.is_empty(),
            "{kind} needs {missing:?}, not in the vcpu list"
        );
    }
    assert!(!allowed_syscalls(ThreadKind::Worker).contains(&libc::SYS_epoll_wait));
}

#[test]
fn only_main_and_metrics_create_files_and_none_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    for kind in ThreadKind::ALL {
        let tmp = dir.path().join(format!("{kind}.json.tmp"));
        let done = dir.path().join(format!("{kind}.json"));
        let (write, rename, read) = in_thread(move || {
            apply(kind, EPERM).unwrap();
            let write = std::fs::write(&tmp, b"{}").map_err(|e| e.raw_os_error());
            let rename = std::fs::rename(&tmp, &done).map_err(|e| e.raw_os_error());
            let read = std::fs::read(&done).map_err(|e| e.raw_os_error());
            (write, rename, read)
        });
        if matches!(kind, ThreadKind::Main | ThreadKind::Metrics) {
            assert_eq!(write, Ok(()), "{kind}: create");
            assert_eq!(rename, Ok(()), "{kind}: rename");
        } else {
            assert_eq!(write, Err(Some(libc::EPERM)), "{kind}: create");
        }
        assert_eq!(read, Err(Some(libc::EACCES)), "{kind}: read");
    }
}

#[test]
fn off_installs_nothing_and_log_allows() {
    for mode in [SeccompMode::Off, SeccompMode::Log] {
        let socket = in_thread(move || {
            apply_mode(ThreadKind::Worker, mode).unwrap();
            socket()
        });
        assert_eq!(socket, 0, "--seccomp {mode}");
    }
}

#[test]
fn probe_checks_without_filtering_the_caller() {
    for mode in [SeccompMode::On, SeccompMode::Log, SeccompMode::Off] {
        vmm::seccomp::probe(mode).unwrap();
    }
    // The calling thread is still free: it can open a file for reading.
    assert!(std::fs::read("/proc/self/status").is_ok());
}

#[test]
fn modes_parse() {
    assert_eq!(SeccompMode::default(), SeccompMode::On);
    for mode in [SeccompMode::On, SeccompMode::Off, SeccompMode::Log] {
        assert_eq!(mode_from_str(&mode.to_string()).unwrap(), mode);
    }
    assert_eq!(SeccompMode::On.violation(), Some(Violation::KillProcess));
    assert_eq!(SeccompMode::Off.violation(), None);
    let e = mode_from_str("strict").unwrap_err();
    assert!(e.to_string().contains("on, off or log"), "{e}");
}

/// Set in the environment of the child process `kill_child` runs in.
const CHILD_ENV: &str = "VMM_SECCOMP_KILL_CHILD";

/// In a child process (see `violations_kill_the_process_with_sigsys`): applies the kind's
/// filter with the default action, shows it still runs, then makes a forbidden call.
#[test]
fn kill_child() {
    let Ok(kind) = std::env::var(CHILD_ENV) else {
        return;
    };
    let kind = *ThreadKind::ALL
        .iter()
        .find(|k| k.to_string() == kind)
        .expect("known kind");
    in_thread(move || {
        apply_mode(kind, SeccompMode::On).unwrap();
        let line = b"filter applied\n";
        // SAFETY: writes a buffer we own to stdout.
        unsafe { libc::write(1, line.as_ptr().cast(), line.len()) };
        // No kind may execute a program (sockets, the old probe, are a network thread's).
        execve();
        // Not reached: the kernel killed the process.
        // SAFETY: write as above.
        unsafe { libc::write(1, b"survived\n".as_ptr().cast(), 9) };
    });
}

#[test]
fn violations_kill_the_process_with_sigsys() {
    let exe = std::env::current_exe().unwrap();
    for kind in ThreadKind::ALL {
        let out = Command::new(&exe)
            .args(["--exact", "kill_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, kind.to_string())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("filter applied"), "{kind}: {stdout}");
        assert!(!stdout.contains("survived"), "{kind}: {stdout}");
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGSYS),
            "{kind}: {:?}",
            out.status
        );
    }
}

/// The threads of process `pid` whose `Seccomp:` line in `/proc` is not 2 (filter mode), by
/// name, and how many threads there are.
fn unfiltered_threads(pid: u32) -> (Vec<String>, usize) {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/<pid>/task");
    let mut unfiltered = Vec::new();
    let mut threads = 0;
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        threads += 1;
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
                .unwrap_or("?")
                .to_string()
        };
        if field("Seccomp:") != "2" {
            unfiltered.push(format!(
                "{} (Seccomp: {})",
                field("Name:"),
                field("Seccomp:")
            ));
        }
    }
    (unfiltered, threads)
}

/// Starts the VMM with the guest's benchmark in `io_mode` (plus `extra` options), waits until
/// the guest's I/O runs, and returns what [`unfiltered_threads`] finds then.
fn threads_while_running(io_mode: &str, extra: &[&str]) -> (Vec<String>, usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(64 << 20))
        .expect("image");
    threads_while_serving(
        io_mode,
        extra,
        &format!("path={},queues=2", image.display()),
    )
}

/// [`threads_while_running`] on the disk `--disk disk` names.
fn threads_while_serving(io_mode: &str, extra: &[&str], disk: &str) -> (Vec<String>, usize) {
    use std::io::{BufRead, BufReader};
    real_guest::require_kvm();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .arg("--kernel")
        .arg(real_guest::guest_elf())
        .args(["--memory", "256M", "--io-mode", io_mode])
        .args(extra)
        .args([
            "--cmdline",
            "tests=none bench=randread bs=4096 qd=32 secs=3 completion=poll",
        ])
        .arg("--disk")
        .arg(disk)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start vmm");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    // The guest prints this line when its measured I/O starts: every thread is up by then.
    let started = lines.any(|l| l.is_ok_and(|l| l.starts_with("# bench: start")));
    assert!(started, "{io_mode}: the guest's benchmark never started");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let found = unfiltered_threads(child.id());
    let _ = child.kill();
    let _ = child.wait();
    found
}

#[test]
fn every_thread_of_a_running_vmm_is_filtered() {
    for (mode, extra) in [
        ("vcpu", &[][..]),
        ("iothread", &[][..]),
        ("dataplane", &[][..]),
        // Two pool workers that get every request: the worker threads exist and run.
        ("workers", &["--workers", "2", "--handoff-depth", "0"][..]),
    ] {
        let (unfiltered, threads) = threads_while_running(mode, extra);
        assert!(threads >= 3, "{mode}: only {threads} threads seen");
        assert!(
            unfiltered.is_empty(),
            "{mode}: threads without a seccomp filter after set-up: {unfiltered:?}"
        );
    }
    // The check can fail: with --seccomp off no thread is filtered, and it says so.
    let (unfiltered, threads) = threads_while_running("dataplane", &["--seccomp", "off"]);
    assert_eq!(unfiltered.len(), threads, "--seccomp off: {unfiltered:?}");
}

#[test]
fn the_connection_threads_of_an_nbd_disk_are_filtered() {
    // nbdkit's memory plugin allows several connections: one per queue, each with a thread.
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("nbd.sock");
    let mut server = Command::new("nbdkit")
        .arg("-U")
        .arg(&sock)
        .args(["-f", "memory", "size=64M"])
        .spawn()
        .expect("start nbdkit (.ci/run installs it)");
    let t = std::time::Instant::now();
    while !sock.exists() && t.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let disk = format!("uri=nbd+unix:///?socket={},queues=2", sock.display());
    let (unfiltered, threads) = threads_while_serving("dataplane", &[], &disk);
    let _ = server.kill();
    let _ = server.wait();
    assert!(threads >= 5, "only {threads} threads seen");
    assert!(
        unfiltered.is_empty(),
        "threads without a seccomp filter after set-up: {unfiltered:?}"
    );
}
