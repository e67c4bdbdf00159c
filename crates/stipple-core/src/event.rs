//! The Pointillist event, exactly as it goes on the wire.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::time::{format_timestamp, parse_timestamp};

/// One Pointillist event: the JSON body of one `POST /event`.
///
/// `labels` and `numbers` are left out of the JSON when empty; `actors` always holds
/// the primary actor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PointillistEvent {
    /// Where the event comes from (`pointillist.event_source`, default `segment`).
    pub event_source: String,
    /// `identify`, `page`, `screen`, `group`, `alias`, or the track call's `event`.
    pub event_type: String,
    /// When it happened.
    pub event_time: EventTime,
    /// Actor type -> identifier name -> value.
    pub actors: BTreeMap<String, BTreeMap<String, String>>,
    /// Text attributes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Numeric attributes (always finite).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub numbers: BTreeMap<String, serde_json::Number>,
}

impl PointillistEvent {
    /// The event as the JSON bytes of a request body.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising string maps and numbers into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// An event time; on the wire RFC 3339, UTC, milliseconds: `2026-11-28T12:00:00.123Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventTime(pub DateTime<Utc>);

impl fmt::Display for EventTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_timestamp(self.0))
    }
}

impl Serialize for EventTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        parse_timestamp(&text)
            .map(EventTime)
            .ok_or_else(|| serde::de::Error::custom(format!("eventTime {text:?} is not RFC 3339")))
    }
}
