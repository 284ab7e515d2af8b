//! NBD URIs as QEMU and libnbd write them: `nbd://HOST[:PORT]/EXPORT` and
//! `nbd+unix:///EXPORT?socket=PATH`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The IANA port of NBD, used when a `nbd://` URI names none.
pub const NBD_DEFAULT_PORT: u16 = 10809;

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NbdAddress {
    /// A TCP host (name or address; IPv6 without brackets) and port.
    Tcp {
        /// Host name or address.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// A Unix domain socket.
    Unix(PathBuf),
}

/// A parsed NBD URI: the server's address and the export's name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NbdUri {
    /// Where to connect.
    pub address: NbdAddress,
    /// The export name (may be empty: the server's default export).
    pub export: String,
}

/// Why a URI was refused; the message says what form is expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    /// Neither `nbd://` nor `nbd+unix://`.
    #[error("unknown scheme: write nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH")]
    Scheme,
    /// `nbd://` without a host.
    #[error("no host: write nbd://HOST[:PORT]/EXPORT")]
    NoHost,
    /// A port that is not a number from 1 to 65535.
    #[error("port '{0}' is not a number from 1 to 65535")]
    Port(String),
    /// `nbd+unix://` with a host or without `?socket=`.
    #[error("a Unix URI has no host and needs ?socket=PATH: write nbd+unix:///EXPORT?socket=PATH")]
    UnixSocket,
    /// A query parameter other than `socket` (or one on a TCP URI).
    #[error("unsupported query '{0}': only nbd+unix URIs take ?socket=PATH")]
    Query(String),
    /// A `%` not followed by two hex digits, or an export that is not UTF-8.
    #[error("bad percent-encoding in '{0}'")]
    Percent(String),
}

fn percent_decode(s: &str) -> Result<String, UriError> {
    let bad = || UriError::Percent(s.to_string());
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or_else(bad)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

impl FromStr for NbdUri {
    type Err = UriError;

    fn from_str(s: &str) -> Result<Self, UriError> {
        let (unix, rest) = if let Some(r) = s.strip_prefix("nbd+unix://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("nbd://").or(s.strip_prefix("nbd+tcp://")) {
            (false, r)
        } else {
            return Err(UriError::Scheme);
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let export = percent_decode(path)?;
        if unix {
            let socket = match query.map(|q| q.split_once('=')) {
                Some(Some(("socket", p))) if !p.is_empty() && authority.is_empty() => {
                    percent_decode(p)?
                }
                Some(Some((k, _))) if k != "socket" => return Err(UriError::Query(k.into())),
                _ => return Err(UriError::UnixSocket),
            };
            return Ok(NbdUri {
                address: NbdAddress::Unix(PathBuf::from(socket)),
                export,
            });
        }
        if let Some(q) = query {
            return Err(UriError::Query(q.to_string()));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or(UriError::NoHost)?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(UriError::NoHost);
        }
        let port = match port {
            None => NBD_DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| UriError::Port(p.to_string()))?,
        };
        Ok(NbdUri {
            address: NbdAddress::Tcp {
                host: host.to_string(),
                port,
            },
            export,
        })
    }
}

impl fmt::Display for NbdUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.address {
            NbdAddress::Tcp { host, port } if host.contains(':') => {
                write!(f, "nbd://[{host}]:{port}/{}", self.export)
            }
            NbdAddress::Tcp { host, port } => write!(f, "nbd://{host}:{port}/{}", self.export),
            NbdAddress::Unix(p) => {
                write!(f, "nbd+unix:///{}?socket={}", self.export, p.display())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_qemu_accepts() {
        let u: NbdUri = "nbd://example.org/disk".parse().unwrap();
        assert_eq!(
            u.address,
            NbdAddress::Tcp {
                host: "example.org".into(),
                port: 10809
            }
        );
        assert_eq!(u.export, "disk");
        let u: NbdUri = "nbd://[::1]:2000/".parse().unwrap();
        assert_eq!(
            u.address,
            NbdAddress::Tcp {
                host: "::1".into(),
                port: 2000
            }
        );
        assert_eq!(u.export, "");
        let u: NbdUri = "nbd+unix:///my%20disk?socket=/tmp/s.sock".parse().unwrap();
        assert_eq!(u.address, NbdAddress::Unix("/tmp/s.sock".into()));
        assert_eq!(u.export, "my disk");
        assert_eq!(u.to_string(), "nbd+unix:///my disk?socket=/tmp/s.sock");
    }

    #[test]
    fn refuses_malformed_uris() {
        for (s, e) in [
            ("http://x/y", UriError::Scheme),
            ("nbd:///x", UriError::NoHost),
            ("nbd://h:0/x", UriError::Port("0".into())),
            ("nbd://h:99999/x", UriError::Port("99999".into())),
            ("nbd+unix:///x", UriError::UnixSocket),
            ("nbd+unix://host/x?socket=/s", UriError::UnixSocket),
            ("nbd+unix:///x?sock=/s", UriError::Query("sock".into())),
            ("nbd://h/x?socket=/s", UriError::Query("socket=/s".into())),
            ("nbd://h/%zz", UriError::Percent("%zz".into())),
        ] {
            assert_eq!(s.parse::<NbdUri>().unwrap_err(), e, "{s}");
        }
    }
}
