//! A blocking control-socket client: `vdpa-emu ctl`, `validate --socket` (GUEST_ANNOUNCE on a
//! served device) and the scenario `ctl` step use it.

use super::protocol::{Request, Response};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("control socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("control socket {path}: the server closed the connection")]
    Closed { path: PathBuf },
    #[error("control socket {path}: unreadable response {line:?}: {detail}")]
    BadResponse {
        path: PathBuf,
        line: String,
        detail: String,
    },
    #[error("{0}")]
    Refused(String),
}

/// One connection to a control socket.
#[derive(Debug)]
pub struct CtlClient {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// The control socket `serve` opens for a vfio-user socket when `--ctl` is not given.
pub fn default_ctl_path(vfio_socket: &Path) -> PathBuf {
    let mut s = vfio_socket.as_os_str().to_owned();
    s.push(".ctl");
    PathBuf::from(s)
}

impl CtlClient {
    /// Connects to `path`; requests time out after `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, CtlError> {
        let connect_err = |source| CtlError::Connect {
            path: path.to_owned(),
            source,
        };
        let s = UnixStream::connect(path).map_err(connect_err)?;
        s.set_read_timeout(Some(timeout)).map_err(connect_err)?;
        s.set_write_timeout(Some(timeout)).map_err(connect_err)?;
        let writer = s.try_clone().map_err(connect_err)?;
        Ok(CtlClient {
            path: path.to_owned(),
            reader: BufReader::new(s),
            writer,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one request and returns the response, whether it says ok or not.
    pub fn call_raw(&mut self, req: &Request) -> Result<Response, CtlError> {
        let mut line = serde_json::to_vec(req).expect("requests serialize");
        line.push(b'\n');
        let io_err = |path: &Path, source| CtlError::Io {
            path: path.to_owned(),
            source,
        };
        self.writer
            .write_all(&line)
            .map_err(|e| io_err(&self.path, e))?;
        let mut resp = String::new();
        if self
            .reader
            .read_line(&mut resp)
            .map_err(|e| io_err(&self.path, e))?
            == 0
        {
            return Err(CtlError::Closed {
                path: self.path.clone(),
            });
        }
        serde_json::from_str(resp.trim_end()).map_err(|e| CtlError::BadResponse {
            path: self.path.clone(),
            line: resp.trim_end().to_string(),
            detail: e.to_string(),
        })
    }

    /// Sends one request; a refusal becomes [`CtlError::Refused`].
    pub fn call(&mut self, req: &Request) -> Result<Response, CtlError> {
        let r = self.call_raw(req)?;
        if r.ok {
            Ok(r)
        } else {
            Err(CtlError::Refused(
                r.error.unwrap_or_else(|| "refused without a reason".into()),
            ))
        }
    }
}
