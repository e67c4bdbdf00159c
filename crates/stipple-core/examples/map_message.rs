//! Maps one Segment message, given as JSON on the command line or a built-in example,
//! and prints the Pointillist event: `cargo run -p stipple-core --example map_message`.

use stipple_core::{MapConfig, Mapper, Message, POINTILLIST};

const EXAMPLE: &str = r#"{
  "type": "track", "event": "Order Completed", "userId": "user-42",
  "messageId": "ajs-next-1", "timestamp": "2026-11-28T12:00:00.123Z",
  "properties": { "total": 27.5, "currency": "USD" },
  "context": { "campaign": { "source": "newsletter" }, "device": { "type": "ios" } }
}"#;

fn main() {
    let input = std::env::args()
        .nth(1)
        .unwrap_or_else(|| EXAMPLE.to_owned());
    let message: Message = match serde_json::from_str(&input) {
        Ok(message) => message,
        Err(e) => {
            eprintln!("not a Segment message: {e}");
            std::process::exit(1);
        }
    };
    let valid = match message.validate() {
        Ok(valid) => valid,
        Err(e) => {
            eprintln!("invalid: {} ({})", e.message, e.code);
            std::process::exit(1);
        }
    };
    if !valid.message().is_enabled_for(POINTILLIST) {
        println!("not routed to Pointillist (integrations)");
        return;
    }
    match Mapper::new(MapConfig::default()).map(valid) {
        Ok(event) => println!("{}", String::from_utf8_lossy(&event.to_json())),
        Err(e) => eprintln!("cannot map: {e}"),
    }
}
