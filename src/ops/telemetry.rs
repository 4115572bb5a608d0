//! Logging: JSON lines by default (production), `pretty` for local runs; level from `RUST_LOG`.
//!
//! Why it is built so: docs/DESIGN.md, "ops/telemetry".

use crate::config::LogFormat;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::{FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// A warning that anyone outside can trigger (a wrong webhook auth id, a wrong admin token) is
/// written at most once per [`LimitedWarnings::EVERY`]: a flood must not flood the log too.
/// The line written says how many were left out since the previous one (its metric counts
/// every one). One `static` per kind of warning.
pub struct LimitedWarnings {
    /// When the last line was written, in milliseconds since the Unix epoch (0: never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl LimitedWarnings {
    pub const EVERY: Duration = Duration::from_secs(10);

    pub const fn new() -> LimitedWarnings {
        LimitedWarnings {
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines left out since the last one)` when a line may be written now.
    pub fn allow(&self) -> Option<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let before = self.last.load(Ordering::Relaxed);
        let due = before == 0 || now >= before.saturating_add(Self::EVERY.as_millis() as u64);
        if due
            && self
                .last
                .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl Default for LimitedWarnings {
    fn default() -> Self {
        LimitedWarnings::new()
    }
}

/// Installs the global subscriber once; later calls are no-ops (tests build many relays).
/// With an OTLP endpoint configured ([`tracing_configured`]) it also exports spans.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,lapin=warn,actix_server=warn"));
    let mut layers = vec![log_layer(format, filter, std::io::stderr)];
    let provider = tracing_configured().then(tracer_provider);
    if let Some(provider) = &provider {
        // The relay's own spans only, whatever `RUST_LOG` says about the log.
        let tracer = provider.tracer("o365-relay");
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(Targets::new().with_target("o365_relay", tracing::Level::INFO))
                .boxed(),
        );
    }
    // `try_init` also forwards the `log` crate's records, as the builder's did.
    if Registry::default().with(layers).try_init().is_ok() {
        if let Some(provider) = provider {
            let _ = PROVIDER.set(provider);
            crate::ops::trace_context::enable();
        }
    } else if let Some(provider) = provider {
        let _ = provider.shutdown();
    }
}

/// The exporter of this process, when tracing is on.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether spans are exported: an OTLP endpoint is set (OpenTelemetry's variables).
pub fn tracing_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()))
}

/// OTLP/HTTP (protobuf) through a batch processor; the exporter reads the endpoint, headers
/// and timeout, the SDK the sampler and the batch settings from the `OTEL_*` variables.
pub(crate) fn tracer_provider() -> SdkTracerProvider {
    let mut resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name("o365-relay");
    }
    let builder = SdkTracerProvider::builder().with_resource(resource.build());
    match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(exporter) => builder.with_batch_exporter(exporter).build(),
        Err(e) => {
            eprintln!("o365-relay: cannot export traces ({e}); tracing is off.");
            builder.build()
        }
    }
}

/// Exports the spans still waiting and stops the exporter (at the end of `serve`). Blocks
/// while the last batch is sent (bounded by `OTEL_EXPORTER_OTLP_TIMEOUT`).
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.force_flush();
        let _ = provider.shutdown();
    }
}

/// Exports the spans ended so far now (tests; [`shutdown`] does it at the end).
pub fn flush() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.force_flush();
    }
}

/// The subscriber for `format`, writing to `writer` (stderr in production; a buffer in tests).
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    Box::new(Registry::default().with(log_layer(format, filter, writer)))
}

/// The log: JSON lines or the pretty format, filtered by `filter` (`RUST_LOG`).
fn log_layer<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn Layer<Registry> + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
        LogFormat::Pretty => builder
            .compact()
            .fmt_fields(EscapedFields)
            .with_filter(filter)
            .boxed(),
    }
}

/// The pretty format's fields (the message, the event's and its spans'): formatted as
/// tracing-subscriber does, then every control character and bidi override written as a
/// visible escape ([`crate::ops::terminal::escape`]) — a newline in a value included, so one event
/// stays one line. The formatter's own colours and line end are written around them, untouched.
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut plain = String::new();
        DefaultFields::new().format_fields(Writer::new(&mut plain), fields)?;
        writer.write_str(&crate::ops::terminal::escape(&plain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limited_warning_is_written_once_per_interval_and_counts_the_rest() {
        let w = LimitedWarnings::new();
        assert_eq!(w.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(w.allow(), None);
        }
        // The interval has passed: the next line says how many were left out.
        w.last.store(1, Ordering::Relaxed);
        assert_eq!(w.allow(), Some(5));
        assert_eq!(w.allow(), None);
    }
}
