//! NBD servers for runs over the network backend: qemu-storage-daemon or nbdkit serving an
//! image on a Unix socket, started and killed by xtask (the `Drop` kills, so every exit path,
//! early returns and panics included, takes the server down).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which server serves the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NbdServerKind {
    /// `qemu-storage-daemon` with an NBD export of a `file` node, `cache.direct=on`.
    Qsd,
    /// `nbdkit` with its `file` plugin.
    Nbdkit,
}

impl NbdServerKind {
    /// From `--backend nbd|nbdkit`.
    pub fn from_backend(name: &str) -> Option<NbdServerKind> {
        match name {
            "nbd" | "qsd" => Some(NbdServerKind::Qsd),
            "nbdkit" => Some(NbdServerKind::Nbdkit),
            _ => None,
        }
    }

    /// The server's program name.
    pub fn program(self) -> &'static str {
        match self {
            NbdServerKind::Qsd => "qemu-storage-daemon",
            NbdServerKind::Nbdkit => "nbdkit",
        }
    }
}

/// A running server; killed and waited for when dropped.
pub struct NbdServer {
    child: Child,
    socket: PathBuf,
    kind: NbdServerKind,
}

impl NbdServer {
    /// Serves `image` (read-write) on the Unix socket `socket`, export name `export`, and
    /// waits until it accepts connections. qemu-storage-daemon opens the image with
    /// `O_DIRECT`.
    pub fn start(
        kind: NbdServerKind,
        image: &Path,
        socket: &Path,
        export: &str,
    ) -> Result<NbdServer, String> {
        Self::start_with(kind, image, socket, export, true)
    }

    /// [`start`](Self::start), with `direct=false` for images on filesystems that refuse
    /// `O_DIRECT` (tmpfs).
    pub fn start_with(
        kind: NbdServerKind,
        image: &Path,
        socket: &Path,
        export: &str,
        direct: bool,
    ) -> Result<NbdServer, String> {
        let _ = std::fs::remove_file(socket);
        let mut cmd = Command::new(kind.program());
        match kind {
            NbdServerKind::Qsd => {
                cmd.arg("--blockdev").arg(format!(
                    "driver=file,node-name=f,filename={},cache.direct={}",
                    image.display(),
                    if direct { "on" } else { "off" }
                ));
                cmd.arg("--nbd-server")
                    .arg(format!("addr.type=unix,addr.path={}", socket.display()));
                cmd.arg("--export").arg(format!(
                    "type=nbd,id=e,node-name=f,name={export},writable=on"
                ));
            }
            NbdServerKind::Nbdkit => {
                cmd.arg("-U").arg(socket).args(["-f", "-e", export, "file"]);
                cmd.arg(format!("file={}", image.display()));
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {} ({e}): install it", kind.program()))?;
        let mut server = NbdServer {
            child,
            socket: socket.to_path_buf(),
            kind,
        };
        let t = Instant::now();
        // The socket appears once the server listens; a probing connection would make it
        // log a broken pipe.
        while !socket.exists() {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("{} exited at start: {status}", kind.program()));
            }
            if t.elapsed() > Duration::from_secs(20) {
                return Err(format!(
                    "{} did not listen on {}",
                    kind.program(),
                    socket.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    /// The `--disk uri=` value for `export` on this server.
    pub fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    /// Which server this is.
    pub fn kind(&self) -> NbdServerKind {
        self.kind
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}
