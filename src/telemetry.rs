//! Logging: JSON lines by default (production), `pretty` for local runs; level from `RUST_LOG`.
//!
//! Field values are outside text as often as not (Microsoft's error messages, a parking
//! reason): the JSON format escapes control characters itself; the pretty one writes every
//! field through [`EscapedFields`], so a crafted value cannot drive the terminal that shows the
//! log or forge a line of its own.

use crate::config::LogFormat;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::{FormatFields, MakeWriter};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls are no-ops (tests build many relays).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,lapin=warn,actix_server=warn"));
    // `try_init` also forwards the `log` crate's records, as the builder's did.
    let _ = subscriber(format, filter, std::io::stderr).try_init();
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        ),
        LogFormat::Pretty => Box::new(builder.compact().fmt_fields(EscapedFields).finish()),
    }
}

/// The pretty format's fields (the message, the event's and its spans'): formatted as
/// tracing-subscriber does, then every control character and bidi override written as a
/// visible escape ([`crate::terminal::escape`]) — a newline in a value included, so one event
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
        writer.write_str(&crate::terminal::escape(&plain))
    }
}
