//! Where connections come from: TCP addresses, Unix sockets, or the
//! listeners systemd passes (socket activation). Part of the server layer.
//!
//! `--listen` may be given several times; `unix:PATH` is a Unix socket. A
//! Unix socket is created with `--unix-mode` (0660 by default); a file left
//! at its path by a server that is gone (nothing accepts on it) is replaced,
//! one that a live server answers on, or that is not a socket, stops the
//! start. The socket file is removed when the server stops. Under systemd
//! (`LISTEN_PID` is this process, `LISTEN_FDS` set) the inherited sockets
//! are served instead and `--listen` is not bound: the listening sockets
//! outlive a restart, so no connection is refused while the server is down.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::task::{Context, Poll};

use tokio::net::{TcpListener, TcpSocket, TcpStream, UnixListener, UnixStream};

/// An address to listen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `IP:PORT`.
    Tcp(SocketAddr),
    /// `unix:PATH`.
    Unix(PathBuf),
}

impl FromStr for Address {
    type Err = String;

    fn from_str(s: &str) -> Result<Address, String> {
        match s.strip_prefix("unix:") {
            Some("") => Err("unix: needs a path, as in unix:/run/comethub.sock".to_owned()),
            Some(path) => Ok(Address::Unix(PathBuf::from(path))),
            None => s
                .parse()
                .map(Address::Tcp)
                .map_err(|_| format!("{s}: use IP:PORT or unix:PATH")),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(addr) => write!(f, "{addr}"),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A listening socket.
#[derive(Debug)]
pub enum Listener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A Unix socket, and its path if this process made it (and removes it).
    Unix(UnixListener, Option<PathBuf>),
}

/// An accepted connection.
#[derive(Debug)]
pub enum Connection {
    /// Over TCP.
    Tcp(TcpStream),
    /// Over a Unix socket.
    Unix(UnixStream),
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Listener {
        Listener::Tcp(listener)
    }
}

impl Listener {
    /// Accepts the next connection, if one is waiting.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Connection>> {
        match self {
            Listener::Tcp(l) => l.poll_accept(cx).map_ok(|(s, _)| Connection::Tcp(s)),
            Listener::Unix(l, _) => l.poll_accept(cx).map_ok(|(s, _)| Connection::Unix(s)),
        }
    }

    /// Where it listens, for the log.
    pub fn address(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "tcp:?".to_owned(), |a| a.to_string()),
            Listener::Unix(l, _) => match l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
            {
                Some(path) => format!("unix:{path}"),
                None => "unix:?".to_owned(),
            },
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, Some(path)) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Binds a listener with SO_REUSEADDR and a deep accept backlog.
pub fn tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Binds every address (Unix sockets with `mode`).
pub fn bind(addresses: &[Address], mode: u32) -> Result<Vec<Listener>, String> {
    addresses
        .iter()
        .map(|address| match address {
            Address::Tcp(addr) => tcp(*addr)
                .map(Listener::Tcp)
                .map_err(|e| format!("cannot listen on {addr}: {e}")),
            Address::Unix(path) => {
                bind_unix(path, mode).map_err(|e| format!("unix:{}: {e}", path.display()))
            }
        })
        .collect()
}

fn bind_unix(path: &Path, mode: u32) -> io::Result<Listener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ));
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another server is listening on it",
                ));
            }
            // Left by a server that is gone.
            std::fs::remove_file(path)?;
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(Listener::Unix(listener, Some(path.to_owned())))
}

/// The listeners systemd passed, if it started this process with some.
pub fn inherited() -> Result<Option<Vec<Listener>>, String> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    let mut listeners = Vec::with_capacity(fds.len());
    for i in 0..fds.len() {
        let listener = match fds.take_tcp_listener(i) {
            Ok(Some(l)) => {
                l.set_nonblocking(true).map_err(|e| e.to_string())?;
                TcpListener::from_std(l).map(Listener::Tcp)
            }
            _ => match fds.take_unix_listener(i) {
                Ok(Some(l)) => {
                    l.set_nonblocking(true).map_err(|e| e.to_string())?;
                    UnixListener::from_std(l).map(|l| Listener::Unix(l, None))
                }
                _ => {
                    return Err(format!(
                        "inherited socket {} (fd {}) is not a listening TCP or Unix stream socket",
                        i,
                        i + 3
                    ));
                }
            },
        };
        listeners.push(listener.map_err(|e| e.to_string())?);
    }
    Ok(Some(listeners))
}

/// For each listener, whether it refuses publishes: with `--publish-on`,
/// every listener it does not name. Naming an address nothing listens on is
/// an error (nobody could publish).
pub fn read_only(listeners: &[Listener], publish_on: &[Address]) -> Result<Vec<bool>, String> {
    let addresses: Vec<String> = listeners.iter().map(Listener::address).collect();
    let named: Vec<String> = publish_on.iter().map(Address::to_string).collect();
    if let Some(nowhere) = named.iter().find(|a| !addresses.contains(a)) {
        return Err(format!("--publish-on {nowhere} names no listener"));
    }
    Ok(addresses
        .iter()
        .map(|a| !named.is_empty() && !named.contains(a))
        .collect())
}
