//! An async client for Pointillist's streaming API: one event per
//! `POST {endpoint}/event`, over keep-alive connections with bounded concurrency.
//!
//! Every answer (or the lack of one) becomes an [`Outcome`] that says what the sender
//! must do, following the response table of the wire contract; [`Backoff`] says how long
//! to wait before retrying a transient one. The API token is a secret: it appears in no
//! `Debug` output, log line or error.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use stipple_mock::{Faults, MockConfig, MockServer};
//! use stipple_pointillist::{Backoff, Client, ClientConfig};
//!
//! let mock = MockServer::start("127.0.0.1:0".parse()?, MockConfig::new("t0ken"))?;
//! mock.set_faults(Faults { throttle_rate: 1.0, retry_after_secs: 3, ..Faults::default() });
//!
//! let client = Client::new(ClientConfig::new(mock.url().parse()?, "t0ken".into()))?;
//! let body = r#"{"eventSource":"segment","eventType":"identify",
//!     "eventTime":"2026-11-28T12:00:00.123Z","actors":{"customer":{"userId":"u-1"}}}"#;
//! let outcome = client.send_body(body.into()).await;
//! assert!(outcome.is_transient());
//! let wait = Backoff::default().delay(0, outcome.retry_after());
//! assert!(wait >= std::time::Duration::from_secs(3));
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod backoff;
mod client;
mod config;
mod outcome;
mod transport;

pub use backoff::Backoff;
pub use client::{Client, ClientError};
pub use config::{ClientConfig, default_user_agent};
pub use outcome::{MAX_KEPT_BODY, Outcome};
