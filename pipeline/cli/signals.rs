//! Stopping on SIGINT and SIGTERM.
//!
//! Owns: the process's signal handlers. Must not: decide what stopping means; the command
//! that installs them passes [`StopSignals::received`] to the work it runs.

use tagflow::Error;

/// SIGINT and SIGTERM, caught from the moment [`StopSignals::install`] returns: a signal
/// that arrives while the command is still preparing or in its first batch is kept and ends
/// the command at its next stopping point, instead of killing the process by the signal's
/// default action. Only commands that stop cleanly install it (`follow`, `serve`); the
/// others keep the default action, which their crash safety covers.
pub struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Register both handlers now (not when first awaited). Needs the Tokio runtime.
    pub fn install() -> Result<Self, Error> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).map_err(Error::Signals)?,
            terminate: signal(SignalKind::terminate()).map_err(Error::Signals)?,
        })
    }

    /// Resolves on the first SIGINT or SIGTERM, received before or after this call.
    pub async fn received(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => tracing::info!("SIGINT: stopping once the work in progress is done"),
            _ = self.terminate.recv() => tracing::info!("SIGTERM: stopping once the work in progress is done"),
        }
    }
}
