//! Sends one event to a Pointillist endpoint and prints the outcome.
//!
//! ```text
//! POINTILLIST_API_TOKEN=... cargo run -p stipple-pointillist --example send -- http://127.0.0.1:8080
//! ```
//!
//! The token comes from the environment rather than the command line, where other
//! users could read it in the process list.

use std::process::ExitCode;

use chrono::Utc;
use secrecy::SecretString;
use stipple_core::{EventTime, PointillistEvent};
use stipple_pointillist::{Client, ClientConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let Some(endpoint) = std::env::args().nth(1) else {
        eprintln!("usage: send <endpoint url>   (token in POINTILLIST_API_TOKEN)");
        return ExitCode::from(2);
    };
    let endpoint = match endpoint.parse() {
        Ok(url) => url,
        Err(e) => {
            eprintln!("endpoint {endpoint:?} is not a URL: {e}");
            return ExitCode::from(2);
        }
    };
    let Ok(token) = std::env::var("POINTILLIST_API_TOKEN") else {
        eprintln!("set POINTILLIST_API_TOKEN to the api token");
        return ExitCode::from(2);
    };
    let client = match Client::new(ClientConfig::new(endpoint, SecretString::from(token))) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };

    let event = PointillistEvent {
        event_source: "segment".to_owned(),
        event_type: "stipple example".to_owned(),
        event_time: EventTime(Utc::now()),
        actors: [(
            "customer".to_owned(),
            [("userId".to_owned(), "example-user".to_owned())].into(),
        )]
        .into(),
        labels: [("messageId".to_owned(), "example-1".to_owned())].into(),
        numbers: Default::default(),
    };
    let outcome = client.send(&event).await;
    println!("{} -> {outcome}", client.event_url());
    if outcome.is_delivered() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
