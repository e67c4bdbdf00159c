//! `stipple serve`: the ingress, the store and delivery in one process.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry_sdk::trace::SdkTracerProvider;
use secrecy::SecretString;
use stipple_core::{MapConfig, Mapper};
use stipple_delivery::{Delivery, DeliveryConfig, DeliveryHealth};
use stipple_ingress::{DestinationHealth, DestinationStatus, IngressState, ServerConfig};
use stipple_pointillist::{Backoff, Client, ClientConfig};
use stipple_store::{SqliteOptions, Store};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::cli::ServeArgs;
use crate::config::{Config, LogFormat};

pub(crate) fn run(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.as_deref())?;
    let traces = init_logging(&config)?;
    raise_open_files_limit(&config);
    let served = super::runtime()?.block_on(serve(config, args.mock));
    if let Some(provider) = traces {
        // Sends the spans still buffered.
        if let Err(e) = provider.shutdown() {
            eprintln!("warning: could not flush the last traces: {e}");
        }
    }
    served?;
    Ok(ExitCode::SUCCESS)
}

/// Open files the service needs besides client connections: the store's files, delivery's
/// connections to Pointillist (up to `pointillist.concurrency`), logs and traces.
const FILES_BESIDES_CONNECTIONS: u64 = 256;

/// Raises the soft limit on open files to the hard limit, as servers do: every client
/// connection takes a file descriptor, and a soft limit of 1024 (systemd's default, and
/// many shells') refuses connections long before the machine runs out of anything. Warns
/// when even the hard limit leaves too few for `ingress.max_connections`.
fn raise_open_files_limit(config: &Config) {
    let needed = u64::try_from(config.ingress.max_connections)
        .unwrap_or(u64::MAX)
        .saturating_add(FILES_BESIDES_CONNECTIONS)
        .saturating_add(u64::try_from(config.pointillist.concurrency).unwrap_or(u64::MAX));
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < needed => warn!(
            limit,
            max_connections = config.ingress.max_connections,
            "the open files limit is too low for ingress.max_connections (each client \
             connection takes one, and past the limit connections fail): raise it \
             (LimitNOFILE= in a systemd unit, ulimit -n in a shell) or lower \
             ingress.max_connections"
        ),
        Ok(limit) => debug!(limit, "open files limit"),
        Err(e) => warn!(error = %e, "could not raise the open files limit"),
    }
}

/// Logs to stderr, and traces to an OTLP/HTTP collector when `telemetry.otlp_endpoint`
/// is set; the returned provider flushes the last spans when shut down.
fn init_logging(config: &Config) -> anyhow::Result<Option<SdkTracerProvider>> {
    use tracing_subscriber::prelude::*;
    // `RUST_LOG` stands in for `log.level` (checked with the file); a bad one is refused
    // as a bad `log.level` is, not passed over in silence.
    let filter = match std::env::var("RUST_LOG") {
        Ok(text) if !text.trim().is_empty() => tracing_subscriber::EnvFilter::try_new(&text)
            .map_err(|e| {
                anyhow::anyhow!(
                    "RUST_LOG {text:?} is not a valid filter: {e} (it overrides log.level)"
                )
            })?,
        _ => tracing_subscriber::EnvFilter::try_new(&config.log.level)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    // Log lines carry their own fields; spans are for traces only. Recording a span's
    // fields for the log layer would cost a formatted string per request, and with no
    // OTLP endpoint no layer wants spans at all, so they cost nothing.
    let filter = {
        use tracing_subscriber::filter::FilterExt as _;
        filter.and(tracing_subscriber::filter::filter_fn(|meta| {
            meta.is_event()
        }))
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match config.log.format {
        LogFormat::Json => logs.json().with_filter(filter).boxed(),
        LogFormat::Text => logs.with_ansi(ansi).with_filter(filter).boxed(),
    };
    let provider = match &config.telemetry.otlp_endpoint {
        Some(endpoint) => Some(tracer_provider(endpoint, &config.telemetry.service_name)?),
        None => None,
    };
    // Spans go out at info whatever level the logs are filtered at. Only a layer that is
    // there: an absent (`None`) layer would declare interest in every span.
    let mut layers = vec![logs];
    if let Some(provider) = &provider {
        use opentelemetry::trace::TracerProvider as _;
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("stipple"))
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
                .boxed(),
        );
    }
    tracing_subscriber::registry().with(layers).init();
    if let Some(endpoint) = &config.telemetry.otlp_endpoint {
        // Export failures are the OpenTelemetry SDK's to log, and name no address.
        info!(
            endpoint = %crate::config::without_credentials(endpoint),
            "traces are exported to this OTLP/HTTP collector"
        );
    }
    Ok(provider)
}

fn tracer_provider(endpoint: &str, service_name: &str) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    let (endpoint, authorization) = basic_credentials(endpoint)?;
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .with_headers(
            authorization
                .into_iter()
                .map(|a| ("authorization".to_owned(), a))
                .collect(),
        )
        .build()
        .context("cannot build the OTLP trace exporter")?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// A collector's URL without the `user:password@` it may carry, and that as the value of
/// a basic `Authorization` header: the HTTP client's connection pool names its
/// connections by the URL's authority in its trace-level log, password and all.
fn basic_credentials(endpoint: &str) -> anyhow::Result<(String, Option<String>)> {
    use base64::Engine as _;
    let mut url = url::Url::parse(endpoint).with_context(|| {
        format!(
            "telemetry.otlp_endpoint {:?} is not a URL",
            crate::config::without_credentials(endpoint)
        )
    })?;
    if url.username().is_empty() && url.password().is_none() {
        return Ok((endpoint.to_owned(), None));
    }
    let decode = |part: &str| {
        percent_encoding::percent_decode_str(part)
            .decode_utf8_lossy()
            .into_owned()
    };
    let credentials = format!(
        "{}:{}",
        decode(url.username()),
        decode(url.password().unwrap_or_default())
    );
    let header = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    );
    // Only fails for URLs that cannot have credentials, which then have none.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    Ok((url.to_string(), Some(header)))
}

/// The latency buckets, in seconds: from a fast local hop to a long retry.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];

/// The buckets of what takes well under a second when all is well: a Tracking API
/// answer, a store commit, an fsync. From 100 µs (an fsync on a fast disk) to 10 s (a
/// Segment client's timeout).
const ANSWER_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let mut builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .context("bad histogram buckets")?;
    // A full name wins over the suffix above.
    for name in [
        stipple_ingress::telemetry::REQUEST_SECONDS,
        stipple_store::FSYNC_SECONDS,
        stipple_store::COMMIT_SECONDS,
    ] {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.into()), ANSWER_BUCKETS)
            .context("bad histogram buckets")?;
    }
    let handle = builder
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    stipple_ingress::telemetry::describe_metrics();
    stipple_delivery::describe_metrics();
    Ok(handle)
}

async fn serve(config: Config, mock: bool) -> anyhow::Result<()> {
    let metrics = install_metrics()?;
    let (stop_tx, stop_rx) = watch::channel(false);

    // Where events go: Pointillist, or the in-process mock when asked for explicitly.
    let mut mock_server = None;
    let (endpoint, token) = if mock {
        let token = config
            .pointillist
            .api_token
            .clone()
            .unwrap_or_else(|| SecretString::from("mock-token"));
        let server = stipple_mock::MockServer::start(
            "127.0.0.1:0".parse()?,
            stipple_mock::MockConfig {
                actor_type: config.pointillist.actor_type.clone(),
                ..stipple_mock::MockConfig::new(
                    secrecy::ExposeSecret::expose_secret(&token).to_owned(),
                )
            },
        )
        .context("cannot start the in-process mock Pointillist")?;
        warn!(url = %server.url(), "--mock: delivering to the in-process mock Pointillist; nothing reaches Pointillist (see GET {}/mock/events)", server.url());
        let endpoint = server.url();
        // Scripts read this line for the mock's address.
        println!("mock Pointillist listening on {endpoint}");
        mock_server = Some(server);
        (endpoint, token)
    } else {
        let token = config.pointillist.api_token.clone().context(
            "pointillist.api_token is missing: set it in the configuration file or as STIPPLE_POINTILLIST__API_TOKEN \
             (or run `stipple serve --mock` to try Stipple without a Pointillist account)",
        )?;
        (config.pointillist.endpoint.clone(), token)
    };

    let store = open_store(&config)?;
    // pointillist.concurrency is shared out between delivery's threads, each with a
    // client (and connections) of its own.
    let endpoint = url::Url::parse(&endpoint)?;
    let client = |concurrency| {
        Client::new(ClientConfig {
            timeout: config.pointillist.timeout,
            concurrency,
            ..ClientConfig::new(endpoint.clone(), token.clone())
        })
        .context("cannot build the Pointillist client")
    };
    let shares = share(config.pointillist.concurrency, config.delivery_threads());
    let d = &config.delivery;
    let delivery = Delivery::new(
        store.clone(),
        client(shares[0])?,
        Mapper::new(MapConfig {
            event_source: config.pointillist.event_source.clone(),
            actor_type: config.pointillist.actor_type.clone(),
        }),
        DeliveryConfig {
            concurrency: shares[0],
            lease_batch: d.lease_batch,
            lease_for: d.lease_for,
            retry_horizon: d.retry_horizon,
            backoff: Backoff {
                min: d.backoff_min,
                max: d.backoff_max,
                ..Backoff::default()
            },
            // Counted across every pipeline: twice the requests in flight at once.
            outage_after: 2 * config.pointillist.concurrency,
            ..DeliveryConfig::default()
        },
    );
    let mut pipelines = vec![delivery.clone()];
    for &concurrency in &shares[1..] {
        pipelines.push(delivery.shard(client(concurrency)?));
    }

    let state = IngressState::new(config.ingress_config(), store.clone())?
        .with_destination_health(Arc::new(Health(delivery.health())))
        .with_metrics(metrics.clone());
    let ops = match config.ops_listen()? {
        Some(ops) => {
            let listener = tokio::net::TcpListener::bind(ops)
                .await
                .with_context(|| format!("cannot listen on {ops} (ingress.ops_listen)"))?;
            Some((listener, stipple_ingress::ops_router(state.clone())))
        }
        None => None,
    };
    let ingress = stipple_ingress::Ingress::new(state);

    let listen = config.listen()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (ingress.listen)"))?;
    let addr = listener.local_addr()?;
    info!(
        %addr,
        sources = config.sources.len(),
        store = %config.store.url,
        delivery_threads = shares.len(),
        concurrency = config.pointillist.concurrency,
        "stipple is listening"
    );
    let shutdown = super::shutdown_signal();
    let (signal_tx, signal_rx) = watch::channel(false);
    if let Some((listener, router)) = ops {
        let signal_rx = signal_rx.clone();
        let ops_addr = listener.local_addr()?;
        info!(addr = %ops_addr, "probes and metrics also served on ingress.ops_listen");
        println!("stipple ops endpoints on http://{ops_addr}");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(stopped(signal_rx))
                .await
            {
                warn!(error = %e, "the ops listener (ingress.ops_listen) failed");
            }
        });
    }
    // Scripts read this line for the port (with listen = "127.0.0.1:0").
    println!("stipple listening on http://{addr}");

    let mut housekeeping = tokio::spawn(housekeeping(
        store.clone(),
        metrics,
        Keeping {
            dedup_window: config.ingress.dedup_window,
            rejected: config.store.rejected_retention,
            dead_letters: config.store.dead_letter_retention,
        },
        stop_rx.clone(),
    ));
    let delivering = spawn_delivery(pipelines, &stop_rx)?;
    let server = tokio::spawn(stipple_ingress::serve(
        listener,
        ingress,
        ServerConfig {
            max_connections: config.ingress.max_connections,
            header_timeout: config.ingress.header_timeout,
            threads: config.ingress.threads,
        },
        stopped(signal_rx),
    ));
    tokio::pin!(server);
    let served = tokio::select! {
        served = &mut server => served,
        () = shutdown => {
            info!("shutting down: no new requests; finishing those in flight");
            let _ = signal_tx.send(true);
            // A client stalled mid-request must not hold the shutdown forever. Cutting off
            // a request still arriving loses nothing: unanswered, its client sends it again.
            let grace = config.ingress.shutdown_grace;
            match tokio::time::timeout(grace, &mut server).await {
                Ok(served) => served,
                Err(_) => {
                    warn!(?grace, "requests still open after the grace period are cut off");
                    server.abort();
                    Ok(Ok(()))
                }
            }
        }
    };
    served
        .context("the HTTP server task failed")?
        .context("cannot start the threads that serve connections")?;
    // Requests are all answered: now stop delivery and housekeeping.
    let _ = stop_tx.send(true);
    for pipeline in delivering {
        let _ = pipeline.await;
    }
    info!("delivery stopped");
    // A purge may be in its chunks (each its own transaction): it is not waited for
    // beyond a moment, and what it did not reach waits for the next start.
    if tokio::time::timeout(Duration::from_secs(1), &mut housekeeping)
        .await
        .is_err()
    {
        housekeeping.abort();
    }
    if let Some(mock) = mock_server {
        mock.shutdown().await.ok();
    }
    info!("stopped cleanly");
    Ok(())
}

/// The name of delivery's threads (in `top -H`, and in the bench's CPU figures).
const DELIVERY_THREAD: &str = "stipple-delivery";

/// Runs each delivery pipeline on a thread of its own (`delivery.threads`, two by
/// default), apart from the ingress's runtime, until `stop` turns true; each answer
/// comes when its pipeline has stopped. More threads means more pipelines, not a bigger
/// runtime: spread over a multi-threaded runtime, a pipeline's per-event wake-ups cost
/// delivery about a fifth of its rate on a 2-core machine. Delivery's own threads also
/// keep a burst of ingress requests from taking its workers, and the other way round.
fn spawn_delivery(
    pipelines: Vec<Delivery>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::sync::oneshot::Receiver<()>>> {
    pipelines
        .into_iter()
        .map(|pipeline| {
            pipeline
                .spawn(DELIVERY_THREAD, stopped(stop.clone()))
                .context("cannot start a delivery thread")
        })
        .collect()
}

/// `total` shared out as evenly as can be into `parts` (at least one each when
/// `total >= parts`).
fn share(total: usize, parts: usize) -> Vec<usize> {
    let parts = parts.max(1);
    (0..parts)
        .map(|i| total / parts + usize::from(i < total % parts))
        .collect()
}

fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let options = SqliteOptions {
        synchronous: config.synchronous()?,
        ..SqliteOptions::default()
    };
    let store = stipple_store::open(&config.store.url, options)
        .with_context(|| format!("store.url {:?}", config.store.url))?;
    if config.store.url.trim().starts_with("memory:") {
        warn!(
            "store.url is memory://: what is accepted and not yet delivered is lost when this \
             process exits (for tests; sqlite://PATH keeps it)"
        );
    }
    Ok(store)
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// How long the store keeps what it keeps.
struct Keeping {
    dedup_window: Duration,
    /// `None`: for ever.
    rejected: Option<Duration>,
    /// `None`: for ever.
    dead_letters: Option<Duration>,
}

/// Periodic chores: keep histogram summaries fresh (every 10 s); every 10 minutes, from
/// the start, forget expired dedup keys and delete rejected input and dead letters past
/// their retention.
async fn housekeeping(
    store: Arc<dyn Store>,
    metrics: PrometheusHandle,
    keeping: Keeping,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    let mut rounds = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        metrics.run_upkeep();
        rounds += 1;
        if rounds % 60 != 1 {
            continue;
        }
        done(
            store.expire_dedup(keeping.dedup_window).await,
            "forgot expired dedup keys",
            "cannot expire dedup keys; will try again",
        );
        if let Some(age) = keeping.rejected {
            done(
                store.purge_rejected(age).await,
                "deleted rejected input past store.rejected_retention",
                "cannot delete old rejected input; will try again",
            );
        }
        if let Some(age) = keeping.dead_letters {
            done(
                store.purge_dead_letters(age).await,
                "deleted dead letters past store.dead_letter_retention",
                "cannot delete old dead letters; will try again",
            );
        }
    }
}

/// Logs what a chore removed (nothing is not news), or why it failed.
fn done(result: Result<u64, stipple_store::StoreError>, removed: &str, failed: &str) {
    match result {
        Ok(0) => {}
        Ok(n) => info!(n, "{removed}"),
        Err(e) => warn!(error = %e, "{failed}"),
    }
}

/// Delivery's health as the ingress's `/readyz` reads it.
struct Health(Arc<DeliveryHealth>);

impl DestinationHealth for Health {
    fn status(&self) -> DestinationStatus {
        let s = self.0.status();
        DestinationStatus {
            healthy: s.healthy,
            detail: s.detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use stipple_store::{
        Append, DeadLetterReason, ManualClock, MemoryStore, NewEvent, RejectedInput, Store,
    };

    use super::{Keeping, basic_credentials, housekeeping, share};

    #[test]
    fn a_collector_s_credentials_leave_its_url_for_a_header() {
        let (url, header) = basic_credentials("http://ouser:p%40ss@127.0.0.1:4318/otlp").unwrap();
        assert_eq!(url, "http://127.0.0.1:4318/otlp");
        // base64 of "ouser:p@ss"
        assert_eq!(header.as_deref(), Some("Basic b3VzZXI6cEBzcw=="));
        let (url, header) = basic_credentials("https://collector.example:4318").unwrap();
        assert_eq!(url, "https://collector.example:4318");
        assert_eq!(header, None);
    }

    #[tokio::test]
    async fn housekeeping_deletes_what_is_past_its_retention_at_start() {
        const DAY: Duration = Duration::from_secs(24 * 60 * 60);
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        let store: Arc<dyn Store> = Arc::new(MemoryStore::with_clock(clock.clone()));
        let keep = |store: &Arc<dyn Store>, id: &str| {
            let store = Arc::clone(store);
            let id = id.to_owned();
            async move {
                let append = Append {
                    events: vec![NewEvent {
                        source: "web".into(),
                        message_id: id.clone(),
                        payload: b"{}".to_vec(),
                    }],
                    rejected: vec![RejectedInput {
                        source: "web".into(),
                        index: None,
                        code: "invalid_json".into(),
                        message: "no".into(),
                        payload: b"{".to_vec(),
                    }],
                };
                store.append(append, DAY).await.unwrap();
                let leased = store.lease(1, DAY).await.unwrap();
                let reason = DeadLetterReason {
                    status: Some(400),
                    detail: "no".into(),
                };
                store.dead_letter(leased[0].id, reason).await.unwrap();
            }
        };
        keep(&store, "old").await;
        clock.advance(40 * DAY);
        keep(&store, "new").await;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle();
        let keeping = Keeping {
            dedup_window: DAY,
            rejected: Some(30 * DAY),
            dead_letters: Some(30 * DAY),
        };
        let task = tokio::spawn(housekeeping(Arc::clone(&store), metrics, keeping, stopped));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let left = || async {
            let stats = store.stats().await.unwrap();
            (stats.rejected, stats.dead_letters)
        };
        while left().await != (1, 1) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nothing was deleted"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.send(true).unwrap();
        task.await.unwrap();
        // The new ones stay.
        assert_eq!(store.rejected(10).await.unwrap().len(), 1);
        assert_eq!(store.dead_letters(10).await.unwrap()[0].message_id, "new");
    }

    #[test]
    fn concurrency_is_shared_out_evenly_and_whole() {
        assert_eq!(share(32, 1), [32]);
        assert_eq!(share(32, 2), [16, 16]);
        assert_eq!(share(32, 3), [11, 11, 10]);
        assert_eq!(share(3, 3), [1, 1, 1]);
        for (total, parts) in [(7, 2), (100, 7), (5, 5)] {
            let shares = share(total, parts);
            assert_eq!(shares.len(), parts);
            assert_eq!(shares.iter().sum::<usize>(), total);
            assert!(shares.iter().all(|&s| s >= 1));
        }
    }
}
