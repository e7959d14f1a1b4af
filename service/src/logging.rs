//! Log output: tracing to stderr in the form the reader wants.
//!
//! - `journal`: under systemd (`$JOURNAL_STREAM` set, `auto`): no timestamp
//!   (journald adds its own), no colours, and each line starts with the
//!   syslog priority `<N>` so journald files it at the right level
//!   (`SyslogLevelPrefix=`, on by default);
//! - `human`: timestamps, colours when stderr is a terminal;
//! - `json`: one JSON object per line, for log shippers.
//!
//! Shared by the agent and the controller binaries.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// The `log_format` config key and `WARDNET_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `journal` under systemd, else `human`.
    #[default]
    Auto,
    Human,
    Journal,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(LogFormat::Auto),
            "human" => Ok(LogFormat::Human),
            "journal" => Ok(LogFormat::Journal),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "expected one of \"auto\", \"human\", \"journal\", \"json\", got {other:?}"
            )),
        }
    }
}

impl LogFormat {
    /// What `auto` means here: journald when systemd connected stderr to it.
    pub fn resolve(self, journal_stream: bool) -> LogFormat {
        match self {
            LogFormat::Auto if journal_stream => LogFormat::Journal,
            LogFormat::Auto => LogFormat::Human,
            other => other,
        }
    }
}

/// Install the global subscriber (filter from `$WARDNET_LOG`, default
/// `info`). A second call is ignored.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("WARDNET_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let format = format.resolve(std::env::var_os("JOURNAL_STREAM").is_some());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Journal => builder
            .with_ansi(false)
            .event_format(Journald::default())
            .try_init(),
        LogFormat::Human | LogFormat::Auto => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}

/// Logging for one-shot commands (enrol, status, the admin CLI): warnings
/// and errors only, without timestamps, and nothing from the TLS and HTTP
/// libraries, whose failures the command explains itself.
pub fn init_cli() {
    let filter = EnvFilter::try_from_env("WARDNET_LOG")
        .unwrap_or_else(|_| EnvFilter::new("warn,rustls=off,reqwest=off,hyper=off,hyper_util=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// The syslog priority journald reads from a `<N>` line prefix.
pub fn syslog_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// `<N>` followed by the compact line without timestamp or level word
/// (the priority already says it).
#[derive(Debug)]
pub struct Journald {
    inner: format::Format<format::Full, ()>,
}

impl Default for Journald {
    fn default() -> Self {
        Journald {
            inner: format::format()
                .without_time()
                .with_level(false)
                .with_ansi(false),
        }
    }
}

impl<S, N> FormatEvent<S, N> for Journald
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", syslog_priority(event.metadata().level()))?;
        self.inner.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn parses_and_resolves() {
        assert_eq!("JSON".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert!("xml".parse::<LogFormat>().is_err());
        assert_eq!(LogFormat::Auto.resolve(true), LogFormat::Journal);
        assert_eq!(LogFormat::Auto.resolve(false), LogFormat::Human);
        assert_eq!(LogFormat::Json.resolve(true), LogFormat::Json);
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn journal_lines_carry_the_priority_and_no_timestamp() {
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .event_format(Journald::default())
            .finish();
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(peer = "hub-north", "peer down");
            tracing::info!("up");
        });
        let out = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf-8");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].starts_with("<4>"), "{out}");
        assert!(lines[0].contains("peer down") && lines[0].contains("peer=\"hub-north\""));
        assert!(!lines[0].contains("WARN"), "{out}");
        assert!(lines[1].starts_with("<6>"), "{out}");
        // No timestamp: the line starts with the priority and then the target.
        assert!(
            !lines[1].contains(':') || !lines[1][3..].starts_with("20"),
            "{out}"
        );
    }
}
