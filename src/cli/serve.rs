//! `o365-relay` / `o365-relay serve`: the service until SIGTERM or SIGINT.

use super::{invalid_configuration, settings, Failure, Outcome};
use o365_relay::app::Application;

pub async fn run() -> Outcome {
    let settings = settings()?;
    settings.check_serve().map_err(invalid_configuration)?;
    o365_relay::ops::telemetry::init(settings.log_format);
    let app = Application::build(settings).await?;
    tracing::info!(
        public_port = app.public_port(),
        admin_port = app.admin_port(),
        "o365-relay started."
    );
    let token = app.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        token.cancel();
    });
    let stopped = app.run_until_stopped().await;
    // The last spans (tracing on): exported before the process ends.
    let _ = tokio::task::spawn_blocking(o365_relay::ops::telemetry::shutdown).await;
    stopped.map_err(|e| {
        tracing::error!(error = %e, "Stopped with an error.");
        Failure::Failed(e)
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received."),
                _ = int.recv() => tracing::info!("SIGINT received."),
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
