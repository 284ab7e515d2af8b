//! Connecting and the fixed newstyle handshake with `NBD_OPT_GO` (section "Fixed newstyle
//! negotiation" of `doc/proto.md`), done blocking with a deadline before transmission starts.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::proto::*;
use crate::uri::{NbdAddress, NbdUri};
use crate::NbdError;

/// The longest option reply we accept: information replies are a few bytes, error
/// messages a line; anything longer is a broken or hostile server.
const MAX_OPTION_REPLY: u32 = 64 * 1024;

/// The largest request payload assumed when the server states none (the protocol's
/// advice: servers may refuse more than 32 MiB).
pub const DEFAULT_MAX_PAYLOAD: u32 = 32 << 20;

/// What `NBD_OPT_GO` told us about the export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags (`NBD_FLAG_*`).
    pub flags: u16,
    /// Minimum block size: requests must be aligned to it.
    pub min_block: u32,
    /// Preferred block size.
    pub preferred_block: u32,
    /// Largest payload of one request.
    pub max_payload: u32,
}

impl ExportInfo {
    fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
    /// The export refuses writes.
    pub fn readonly(&self) -> bool {
        self.has(NBD_FLAG_READ_ONLY)
    }
    /// The server accepts `NBD_CMD_FLUSH`.
    pub fn can_flush(&self) -> bool {
        self.has(NBD_FLAG_SEND_FLUSH)
    }
    /// The server accepts `NBD_CMD_TRIM`.
    pub fn can_trim(&self) -> bool {
        self.has(NBD_FLAG_SEND_TRIM)
    }
    /// The server accepts `NBD_CMD_WRITE_ZEROES`.
    pub fn can_write_zeroes(&self) -> bool {
        self.has(NBD_FLAG_SEND_WRITE_ZEROES)
    }
    /// Several connections may serve one disk.
    pub fn can_multi_conn(&self) -> bool {
        self.has(NBD_FLAG_CAN_MULTI_CONN)
    }
}

/// A connected stream, TCP or Unix.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t).and(s.set_write_timeout(t)),
            Stream::Unix(s) => s.set_read_timeout(t).and(s.set_write_timeout(t)),
        }
    }

    /// The socket, non-blocking, for the I/O thread.
    pub(crate) fn into_nonblocking_fd(self) -> io::Result<OwnedFd> {
        self.set_timeout(None)?;
        match self {
            Stream::Tcp(s) => {
                s.set_nonblocking(true)?;
                // Requests are small and latency-bound: no Nagle delay.
                s.set_nodelay(true)?;
                Ok(s.into())
            }
            Stream::Unix(s) => {
                s.set_nonblocking(true)?;
                Ok(s.into())
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(b),
            Stream::Unix(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(b),
            Stream::Unix(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

/// Connects to `uri` and negotiates its export, each socket operation bounded by `timeout`.
/// The addresses of a TCP server (none for a Unix socket): looked up once, when the export
/// opens, so that reconnecting needs no name lookup (nor the files and sockets it opens).
pub(crate) fn resolve(uri: &NbdUri) -> Result<Vec<SocketAddr>, NbdError> {
    match &uri.address {
        NbdAddress::Unix(_) => Ok(Vec::new()),
        NbdAddress::Tcp { host, port } => {
            use std::net::ToSocketAddrs;
            let addrs: Vec<SocketAddr> = (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(|source| NbdError::Connect {
                    target: uri.to_string(),
                    source,
                })?
                .collect();
            Ok(addrs)
        }
    }
}

/// Connects to `uri` (at `addrs`, from [`resolve`], for TCP) and negotiates its export.
pub(crate) fn connect(
    uri: &NbdUri,
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<(Stream, ExportInfo), NbdError> {
    let target = uri.to_string();
    let connect_err = |source| NbdError::Connect {
        target: target.clone(),
        source,
    };
    let mut stream = match &uri.address {
        NbdAddress::Unix(p) => Stream::Unix(UnixStream::connect(p).map_err(connect_err)?),
        NbdAddress::Tcp { .. } => {
            let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
            let mut found = None;
            for a in addrs {
                match TcpStream::connect_timeout(a, timeout) {
                    Ok(s) => {
                        found = Some(s);
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            Stream::Tcp(found.ok_or_else(|| connect_err(last))?)
        }
    };
    stream
        .set_timeout(Some(timeout))
        .map_err(|source| NbdError::Io {
            target: target.clone(),
            source,
        })?;
    let info = negotiate(&mut stream, &uri.export).map_err(|e| match e {
        Negotiation::Io(source) => NbdError::Io {
            target: target.clone(),
            source,
        },
        Negotiation::Protocol(reason) => NbdError::Protocol {
            target: target.clone(),
            reason,
        },
        Negotiation::Refused { reply, message } => NbdError::Refused {
            target: target.clone(),
            export: uri.export.clone(),
            reply,
            message,
        },
    })?;
    Ok((stream, info))
}

enum Negotiation {
    Io(io::Error),
    Protocol(String),
    Refused { reply: u32, message: String },
}

impl From<io::Error> for Negotiation {
    fn from(e: io::Error) -> Self {
        Negotiation::Io(e)
    }
}

fn bad(reason: impl Into<String>) -> Negotiation {
    Negotiation::Protocol(reason.into())
}

fn read_exact<const N: usize>(s: &mut impl Read) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    s.read_exact(&mut b)?;
    Ok(b)
}

/// The handshake proper, over any stream (tests drive it over a socket pair).
fn negotiate(s: &mut (impl Read + Write), export: &str) -> Result<ExportInfo, Negotiation> {
    let hello: [u8; 18] = read_exact(s)?;
    if be64(&hello[0..8]) != NBDMAGIC {
        return Err(bad("not an NBD server (no NBDMAGIC)"));
    }
    if be64(&hello[8..16]) != IHAVEOPT {
        return Err(bad("the server speaks oldstyle NBD only"));
    }
    let server_flags = u16::from_be_bytes([hello[16], hello[17]]);
    if server_flags & NBD_FLAG_FIXED_NEWSTYLE == 0 {
        return Err(bad("the server does not speak fixed newstyle"));
    }
    let mut client_flags = NBD_FLAG_C_FIXED_NEWSTYLE;
    if server_flags & NBD_FLAG_NO_ZEROES != 0 {
        client_flags |= NBD_FLAG_C_NO_ZEROES;
    }
    let name = export.as_bytes();
    let name_len = u32::try_from(name.len()).map_err(|_| bad("export name too long"))?;
    let mut msg = Vec::with_capacity(32 + name.len());
    msg.extend_from_slice(&client_flags.to_be_bytes());
    msg.extend_from_slice(&IHAVEOPT.to_be_bytes());
    msg.extend_from_slice(&NBD_OPT_GO.to_be_bytes());
    msg.extend_from_slice(&(4 + name_len + 2 + 2).to_be_bytes());
    msg.extend_from_slice(&name_len.to_be_bytes());
    msg.extend_from_slice(name);
    // One information request: block sizes. Asking for it promises the server that we
    // honour them (section "Block size constraints").
    msg.extend_from_slice(&1u16.to_be_bytes());
    msg.extend_from_slice(&NBD_INFO_BLOCK_SIZE.to_be_bytes());
    s.write_all(&msg)?;

    let mut export_info: Option<(u64, u16)> = None;
    let mut sizes: Option<(u32, u32, u32)> = None;
    loop {
        let head: [u8; 20] = read_exact(s)?;
        if be64(&head[0..8]) != OPT_REPLY_MAGIC {
            return Err(bad("bad option reply magic"));
        }
        if be32(&head[8..12]) != NBD_OPT_GO {
            return Err(bad("option reply for another option"));
        }
        let kind = be32(&head[12..16]);
        let len = be32(&head[16..20]);
        if len > MAX_OPTION_REPLY {
            return Err(bad(format!("option reply of {len} bytes")));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        match kind {
            NBD_REP_ACK => break,
            NBD_REP_INFO if data.len() >= 2 => {
                let info = u16::from_be_bytes([data[0], data[1]]);
                match (info, data.len()) {
                    (NBD_INFO_EXPORT, 12) => {
                        export_info =
                            Some((be64(&data[2..10]), u16::from_be_bytes([data[10], data[11]])))
                    }
                    (NBD_INFO_EXPORT, _) => return Err(bad("NBD_INFO_EXPORT of wrong length")),
                    (NBD_INFO_BLOCK_SIZE, 14) => {
                        sizes = Some((be32(&data[2..6]), be32(&data[6..10]), be32(&data[10..14])))
                    }
                    (NBD_INFO_BLOCK_SIZE, _) => {
                        return Err(bad("NBD_INFO_BLOCK_SIZE of wrong length"))
                    }
                    // Other information we did not ask for may be ignored.
                    _ => {}
                }
            }
            NBD_REP_INFO => return Err(bad("empty NBD_REP_INFO")),
            k if k & NBD_REP_FLAG_ERROR != 0 => {
                let _ = abort(s);
                return Err(Negotiation::Refused {
                    reply: k,
                    message: String::from_utf8_lossy(&data).into_owned(),
                });
            }
            k => return Err(bad(format!("unexpected option reply type {k}"))),
        }
    }
    let (size, flags) =
        export_info.ok_or_else(|| bad("NBD_OPT_GO ended without NBD_INFO_EXPORT"))?;
    if flags & NBD_FLAG_HAS_FLAGS == 0 {
        return Err(bad("transmission flags without NBD_FLAG_HAS_FLAGS"));
    }
    let (min_block, preferred_block, max_payload) = match sizes {
        Some((min, pref, max)) => {
            let valid = min.is_power_of_two()
                && min <= 64 * 1024
                && pref.is_power_of_two()
                && pref >= min
                && max >= min;
            if !valid {
                return Err(bad(format!("invalid block sizes {min}/{pref}/{max}")));
            }
            (min, pref, max.min(DEFAULT_MAX_PAYLOAD))
        }
        None => (1, 4096, DEFAULT_MAX_PAYLOAD),
    };
    Ok(ExportInfo {
        size,
        flags,
        min_block,
        preferred_block,
        max_payload,
    })
}

fn abort(s: &mut impl Write) -> io::Result<()> {
    let mut msg = Vec::with_capacity(16);
    msg.extend_from_slice(&IHAVEOPT.to_be_bytes());
    msg.extend_from_slice(&NBD_OPT_ABORT.to_be_bytes());
    msg.extend_from_slice(&0u32.to_be_bytes());
    s.write_all(&msg)
}
