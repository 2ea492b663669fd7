//! The timetrack service: timers of users on tasks, on Postgres (schema `timetrack`), with
//! `time.*` events published through a transactional outbox to the Redis Stream `timetrack`.
//! A user has at most one running timer; the tasks service confirms, through the mesh, every task
//! a timer starts on ([`task_check`]).
//!
//! | call | reads / writes | events (stream `timetrack`) |
//! |---|---|---|
//! | `StartTimer` | task check; then, in one transaction under the user's lock: stop the running entry if any, insert the new one | `time.stopped` (if one ran), then `time.started` |
//! | `StopTimer` | in one transaction under the user's lock: stop the running entry (`FAILED_PRECONDITION` naming `user_id` when none runs) | `time.stopped` |
//! | `ListEntries` | entries of a user and/or a task overlapping `[from, to)`, newest first, cursor pages | |
//! | `GetTotals` | time per task and per user within `[from, to)`, computed in SQL | |
//!
//! Who may call what: every call needs a signed-in caller (the server runtime answers
//! `UNAUTHENTICATED` without one), and a timer and its entries belong to their user. The caller
//! comes from [`protomesh::identity::caller`]; `user_id` is resolved by
//! [`Identity::resolve_user`] (`me` or the caller's own id; admins may name anyone; another
//! user's id is `NOT_FOUND`, as for a user that does not exist).
//!
//! | call | a user | an admin |
//! |---|---|---|
//! | `StartTimer`, `StopTimer` | `user_id` `me` or their own id | anyone's `user_id` |
//! | `ListEntries` | their own entries only (`user_id` empty, `me` or their id; with `task_id`, their entries on that task) | as a user, or anyone's; empty `user_id` with a `task_id`: every user's entries on the task |
//! | `GetTotals` | totals over their own entries only (`per_user` holds them alone) | as a user, or anyone's; empty `user_id`: every user |
//!
//! The task check of `StartTimer` carries the caller's credential to the tasks service (the mesh
//! client forwards it), so the tasks service decides which tasks the caller sees: a task in a
//! project the caller is not a member of is `NOT_FOUND`, like one that does not exist.
//!
//! One running timer per user: `StartTimer` and `StopTimer` take a transaction-scoped advisory
//! lock on the user (`pg_advisory_xact_lock`) before they look for the running entry, so calls of
//! one user run one after the other and each sees what the one before committed; a partial
//! unique index (`entries_one_running_per_user`) enforces the rule in the database as well. The
//! stopped entry's `stopped_at` is the new entry's `started_at`, and a stop is never before its
//! start.
//!
//! Durations: a stopped entry reports stop − start, a running one the time so far (by the
//! database's clock at the read). `GetTotals` clips every entry to the period and counts running
//! entries up to now; totals are sorted by duration (longest first), then id.
//!
//! `ListEntries` pages by a cursor on `(started_at, id)`, newest first. Requests are checked
//! before anything else (ownership after the shape), and a bad one is `INVALID_ARGUMENT` naming
//! each field at fault (`user_id`, `task_id`, `note`, `from`, `to`, `page_size`, `page_token`).
//! Database errors go through [`db_error`] (the data layer's one rule): a database that is down
//! is `UNAVAILABLE` within `--db-timeout`.
#![forbid(unsafe_code)]

/// Rust code generated from the service's protos by `build.rs` (`protomesh_build`), and
/// `FILE_DESCRIPTOR_SET`, their encoded descriptor set (served over reflection).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    ::protomesh::include_protos!();
}

pub mod migrations;
pub mod model;
pub mod task_check;
pub mod validate;

use std::time::SystemTime;

use crate::proto::protomesh::timetrack::v1::{
    timetrack_service_server::TimetrackService, GetTotalsRequest, GetTotalsResponse,
    ListEntriesRequest, ListEntriesResponse, StartTimerRequest, StartTimerResponse,
    StopTimerRequest, TimeEntry, Total,
};
use protomesh::client::Mesh;
use protomesh::identity::{self, Identity};
use protomesh_data::deadpool_postgres::{Object, Pool, Transaction};
use protomesh_data::keyset::{self, PageQuery, TimeCursor};
use protomesh_data::page_token::{PageFilter, PageTokens};
use protomesh_data::tokio_postgres::types::ToSql;
use protomesh_data::{db_error, outbox};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use model::{duration_from_micros, entry_columns, EntryRecord};
use validate::Violations;

pub use crate::proto::protomesh::timetrack::v1::timetrack_service_server::TimetrackServiceServer;
pub use migrations::MIGRATIONS;

/// The service's name in Consul, its Postgres schema and its migrations' name.
pub const SERVICE: &str = "timetrack";

/// The Redis Stream (under the key prefix) the events go to.
pub const EVENT_STREAM: &str = "timetrack";

/// Event type of a timer that started (payload: the new entry).
pub const TIME_STARTED: &str = "time.started";

/// Event type of a timer that stopped (payload: the stopped entry).
pub const TIME_STOPPED: &str = "time.stopped";

/// Serializes the writes of one user: a transaction-scoped advisory lock on a 64-bit hash of the
/// user id (prefixed, so that it stays apart from other advisory locks of the database).
const LOCK_USER: &str =
    "SELECT pg_advisory_xact_lock(hashtextextended('protomesh.timetrack.user:' || $1, 0))";

/// Stops the running entry of user `$1`, if any, now (never before its start).
const STOP_RUNNING: &str = concat!(
    "UPDATE entries SET stopped_at = greatest(clock_timestamp(), started_at)
    WHERE user_id = $1 AND stopped_at IS NULL
    RETURNING ",
    entry_columns!()
);

/// A running entry starting at `$4`, or now when `$4` is NULL.
const INSERT_ENTRY: &str = concat!(
    "INSERT INTO entries (id, user_id, task_id, started_at, note)
    VALUES ($1, $2, $3, coalesce($4::timestamptz, clock_timestamp()), $5)
    RETURNING ",
    entry_columns!()
);

/// Totals over `[$1, $2)`; optional filters follow. Each entry counts from the later of its
/// start and `$1` to the earliest of its stop (now, while running) and `$2`; one row per task
/// (`per_task`) and one per user, longest first, then by id.
const TOTALS_HEAD: &str = "WITH spent AS (
    SELECT task_id, user_id,
        greatest(
            least(coalesce(stopped_at, now()), $2) - greatest(started_at, $1),
            interval '0'
        ) AS spent
    FROM entries
    WHERE started_at < $2 AND (stopped_at IS NULL OR stopped_at > $1)";

const TOTALS_TAIL: &str = ")
SELECT GROUPING(task_id) = 0 AS per_task,
    coalesce(task_id::text, user_id) AS id,
    sum((extract(epoch FROM spent) * 1000000)::bigint)::bigint AS micros
FROM spent
GROUP BY GROUPING SETS ((task_id), (user_id))
ORDER BY per_task DESC, micros DESC, id";

/// The gRPC handler of `protomesh.timetrack.v1.TimetrackService`. Cheap to clone.
#[derive(Clone)]
pub struct TimetrackHandler {
    pool: Pool,
    mesh: Mesh,
    page_tokens: PageTokens,
}

impl std::fmt::Debug for TimetrackHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimetrackHandler").finish_non_exhaustive()
    }
}

/// What a database error met while handling time entries names.
const WHAT: &str = "time entry";

/// The kind byte of the [`TimeCursor`] (`(started_at, id)` of the last entry of the page before)
/// in `ListEntries` page tokens.
const ENTRY_KIND: u8 = 1;

impl TimetrackHandler {
    /// A handler on `pool` (migrated with [`MIGRATIONS`]), confirming tasks with the tasks
    /// service found through `mesh`.
    /// Page tokens are signed with the key stored in the pool's schema (see
    /// [`TimetrackHandler::with_page_tokens`]).
    pub fn new(pool: Pool, mesh: Mesh) -> Self {
        Self {
            page_tokens: PageTokens::stored(pool.clone()),
            pool,
            mesh,
        }
    }

    /// The same handler signing and checking page tokens with `tokens`
    /// ([`protomesh_data::page_token`]).
    pub fn with_page_tokens(mut self, tokens: PageTokens) -> Self {
        self.page_tokens = tokens;
        self
    }

    /// A connection from the pool (`UNAVAILABLE` within `--db-timeout` when the database is down).
    async fn connection(&self) -> Result<Object, Status> {
        self.pool.get().await.map_err(db_error(WHAT))
    }
}

/// Takes the lock of `user_id` for the rest of `tx`.
async fn lock_user(tx: &Transaction<'_>, user_id: &str) -> Result<(), Status> {
    let statement = tx.prepare_cached(LOCK_USER).await.map_err(db_error(WHAT))?;
    tx.execute(&statement, &[&user_id])
        .await
        .map_err(db_error(WHAT))?;
    Ok(())
}

/// Stops the running entry of `user_id` inside `tx` and records its `time.stopped`; `None` when
/// no timer runs (nothing is written then).
async fn stop_running(tx: &Transaction<'_>, user_id: &str) -> Result<Option<EntryRecord>, Status> {
    let statement = tx
        .prepare_cached(STOP_RUNNING)
        .await
        .map_err(db_error(WHAT))?;
    let Some(row) = tx
        .query_opt(&statement, &[&user_id])
        .await
        .map_err(db_error(WHAT))?
    else {
        return Ok(None);
    };
    let stopped = EntryRecord::from_row(&row);
    record_event(tx, TIME_STOPPED, &stopped).await?;
    Ok(Some(stopped))
}

/// Records the event `event_type` of `entry` in the outbox of `tx`.
async fn record_event(
    tx: &Transaction<'_>,
    event_type: &str,
    entry: &EntryRecord,
) -> Result<(), Status> {
    outbox::insert(
        tx,
        EVENT_STREAM,
        event_type,
        &entry.id.to_string(),
        &entry.to_json(),
    )
    .await
    .map_err(db_error(WHAT))?;
    Ok(())
}

#[tonic::async_trait]
impl TimetrackService for TimetrackHandler {
    async fn start_timer(
        &self,
        request: Request<StartTimerRequest>,
    ) -> Result<Response<StartTimerResponse>, Status> {
        let caller = identity::caller(request.metadata())?;
        let request = request.into_inner();
        // user_id and note were checked against their declared rules already.
        let task_id = validate::uuid("task_id", &request.task_id).map_err(one_violation)?;
        let user_id = caller.resolve_user("user_id", &request.user_id)?;

        // Before any lock is taken: the call to tasks may take a while.
        task_check::confirm_task(&self.mesh, task_id).await?;

        let mut client = self.connection().await?;
        let tx = client.transaction().await.map_err(db_error(WHAT))?;
        lock_user(&tx, &user_id).await?;
        let stopped = stop_running(&tx, &user_id).await?;
        let id = Uuid::new_v4();
        let starts_at: Option<SystemTime> = stopped.as_ref().and_then(|entry| entry.stopped_at);
        let statement = tx
            .prepare_cached(INSERT_ENTRY)
            .await
            .map_err(db_error(WHAT))?;
        let row = tx
            .query_one(
                &statement,
                &[&id, &user_id, &task_id, &starts_at, &request.note],
            )
            .await
            .map_err(db_error(WHAT))?;
        let started = EntryRecord::from_row(&row);
        record_event(&tx, TIME_STARTED, &started).await?;
        tx.commit().await.map_err(db_error(WHAT))?;
        tracing::debug!(
            entry = %started.id,
            user = %started.user_id,
            task = %task_id,
            stopped = ?stopped.as_ref().map(|entry| entry.id),
            "timer started"
        );
        Ok(Response::new(StartTimerResponse {
            started: Some(started.to_proto()),
            stopped: stopped.as_ref().map(EntryRecord::to_proto),
        }))
    }

    async fn stop_timer(
        &self,
        request: Request<StopTimerRequest>,
    ) -> Result<Response<TimeEntry>, Status> {
        let caller = identity::caller(request.metadata())?;
        let requested = request.into_inner().user_id;
        let user_id = caller.resolve_user("user_id", &requested)?;

        let mut client = self.connection().await?;
        let tx = client.transaction().await.map_err(db_error(WHAT))?;
        lock_user(&tx, &user_id).await?;
        let Some(stopped) = stop_running(&tx, &user_id).await? else {
            return Err(Status::failed_precondition(format!(
                "user_id: user {user_id:?} has no running timer"
            )));
        };
        tx.commit().await.map_err(db_error(WHAT))?;
        tracing::debug!(entry = %stopped.id, user = %user_id, "timer stopped");
        Ok(Response::new(stopped.to_proto()))
    }

    async fn list_entries(
        &self,
        request: Request<ListEntriesRequest>,
    ) -> Result<Response<ListEntriesResponse>, Status> {
        let caller = identity::caller(request.metadata())?;
        let request = request.into_inner();
        let mut violations = Violations::new();
        let task_id = violations
            .check(validate::optional_uuid("task_id", &request.task_id))
            .flatten();
        // Only an admin's empty user_id means every user, which needs a task to narrow it.
        if caller.is_admin() && request.user_id.is_empty() && request.task_id.is_empty() {
            violations.add("user_id", "user_id or task_id is required");
        }
        let from = violations
            .check(validate::optional_timestamp("from", request.from.as_ref()))
            .flatten();
        let to = violations
            .check(validate::optional_timestamp("to", request.to.as_ref()))
            .flatten();
        violations.check(validate::period_order(from, to));
        let page_size = keyset::page_size(request.page_size);
        // The token is good only with the filters it was handed out with.
        let filter = PageFilter::new("timetrack.ListEntries")
            // A token is the caller's own: "me" means someone else for another caller.
            .field("caller", &caller.subject)
            .field("user_id", &request.user_id)
            .field(
                "task_id",
                task_id.map(|id| id.to_string()).unwrap_or_default(),
            )
            .field("from", timestamp_bytes(request.from.as_ref()))
            .field("to", timestamp_bytes(request.to.as_ref()));
        let after = keyset::open_cursor(
            &self.page_tokens,
            &filter,
            &mut violations,
            &request.page_token,
            |bytes| TimeCursor::from_bytes(ENTRY_KIND, bytes),
        )
        .await?;
        violations.into_result()?;
        let user_id = entries_owner(&caller, &request.user_id)?;

        let filters = EntryFilters {
            user_id,
            task_id,
            from,
            to,
            after,
            limit: keyset::limit_plus_one(page_size),
        };
        let (sql, params) = filters.query();
        let client = self.connection().await?;
        let statement = client.prepare_cached(&sql).await.map_err(db_error(WHAT))?;
        let rows = client
            .query(&statement, &params)
            .await
            .map_err(db_error(WHAT))?;
        let mut entries: Vec<EntryRecord> = rows.iter().map(EntryRecord::from_row).collect();
        let next_page_token = keyset::next_page_token(
            &self.page_tokens,
            &filter,
            &mut entries,
            page_size,
            |last| {
                TimeCursor {
                    time: last.started_at,
                    id: last.id,
                }
                .to_bytes(ENTRY_KIND)
            },
        )
        .await?;
        Ok(Response::new(ListEntriesResponse {
            entries: entries.iter().map(EntryRecord::to_proto).collect(),
            next_page_token,
        }))
    }

    async fn get_totals(
        &self,
        request: Request<GetTotalsRequest>,
    ) -> Result<Response<GetTotalsResponse>, Status> {
        let caller = identity::caller(request.metadata())?;
        let request = request.into_inner();
        let mut violations = Violations::new();
        let from = violations.check(validate::timestamp("from", request.from.as_ref()));
        let to = violations.check(validate::timestamp("to", request.to.as_ref()));
        if let (Some(from), Some(to)) = (from, to) {
            violations.check(validate::totals_period(from, to));
        }
        let task_id = violations
            .check(validate::optional_uuid("task_id", &request.task_id))
            .flatten();
        violations.into_result()?;
        let (Some(from), Some(to)) = (from, to) else {
            return Err(Status::internal("request check incomplete"));
        };
        let user_id = entries_owner(&caller, &request.user_id)?;

        let query = TotalsQuery {
            from,
            to,
            user_id,
            task_id,
        };
        let (sql, params) = query.query();
        let client = self.connection().await?;
        let statement = client.prepare_cached(&sql).await.map_err(db_error(WHAT))?;
        let rows = client
            .query(&statement, &params)
            .await
            .map_err(db_error(WHAT))?;
        let mut totals = GetTotalsResponse::default();
        for row in &rows {
            let per_task: bool = row.get(0);
            let total = Total {
                id: row.get(1),
                duration: Some(duration_from_micros(row.get(2))),
            };
            if per_task {
                totals.per_task.push(total);
            } else {
                totals.per_user.push(total);
            }
        }
        Ok(Response::new(totals))
    }
}

/// Whose entries a `ListEntries` or `GetTotals` call naming `requested` (its `user_id`) reads:
/// `None` (every user) only for an admin leaving it empty; otherwise the user
/// [`Identity::resolve_user`] gives (the caller, or anyone for an admin), and `NOT_FOUND` for
/// another user's id.
fn entries_owner(caller: &Identity, requested: &str) -> Result<Option<String>, Status> {
    if requested.is_empty() && caller.is_admin() {
        return Ok(None);
    }
    caller.resolve_user("user_id", requested).map(Some)
}

/// A single violation as `INVALID_ARGUMENT`.
fn one_violation(violation: protomesh::status::FieldViolation) -> Status {
    protomesh::status::bad_request(vec![violation])
}

/// A request's timestamp as filter bytes for a page token: empty when not given.
fn timestamp_bytes(timestamp: Option<&prost_types::Timestamp>) -> Vec<u8> {
    timestamp
        .map(|t| [t.seconds.to_be_bytes().as_slice(), &t.nanos.to_be_bytes()].concat())
        .unwrap_or_default()
}

/// The checked filters of a `ListEntries` call.
#[derive(Debug)]
struct EntryFilters {
    user_id: Option<String>,
    task_id: Option<Uuid>,
    from: Option<SystemTime>,
    to: Option<SystemTime>,
    after: Option<TimeCursor>,
    limit: i64,
}

impl EntryFilters {
    /// The statement and its parameters ([`PageQuery`]): only the filters given, newest first by
    /// `(started_at, id)`, after the cursor if any.
    ///
    /// An entry is in `[from, to)` when it starts before `to` and either still runs, stops after
    /// `from`, or starts at or after `from` (an entry of no length at `from` is in).
    fn query(&self) -> (String, Vec<&(dyn ToSql + Sync)>) {
        PageQuery::new(
            concat!("SELECT ", entry_columns!(), " FROM entries"),
            "started_at",
        )
        .filter(self.user_id.as_ref(), |n| format!("user_id = ${n}"))
        .filter(self.task_id.as_ref(), |n| format!("task_id = ${n}"))
        .filter(self.from.as_ref(), |n| {
            format!("(stopped_at IS NULL OR stopped_at > ${n} OR started_at >= ${n})")
        })
        .filter(self.to.as_ref(), |n| format!("started_at < ${n}"))
        .finish(self.after.as_ref(), &self.limit)
    }
}

/// The checked request of a `GetTotals` call.
#[derive(Debug)]
struct TotalsQuery {
    from: SystemTime,
    to: SystemTime,
    user_id: Option<String>,
    task_id: Option<Uuid>,
}

impl TotalsQuery {
    /// The statement and its parameters: the period is `$1`, `$2`; only the filters given
    /// appear in the SQL.
    fn query(&self) -> (String, Vec<&(dyn ToSql + Sync)>) {
        let mut sql = String::from(TOTALS_HEAD);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&self.from, &self.to];
        if let Some(user_id) = &self.user_id {
            params.push(user_id);
            sql.push_str(&format!(" AND user_id = ${}", params.len()));
        }
        if let Some(task_id) = &self.task_id {
            params.push(task_id);
            sql.push_str(&format!(" AND task_id = ${}", params.len()));
        }
        sql.push_str(TOTALS_TAIL);
        (sql, params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(subject: &str, roles: &[&str]) -> Identity {
        Identity {
            subject: subject.into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            method: identity::AuthMethod::Jwt,
        }
    }

    #[test]
    fn entries_are_the_caller_s_unless_an_admin_asks() {
        let alice = identity("alice", &["user"]);
        for own in ["", "me", "alice"] {
            assert_eq!(
                entries_owner(&alice, own).unwrap(),
                Some("alice".to_owned())
            );
        }
        let refused = entries_owner(&alice, "bob").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::NotFound);
        assert!(refused.message().starts_with("user_id: "), "{refused:?}");

        let admin = identity("root", &["admin"]);
        assert_eq!(entries_owner(&admin, "").unwrap(), None, "every user");
        assert_eq!(
            entries_owner(&admin, "me").unwrap(),
            Some("root".to_owned())
        );
        assert_eq!(
            entries_owner(&admin, "bob").unwrap(),
            Some("bob".to_owned())
        );
    }

    #[test]
    fn list_queries_have_only_the_filters_given() {
        let filters = EntryFilters {
            user_id: Some("ada".into()),
            task_id: None,
            from: None,
            to: None,
            after: None,
            limit: 51,
        };
        let (sql, params) = filters.query();
        assert!(
            sql.ends_with(
                "FROM entries WHERE user_id = $1 ORDER BY started_at DESC, id DESC LIMIT $2"
            ),
            "{sql}"
        );
        assert_eq!(params.len(), 2);

        let filters = EntryFilters {
            user_id: Some("ada".into()),
            task_id: Some(Uuid::nil()),
            from: Some(SystemTime::UNIX_EPOCH),
            to: Some(SystemTime::UNIX_EPOCH),
            after: Some(TimeCursor {
                time: SystemTime::UNIX_EPOCH,
                id: Uuid::nil(),
            }),
            limit: 51,
        };
        let (sql, params) = filters.query();
        assert!(
            sql.ends_with(
                "WHERE user_id = $1 AND task_id = $2 \
                 AND (stopped_at IS NULL OR stopped_at > $3 OR started_at >= $3) \
                 AND started_at < $4 AND (started_at, id) < ($5, $6) \
                 ORDER BY started_at DESC, id DESC LIMIT $7"
            ),
            "{sql}"
        );
        assert_eq!(params.len(), 7);
    }

    #[test]
    fn totals_queries_have_only_the_filters_given() {
        let query = TotalsQuery {
            from: SystemTime::UNIX_EPOCH,
            to: SystemTime::UNIX_EPOCH,
            user_id: None,
            task_id: None,
        };
        let (sql, params) = query.query();
        assert!(sql.contains("stopped_at > $1))"), "{sql}");
        assert_eq!(params.len(), 2);
        let query = TotalsQuery {
            user_id: Some("ada".into()),
            task_id: Some(Uuid::nil()),
            ..query
        };
        let (sql, params) = query.query();
        assert!(
            sql.contains("stopped_at > $1) AND user_id = $3 AND task_id = $4)"),
            "{sql}"
        );
        assert_eq!(params.len(), 4);
    }
}
