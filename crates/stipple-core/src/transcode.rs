//! Mapping a stored message straight from its JSON text to the JSON body of its
//! Pointillist event: the delivery hot path behind [`Mapper::map_json`].
//!
//! The reference path reads a [`crate::Message`], whose attribute blocks are
//! `serde_json` trees, maps it to a [`crate::PointillistEvent`] of `BTreeMap`s and
//! serialises that: each attribute is allocated three times and walked three times.
//! Here the text is read once, strings are borrowed from it where they have no escapes,
//! and the attributes go into one flat list that is sorted once and written out.
//!
//! The output is the reference path's, byte for byte, whatever the order of a block's
//! keys (the ingress stores blocks as clients send them; stores written before kept them
//! sorted). The reference path flattens a block in its map's key order, so it
//! differs only where two of a block's keys become one label key: a key repeated in an
//! object, or a nested `"a": {"b": ..}` beside a literal `"a.b"`. This path declines
//! those, and anything else it does not read alike: an empty key, invalid JSON, a
//! message that fails validation or has no time. The caller then takes the reference
//! path, whose results and error messages stand. `tests/transcode.rs` holds the two to
//! the same bytes on generated messages, in and out of those conditions.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

use serde::de::value::SeqAccessDeserializer;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Number;

use crate::event::EventTime;
use crate::map::{ACCOUNT, Mapper, POINTILLIST};
use crate::message::{IdText, MessageType, Text, read_plain_field};
use crate::time::{is_rfc3339_year, parse_timestamp};
use crate::validate::MAX_MESSAGE_ID_LEN;

/// Maps `text` on the fast path: `None` when it declines the message (the caller takes
/// the reference path), `Some(None)` when the message is valid and its `integrations`
/// turn Pointillist off, else the body of its Pointillist request.
pub(crate) fn map_text(mapper: &Mapper, text: &str) -> Option<Option<Vec<u8>>> {
    ATTRIBUTE_BYTES.set(0);
    serde_json::from_str::<View<'_>>(text).ok()?.map(mapper)
}

thread_local! {
    /// The attribute bytes the message being read holds so far, counted at least as the
    /// reference path counts them (`map::MAX_ATTRIBUTE_BYTES`), plus [`ENTRY_SLACK`] an
    /// entry for a prefix it may get: past the limit the fast path declines, before it
    /// has built much, and the reference path refuses the message.
    static ATTRIBUTE_BYTES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Counted for each attribute beyond its key and value: the longest prefix, `campaign.`.
const ENTRY_SLACK: usize = 16;

/// Counts a block's entries at least as the reference path would (a nested key a second
/// time: `Flatten` counted it as it built it); false once past the limit.
fn count_block(entries: &[Entry<'_>]) -> bool {
    let bytes = entries.iter().fold(0usize, |bytes, entry| {
        let value = match &entry.value {
            Attr::Text(text) => text.len(),
            Attr::Bool(_) => 5,
            Attr::Number(_) => crate::map::NUMBER_TEXT_BYTES,
            Attr::Array(text) => text.len(),
            Attr::Key => return bytes,
        };
        bytes.saturating_add(entry.key.len() + value + ENTRY_SLACK)
    });
    count_attribute(bytes, 0)
}

/// Counts an attribute of `key_len` and `value_len` bytes; false once past the limit.
fn count_attribute(key_len: usize, value_len: usize) -> bool {
    let total = ATTRIBUTE_BYTES
        .get()
        .saturating_add(key_len + value_len + ENTRY_SLACK);
    ATTRIBUTE_BYTES.set(total);
    total <= crate::map::MAX_ATTRIBUTE_BYTES
}

/// The error that makes the fast path decline a block that grows past the limit.
const TOO_LARGE: &str = "attributes past the limit";

/// The error that makes the fast path decline a block (its message is never shown).
const EMPTY_KEY: &str = "an empty key";

fn present(id: Option<&IdText<'_>>) -> bool {
    id.is_some_and(|id| !matches!(id, IdText::Text(s) if s.is_empty()))
}

/// One attribute's value.
enum Attr<'a> {
    Text(Cow<'a, str>),
    Bool(bool),
    Number(Number),
    /// An array, as its compact JSON.
    Array(String),
    /// No attribute: a key whose value is `null` or an object, kept until the block is
    /// settled so that a key repeated in an object is seen (see [`settle`]).
    Key,
}

/// One attribute: its key is `prefix.key`, or `key` when the prefix is empty.
struct Entry<'a> {
    prefix: &'static str,
    key: Cow<'a, str>,
    value: Attr<'a>,
}

impl Entry<'_> {
    /// Orders a prefixed entry (`self`) against an unprefixed key, as the full keys'
    /// bytes compare (the reference path's `BTreeMap<String, _>` order), without
    /// joining prefix and key.
    fn cmp_plain(&self, plain: &str) -> Ordering {
        let (prefix, plain) = (self.prefix.as_bytes(), plain.as_bytes());
        let head = prefix.len().min(plain.len());
        match prefix.cmp(&plain[..head]) {
            Ordering::Equal if plain.len() > prefix.len() => {}
            other => return other.then(Ordering::Greater),
        }
        match b'.'.cmp(&plain[prefix.len()]) {
            Ordering::Equal => self.key.as_bytes().cmp(&plain[prefix.len() + 1..]),
            other => other,
        }
    }
}

/// Sorts a list by key and drops its [`Attr::Key`] entries; false when a key is there
/// twice (the caller declines). The reference path keeps the one it flattens last, in
/// the order of a `serde_json` map's keys, not of the text: a key repeated in an object
/// (with any values, hence the `Key` entries), or a nested `"a": {"b": ..}` beside a
/// literal `"a.b"`, is left to it.
fn settle(entries: &mut Vec<Entry<'_>>) -> bool {
    if !entries.is_sorted_by(|a, b| a.key < b.key) {
        entries.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        if entries.windows(2).any(|w| w[0].key == w[1].key) {
            return false;
        }
    }
    entries.retain(|e| !matches!(e.value, Attr::Key));
    true
}

/// Sets a label in a settled unprefixed list, replacing an entry of the same key.
fn set_label<'a>(plain: &mut Vec<Entry<'a>>, key: &'static str, value: Option<Text<'a>>) {
    let Some(Text(value)) = value else { return };
    count_attribute(key.len(), value.len());
    let entry = Entry {
        prefix: "",
        key: Cow::Borrowed(key),
        value: Attr::Text(value),
    };
    match plain.binary_search_by(|e| (*e.key).cmp(key)) {
        Ok(at) => plain[at] = entry,
        Err(at) => plain.insert(at, entry),
    }
}

/// Merges settled prefixed blocks and the settled unprefixed list into one list in
/// full-key order. Prefixes are distinct words, so each block's keys are contiguous
/// in that order, the blocks ordered by prefix; an unprefixed entry was written after
/// every prefixed one, so it wins a tie.
fn merge<'a>(
    mut prefixed: Vec<(&'static str, Vec<Entry<'a>>)>,
    plain: Vec<Entry<'a>>,
) -> Vec<Entry<'a>> {
    prefixed.sort_unstable_by_key(|(prefix, _)| *prefix);
    let total = plain.len() + prefixed.iter().map(|(_, b)| b.len()).sum::<usize>();
    let mut out = Vec::with_capacity(total);
    let mut plain = plain.into_iter().peekable();
    for (prefix, block) in prefixed {
        for entry in block {
            let entry = Entry { prefix, ..entry };
            loop {
                match plain.peek().map(|p| entry.cmp_plain(&p.key)) {
                    Some(Ordering::Greater) => out.extend(plain.next()),
                    Some(Ordering::Equal) => break,
                    _ => {
                        out.push(entry);
                        break;
                    }
                }
            }
        }
    }
    out.extend(plain);
    out
}

/// An attribute block as read: `None` when absent or `null`.
type Block<'a> = Option<Vec<Entry<'a>>>;

/// Reads one object's members into `out`, keys joined to `path` with `.`.
struct Flatten<'s, 'a> {
    out: &'s mut Vec<Entry<'a>>,
    path: &'s str,
}

impl<'de> Visitor<'de> for Flatten<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Text<'de>>()? {
            if key.is_empty() {
                return Err(de::Error::custom(EMPTY_KEY));
            }
            let full = if self.path.is_empty() {
                key.0.clone()
            } else {
                // A nested key repeats its whole path: the one way a block outgrows its
                // text, so counted (and stopped) as it is built. Every other entry is
                // counted once its block is read (`count_block`).
                let full = format!("{}.{}", self.path, &*key);
                if !count_attribute(full.len(), 0) {
                    return Err(de::Error::custom(TOO_LARGE));
                }
                Cow::Owned(full)
            };
            map.next_value_seed(Member {
                out: &mut *self.out,
                key: full,
            })?;
        }
        Ok(())
    }
}

/// Reads one member's value: `Mapper`'s flattening rules, applied as it is read.
struct Member<'s, 'a> {
    out: &'s mut Vec<Entry<'a>>,
    key: Cow<'a, str>,
}

impl<'a> Member<'_, 'a> {
    fn push(self, value: Attr<'a>) {
        self.out.push(Entry {
            prefix: "",
            key: self.key,
            value,
        });
    }
}

impl<'de> DeserializeSeed<'de> for Member<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Member<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.push(Attr::Key);
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.push(Attr::Bool(v));
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.push(Attr::Number(v.into()));
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.push(Attr::Number(v.into()));
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        // serde_json reads a non-finite float as null, which maps to nothing.
        self.push(Number::from_f64(v).map_or(Attr::Key, Attr::Number));
        Ok(())
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<(), E> {
        self.push(Attr::Text(Cow::Borrowed(v)));
        Ok(())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.push(Attr::Text(Cow::Owned(v.to_owned())));
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        // Arrays are rare: they go the reference path's way, through a tree.
        let items = Vec::<serde_json::Value>::deserialize(SeqAccessDeserializer::new(seq))?;
        let text = serde_json::to_string(&items).map_err(de::Error::custom)?;
        self.push(Attr::Array(text));
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let Member { out, key } = self;
        // Before its members, where it sorts ("a" before "a.b"): sorted text stays so.
        out.push(Entry {
            prefix: "",
            key: key.clone(),
            value: Attr::Key,
        });
        Flatten { out, path: &key }.visit_map(map)
    }
}

/// `properties` or `traits`: an object or `null`, anything else an error.
struct TopBlock;

impl<'de> DeserializeSeed<'de> for TopBlock {
    type Value = Block<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopBlock {
    type Value = Block<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object or null")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        Flatten {
            out: &mut out,
            path: "",
        }
        .visit_map(map)?;
        if !count_block(&out) {
            return Err(de::Error::custom(TOO_LARGE));
        }
        Ok(Some(out))
    }
}

/// A context block: mapped when it is an object, any other value is read and left.
struct ContextBlock;

impl<'de> DeserializeSeed<'de> for ContextBlock {
    type Value = Block<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ContextBlock {
    type Value = Block<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        TopBlock.visit_map(map)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        serde_json::Value::deserialize(SeqAccessDeserializer::new(seq))?;
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// The context blocks the mapping reads.
#[derive(Default)]
struct ContextView<'a> {
    traits: Block<'a>,
    device: Block<'a>,
    campaign: Block<'a>,
    location: Block<'a>,
}

impl<'de> Deserialize<'de> for ContextView<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ContextVisitor;
        impl<'de> Visitor<'de> for ContextVisitor {
            type Value = ContextView<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a context object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut c = ContextView::default();
                while let Some(key) = map.next_key::<Text<'de>>()? {
                    match &*key {
                        "traits" => c.traits = map.next_value_seed(ContextBlock)?,
                        "device" => c.device = map.next_value_seed(ContextBlock)?,
                        "campaign" => c.campaign = map.next_value_seed(ContextBlock)?,
                        "location" => c.location = map.next_value_seed(ContextBlock)?,
                        "personas" => {
                            map.next_value::<serde_json::Value>()?;
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(c)
            }
        }
        d.deserialize_map(ContextVisitor)
    }
}

/// The `integrations` object, as far as routing reads it.
#[derive(Default)]
struct Routing {
    /// `"Pointillist"`: on or off (`crate::message::destination_switch`), or `None` when
    /// absent or naming neither.
    pointillist: Option<bool>,
    /// `"All": false`.
    all_off: bool,
}

impl Routing {
    /// `Message::is_enabled_for(POINTILLIST)`.
    fn enabled(&self) -> bool {
        crate::message::routed(self.pointillist, self.all_off)
    }
}

impl<'de> Deserialize<'de> for Routing {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RoutingVisitor;
        impl<'de> Visitor<'de> for RoutingVisitor {
            type Value = Routing;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integrations object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Routing, A::Error> {
                let mut r = Routing::default();
                while let Some(key) = map.next_key::<Text<'de>>()? {
                    match &*key {
                        POINTILLIST => {
                            let value: serde_json::Value = map.next_value()?;
                            r.pointillist = crate::message::destination_switch(&value);
                        }
                        "All" => {
                            let value: serde_json::Value = map.next_value()?;
                            r.all_off = crate::message::is_false(&value);
                        }
                        _ => {
                            map.next_value::<serde_json::Value>()?;
                        }
                    }
                }
                Ok(r)
            }
        }
        d.deserialize_map(RoutingVisitor)
    }
}

/// The fields of a message the mapping reads, borrowed from its text.
#[derive(Default)]
struct View<'a> {
    kind: Option<Text<'a>>,
    message_id: Option<Text<'a>>,
    user_id: Option<IdText<'a>>,
    anonymous_id: Option<IdText<'a>>,
    previous_id: Option<IdText<'a>>,
    group_id: Option<IdText<'a>>,
    event: Option<Text<'a>>,
    name: Option<Text<'a>>,
    category: Option<Text<'a>>,
    timestamp: Option<Text<'a>>,
    original_timestamp: Option<Text<'a>>,
    sent_at: Option<Text<'a>>,
    received_at: Option<Text<'a>>,
    properties: Block<'a>,
    traits: Block<'a>,
    context: Option<ContextView<'a>>,
    routing: Option<Routing>,
}

impl<'de> Deserialize<'de> for View<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ViewVisitor;
        impl<'de> Visitor<'de> for ViewVisitor {
            type Value = View<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Segment message (a JSON object)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<View<'de>, A::Error> {
                let mut m = View::default();
                while let Some(key) = map.next_key::<Text<'de>>()? {
                    if read_plain_field!(&*key, m, map) {
                        continue;
                    }
                    match &*key {
                        "properties" => m.properties = map.next_value_seed(TopBlock)?,
                        "traits" => m.traits = map.next_value_seed(TopBlock)?,
                        "context" => m.context = map.next_value()?,
                        "integrations" => m.routing = map.next_value()?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(m)
            }
        }
        d.deserialize_map(ViewVisitor)
    }
}

/// A timestamp field: `Some(None)` when absent, `None` when validation would refuse it
/// (it does not parse, or falls outside RFC 3339's years).
fn time(field: &Option<Text<'_>>) -> Option<Option<chrono::DateTime<chrono::Utc>>> {
    match field {
        None => Some(None),
        Some(text) => parse_timestamp(text)
            .filter(|time| is_rfc3339_year(*time))
            .map(Some),
    }
}

/// A prefixed block, settled, when there is one; `Err` when it has a key twice.
fn prefixed<'a>(
    prefix: &'static str,
    block: Block<'a>,
) -> Result<Option<(&'static str, Vec<Entry<'a>>)>, Repeated> {
    let Some(mut block) = block else {
        return Ok(None);
    };
    if settle(&mut block) {
        Ok(Some((prefix, block)))
    } else {
        Err(Repeated)
    }
}

/// A block holds a key twice: the fast path declines it.
struct Repeated;

impl<'a> View<'a> {
    /// `Message::validate`, `is_enabled_for` and `Mapper::map`; `None` to decline.
    fn map(self, mapper: &Mapper) -> Option<Option<Vec<u8>>> {
        let kind = MessageType::parse(self.kind.as_deref()?)?;
        if !present(self.user_id.as_ref()) && !present(self.anonymous_id.as_ref()) {
            return None;
        }
        let valid = match kind {
            MessageType::Track => self.event.as_deref().is_some_and(|e| !e.trim().is_empty()),
            MessageType::Group => present(self.group_id.as_ref()),
            MessageType::Alias => {
                present(self.user_id.as_ref()) && present(self.previous_id.as_ref())
            }
            _ => true,
        };
        if !valid {
            return None;
        }
        if let Some(id) = &self.message_id {
            if id.chars().count() >= MAX_MESSAGE_ID_LEN {
                return None;
            }
        }
        let timestamp = time(&self.timestamp)?;
        let original = time(&self.original_timestamp)?;
        time(&self.sent_at)?;
        let received_at = time(&self.received_at)?;
        if !self.routing.as_ref().is_none_or(Routing::enabled) {
            return Some(None);
        }
        let event_time = EventTime(timestamp.or(received_at).or(original)?);

        let mut customer: Vec<(&str, Cow<'a, str>)> = Vec::with_capacity(2);
        let mut account = None;
        let mut blocks = Vec::new();
        let mut plain = Vec::new();
        let event_type: Cow<'a, str>;
        let context = self.context.unwrap_or_default();
        match kind {
            MessageType::Alias => {
                customer.extend(
                    self.previous_id
                        .and_then(|id| id.text())
                        .map(|t| ("previousId", t)),
                );
                customer.extend(self.user_id.and_then(|id| id.text()).map(|t| ("userId", t)));
                event_type = Cow::Borrowed(kind.as_str());
            }
            _ => {
                customer.extend(
                    self.anonymous_id
                        .and_then(|id| id.text())
                        .map(|t| ("anonymousId", t)),
                );
                customer.extend(self.user_id.and_then(|id| id.text()).map(|t| ("userId", t)));
                match kind {
                    MessageType::Identify => {
                        event_type = Cow::Borrowed(kind.as_str());
                        plain = self.traits.or(context.traits).unwrap_or_default();
                        if !settle(&mut plain) {
                            return None;
                        }
                    }
                    MessageType::Group => {
                        event_type = Cow::Borrowed(kind.as_str());
                        account = self.group_id.and_then(|id| id.text());
                        blocks.extend(prefixed("group", self.traits).ok()?);
                    }
                    _ => {
                        blocks.extend(prefixed("trait", context.traits).ok()?);
                        blocks.extend(prefixed("device", context.device).ok()?);
                        blocks.extend(prefixed("campaign", context.campaign).ok()?);
                        blocks.extend(prefixed("location", context.location).ok()?);
                        plain = self.properties.unwrap_or_default();
                        if !settle(&mut plain) {
                            return None;
                        }
                        event_type = match kind {
                            MessageType::Track => self.event.map(|e| e.0).unwrap_or_default(),
                            _ => Cow::Borrowed(kind.as_str()),
                        };
                        if kind != MessageType::Track {
                            set_label(&mut plain, "name", self.name);
                        }
                        if kind == MessageType::Page {
                            set_label(&mut plain, "category", self.category);
                        }
                    }
                }
            }
        }
        // An empty one counts as none, as in `Message::validate`.
        let message_id = self.message_id.filter(|id| !id.is_empty());
        if message_id.is_none() {
            // As `Mapper::map`: the label is the message's id, not a property's.
            if let Ok(at) = plain.binary_search_by(|e| (*e.key).cmp("messageId")) {
                if !matches!(plain[at].value, Attr::Key) {
                    plain.remove(at);
                }
            }
        }
        set_label(&mut plain, "messageId", message_id);
        // With the call's own labels (`set_label` counts them): over the limit, the
        // reference path refuses it.
        if ATTRIBUTE_BYTES.get() > crate::map::MAX_ATTRIBUTE_BYTES {
            return None;
        }
        let attrs = merge(blocks, plain);

        let config = mapper.config();
        let wire = Wire {
            event_source: &config.event_source,
            event_type: &event_type,
            event_time,
            actor_type: &config.actor_type,
            customer: &customer,
            account: account.as_deref(),
            attrs: &attrs,
        };
        let mut body = Vec::with_capacity(256);
        serde_json::to_writer(&mut body, &wire).ok()?;
        Some(Some(body))
    }
}

/// The event as written: the shape of [`crate::PointillistEvent`]'s JSON.
struct Wire<'w> {
    event_source: &'w str,
    event_type: &'w str,
    event_time: EventTime,
    actor_type: &'w str,
    customer: &'w [(&'w str, Cow<'w, str>)],
    /// A group call's `groupId`.
    account: Option<&'w str>,
    /// Sorted by key, one entry a key.
    attrs: &'w [Entry<'w>],
}

impl Serialize for Wire<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let labels = self
            .attrs
            .iter()
            .any(|e| !matches!(e.value, Attr::Number(_)));
        let numbers = self
            .attrs
            .iter()
            .any(|e| matches!(e.value, Attr::Number(_)));
        let mut event = s.serialize_struct("PointillistEvent", 6)?;
        event.serialize_field("eventSource", self.event_source)?;
        event.serialize_field("eventType", self.event_type)?;
        event.serialize_field("eventTime", &self.event_time)?;
        event.serialize_field("actors", &Actors(self))?;
        if labels {
            event.serialize_field("labels", &Attrs(self.attrs, false))?;
        }
        if numbers {
            event.serialize_field("numbers", &Attrs(self.attrs, true))?;
        }
        event.end()
    }
}

/// The actors, in key order; the primary actor type wins over `account` if they are
/// the same name, as the reference path's map insertions do.
struct Actors<'w>(&'w Wire<'w>);

impl Serialize for Actors<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let wire = self.0;
        let customer = Ids(wire.customer);
        let account = wire.account.filter(|_| wire.actor_type != ACCOUNT);
        let mut actors = s.serialize_map(None)?;
        match account {
            None => actors.serialize_entry(wire.actor_type, &customer)?,
            Some(group_id) => {
                let group = [("groupId", Cow::Borrowed(group_id))];
                let account = (ACCOUNT, Ids(&group));
                let customer = (wire.actor_type, customer);
                let (first, second) = if ACCOUNT < wire.actor_type {
                    (account, customer)
                } else {
                    (customer, account)
                };
                actors.serialize_entry(first.0, &first.1)?;
                actors.serialize_entry(second.0, &second.1)?;
            }
        }
        actors.end()
    }
}

/// One actor's identifiers, already in key order.
struct Ids<'w>(&'w [(&'w str, Cow<'w, str>)]);

impl Serialize for Ids<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut ids = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            ids.serialize_entry(name, value)?;
        }
        ids.end()
    }
}

/// The labels (`false`) or the numbers (`true`) of a sorted attribute list.
struct Attrs<'w>(&'w [Entry<'w>], bool);

impl Serialize for Attrs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        let mut joined = String::new();
        for entry in self.0 {
            let key: &str = if entry.prefix.is_empty() {
                &entry.key
            } else {
                joined.clear();
                joined.push_str(entry.prefix);
                joined.push('.');
                joined.push_str(&entry.key);
                &joined
            };
            match (&entry.value, self.1) {
                (Attr::Number(n), true) => map.serialize_entry(&key, n)?,
                (Attr::Text(text), false) => map.serialize_entry(&key, text)?,
                (Attr::Array(text), false) => map.serialize_entry(&key, text)?,
                (Attr::Bool(b), false) => {
                    map.serialize_entry(&key, if *b { "true" } else { "false" })?;
                }
                _ => {}
            }
        }
        map.end()
    }
}
