//! QEMU as the front end of our vhost-user-blk back end: the back end's process (killed when
//! dropped, so every exit path of a run ends it) and QEMU's command line for it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::runner::{qemu_machine, QEMU_MEMORY_MIB};

/// A running back end; dropping it ends the process (SIGTERM, then SIGKILL after a grace
/// period) and removes its socket.
#[derive(Debug)]
pub struct Backend {
    child: Child,
    socket: PathBuf,
}

impl Backend {
    /// Starts `binary --socket socket --disk disk` and waits until the socket accepts.
    pub fn start(binary: &Path, socket: &Path, disk: &str) -> Result<Self, String> {
        let mut cmd = Command::new(binary);
        cmd.arg("--socket").arg(socket).args(["--disk", disk]);
        Backend::spawn(cmd, socket)
    }

    /// Starts `cmd`, a back end that will listen on `socket`, and waits until the socket
    /// exists.
    pub fn spawn(mut cmd: Command, socket: &Path) -> Result<Self, String> {
        let _ = std::fs::remove_file(socket);
        let program = format!("{:?}", cmd.get_program());
        // SAFETY: the closure runs in the child between fork and exec and only calls
        // prctl(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                // Killed with xtask too (Ctrl-C, a panic that aborts), where `Drop` never runs;
                // SIGTERM, so it still drains and syncs.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        let mut b = Backend {
            child,
            socket: socket.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if let Ok(Some(status)) = b.child.try_wait() {
                return Err(format!("{program} exited at start ({status})"));
            }
            if Instant::now() > deadline {
                return Err(format!("{program} did not create its socket within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(b)
    }

    /// The process id (for CPU accounting).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ends the back end with SIGTERM (it drains and syncs) and returns whether it exited 0.
    pub fn stop(mut self) -> bool {
        self.terminate()
    }

    fn terminate(&mut self) -> bool {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status.success();
        }
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return false;
                }
            }
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.terminate();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// QEMU booting `guest` with `cmdline`, its RAM shared (memfd) so a vhost-user back end can
/// map it, and one vhost-user-blk-pci disk with `queues` queues served on `socket`.
pub fn qemu_vhost_user_command(
    qemu: &Path,
    guest: &Path,
    cmdline: &str,
    socket: &Path,
    queues: u16,
) -> Command {
    let mut cmd = qemu_machine(qemu, guest, cmdline);
    cmd.args([
        "-object",
        &format!("memory-backend-memfd,id=mem,size={QEMU_MEMORY_MIB}M,share=on"),
        "-machine",
        "memory-backend=mem",
        "-chardev",
    ])
    .arg(format!("socket,id=vu,path={}", socket.display()))
    .args([
        "-device",
        &format!("vhost-user-blk-pci,chardev=vu,num-queues={queues},disable-legacy=on"),
    ]);
    cmd
}

/// qemu-storage-daemon exporting `image` as a vhost-user-blk back end on `socket`, served by
/// an iothread with io_uring (`direct`: O_DIRECT), one queue.
pub fn qsd_command(image: &Path, socket: &Path, direct: bool) -> Command {
    let mut cmd = Command::new("qemu-storage-daemon");
    cmd.arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=file0,filename={},cache.direct={},aio=io_uring",
            image.display(),
            if direct { "on" } else { "off" }
        ))
        .args(["--blockdev", "driver=raw,node-name=d0,file=file0"])
        .args(["--object", "iothread,id=io0", "--export"])
        .arg(format!(
            "type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path={},writable=on,num-queues=1,iothread=io0",
            socket.display()
        ));
    cmd
}
