//! `GET /`: the chat page, and `/comethub.js`, the client library it is
//! built on, both built into the binary.
//!
//! An HTML page with its script (`/chat.js`) and style (`/chat.css`), and the
//! library (`/comethub.js`, an ES module any page may import), no other
//! assets. The library speaks the protocol: long-poll with `format=json` and
//! a cursor by default, Server-Sent Events on demand. The page is served with a strict
//! Content-Security-Policy: scripts and styles only from those two files, no
//! inline code, connections only to this origin, no framing. So even a message
//! that got into the page's markup could run nothing; which is why the script
//! and style are files and not inline.

use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderName};

use crate::answer::{Answer, NOSNIFF};

/// The page's HTML.
pub const PAGE: &str = include_str!("../static/chat.html");
/// The page's script.
pub const SCRIPT: &str = include_str!("../static/chat.js");
/// The page's style.
pub const STYLE: &str = include_str!("../static/chat.css");
/// The client library.
pub const LIBRARY: &str = include_str!("../static/comethub.js");

/// The policy the page is served with.
pub const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// A file served as it is.
#[derive(Debug)]
pub struct Asset {
    /// Where it is served.
    pub path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// Every file served: the page, its script and style, and the library.
pub const ASSETS: [Asset; 4] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: PAGE,
    },
    Asset {
        path: "/chat.js",
        content_type: "text/javascript; charset=utf-8",
        body: SCRIPT,
    },
    Asset {
        path: "/chat.css",
        content_type: "text/css; charset=utf-8",
        body: STYLE,
    },
    Asset {
        path: "/comethub.js",
        content_type: "text/javascript; charset=utf-8",
        body: LIBRARY,
    },
];

impl Asset {
    /// The file served at `path`, if any.
    pub fn at(path: &str) -> Option<&'static Asset> {
        ASSETS.iter().find(|a| a.path == path)
    }

    /// The file as an answer; the page with its policy.
    pub fn answer(&self) -> Answer {
        let answer = Answer::full(
            StatusCode::OK,
            Bytes::from_static(self.content_type.as_bytes()),
            Bytes::from_static(self.body.as_bytes()),
        )
        .with_static(NOSNIFF);
        if self.path != "/" {
            return answer;
        }
        answer
            .with(
                header::CONTENT_SECURITY_POLICY,
                Bytes::from_static(POLICY.as_bytes()),
            )
            .with(
                HeaderName::from_static("referrer-policy"),
                Bytes::from_static(b"no-referrer"),
            )
    }
}
