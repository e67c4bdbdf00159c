//! The Tracking API endpoints: from a request body to durably stored events.
//!
//! Per request: content type, the header's write key if any, an in-flight permit, the
//! body (capped, gzip inflated), else the body's write key, then each message: read, validated, stamped (`messageId`,
//! `receivedAt`, clock-skew corrected `timestamp`) and serialised; refused messages are
//! kept as rejected input. One `Store::append` commits it all, and only then is the
//! answer 200.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use stipple_core::{ErrorCode, Input, Message, MessageType, Rest, Split, ValidationError};
use stipple_store::{Append, Appended, NewEvent, RejectedInput, STORE_WARNINGS_EVERY, Throttle};
use tracing::{debug, warn};

use crate::body::{self, BodyError, Reservation};
use crate::config::Source;
use crate::error::IngressError;
use crate::redact;
use crate::state::IngressState;
use crate::telemetry::{Tally, type_label};

/// What an endpoint takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// One message of this type (the type may be left out of the body).
    Single(MessageType),
    /// A `{"batch": [...]}` envelope.
    Batch,
}

/// Every Tracking API path under `/v1/`, long and short forms.
pub(crate) const ENDPOINTS: [(&str, Endpoint); 15] = [
    ("identify", Endpoint::Single(MessageType::Identify)),
    ("track", Endpoint::Single(MessageType::Track)),
    ("page", Endpoint::Single(MessageType::Page)),
    ("screen", Endpoint::Single(MessageType::Screen)),
    ("group", Endpoint::Single(MessageType::Group)),
    ("alias", Endpoint::Single(MessageType::Alias)),
    ("batch", Endpoint::Batch),
    ("import", Endpoint::Batch),
    ("i", Endpoint::Single(MessageType::Identify)),
    ("t", Endpoint::Single(MessageType::Track)),
    ("p", Endpoint::Single(MessageType::Page)),
    ("s", Endpoint::Single(MessageType::Screen)),
    ("g", Endpoint::Single(MessageType::Group)),
    ("a", Endpoint::Single(MessageType::Alias)),
    ("b", Endpoint::Batch),
];

/// The endpoint `path` names (`/v1/track`, `/v1/t/`, ...), compared exactly as the router
/// matches it.
pub(crate) fn endpoint(path: &str) -> Option<Endpoint> {
    let name = path.strip_prefix("/v1/")?;
    let name = name.strip_suffix('/').unwrap_or(name);
    ENDPOINTS
        .iter()
        .find_map(|(known, endpoint)| (*known == name).then_some(*endpoint))
}

/// Answers one Tracking API request and counts it: what every Tracking API route runs,
/// through the router or straight from the connection (`front.rs`).
pub(crate) async fn answer(state: IngressState, endpoint: Endpoint, request: Request) -> Response {
    let arrived = Instant::now();
    let counters = Arc::clone(&state.shared.counters);
    // The request whole, not `HeaderMap` and `Body` extractors: axum's `HeaderMap`
    // extractor clones the map (two allocations and a copy per request).
    let (parts, body) = request.into_parts();
    let response = handle(state, endpoint, parts.headers, body)
        .await
        .into_response();
    counters.answered(response.status(), arrived);
    response
}

/// The code of a batch item over the message size limit.
const MESSAGE_TOO_LARGE: &str = "message_too_large";

/// Handles one Tracking API request.
#[tracing::instrument(name = "ingress.request", level = "info", skip_all, fields(endpoint = ?endpoint))]
async fn handle(
    state: IngressState,
    endpoint: Endpoint,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, IngressError> {
    body::check_content_type(&headers)?;
    let encoding = body::encoding(&headers)?;
    let config = &state.shared.config;
    let limit = match endpoint {
        Endpoint::Single(_) => config.max_message_bytes,
        Endpoint::Batch => config.max_batch_bytes,
    };
    // A key in the header is checked first: a wrong key costs no room and no body read.
    let header_source = crate::auth::authenticate_header(&state.shared.sources, &headers)?;
    if !body::may_fit(&state.shared.in_flight, &headers, limit) {
        return Err(IngressError::Overloaded);
    }
    // The body's bytes as they arrive, held until the answer: bounds the bodies in memory.
    let mut room = Reservation::new(state.shared.in_flight.clone());
    // A client that stalls mid-body would hold its room, and shutdown, forever.
    let read = tokio::time::timeout(
        config.body_timeout,
        body::read(body, &headers, encoding, limit, &mut room),
    );
    let bytes = read
        .await
        .map_err(|_| IngressError::BodyTimeout {
            secs: config.body_timeout.as_secs(),
        })?
        .map_err(|e| match (e, endpoint) {
            (BodyError::TooLarge, Endpoint::Single(_)) => IngressError::MessageTooLarge { limit },
            (BodyError::TooLarge, Endpoint::Batch) => IngressError::BatchTooLarge { limit },
            (BodyError::Unreadable(why), _) => IngressError::UnreadableBody(why),
            (BodyError::NoRoom, _) => IngressError::Overloaded,
        })?;
    let source = match header_source {
        Some(source) => source,
        None => crate::auth::authenticate_body(&state.shared.sources, &bytes)?,
    };
    // A lone surrogate's escape would fail the whole body: it reads as U+FFFD, as in
    // Segment's API (see `stipple_core::replace_lone_surrogates`).
    let bytes = stipple_core::replace_lone_surrogates(&bytes);
    let received_at = state.shared.clock.now();
    match endpoint {
        Endpoint::Single(kind) => single(&state, source, kind, &bytes, received_at).await,
        Endpoint::Batch => batch(&state, source, &bytes, received_at).await,
    }
}

/// A refused message: its code and why.
#[derive(Debug)]
struct Rejection {
    code: &'static str,
    message: String,
}

impl From<ValidationError> for Rejection {
    fn from(e: ValidationError) -> Self {
        Self {
            code: e.code.as_str(),
            message: e.message,
        }
    }
}

/// A message ready to be queued.
#[derive(Debug)]
struct Accepted {
    kind: MessageType,
    message_id: String,
    payload: Vec<u8>,
}

/// A message as read: whole (the reference path), or split into its plain fields and
/// the text of the rest (the fast path, [`stipple_core::split_into`]), whose stored text
/// reads back as the same message (its blocks kept as the client sent them). A split
/// message is read into room the caller keeps, and stays there (a message is large:
/// each move copies it).
#[derive(Debug)]
enum Read<'r, 'a> {
    Whole(Box<Message>),
    Split(&'r mut Split<'a>),
}

impl<'r, 'a> Read<'r, 'a> {
    /// A single-call body, on the fast path (read into `room`, a default [`Split`]) when
    /// it takes it. JSON that is not a message is a refused message (kept like any
    /// other); a batch or invalid JSON is an error of the whole request.
    fn single(
        body: &'a [u8],
        room: &'r mut Split<'a>,
    ) -> Result<Result<Self, Rejection>, IngressError> {
        if let Ok(text) = std::str::from_utf8(body) {
            if stipple_core::split_into(text, room) {
                return Ok(Ok(Read::Split(room)));
            }
        }
        match Input::parse(body) {
            Ok(Input::Message(message)) => Ok(Ok(Read::Whole(message))),
            Ok(Input::Batch(_)) => Err(IngressError::WrongShape(
                "this endpoint takes one message: post batches to /v1/batch",
            )),
            // Well-formed JSON that a message cannot hold (a number beyond a 64-bit
            // float, nesting past serde_json's depth limit) is a refused message, kept
            // as a batch item of it would be: a client does not retry a 400, and the
            // body is valid JSON, so it is not the client's garbling to drop.
            Err(e) if e.code == ErrorCode::InvalidJson && !stipple_core::is_json(body) => {
                Err(IngressError::InvalidJson(e.message))
            }
            Err(e) => Ok(Err(Rejection::from(e))),
        }
    }

    /// Batch item `index`, on the fast path (kept in `room`) when it takes it.
    fn item(
        batch: &'a stipple_core::Batch,
        index: usize,
        room: &'r mut Split<'a>,
    ) -> Result<Self, ValidationError> {
        match batch.split_item(index) {
            Some(split) => {
                *room = split;
                Ok(Read::Split(room))
            }
            None => batch.item(index).map(|m| Read::Whole(Box::new(m))),
        }
    }

    /// The plain fields (all of the message when read whole).
    fn message(&mut self) -> &mut Message {
        self.parts().0
    }

    /// The plain fields, and the text of the rest when split.
    fn parts(&mut self) -> (&mut Message, Option<&mut Rest<'a>>) {
        match self {
            Read::Whole(message) => (message, None),
            Read::Split(split) => (&mut split.plain, Some(&mut split.rest)),
        }
    }
}

/// Validates and stamps one message where it is (a message is large: moving it costs
/// more than the stamping). `writeKey` is removed: it is a secret and the source already
/// says whose message it is.
fn accept(
    read: &mut Read<'_, '_>,
    batch_sent_at: Option<&str>,
    received_at: DateTime<Utc>,
) -> Result<Accepted, Rejection> {
    let (message, mut rest) = read.parts();
    match &mut rest {
        Some(rest) => rest.remove_other("writeKey"),
        None => {
            message.other.remove("writeKey");
        }
    }
    // The ingress's clock sets it: a client's is not read, so cannot refuse the message.
    message.received_at = None;
    let mut valid = message.validate_in_place()?;
    if let Some(sent_at) = batch_sent_at {
        valid.inherit_sent_at(sent_at)?;
    }
    valid.ensure_message_id(|| uuid::Uuid::new_v4().to_string());
    valid.apply_received_at(received_at);
    let kind = valid.kind();
    let message = valid.into_message();
    let payload = match &rest {
        Some(rest) => rest.write(message),
        None => serde_json::to_vec(message),
    };
    let payload = payload.map_err(|e| Rejection {
        code: ErrorCode::InvalidMessage.as_str(),
        message: format!("the message could not be serialised: {e}"),
    })?;
    // ensure_message_id has set it; taken once written, not copied.
    let message_id = message.message_id.take().unwrap_or_default();
    Ok(Accepted {
        kind,
        message_id,
        payload,
    })
}

/// One request's writes and counts, built message by message.
#[derive(Debug)]
struct Collected<'a> {
    source: &'a Source,
    append: Append,
    /// The type label of each of `append.events`.
    kinds: Vec<&'static str>,
    tally: Tally,
}

impl<'a> Collected<'a> {
    fn new(source: &'a Source) -> Self {
        Self {
            source,
            append: Append::default(),
            kinds: Vec::new(),
            tally: Tally::default(),
        }
    }

    fn push(
        &mut self,
        outcome: Result<Accepted, Rejection>,
        kind: &'static str,
        index: Option<usize>,
        raw: &[u8],
    ) {
        self.tally.received(kind);
        match outcome {
            Ok(accepted) => {
                self.kinds.push(accepted.kind.as_str());
                self.append.events.push(NewEvent {
                    source: self.source.name.clone(),
                    message_id: accepted.message_id,
                    payload: accepted.payload,
                });
            }
            Err(rejection) => {
                self.tally.rejected(kind, rejection.code);
                self.append.rejected.push(RejectedInput {
                    source: self.source.name.clone(),
                    index,
                    code: rejection.code.to_owned(),
                    message: rejection.message,
                    payload: redact::redacted(raw),
                });
            }
        }
    }

    /// Appends everything in one durable commit, then counts.
    async fn store(mut self, state: &IngressState) -> Result<Tally, IngressError> {
        let name = &self.source.name;
        let appended = if self.append.events.is_empty() && self.append.rejected.is_empty() {
            Appended::default()
        } else {
            match state
                .shared
                .store
                .append(self.append, state.shared.config.dedup_window)
                .await
            {
                Ok(appended) => appended,
                Err(e) => {
                    if let Some(held_back) = STORE_FAILURES.admit() {
                        warn!(source = %name, error = %e, held_back, "could not store a request; answered 503");
                    }
                    self.tally.emit(&state.shared.counters, name, false);
                    return Err(IngressError::Store(e));
                }
            }
        };
        for (i, kind) in self.kinds.iter().enumerate() {
            if appended.duplicate.get(i).copied().unwrap_or(false) {
                self.tally.deduplicated(kind);
            } else {
                self.tally.accepted(kind);
            }
        }
        self.tally.emit(&state.shared.counters, name, true);
        Ok(self.tally)
    }
}

/// Store failures answered 503: while the store is down every request fails alike, so
/// one is logged per interval, with how many like it were held back.
static STORE_FAILURES: Throttle = Throttle::new(STORE_WARNINGS_EVERY);

/// A single-call endpoint: the path's type fills a missing `type`; a message that names
/// another type is taken as that type (see [`with_type`]).
async fn single(
    state: &IngressState,
    source: &Source,
    kind: MessageType,
    body: &[u8],
    received_at: DateTime<Utc>,
) -> Result<Response, IngressError> {
    let mut kind = kind;
    let outcome = {
        let mut room = Split::default();
        Read::single(body, &mut room)?.and_then(|mut read| {
            kind = with_type(read.message(), kind);
            accept(&mut read, None, received_at)
        })
    };
    let refused = outcome.as_ref().err().map(|r| (r.code, r.message.clone()));
    let mut collected = Collected::new(source);
    collected.push(outcome, kind.as_str(), None, body);
    let tally = collected.store(state).await?;
    let (accepted, duplicates, _) = tally.totals();
    match refused {
        Some((code, message)) => {
            debug!(source = %source.name, code, "message rejected");
            Err(IngressError::InvalidMessage { code, message })
        }
        None => {
            debug!(source = %source.name, r#type = kind.as_str(), accepted, duplicates, "message accepted");
            Ok(success(&[]))
        }
    }
}

/// The type a single call is taken as: its own `type` when that is one of the six, even
/// on another type's path (Segment's Webhooks destination posts every call to the one
/// URL it is given, and the message says what it is); the path's when it has none, which
/// is then filled in. An unknown `type` is left for validation to refuse, and counted
/// under the path's.
fn with_type(message: &mut Message, path: MessageType) -> MessageType {
    match message.kind.as_deref() {
        None => {
            message.kind = Some(path.as_str().to_owned());
            path
        }
        Some(text) => MessageType::parse(text).unwrap_or(path),
    }
}

/// One refused batch item, in the answer.
#[derive(Debug, Serialize)]
struct RejectedItem {
    index: usize,
    code: &'static str,
    message: String,
}

/// A batch endpoint: good items are stored even when others are refused, and the
/// answer is 200 either way (so clients do not resend the good ones), listing the
/// refused ones.
async fn batch(
    state: &IngressState,
    source: &Source,
    body: &[u8],
    received_at: DateTime<Utc>,
) -> Result<Response, IngressError> {
    let config = &state.shared.config;
    // The scan reads the envelope and every item at once (most bodies); else serde_json
    // reads the envelope and each item is read on its own, as `Read::item` reads it.
    let mut items = BatchItems {
        collected: Collected::new(source),
        listed: Vec::new(),
        max_message_bytes: config.max_message_bytes,
        received_at,
    };
    // The scan stops past `max_batch_items`, which the serde_json reading then refuses.
    let text = std::str::from_utf8(body).ok();
    match text.and_then(|text| stipple_core::split_batch(text, config.max_batch_items)) {
        Some(mut scanned) => {
            let sent_at = scanned.sent_at.as_deref();
            for (index, item) in scanned.items.iter_mut().enumerate() {
                items.take(index, item.raw, sent_at, || {
                    Ok(Read::Split(&mut item.split))
                });
            }
        }
        None => {
            let batch = parse_batch(body)?;
            if batch.batch.len() > config.max_batch_items {
                return Err(IngressError::TooManyItems {
                    count: batch.batch.len(),
                    limit: config.max_batch_items,
                });
            }
            let sent_at = batch.sent_at();
            for (index, raw) in batch.batch.iter().enumerate() {
                let mut room = Split::default();
                items.take(index, raw.get(), sent_at, || {
                    Read::item(&batch, index, &mut room)
                });
            }
        }
    }
    let BatchItems {
        collected, listed, ..
    } = items;
    let tally = collected.store(state).await?;
    let (accepted, duplicates, rejected) = tally.totals();
    debug!(source = %source.name, accepted, duplicates, rejected, "batch stored");
    Ok(success(&listed))
}

/// A batch's items on their way to the store, and the refused ones' list for the answer.
struct BatchItems<'s> {
    collected: Collected<'s>,
    listed: Vec<RejectedItem>,
    max_message_bytes: usize,
    received_at: DateTime<Utc>,
}

impl BatchItems<'_> {
    /// Item `index`, its text `raw`, read by `read` unless it is too large.
    fn take<'r, 'a: 'r>(
        &mut self,
        index: usize,
        raw: &str,
        sent_at: Option<&str>,
        read: impl FnOnce() -> Result<Read<'r, 'a>, ValidationError>,
    ) {
        let (kind, outcome) = if raw.len() > self.max_message_bytes {
            let rejection = Rejection {
                code: MESSAGE_TOO_LARGE,
                message: format!(
                    "the message is over {} bytes: send smaller messages",
                    self.max_message_bytes
                ),
            };
            ("unknown", Err(rejection))
        } else {
            match read() {
                Ok(mut read) => (
                    type_label(read.message().kind.as_deref()),
                    accept(&mut read, sent_at, self.received_at),
                ),
                Err(e) => ("unknown", Err(Rejection::from(e))),
            }
        };
        if let Err(rejection) = &outcome {
            self.listed.push(RejectedItem {
                index,
                code: rejection.code,
                message: rejection.message.clone(),
            });
        }
        self.collected
            .push(outcome, kind, Some(index), raw.as_bytes());
    }
}

/// A `/v1/batch` body read by `serde_json`, for what the batch scan declines: the
/// answers and error messages of whole-request problems are this reading's.
fn parse_batch(body: &[u8]) -> Result<stipple_core::Batch, IngressError> {
    match Input::parse_batch(body) {
        Ok(Input::Batch(batch)) => Ok(batch),
        Ok(Input::Message(_)) => Err(IngressError::WrongShape(
            "this endpoint takes {\"batch\": [...]}: post single messages to /v1/track, /v1/identify, ...",
        )),
        Err(e) if e.code == ErrorCode::InvalidJson => Err(IngressError::InvalidJson(e.message)),
        Err(e) => Err(IngressError::InvalidBatch(e.message)),
    }
}

fn success(rejected: &[RejectedItem]) -> Response {
    if rejected.is_empty() {
        // Nearly every answer: written once, not serialised per request.
        return (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            r#"{"success":true}"#,
        )
            .into_response();
    }
    let body = serde_json::json!({ "success": true, "rejected": rejected });
    (StatusCode::OK, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_fills_a_missing_type_and_a_message_s_own_type_wins() {
        let message = |kind: Option<&str>| Message {
            kind: kind.map(str::to_owned),
            ..Message::default()
        };
        let mut missing = message(None);
        assert_eq!(
            with_type(&mut missing, MessageType::Page),
            MessageType::Page
        );
        assert_eq!(missing.kind.as_deref(), Some("page"));
        let mut own = message(Some("track"));
        assert_eq!(with_type(&mut own, MessageType::Page), MessageType::Track);
        assert_eq!(own.kind.as_deref(), Some("track"));
        let mut unknown = message(Some("bogus"));
        assert_eq!(
            with_type(&mut unknown, MessageType::Page),
            MessageType::Page
        );
        assert_eq!(
            unknown.kind.as_deref(),
            Some("bogus"),
            "left for validation"
        );
    }
}
