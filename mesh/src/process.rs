//! One service process of the dev mesh: started with its log in a file, stopped with SIGTERM and
//! a bounded wait, killed if it does not go.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::DevMeshError;

/// A running service process, killed when dropped.
#[derive(Debug)]
pub struct ServiceProcess {
    name: String,
    log: PathBuf,
    child: Child,
}

impl ServiceProcess {
    /// Starts `binary` with `args` and `envs`, standard output and error appended to `log`.
    pub fn spawn(
        name: impl Into<String>,
        binary: &Path,
        args: &[String],
        envs: &[(String, String)],
        log: PathBuf,
    ) -> Result<Self, DevMeshError> {
        let name = name.into();
        let io_error = |source| DevMeshError::Process {
            name: name.clone(),
            source,
        };
        if !binary.is_file() {
            return Err(DevMeshError::MissingBinary {
                path: binary.to_path_buf(),
            });
        }
        let out = std::fs::File::create(&log).map_err(io_error)?;
        let err = out.try_clone().map_err(io_error)?;
        let child = Command::new(binary)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(io_error)?;
        Ok(Self { name, log, child })
    }

    /// The process's name in the mesh (`priority-1`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The OS process ID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Where its output goes.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The exit status if it has exited, without waiting.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> Result<ExitStatus, DevMeshError> {
        self.child
            .wait()
            .await
            .map_err(|source| DevMeshError::Process {
                name: self.name.clone(),
                source,
            })
    }

    /// Sends `signal` (SIGTERM for a graceful stop, SIGKILL to crash it).
    pub fn signal(&self, signal: Signal) -> Result<(), DevMeshError> {
        let Some(pid) = self.child.id() else {
            return Ok(()); // already reaped
        };
        let pid = i32::try_from(pid).map_err(|_| DevMeshError::Process {
            name: self.name.clone(),
            source: std::io::Error::other("process ID out of range"),
        })?;
        kill(Pid::from_raw(pid), signal).map_err(|errno| DevMeshError::Process {
            name: self.name.clone(),
            source: std::io::Error::from(errno),
        })
    }

    /// SIGTERM, then wait up to `grace`; SIGKILL if it is still running. Returns how it exited.
    pub async fn stop(&mut self, grace: Duration) -> Result<ExitStatus, DevMeshError> {
        if let Some(status) = self.try_exit_status() {
            return Ok(status);
        }
        self.signal(Signal::SIGTERM)?;
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(result) => result.map_err(|source| DevMeshError::Process {
                name: self.name.clone(),
                source,
            }),
            Err(_) => {
                tracing::warn!(process = %self.name, ?grace, "did not stop in time; killing it");
                let _ = self.child.start_kill();
                self.wait().await
            }
        }
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}
