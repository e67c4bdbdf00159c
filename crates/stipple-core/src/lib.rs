//! Stipple's core: the Segment message model, its validation, timestamp handling,
//! `integrations` routing and the mapping from Segment messages to Pointillist events.
//!
//! This crate is pure: it does no I/O, knows nothing of HTTP and uses no async runtime,
//! so the ingress, the delivery workers, the CLI and anyone else can share one mapping.
//!
//! ```
//! use stipple_core::{MapConfig, Mapper, Message};
//!
//! let message: Message = serde_json::from_str(r#"{
//!     "type": "track", "event": "Order Completed", "userId": "u-1",
//!     "messageId": "m-1", "timestamp": "2026-11-28T12:00:00.123Z",
//!     "properties": { "total": 42.5, "currency": "EUR" }
//! }"#).unwrap();
//! let valid = message.validate().unwrap();
//! let event = Mapper::new(MapConfig::default()).map(valid).unwrap();
//! assert_eq!(event.event_type, "Order Completed");
//! assert_eq!(event.labels["currency"], "EUR");
//! assert_eq!(event.numbers["total"].as_f64(), Some(42.5));
//! assert_eq!(event.event_time.to_string(), "2026-11-28T12:00:00.123Z");
//! ```
#![forbid(unsafe_code)]

mod batch;
mod error;
mod event;
mod map;
mod message;
mod stored;
mod surrogates;
mod time;
mod transcode;
mod validate;

pub use batch::{Batch, EnvelopeField, Input, from_json, is_json};
pub use error::{ErrorCode, ValidationError};
pub use event::{EventTime, PointillistEvent};
pub use map::{ACCOUNT, MAX_ATTRIBUTE_BYTES, MapConfig, MapError, Mapper, POINTILLIST};
pub use message::{Context, Id, Message, MessageType, RawMap};
pub use stored::{Rest, Split, SplitBatch, SplitItem, split, split_batch, split_into};
pub use surrogates::replace_lone_surrogates;
pub use time::{format_timestamp, parse_timestamp};
pub use validate::{MAX_MESSAGE_ID_LEN, ValidMessage};

/// A JSON object, as `serde_json` represents it.
pub type JsonMap = serde_json::Map<String, serde_json::Value>;
