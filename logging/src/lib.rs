//! The one log setup of both binaries: structured `tracing` events on
//! stderr, as text or JSON lines, filtered by a `tracing` directive.
//! Colour only when stderr is a terminal (and `NO_COLOR` is unset), so
//! log collectors never receive escape codes.
//!
//! [`http`] is the one HTTP server of both binaries' `/metrics` and health
//! endpoints, with its timeouts and connection caps.
#![forbid(unsafe_code)]

pub mod http;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event, for log collectors.
    Json,
}

/// Whether text logs get colour: on a terminal, unless `NO_COLOR` is set
/// (<https://no-color.org>).
pub fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber. An invalid `filter` falls back to
/// `info` (the CLIs validate it first); a second call keeps the first
/// subscriber, so tests may call it freely.
pub fn init_tracing(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".as_ref())));
        assert!(!colour(true, Some("1".as_ref())));
        assert!(!colour(false, None));
    }
}
