//! The control socket `vdpa-emu serve` opens next to its vfio-user socket: a listener thread
//! and one thread per connection (at most [`MAX_CONNECTIONS`]), each answering JSON-lines
//! requests (see [`super::protocol`]) against the served device. The vfio-user server never
//! waits for it: requests take the device lock for as long as one register access does.
//!
//! A request whose handling panics is answered with an error and the connection goes on
//! (`answer_contained`); the device is not failed for it: a request reads the device, sets
//! one switch of it (link, a quirk, a fault to inject) or starts or stops a capture, each
//! through one call whose locks (`parking_lot`, which do not poison) are let go as it unwinds.

use super::protocol::{Hello, Request, Response, MAX_LINE, PROTOCOL_VERSION};
use super::stats::StatsReport;
use crate::pcap::LiveCapture;
use crate::vfio_user::sock::{bind_listener, BindError, Ready, Stop};
use device::{Device, InjectedFault, Quirk};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Connections served at once; one more is answered with an error and closed.
pub const MAX_CONNECTIONS: usize = 16;

/// Why the control socket could not start.
#[derive(Debug, thiserror::Error)]
pub enum CtlServerError {
    #[error("control socket: {0}")]
    Bind(#[from] BindError),
    #[error("control socket: {0}")]
    Io(#[from] io::Error),
}

/// What requests act on.
#[derive(Debug, Clone)]
pub struct CtlHandler {
    device: Arc<Device>,
    capture: Arc<LiveCapture>,
}

impl CtlHandler {
    pub fn new(device: Arc<Device>, capture: Arc<LiveCapture>) -> Self {
        CtlHandler { device, capture }
    }

    /// Answers one request line.
    pub fn handle_line(&self, line: &str) -> Response {
        match serde_json::from_str::<Request>(line) {
            Ok(req) => self.handle(req),
            Err(e) => Response::error(format!(
                "malformed request: {e}; expected one JSON object per line like {{\"cmd\":\"stats\"}} (commands: {})",
                Request::COMMANDS.join(", ")
            )),
        }
    }

    /// Answers one request.
    pub fn handle(&self, req: Request) -> Response {
        let _span = tracing::info_span!("ctl", request = ?req).entered();
        let dev = &self.device;
        match req {
            Request::Hello {} => Response {
                hello: Some(Hello {
                    server: format!("vdpa-emu {}", env!("CARGO_PKG_VERSION")),
                    protocol: PROTOCOL_VERSION,
                    commands: Request::COMMANDS.iter().map(|s| s.to_string()).collect(),
                    quirks: Quirk::ALL.iter().map(|q| q.name().to_string()).collect(),
                    faults: InjectedFault::ALL
                        .iter()
                        .map(|f| f.name().to_string())
                        .collect(),
                }),
                ..Response::ok()
            },
            Request::Stats {} => Response {
                stats: Some(StatsReport::of(dev, self.capture.status())),
                ..Response::ok()
            },
            Request::Link { up } => {
                tracing::info!(up, "link set");
                dev.set_link(up);
                Response {
                    link_up: Some(dev.link_up()),
                    ..Response::ok()
                }
            }
            Request::Announce {} => {
                let announced = dev.announce();
                tracing::info!(announced, "announce requested");
                Response {
                    announced: Some(announced),
                    ..Response::ok()
                }
            }
            Request::Quirk { name, on } => match Quirk::parse(&name) {
                Some(q) => {
                    dev.set_quirk(q, on);
                    Response {
                        quirks: Some(dev.quirks().iter().map(|q| q.name().into()).collect()),
                        ..Response::ok()
                    }
                }
                None => Response::error(format!(
                    "unknown quirk {name:?}; known: {}",
                    Quirk::ALL.map(Quirk::name).join(", ")
                )),
            },
            Request::Fault { inject } => match InjectedFault::parse(&inject) {
                Some(f) => {
                    dev.inject(f);
                    Response {
                        fault: dev.fault().map(|f| f.to_string()),
                        ..Response::ok()
                    }
                }
                None => Response::error(format!(
                    "unknown fault {inject:?}; a live device takes: {}",
                    InjectedFault::ALL.map(InjectedFault::name).join(", ")
                )),
            },
            Request::PcapStart { file } => match self.capture.start(&file) {
                Ok(()) => Response {
                    capture: self.capture.status(),
                    ..Response::ok()
                },
                Err(e) => Response::error(e.to_string()),
            },
            Request::PcapStop {} => match self.capture.stop() {
                Ok(s) => Response {
                    capture: Some(s),
                    ..Response::ok()
                },
                Err(e) => Response::error(e.to_string()),
            },
        }
    }
}

/// What answers one request line: the handler's [`CtlHandler::handle_line`] (a test's stand-in).
type Answer = Arc<dyn Fn(&str) -> Response + Send + Sync>;

/// Answers `line`; if answering panics, an error response says so (with the panic's message)
/// and the caller goes on. Before, the connection's thread ended and the client saw its
/// connection closed without an answer.
fn answer_contained(answer: &Answer, line: &str) -> Response {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| answer(line))) {
        Ok(r) => r,
        Err(payload) => {
            let message = device::fault::panic_message(&*payload);
            tracing::error!(request = line, %message, "a control request panicked");
            Response::error(format!(
                "internal error: answering this request panicked ({message}); the server goes on"
            ))
        }
    }
}

/// The running control socket; dropping it stops every thread and removes the socket file.
#[derive(Debug)]
pub struct CtlServer {
    path: PathBuf,
    stop: Arc<Stop>,
    thread: Option<JoinHandle<()>>,
}

impl CtlServer {
    /// Binds `path` (owner-only: it can inject faults) and starts answering.
    pub fn start(path: &Path, handler: CtlHandler) -> Result<Self, CtlServerError> {
        Self::start_answering(path, Arc::new(move |line: &str| handler.handle_line(line)))
    }

    fn start_answering(path: &Path, answer: Answer) -> Result<Self, CtlServerError> {
        let listener = bind_listener(path, Some(0o600))?;
        let stop = Arc::new(Stop::new()?);
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vdpa-ctl".into())
            .spawn(move || accept_loop(listener, answer, s))?;
        tracing::info!(path = %path.display(), "control socket listening");
        Ok(CtlServer {
            path: path.to_owned(),
            stop,
            thread: Some(thread),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for CtlServer {
    fn drop(&mut self) {
        self.stop.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: UnixListener, answer: Answer, stop: Arc<Stop>) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    loop {
        match stop.wait_readable(listener.as_fd(), None) {
            Ok(Ready::Io) => {}
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %e, "control socket poll failed");
                break;
            }
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                // EMFILE and the like: keep serving the connections we have.
                tracing::warn!(error = %e, "control socket accept failed");
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
        };
        // The connections still open are the threads still running.
        conns.retain(|t| !t.is_finished());
        if conns.len() >= MAX_CONNECTIONS {
            let _ = send(
                &stream,
                &Response::error(format!(
                    "control socket busy: {MAX_CONNECTIONS} connections are open"
                )),
            );
            continue;
        }
        let (h, s) = (answer.clone(), stop.clone());
        let spawned = std::thread::Builder::new()
            .name("vdpa-ctl-conn".into())
            .spawn(move || {
                if let Err(e) = serve_connection(stream, &h, &s) {
                    tracing::debug!(error = %e, "control connection ended");
                }
            });
        match spawned {
            Ok(t) => conns.push(t),
            Err(e) => tracing::warn!(error = %e, "cannot start a control connection thread"),
        }
    }
    for t in conns {
        let _ = t.join();
    }
}

fn send(mut stream: &UnixStream, resp: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(resp).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)
}

/// Answers requests on one connection until it closes or the server stops.
fn serve_connection(mut stream: UnixStream, h: &Answer, stop: &Stop) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    // A client that stops reading must not hold this thread forever.
    stream.set_write_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    // Bytes of an over-long line still to skip (up to its newline).
    let mut skipping = false;
    loop {
        match stop.wait_readable(stream.as_fd(), None)? {
            Ready::Io => {}
            _ => return Ok(()),
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            if std::mem::take(&mut skipping) {
                continue;
            }
            let text = String::from_utf8_lossy(&line[..nl]);
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            send(&stream, &answer_contained(h, text))?;
        }
        if buf.len() > MAX_LINE {
            buf.clear();
            if !skipping {
                skipping = true;
                send(
                    &stream,
                    &Response::error(format!("request line longer than {MAX_LINE} bytes")),
                )?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    /// Sends `line` and reads the one-line answer.
    fn ask(conn: &mut BufReader<UnixStream>, line: &str) -> Response {
        conn.get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
        let mut answer = String::new();
        conn.read_line(&mut answer).unwrap();
        serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{answer:?}: {e}"))
    }

    /// A request that panics gets an error answer with the panic's message; the same
    /// connection is answered after it, and so is a new one.
    #[test]
    fn a_request_that_panics_is_answered_and_the_connection_goes_on() {
        let dir = std::env::temp_dir().join(format!("vdpa-ctl-panic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctl.sock");
        let answer: Answer = Arc::new(|line: &str| {
            if line.contains("boom") {
                panic!("deliberate panic for {line}");
            }
            Response::ok()
        });
        let server = CtlServer::start_answering(&path, answer).unwrap();
        let mut conn = BufReader::new(UnixStream::connect(&path).unwrap());
        assert!(ask(&mut conn, "fine").ok);
        let r = ask(&mut conn, "boom");
        assert!(!r.ok);
        let err = r.error.unwrap();
        assert!(
            err.contains("panicked") && err.contains("deliberate panic for boom"),
            "{err}"
        );
        assert!(ask(&mut conn, "fine again").ok);
        let mut other = BufReader::new(UnixStream::connect(&path).unwrap());
        assert!(ask(&mut other, "fine").ok);
        drop(server);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
