//! The analytics service: read models of tasks and tracked time on Postgres (schema `analytics`),
//! built from the events of the Redis Streams `tasks` and `timetrack` by the consumer group
//! `analytics`, and two reports over them.
//!
//! | call | answers |
//! |---|---|
//! | `GetUserDashboard` | the user's tasks (assigned, not deleted): open and completed counts by level; time the user tracked today and this week (UTC, weeks start Monday 00:00) |
//! | `GetProjectReport` | the project's tasks (not deleted) by status and by level, completion rate (done ÷ all); time tracked on its tasks, in total and per user, most first |
//!
//! Who may call what: every call needs a signed-in caller (the server runtime answers
//! `UNAUTHENTICATED` without one); the caller comes from [`protomesh::identity::caller`].
//!
//! | call | a user | an admin |
//! |---|---|---|
//! | `GetUserDashboard` | their own: `user_id` `me` or their id ([`Identity::resolve_user`](protomesh::identity::Identity::resolve_user)); another user's id is `NOT_FOUND` | anyone's |
//! | `GetProjectReport` | projects they are a member of; others are `NOT_FOUND` ([`membership`]: the tasks service decides, asked with the caller's credential) | every project (the tasks service shows admins every project) |
//!
//! Events are applied by [`events::apply_event`] (idempotent, order-tolerant; see [`events`]);
//! the binary runs a [`StreamConsumer`](protomesh_data::stream::StreamConsumer) with
//! [`consumer_options`] next to the gRPC server. The figures are as fresh as the events applied:
//! a task or entry whose event has not arrived yet is not counted yet.
//!
//! Time of a running entry counts up to now. Time tracked on a task counts for the task's project
//! even after the task was deleted (the time was spent). Requests are checked first; a bad one is
//! `INVALID_ARGUMENT` naming the field (`user_id`, `project_id`), before the caller's rights are
//! looked at; a database that is down makes calls fail with `UNAVAILABLE` within `--db-timeout`,
//! a tasks service that cannot confirm a project within [`membership::CHECK_TIMEOUT`].
#![forbid(unsafe_code)]

/// Rust code generated from the service's protos by `build.rs` (`protomesh_build`), and
/// `FILE_DESCRIPTOR_SET`, their encoded descriptor set (served over reflection).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    ::protomesh::include_protos!();
}

pub mod events;
pub mod membership;
pub mod migrations;
pub mod validate;

use std::time::{Duration, SystemTime};

use crate::proto::protomesh::analytics::v1::{
    analytics_service_server::AnalyticsService, AssigneeTime, GetProjectReportRequest,
    GetUserDashboardRequest, LevelCount, ProjectReport, StatusCount, UserDashboard,
};
use crate::proto::protomesh::priority::v1::Level;
use crate::proto::protomesh::tasks::v1::TaskStatus;
use protomesh::client::Mesh;
use protomesh::identity;
use protomesh_data::db_error;
use protomesh_data::deadpool_postgres::{Object, Pool};
use protomesh_data::stream::ConsumerOptions;
use protomesh_data::tokio_postgres::IsolationLevel;
use tonic::{Request, Response, Status};

pub use crate::proto::protomesh::analytics::v1::analytics_service_server::AnalyticsServiceServer;
pub use events::{apply_event, Applied};
pub use migrations::MIGRATIONS;

/// The service's name in Consul, its Postgres schema, its migrations' name and its consumer
/// group.
pub const SERVICE: &str = "analytics";

/// The streams (under the key prefix) whose events build the read model.
pub const STREAMS: [&str; 2] = ["tasks", "timetrack"];

/// Longest pause between two looks for pending messages to claim.
pub const MAX_CLAIM_EVERY: Duration = Duration::from_secs(5);

/// Settings of this service's stream consumer: group [`SERVICE`] on [`STREAMS`] as `consumer`
/// (unique per process), claiming another consumer's pending messages once they are idle for
/// `claim_idle`, and looking for such messages every `claim_idle` (at most every
/// [`MAX_CLAIM_EVERY`]), so a dead consumer's messages are taken over within about twice
/// `claim_idle`.
pub fn consumer_options(consumer: impl Into<String>, claim_idle: Duration) -> ConsumerOptions {
    let mut options = ConsumerOptions::new(SERVICE, consumer, STREAMS);
    options.claim_idle = claim_idle;
    options.claim_every = claim_idle.min(MAX_CLAIM_EVERY);
    options
}

/// The counts of a dashboard by level: `(level, open, completed)` rows, in level order.
const DASHBOARD_LEVELS: &str = "SELECT level,
    count(*) FILTER (WHERE status <> 3),
    count(*) FILTER (WHERE status = 3)
FROM tasks
WHERE assignee = $1 AND NOT deleted
GROUP BY level
ORDER BY level";

/// Microseconds the user `$1` tracked today and this week as of `$2` (UTC days, ISO weeks from
/// Monday; a running entry up to `$2`).
const DASHBOARD_TRACKED: &str = "WITH period AS (
    SELECT $2::timestamptz AS now,
        date_trunc('day', $2::timestamptz AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS day_start,
        date_trunc('week', $2::timestamptz AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS week_start
)
SELECT
    coalesce(sum(overlap_micros(entries.started_at, coalesce(entries.stopped_at, period.now),
        period.day_start, period.day_start + interval '24 hours')), 0)::bigint,
    coalesce(sum(overlap_micros(entries.started_at, coalesce(entries.stopped_at, period.now),
        period.week_start, period.week_start + interval '168 hours')), 0)::bigint
FROM entries, period
WHERE entries.user_id = $1
    AND entries.started_at < period.week_start + interval '168 hours'
    AND (entries.stopped_at IS NULL OR entries.stopped_at > period.week_start)";

/// Whether project `$1` was ever seen: its `project.created`, or a task in it.
const PROJECT_SEEN: &str = "SELECT EXISTS (SELECT 1 FROM projects WHERE id = $1)
    OR EXISTS (SELECT 1 FROM tasks WHERE project_id = $1)";

/// `(status, count)` of the project's tasks, in status order.
const REPORT_BY_STATUS: &str = "SELECT status, count(*) FROM tasks
WHERE project_id = $1 AND NOT deleted
GROUP BY status
ORDER BY status";

/// `(level, count)` of the project's tasks, in level order.
const REPORT_BY_LEVEL: &str = "SELECT level, count(*) FROM tasks
WHERE project_id = $1 AND NOT deleted
GROUP BY level
ORDER BY level";

/// `(user_id, microseconds)` tracked on the project's tasks as of `$2`, most first. (The period
/// is all time: `overlap_micros` over (-infinity, infinity) is the entry's length.)
const REPORT_TRACKED: &str = "SELECT entries.user_id,
    sum(overlap_micros(entries.started_at, coalesce(entries.stopped_at, $2::timestamptz),
        '-infinity', 'infinity'))::bigint AS tracked
FROM entries JOIN tasks ON tasks.id = entries.task_id
WHERE tasks.project_id = $1
GROUP BY entries.user_id
ORDER BY tracked DESC, entries.user_id";

/// The gRPC handler of `protomesh.analytics.v1.AnalyticsService`. Cheap to clone.
#[derive(Clone)]
pub struct AnalyticsHandler {
    pool: Pool,
    mesh: Mesh,
}

impl std::fmt::Debug for AnalyticsHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnalyticsHandler").finish_non_exhaustive()
    }
}

/// A single violation as `INVALID_ARGUMENT`.
fn one_violation(violation: protomesh::status::FieldViolation) -> Status {
    protomesh::status::bad_request(vec![violation])
}

/// Microseconds as a proto `Duration` (a negative amount as zero).
fn duration_from_micros(micros: i64) -> prost_types::Duration {
    let micros = micros.max(0);
    prost_types::Duration {
        seconds: micros / 1_000_000,
        // Below 10^9, so it fits.
        nanos: i32::try_from((micros % 1_000_000) * 1_000).unwrap_or(0),
    }
}

/// The level of a `level` column (the table's check keeps it known).
fn level_from_db(value: i16) -> Level {
    Level::try_from(i32::from(value)).unwrap_or(Level::Unspecified)
}

/// The status of a `status` column (the table's check keeps it known).
fn status_from_db(value: i16) -> TaskStatus {
    TaskStatus::try_from(i32::from(value)).unwrap_or(TaskStatus::Unspecified)
}

impl AnalyticsHandler {
    /// A handler on `pool` (migrated with [`MIGRATIONS`]), asking the tasks service found
    /// through `mesh` who may see a project ([`membership`]).
    pub fn new(pool: Pool, mesh: Mesh) -> Self {
        Self { pool, mesh }
    }

    /// A connection from the pool (`UNAVAILABLE` within `--db-timeout` when the database is down).
    async fn connection(&self, what: &'static str) -> Result<Object, Status> {
        self.pool.get().await.map_err(db_error(what))
    }

    /// The dashboard of `user_id` as of `now` (what `GetUserDashboard` answers with the clock's
    /// time, once the caller may see it): checks the id, then reads the read model in one
    /// snapshot. Who asks is not looked at here.
    pub async fn user_dashboard_at(
        &self,
        user_id: &str,
        now: SystemTime,
    ) -> Result<UserDashboard, Status> {
        validate::user_id("user_id", user_id).map_err(one_violation)?;
        let what = "dashboard";
        let mut client = self.connection(what).await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db_error(what))?;
        let levels = tx
            .prepare_cached(DASHBOARD_LEVELS)
            .await
            .map_err(db_error(what))?;
        let rows = tx
            .query(&levels, &[&user_id])
            .await
            .map_err(db_error(what))?;
        let mut open_by_level = Vec::new();
        let mut completed_by_level = Vec::new();
        for row in &rows {
            let level = level_from_db(row.get(0)) as i32;
            let (open, completed): (i64, i64) = (row.get(1), row.get(2));
            if open > 0 {
                open_by_level.push(LevelCount { level, count: open });
            }
            if completed > 0 {
                completed_by_level.push(LevelCount {
                    level,
                    count: completed,
                });
            }
        }
        let tracked = tx
            .prepare_cached(DASHBOARD_TRACKED)
            .await
            .map_err(db_error(what))?;
        let row = tx
            .query_one(&tracked, &[&user_id, &now])
            .await
            .map_err(db_error(what))?;
        let (today, week): (i64, i64) = (row.get(0), row.get(1));
        tx.commit().await.map_err(db_error(what))?;
        Ok(UserDashboard {
            user_id: user_id.to_owned(),
            open_by_level,
            completed_by_level,
            tracked_today: Some(duration_from_micros(today)),
            tracked_this_week: Some(duration_from_micros(week)),
        })
    }

    /// The report of `project_id` as of `now` (what `GetProjectReport` answers with the clock's
    /// time, once the tasks service confirmed the caller may see the project): checks the id,
    /// then reads the read model in one snapshot; `NOT_FOUND` for a project never seen in an
    /// event. Who asks is not looked at here.
    pub async fn project_report_at(
        &self,
        project_id: &str,
        now: SystemTime,
    ) -> Result<ProjectReport, Status> {
        let id = validate::uuid("project_id", project_id).map_err(one_violation)?;
        let what = "report";
        let mut client = self.connection(what).await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db_error(what))?;
        let seen = tx
            .prepare_cached(PROJECT_SEEN)
            .await
            .map_err(db_error(what))?;
        let seen: bool = tx
            .query_one(&seen, &[&id])
            .await
            .map_err(db_error(what))?
            .get(0);
        if !seen {
            return Err(Status::not_found(format!("project {id} not found")));
        }

        let by_status = tx
            .prepare_cached(REPORT_BY_STATUS)
            .await
            .map_err(db_error(what))?;
        let rows = tx.query(&by_status, &[&id]).await.map_err(db_error(what))?;
        let (mut done, mut all) = (0_i64, 0_i64);
        let by_status: Vec<StatusCount> = rows
            .iter()
            .map(|row| {
                let status = status_from_db(row.get(0));
                let count: i64 = row.get(1);
                all += count;
                if status == TaskStatus::Done {
                    done += count;
                }
                StatusCount {
                    status: status.as_str_name().to_owned(),
                    count,
                }
            })
            .collect();

        let by_level = tx
            .prepare_cached(REPORT_BY_LEVEL)
            .await
            .map_err(db_error(what))?;
        let by_level: Vec<LevelCount> = tx
            .query(&by_level, &[&id])
            .await
            .map_err(db_error(what))?
            .iter()
            .map(|row| LevelCount {
                level: level_from_db(row.get(0)) as i32,
                count: row.get(1),
            })
            .collect();

        let tracked = tx
            .prepare_cached(REPORT_TRACKED)
            .await
            .map_err(db_error(what))?;
        let rows = tx
            .query(&tracked, &[&id, &now])
            .await
            .map_err(db_error(what))?;
        tx.commit().await.map_err(db_error(what))?;
        let mut tracked_total = 0_i64;
        let tracked_by_assignee = rows
            .iter()
            .map(|row| {
                let micros: i64 = row.get(1);
                tracked_total = tracked_total.saturating_add(micros);
                AssigneeTime {
                    assignee: row.get(0),
                    tracked: Some(duration_from_micros(micros)),
                }
            })
            .collect();

        Ok(ProjectReport {
            project_id: id.to_string(),
            by_status,
            by_level,
            tracked_total: Some(duration_from_micros(tracked_total)),
            tracked_by_assignee,
            // Counts of tasks are far below 2^52: exact as f64.
            completion_rate: if all == 0 {
                0.0
            } else {
                done as f64 / all as f64
            },
        })
    }
}

#[tonic::async_trait]
impl AnalyticsService for AnalyticsHandler {
    async fn get_user_dashboard(
        &self,
        request: Request<GetUserDashboardRequest>,
    ) -> Result<Response<UserDashboard>, Status> {
        let caller = identity::caller(request.metadata())?;
        let requested = &request.get_ref().user_id;
        let user_id = caller.resolve_user("user_id", requested)?;
        self.user_dashboard_at(&user_id, SystemTime::now())
            .await
            .map(Response::new)
    }

    async fn get_project_report(
        &self,
        request: Request<GetProjectReportRequest>,
    ) -> Result<Response<ProjectReport>, Status> {
        // A verified caller is what the tasks service is asked about.
        identity::caller(request.metadata())?;
        let project_id = &request.get_ref().project_id;
        let id = validate::uuid("project_id", project_id).map_err(one_violation)?;
        membership::confirm_member(&self.mesh, id).await?;
        self.project_report_at(project_id, SystemTime::now())
            .await
            .map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_become_proto_durations() {
        assert_eq!(
            duration_from_micros(3_723_000_001),
            prost_types::Duration {
                seconds: 3_723,
                nanos: 1_000
            }
        );
        assert_eq!(duration_from_micros(0), prost_types::Duration::default());
        assert_eq!(duration_from_micros(-5), prost_types::Duration::default());
    }

    #[test]
    fn claims_are_looked_for_as_often_as_messages_may_idle() {
        let options = consumer_options("analytics-h-1", Duration::from_secs(1));
        assert_eq!(options.group, "analytics");
        assert_eq!(options.consumer, "analytics-h-1");
        assert_eq!(options.streams, vec!["tasks", "timetrack"]);
        assert_eq!(options.claim_idle, Duration::from_secs(1));
        assert_eq!(options.claim_every, Duration::from_secs(1));
        let options = consumer_options("c", Duration::from_secs(60));
        assert_eq!(options.claim_every, MAX_CLAIM_EVERY);
    }
}
