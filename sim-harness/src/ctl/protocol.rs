//! The control socket's wire format: JSON lines over a Unix stream socket.
//!
//! Each request is one JSON object on one line; the server answers each with one JSON object
//! on one line, in order, and keeps the connection open for more. Every response has `"ok"`;
//! a refused request has `"ok": false` and `"error"` (a sentence), and changes nothing.
//!
//! | request | response (besides `"ok": true`) |
//! |---|---|
//! | `{"cmd":"hello"}` | `"hello"`: `"server"`, `"protocol"` (1), `"commands"`, `"quirks"`, `"faults"` |
//! | `{"cmd":"stats"}` | `"stats"`: see [`super::stats::StatsReport`] |
//! | `{"cmd":"link","up":false}` | `"link_up"`: the state now |
//! | `{"cmd":"announce"}` | `"announced"`: false when the driver did not negotiate GUEST_ANNOUNCE and STATUS |
//! | `{"cmd":"quirk","name":"stale-used-idx","on":true}` | `"quirks"`: the quirks now on |
//! | `{"cmd":"fault","inject":"needs-reset"}` | `"fault"`: the fault that holds the device (if any yet) |
//! | `{"cmd":"pcap-start","file":"/tmp/a.pcapng"}` | `"capture"`: file, frames, bytes, interfaces |
//! | `{"cmd":"pcap-stop"}` | `"capture"`: the final counts |
//!
//! A line longer than [`MAX_LINE`] bytes, or one that is not a request, is answered with an
//! error; the connection stays usable.

use super::stats::StatsReport;
use crate::pcap::CaptureSummary;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Version of this protocol; `hello` reports it.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest request line accepted.
pub const MAX_LINE: usize = 64 * 1024;

/// One request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// What the server is and offers.
    Hello {},
    /// Every counter, per queue.
    Stats {},
    /// Link up or down (config status LINK_UP and a config interrupt, virtio 1.2 5.1.4).
    Link { up: bool },
    /// Ask the driver to announce itself (VIRTIO_NET_S_ANNOUNCE, virtio 1.2 5.1.6.5.4).
    Announce {},
    /// Switch an injectable hardware bug on or off.
    Quirk { name: String, on: bool },
    /// Inject a fault into the running device.
    Fault { inject: String },
    /// Start a pcapng capture into `file`.
    PcapStart { file: PathBuf },
    /// Stop the capture and close its file.
    PcapStop {},
}

impl Request {
    /// The `cmd` names, for `hello`.
    pub const COMMANDS: &'static [&'static str] = &[
        "hello",
        "stats",
        "link",
        "announce",
        "quirk",
        "fault",
        "pcap-start",
        "pcap-stop",
    ];
}

/// What `hello` reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub server: String,
    pub protocol: u32,
    pub commands: Vec<String>,
    pub quirks: Vec<String>,
    pub faults: Vec<String>,
}

/// One response. Fields a command does not produce are absent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hello: Option<Hello>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<StatsReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_up: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announced: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quirks: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<CaptureSummary>,
}

impl Response {
    /// A success with nothing else yet.
    pub fn ok() -> Self {
        Response {
            ok: true,
            ..Default::default()
        }
    }

    /// A refusal.
    pub fn error(msg: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(msg.into()),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_from_their_documented_lines() {
        let cases = [
            (r#"{"cmd":"hello"}"#, Request::Hello {}),
            (r#"{"cmd":"stats"}"#, Request::Stats {}),
            (r#"{"cmd":"link","up":false}"#, Request::Link { up: false }),
            (r#"{"cmd":"announce"}"#, Request::Announce {}),
            (
                r#"{"cmd":"quirk","name":"stale-used-idx","on":true}"#,
                Request::Quirk {
                    name: "stale-used-idx".into(),
                    on: true,
                },
            ),
            (
                r#"{"cmd":"fault","inject":"needs-reset"}"#,
                Request::Fault {
                    inject: "needs-reset".into(),
                },
            ),
            (
                r#"{"cmd":"pcap-start","file":"/tmp/a.pcapng"}"#,
                Request::PcapStart {
                    file: "/tmp/a.pcapng".into(),
                },
            ),
            (r#"{"cmd":"pcap-stop"}"#, Request::PcapStop {}),
        ];
        assert_eq!(cases.len(), Request::COMMANDS.len());
        for (line, want) in cases {
            assert_eq!(
                serde_json::from_str::<Request>(line).unwrap(),
                want,
                "{line}"
            );
            let back = serde_json::to_string(&want).unwrap();
            assert_eq!(serde_json::from_str::<Request>(&back).unwrap(), want);
        }
    }

    #[test]
    fn bad_requests_are_refused() {
        for line in [
            r#"{"cmd":"reboot"}"#,
            r#"{"cmd":"link"}"#,
            r#"{"cmd":"link","up":"no"}"#,
            r#"{"cmd":"stats","extra":1}"#,
            r#"[1,2]"#,
            "not json",
        ] {
            assert!(serde_json::from_str::<Request>(line).is_err(), "{line}");
        }
    }
}
