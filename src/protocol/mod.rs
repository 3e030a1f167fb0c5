//! The wire protocol's vocabulary: request parameters, message ids and cursors,
//! and how a message is encoded.
//!
//! Everything a client sends is checked here before it reaches a store, so the
//! stores only ever see valid channel names and cursors. A message's encodings (its
//! JSON item, its SSE frame) are made at most once and shared by every subscriber
//! it goes to.
//!
//! In rooms: `params` (what a request says), `ids` (ids and cursors,
//! and [`Channels`], where what a one-channel client sees differently is
//! decided), `encoding` (a message's raw, JSON and SSE forms).

use smol_str::SmolStr;
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::error::Error;
pub use crate::hub::{Fingerprint, Meter, Since};

mod encoding;
mod ids;
mod params;

pub use encoding::*;
pub use ids::*;
pub use params::*;
