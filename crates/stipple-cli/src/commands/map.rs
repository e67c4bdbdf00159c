//! `stipple map`: Segment messages in, Pointillist events out, offline.

use std::io::{BufWriter, Read, Write};
use std::process::ExitCode;

use anyhow::Context as _;
use stipple_core::{Input, MapConfig, Mapper, Message, POINTILLIST, ValidationError};

use crate::cli::MapArgs;

pub(crate) fn run(args: &MapArgs) -> anyhow::Result<ExitCode> {
    let input = read_input(args)?;
    // As the ingress reads a body: a lone surrogate's escape reads as U+FFFD.
    let input = stipple_core::replace_lone_surrogates(&input);
    let mapper = Mapper::new(MapConfig {
        event_source: args.event_source.clone(),
        actor_type: args.actor_type.clone(),
    });
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut failed = 0usize;
    let mut report = |place: String, err: &ValidationError| {
        failed += 1;
        note!("{place}: {}: {}", err.code, err.message);
    };
    for (line, text) in split_input(&input) {
        let items = match Input::parse(text) {
            Ok(Input::Message(message)) => vec![(format!("line {line}"), Ok(*message))],
            Ok(Input::Batch(batch)) => (0..batch.batch.len())
                .map(|i| (format!("line {line}, batch item {i}"), batch.item(i)))
                .collect(),
            Err(err) => {
                report(format!("line {line}"), &err);
                continue;
            }
        };
        for (place, message) in items {
            match message.and_then(|m| map_one(&mapper, m)) {
                Ok(Some(event)) => {
                    if args.pretty {
                        serde_json::to_writer_pretty(&mut out, &event)?;
                    } else {
                        out.write_all(&event.to_json())?;
                    }
                    out.write_all(b"\n")?;
                }
                Ok(None) => note!("{place}: skipped: its integrations turn {POINTILLIST} off"),
                Err(err) => report(place, &err),
            }
        }
    }
    out.flush().context("cannot write to standard output")?;
    if failed > 0 {
        note!("{failed} message(s) failed");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Validates and maps one message; `None` when its `integrations` route it elsewhere.
fn map_one(
    mapper: &Mapper,
    message: Message,
) -> Result<Option<stipple_core::PointillistEvent>, ValidationError> {
    let mut valid = message.validate()?;
    // A receivedAt the message carries is the ingress's record: correct skew from it.
    // With no time at all, the message happened "now"; with only an originalTimestamp,
    // it happened then.
    let m = valid.message();
    let received_at = match &m.received_at {
        Some(text) => stipple_core::parse_timestamp(text),
        None if m.timestamp.is_none() && m.original_timestamp.is_none() => Some(chrono_now()),
        None => None,
    };
    if let Some(received_at) = received_at {
        valid.apply_received_at(received_at);
    }
    if !valid.message().is_enabled_for(POINTILLIST) {
        return Ok(None);
    }
    mapper.map(valid).map(Some)
}

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

fn read_input(args: &MapArgs) -> anyhow::Result<Vec<u8>> {
    match args.file.as_deref() {
        None => read_stdin(),
        Some(path) if path.as_os_str() == "-" => read_stdin(),
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
        }
    }
}

fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let mut input = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut input)
        .context("cannot read standard input")?;
    Ok(input)
}

/// The pieces of input with their first line number: the whole input when it is one
/// JSON value (a pretty-printed batch, say), else each non-blank line.
fn split_input(input: &[u8]) -> Vec<(usize, &[u8])> {
    let trimmed = input.trim_ascii();
    if trimmed.contains(&b'\n') && stipple_core::is_json(trimmed) {
        let first = input
            .iter()
            .take_while(|b| b.is_ascii_whitespace())
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        return vec![(first, trimmed)];
    }
    input
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim_ascii()))
        .filter(|(_, line)| !line.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::split_input;

    #[test]
    fn splits_lines_and_keeps_a_multi_line_value_whole() {
        let lines = split_input(b"{\"a\":1}\n\n  {\"b\":2}\n");
        assert_eq!(lines, vec![(1, &b"{\"a\":1}"[..]), (3, &b"{\"b\":2}"[..])]);
        let whole = split_input(b"\n{\n \"batch\": []\n}\n");
        assert_eq!(whole.len(), 1);
        assert_eq!(whole[0].0, 2);
        let broken = split_input(b"{\"a\":1}\nnot json\n");
        assert_eq!(broken.len(), 2);
    }
}
