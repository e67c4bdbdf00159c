//! Mapping throughput: realistic Segment messages from JSON bytes to Pointillist JSON
//! bytes, against a baseline that only parses and re-serialises the same bytes with
//! serde_json. Goal: the mapping keeps at least 0.8 of the baseline's throughput.
//! `stipple_map` is `Mapper::map_json`, what delivery runs, on messages with their keys
//! sorted (as `serde_json` writes them); `stipple_map_client_order` the same on messages
//! whose objects list their keys in reverse, as a client may send them and the ingress
//! stores its blocks; `stipple_map_reference` the path it is held to (`Message`,
//! `validate`, `map`, `to_json`). `store_1000_messages` times the ingress's reading for
//! storage of the client-order messages: `stipple_split` (`split`, `Rest::write`)
//! against the reference path it is held to (`Input::parse`, `serde_json::to_vec`).
//!
//! `cargo bench -p stipple-core --bench mapping` (or `cargo xtask bench-core`, which
//! prints the ratio).

#![allow(clippy::unwrap_used, reason = "benchmark set-up on fixed data")]
#![allow(
    missing_docs,
    reason = "criterion_group! generates an undocumented pub fn"
)]

use criterion::{BatchSize, Criterion, Throughput, black_box, criterion_group, criterion_main};
use serde_json::json;
use stipple_core::{Input, MapConfig, Mapper};

const MESSAGES: usize = 1000;

/// A realistic mix: mostly tracks and pages from the browser and mobile libraries,
/// some identifies with traits, a few groups, screens and aliases.
fn corpus() -> Vec<Vec<u8>> {
    let context = json!({
        "library": { "name": "analytics.js", "version": "next-1.70.0" },
        "ip": "203.0.113.7", "locale": "en-US",
        "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
        "page": { "path": "/cart", "referrer": "https://www.google.com/", "title": "Cart", "url": "https://shop.example.com/cart" },
        "campaign": { "name": "winter_sale", "source": "google", "medium": "cpc", "term": "boots" },
        "traits": { "email": "ada@example.com", "plan": "pro" },
        "device": { "id": "B5372DB0-C21E", "manufacturer": "Apple", "model": "iPhone16,1", "type": "ios" },
        "location": { "city": "San Francisco", "country": "United States", "latitude": 37.77, "longitude": -122.41 }
    });
    (0..MESSAGES)
        .map(|i| {
            let base = json!({
                "messageId": format!("ajs-next-{i:08}-0a1b2c3d4e5f"),
                "userId": format!("user-{}", i % 97),
                "anonymousId": "5f0e1c2a-aaaa-4bbb-8ccc-123456789abc",
                "timestamp": "2026-11-28T12:00:00.123Z",
                "sentAt": "2026-11-28T12:00:00.200Z",
                "receivedAt": "2026-11-28T12:00:00.250Z",
                "context": context,
                "integrations": {},
                "_metadata": { "bundled": ["Segment.io"], "unbundled": [] },
                "version": 2
            });
            let mut m = base.as_object().unwrap().clone();
            let extra = match i % 10 {
                0..=4 => json!({ "type": "track", "event": "Product Added", "properties": {
                    "product_id": "507f1f77bcf86cd799439011", "sku": "G-32", "category": "Games",
                    "name": "Monopoly: 3rd Edition", "brand": "Hasbro", "variant": "200 pieces",
                    "price": 18.99, "quantity": 1, "coupon": "MAYDEALS", "position": 3,
                    "url": "https://www.example.com/product/path", "image_url": "https://www.example.com/product/path.jpg"
                }}),
                5 | 6 => json!({ "type": "page", "name": "Cart", "category": "Shop", "properties": {
                    "path": "/cart", "title": "Cart", "url": "https://shop.example.com/cart", "referrer": "" } }),
                7 => json!({ "type": "identify", "traits": {
                    "email": "ada@example.com", "name": "Ada Lovelace", "plan": "pro", "logins": 5,
                    "address": { "city": "London", "country": "UK" }, "createdAt": "2020-01-01T00:00:00Z" } }),
                8 => json!({ "type": "screen", "name": "Home", "properties": { "variation": "blue", "load_ms": 312 } }),
                _ => json!({ "type": "group", "groupId": "acct-9", "traits": { "name": "Initech", "employees": 329 } }),
            };
            m.extend(extra.as_object().unwrap().clone());
            serde_json::to_vec(&m).unwrap()
        })
        .collect()
}

/// `value` as compact JSON with every object's keys in reverse order.
fn client_order(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            out.push('{');
            for (i, (key, value)) in map.iter().rev().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(key).unwrap());
                out.push(':');
                client_order(value, out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                client_order(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn bench(c: &mut Criterion) {
    let corpus = corpus();
    let clients: Vec<Vec<u8>> = corpus
        .iter()
        .map(|m| {
            let mut text = String::new();
            client_order(&serde_json::from_slice(m).unwrap(), &mut text);
            text.into_bytes()
        })
        .collect();
    let bytes: usize = corpus.iter().map(Vec::len).sum();
    let mapper = Mapper::new(MapConfig::default());
    let mut group = c.benchmark_group("map_1000_messages");
    group.throughput(Throughput::Elements(MESSAGES as u64));
    eprintln!("corpus: {MESSAGES} messages, {bytes} bytes");
    group.bench_function("baseline_serde_json_roundtrip", |b| {
        b.iter_batched(
            || (),
            |()| {
                for m in &corpus {
                    let value: serde_json::Value = serde_json::from_slice(m).unwrap();
                    black_box(serde_json::to_vec(&value).unwrap());
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("stipple_map", |b| {
        b.iter(|| {
            for m in &corpus {
                black_box(mapper.map_json(m).unwrap());
            }
        })
    });
    group.bench_function("stipple_map_client_order", |b| {
        b.iter(|| {
            for m in &clients {
                black_box(mapper.map_json(m).unwrap());
            }
        })
    });
    group.bench_function("stipple_map_reference", |b| {
        b.iter(|| {
            for m in &corpus {
                black_box(mapper.map_json_reference(m).unwrap());
            }
        })
    });
    group.finish();

    // The ingress's reading for storage: the fast path against the reference path.
    let mut group = c.benchmark_group("store_1000_messages");
    group.throughput(Throughput::Elements(MESSAGES as u64));
    group.bench_function("stipple_split", |b| {
        b.iter(|| {
            for m in &clients {
                let split = stipple_core::split(std::str::from_utf8(m).unwrap()).unwrap();
                black_box(split.rest.write(&split.plain).unwrap());
            }
        })
    });
    group.bench_function("stipple_split_reference", |b| {
        b.iter(|| {
            for m in &clients {
                let Input::Message(message) = Input::parse(m).unwrap() else {
                    unreachable!("the corpus holds messages")
                };
                black_box(serde_json::to_vec(&message).unwrap());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
