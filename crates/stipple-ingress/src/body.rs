//! Reading a request body: the content type check, the size caps, gzip and the in-flight
//! budget.
//!
//! The body is read at most up to its cap, and a gzip body is inflated at most up to
//! the same cap (plus one byte to notice the excess), so a gzip bomb costs no more
//! memory than an honest body. The bytes read, and inflated, are reserved from the
//! in-flight budget ([`Reservation`]) as they arrive, not announced: a client that
//! announces a large body and stalls holds only what it sent.

use std::future::poll_fn;
use std::io::Read;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::{Bytes, BytesMut};
use flate2::read::MultiGzDecoder;
use tokio::sync::Semaphore;

use crate::error::IngressError;
use crate::wake_hold;

/// How the body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// As is.
    Identity,
    /// `Content-Encoding: gzip`.
    Gzip,
}

/// Why a body could not be read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// Over the cap (before or after inflating).
    TooLarge,
    /// A transport error or bad gzip.
    Unreadable(String),
    /// The in-flight budget has no room for more.
    NoRoom,
}

/// The in-flight budget is counted in permits of this many bytes.
const IN_FLIGHT_UNIT: usize = 1024;

/// The permits `bytes` take: whole units, rounded up (the budget's own size too, so that
/// a budget of one batch always holds one).
pub(crate) fn units(bytes: usize) -> usize {
    bytes.div_ceil(IN_FLIGHT_UNIT)
}

/// Room taken from the in-flight budget for one request, given back when dropped (with
/// the answer).
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<Semaphore>,
    units: u32,
}

impl Reservation {
    /// Nothing reserved yet from `budget`.
    pub(crate) fn new(budget: Arc<Semaphore>) -> Self {
        Self { budget, units: 0 }
    }

    /// Grows the reservation to cover `bytes` in all (rounded up to whole units); an
    /// error, with the reservation as it was, when the budget has no room.
    fn cover(&mut self, bytes: usize) -> Result<(), BodyError> {
        let wanted = u32::try_from(units(bytes)).unwrap_or(u32::MAX);
        if wanted <= self.units {
            return Ok(());
        }
        let more = self
            .budget
            .try_acquire_many(wanted - self.units)
            .map_err(|_| BodyError::NoRoom)?;
        more.forget();
        self.units = wanted;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.add_permits(self.units as usize);
    }
}

/// Accepts `application/json` and `text/plain` (the browser library's choice, to avoid
/// a CORS preflight) with any parameters, and a missing `Content-Type` (curl and some
/// server libraries send none; the body must still be JSON).
pub(crate) fn check_content_type(headers: &HeaderMap) -> Result<(), IngressError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value
        .to_str()
        .map_err(|_| IngressError::UnsupportedContentType("(not text)".to_owned()))?;
    let mime = text.split(';').next().unwrap_or_default().trim();
    if mime.is_empty()
        || mime.eq_ignore_ascii_case("application/json")
        || mime.eq_ignore_ascii_case("text/plain")
    {
        Ok(())
    } else {
        Err(IngressError::UnsupportedContentType(mime.to_owned()))
    }
}

/// Reads `Content-Encoding`: none, `identity`, `gzip` or `x-gzip`.
pub(crate) fn encoding(headers: &HeaderMap) -> Result<Encoding, IngressError> {
    let mut result = Encoding::Identity;
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = value
            .to_str()
            .map_err(|_| IngressError::UnsupportedContentEncoding("(not text)".to_owned()))?;
        for coding in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if coding.eq_ignore_ascii_case("identity") {
                continue;
            }
            let gzip = coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip");
            if !gzip || result == Encoding::Gzip {
                return Err(IngressError::UnsupportedContentEncoding(text.to_owned()));
            }
            result = Encoding::Gzip;
        }
    }
    Ok(result)
}

/// Reads the body, inflating gzip, and refuses it when it is over `limit` bytes; `room`
/// grows to cover the bytes read and inflated.
pub(crate) async fn read(
    body: Body,
    headers: &HeaderMap,
    encoding: Encoding,
    limit: usize,
    room: &mut Reservation,
) -> Result<Bytes, BodyError> {
    // gzip of incompressible data is slightly larger than the data itself.
    let raw_cap = match encoding {
        Encoding::Identity => limit,
        Encoding::Gzip => limit.saturating_add(limit / 64).saturating_add(1024),
    };
    if announced_length(headers).is_some_and(|len| len > raw_cap as u64) {
        return Err(BodyError::TooLarge);
    }
    let raw = collect(body, raw_cap, limit, room).await?;
    match encoding {
        Encoding::Identity => Ok(raw),
        Encoding::Gzip => {
            // Inflated in one go on the worker, and the packed bytes dropped: the room
            // then covers the larger of the two. The budget is passed only while a body
            // inflates, by at most one body per worker thread; counting both would make
            // a gzipped batch at the size limit never fit a budget of one batch.
            let inflated = gunzip(&raw, limit)?;
            drop(raw);
            room.cover(inflated.len())?;
            Ok(Bytes::from(inflated))
        }
    }
}

/// The body's `Content-Length`, when it announces one.
pub(crate) fn announced_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// Whether the budget has room now for a body announced as `headers` say, up to `limit`
/// (true when none is announced): a request that cannot fit is better refused before
/// its upload than halfway through it. Nothing is reserved.
pub(crate) fn may_fit(budget: &Semaphore, headers: &HeaderMap, limit: usize) -> bool {
    announced_length(headers).is_none_or(|len| {
        let bytes = usize::try_from(len).unwrap_or(usize::MAX).min(limit);
        budget.available_permits() >= units(bytes)
    })
}

/// Reads at most `cap` bytes, reserving them as they come (a gzip body's slack beyond
/// `limit`, `cap - limit`, is not reserved: the budget holds one body at `limit`).
///
/// A body that arrives as one frame, as nearly every single-event body does (hyper hands
/// it over as a slice of the connection's read buffer), is kept as it is, not copied.
async fn collect(
    mut body: Body,
    cap: usize,
    limit: usize,
    room: &mut Reservation,
) -> Result<Bytes, BodyError> {
    // The first frame; once a second arrives, every frame joined.
    let mut first: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    let mut len = 0usize;
    while let Some(frame) = poll_fn(|cx| wake_hold::poll_frame(&mut body, cx)).await {
        let frame = frame.map_err(|e| BodyError::Unreadable(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            len = len.saturating_add(data.len());
            if len > cap {
                return Err(BodyError::TooLarge);
            }
            room.cover(len.min(limit))?;
            match first.take() {
                None if joined.is_empty() => first = Some(data),
                None => joined.extend_from_slice(&data),
                Some(earlier) => {
                    joined.reserve(len);
                    joined.extend_from_slice(&earlier);
                    joined.extend_from_slice(&data);
                }
            }
        }
    }
    Ok(first.unwrap_or_else(|| joined.freeze()))
}

/// Inflates at most `limit + 1` bytes. At 500 KiB this takes a millisecond or so,
/// short enough to do on the async worker.
pub(crate) fn gunzip(raw: &[u8], limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    MultiGzDecoder::new(raw)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BodyError::Unreadable(format!("invalid gzip: {e}")))?;
    if out.len() > limit {
        return Err(BodyError::TooLarge);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use axum::http::HeaderValue;
    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn content_types() {
        let check = |value: Option<&str>, ok: bool| {
            let map = match value {
                Some(v) => headers(&[(header::CONTENT_TYPE, v)]),
                None => HeaderMap::new(),
            };
            assert_eq!(check_content_type(&map).is_ok(), ok, "{value:?}");
        };
        check(None, true);
        check(Some("application/json"), true);
        check(Some("application/json; charset=utf-8"), true);
        check(Some("Application/JSON"), true);
        check(Some("text/plain;charset=UTF-8"), true);
        check(Some("application/xml"), false);
        check(Some("application/x-www-form-urlencoded"), false);
        check(Some("text/html"), false);
    }

    #[test]
    fn content_encodings() {
        let check = |values: &[&str], expected: Option<Encoding>| {
            let pairs: Vec<_> = values
                .iter()
                .map(|v| (header::CONTENT_ENCODING, *v))
                .collect();
            assert_eq!(encoding(&headers(&pairs)).ok(), expected, "{values:?}");
        };
        check(&[], Some(Encoding::Identity));
        check(&["identity"], Some(Encoding::Identity));
        check(&["gzip"], Some(Encoding::Gzip));
        check(&["x-gzip"], Some(Encoding::Gzip));
        check(&["GZIP"], Some(Encoding::Gzip));
        check(&["br"], None);
        check(&["deflate"], None);
        check(&["gzip, gzip"], None);
        check(&["gzip", "gzip"], None);
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn gunzip_caps_the_inflated_size() {
        assert_eq!(gunzip(&gzip(b"{}"), 2), Ok(b"{}".to_vec()));
        assert_eq!(gunzip(&gzip(b"{ }"), 2), Err(BodyError::TooLarge));
        let bomb = gzip(&vec![b' '; 10 * 1024 * 1024]);
        assert!(bomb.len() < 20 * 1024);
        assert_eq!(gunzip(&bomb, 500 * 1024), Err(BodyError::TooLarge));
        assert!(matches!(
            gunzip(b"not gzip", 100),
            Err(BodyError::Unreadable(_))
        ));
    }

    /// Room for everything here.
    fn room() -> Reservation {
        Reservation::new(Arc::new(Semaphore::new(1 << 20)))
    }

    #[tokio::test]
    async fn read_refuses_bodies_over_the_cap() {
        let none = HeaderMap::new();
        let read_text = |text: &'static str, limit| {
            let none = none.clone();
            async move {
                read(
                    Body::from(text),
                    &none,
                    Encoding::Identity,
                    limit,
                    &mut room(),
                )
                .await
            }
        };
        assert_eq!(read_text("abc", 3).await, Ok(Bytes::from_static(b"abc")));
        assert_eq!(read_text("abcd", 3).await, Err(BodyError::TooLarge));
        let announced = headers(&[(header::CONTENT_LENGTH, "1000000")]);
        assert_eq!(
            read(
                Body::from("x"),
                &announced,
                Encoding::Identity,
                10,
                &mut room()
            )
            .await,
            Err(BodyError::TooLarge)
        );
        assert_eq!(
            read(
                Body::from(gzip(b"hello")),
                &none,
                Encoding::Gzip,
                5,
                &mut room()
            )
            .await,
            Ok(Bytes::from_static(b"hello"))
        );
    }

    #[tokio::test]
    async fn a_body_in_several_frames_is_read_whole_and_capped_whole() {
        let none = HeaderMap::new();
        let frames = |parts: &[&'static str]| {
            let parts: Vec<Result<Bytes, std::io::Error>> = parts
                .iter()
                .map(|part| Ok(Bytes::from_static(part.as_bytes())))
                .collect();
            Body::from_stream(futures::stream::iter(parts))
        };
        for parts in [
            &["ab", "c", "de"][..],
            &["", "abc", "", "de"],
            &["abcde"],
            &["abcd", "e", ""],
        ] {
            let body = read(frames(parts), &none, Encoding::Identity, 5, &mut room()).await;
            assert_eq!(body, Ok(Bytes::from_static(b"abcde")), "{parts:?}");
        }
        let over = read(
            frames(&["abc", "def"]),
            &none,
            Encoding::Identity,
            5,
            &mut room(),
        )
        .await;
        assert_eq!(over, Err(BodyError::TooLarge));
        let empty = read(frames(&[]), &none, Encoding::Identity, 5, &mut room()).await;
        assert_eq!(empty, Ok(Bytes::new()));
    }

    #[tokio::test]
    async fn the_bytes_read_and_inflated_are_reserved_until_dropped() {
        let budget = Arc::new(Semaphore::new(3));
        let none = HeaderMap::new();
        let mut room = Reservation::new(Arc::clone(&budget));
        let body = vec![b'x'; 1500];
        let read_body = read(
            Body::from(body.clone()),
            &none,
            Encoding::Identity,
            4096,
            &mut room,
        );
        assert_eq!(read_body.await.map(|b| b.len()), Ok(1500));
        // 1,500 bytes: two units of 1 KiB.
        assert_eq!(budget.available_permits(), 1);
        // Another body finds room for one unit only.
        let mut other = Reservation::new(Arc::clone(&budget));
        let too_big = read(
            Body::from(body),
            &none,
            Encoding::Identity,
            4096,
            &mut other,
        );
        assert_eq!(too_big.await, Err(BodyError::NoRoom));
        drop(other);
        assert_eq!(budget.available_permits(), 1);
        drop(room);
        assert_eq!(budget.available_permits(), 3);
        // gzip: what it inflated to.
        let mut room = Reservation::new(Arc::clone(&budget));
        let packed = gzip(&[b' '; 3500]);
        let inflated = read(Body::from(packed), &none, Encoding::Gzip, 4096, &mut room);
        assert_eq!(inflated.await, Err(BodyError::NoRoom));
        drop(room);
        assert_eq!(budget.available_permits(), 3);
    }

    #[tokio::test]
    async fn a_gzip_body_at_the_limit_fits_a_budget_of_the_limit() {
        // Incompressible: gzip makes it larger than the limit, inflated it is within.
        let mut state = 1u32;
        let data: Vec<u8> = (0..2040)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 24) as u8
            })
            .collect();
        let packed = gzip(&data);
        assert!(packed.len() > 2048, "{}", packed.len());
        let budget = Arc::new(Semaphore::new(2));
        let mut room = Reservation::new(Arc::clone(&budget));
        let none = HeaderMap::new();
        let read_body = read(Body::from(packed), &none, Encoding::Gzip, 2048, &mut room);
        assert_eq!(read_body.await, Ok(Bytes::from(data)));
    }

    #[test]
    fn an_announced_body_must_fit_the_room_left() {
        let budget = Semaphore::new(4);
        let announcing = |len: &str| headers(&[(header::CONTENT_LENGTH, len)]);
        assert!(may_fit(&budget, &HeaderMap::new(), 1 << 20));
        assert!(may_fit(&budget, &announcing("4096"), 1 << 20));
        assert!(!may_fit(&budget, &announcing("4097"), 1 << 20));
        // Counted up to the limit: more is refused as too large later, not as no room.
        assert!(may_fit(&budget, &announcing("999999"), 4096));
    }
}
