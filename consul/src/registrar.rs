//! [`Registrar`]: keeps one service instance registered with the local Consul agent for the
//! life of the process, re-registering it when the agent forgets it (e.g. after a restart), and
//! optionally keeps a TTL check of the instance up to date from a probe (for instances the agent
//! cannot check itself, such as gRPC servers that require client certificates).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::ConsulClient;
use crate::error::ConsulError;
use crate::types::{CheckStatus, ServiceRegistration};

/// Default time between two checks that the agent still knows the instance.
pub const DEFAULT_RESYNC_INTERVAL: Duration = Duration::from_secs(2);

/// What a TTL heartbeat's probe found: the status to give the check and a line of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TtlReport {
    /// `Passing`, `Warning` or `Critical` (Consul refuses `Maintenance` here).
    pub status: CheckStatus,
    /// Shown as the check's output in Consul.
    pub output: String,
}

/// The probe of a TTL heartbeat: asked every interval how the instance is.
type TtlProbe = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = TtlReport> + Send>> + Send + Sync>;

/// A TTL check of the registration that the registrar keeps up to date.
#[derive(Clone)]
struct TtlHeartbeat {
    check_id: String,
    interval: Duration,
    probe: TtlProbe,
}

impl fmt::Debug for TtlHeartbeat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TtlHeartbeat")
            .field("check_id", &self.check_id)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// Registers a service instance and keeps it registered (see [`Registrar::register`]).
#[derive(Debug, Clone)]
pub struct Registrar {
    client: ConsulClient,
    registration: ServiceRegistration,
    resync_interval: Duration,
    heartbeat: Option<TtlHeartbeat>,
}

impl Registrar {
    /// A registrar for `registration` on the agent behind `client`.
    pub fn new(client: ConsulClient, registration: ServiceRegistration) -> Self {
        Self {
            client,
            registration,
            resync_interval: DEFAULT_RESYNC_INTERVAL,
            heartbeat: None,
        }
    }

    /// Keeps the TTL check `check_id` (one of the registration's checks) up to date: from
    /// registration on, every `interval` (zero is raised to 10 ms), `probe` says how the instance
    /// is and the agent is told. When the heartbeat stops (deregistration, a dropped
    /// [`Registration`], a dead process), the check's TTL runs out and it turns critical.
    pub fn with_ttl_heartbeat<F, Fut>(
        mut self,
        check_id: impl Into<String>,
        interval: Duration,
        probe: F,
    ) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TtlReport> + Send + 'static,
    {
        self.heartbeat = Some(TtlHeartbeat {
            check_id: check_id.into(),
            interval: interval.max(Duration::from_millis(10)),
            probe: Arc::new(move || Box::pin(probe())),
        });
        self
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
        let mut tasks = Vec::with_capacity(2);
        if let Some(heartbeat) = self.heartbeat {
            tasks.push(tokio::spawn(heartbeat_loop(
                self.client.clone(),
                heartbeat,
                service_id.clone(),
                stop_rx.clone(),
            )));
        }
        tasks.push(tokio::spawn(resync_loop(
            self.client.clone(),
            self.registration,
            self.resync_interval,
            stop_rx,
        )));
        Ok(Registration {
            service_id,
            client: self.client,
            stop: stop_tx,
            tasks,
        })
    }
}

/// A registered instance. Dropping it stops the background re-registration and the TTL
/// heartbeat, if any (abort on drop).
#[derive(Debug)]
pub struct Registration {
    service_id: String,
    client: ConsulClient,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Registration {
    /// The id the agent knows the instance by.
    pub fn service_id(&self) -> &str {
        &self.service_id
    }

    /// Stops the background tasks (letting an in-flight re-registration finish, within the
    /// client's request timeout), then deregisters the instance. An agent that no longer
    /// knows the instance (404) counts as success.
    pub async fn deregister(mut self) -> Result<(), ConsulError> {
        self.stop_tasks().await;
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

    /// Asks the tasks to stop at their next wake-up and waits for them, aborting any that
    /// does not stop within the request timeout.
    async fn stop_tasks(&mut self) {
        // A send error only means the tasks already ended.
        let _ = self.stop.send(true);
        let limit = self.client.config().request_timeout;
        for mut task in std::mem::take(&mut self.tasks) {
            if tokio::time::timeout(limit, &mut task).await.is_err() {
                task.abort();
                // The task is aborted; its (cancelled) result carries nothing of interest.
                let _ = task.await;
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        for task in self.tasks.drain(..) {
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

/// The TTL heartbeat: every interval, asks the probe and tells the agent; logs transitions only
/// (a change of status, a failing update, the recovery).
async fn heartbeat_loop(
    client: ConsulClient,
    heartbeat: TtlHeartbeat,
    service_id: String,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(heartbeat.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Result<CheckStatus, String>> = None;
    loop {
        // The first tick fires at once: the check starts critical until the first report.
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
        let report = (heartbeat.probe)().await;
        let outcome = client
            .agent_check_update(&heartbeat.check_id, report.status, &report.output)
            .await
            .map(|()| report.status)
            .map_err(|err| err.to_string());
        if last.as_ref() != Some(&outcome) {
            match &outcome {
                Ok(CheckStatus::Passing) => tracing::info!(
                    service_id = %service_id,
                    check_id = %heartbeat.check_id,
                    output = %report.output,
                    "TTL check passing"
                ),
                Ok(status) => tracing::warn!(
                    service_id = %service_id,
                    check_id = %heartbeat.check_id,
                    status = status.as_str(),
                    output = %report.output,
                    "TTL check not passing"
                ),
                Err(err) => tracing::warn!(
                    service_id = %service_id,
                    check_id = %heartbeat.check_id,
                    consul = %client.address(),
                    error = %err,
                    "cannot update the TTL check; will retry"
                ),
            }
        }
        last = Some(outcome);
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
