//! Throw-away Redis and Postgres servers of a test's own, which the test stops and starts again on
//! the same port to make a real outage (the machine's shared servers are never touched). For tests
//! only.
//!
//! ```no_run
//! # use protomesh_data::{self as data, DataConfig, testing::{PrivatePostgres, PrivateRedis, PrivateServerError}};
//! # async fn test() -> Result<(), PrivateServerError> {
//! let mut redis = PrivateRedis::start().await?;   // redis-server on a free loopback port
//! let mut pg = PrivatePostgres::start().await?;   // initdb + pg_ctl start, trust auth
//! let config = DataConfig::with_database_url(pg.url()).with_redis_url(redis.url());
//! pg.stop().await?;                               // calls now fail with UNAVAILABLE
//! pg.start_again().await?;                        // same port, same data
//! redis.restart().await?;                         // same port, empty (Redis keeps nothing)
//! # Ok(()) }
//! ```
//!
//! Each server lives in a directory of its own under the system's temporary directory,
//! `protomesh-{redis,pg}-<pid>-<n>-<random>`, deleted when its guard is dropped; starting a
//! guard first stops the servers of test processes that are gone (killed before their guards
//! dropped) and deletes their directories. While a server is stopped its guard holds the port
//! with a socket that is bound but does not listen: connections to it are refused (as for a
//! server that is down) and the kernel does not hand the port to another connection, so the
//! server gets it back when it starts again.
//!
//! Postgres refuses to run as root: when the tests run as root (effective uid 0), `initdb` and
//! `pg_ctl` run as the `postgres` system user (`runuser -u postgres -- …`) and the directory
//! belongs to that user.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Bound on a server becoming ready (Redis answering `PING`; `pg_ctl start -w`).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Bound on `initdb`.
const INITDB_TIMEOUT: Duration = Duration::from_secs(60);

/// Bound on a server stopping (`pg_ctl stop`, or Redis exiting after `SIGKILL`).
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on a small helper command (`id`).
const HELPER_TIMEOUT: Duration = Duration::from_secs(5);

/// Time between two readiness checks of Redis.
const READY_POLL: Duration = Duration::from_millis(50);

/// How much of a command's output an error quotes (its end).
const TAIL_CHARS: usize = 2000;

/// The directory where `initdb` and `pg_ctl` are looked for after `PATH`.
const POSTGRES_LIB_DIR: &str = "/usr/lib/postgresql";

/// The system account Postgres runs as when the tests run as root.
const POSTGRES_ACCOUNT: &str = "postgres";

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// Why a private server could not be started, stopped or started again.
#[derive(Debug, thiserror::Error)]
pub enum PrivateServerError {
    /// A program the server needs is not installed.
    #[error("{program} not found (looked on PATH{also})")]
    NotFound {
        /// The program.
        program: &'static str,
        /// Where else it was looked for (`" and in …"`), or nothing.
        also: String,
    },
    /// A command could not be started.
    #[error("cannot run {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A command exited with a failure, or a server exited while starting.
    #[error("{command} failed ({status}): {output}")]
    Failed {
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// The end of its error output (and of the server's log).
        output: String,
    },
    /// A command or a wait took longer than its bound.
    #[error("{what} did not finish within {after:?}: {output}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// The bound.
        after: Duration,
        /// The end of the server's log, or of the command's output.
        output: String,
    },
    /// The server's directory or port could not be prepared.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

impl PrivateServerError {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| PrivateServerError::Io { context, source }
    }
}

/// A `redis-server` of the test's own on a free `127.0.0.1` port, killed when dropped.
///
/// It runs with `--save "" --appendonly no` in a directory of its own: it keeps nothing on disk,
/// so every key is gone after [`stop`](Self::stop) and [`start_again`](Self::start_again) — a
/// Redis that crashed and came back empty.
#[derive(Debug)]
pub struct PrivateRedis {
    port: u16,
    dir: PathBuf,
    child: Option<std::process::Child>,
    reservation: Option<TcpSocket>,
}

impl PrivateRedis {
    /// Starts `redis-server` (from `PATH`) on a free port and waits (at most 30 s) until it
    /// answers `PING`. Call it within a Tokio runtime.
    pub async fn start() -> Result<Self, PrivateServerError> {
        let program = find_on_path("redis-server").ok_or(PrivateServerError::NotFound {
            program: "redis-server",
            also: String::new(),
        })?;
        remove_stale_dirs("redis", kill_stale_redis);
        let dir = make_server_dir("redis")?;
        let (port, reservation) = match reserve_free_port() {
            Ok(reserved) => reserved,
            Err(err) => {
                remove_dir(&dir);
                return Err(err);
            }
        };
        let mut redis = Self {
            port,
            dir,
            child: None,
            reservation: Some(reservation),
        };
        redis.spawn(&program).await?;
        Ok(redis)
    }

    /// Its URL, `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its directory (holding `redis.log`), deleted when the guard is dropped.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the server process runs (it was started and not stopped, and did not exit).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Kills the server (`SIGKILL`, as in a crash) and waits (at most 10 s) until it is gone;
    /// the port stays reserved for [`start_again`](Self::start_again), and connections to it are
    /// refused meanwhile. Does nothing when it is stopped already.
    pub async fn stop(&mut self) -> Result<(), PrivateServerError> {
        if let Some(mut child) = self.child.take() {
            // An error means it exited already, which is what we want.
            let _ = child.kill();
            wait_for_exit(&mut child, "redis-server", STOP_TIMEOUT).await?;
        }
        if self.reservation.is_none() {
            self.reservation = reserve_port(self.port).ok();
        }
        Ok(())
    }

    /// Starts the server again on the same port (empty: it kept nothing) and waits until it
    /// answers `PING`. Does nothing when it runs.
    pub async fn start_again(&mut self) -> Result<(), PrivateServerError> {
        if self.is_running() {
            return Ok(());
        }
        let program = find_on_path("redis-server").ok_or(PrivateServerError::NotFound {
            program: "redis-server",
            also: String::new(),
        })?;
        self.spawn(&program).await
    }

    /// [`stop`](Self::stop), then [`start_again`](Self::start_again): same port, no data.
    pub async fn restart(&mut self) -> Result<(), PrivateServerError> {
        self.stop().await?;
        self.start_again().await
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// Starts the process on the reserved port and waits until it answers `PING`.
    async fn spawn(&mut self, program: &Path) -> Result<(), PrivateServerError> {
        let log_path = self.log_path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(PrivateServerError::io(format!(
                "cannot open {}",
                log_path.display()
            )))?;
        let log_too = log
            .try_clone()
            .map_err(PrivateServerError::io("cannot share the redis log"))?;
        let port = self.port.to_string();
        let dir = self.dir.to_string_lossy().into_owned();
        let args = [
            "--port",
            port.as_str(),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            dir.as_str(),
        ];
        let command = command_line(program, &args);
        // The server binds the port itself: let go of it just before.
        self.reservation = None;
        let child = std::process::Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_too)
            .spawn()
            .map_err(|source| PrivateServerError::Spawn {
                command: command.clone(),
                source,
            })?;
        let pid = child.id();
        self.child = Some(child);
        // For the clean-up of a test process killed before this guard dropped.
        let _ = std::fs::write(self.dir.join("redis.pid"), pid.to_string());
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    self.reservation = reserve_port(self.port).ok();
                    return Err(PrivateServerError::Failed {
                        command,
                        status: status.to_string(),
                        output: file_tail(&log_path),
                    });
                }
            }
            if answers_ping(self.port).await {
                return Ok(());
            }
            if started.elapsed() >= READY_TIMEOUT {
                return Err(PrivateServerError::Timeout {
                    what: format!("{command} answering PING"),
                    after: READY_TIMEOUT,
                    output: file_tail(&log_path),
                });
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            // Reaping a killed process takes moments.
            let _ = child.wait();
        }
        remove_dir(&self.dir);
    }
}

/// Whether a Redis answers `PING` on `127.0.0.1:port` within half a second.
async fn answers_ping(port: u16) -> bool {
    let ping = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut reply = [0u8; 16];
        let n = stream.read(&mut reply).await.ok()?;
        reply[..n].starts_with(b"+PONG").then_some(())
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), ping).await,
        Ok(Some(()))
    )
}

/// Kills the `redis-server` a gone test process left running in `dir`.
fn kill_stale_redis(dir: &Path) {
    let Some(pid) = std::fs::read_to_string(dir.join("redis.pid"))
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
    else {
        return;
    };
    let is_redis = std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("redis-server"));
    if is_redis {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// A throw-away Postgres cluster of the test's own: `initdb` into a temporary directory (trust
/// authentication, superuser `postgres`), served on a free `127.0.0.1` port with `fsync=off`
/// (committed data survives the server's crash, though not the machine's).
/// Dropping it stops the server and deletes the directory.
///
/// Unlike [`PrivateRedis`] it keeps its data across [`stop`](Self::stop) and
/// [`start_again`](Self::start_again) (an immediate stop is a crash; the server recovers at
/// start).
#[derive(Debug)]
pub struct PrivatePostgres {
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
    /// Whether commands run as the `postgres` account (the tests run as root).
    as_postgres: bool,
    running: bool,
    reservation: Option<TcpSocket>,
}

impl PrivatePostgres {
    /// Creates the cluster and starts it (`initdb`, then `pg_ctl start -w`, each bounded in
    /// time). `initdb` and `pg_ctl` are found on `PATH`, else in the newest
    /// `/usr/lib/postgresql/*/bin`. Call it within a Tokio runtime.
    pub async fn start() -> Result<Self, PrivateServerError> {
        let bin = find_postgres_bin()?;
        let owner = if running_as_root().await {
            Some(account_ids(POSTGRES_ACCOUNT).await?)
        } else {
            None
        };
        let as_postgres = owner.is_some();
        remove_stale_dirs("pg", |dir| stop_stale_postgres(&bin, as_postgres, dir));
        let dir = make_server_dir("pg")?;
        let (port, reservation) = match reserve_free_port() {
            Ok(reserved) => reserved,
            Err(err) => {
                remove_dir(&dir);
                return Err(err);
            }
        };
        // From here on, dropping the guard cleans up.
        let mut pg = Self {
            port,
            dir,
            bin,
            as_postgres,
            running: false,
            reservation: Some(reservation),
        };
        std::fs::create_dir(pg.socket_dir()).map_err(PrivateServerError::io(format!(
            "cannot create {}",
            pg.socket_dir().display()
        )))?;
        if let Some((uid, gid)) = owner {
            for path in [pg.dir.clone(), pg.socket_dir()] {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(
                    PrivateServerError::io(format!(
                        "cannot give {} to {POSTGRES_ACCOUNT}",
                        path.display()
                    )),
                )?;
            }
        }
        let data = pg.data_dir().to_string_lossy().into_owned();
        pg.run(
            "initdb",
            &[
                "-D",
                data.as_str(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            INITDB_TIMEOUT,
        )
        .await?;
        pg.start_again().await?;
        Ok(pg)
    }

    /// Its URL, `postgresql://postgres@127.0.0.1:<port>/postgres`, which
    /// [`DataConfig::with_database_url`](crate::DataConfig::with_database_url) and
    /// [`ensure_database`](crate::ensure_database) take; another database of the cluster
    /// is [`with_database_name`](super::with_database_name)`(&pg.url(), name)`.
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its directory (the cluster in `data/`, the server's log `postgres.log`), deleted when the
    /// guard is dropped.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the server was started and not stopped since.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`: connections are cut, as in a crash)
    /// and waits (at most 10 s) until it is gone; the port stays reserved for
    /// [`start_again`](Self::start_again), and connections to it are refused meanwhile. Does
    /// nothing when it is stopped already.
    pub async fn stop(&mut self) -> Result<(), PrivateServerError> {
        if self.running {
            let data = self.data_dir().to_string_lossy().into_owned();
            let seconds = STOP_TIMEOUT.as_secs().to_string();
            self.run(
                "pg_ctl",
                &[
                    "-D",
                    data.as_str(),
                    "stop",
                    "-m",
                    "immediate",
                    "-w",
                    "-t",
                    seconds.as_str(),
                ],
                STOP_TIMEOUT + Duration::from_secs(5),
            )
            .await?;
            self.running = false;
        }
        if self.reservation.is_none() {
            self.reservation = reserve_port(self.port).ok();
        }
        Ok(())
    }

    /// Starts the server (again) on the same port, with the data it had, and waits (at most
    /// 30 s) until it accepts connections. Does nothing when it runs.
    pub async fn start_again(&mut self) -> Result<(), PrivateServerError> {
        if self.running {
            return Ok(());
        }
        let data = self.data_dir().to_string_lossy().into_owned();
        let log = self.log_path().to_string_lossy().into_owned();
        // pg_ctl hands these to a shell: quote the path.
        let options = format!(
            "-p {} -k '{}' -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
            self.port,
            self.socket_dir().display()
        );
        let seconds = READY_TIMEOUT.as_secs().to_string();
        // The server binds the port itself: let go of it just before.
        self.reservation = None;
        let started = self
            .run(
                "pg_ctl",
                &[
                    "-D",
                    data.as_str(),
                    "-o",
                    options.as_str(),
                    "-l",
                    log.as_str(),
                    "start",
                    "-w",
                    "-t",
                    seconds.as_str(),
                ],
                READY_TIMEOUT + Duration::from_secs(5),
            )
            .await;
        match started {
            Ok(()) => {
                self.running = true;
                Ok(())
            }
            Err(err) => {
                self.reservation = reserve_port(self.port).ok();
                Err(with_log(err, &self.log_path()))
            }
        }
    }

    /// [`stop`](Self::stop), then [`start_again`](Self::start_again): same port, same data.
    pub async fn restart(&mut self) -> Result<(), PrivateServerError> {
        self.stop().await?;
        self.start_again().await
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.join("socket")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// Runs `program` of the Postgres binaries with `args` (as the `postgres` account when the
    /// tests run as root), killing it after `timeout`.
    async fn run(
        &self,
        program: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<(), PrivateServerError> {
        let (executable, all_args) = postgres_command(&self.bin, self.as_postgres, program, args);
        let command = command_line(&executable, &all_args);
        let mut child = tokio::process::Command::new(&executable);
        child
            .args(&all_args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        run_bounded(child, command, timeout).await
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        stop_stale_postgres(&self.bin, self.as_postgres, &self.dir);
        remove_dir(&self.dir);
    }
}

/// Stops (immediately) the server whose cluster is in `dir/data`, if one runs there; bounded by
/// `pg_ctl -t`.
fn stop_stale_postgres(bin: &Path, as_postgres: bool, dir: &Path) {
    let data = dir.join("data");
    if !data.join("postmaster.pid").exists() {
        return;
    }
    let data = data.to_string_lossy().into_owned();
    let seconds = STOP_TIMEOUT.as_secs().to_string();
    let (executable, args) = postgres_command(
        bin,
        as_postgres,
        "pg_ctl",
        &[
            "-D",
            data.as_str(),
            "stop",
            "-m",
            "immediate",
            "-w",
            "-t",
            seconds.as_str(),
        ],
    );
    let stopped = std::process::Command::new(&executable)
        .args(&args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output();
    match stopped {
        Ok(output) if output.status.success() => {}
        Ok(output) => eprintln!(
            "private postgres in {} not stopped: {}",
            dir.display(),
            tail(&String::from_utf8_lossy(&output.stderr))
        ),
        Err(err) => eprintln!("private postgres in {} not stopped: {err}", dir.display()),
    }
}

/// The executable and arguments that run `program` of `bin` with `args`, through
/// `runuser -u postgres --` when `as_postgres`.
fn postgres_command(
    bin: &Path,
    as_postgres: bool,
    program: &str,
    args: &[&str],
) -> (PathBuf, Vec<String>) {
    let program = bin.join(program);
    let args = args.iter().map(|arg| (*arg).to_owned());
    if as_postgres {
        let mut all = vec![
            "-u".to_owned(),
            POSTGRES_ACCOUNT.to_owned(),
            "--".to_owned(),
            program.to_string_lossy().into_owned(),
        ];
        all.extend(args);
        (PathBuf::from("runuser"), all)
    } else {
        (program, args.collect())
    }
}

/// The directory holding `initdb` and `pg_ctl`: that of `initdb` on `PATH` (when `pg_ctl` is
/// beside it), else the newest `/usr/lib/postgresql/<version>/bin`.
fn find_postgres_bin() -> Result<PathBuf, PrivateServerError> {
    let beside_pg_ctl = |dir: &Path| dir.join("pg_ctl").is_file();
    if let Some(initdb) = find_on_path("initdb") {
        // Follow a link (/usr/local/bin/initdb → /usr/lib/postgresql/15/bin/initdb).
        let initdb = std::fs::canonicalize(&initdb).unwrap_or(initdb);
        if let Some(dir) = initdb.parent().filter(|dir| beside_pg_ctl(dir)) {
            return Ok(dir.to_path_buf());
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(POSTGRES_LIB_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").is_file() && beside_pg_ctl(&bin)).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or(PrivateServerError::NotFound {
            program: "initdb and pg_ctl",
            also: format!(" and in {POSTGRES_LIB_DIR}/*/bin"),
        })
}

/// Whether this process runs as root: the owner of `/proc/self` is the effective uid (asked of
/// `id -u` when `/proc` is not there).
async fn running_as_root() -> bool {
    if let Ok(metadata) = std::fs::metadata("/proc/self") {
        return metadata.uid() == 0;
    }
    id_of(&["-u"]).await.is_ok_and(|uid| uid == 0)
}

/// The uid and gid of `account` (`id -u account`, `id -g account`).
async fn account_ids(account: &str) -> Result<(u32, u32), PrivateServerError> {
    Ok((
        id_of(&["-u", account]).await?,
        id_of(&["-g", account]).await?,
    ))
}

/// The number `id <args>` prints.
async fn id_of(args: &[&str]) -> Result<u32, PrivateServerError> {
    let command = command_line(Path::new("id"), args);
    let mut id = tokio::process::Command::new("id");
    id.args(args).stdin(Stdio::null()).kill_on_drop(true);
    let output = tokio::time::timeout(HELPER_TIMEOUT, id.output())
        .await
        .map_err(|_| PrivateServerError::Timeout {
            what: command.clone(),
            after: HELPER_TIMEOUT,
            output: String::new(),
        })?
        .map_err(|source| PrivateServerError::Spawn {
            command: command.clone(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout.trim().parse::<u32>() {
        Ok(id) if output.status.success() => Ok(id),
        _ => Err(PrivateServerError::Failed {
            command,
            status: output.status.to_string(),
            output: tail(&String::from_utf8_lossy(&output.stderr)),
        }),
    }
}

/// Runs `child` to its end with its output captured, killing it after `timeout`; a failure
/// quotes the end of its output.
async fn run_bounded(
    mut child: tokio::process::Command,
    command: String,
    timeout: Duration,
) -> Result<(), PrivateServerError> {
    child.stdout(Stdio::piped()).stderr(Stdio::piped());
    // Dropping the future on timeout drops the child, which kills it (`kill_on_drop`).
    let output = tokio::time::timeout(timeout, child.output())
        .await
        .map_err(|_| PrivateServerError::Timeout {
            what: command.clone(),
            after: timeout,
            output: String::new(),
        })?
        .map_err(|source| PrivateServerError::Spawn {
            command: command.clone(),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
    if text.trim().is_empty() {
        text = String::from_utf8_lossy(&output.stdout).into_owned();
    }
    Err(PrivateServerError::Failed {
        command,
        status: output.status.to_string(),
        output: tail(&text),
    })
}

/// `err` with the end of the server log at `log` added to its output.
fn with_log(err: PrivateServerError, log: &Path) -> PrivateServerError {
    let log_tail = file_tail(log);
    if log_tail.is_empty() {
        return err;
    }
    match err {
        PrivateServerError::Failed {
            command,
            status,
            output,
        } => PrivateServerError::Failed {
            command,
            status,
            output: format!("{output} | server log: {log_tail}"),
        },
        PrivateServerError::Timeout { what, after, .. } => PrivateServerError::Timeout {
            what,
            after,
            output: format!("server log: {log_tail}"),
        },
        other => other,
    }
}

/// Polls `child` until it exits, for at most `timeout`.
async fn wait_for_exit(
    child: &mut std::process::Child,
    what: &str,
    timeout: Duration,
) -> Result<(), PrivateServerError> {
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return Ok(()),
            Ok(None) if started.elapsed() < timeout => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(None) => {
                return Err(PrivateServerError::Timeout {
                    what: format!("{what} exiting"),
                    after: timeout,
                    output: String::new(),
                })
            }
            Err(source) => {
                return Err(PrivateServerError::Io {
                    context: format!("waiting for {what} to exit"),
                    source,
                })
            }
        }
    }
}

/// A socket bound to `127.0.0.1:port` that does not listen: it holds the port (see the
/// [module](self)) without accepting connections. Without `SO_REUSEADDR` when it can (then no
/// other socket may bind the port); with it when connections of the stopped server linger in
/// `TIME_WAIT` on the port (then a server binding with `SO_REUSEADDR` too could still take it,
/// but the kernel no longer picks it as a connection's local port).
fn reserve_port(port: u16) -> Result<TcpSocket, PrivateServerError> {
    let bind = |reuse: bool| -> std::io::Result<TcpSocket> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(reuse)?;
        socket.bind(([127, 0, 0, 1], port).into())?;
        Ok(socket)
    };
    bind(false)
        .or_else(|_| bind(true))
        .map_err(PrivateServerError::io(format!(
            "cannot reserve port {port}"
        )))
}

/// A free loopback port, held by [`reserve_port`]'s kind of socket.
fn reserve_free_port() -> Result<(u16, TcpSocket), PrivateServerError> {
    let socket = reserve_port(0)?;
    let port = socket
        .local_addr()
        .map_err(PrivateServerError::io("cannot read the reserved port"))?
        .port();
    Ok((port, socket))
}

/// A new empty directory `protomesh-<kind>-<pid>-<n>-<random>` in the temporary directory.
fn make_server_dir(kind: &str) -> Result<PathBuf, PrivateServerError> {
    let dir = std::env::temp_dir().join(format!(
        "{}{}-{}-{:08x}",
        dir_prefix(kind),
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    ));
    std::fs::create_dir(&dir).map_err(PrivateServerError::io(format!(
        "cannot create {}",
        dir.display()
    )))?;
    Ok(dir)
}

fn dir_prefix(kind: &str) -> String {
    format!("protomesh-{kind}-")
}

/// Stops (with `stop`) the servers that test processes no longer running left in their
/// directories, and deletes those directories.
fn remove_stale_dirs(kind: &str, stop: impl Fn(&Path)) {
    let prefix = dir_prefix(kind);
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        stop(&entry.path());
        remove_dir(&entry.path());
    }
}

fn remove_dir(dir: &Path) {
    if let Err(err) = std::fs::remove_dir_all(dir) {
        if err.kind() != std::io::ErrorKind::NotFound {
            eprintln!("{} not removed: {err}", dir.display());
        }
    }
}

/// The first `name` on `PATH` that is a file.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `program args…` for messages, with empty arguments shown as `""`.
fn command_line<S: AsRef<str>>(program: &Path, args: &[S]) -> String {
    let mut line = program.display().to_string();
    for arg in args {
        let arg = arg.as_ref();
        line.push(' ');
        if arg.is_empty() {
            line.push_str("\"\"");
        } else {
            line.push_str(arg);
        }
    }
    line
}

/// The last [`TAIL_CHARS`] characters of `text`, trimmed.
fn tail(text: &str) -> String {
    let text = text.trim();
    let skip = text.chars().count().saturating_sub(TAIL_CHARS);
    text.chars().skip(skip).collect()
}

/// The end of the file at `path` (empty when it cannot be read).
fn file_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    tail(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_show_empty_arguments() {
        assert_eq!(
            command_line(Path::new("redis-server"), &["--save", "", "--port", "1"]),
            "redis-server --save \"\" --port 1"
        );
    }

    #[test]
    fn tails_keep_the_end() {
        let long = format!("{}end", "x".repeat(TAIL_CHARS * 2));
        let kept = tail(&long);
        assert_eq!(kept.chars().count(), TAIL_CHARS);
        assert!(kept.ends_with("end"));
        assert_eq!(tail("  short \n"), "short");
    }

    #[test]
    fn postgres_commands_run_as_postgres_when_asked() {
        let (program, args) = postgres_command(Path::new("/pg/bin"), true, "initdb", &["-D", "d"]);
        assert_eq!(program, PathBuf::from("runuser"));
        assert_eq!(args, ["-u", "postgres", "--", "/pg/bin/initdb", "-D", "d"]);
        let (program, args) = postgres_command(Path::new("/pg/bin"), false, "pg_ctl", &["stop"]);
        assert_eq!(program, PathBuf::from("/pg/bin/pg_ctl"));
        assert_eq!(args, ["stop"]);
    }

    #[tokio::test]
    async fn a_reserved_port_refuses_connections_and_stays_taken() {
        let (port, _reservation) = reserve_free_port().unwrap();
        assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_err());
    }
}
