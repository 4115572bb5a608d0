//! `o365-bench serve-relay`: the relay under test, as a child process of the benchmark. It is
//! the relay's own [`Application`] (what `o365-relay serve` runs), configured from the same
//! `O365_*` environment, so the benchmark measures the library it was built from. It also stops
//! when its stdin closes, so it never outlives a killed benchmark.

use o365_relay::app::Application;
use o365_relay::config::Settings;
use std::io::Read;
use std::process::ExitCode;

pub async fn serve_relay() -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(errors) => {
            eprintln!("o365-bench serve-relay: configuration is invalid:");
            for line in &errors.0 {
                eprintln!("  {line}");
            }
            return ExitCode::from(2);
        }
    };
    o365_relay::ops::telemetry::init(settings.log_format);
    let app = match Application::build(settings).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("o365-bench serve-relay: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let token = app.shutdown_token();
    let rx = stdin_closed();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = rx => {}
        }
        token.cancel();
    });
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// Resolves when the benchmark's end of stdin closes, so a child never outlives a killed
/// benchmark (`serve-relay`, `serve-minimal`).
pub(crate) fn stdin_closed() -> tokio::sync::oneshot::Receiver<()> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        let _ = tx.send(());
    });
    rx
}
