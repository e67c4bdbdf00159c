//! The `stipple serve` configuration: a TOML file, every key overridable by an
//! environment variable `STIPPLE_<SECTION>__<KEY>`. Documented key by key in
//! `docs/configuration.md`; a bad file refuses to start with one line naming the key.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytesize::ByteSize;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    #[serde(default)]
    pub(crate) pointillist: PointillistSection,
    #[serde(default)]
    pub(crate) ingress: IngressSection,
    #[serde(default)]
    pub(crate) sources: Vec<SourceSection>,
    #[serde(default)]
    pub(crate) store: StoreSection,
    #[serde(default)]
    pub(crate) delivery: DeliverySection,
    #[serde(default)]
    pub(crate) log: LogSection,
    #[serde(default)]
    pub(crate) telemetry: TelemetrySection,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TelemetrySection {
    /// OTLP/HTTP collector base URL (`http://127.0.0.1:4318`); traces are off without it.
    pub(crate) otlp_endpoint: Option<String>,
    pub(crate) service_name: String,
}

impl Default for TelemetrySection {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "stipple".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct PointillistSection {
    pub(crate) api_token: Option<SecretString>,
    pub(crate) endpoint: String,
    pub(crate) event_source: String,
    pub(crate) actor_type: String,
    #[serde(with = "humantime_serde")]
    pub(crate) timeout: Duration,
    pub(crate) concurrency: usize,
}

impl Default for PointillistSection {
    fn default() -> Self {
        Self {
            api_token: None,
            endpoint: "https://stream.pointillist.com".into(),
            event_source: "segment".into(),
            actor_type: "customer".into(),
            timeout: Duration::from_secs(10),
            concurrency: 32,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct IngressSection {
    pub(crate) listen: String,
    pub(crate) ops_listen: Option<String>,
    #[serde(with = "humantime_serde")]
    pub(crate) dedup_window: Duration,
    #[serde(deserialize_with = "list_or_commas")]
    pub(crate) cors_origins: Vec<String>,
    pub(crate) max_in_flight_bytes: ByteSize,
    #[serde(with = "humantime_serde")]
    pub(crate) body_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) shutdown_grace: Duration,
    pub(crate) max_connections: usize,
    #[serde(with = "humantime_serde")]
    pub(crate) header_timeout: Duration,
    pub(crate) threads: usize,
}

/// A list in the file; a comma-separated string from the environment.
fn list_or_commas<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrText {
        List(Vec<String>),
        Text(String),
    }
    Ok(match ListOrText::deserialize(d)? {
        ListOrText::List(list) => list,
        ListOrText::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    })
}

impl Default for IngressSection {
    fn default() -> Self {
        let d = stipple_ingress::IngressConfig::default();
        let server = stipple_ingress::ServerConfig::default();
        Self {
            listen: "127.0.0.1:8088".into(),
            ops_listen: None,
            dedup_window: d.dedup_window,
            cors_origins: d.cors_origins,
            max_in_flight_bytes: ByteSize(u64::try_from(d.max_in_flight_bytes).unwrap_or(u64::MAX)),
            body_timeout: d.body_timeout,
            shutdown_grace: Duration::from_secs(10),
            max_connections: server.max_connections,
            header_timeout: server.header_timeout,
            threads: server.threads,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SourceSection {
    pub(crate) name: String,
    pub(crate) write_key: SecretString,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct StoreSection {
    pub(crate) url: String,
    pub(crate) synchronous: String,
    /// How long rejected input is kept; `None` for ever.
    #[serde(deserialize_with = "retention")]
    pub(crate) rejected_retention: Option<Duration>,
    /// How long dead letters are kept; `None` for ever.
    #[serde(deserialize_with = "retention")]
    pub(crate) dead_letter_retention: Option<Duration>,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            url: "sqlite://./stipple-data/stipple.db".into(),
            synchronous: "full".into(),
            rejected_retention: Some(Duration::from_secs(30 * 24 * 60 * 60)),
            dead_letter_retention: None,
        }
    }
}

/// A retention: a duration (`"30d"`), or `"never"` to keep for ever (`None`).
fn retention<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    let text = text.trim();
    if text.eq_ignore_ascii_case("never") {
        return Ok(None);
    }
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(Some(d)),
        Ok(_) => Err(serde::de::Error::custom(format!(
            "{text:?} would keep nothing: set a duration longer than zero such as \"30d\", or \"never\""
        ))),
        Err(_) => Err(serde::de::Error::custom(format!(
            "{text:?} is not a retention: expected a duration such as \"30d\", or \"never\""
        ))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct DeliverySection {
    #[serde(with = "humantime_serde")]
    pub(crate) retry_horizon: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) backoff_min: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) backoff_max: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) lease_for: Duration,
    pub(crate) lease_batch: usize,
    /// Delivery pipelines, each on a thread of its own, sharing the store and
    /// `pointillist.concurrency` between them; unset, [`Config::delivery_threads`] picks.
    pub(crate) threads: Option<usize>,
}

impl Default for DeliverySection {
    fn default() -> Self {
        let d = stipple_delivery::DeliveryConfig::default();
        Self {
            retry_horizon: d.retry_horizon,
            backoff_min: d.backoff.min,
            backoff_max: d.backoff.max,
            lease_for: d.lease_for,
            lease_batch: d.lease_batch,
            threads: None,
        }
    }
}

/// Delivery pipelines when `delivery.threads` is unset (fewer on fewer cores).
const DEFAULT_DELIVERY_THREADS: usize = 2;

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct LogSection {
    pub(crate) level: String,
    pub(crate) format: LogFormat,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// Environment variables `STIPPLE_<SECTION>__<KEY>` set or override settings.
const ENV_PREFIX: &str = "STIPPLE";
const ENV_PREFIX_SEPARATOR: &str = "_";
const ENV_SEPARATOR: &str = "__";
/// The levels `log.level` takes alone (a filter's other bare words are module names).
const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// `STIPPLE_` variables that are not settings: the command line's (see `cli`).
const ENV_NOT_SETTINGS: [&str; 2] = ["STIPPLE_CONFIG", "STIPPLE_MOCK_TOKEN"];

/// The `STIPPLE_<SECTION>__<KEY>` variables among `vars`. Any other `STIPPLE_` name but
/// the command line's own is refused, by name only: its value may be a secret (a token
/// set as `STIPPLE_POINTILLIST` by mistake).
fn settings_from_env(
    vars: impl IntoIterator<Item = (String, String)>,
) -> anyhow::Result<config::Map<String, String>> {
    let mut settings = config::Map::new();
    for (key, value) in vars {
        let Some(rest) = key
            .strip_prefix(ENV_PREFIX)
            .and_then(|rest| rest.strip_prefix(ENV_PREFIX_SEPARATOR))
        else {
            continue;
        };
        if rest.contains(ENV_SEPARATOR) {
            settings.insert(key, value);
        } else if !ENV_NOT_SETTINGS.contains(&key.as_str()) {
            bail!(
                "the environment variable {key} is not a setting: settings are \
                 STIPPLE_<SECTION>__<KEY>, with two underscores, e.g. STIPPLE_POINTILLIST__API_TOKEN"
            );
        }
    }
    Ok(settings)
}

/// What starts a source's variable, `STIPPLE_SOURCES__<NAME>__WRITE_KEY`.
const ENV_SOURCES: &str = "STIPPLE_SOURCES__";
/// What ends it.
const ENV_SOURCE_KEY: &str = "__WRITE_KEY";

/// The settings apart from `STIPPLE_SOURCES__<NAME>__WRITE_KEY`, and those as
/// `(NAME, write key)`: `[[sources]]` is a list, which the `config` crate's environment
/// source cannot reach into.
#[allow(clippy::type_complexity)]
fn split_source_keys(
    settings: config::Map<String, String>,
) -> anyhow::Result<(config::Map<String, String>, Vec<(String, String)>)> {
    let mut rest = config::Map::new();
    let mut keys = Vec::new();
    for (var, value) in settings {
        let Some(tail) = var.strip_prefix(ENV_SOURCES) else {
            rest.insert(var, value);
            continue;
        };
        match tail.strip_suffix(ENV_SOURCE_KEY) {
            Some(name) if !name.is_empty() => keys.push((name.to_owned(), value)),
            _ => bail!(
                "the environment variable {var} is not a setting: a source's write key is \
                 STIPPLE_SOURCES__<NAME>__WRITE_KEY, NAME being the source's name upper-cased, \
                 e.g. STIPPLE_SOURCES__WEB__WRITE_KEY"
            ),
        }
    }
    Ok((rest, keys))
}

/// A source's name as it appears in its variable: upper-cased, and anything but a letter
/// or a digit as `_` (`web-app` is `WEB_APP`).
fn env_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// `merged`'s `[[sources]]` with the write keys from the environment: a key sets (or
/// overrides) that of the source of its name, or adds a source of that name lower-cased
/// when the file has none.
fn with_source_keys(
    merged: &config::Config,
    keys: Vec<(String, String)>,
) -> anyhow::Result<Vec<config::Map<String, config::Value>>> {
    let mut sources: Vec<config::Map<String, config::Value>> = match merged.get("sources") {
        Ok(sources) => sources,
        Err(config::ConfigError::NotFound(_)) => Vec::new(),
        Err(e) => bail!("invalid configuration: {e}"),
    };
    let names: Vec<String> = sources
        .iter()
        .map(|s| {
            s.get("name")
                .and_then(|n| n.clone().into_string().ok())
                .unwrap_or_default()
        })
        .collect();
    for (var_name, key) in keys {
        let named: Vec<usize> = (0..names.len())
            .filter(|&i| env_name(&names[i]) == var_name)
            .collect();
        let source = match named.as_slice() {
            [] => {
                let mut source = config::Map::new();
                source.insert("name".to_owned(), var_name.to_ascii_lowercase().into());
                sources.push(source);
                sources.last_mut()
            }
            [i] => sources.get_mut(*i),
            _ => bail!(
                "STIPPLE_SOURCES__{var_name}__WRITE_KEY could be any of the sources {}: \
                 give them names that differ in more than case and punctuation",
                named
                    .iter()
                    .map(|&i| format!("{:?}", names[i]))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        if let Some(source) = source {
            source.insert("write_key".to_owned(), key.into());
        }
    }
    Ok(sources)
}

/// Checks that the file is TOML, saying where it is not without quoting it (the line
/// may hold a token or a write key, and errors are printed and logged).
fn check_toml(path: &Path, text: &str) -> anyhow::Result<()> {
    let e = match toml::from_str::<toml::Table>(text) {
        Ok(table) => {
            // A key before any header (its value unsaid: it may be a secret).
            if let Some((key, _)) = table.iter().find(|(_, v)| !is_section(v)) {
                bail!(
                    "invalid configuration: {}: {key} is outside any section: put it under its \
                     section's header, such as [pointillist], [ingress] or [store] \
                     (docs/configuration.md lists each section's keys)",
                    path.display()
                );
            }
            return Ok(());
        }
        Err(e) => e,
    };
    let place = e
        .span()
        .map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.chars().rev().take_while(|&c| c != '\n').count() + 1;
            format!(" at line {line}, column {column}")
        })
        .unwrap_or_default();
    bail!(
        "invalid configuration: {} is not valid TOML{place}: {}",
        path.display(),
        e.message().trim_end()
    )
}

/// Whether a top-level TOML value is a section: a table, or an array of them
/// (`[[sources]]`).
fn is_section(value: &toml::Value) -> bool {
    match value {
        toml::Value::Table(_) => true,
        toml::Value::Array(items) => items.iter().all(toml::Value::is_table),
        _ => false,
    }
}

/// Checks that `value`, the setting `key`, is an http or https URL; `hint` ends the error.
fn http_url(key: &str, value: &str, hint: &str) -> anyhow::Result<()> {
    url::Url::parse(value)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .map(drop)
        .with_context(|| {
            let shown = without_credentials(value);
            format!("{key} {shown:?} must be an http(s) URL{hint}")
        })
}

/// The `config` crate's message for a value it could not read, said in the file's terms:
/// the key in full, what it takes, an example; an unknown key or section set by one of
/// the `STIPPLE_` variables `vars` names that variable. Messages it does not know pass as
/// they are.
fn explain(message: &str, vars: &[String]) -> String {
    // "... for key `pointillist.timeout`" ends most of them, some with the file after it
    // (" in stipple.toml").
    let (what, key, origin) = match message.rsplit_once(" for key `") {
        Some((what, rest)) => match rest.split_once('`') {
            Some((key, origin)) => (what, key, origin),
            None => (what, rest, ""),
        },
        None => (message, "", ""),
    };
    let key = &dotted(key);
    let value = what
        .strip_prefix("invalid value: string ")
        .and_then(|rest| rest.split_once(", expected "));
    if let Some(field) = what
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
    {
        let (field, expected) = field;
        let expected = expected.trim_start_matches(", ");
        // The variable that set it: `STIPPLE_<SECTION>__<KEY>`, or one starting
        // `STIPPLE_<SECTION>__` for a section.
        let var = if key.is_empty() {
            format!(
                "{ENV_PREFIX}{ENV_PREFIX_SEPARATOR}{}{ENV_SEPARATOR}",
                field.to_uppercase()
            )
        } else {
            format!(
                "{ENV_PREFIX}{ENV_PREFIX_SEPARATOR}{}{ENV_SEPARATOR}{}",
                key.to_uppercase(),
                field.to_uppercase()
            )
        };
        let from = vars
            .iter()
            .find(|v| {
                // `STIPPLE_DELIVERY__RETRY__HORIZON` sets `delivery.retry` (a table).
                v.strip_prefix(&var).is_some_and(|rest| {
                    key.is_empty() || rest.is_empty() || rest.starts_with(ENV_SEPARATOR)
                })
            })
            .map(|v| format!(", set by the environment variable {v}"))
            .unwrap_or_default();
        return if key.is_empty() {
            format!("unknown section [{field}]{from} ({expected})")
        } else {
            let takes = expected
                .trim_start_matches("expected one of ")
                .trim_start_matches("expected ");
            let section = if key.starts_with("sources[") {
                "[[sources]]".to_owned()
            } else {
                format!("[{key}]")
            };
            format!("unknown key {key}.{field}{from} ({section} takes {takes})")
        };
    }
    if let Some((value, expected)) = value {
        if expected == "a duration" {
            return format!(
                "{key} {value} is not a duration: write one such as \"10s\", \"5m\" or \"72h\""
            );
        }
        if expected == "parsable string" {
            return format!(
                "{key} {value} is not a size: write a number of bytes, or one with a unit such as \"64MiB\" or \"100MB\""
            );
        }
    }
    if let Some(variant) = what
        .strip_prefix("enum ")
        .and_then(|rest| rest.split_once(" does not have variant constructor "))
        .map(|(_, variant)| variant)
    {
        let takes = match key.as_str() {
            "log.format" => "\"text\" or \"json\"",
            _ => "one of the values docs/configuration.md lists",
        };
        return format!("{key} \"{variant}\" is not a value it takes: expected {takes}");
    }
    if let Some(field) = what.strip_prefix("missing configuration field ") {
        // `sources[0]name`: the index and the key it holds, with the dot between.
        return format!("missing key {}", dotted(field.trim_matches('"')));
    }
    if key.is_empty() {
        message.to_owned()
    } else {
        format!("{key}{origin}: {what}")
    }
}

/// A key as the `config` crate names it (`sources[0]name`), with the dot between an index
/// and the key it holds (`sources[0].name`).
fn dotted(key: &str) -> String {
    match key.split_once(']') {
        Some((index, rest)) if !rest.is_empty() && !rest.starts_with(['.', '[']) => {
            format!("{index}].{rest}")
        }
        _ => key.to_owned(),
    }
}

/// `value`, a URL as written (well formed or not), with what stands before the `@` of
/// its authority shown as `***`: a `user:password@` there is a secret, which an error
/// message must not print.
pub(crate) fn without_credentials(value: &str) -> std::borrow::Cow<'_, str> {
    let start = value.find("://").map_or(0, |i| i + 3);
    let end = value[start..]
        .find(['/', '?', '#'])
        .map_or(value.len(), |i| start + i);
    match value[start..end].rfind('@') {
        Some(at) => format!("{}***{}", &value[..start], &value[start + at..]).into(),
        None => value.into(),
    }
}

impl Config {
    /// The ingress's settings.
    pub(crate) fn ingress_config(&self) -> stipple_ingress::IngressConfig {
        stipple_ingress::IngressConfig {
            sources: self
                .sources
                .iter()
                .map(|s| stipple_ingress::Source {
                    name: s.name.clone(),
                    write_key: s.write_key.clone(),
                })
                .collect(),
            dedup_window: self.ingress.dedup_window,
            cors_origins: self.ingress.cors_origins.clone(),
            max_in_flight_bytes: usize::try_from(self.ingress.max_in_flight_bytes.as_u64())
                .unwrap_or(usize::MAX),
            body_timeout: self.ingress.body_timeout,
            ..stipple_ingress::IngressConfig::default()
        }
    }

    /// Reads `path` (when given) and the `STIPPLE_*` environment, then checks the values.
    pub(crate) fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        Self::load_from(path, Self::env_settings(None)?)
    }

    /// [`Config::load`] with these `STIPPLE_<SECTION>__<KEY>` settings.
    fn load_from(path: Option<&Path>, env: config::Map<String, String>) -> anyhow::Result<Config> {
        if path.is_none() && env.is_empty() {
            // The service needs at least a source: saying so beats naming the first key
            // missing.
            bail!(
                "no configuration: pass --config FILE (the README's quick start has a minimal one; \
                 every key is in docs/configuration.md), or set STIPPLE_<SECTION>__<KEY> variables"
            );
        }
        let config = Self::read(path, env)?;
        config.check()?;
        // What the ingress checks itself, before anything is opened.
        config.ingress_config().check()?;
        Ok(config)
    }

    /// Reads the file and environment for the admin commands, which need only
    /// `[store]`: the other sections are neither read nor checked (a service's file that
    /// does not start is just when `stipple status` helps), and keep their defaults.
    pub(crate) fn load_store_only(path: Option<&Path>) -> anyhow::Result<Config> {
        // The sources' variables are not read either (their mistakes are serve's to say).
        let mut env = Self::env_settings(None)?;
        env.retain(|var, _| !var.starts_with(ENV_SOURCES));
        let store = match Self::merged(path, env)?.get::<StoreSection>("store") {
            Ok(store) => store,
            Err(config::ConfigError::NotFound(_)) => StoreSection::default(),
            Err(e) => bail!("invalid configuration: {e}"),
        };
        let config = Config {
            store,
            ..Config::default()
        };
        config.synchronous()?;
        Ok(config)
    }

    /// [`Config::load`], reading the variables from `env` instead of the process's
    /// environment when given (tests never change the process environment).
    #[cfg(test)]
    fn load_with_env(
        path: Option<&Path>,
        env: Option<config::Map<String, String>>,
    ) -> anyhow::Result<Config> {
        Self::load_from(path, Self::env_settings(env.as_ref())?)
    }

    /// The settings among `env`, or among the process's environment when `None`.
    fn env_settings(
        env: Option<&config::Map<String, String>>,
    ) -> anyhow::Result<config::Map<String, String>> {
        match env {
            Some(env) => settings_from_env(env.clone()),
            // A variable that is not UTF-8 cannot be a setting (nor a `STIPPLE_` name).
            None => settings_from_env(
                std::env::vars_os()
                    .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
            ),
        }
    }

    fn read(path: Option<&Path>, env: config::Map<String, String>) -> anyhow::Result<Config> {
        let vars: Vec<String> = env.keys().cloned().collect();
        let merged = Self::merged(path, env)?;
        // Said here, with both places a key may come from (the deserialiser would say
        // only "missing field").
        if let Ok(sources) = merged.get::<Vec<config::Map<String, config::Value>>>("sources") {
            for (i, source) in sources.iter().enumerate() {
                let name = source
                    .get("name")
                    .and_then(|n| n.clone().into_string().ok());
                if let (Some(name), None) = (name, source.get("write_key")) {
                    bail!(
                        "sources[{i}] ({name:?}) has no write_key: set it in the file or as \
                         STIPPLE_SOURCES__{}__WRITE_KEY",
                        env_name(&name)
                    );
                }
            }
        }
        merged.try_deserialize().map_err(|e| {
            anyhow::anyhow!("invalid configuration: {}", explain(&e.to_string(), &vars))
        })
    }

    /// The file and the environment's settings, merged, not yet read into sections.
    fn merged(
        path: Option<&Path>,
        env: config::Map<String, String>,
    ) -> anyhow::Result<config::Config> {
        let mut builder = config::Config::builder();
        if let Some(path) = path {
            if !path.exists() {
                bail!("the configuration file {} does not exist", path.display());
            }
            let text = std::fs::read_to_string(path).with_context(|| {
                format!("cannot read the configuration file {}", path.display())
            })?;
            check_toml(path, &text)?;
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let (env, source_keys) = split_source_keys(env)?;
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator(ENV_PREFIX_SEPARATOR)
                .separator(ENV_SEPARATOR)
                // Off: a token like "0123" must stay text, not become the number 123.
                .try_parsing(false)
                .source(Some(env)),
        );
        let merged = builder
            .build()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        if source_keys.is_empty() {
            return Ok(merged);
        }
        let sources = with_source_keys(&merged, source_keys)?;
        config::Config::builder()
            .add_source(merged)
            .set_override("sources", sources)
            .and_then(|builder| builder.build())
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))
    }

    fn check(&self) -> anyhow::Result<()> {
        let p = &self.pointillist;
        if let Some(token) = &p.api_token {
            if token.expose_secret().trim().is_empty() {
                bail!("pointillist.api_token is empty: set the API token Pointillist gave you");
            }
        }
        http_url(
            "pointillist.endpoint",
            &p.endpoint,
            ", e.g. https://stream.pointillist.com",
        )?;
        if p.event_source.is_empty() {
            bail!("pointillist.event_source must not be empty");
        }
        if p.actor_type.is_empty() {
            bail!("pointillist.actor_type must not be empty");
        }
        if p.actor_type == stipple_core::ACCOUNT {
            bail!(
                "pointillist.actor_type must not be \"{}\": group calls send their group as that actor",
                stipple_core::ACCOUNT
            );
        }
        if p.concurrency == 0 {
            bail!("pointillist.concurrency must be at least 1");
        }
        if p.timeout.is_zero() {
            bail!("pointillist.timeout must be longer than zero, e.g. \"10s\"");
        }
        self.listen()?;
        self.ops_listen()?;
        if self.ingress.body_timeout.is_zero() {
            bail!("ingress.body_timeout must be longer than zero, e.g. \"30s\"");
        }
        if self.ingress.header_timeout.is_zero() {
            bail!("ingress.header_timeout must be longer than zero, e.g. \"30s\"");
        }
        if self.ingress.max_connections == 0 {
            bail!("ingress.max_connections must be at least 1, e.g. 10000");
        }
        if self.ingress.threads == 0 {
            bail!("ingress.threads must be at least 1, e.g. 2");
        }
        if self.sources.is_empty() {
            bail!(
                "no [[sources]]: add at least one source with a name and a write_key, in the \
                 file or as STIPPLE_SOURCES__<NAME>__WRITE_KEY"
            );
        }
        for (i, s) in self.sources.iter().enumerate() {
            if s.name.trim().is_empty() {
                bail!("sources[{i}].name is empty: every source needs a name");
            }
            if s.write_key.expose_secret().is_empty() {
                bail!("sources[{i}].write_key (source {:?}) is empty", s.name);
            }
        }
        for (i, a) in self.sources.iter().enumerate() {
            for b in &self.sources[i + 1..] {
                if a.name == b.name {
                    bail!("sources: the name {:?} is used twice", a.name);
                }
                if a.write_key.expose_secret() == b.write_key.expose_secret() {
                    bail!(
                        "sources {:?} and {:?} have the same write_key",
                        a.name,
                        b.name
                    );
                }
            }
        }
        self.synchronous()?;
        let d = &self.delivery;
        if d.retry_horizon.is_zero() {
            bail!(
                "delivery.retry_horizon must be longer than zero (every transient failure would \
                 dead-letter its event at once), e.g. \"72h\""
            );
        }
        if d.backoff_min.is_zero() {
            bail!("delivery.backoff_min must be longer than zero, e.g. \"1s\"");
        }
        if d.backoff_max.is_zero() {
            bail!("delivery.backoff_max must be longer than zero, e.g. \"10m\"");
        }
        if d.backoff_min > d.backoff_max {
            bail!(
                "delivery.backoff_min ({}) must be at most delivery.backoff_max ({})",
                humantime::format_duration(d.backoff_min),
                humantime::format_duration(d.backoff_max)
            );
        }
        if d.lease_batch == 0 {
            bail!("delivery.lease_batch must be at least 1");
        }
        if d.threads == Some(0) {
            bail!("delivery.threads must be at least 1");
        }
        if let Some(threads) = d.threads
            && threads > self.pointillist.concurrency
        {
            bail!(
                "delivery.threads ({threads}) must be at most pointillist.concurrency ({}): each thread needs a request slot of its own",
                self.pointillist.concurrency
            );
        }
        if d.lease_for < Duration::from_secs(1) {
            bail!("delivery.lease_for must be at least 1s");
        }
        if d.lease_for <= p.timeout {
            bail!(
                "delivery.lease_for ({}) must be longer than pointillist.timeout ({}): an event \
                 still being sent would be due again, and sent twice",
                humantime::format_duration(d.lease_for),
                humantime::format_duration(p.timeout)
            );
        }
        if self.ingress.dedup_window.is_zero() {
            bail!(
                "ingress.dedup_window must be longer than zero: Segment's own is \"24h\", and a \
                 short one such as \"10m\" still catches a client's retries"
            );
        }
        if self.telemetry.service_name.trim().is_empty() {
            bail!("telemetry.service_name must not be empty: it names the service on every span");
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint {
            http_url(
                "telemetry.otlp_endpoint",
                endpoint,
                " of an OTLP/HTTP collector, e.g. http://127.0.0.1:4318",
            )?;
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| {
            anyhow::anyhow!("log.level {:?} is not a valid filter: {e}", self.log.level)
        })?;
        // A filter takes a bare word as a module's name, which would silence everything
        // else: `warning` would log nothing at all.
        if let Some(word) = self.log.level.split(',').map(str::trim).find(|d| {
            !d.is_empty() && !d.contains('=') && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(d))
        }) {
            bail!(
                "log.level {:?}: {word:?} is not a level: use one of {}, or target=level \
                 (e.g. \"info,stipple_delivery=debug\")",
                self.log.level,
                LEVELS.join(", ")
            );
        }
        Ok(())
    }

    pub(crate) fn listen(&self) -> anyhow::Result<SocketAddr> {
        self.ingress.listen.parse().with_context(|| {
            format!(
                "ingress.listen {:?} is not an address like 127.0.0.1:8088",
                self.ingress.listen
            )
        })
    }

    /// `ingress.ops_listen`, when set.
    pub(crate) fn ops_listen(&self) -> anyhow::Result<Option<SocketAddr>> {
        let Some(ops) = &self.ingress.ops_listen else {
            return Ok(None);
        };
        let addr: SocketAddr = ops.parse().with_context(|| {
            format!("ingress.ops_listen {ops:?} is not an address like 127.0.0.1:9090")
        })?;
        if addr.port() != 0 && addr == self.listen()? {
            bail!(
                "ingress.ops_listen {ops:?} is ingress.listen's address: give the probes and \
                 metrics another port, or leave ops_listen out (ingress.listen serves them too)"
            );
        }
        Ok(Some(addr))
    }

    /// `delivery.threads`, or when unset two (one on a single core, or with one request
    /// in flight): a pipeline's thread taken off its core, or slowed by a busy neighbour
    /// on a virtual machine, then holds up only half of delivery.
    pub(crate) fn delivery_threads(&self) -> usize {
        self.delivery.threads.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
            DEFAULT_DELIVERY_THREADS
                .min(cores)
                .min(self.pointillist.concurrency)
                .max(1)
        })
    }

    pub(crate) fn synchronous(&self) -> anyhow::Result<stipple_store::Synchronous> {
        self.store.synchronous.parse().map_err(|_| {
            anyhow::anyhow!(
                "store.synchronous {:?} must be \"full\" or \"normal\"",
                self.store.synchronous
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("stipple.toml");
        std::fs::write(&path, text)?;
        Config::load(Some(&path))
    }

    const MINIMAL: &str =
        "[pointillist]\napi_token = \"tok\"\n[[sources]]\nname = \"web\"\nwrite_key = \"wk\"\n";

    #[test]
    fn a_minimal_file_gets_the_documented_defaults() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.pointillist.endpoint, "https://stream.pointillist.com");
        assert_eq!(c.ingress.listen, "127.0.0.1:8088");
        assert_eq!(c.store.url, "sqlite://./stipple-data/stipple.db");
        assert_eq!(c.delivery.retry_horizon, Duration::from_secs(72 * 3600));
        assert_eq!(c.sources[0].name, "web");
    }

    #[test]
    fn delivery_threads_default_to_two_within_the_cores_and_the_concurrency() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        assert_eq!(load(MINIMAL).unwrap().delivery_threads(), 2.min(cores));
        let one_slot = MINIMAL.replace("[pointillist]\n", "[pointillist]\nconcurrency = 1\n");
        assert_eq!(load(&one_slot).unwrap().delivery_threads(), 1);
        let three = format!("{MINIMAL}[delivery]\nthreads = 3\n");
        assert_eq!(load(&three).unwrap().delivery_threads(), 3);
    }

    #[test]
    fn the_documented_complete_file_loads_with_its_documented_values() {
        let doc = include_str!("../../../docs/configuration.md");
        let toml = doc
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .unwrap();
        let c = load(toml).unwrap();
        let defaults = load(MINIMAL).unwrap();
        assert_eq!(c.sources.len(), 2);
        assert_eq!(c.ingress.body_timeout, defaults.ingress.body_timeout);
        assert_eq!(c.ingress.shutdown_grace, defaults.ingress.shutdown_grace);
        assert_eq!(c.ingress.header_timeout, defaults.ingress.header_timeout);
        assert_eq!(c.ingress.max_connections, defaults.ingress.max_connections);
        assert_eq!(
            c.store.rejected_retention,
            defaults.store.rejected_retention
        );
        assert_eq!(c.store.dead_letter_retention, None);
        assert_eq!(c.ingress.dedup_window, defaults.ingress.dedup_window);
        assert_eq!(c.delivery.backoff_max, defaults.delivery.backoff_max);
        assert_eq!(c.delivery.lease_for, defaults.delivery.lease_for);
        assert_eq!(c.delivery.threads, Some(DEFAULT_DELIVERY_THREADS));
        assert_eq!(c.pointillist.timeout, defaults.pointillist.timeout);
        assert_eq!(c.pointillist.concurrency, defaults.pointillist.concurrency);
        assert_eq!(c.store.url, defaults.store.url);
    }

    #[test]
    fn bad_files_name_the_key() {
        fn check(text: &str, expected: &str) {
            let err = format!("{:#}", load(text).unwrap_err());
            assert!(err.contains(expected), "{expected:?} not in {err:?}");
        }
        check(
            &format!("{MINIMAL}[store]\nurl = \"x\"\nbogus = 1\n"),
            "bogus",
        );
        check(
            &format!("{MINIMAL}[delivery]\nretry_horizon = \"forever\"\n"),
            "retry_horizon",
        );
        check(
            &format!("{MINIMAL}[ingress]\nlisten = \"nowhere\"\n"),
            "ingress.listen",
        );
        check(
            &format!("{MINIMAL}[store]\nsynchronous = \"maybe\"\n"),
            "store.synchronous",
        );
        check("[pointillist]\napi_token = \"t\"\n", "no [[sources]]");
        check(
            &MINIMAL.replace("\"tok\"", "\" \""),
            "pointillist.api_token is empty",
        );
        check(
            &format!("{MINIMAL}[[sources]]\nname = \"web\"\nwrite_key = \"other\"\n"),
            "used twice",
        );
        check(&format!("{MINIMAL}[pointillist2]\n"), "pointillist2");
        check(
            &format!("{MINIMAL}[telemetry]\notlp_endpoint = \"grpc://127.0.0.1:4317\"\n"),
            "telemetry.otlp_endpoint",
        );
        check(
            &format!("{MINIMAL}[ingress]\nbody_timeout = \"0s\"\n"),
            "ingress.body_timeout",
        );
        check(
            &format!("{MINIMAL}[ingress]\nheader_timeout = \"0s\"\n"),
            "ingress.header_timeout",
        );
        check(
            &format!("{MINIMAL}[ingress]\nmax_connections = 0\n"),
            "ingress.max_connections",
        );
        check(
            &format!("{MINIMAL}[ingress]\nthreads = 0\n"),
            "ingress.threads",
        );
        check(
            &format!("{MINIMAL}[store]\nrejected_retention = \"0s\"\n"),
            "never",
        );
        check(
            &format!("{MINIMAL}[store]\ndead_letter_retention = \"sometimes\"\n"),
            "dead_letter_retention",
        );
        check(
            &format!("{MINIMAL}[delivery]\nlease_for = \"10s\"\n"),
            "delivery.lease_for (10s) must be longer than pointillist.timeout (10s)",
        );
        check(
            &format!("{MINIMAL}[log]\nlevel = \"warning\"\n"),
            "log.level \"warning\": \"warning\" is not a level",
        );
        check(
            &format!("{MINIMAL}[log]\nlevel = \"info,stipple\"\n"),
            "\"stipple\" is not a level",
        );
        check(
            &format!("{MINIMAL}[ingress]\ndedup_window = \"0s\"\n"),
            "ingress.dedup_window must be longer than zero",
        );
        check(
            &format!("{MINIMAL}[telemetry]\nservice_name = \" \"\n"),
            "telemetry.service_name must not be empty",
        );
        check(
            &format!("{MINIMAL}[delivery]\nthreads = 0\n"),
            "delivery.threads must be at least 1",
        );
        check(
            &format!(
                "{}[delivery]\nthreads = 3\n",
                MINIMAL.replace("[pointillist]\n", "[pointillist]\nconcurrency = 2\n")
            ),
            "delivery.threads (3) must be at most pointillist.concurrency (2)",
        );
        // In the file's terms: the key in full, what it takes.
        for (extra, expected) in [
            (
                "[log]\nformat = \"yaml\"\n",
                "log.format \"yaml\" is not a value it takes: expected \"text\" or \"json\"",
            ),
            (
                "[ingress]\nmax_in_flight_bytes = \"lots\"\n",
                "ingress.max_in_flight_bytes \"lots\" is not a size",
            ),
            (
                "[ingress]\nmax_in_flight_bytes = \"0\"\n",
                "ingress.max_in_flight_bytes (0 bytes) is smaller than the largest request body",
            ),
            (
                "[delivery]\nbackoff_max = \"0s\"\n",
                "delivery.backoff_max must be longer than zero",
            ),
            (
                "[delivery]\nbackoff_min = \"5m\"\nbackoff_max = \"1m\"\n",
                "delivery.backoff_min (5m) must be at most delivery.backoff_max (1m)",
            ),
            (
                "[store]\nrejected_retention = \"0s\"\n",
                "store.rejected_retention: \"0s\" would keep nothing",
            ),
            (
                "[store]\ntimeoutt = \"5s\"\n",
                "unknown key store.timeoutt ([store] takes `url`",
            ),
            ("[pointillist3]\n", "unknown section [pointillist3]"),
            (
                "[ingress]\nops_listen = \"nope\"\n",
                "ingress.ops_listen \"nope\" is not an address like 127.0.0.1:9090",
            ),
            (
                "[ingress]\nops_listen = \"127.0.0.1:8088\"\n",
                "ingress.ops_listen \"127.0.0.1:8088\" is ingress.listen's address",
            ),
            (
                "[[sources]]\nname = \"b\"\nwrite_key = \"k\"\ncolor = 1\n",
                "unknown key sources[1].color ([[sources]] takes `name` or `write_key`)",
            ),
            (
                "[[sources]]\nwrite_key = \"other\"\n",
                "missing key sources[1].name",
            ),
        ] {
            check(&format!("{MINIMAL}{extra}"), expected);
        }
        check(
            &MINIMAL.replace("write_key = \"wk\"", "write_key = [\"x\"]"),
            "sources[0].write_key in ",
        );
        check(
            &format!("{MINIMAL}[delivery]\nretry_horizon = \"0s\"\n"),
            "delivery.retry_horizon must be longer than zero",
        );
        check(
            &MINIMAL.replace("api_token = \"tok\"", "api_token = []"),
            "pointillist.api_token in ",
        );
        check(
            &MINIMAL.replace("[pointillist]\n", "[pointillist]\ntimeout = 10\n"),
            "pointillist.timeout \"10\" is not a duration: write one such as \"10s\"",
        );
        for bad in [
            "ftp://user:PW-SECRET@x.example",
            "https://user:PW-SECRET@x.example:99999/path",
            "user:PW-SECRET@x.example",
        ] {
            let line = format!("[pointillist]\nendpoint = \"{bad}\"\n");
            let err = format!(
                "{:#}",
                load(&MINIMAL.replace("[pointillist]\n", &line)).unwrap_err()
            );
            assert!(err.contains("pointillist.endpoint"), "{err}");
            assert!(!err.contains("PW-SECRET"), "{err}");
            assert!(err.contains("***@x.example"), "{err}");
        }
        check(
            &MINIMAL.replace(
                "[pointillist]\n",
                "[pointillist]\nactor_type = \"account\"\n",
            ),
            "pointillist.actor_type must not be \"account\"",
        );
    }

    #[test]
    fn environment_variables_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stipple.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let env: config::Map<String, String> = [
            ("STIPPLE_POINTILLIST__API_TOKEN", "0123"),
            ("STIPPLE_POINTILLIST__CONCURRENCY", "7"),
            (
                "STIPPLE_INGRESS__CORS_ORIGINS",
                "https://a.example, https://b.example",
            ),
            ("STIPPLE_DELIVERY__RETRY_HORIZON", "2h"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let c = Config::load_with_env(Some(&path), Some(env)).unwrap();
        assert_eq!(
            c.pointillist
                .api_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned())
                .as_deref(),
            Some("0123")
        );
        assert_eq!(c.pointillist.concurrency, 7);
        assert_eq!(
            c.ingress.cors_origins,
            ["https://a.example", "https://b.example"]
        );
        assert_eq!(c.delivery.retry_horizon, Duration::from_secs(7200));
        let bad: config::Map<String, String> = [(
            "STIPPLE_DELIVERY__LEASE_BATCH".to_owned(),
            "many".to_owned(),
        )]
        .into_iter()
        .collect();
        let err = Config::load_with_env(Some(&path), Some(bad))
            .unwrap_err()
            .to_string();
        assert!(err.contains("delivery.lease_batch"), "{err}");
    }

    fn vars(pairs: &[(&str, &str)]) -> config::Map<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_command_line_s_own_variables_are_not_settings_and_others_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stipple.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        // `--config` and `stipple mock --token` read these: they are no settings.
        let cli = vars(&[
            ("STIPPLE_CONFIG", "stipple.toml"),
            ("STIPPLE_MOCK_TOKEN", "mock-secret"),
        ]);
        Config::load_with_env(Some(&path), Some(cli)).unwrap();
        // One underscore: not a setting, and its value (here a token) is not repeated.
        let mistaken = vars(&[("STIPPLE_POINTILLIST", "tok-SECRET")]);
        let err = Config::load_with_env(Some(&path), Some(mistaken))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("STIPPLE_POINTILLIST is not a setting")
                && err.contains("STIPPLE_<SECTION>__<KEY>"),
            "{err}"
        );
        assert!(!err.contains("SECRET"), "{err}");
    }

    /// An unknown key or section set in the environment names the variable: the file
    /// does not hold it, and a reader would look for it there.
    #[test]
    fn an_unknown_key_from_the_environment_names_its_variable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stipple.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        for (var, expected) in [
            (
                "STIPPLE_POINTILLIST__APITOKEN",
                "unknown key pointillist.apitoken, set by the environment variable \
                 STIPPLE_POINTILLIST__APITOKEN ([pointillist] takes `api_token`, `endpoint`",
            ),
            (
                "STIPPLE_BOGUS__X",
                "unknown section [bogus], set by the environment variable STIPPLE_BOGUS__X (",
            ),
            (
                "STIPPLE_DELIVERY__RETRY__HORIZON",
                "unknown key delivery.retry, set by the environment variable \
                 STIPPLE_DELIVERY__RETRY__HORIZON ([delivery] takes",
            ),
        ] {
            let err = Config::load_with_env(Some(&path), Some(vars(&[(var, "tok-SECRET")])))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{expected:?} not in {err:?}");
            assert!(!err.contains("SECRET"), "{err}");
        }
        // From the file: no variable named.
        std::fs::write(
            &path,
            format!(
                "{MINIMAL}[pointillist2]
"
            ),
        )
        .unwrap();
        let err = Config::load_with_env(Some(&path), Some(config::Map::new()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown section [pointillist2] ("), "{err}");
    }

    #[test]
    fn a_key_before_any_header_is_said_to_be_outside_any_section() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stipple.toml");
        std::fs::write(&path, format!("api_token = \"tok-SECRET\"\n{MINIMAL}")).unwrap();
        let err = Config::load_with_env(Some(&path), Some(config::Map::new()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("api_token is outside any section: put it under its section's header"),
            "{err}"
        );
        assert!(!err.contains("SECRET"), "{err}");
    }

    #[test]
    fn a_toml_syntax_error_says_where_without_quoting_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stipple.toml");
        std::fs::write(&path, "[pointillist]\napi_token = \"tok-SECRET\n").unwrap();
        let err = Config::load_with_env(Some(&path), Some(config::Map::new()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not valid TOML at line 2, column"), "{err}");
        assert!(!err.contains("SECRET"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn the_admin_commands_read_only_the_store_section() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stipple.toml");
        let broken = MINIMAL.replace("[pointillist]\n", "[pointillist]\nconcurrency = \"x\"\n");
        std::fs::write(
            &path,
            format!("{broken}[store]\nurl = \"sqlite:///var/s.db\"\nsynchronous = \"normal\"\n"),
        )
        .unwrap();
        let config = Config::load_store_only(Some(&path)).unwrap();
        assert_eq!(config.store.url, "sqlite:///var/s.db");
        assert_eq!(
            config.synchronous().unwrap(),
            stipple_store::Synchronous::Normal
        );
        // The store section itself is still checked.
        std::fs::write(&path, "[store]\nsynchronous = \"sometimes\"\n").unwrap();
        let err = Config::load_store_only(Some(&path))
            .unwrap_err()
            .to_string();
        assert!(err.contains("store.synchronous"), "{err}");
        std::fs::write(&path, "[store]\nurl = 5\nuri = \"x\"\n").unwrap();
        assert!(Config::load_store_only(Some(&path)).is_err());
    }

    #[test]
    fn write_keys_come_from_the_environment_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stipple.toml");
        let keys = |c: &Config| -> Vec<(String, String)> {
            c.sources
                .iter()
                .map(|s| (s.name.clone(), s.write_key.expose_secret().to_owned()))
                .collect()
        };
        // A source in the file without its key; another whose key is overridden; a
        // third only in the environment.
        std::fs::write(
            &path,
            "[pointillist]\napi_token = \"t\"\n[[sources]]\nname = \"web-app\"\n\
             [[sources]]\nname = \"ios\"\nwrite_key = \"from-file\"\n",
        )
        .unwrap();
        let env = vars(&[
            ("STIPPLE_SOURCES__WEB_APP__WRITE_KEY", "0123"),
            ("STIPPLE_SOURCES__IOS__WRITE_KEY", "from-env"),
            ("STIPPLE_SOURCES__ANDROID__WRITE_KEY", "k3"),
        ]);
        let c = Config::load_with_env(Some(&path), Some(env)).unwrap();
        let mut got = keys(&c);
        got.sort();
        assert_eq!(
            got,
            [
                ("android".to_owned(), "k3".to_owned()),
                ("ios".to_owned(), "from-env".to_owned()),
                ("web-app".to_owned(), "0123".to_owned()),
            ]
        );
        // No file at all.
        let env = vars(&[
            ("STIPPLE_POINTILLIST__API_TOKEN", "t"),
            ("STIPPLE_SOURCES__WEB__WRITE_KEY", "wk"),
        ]);
        let c = Config::load_with_env(None, Some(env)).unwrap();
        assert_eq!(keys(&c), [("web".to_owned(), "wk".to_owned())]);
        // A source with its key nowhere says where it may go.
        let err = Config::load_with_env(Some(&path), Some(config::Map::new()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("(\"web-app\") has no write_key")
                && err.contains("STIPPLE_SOURCES__WEB_APP__WRITE_KEY"),
            "{err}"
        );
        // Anything else under STIPPLE_SOURCES__ is refused by name, its value unsaid.
        for var in ["STIPPLE_SOURCES__WEB__NAME", "STIPPLE_SOURCES____WRITE_KEY"] {
            let err = Config::load_with_env(Some(&path), Some(vars(&[(var, "s3cr3t")])))
                .unwrap_err()
                .to_string();
            assert!(err.contains(var) && !err.contains("s3cr3t"), "{err}");
        }
        // Two sources the same variable would name.
        std::fs::write(
            &path,
            "[pointillist]\napi_token = \"t\"\n[[sources]]\nname = \"web-app\"\n\
             write_key = \"a\"\n[[sources]]\nname = \"web_app\"\nwrite_key = \"b\"\n",
        )
        .unwrap();
        let env = vars(&[("STIPPLE_SOURCES__WEB_APP__WRITE_KEY", "c")]);
        let err = Config::load_with_env(Some(&path), Some(env))
            .unwrap_err()
            .to_string();
        assert!(err.contains("could be any of"), "{err}");
    }

    #[test]
    fn nothing_given_says_how_to_configure() {
        let none = config::Map::new();
        let err = Config::load_with_env(None, Some(none))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("no configuration: pass --config FILE"),
            "{err}"
        );
        // A variable counts as configuration: then the first missing key is named.
        let token: config::Map<String, String> =
            [("STIPPLE_POINTILLIST__API_TOKEN".to_owned(), "t".to_owned())]
                .into_iter()
                .collect();
        let err = Config::load_with_env(None, Some(token))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no [[sources]]"), "{err}");
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let c = load(
            MINIMAL
                .replace("\"tok\"", "\"s3cr3t-token\"")
                .replace("\"wk\"", "\"s3cr3t-key\"")
                .as_str(),
        )
        .unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
    }
}
