//! [`Registrar`]: keeps one service instance registered with the local Consul agent for the
//! life of the process, re-registering it when the agent forgets it (e.g. after a restart).

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::ConsulClient;
use crate::error::ConsulError;
use crate::types::ServiceRegistration;

/// Default time between two checks that the agent still knows the instance.
pub const DEFAULT_RESYNC_INTERVAL: Duration = Duration::from_secs(2);

/// Registers a service instance and keeps it registered (see [`Registrar::register`]).
#[derive(Debug, Clone)]
pub struct Registrar {
    client: ConsulClient,
    registration: ServiceRegistration,
    resync_interval: Duration,
}

impl Registrar {
    /// A registrar for `registration` on the agent behind `client`.
    pub fn new(client: ConsulClient, registration: ServiceRegistration) -> Self {
        Self {
            client,
            registration,
            resync_interval: DEFAULT_RESYNC_INTERVAL,
        }
    }

    /// Sets how often the background task checks the agent (default 2 s; zero is raised to
    /// 10 ms).
    pub fn with_resync_interval(mut self, interval: Duration) -> Self {
        self.resync_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Registers the instance now (one attempt; its error is returned as is), then spawns a
    /// background task that, every resync interval, asks the agent whether it still knows the
    /// instance and registers it again when it does not (the agent restarted and forgot it).
    /// An unreachable agent is logged once per outage and retried.
    ///
    /// Must be called within a tokio runtime. Dropping the returned [`Registration`] stops
    /// the background task (the instance stays registered until the agent's checks or a
    /// [`Registration::deregister`] remove it).
    pub async fn register(self) -> Result<Registration, ConsulError> {
        self.client
            .agent_service_register(&self.registration)
            .await?;
        let service_id = self.registration.effective_id().to_owned();
        tracing::info!(
            service_id = %service_id,
            service = %self.registration.name,
            consul = %self.client.address(),
            "registered service with Consul"
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(resync_loop(
            self.client.clone(),
            self.registration,
            self.resync_interval,
            stop_rx,
        ));
        Ok(Registration {
            service_id,
            client: self.client,
            stop: stop_tx,
            task: Some(task),
        })
    }
}

/// A registered instance. Dropping it stops the background re-registration (abort on drop).
#[derive(Debug)]
pub struct Registration {
    service_id: String,
    client: ConsulClient,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Registration {
    /// The id the agent knows the instance by.
    pub fn service_id(&self) -> &str {
        &self.service_id
    }

    /// Stops the background task (letting an in-flight re-registration finish, within the
    /// client's request timeout), then deregisters the instance. An agent that no longer
    /// knows the instance (404) counts as success.
    pub async fn deregister(mut self) -> Result<(), ConsulError> {
        self.stop_task().await;
        match self.client.agent_service_deregister(&self.service_id).await {
            Ok(()) => {}
            Err(err) if err.is_not_found() => {}
            Err(err) => return Err(err),
        }
        tracing::info!(
            service_id = %self.service_id,
            consul = %self.client.address(),
            "deregistered service from Consul"
        );
        Ok(())
    }

    /// Asks the task to stop at its next wake-up and waits for it, aborting it if it does not
    /// stop within the request timeout.
    async fn stop_task(&mut self) {
        let Some(mut task) = self.task.take() else {
            return;
        };
        // A send error only means the task already ended.
        let _ = self.stop.send(true);
        let limit = self.client.config().request_timeout;
        if tokio::time::timeout(limit, &mut task).await.is_err() {
            task.abort();
            // The task is aborted; its (cancelled) result carries nothing of interest.
            let _ = task.await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// What the last resync found, to log transitions only (not every tick).
#[derive(Debug, PartialEq, Eq)]
enum SyncState {
    /// The agent knows the instance.
    InSync,
    /// The agent could not be reached.
    Unreachable,
    /// The agent answered with an error (message kept to log a change of error once).
    Failing(String),
}

/// The background task: checks every `interval` that the agent knows the instance.
async fn resync_loop(
    client: ConsulClient,
    registration: ServiceRegistration,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let service_id = registration.effective_id().to_owned();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once; we registered just now.
    ticker.tick().await;
    let mut state = SyncState::InSync;
    loop {
        tokio::select! {
            biased;
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
                continue;
            }
            _ = ticker.tick() => {}
        }
        let next = resync_once(&client, &registration, &service_id, &state).await;
        state = next;
    }
}

/// One resync round; returns the new state and logs on transitions.
async fn resync_once(
    client: &ConsulClient,
    registration: &ServiceRegistration,
    service_id: &str,
    state: &SyncState,
) -> SyncState {
    let consul = client.address();
    let outcome = match client.agent_service(service_id).await {
        Ok(Some(_)) => Ok(false),
        Ok(None) => client
            .agent_service_register(registration)
            .await
            .map(|()| true),
        Err(err) => Err(err),
    };
    match outcome {
        Ok(reregistered) => {
            if reregistered {
                tracing::info!(
                    service_id = %service_id,
                    service = %registration.name,
                    consul = %consul,
                    "re-registered service with Consul (the agent did not know it; it probably restarted)"
                );
            } else if *state != SyncState::InSync {
                tracing::info!(
                    service_id = %service_id,
                    consul = %consul,
                    "Consul agent reachable again; service still registered"
                );
            }
            SyncState::InSync
        }
        Err(err) if err.is_unreachable() => {
            if *state != SyncState::Unreachable {
                tracing::warn!(
                    service_id = %service_id,
                    consul = %consul,
                    error = %err,
                    "Consul agent unreachable; will keep trying to keep the service registered"
                );
            }
            SyncState::Unreachable
        }
        Err(err) => {
            let message = err.to_string();
            if *state != SyncState::Failing(message.clone()) {
                tracing::warn!(
                    service_id = %service_id,
                    consul = %consul,
                    error = %message,
                    "cannot check or restore the service's Consul registration; will retry"
                );
            }
            SyncState::Failing(message)
        }
    }
}
