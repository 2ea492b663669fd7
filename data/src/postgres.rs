//! Postgres: the connection pool, the database and schema migrations run at start-up, and the
//! mapping of database errors to gRPC statuses.
//!
//! Statements go through the pool's per-connection statement cache
//! (`client.prepare_cached(sql)` / `tx.prepare_cached(sql)`), so each connection prepares a
//! statement once.

use std::error::Error as StdError;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::error::{DbError, SqlState};
use tokio_postgres::NoTls;
use tonic::{Code, Status};

use super::{DataConfig, DataError};

/// Key of the transaction-level advisory lock that serialises migrations of every service in a
/// database (`"protomsh"` in ASCII).
const MIGRATION_LOCK: i64 = 0x7072_6f74_6f6d_7368;

/// First key of the session-level advisory lock [`ensure_database`] holds while it creates a
/// database (the second is the database name's hash).
const CREATE_DATABASE_LOCK_CLASS: i32 = 0x7072_6d31;

/// Longest wait for that lock (another instance is creating the database).
const CREATE_DATABASE_LOCK_WAIT: Duration = Duration::from_secs(30);

/// The bookkeeping table of [`migrate`]: one row per applied step.
pub const SCHEMA_MIGRATIONS_DDL: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    service text NOT NULL,
    version bigint NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service, version)
)";

/// The Postgres settings of `config` (see [`DataConfig::pg_config`]).
pub(crate) fn pg_config(config: &DataConfig) -> Result<tokio_postgres::Config, DataError> {
    let mut pg: tokio_postgres::Config = config
        .database_url
        .parse()
        .map_err(DataError::DatabaseUrl)?;
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(config.db_timeout);
    }
    if let Some(schema) = config.db_schema.as_deref().filter(|s| !s.is_empty()) {
        if !is_plain_identifier(schema) {
            return Err(DataError::Schema(schema.to_owned()));
        }
        let search_path = format!("-c search_path={schema}");
        let options = match pg.get_options() {
            Some(existing) if !existing.trim().is_empty() => format!("{existing} {search_path}"),
            _ => search_path,
        };
        pg.options(&options);
    }
    if pg.get_application_name().is_none() {
        pg.application_name("protomesh");
    }
    Ok(pg)
}

/// A lower-case SQL identifier that needs no quoting: `[a-z_][a-z0-9_]*`, at most 63 bytes.
pub(crate) fn is_plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    first_ok
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `name` as a quoted SQL identifier (`"a""b"` for `a"b`).
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The connection pool of `config`: at most `--db-pool-size` connections, no TLS, statements
/// cached per connection, every wait (checkout, connect, connection check) bounded by
/// `--db-timeout`.
///
/// Building the pool connects to nothing, so it succeeds while the database is down: each
/// checkout (`pool.get().await`) connects as needed, fails with an error that
/// [`status_from_pg`] maps to `UNAVAILABLE` while the database is unreachable, and works again
/// once it is back. Connections that broke are dropped when they come back to the pool.
/// Works with a socket URL (`postgresql:///db?host=/var/run/postgresql`) and a TCP one
/// (`postgresql://user@host:port/db`).
pub fn connect_pool(config: &DataConfig) -> Result<Pool, DataError> {
    let pg = pg_config(config)?;
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(config.db_pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(config.db_timeout))
        .create_timeout(Some(config.db_timeout))
        .recycle_timeout(Some(config.db_timeout))
        .build()?;
    Ok(pool)
}

/// Connects once, outside any pool, with every wait bounded by `timeout`; the connection is
/// driven by a spawned task that ends with the client.
pub(crate) async fn connect_once(
    pg: &tokio_postgres::Config,
    timeout: Duration,
) -> Result<tokio_postgres::Client, DataError> {
    let connecting = pg.connect(NoTls);
    let (client, connection) =
        tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| DataError::Timeout {
                what: "connecting to the database",
                after: timeout,
            })??;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %describe_pg_error(&err), "database connection ended");
        }
    });
    Ok(client)
}

/// Creates the database that `--database-url` names if it does not exist yet (connecting to the
/// server's `postgres` database to do so); returns whether it created it. Run it at start-up,
/// before [`migrate`]; it fails while the server is down.
pub async fn ensure_database(config: &DataConfig) -> Result<bool, DataError> {
    let pg = pg_config(config)?;
    let Some(name) = pg
        .get_dbname()
        .map(str::to_owned)
        .or_else(|| pg.get_user().map(str::to_owned))
    else {
        return Ok(false);
    };
    let mut admin = pg.clone();
    admin.dbname("postgres");
    // The schema option is meaningless for the maintenance database; keep the rest.
    admin.options("");
    let client = connect_once(&admin, config.db_timeout).await?;
    // Instances starting together each see no database and race to create it; `CREATE
    // DATABASE` cannot run in a transaction, so a session-level advisory lock (per database
    // name, released when this connection closes) makes them take turns.
    // Bounded: an instance that hangs while holding it must not hold every other start-up.
    let lock_key: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
        [&CREATE_DATABASE_LOCK_CLASS, &name];
    let locking = client.execute("SELECT pg_advisory_lock($1, hashtext($2))", &lock_key);
    tokio::time::timeout(CREATE_DATABASE_LOCK_WAIT, locking)
        .await
        .map_err(|_| DataError::Timeout {
            what: "waiting for another instance creating the database",
            after: CREATE_DATABASE_LOCK_WAIT,
        })??;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if exists {
        return Ok(false);
    }
    match client
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&name)))
        .await
    {
        Ok(()) => {
            tracing::info!(database = %name, "database created");
            Ok(true)
        }
        // Another process that does not take the lock created it in the meantime: `42P04`, or
        // `23505` on `pg_database`'s unique index when both creations ran at once.
        Err(err)
            if err.code() == Some(&SqlState::DUPLICATE_DATABASE)
                || err.code() == Some(&SqlState::UNIQUE_VIOLATION) =>
        {
            Ok(false)
        }
        Err(err) => Err(err.into()),
    }
}

/// A service's database ready to use, as every stateful service starts: the database created if
/// missing ([`ensure_database`]), a pool on it ([`connect_pool`]), and the `service`'s schema
/// migrated through `steps` ([`migrate`]); the steps applied are logged.
pub async fn prepare_database(
    config: &DataConfig,
    service: &str,
    steps: &[(i64, &str)],
) -> Result<Pool, DataError> {
    ensure_database(config).await?;
    let pool = connect_pool(config)?;
    let applied = migrate(&pool, service, steps).await?;
    tracing::info!(?applied, schema = ?config.db_schema, "database ready");
    Ok(pool)
}

/// Applies the steps of `service` that were not applied yet, in version order, each in its own
/// transaction together with its row in `schema_migrations(service, version, applied_at)`;
/// returns the versions it applied (empty when the schema was up to date).
///
/// Two instances starting together do not race: every step runs under the transaction-level
/// advisory lock `pg_advisory_xact_lock`, and checks again under it whether the step is applied.
/// When the connections' `search_path` names a schema ([`DataConfig::db_schema`]), that schema
/// is created first, and `schema_migrations` and every unqualified table of the steps live in it.
/// Versions must be positive and strictly increasing; a step's SQL may hold several statements.
/// Steps already applied are never run again, so a released step is never edited: add a new one.
pub async fn migrate(
    pool: &Pool,
    service: &str,
    steps: &[(i64, &str)],
) -> Result<Vec<i64>, DataError> {
    check_versions(service, steps)?;
    let mut client = pool.get().await?;

    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    create_search_path_schema(&tx).await?;
    tx.batch_execute(SCHEMA_MIGRATIONS_DDL).await?;
    let done: Vec<i64> = tx
        .query(
            "SELECT version FROM schema_migrations WHERE service = $1",
            &[&service],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    tx.commit().await?;
    if let Some(newest) = done.iter().max() {
        if steps.iter().all(|(version, _)| version < newest) {
            tracing::warn!(
                service,
                newest,
                "the database has migrations newer than this binary knows"
            );
        }
    }

    let mut applied = Vec::new();
    for &(version, sql) in steps {
        if done.contains(&version) {
            continue;
        }
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let already = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE service = $1 AND version = $2",
                &[&service, &version],
            )
            .await?
            .is_some();
        if already {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .map_err(|source| DataError::Migration {
                service: service.to_owned(),
                version,
                source,
            })?;
        tx.execute(
            "INSERT INTO schema_migrations (service, version) VALUES ($1, $2)",
            &[&service, &version],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(service, version, "migration applied");
        applied.push(version);
    }
    Ok(applied)
}

fn check_versions(service: &str, steps: &[(i64, &str)]) -> Result<(), DataError> {
    let mut previous = 0;
    for &(version, _) in steps {
        if version <= previous {
            return Err(DataError::MigrationOrder {
                service: service.to_owned(),
                detail: format!("{version} comes after {previous}"),
            });
        }
        previous = version;
    }
    Ok(())
}

/// `CREATE SCHEMA IF NOT EXISTS` for the first entry of the session's `search_path`, unless it is
/// `"$user"` or `public`.
async fn create_search_path_schema(
    tx: &deadpool_postgres::Transaction<'_>,
) -> Result<(), DataError> {
    let search_path: String = tx.query_one("SHOW search_path", &[]).await?.get(0);
    let Some(first) = search_path.split(',').map(str::trim).next() else {
        return Ok(());
    };
    let schema = match first.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\"\"", "\""),
        None => first.to_owned(),
    };
    if schema.is_empty() || schema == "$user" || schema == "public" {
        return Ok(());
    }
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {}",
        quote_ident(&schema)
    ))
    .await?;
    Ok(())
}

/// The gRPC status for a database error met while reading or writing `what` (a noun naming the
/// thing: `"project"`, `"task"`). `err` may be a [`tokio_postgres::Error`], a
/// [`deadpool_postgres::PoolError`], a [`DataError`], or an error whose source chain holds one.
///
/// | error | code | message |
/// |---|---|---|
/// | unique violation (23505) | `ALREADY_EXISTS` | `project already exists: name must be unique (constraint projects_name_key)` |
/// | foreign key violation (23503), inserting or updating a row that refers to a missing one | `NOT_FOUND` | `task: project_id refers to a missing row of projects (constraint tasks_project_id_fkey)` |
/// | foreign key violation (23503), deleting a row others still refer to | `FAILED_PRECONDITION` | `project is still referenced from tasks (constraint tasks_project_id_fkey)` |
/// | exclusion violation (23P01) | `FAILED_PRECONDITION` | `task conflicts with an existing one (constraint …)` |
/// | check (23514), not-null (23502) violations, bad values (class 22) | `INVALID_ARGUMENT` | names the column (or the check constraint, or `what`) with a `google.rpc.BadRequest` detail; a bad value is `is not a value the database can store`, never the database's own text |
/// | serialization failure, deadlock (40001, 40P01), lock not available (55P03) | `ABORTED` | the caller may retry the transaction |
/// | statement timeout or cancellation (57014) | `DEADLINE_EXCEEDED` | |
/// | cannot connect, connection lost or closed, pool checkout timeout, pool closed, server shutting down (class 08, 57P01–57P03), too many connections (class 53), unknown database (3D000), authentication (class 28), read-only server (25006) | `UNAVAILABLE` | `database unavailable: …` with a fixed reason (`cannot connect`, `server shutting down (57P01)`…) |
/// | anything else | `INTERNAL` | `task: internal error` |
///
/// No message carries the database's own text (its error message, detail, hint or the values
/// of a row): that text goes to the log, at error level for `INTERNAL` and warning level for
/// `UNAVAILABLE` and bad values, with `what` and the SQLSTATE.
pub fn status_from_pg(err: &(dyn StdError + 'static), what: &str) -> Status {
    let classified = classify(err, what);
    match classified.code {
        Code::Internal => {
            tracing::error!(what, error = %describe_any(err), "database error");
        }
        Code::Unavailable | Code::InvalidArgument | Code::Aborted | Code::DeadlineExceeded => {
            tracing::warn!(what, code = ?classified.code, error = %describe_any(err), "database error");
        }
        _ => {
            tracing::debug!(what, code = ?classified.code, error = %describe_any(err), "database constraint");
        }
    }
    classified.into_status()
}

/// [`status_from_pg`] as a `map_err` argument: the database error met while reading or writing
/// `what` becomes the status the caller gets (without the database's text), and that text goes
/// to the log. The one rule every service's handlers use:
///
/// ```no_run
/// # async fn run(pool: protomesh_data::deadpool_postgres::Pool) -> Result<(), tonic::Status> {
/// use protomesh_data::db_error;
/// let client = pool.get().await.map_err(db_error("task"))?;
/// client.execute("SELECT 1", &[]).await.map_err(db_error("task"))?;
/// # Ok(()) }
/// ```
pub fn db_error<E: StdError + 'static>(what: &'static str) -> impl Fn(E) -> Status {
    move |err| status_from_pg(&err, what)
}

/// A database error sorted into a gRPC code and a message safe to show the caller.
#[derive(Debug)]
pub(crate) struct Classified {
    pub(crate) code: Code,
    pub(crate) message: String,
    /// `(field, description)` for `INVALID_ARGUMENT`.
    pub(crate) violation: Option<(String, String)>,
}

impl Classified {
    fn new(code: Code, message: String) -> Self {
        Self {
            code,
            message,
            violation: None,
        }
    }

    fn unavailable(cause: impl std::fmt::Display) -> Self {
        Self::new(Code::Unavailable, format!("database unavailable: {cause}"))
    }

    fn internal(what: &str) -> Self {
        Self::new(Code::Internal, format!("{what}: internal error"))
    }

    /// The status the caller gets.
    fn into_status(self) -> Status {
        match self.violation {
            Some((field, description)) => protomesh::status::invalid_argument(field, description),
            None => Status::new(self.code, self.message),
        }
    }

    fn invalid(field: String, description: String) -> Self {
        Self {
            code: Code::InvalidArgument,
            message: format!("{field}: {description}"),
            violation: Some((field, description)),
        }
    }
}

/// Sorts `err` (see [`status_from_pg`]) without logging.
pub(crate) fn classify(err: &(dyn StdError + 'static), what: &str) -> Classified {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(pool) = e.downcast_ref::<PoolError>() {
            return classify_pool(pool, what);
        }
        if let Some(pg) = e.downcast_ref::<tokio_postgres::Error>() {
            return classify_pg(pg, what);
        }
        if let Some(db) = e.downcast_ref::<DbError>() {
            return classify_db(db, what);
        }
        if let Some(data) = e.downcast_ref::<DataError>() {
            match data {
                DataError::Timeout { .. } => return Classified::unavailable(data),
                DataError::Redis(err) => {
                    return Classified::new(Code::Unavailable, format!("redis unavailable: {err}"))
                }
                DataError::RedisDisconnected => {
                    return Classified::new(
                        Code::Unavailable,
                        "redis unavailable: not connected".to_owned(),
                    )
                }
                _ => {}
            }
        }
        current = e.source();
    }
    Classified::internal(what)
}

fn classify_pool(err: &PoolError, what: &str) -> Classified {
    match err {
        PoolError::Backend(pg) => classify_pg(pg, what),
        PoolError::Timeout(kind) => {
            Classified::unavailable(format!("timed out waiting for a connection ({kind:?})"))
        }
        PoolError::Closed => Classified::unavailable("connection pool closed"),
        PoolError::PostCreateHook(_) => Classified::unavailable("cannot set up a connection"),
        PoolError::NoRuntimeSpecified => Classified::internal(what),
    }
}

fn classify_pg(err: &tokio_postgres::Error, what: &str) -> Classified {
    if let Some(db) = err.as_db_error() {
        return classify_db(db, what);
    }
    if is_connection_error(err) {
        let reason = if err.is_closed() {
            "connection closed"
        } else {
            "cannot reach the server"
        };
        return Classified::unavailable(reason);
    }
    Classified::internal(what)
}

/// Whether a non-database error of tokio-postgres is about reaching the server (its error kinds
/// are private: judged by the cause being an I/O error, and by the fixed messages of the kinds
/// that concern the connection).
fn is_connection_error(err: &tokio_postgres::Error) -> bool {
    if err.is_closed() {
        return true;
    }
    if err
        .source()
        .is_some_and(|source| source.is::<std::io::Error>())
    {
        return true;
    }
    matches!(
        err.to_string().as_str(),
        "error communicating with the server"
            | "error connecting to server"
            | "timeout waiting for server"
            | "connection closed"
            | "authentication error"
            | "error performing TLS handshake"
    )
}

/// What [`classify_facts`] reads of a database error.
struct DbFacts<'a> {
    code: &'a SqlState,
    detail: &'a str,
    column: Option<&'a str>,
    constraint: Option<&'a str>,
}

fn classify_db(db: &DbError, what: &str) -> Classified {
    classify_facts(
        &DbFacts {
            code: db.code(),
            detail: db.detail().unwrap_or_default(),
            column: db.column(),
            constraint: db.constraint(),
        },
        what,
    )
}

fn classify_facts(db: &DbFacts<'_>, what: &str) -> Classified {
    let code = db.code;
    let sqlstate = code.code();
    let constraint = db.constraint.unwrap_or("unnamed");
    let detail = db.detail;
    if *code == SqlState::UNIQUE_VIOLATION {
        let fields = key_columns(detail).unwrap_or(constraint);
        return Classified::new(
            Code::AlreadyExists,
            format!("{what} already exists: {fields} must be unique (constraint {constraint})"),
        );
    }
    if *code == SqlState::FOREIGN_KEY_VIOLATION {
        let table = quoted_table(detail).unwrap_or("another table");
        if detail.contains("is still referenced from") {
            return Classified::new(
                Code::FailedPrecondition,
                format!("{what} is still referenced from {table} (constraint {constraint})"),
            );
        }
        let fields = key_columns(detail).unwrap_or(constraint);
        return Classified::new(
            Code::NotFound,
            format!(
                "{what}: {fields} refers to a missing row of {table} (constraint {constraint})"
            ),
        );
    }
    if *code == SqlState::EXCLUSION_VIOLATION {
        return Classified::new(
            Code::FailedPrecondition,
            format!("{what} conflicts with an existing one (constraint {constraint})"),
        );
    }
    if *code == SqlState::CHECK_VIOLATION {
        let field = db.column.unwrap_or(constraint).to_owned();
        return Classified::invalid(field, format!("violates check constraint {constraint}"));
    }
    if *code == SqlState::NOT_NULL_VIOLATION {
        let field = db.column.unwrap_or(what).to_owned();
        return Classified::invalid(field, "must be set".to_owned());
    }
    if sqlstate.starts_with("22") {
        // The database's message may quote the value (`invalid input syntax for type uuid:
        // "…"`): the caller learns the field, the log gets the text.
        let field = db.column.unwrap_or(what).to_owned();
        return Classified::invalid(
            field,
            format!("is not a value the database can store ({sqlstate})"),
        );
    }
    if *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::LOCK_NOT_AVAILABLE
    {
        return Classified::new(
            Code::Aborted,
            format!("{what}: concurrent update, try again ({sqlstate})"),
        );
    }
    if *code == SqlState::QUERY_CANCELED {
        return Classified::new(
            Code::DeadlineExceeded,
            format!("{what}: database statement canceled or timed out"),
        );
    }
    if sqlstate.starts_with("08")
        || sqlstate.starts_with("53")
        || sqlstate.starts_with("28")
        || *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
        || *code == SqlState::INVALID_CATALOG_NAME
        || *code == SqlState::READ_ONLY_SQL_TRANSACTION
    {
        let reason = if sqlstate.starts_with("08") {
            "connection failure"
        } else if sqlstate.starts_with("53") {
            "server out of resources"
        } else if sqlstate.starts_with("28") {
            "authentication failed"
        } else if *code == SqlState::INVALID_CATALOG_NAME {
            "no such database"
        } else if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
            "server is read-only"
        } else {
            "server shutting down"
        };
        return Classified::unavailable(format!("{reason} ({sqlstate})"));
    }
    Classified::internal(what)
}

/// The columns of a constraint error's detail, `Key (a, b)=(…) …` → `a, b`.
fn key_columns(detail: &str) -> Option<&str> {
    let rest = detail.strip_prefix("Key (")?;
    let end = rest.find(")=(")?;
    Some(&rest[..end])
}

/// The table quoted in a foreign-key error's detail: `… table "projects".` → `projects`.
fn quoted_table(detail: &str) -> Option<&str> {
    let start = detail.find("table \"")? + "table \"".len();
    let rest = &detail[start..];
    let end = rest.find('"')?;
    Some(&rest[..end])
}

/// A tokio-postgres error with its cause: the server's message for a database error
/// (`ERROR: relation "x" does not exist`), the I/O error for a connection failure.
pub(crate) fn describe_pg_error(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return format!("{}: {} ({})", db.severity(), db.message(), db.code().code());
    }
    match err.source() {
        Some(source) => format!("{err}: {source}"),
        None => err.to_string(),
    }
}

/// A pool error with its cause.
pub(crate) fn describe_pool_error(err: &PoolError) -> String {
    match err {
        PoolError::Backend(pg) => describe_pg_error(pg),
        PoolError::Timeout(kind) => format!("timed out waiting for a connection ({kind:?})"),
        other => other.to_string(),
    }
}

fn describe_any(err: &(dyn StdError + 'static)) -> String {
    if let Some(pg) = err.downcast_ref::<tokio_postgres::Error>() {
        return describe_pg_error(pg);
    }
    if let Some(pool) = err.downcast_ref::<PoolError>() {
        return describe_pool_error(pool);
    }
    err.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_checked_and_quoted() {
        assert!(is_plain_identifier("tasks"));
        assert!(is_plain_identifier("_x1"));
        assert!(!is_plain_identifier("1x"));
        assert!(!is_plain_identifier("Tasks"));
        assert!(!is_plain_identifier("a b"));
        assert!(!is_plain_identifier(""));
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn schema_becomes_the_search_path() {
        let config = DataConfig::with_database_url("postgresql://postgres@127.0.0.1:5432/x")
            .with_default_schema("tasks");
        let pg = pg_config(&config).expect("config");
        assert_eq!(pg.get_options(), Some("-c search_path=tasks"));
        assert_eq!(pg.get_connect_timeout(), Some(&Duration::from_secs(2)));
        let bad = DataConfig::with_database_url("postgresql:///x").with_default_schema("x;drop");
        assert!(matches!(pg_config(&bad), Err(DataError::Schema(_))));
    }

    #[test]
    fn socket_and_tcp_urls_parse() {
        for url in [
            crate::DEFAULT_DATABASE_URL,
            "postgresql://postgres@127.0.0.1:5432/protomesh",
            "host=/var/run/postgresql user=postgres dbname=x",
        ] {
            pg_config(&DataConfig::with_database_url(url)).expect(url);
        }
        assert!(matches!(
            pg_config(&DataConfig::with_database_url("postgresql://[nope")),
            Err(DataError::DatabaseUrl(_))
        ));
    }

    #[test]
    fn constraint_details_are_parsed() {
        assert_eq!(
            key_columns("Key (name)=(ship) already exists."),
            Some("name")
        );
        assert_eq!(
            key_columns("Key (lower(name::text))=(x) already exists."),
            Some("lower(name::text)")
        );
        assert_eq!(
            quoted_table("Key (project_id)=(1) is not present in table \"projects\"."),
            Some("projects")
        );
        assert_eq!(key_columns("nothing"), None);
    }

    #[test]
    fn versions_must_increase() {
        assert!(check_versions("s", &[(1, ""), (2, ""), (5, "")]).is_ok());
        assert!(check_versions("s", &[(1, ""), (1, "")]).is_err());
        assert!(check_versions("s", &[(2, ""), (1, "")]).is_err());
        assert!(check_versions("s", &[(0, "")]).is_err());
    }

    #[test]
    fn a_pool_timeout_is_unavailable() {
        let err = PoolError::Timeout(deadpool_postgres::TimeoutType::Wait);
        let status = status_from_pg(&err, "task");
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status.message().starts_with("database unavailable: "),
            "{}",
            status.message()
        );
        assert_eq!(
            status_from_pg(&PoolError::Closed, "task").code(),
            Code::Unavailable
        );
    }

    #[test]
    fn unknown_errors_are_internal_without_details() {
        let err = std::io::Error::other("SELECT secret FROM t");
        let status = status_from_pg(&err, "task");
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("SELECT"));
        assert_eq!(status.message(), "task: internal error");
    }

    #[test]
    fn database_texts_never_reach_the_caller() {
        for (code, expected) in [
            ("22021", Code::InvalidArgument),
            ("XX000", Code::Internal),
            ("42P01", Code::Internal),
            ("57P01", Code::Unavailable),
            ("28P01", Code::Unavailable),
            ("53300", Code::Unavailable),
            ("40001", Code::Aborted),
            ("23505", Code::AlreadyExists),
        ] {
            let facts = DbFacts {
                code: &SqlState::from_code(code),
                detail: "Key (name)=(SECRET) already exists.",
                column: None,
                constraint: None,
            };
            let status = classify_facts(&facts, "project").into_status();
            assert_eq!(status.code(), expected, "{code}");
            assert!(
                !status.message().contains("SECRET"),
                "{code}: {}",
                status.message()
            );
            assert!(
                !status.message().contains("UTF8"),
                "{code}: {}",
                status.message()
            );
            for violation in protomesh::status::field_violations(&status) {
                assert!(!violation.description.contains("SECRET"), "{code}");
            }
        }
    }
}
