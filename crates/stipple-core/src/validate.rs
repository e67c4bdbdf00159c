//! Validation of one Segment message and the timestamp work the ingress does on it.

use std::borrow::BorrowMut;

use chrono::{DateTime, Utc};

use crate::error::{ErrorCode, ValidationError};
use crate::message::{Id, Message, MessageType};
use crate::time::{format_timestamp, is_rfc3339_year, parse_timestamp};

/// Segment's limit: a `messageId` is under 100 characters.
pub const MAX_MESSAGE_ID_LEN: usize = 100;

/// A message that passed [`Message::validate`]: its type is known and the fields its
/// call needs are there, and every timestamp it carries parses.
///
/// It holds the message (`M = Message`), or borrows it (`M = &mut Message`, from
/// [`Message::validate_in_place`]), so that a caller that keeps the message where it is
/// (the ingress, per message) validates and stamps it without moving it.
#[derive(Debug, Clone)]
pub struct ValidMessage<M = Message> {
    message: M,
    kind: MessageType,
    /// `timestamp`, else `receivedAt`, else `originalTimestamp`, parsed once.
    event_time: Option<DateTime<Utc>>,
    /// The times as validation parsed them, for the first
    /// [`ValidMessage::apply_received_at`] (which would parse them again).
    times: Option<Times>,
}

/// The times of a message as [`Message::validate`] parsed them.
#[derive(Debug, Clone, Copy)]
struct Times {
    timestamp: Option<DateTime<Utc>>,
    sent_at: Option<DateTime<Utc>>,
}

fn present(id: &Option<Id>) -> bool {
    id.as_ref().is_some_and(|id| !id.is_empty())
}

fn check_time(
    field: &str,
    value: &Option<String>,
) -> Result<Option<DateTime<Utc>>, ValidationError> {
    match value {
        None => Ok(None),
        Some(text) => match parse_timestamp(text) {
            Some(time) if is_rfc3339_year(time) => Ok(Some(time)),
            Some(_) => Err(ValidationError::new(
                ErrorCode::InvalidTimestamp,
                format!("{field} {text:?} is outside the years 0000 to 9999 (in UTC)"),
            )),
            None => Err(ValidationError::new(
                ErrorCode::InvalidTimestamp,
                format!(
                    "{field} {text:?} is not an ISO-8601 date-time (such as 2026-11-28T12:00:00.000Z)"
                ),
            )),
        },
    }
}

impl Message {
    /// Checks the message against Segment's rules: a known `type`; `userId` or
    /// `anonymousId`; alias needs `userId` and `previousId`; group needs `groupId`;
    /// track needs a non-empty `event`; timestamps parse; `messageId`, when given, is
    /// under [`MAX_MESSAGE_ID_LEN`] characters. An empty `messageId` counts as none (the
    /// ingress then makes one, as for a missing one).
    pub fn validate(mut self) -> Result<ValidMessage, ValidationError> {
        let ValidMessage {
            kind,
            event_time,
            times,
            ..
        } = self.validate_in_place()?;
        Ok(ValidMessage {
            message: self,
            kind,
            event_time,
            times,
        })
    }

    /// [`Message::validate`] on the message where it is (an empty `messageId` is
    /// removed here too).
    pub fn validate_in_place(&mut self) -> Result<ValidMessage<&mut Message>, ValidationError> {
        if self.message_id.as_deref() == Some("") {
            self.message_id = None;
        }
        let kind = match self.kind.as_deref() {
            None => {
                return Err(ValidationError::new(
                    ErrorCode::MissingType,
                    "the message has no \"type\"",
                ));
            }
            Some(text) => MessageType::parse(text).ok_or_else(|| {
                ValidationError::new(
                    ErrorCode::InvalidType,
                    format!(
                        "type {text:?} is not one of identify, track, page, screen, group, alias"
                    ),
                )
            })?,
        };
        if !present(&self.user_id) && !present(&self.anonymous_id) {
            return Err(ValidationError::new(
                ErrorCode::NoUserAnonId,
                "userId or anonymousId is required",
            ));
        }
        match kind {
            MessageType::Track if self.event.as_deref().is_none_or(|e| e.trim().is_empty()) => {
                return Err(ValidationError::new(
                    ErrorCode::MissingEvent,
                    "a track call needs a non-empty \"event\"",
                ));
            }
            MessageType::Group if !present(&self.group_id) => {
                return Err(ValidationError::new(
                    ErrorCode::MissingGroupId,
                    "a group call needs \"groupId\"",
                ));
            }
            MessageType::Alias if !present(&self.user_id) => {
                return Err(ValidationError::new(
                    ErrorCode::MissingUserId,
                    "an alias call needs \"userId\"",
                ));
            }
            MessageType::Alias if !present(&self.previous_id) => {
                return Err(ValidationError::new(
                    ErrorCode::MissingPreviousId,
                    "an alias call needs \"previousId\"",
                ));
            }
            _ => {}
        }
        if let Some(id) = &self.message_id {
            if id.chars().count() >= MAX_MESSAGE_ID_LEN {
                return Err(ValidationError::new(
                    ErrorCode::InvalidMessageId,
                    format!("messageId must be under {MAX_MESSAGE_ID_LEN} characters"),
                ));
            }
        }
        let timestamp = check_time("timestamp", &self.timestamp)?;
        let original = check_time("originalTimestamp", &self.original_timestamp)?;
        let sent_at = check_time("sentAt", &self.sent_at)?;
        let received_at = check_time("receivedAt", &self.received_at)?;
        let event_time = timestamp.or(received_at).or(original);
        Ok(ValidMessage {
            message: self,
            kind,
            event_time,
            times: Some(Times { timestamp, sent_at }),
        })
    }
}

impl<M> ValidMessage<M> {
    /// The call type.
    pub fn kind(&self) -> MessageType {
        self.kind
    }

    /// Gives the message back (or the borrow of it).
    pub fn into_message(self) -> M {
        self.message
    }

    /// The time the Pointillist event carries: `timestamp`, or else `receivedAt`, or
    /// else `originalTimestamp`.
    pub fn event_time(&self) -> Result<DateTime<Utc>, ValidationError> {
        self.event_time.ok_or_else(|| {
            ValidationError::new(
                ErrorCode::MissingTimestamp,
                "the message has no timestamp, receivedAt or originalTimestamp",
            )
        })
    }
}

impl<M: BorrowMut<Message>> ValidMessage<M> {
    /// The message.
    pub fn message(&self) -> &Message {
        self.message.borrow()
    }

    /// Sets `messageId` with `make` when the client sent none.
    pub fn ensure_message_id(&mut self, make: impl FnOnce() -> String) {
        let m = self.message.borrow_mut();
        if m.message_id.is_none() {
            m.message_id = Some(make());
        }
    }

    /// Sets the body-level `sentAt` of a batch on an item that has none of its own.
    pub fn inherit_sent_at(&mut self, sent_at: &str) -> Result<(), ValidationError> {
        let m = self.message.borrow_mut();
        if m.sent_at.is_none() {
            let text = Some(sent_at.to_owned());
            let parsed = check_time("sentAt", &text)?;
            m.sent_at = text;
            if let Some(times) = &mut self.times {
                times.sent_at = parsed;
            }
        }
        Ok(())
    }

    /// What the ingress does on receipt: `receivedAt` is its clock, `originalTimestamp`
    /// the client's `timestamp`, and `timestamp` is corrected for the client's clock
    /// skew: `receivedAt - (sentAt - originalTimestamp)` when the client sent both,
    /// its own `timestamp` when it sent no `sentAt`, `receivedAt` when it sent no
    /// `timestamp`.
    ///
    /// A message that already carries an `originalTimestamp` (one an ingress saw before:
    /// Segment's Webhooks destination, an export, a replay) keeps it, and keeps its
    /// `timestamp`, which that ingress corrected already against the clock that received
    /// it: correcting it again against this one would move the event to when it was
    /// forwarded, hours later after an outage or for a replay. So applying this twice
    /// changes nothing more.
    pub fn apply_received_at(&mut self, received_at: DateTime<Utc>) {
        let m = self.message.borrow_mut();
        // Validation's parse of the fields as they still are; after this, they are not.
        let times = self.times.take().unwrap_or_else(|| {
            let parse = |text: &Option<String>| text.as_deref().and_then(parse_timestamp);
            Times {
                timestamp: parse(&m.timestamp),
                sent_at: parse(&m.sent_at),
            }
        });
        let corrected = match (times.timestamp, times.sent_at) {
            (Some(timestamp), _) if m.original_timestamp.is_some() => timestamp,
            (Some(timestamp), Some(sent_at)) => {
                let original = timestamp;
                // A correction past the years an RFC 3339 time can carry (a client
                // clock centuries off) leaves the client's own time, as without `sentAt`.
                received_at
                    .checked_sub_signed(sent_at.signed_duration_since(original))
                    .filter(|corrected| is_rfc3339_year(*corrected))
                    .unwrap_or(original)
            }
            (Some(timestamp), None) => timestamp,
            (None, _) => received_at,
        };
        if m.original_timestamp.is_none() {
            m.original_timestamp = m.timestamp.take();
        }
        m.timestamp = Some(format_timestamp(corrected));
        m.received_at = Some(format_timestamp(received_at));
        self.event_time = Some(corrected);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(input: serde_json::Value, expected: Option<ErrorCode>) {
        let message: Message = serde_json::from_value(input.clone()).unwrap();
        assert_eq!(
            message.validate().err().map(|e| e.code),
            expected,
            "{input}"
        );
    }

    #[test]
    fn segment_rules() {
        use ErrorCode::*;
        check(json!({"type": "track", "event": "E", "userId": "u"}), None);
        check(
            json!({"type": "track", "event": "E", "anonymousId": "a"}),
            None,
        );
        check(json!({"type": "identify", "userId": 7}), None);
        check(json!({"event": "E", "userId": "u"}), Some(MissingType));
        check(
            json!({"type": "Track", "event": "E", "userId": "u"}),
            Some(InvalidType),
        );
        check(json!({"type": "track", "event": "E"}), Some(NoUserAnonId));
        check(
            json!({"type": "track", "event": "E", "userId": "", "anonymousId": ""}),
            Some(NoUserAnonId),
        );
        check(json!({"type": "track", "userId": "u"}), Some(MissingEvent));
        check(
            json!({"type": "track", "event": "  ", "userId": "u"}),
            Some(MissingEvent),
        );
        check(
            json!({"type": "group", "userId": "u"}),
            Some(MissingGroupId),
        );
        check(
            json!({"type": "group", "userId": "u", "groupId": "g"}),
            None,
        );
        check(
            json!({"type": "alias", "anonymousId": "a", "previousId": "p"}),
            Some(MissingUserId),
        );
        check(
            json!({"type": "alias", "userId": "u"}),
            Some(MissingPreviousId),
        );
        check(
            json!({"type": "alias", "userId": "u", "previousId": "p"}),
            None,
        );
        check(
            json!({"type": "page", "userId": "u", "timestamp": "noon"}),
            Some(InvalidTimestamp),
        );
        check(
            json!({"type": "page", "userId": "u", "sentAt": "x"}),
            Some(InvalidTimestamp),
        );
        check(
            json!({"type": "page", "userId": "u", "messageId": ""}),
            None,
        );
        check(
            json!({"type": "page", "userId": "u", "messageId": "x".repeat(100)}),
            Some(InvalidMessageId),
        );
        check(
            json!({"type": "page", "userId": "u", "messageId": "x".repeat(99)}),
            None,
        );
    }

    fn stamped(input: serde_json::Value, received_at: &str) -> Message {
        let message: Message = serde_json::from_value(input).unwrap();
        let mut valid = message.validate().unwrap();
        valid.apply_received_at(parse_timestamp(received_at).unwrap());
        valid.into_message()
    }

    #[test]
    fn clock_skew_is_corrected_from_sent_at() {
        // The client's clock is 1 h fast: it says it sent at 13:00:10 what happened at 13:00:00.
        let m = stamped(
            json!({"type": "track", "event": "E", "userId": "u",
                   "timestamp": "2026-11-28T13:00:00Z", "sentAt": "2026-11-28T13:00:10Z"}),
            "2026-11-28T12:00:10.5Z",
        );
        assert_eq!(m.timestamp.as_deref(), Some("2026-11-28T12:00:00.500Z"));
        assert_eq!(
            m.original_timestamp.as_deref(),
            Some("2026-11-28T13:00:00Z")
        );
        assert_eq!(m.received_at.as_deref(), Some("2026-11-28T12:00:10.500Z"));
    }

    #[test]
    fn a_correction_past_rfc_3339_s_years_keeps_the_client_s_time() {
        for (timestamp, sent_at, kept) in [
            (
                "0001-01-01T00:00:00Z",
                "9999-12-31T00:00:00Z",
                "0001-01-01T00:00:00.000Z",
            ),
            (
                "9999-12-31T00:00:00Z",
                "0000-01-01T00:00:00Z",
                "9999-12-31T00:00:00.000Z",
            ),
        ] {
            let m = stamped(
                json!({"type": "track", "event": "E", "userId": "u",
                       "timestamp": timestamp, "sentAt": sent_at}),
                "2026-11-28T12:00:10.5Z",
            );
            assert_eq!(m.timestamp.as_deref(), Some(kept));
        }
    }

    #[test]
    fn times_outside_rfc_3339_s_years_are_refused() {
        for field in ["timestamp", "sentAt", "originalTimestamp", "receivedAt"] {
            for text in [
                "9999-12-31T23:59:59.999-01:00",
                "+10000-01-01T00:00:00Z",
                "-0001-12-31T00:00:00Z",
            ] {
                check(
                    json!({"type": "track", "event": "E", "userId": "u", field: text}),
                    Some(ErrorCode::InvalidTimestamp),
                );
            }
            check(
                json!({"type": "track", "event": "E", "userId": "u", field: "9999-12-31T23:59:59.999+01:00"}),
                None,
            );
        }
    }

    #[test]
    fn timestamp_stands_without_sent_at_and_received_at_fills_a_missing_one() {
        let m = stamped(
            json!({"type": "track", "event": "E", "userId": "u", "timestamp": "2020-01-01T00:00:00Z"}),
            "2026-11-28T12:00:00Z",
        );
        assert_eq!(m.timestamp.as_deref(), Some("2020-01-01T00:00:00.000Z"));
        let m = stamped(
            json!({"type": "track", "event": "E", "userId": "u"}),
            "2026-11-28T12:00:00Z",
        );
        assert_eq!(m.timestamp.as_deref(), Some("2026-11-28T12:00:00.000Z"));
        assert_eq!(m.original_timestamp, None);
    }

    #[test]
    fn a_message_seen_by_an_ingress_before_keeps_its_timestamps() {
        // No sentAt: the client's timestamp stands, whatever originalTimestamp says.
        let m = stamped(
            json!({"type": "track", "event": "E", "userId": "u",
                   "timestamp": "2025-05-05T05:05:05Z", "originalTimestamp": "2001-01-01T00:00:00Z"}),
            "2026-11-28T12:00:00Z",
        );
        assert_eq!(m.timestamp.as_deref(), Some("2025-05-05T05:05:05.000Z"));
        assert_eq!(
            m.original_timestamp.as_deref(),
            Some("2001-01-01T00:00:00Z")
        );
        // No timestamp: receivedAt, whatever originalTimestamp says.
        let m = stamped(
            json!({"type": "track", "event": "E", "userId": "u",
                   "originalTimestamp": "2001-01-01T00:00:00Z"}),
            "2026-11-28T12:00:00Z",
        );
        assert_eq!(m.timestamp.as_deref(), Some("2026-11-28T12:00:00.000Z"));
        // A forwarded message: timestamp corrected by an ingress before (server clock),
        // originalTimestamp and sentAt from the device, 1 h fast; sent 10 s after it
        // happened, received here at 12:00:10.
        let m = stamped(
            json!({"type": "track", "event": "E", "userId": "u",
                   "timestamp": "2026-11-28T12:00:00Z", "originalTimestamp": "2026-11-28T13:00:00Z",
                   "sentAt": "2026-11-28T13:00:10Z"}),
            "2026-11-28T12:00:10Z",
        );
        assert_eq!(m.timestamp.as_deref(), Some("2026-11-28T12:00:00.000Z"));
        assert_eq!(
            m.original_timestamp.as_deref(),
            Some("2026-11-28T13:00:00Z")
        );
        // The same, forwarded six hours late (an outage, a replay): it happened when it did.
        let m = stamped(
            json!({"type": "track", "event": "E", "userId": "u",
                   "timestamp": "2026-11-28T12:00:00Z", "originalTimestamp": "2026-11-28T13:00:00Z",
                   "sentAt": "2026-11-28T13:00:10Z", "receivedAt": "2026-11-28T12:00:10Z"}),
            "2026-11-28T18:00:10Z",
        );
        assert_eq!(m.timestamp.as_deref(), Some("2026-11-28T12:00:00.000Z"));
        assert_eq!(m.received_at.as_deref(), Some("2026-11-28T18:00:10.000Z"));
    }

    #[test]
    fn stamping_twice_is_stable() {
        let once = stamped(
            json!({"type": "track", "event": "E", "userId": "u",
                   "timestamp": "2026-11-28T13:00:00Z", "sentAt": "2026-11-28T13:00:10Z"}),
            "2026-11-28T12:00:10Z",
        );
        let twice = stamped(serde_json::to_value(&once).unwrap(), "2026-11-28T12:00:10Z");
        assert_eq!(
            serde_json::to_value(&once).unwrap(),
            serde_json::to_value(&twice).unwrap()
        );
    }

    #[test]
    fn stamping_twice_on_one_valid_message_is_stable() {
        // The second time reads the fields again, as the first changed them.
        let message: Message = serde_json::from_value(json!({"type": "track", "event": "E",
            "userId": "u", "timestamp": "2026-11-28T13:00:00Z", "sentAt": "2026-11-28T13:00:10Z"}))
        .unwrap();
        let mut valid = message.validate().unwrap();
        let received_at = parse_timestamp("2026-11-28T12:00:10.5Z").unwrap();
        valid.apply_received_at(received_at);
        let once = serde_json::to_value(valid.message()).unwrap();
        valid.apply_received_at(received_at);
        assert_eq!(serde_json::to_value(valid.message()).unwrap(), once);
        assert_eq!(once["timestamp"], "2026-11-28T12:00:00.500Z");
    }

    #[test]
    fn an_inherited_sent_at_corrects_the_skew_as_the_message_s_own_does() {
        let received_at = parse_timestamp("2026-11-28T12:00:10.5Z").unwrap();
        let mut message: Message = serde_json::from_value(json!({"type": "track", "event": "E",
            "userId": "u", "timestamp": "2026-11-28T13:00:00Z"}))
        .unwrap();
        let mut valid = message.validate_in_place().unwrap();
        valid.inherit_sent_at("2026-11-28T13:00:10Z").unwrap();
        valid.apply_received_at(received_at);
        assert_eq!(
            valid.event_time().unwrap(),
            parse_timestamp("2026-11-28T12:00:00.5Z").unwrap()
        );
        let own = stamped(
            json!({"type": "track", "event": "E", "userId": "u",
                   "timestamp": "2026-11-28T13:00:00Z", "sentAt": "2026-11-28T13:00:10Z"}),
            "2026-11-28T12:00:10.5Z",
        );
        assert_eq!(
            serde_json::to_value(&message).unwrap(),
            serde_json::to_value(&own).unwrap()
        );
        // A bad one is refused, and leaves the message as it was.
        let mut message: Message =
            serde_json::from_value(json!({"type": "track", "event": "E", "userId": "u"})).unwrap();
        let mut valid = message.validate_in_place().unwrap();
        let before = serde_json::to_value(valid.message()).unwrap();
        assert!(valid.inherit_sent_at("yesterday").is_err());
        assert_eq!(serde_json::to_value(valid.message()).unwrap(), before);
    }

    #[test]
    fn validating_in_place_stamps_as_validating_does() {
        for input in [
            json!({"type": "track", "event": "E", "userId": "u", "messageId": "",
                   "timestamp": "2026-11-28T13:00:00+01:00", "sentAt": "2026-11-28T12:00:10Z"}),
            json!({"type": "identify", "anonymousId": "a", "originalTimestamp": "2026-11-28T11:00:00Z",
                   "timestamp": "2026-11-28T13:00:00Z", "sentAt": "2026-11-28T13:00:10Z"}),
            json!({"type": "page", "userId": 1}),
        ] {
            let received_at = parse_timestamp("2026-11-28T12:00:10Z").unwrap();
            let mut in_place: Message = serde_json::from_value(input.clone()).unwrap();
            let mut valid = in_place.validate_in_place().unwrap();
            valid.apply_received_at(received_at);
            let time = valid.event_time().unwrap();
            let moved = stamped(input.clone(), "2026-11-28T12:00:10Z");
            let mut again = moved.clone().validate().unwrap();
            again.apply_received_at(received_at);
            assert_eq!(time, again.event_time().unwrap(), "{input}");
            assert_eq!(
                serde_json::to_value(&in_place).unwrap(),
                serde_json::to_value(&moved).unwrap(),
                "{input}"
            );
        }
    }
}
