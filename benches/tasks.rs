//! The tasks service under load, over gRPC through the mesh client: `GetTask` served from the
//! Redis cache and straight from Postgres, `CreateTask` (a row, its outbox event, a priority call
//! through the mesh), and `ListTasks` pages of 50. The `tasks` and `priority` release binaries
//! run as separate processes registered in a Consul dev agent on free loopback ports, over a
//! throw-away database on the machine's Postgres and a key prefix of their own on its Redis
//! (both removed at the end). Each cell is a closed loop (N tokio tasks each calling in turn), a
//! warm-up and a measured window; it reports req/s, p50/p95/p99 latency, errors, and the CPU the
//! tasks process, Postgres, Redis and this process (the callers) used per call.
//!
//! The closed loop has no think time, so at 1,000 callers its latency is simply 1,000 ÷ throughput
//! (Little's law). The seed figures are about 1,000 callers *at a given rate*, so a second table
//! runs open-loop paced cells: 1,000 callers each sending on a fixed schedule (`BENCH_PACED_READS`
//! reads/s in all, default 12,000; `BENCH_PACED_CREATES` creates/s, default 1,000), latency counted
//! from each call's scheduled send time, so a server that falls behind is charged for the wait
//! (no coordinated omission).
//!
//! The uncached cells run against a second tasks instance started with `--cache-ttl 0s` after the
//! first one stopped, so both phases go through the same discovery path.
//!
//! `cargo bench --bench tasks`. Settings from the environment: `BENCH_SECS` (measured window per
//! cell, default 3), `BENCH_WARMUP_SECS` (default 1), `BENCH_CONCURRENCY` (default `64,512,1000`),
//! `BENCH_SEED_TASKS` (tasks created before measuring, default 2000). Quick smoke run:
//! `BENCH_SECS=0.3 BENCH_WARMUP_SECS=0.2 BENCH_CONCURRENCY=8 cargo bench --bench tasks`.
//!
//! Seed figures from the issue (2-core machine, 1,000 concurrent callers): p95 `GetTask` ≤ 12 ms,
//! p95 `CreateTask` ≤ 25 ms, ≥ 12,000 cached reads/s.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use protomesh::client::Mesh;
use protomesh::consul::ConsulClient;
use protomesh_data::testing::{redis_url, TestDatabase, TestKeys};
use protomesh_tasks::proto::protomesh::tasks::v1::tasks_service_client::TasksServiceClient;
use protomesh_tasks::proto::protomesh::tasks::v1::{
    CreateProjectRequest, CreateTaskRequest, GetTaskRequest, ListTasksRequest, Project, Task,
};
use tokio::time::Instant;

mod support;

use support::{
    closed_loop, cpu_ticks, env_u64, histogram, machine, machine_busy_ticks, pid_ticks,
    print_errors, release_binaries, spawn_priority, start_consul, test_secret_file, verdict,
    wait_passing, Children, Load, Score, Tally, PRIORITY, STRAGGLER_TIMEOUT,
};

/// The package and binary of the tasks service.
const TASKS: (&str, &str) = ("protomesh-tasks", "tasks");
/// The default concurrencies: the 64 and 512, and the seed figures' 1,000.
const DEFAULT_CONCURRENCY: &str = "64,512,1000";
/// Callers of the open-loop cells.
const PACED_CALLERS: usize = 1_000;
/// The page size of the ListTasks cells.
const PAGE_SIZE: i32 = 50;

/// What one cell calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// GetTask of a seeded task, round robin.
    GetTask,
    /// CreateTask in the bench project.
    CreateTask,
    /// ListTasks of the bench project, first page of 50.
    ListTasks,
}

/// A worker's client: the mesh channel to `tasks` and what to ask.
#[derive(Clone)]
struct TasksCaller {
    client: TasksServiceClient<
        tonic::service::interceptor::InterceptedService<
            protomesh::client::MeshChannel,
            protomesh::auth::testing::SignedIn,
        >,
    >,
    call: Call,
    project_id: String,
    task_ids: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
}

impl Score for TasksCaller {
    async fn score(&mut self) -> Result<(), String> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        match self.call {
            Call::GetTask => {
                let id = self.task_ids[n % self.task_ids.len()].clone();
                let task = self
                    .client
                    .get_task(GetTaskRequest { id: id.clone() })
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                    .into_inner();
                (task.id == id)
                    .then_some(())
                    .ok_or_else(|| format!("asked {id}, got {}", task.id))
            }
            Call::CreateTask => {
                let task = self
                    .client
                    .create_task(create_request(&self.project_id, n))
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                    .into_inner();
                (task.priority_score > 0 && !task.id.is_empty())
                    .then_some(())
                    .ok_or_else(|| format!("incomplete task {task:?}"))
            }
            Call::ListTasks => {
                let page = self
                    .client
                    .list_tasks(ListTasksRequest {
                        project_id: self.project_id.clone(),
                        page_size: PAGE_SIZE,
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                    .into_inner();
                (page.tasks.len() == PAGE_SIZE as usize)
                    .then_some(())
                    .ok_or_else(|| format!("a page of {} tasks", page.tasks.len()))
            }
        }
    }
}

/// The CreateTask request number `n`.
fn create_request(project_id: &str, n: usize) -> CreateTaskRequest {
    CreateTaskRequest {
        project_id: project_id.to_owned(),
        task: Some(Task {
            title: format!("bench task {n}"),
            urgency: (n % 10) as i32 + 1,
            impact: (n / 10 % 10) as i32 + 1,
            assignee: format!("user-{}", n % 50),
            ..Default::default()
        }),
    }
}

/// Starts a tasks process over `database` and `keys`, registering with the agent at `consul`.
fn spawn_tasks(
    binary: &std::path::Path,
    consul: &str,
    database: &str,
    prefix: &str,
    ttl: &str,
) -> Child {
    Command::new(binary)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--cache-ttl",
            ttl,
        ])
        .env("CONSUL_HTTP_ADDR", consul)
        .env("DATABASE_URL", database)
        .env("REDIS_URL", redis_url())
        .env("PROTOMESH_KEY_PREFIX", prefix)
        // Callers sign in with the test issuer's tokens (no users service in the benchmark).
        .env("PROTOMESH_JWT_SECRET_FILE", test_secret_file())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tasks starts")
}

/// The pids of the processes named `name` (`postgres`, `redis-server`).
fn pids_named(name: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let entry = entry.expect("/proc entry");
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            pids.push(pid);
        }
    }
    pids
}

/// CPU ticks of the processes named `name`, summed (those that end during the window are lost).
fn ticks_of(name: &str) -> u64 {
    pids_named(name).into_iter().map(pid_ticks).sum()
}

/// CPU readings at a window's edges: this process, tasks, Postgres, Redis, the machine.
#[derive(Debug, Clone, Copy)]
struct Readings {
    callers: u64,
    tasks: u64,
    postgres: u64,
    redis: u64,
    machine: u64,
}

impl Readings {
    fn now(tasks_pid: u32) -> Self {
        Self {
            callers: cpu_ticks("self"),
            tasks: pid_ticks(tasks_pid),
            postgres: ticks_of("postgres"),
            redis: ticks_of("redis-server"),
            machine: machine_busy_ticks(),
        }
    }

    fn since(self, before: Self) -> Self {
        Self {
            callers: self.callers.saturating_sub(before.callers),
            tasks: self.tasks.saturating_sub(before.tasks),
            postgres: self.postgres.saturating_sub(before.postgres),
            redis: self.redis.saturating_sub(before.redis),
            machine: self.machine.saturating_sub(before.machine),
        }
    }
}

/// One measured cell.
struct Cell {
    name: &'static str,
    concurrency: usize,
    tally: Tally,
    cpu: Readings,
}

async fn run_cell(
    name: &'static str,
    caller: TasksCaller,
    concurrency: usize,
    load: &Load,
    tasks_pid: u32,
) -> Cell {
    let (tally, cpu) = closed_loop(
        caller,
        concurrency,
        load,
        || Readings::now(tasks_pid),
        |before| Readings::now(tasks_pid).since(before),
    )
    .await;
    Cell {
        name,
        concurrency,
        tally,
        cpu,
    }
}

fn print_cells(cells: &[Cell]) {
    println!(
        "| call | conc | req/s | p50 ms | p95 ms | p99 ms | errors | tasks µs/call | postgres µs/call | redis µs/call | callers µs/call | machine cores |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for cell in cells {
        let t = &cell.tally;
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |",
            cell.name,
            cell.concurrency,
            t.rate(),
            t.quantile_us(0.50) / 1_000.0,
            t.quantile_us(0.95) / 1_000.0,
            t.quantile_us(0.99) / 1_000.0,
            t.errors,
            t.per_call_us(cell.cpu.tasks),
            t.per_call_us(cell.cpu.postgres),
            t.per_call_us(cell.cpu.redis),
            t.per_call_us(cell.cpu.callers),
            t.cores(cell.cpu.machine),
        );
    }
}

/// Runs `concurrency` callers, together sending `rate` calls per second on a fixed schedule, for
/// warm-up + window; latency is measured from each call's scheduled time.
async fn paced_cell(
    name: &'static str,
    caller: TasksCaller,
    concurrency: usize,
    rate: f64,
    load: &Load,
    tasks_pid: u32,
) -> Cell {
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + load.warmup;
    let until = measure_from + load.window;
    let interval = Duration::from_secs_f64(concurrency as f64 / rate);
    let workers: Vec<_> = (0..concurrency)
        .map(|n| {
            let mut caller = caller.clone();
            let offset = interval.mul_f64(n as f64 / concurrency as f64);
            tokio::spawn(async move {
                let mut tally = Tally {
                    latency: histogram(),
                    errors: 0,
                    first_error: None,
                    window: Duration::ZERO,
                };
                let mut scheduled = start + offset;
                while scheduled < until {
                    tokio::time::sleep_until(scheduled).await;
                    let outcome = caller.score().await;
                    let done = Instant::now();
                    if scheduled >= measure_from {
                        match outcome {
                            Ok(()) => {
                                let nanos = u64::try_from((done - scheduled).as_nanos())
                                    .unwrap_or(u64::MAX);
                                tally.latency.saturating_record(nanos.max(1));
                            }
                            Err(err) => {
                                tally.errors += 1;
                                tally.first_error.get_or_insert(err);
                            }
                        }
                    }
                    scheduled += interval;
                }
                tally
            })
        })
        .collect();
    tokio::time::sleep_until(measure_from).await;
    let before = Readings::now(tasks_pid);
    tokio::time::sleep_until(until).await;
    let cpu = Readings::now(tasks_pid).since(before);
    let mut tally = Tally {
        latency: histogram(),
        errors: 0,
        first_error: None,
        window: load.window,
    };
    for worker in workers {
        match tokio::time::timeout(STRAGGLER_TIMEOUT, worker).await {
            Ok(Ok(result)) => {
                tally.latency.add(&result.latency).expect("same bounds");
                tally.errors += result.errors;
                if tally.first_error.is_none() {
                    tally.first_error = result.first_error;
                }
            }
            _ => tally.errors += 1,
        }
    }
    Cell {
        name,
        concurrency,
        tally,
        cpu,
    }
}

/// The cell of `name` at the concurrency nearest 1,000.
fn at_thousand<'a>(cells: &'a [Cell], name: &str) -> Option<&'a Cell> {
    cells
        .iter()
        .filter(|c| c.name == name)
        .min_by_key(|c| c.concurrency.abs_diff(1_000))
}

#[tokio::main]
async fn main() {
    if std::env::var_os("BENCH_CONCURRENCY").is_none() {
        std::env::set_var("BENCH_CONCURRENCY", DEFAULT_CONCURRENCY);
    }
    let load = Load::from_env();
    let seed_tasks = env_u64("BENCH_SEED_TASKS", 2_000, "BENCH_SEED_TASKS is a count").max(64);
    let [tasks_bin, priority_bin] = release_binaries([TASKS, PRIORITY]);
    println!("# tasks service over the mesh client");
    println!("{}", machine());
    println!(
        "warm-up {:?}, window {:?}, seeded tasks {seed_tasks}",
        load.warmup, load.window
    );

    let (agent, consul) = start_consul().await;
    let consul_addr = agent.http_addr();
    let database = TestDatabase::create().await.expect("bench database");
    let keys = TestKeys::new();
    let mut children = Children::default();
    children.0.push(spawn_priority(&priority_bin, &consul_addr));
    children.0.push(spawn_tasks(
        &tasks_bin,
        &consul_addr,
        database.url(),
        keys.prefix(),
        "600s",
    ));
    wait_passing(&consul, "priority", 1).await;
    wait_passing(&consul, "tasks", 1).await;
    let cached_pid = children.0[1].id();

    let mesh = Mesh::from_consul(
        ConsulClient::new(consul.config().clone()).unwrap(),
        support::DESCRIPTORS,
    )
    .unwrap();
    let mut client = TasksServiceClient::with_interceptor(
        mesh.channel("tasks"),
        protomesh::auth::testing::SignedIn::as_user("bench", &["user"]),
    );
    let project: Project = client
        .create_project(CreateProjectRequest {
            project: Some(Project {
                name: "bench".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("project created")
        .into_inner();

    // Seed, 32 at a time.
    let started = Instant::now();
    let mut ids = Vec::with_capacity(seed_tasks as usize);
    let mut next = 0usize;
    while ids.len() < seed_tasks as usize {
        let batch: Vec<_> = (0..32)
            .take(seed_tasks as usize - ids.len())
            .map(|_| {
                next += 1;
                let mut client = client.clone();
                let request = create_request(&project.id, next);
                tokio::spawn(async move { client.create_task(request).await })
            })
            .collect();
        for created in batch {
            ids.push(created.await.unwrap().expect("seed task").into_inner().id);
        }
    }
    println!(
        "seeded {} tasks in {:.1} s",
        ids.len(),
        started.elapsed().as_secs_f64()
    );
    let task_ids = Arc::new(ids);
    let caller = |call| TasksCaller {
        client: client.clone(),
        call,
        project_id: project.id.clone(),
        task_ids: task_ids.clone(),
        next: Arc::new(AtomicUsize::new(0)),
    };

    let mut cells = Vec::new();
    for &concurrency in &load.concurrency {
        for (name, call) in [
            ("GetTask cached", Call::GetTask),
            ("CreateTask", Call::CreateTask),
            ("ListTasks page 50", Call::ListTasks),
        ] {
            cells.push(run_cell(name, caller(call), concurrency, &load, cached_pid).await);
        }
    }

    // Open loop: 1,000 callers at the seed figures' rates.
    let paced_reads = env_u64("BENCH_PACED_READS", 12_000, "BENCH_PACED_READS is calls/s") as f64;
    let paced_creates = env_u64(
        "BENCH_PACED_CREATES",
        1_000,
        "BENCH_PACED_CREATES is calls/s",
    ) as f64;
    let paced = vec![
        paced_cell(
            "GetTask cached",
            caller(Call::GetTask),
            PACED_CALLERS,
            paced_reads,
            &load,
            cached_pid,
        )
        .await,
        paced_cell(
            "CreateTask",
            caller(Call::CreateTask),
            PACED_CALLERS,
            paced_creates,
            &load,
            cached_pid,
        )
        .await,
    ];

    // The uncached phase: the cached instance stops (SIGTERM: it deregisters), an instance
    // without a read cache takes its place.
    let mut cached = children.0.remove(1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(cached.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let _ = cached.wait();
    children.0.push(spawn_tasks(
        &tasks_bin,
        &consul_addr,
        database.url(),
        keys.prefix(),
        "0s",
    ));
    let uncached_pid = children.0[1].id();
    wait_passing(&consul, "tasks", 1).await;
    for &concurrency in &load.concurrency {
        cells.push(
            run_cell(
                "GetTask uncached",
                caller(Call::GetTask),
                concurrency,
                &load,
                uncached_pid,
            )
            .await,
        );
    }
    cells.sort_by_key(|c| {
        let order = [
            "GetTask cached",
            "GetTask uncached",
            "CreateTask",
            "ListTasks page 50",
        ];
        (order.iter().position(|n| *n == c.name), c.concurrency)
    });

    println!();
    print_cells(&cells);
    print_errors(cells.iter().map(|c| (c.name, c.concurrency, &c.tally)));

    println!();
    println!(
        "Open loop: {PACED_CALLERS} callers, GetTask at {paced_reads:.0}/s, CreateTask at {paced_creates:.0}/s offered"
    );
    println!();
    print_cells(&paced);
    print_errors(paced.iter().map(|c| (c.name, c.concurrency, &c.tally)));

    println!();
    println!("| seed figure (1,000 callers) | measured | target | verdict |");
    println!("|---|---:|---:|---|");
    let get = &paced[0].tally;
    let create = &paced[1].tally;
    let get_p95 = get.quantile_us(0.95) / 1_000.0;
    let create_p95 = create.quantile_us(0.95) / 1_000.0;
    println!(
        "| p95 GetTask (cached), {paced_reads:.0}/s offered | {get_p95:.2} ms | ≤ 12 ms | {} |",
        verdict(get_p95 <= 12.0 && get.errors == 0)
    );
    println!(
        "| p95 CreateTask, {paced_creates:.0}/s offered | {create_p95:.2} ms | ≤ 25 ms | {} |",
        verdict(create_p95 <= 25.0 && create.errors == 0)
    );
    if let Some(cell) = at_thousand(&cells, "GetTask cached") {
        println!(
            "| cached reads/s, closed loop, conc {} | {:.0} | ≥ 12000 | {} |",
            cell.concurrency,
            cell.tally.rate(),
            verdict(cell.tally.rate() >= 12_000.0)
        );
    }
    if let (Some(cached), Some(uncached)) = (
        cells
            .iter()
            .find(|c| c.name == "GetTask cached" && c.concurrency == load.reference_concurrency()),
        cells.iter().find(|c| {
            c.name == "GetTask uncached" && c.concurrency == load.reference_concurrency()
        }),
    ) {
        println!(
            "\ncached ÷ uncached GetTask throughput at conc {}: {:.2}×",
            cached.concurrency,
            cached.tally.rate() / uncached.tally.rate()
        );
    }
    drop(children);
    drop(agent);
}
