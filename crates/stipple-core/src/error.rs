//! Typed validation errors with stable codes, shared by the ingress answers and the CLI.

use std::fmt;

/// Why a Segment message was refused. The code is stable and machine-readable; the
/// message is for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ValidationError {
    /// Stable, machine-readable reason.
    pub code: ErrorCode,
    /// Human explanation, naming the field at fault.
    pub message: String,
}

impl ValidationError {
    /// A new error with the given code and explanation.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Reads `json` as a `T`; on failure, a classified error (see [`Self::from_json`])
    /// whose message names the field at fault (`context.traits.age: invalid type: ...`).
    /// The field is found by reading the text again, so only failures pay for it.
    pub fn read<'a, T: serde::Deserialize<'a>>(json: &'a [u8]) -> Result<T, Self> {
        crate::from_json(json).map_err(|e| Self::from_json_at::<T>(json, &e))
    }

    /// [`Self::from_json`] for an error met reading `json` as a `T`, naming the field at
    /// fault.
    fn from_json_at<'a, T: serde::Deserialize<'a>>(
        json: &'a [u8],
        err: &serde_json::Error,
    ) -> Self {
        let mut error = Self::from_json(err);
        if error.code == ErrorCode::InvalidMessage {
            let mut reader = serde_json::Deserializer::from_slice(json);
            if let Err(e) = serde_path_to_error::deserialize::<_, T>(&mut reader) {
                let path = e.path().to_string();
                if path != "." {
                    error.message = format!("{path}: {}", error.message);
                }
            }
        }
        error
    }

    /// Classifies a `serde_json` error met while reading one message.
    pub fn from_json(err: &serde_json::Error) -> Self {
        let code = match err.classify() {
            serde_json::error::Category::Data => ErrorCode::InvalidMessage,
            _ => ErrorCode::InvalidJson,
        };
        Self::new(code, err.to_string())
    }
}

/// The stable reason codes. [`ErrorCode::as_str`] gives the wire form (`no_user_anon_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The text is not JSON.
    InvalidJson,
    /// JSON, but not a message: not an object, or a field of the wrong type.
    InvalidMessage,
    /// No `type` field.
    MissingType,
    /// A `type` that is not identify, track, page, screen, group or alias.
    InvalidType,
    /// Neither `userId` nor `anonymousId` (Segment's own code).
    NoUserAnonId,
    /// A track call without a non-empty `event`.
    MissingEvent,
    /// A group call without `groupId`.
    MissingGroupId,
    /// An alias call without `previousId`.
    MissingPreviousId,
    /// An alias call without `userId`.
    MissingUserId,
    /// A timestamp field that is not ISO-8601.
    InvalidTimestamp,
    /// No usable event time: no `timestamp`, `receivedAt` or `originalTimestamp`.
    MissingTimestamp,
    /// A `messageId` that is empty or too long.
    InvalidMessageId,
    /// Labels and numbers past [`crate::MAX_ATTRIBUTE_BYTES`] (mapping only): nested
    /// objects repeat their path in every key, so a message can grow far past its size.
    EventTooLarge,
}

impl ErrorCode {
    /// The wire form of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidMessage => "invalid_message",
            Self::MissingType => "missing_type",
            Self::InvalidType => "invalid_type",
            Self::NoUserAnonId => "no_user_anon_id",
            Self::MissingEvent => "missing_event",
            Self::MissingGroupId => "missing_group_id",
            Self::MissingPreviousId => "missing_previous_id",
            Self::MissingUserId => "missing_user_id",
            Self::InvalidTimestamp => "invalid_timestamp",
            Self::MissingTimestamp => "missing_timestamp",
            Self::InvalidMessageId => "invalid_message_id",
            Self::EventTooLarge => "event_too_large",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
