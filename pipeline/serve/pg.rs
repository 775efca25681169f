//! The PostgreSQL wire protocol front of `serve` (`--pg-listen`, `[serve] pg_listen`):
//! `psql`, BI tools (Metabase, Superset, Grafana, Tableau, DBeaver) and drivers (psycopg,
//! JDBC) query the published tables read-only. The protocol, `pg_catalog` and the
//! statement handling are `datafusion-postgres` (pgwire underneath); this module gives it
//! tagflow's tables, credentials, limits and read-only rule.
//!
//! **Versions.** A statement runs on one catalog: `customer_tags` at the version the HTTP
//! API serves (the latest merged one), `tag_changes` up to it, the latest
//! `customer_tags_history`, `job_runs` and `task_results`, and the `segments` view. A
//! catalog is built when the first statement after a reload needs it and is shared by
//! every connection until the next version. A statement keeps the catalog it was planned
//! on, so a prepared statement or an open cursor stays on its version across reloads.
//!
//! Owns: the listener, SCRAM-SHA-256 authentication, TLS, the per-version catalogs, the
//! read-only rule, time limits.
//! Must not: write anything; map errors to SQLSTATEs other than through
//! [`super::error::sqlstate`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{ArrayRef, StringArray, TimestampMicrosecondArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{col, lit, SessionContext};
use datafusion::sql::sqlparser::ast::{self, Statement};
use datafusion::sql::sqlparser::parser as ast_parser;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::hooks::{HookClient, QueryHook};
use datafusion_postgres::pgwire::api::auth::sasl::scram::{gen_salted_password, ScramAuth};
use datafusion_postgres::pgwire::api::auth::sasl::SASLAuthStartupHandler;
use datafusion_postgres::pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use datafusion_postgres::pgwire::api::portal::{Format, Portal};
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::results::{FieldInfo, Response};
use datafusion_postgres::pgwire::api::stmt::QueryParser;
use datafusion_postgres::pgwire::api::store::PortalStore;
use datafusion_postgres::pgwire::api::{ClientInfo, ClientPortalStore, ErrorHandler, PgWireServerHandlers, Type};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::PgWireBackendMessage;
use datafusion_postgres::pgwire::tokio::tokio_rustls::rustls;
use datafusion_postgres::pgwire::tokio::{process_socket, TlsAcceptor};
use datafusion_postgres::{DfSessionService, Parser};
use futures::{Sink, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::error::{sqlstate, ApiError};
use super::query::sandbox;
use super::{AppState, ServeError};
use crate::publish::snapshots::SegmentFlow;
use crate::publish::tables::{CHANGES_TABLE, HISTORY_TABLE, RUNS_TABLE, TASKS_TABLE};
use crate::publish::{open_published, register, PublishError, TAGS_TABLE};

/// SCRAM iterations (RFC 7677's minimum is 4096).
const SCRAM_ITERATIONS: usize = 4096;

/// `[serve] pg_*` settings, resolved.
#[derive(Clone)]
pub struct PgSettings {
    pub listen: SocketAddr,
    pub user: String,
    /// From `TAGFLOW_PG_PASSWORD` or `[serve] pg_password`, never from a flag.
    pub password: String,
    /// PEM certificate chain and PKCS#8 key: TLS (and SCRAM-SHA-256-PLUS) when set.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings")
            .field("listen", &self.listen)
            .field("user", &self.user)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// Bind and accept PostgreSQL connections until `stopped`; returns the bound address.
pub(super) async fn start(
    state: Arc<AppState>,
    settings: PgSettings,
    mut stopped: watch::Receiver<bool>,
) -> Result<SocketAddr, ServeError> {
    let (tls, cert_pem) = match &settings.tls {
        Some((cert, key)) => {
            let (acceptor, pem) = tls_acceptor(cert, key)?;
            (Some(acceptor), Some(pem))
        }
        None => (None, None),
    };
    let (listener, addr) = super::bind(settings.listen).await?;
    let front = Arc::new(Front {
        snapshots: Arc::new(Snapshots {
            catalogs: Arc::new(Catalogs {
                state,
                built: tokio::sync::Mutex::new(None),
                last: Mutex::new(None),
            }),
        }),
        credentials: Arc::new(Credentials::new(&settings.user, &settings.password)),
        cert_pem,
    });
    tokio::spawn(async move {
        loop {
            let socket = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((socket, _)) => socket,
                    Err(error) => {
                        tracing::warn!(%error, "cannot accept a PostgreSQL connection");
                        continue;
                    }
                },
                _ = stopped.wait_for(|stop| *stop) => return,
            };
            let (front, tls) = (front.clone(), tls.clone());
            tokio::spawn(async move {
                if let Err(error) = process_socket(socket, tls, front).await {
                    tracing::debug!(%error, "PostgreSQL connection ended with an error");
                }
            });
        }
    });
    tracing::info!(%addr, tls = settings.tls.is_some(), "PostgreSQL wire protocol listening");
    Ok(addr)
}

/// The TLS acceptor of a certificate chain and key, and the chain's PEM (for SCRAM
/// channel binding).
fn tls_acceptor(cert: &PathBuf, key: &PathBuf) -> Result<(TlsAcceptor, Vec<u8>), ServeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let failed = |path: &PathBuf, message: String| ServeError::Tls {
        path: path.clone(),
        message,
    };
    let pem = std::fs::read(cert).map_err(|e| failed(cert, e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed(cert, e.to_string()))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| failed(key, e.to_string()))?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| failed(cert, e.to_string()))?;
    Ok((TlsAcceptor::from(Arc::new(config)), pem))
}

/// The one user and its salted password.
#[derive(Debug)]
struct Credentials {
    user: String,
    salt: Vec<u8>,
    salted: Vec<u8>,
}

impl Credentials {
    fn new(user: &str, password: &str) -> Self {
        let salt: [u8; 16] = rand::random();
        Credentials {
            user: user.to_string(),
            salted: gen_salted_password(password, &salt, SCRAM_ITERATIONS),
            salt: salt.to_vec(),
        }
    }
}

#[async_trait]
impl AuthSource for Credentials {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        if login.user() != Some(self.user.as_str()) {
            // The same answer as a wrong password: which users exist is not revealed.
            return Err(PgWireError::InvalidPassword(
                login.user().unwrap_or_default().to_string(),
            ));
        }
        Ok(Password::new(Some(self.salt.clone()), self.salted.clone()))
    }
}

/// What pgwire asks for each connection.
struct Front {
    snapshots: Arc<Snapshots>,
    credentials: Arc<Credentials>,
    cert_pem: Option<Vec<u8>>,
}

impl PgWireServerHandlers for Front {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.snapshots.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.snapshots.clone()
    }

    /// A new handler per connection: SCRAM keeps the exchange's state in it.
    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        let mut scram = ScramAuth::new(self.credentials.clone());
        scram.set_iterations(SCRAM_ITERATIONS);
        if let Some(pem) = &self.cert_pem {
            if let Err(error) = scram.configure_certificate(pem) {
                tracing::warn!(%error, "SCRAM channel binding is off");
            }
        }
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.default_transaction_read_only = true;
        Arc::new(SASLAuthStartupHandler::new(Arc::new(parameters)).with_scram(scram))
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(Sqlstates)
    }
}

/// Gives every error a SQLSTATE before it is sent (see [`sqlstate`]).
struct Sqlstates;

impl ErrorHandler for Sqlstates {
    fn on_error<C: ClientInfo>(&self, _client: &C, error: &mut PgWireError) {
        let (code, message) = match error {
            PgWireError::ApiError(inner) => {
                if let Some(df) = inner.downcast_ref::<datafusion::error::DataFusionError>() {
                    (sqlstate(df), df.to_string())
                } else if inner.is::<ast_parser::ParserError>() {
                    ("42601", inner.to_string()) // syntax_error
                } else {
                    ("XX000", inner.to_string())
                }
            }
            _ => return,
        };
        tracing::debug!(code, %message, "PostgreSQL error");
        *error = refusal(code, message);
    }
}

fn refusal(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), code.into(), message.into())))
}

/// The statement handlers: each statement runs on the served version's catalog.
struct Snapshots {
    catalogs: Arc<Catalogs>,
}

/// The catalog of the served version, built when a statement first needs it.
struct Catalogs {
    state: Arc<AppState>,
    built: tokio::sync::Mutex<Option<(u64, Arc<DfSessionService>)>>,
    /// The newest built service, for the parser's synchronous calls.
    last: Mutex<Option<Arc<DfSessionService>>>,
}

impl Catalogs {
    /// The service over the served version's catalog.
    async fn service(&self) -> PgWireResult<Arc<DfSessionService>> {
        let version = match self.state.latest() {
            Ok(index) => index.version,
            Err(error) => return Err(refusal("57P03", error.to_string())),
        };
        let mut built = self.built.lock().await;
        if let Some((v, service)) = built.as_ref() {
            if *v == version {
                return Ok(service.clone());
            }
        }
        let started = std::time::Instant::now();
        let ctx = catalog(&self.state, version)
            .await
            .map_err(|error| refusal("58030", format!("cannot open version {version}: {error}")))?;
        tracing::info!(
            version,
            ms = started.elapsed().as_millis() as u64,
            "PostgreSQL catalog built"
        );
        // The read-only rule first, then the library's own hooks (cursors, SET/SHOW,
        // transactions).
        let hooks: Vec<Arc<dyn QueryHook>> = vec![
            Arc::new(ReadOnly),
            Arc::new(CursorStatementHook),
            Arc::new(SetShowHook),
            Arc::new(TransactionStatementHook),
        ];
        let service = Arc::new(DfSessionService::new_with_hooks(Arc::new(ctx), hooks));
        *built = Some((version, service.clone()));
        *self.last.lock().expect("service lock") = Some(service.clone());
        Ok(service)
    }

    /// The statement's time limit: the client's `statement_timeout` (which `SET` keeps in
    /// the connection's metadata) up to `serve.query_timeout`.
    fn limit_time<C: ClientInfo>(&self, client: &C) -> Duration {
        let most = self.state.settings.query.timeout;
        let asked = client
            .metadata()
            .get("statement_timeout_ms")
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis);
        asked.filter(|d| !d.is_zero() && *d <= most).unwrap_or(most)
    }
}

/// Run a statement's planning under its time limit; its rows then stop at the same
/// deadline ([`with_deadline`]).
async fn limited<T>(
    limit: Duration,
    run: impl std::future::Future<Output = PgWireResult<T>>,
) -> PgWireResult<(T, Instant)> {
    let deadline = Instant::now() + limit;
    match tokio::time::timeout_at(deadline, run).await {
        Ok(result) => result.map(|t| (t, deadline)),
        Err(_) => Err(too_long(limit)),
    }
}

fn too_long(limit: Duration) -> PgWireError {
    refusal(
        "57014",
        format!("canceling statement due to its time limit of {limit:?}"),
    )
}

/// A query's rows stop with SQLSTATE 57014 at `deadline` (planning and streaming share
/// the statement's time limit).
fn with_deadline(response: Response, deadline: Instant, limit: Duration) -> Response {
    let Response::Query(mut query) = response else {
        return response;
    };
    let rows = std::mem::replace(&mut query.data_rows, Box::pin(futures::stream::empty()));
    let limited = futures::stream::unfold((rows, false), move |(mut rows, ended)| async move {
        if ended {
            return None;
        }
        match tokio::time::timeout_at(deadline, rows.next()).await {
            Ok(Some(row)) => Some((row, (rows, false))),
            Ok(None) => None,
            Err(_) => Some((Err(too_long(limit)), (rows, true))),
        }
    });
    query.data_rows = Box::pin(limited);
    Response::Query(query)
}

#[async_trait]
impl SimpleQueryHandler for Snapshots {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let limit = self.catalogs.limit_time(client);
        let service = self.catalogs.service().await?;
        let (responses, deadline) = limited(limit, SimpleQueryHandler::do_query(&*service, client, query)).await?;
        Ok(responses
            .into_iter()
            .map(|r| with_deadline(r, deadline, limit))
            .collect())
    }
}

type DfStatement = (String, Option<(Statement, LogicalPlan)>);

#[async_trait]
impl ExtendedQueryHandler for Snapshots {
    type Statement = DfStatement;
    type QueryParser = SnapshotParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        Arc::new(SnapshotParser {
            catalogs: self.catalogs.clone(),
        })
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let limit = self.catalogs.limit_time(client);
        let service = self.catalogs.service().await?;
        let (response, deadline) = limited(
            limit,
            ExtendedQueryHandler::do_query(&*service, client, portal, max_rows),
        )
        .await?;
        Ok(with_deadline(response, deadline, limit))
    }
}

/// Plans a statement on the served version's catalog.
pub struct SnapshotParser {
    catalogs: Arc<Catalogs>,
}

impl SnapshotParser {
    /// A parser for the calls that only read a planned statement.
    fn any(&self) -> PgWireResult<Arc<Parser>> {
        let last = self.catalogs.last.lock().expect("service lock");
        last.as_ref()
            .map(|s| s.query_parser())
            .ok_or_else(|| refusal("57P03", ApiError::NotReady.to_string()))
    }
}

#[async_trait]
impl QueryParser for SnapshotParser {
    type Statement = DfStatement;

    async fn parse_sql<C>(&self, client: &C, sql: &str, types: &[Option<Type>]) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let service = self.catalogs.service().await?;
        service.query_parser().parse_sql(client, sql, types).await
    }

    fn get_parameter_types(&self, stmt: &Self::Statement) -> PgWireResult<Vec<Type>> {
        self.any()?.get_parameter_types(stmt)
    }

    fn get_result_schema(&self, stmt: &Self::Statement, format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        self.any()?.get_result_schema(stmt, format)
    }
}

/// Refuses every statement that is not a read: writes, DDL, SQL-level `PREPARE`,
/// `SELECT ... INTO` and `SET datafusion.*` (which would change the catalog or settings
/// that every connection shares).
struct ReadOnly;

impl ReadOnly {
    fn check(statement: &Statement) -> Option<PgWireError> {
        let refused = |what: &str| {
            Some(refusal(
                "25006",
                format!("cannot execute {what} in a read-only session"),
            ))
        };
        match statement {
            Statement::Query(query) => match query.body.as_ref() {
                ast::SetExpr::Select(select) if select.into.is_some() => refused("SELECT INTO"),
                _ => None,
            },
            Statement::Explain { statement, .. } => Self::check(statement),
            Statement::Set(set) if set.to_string().to_ascii_lowercase().contains("datafusion.") => Some(refusal(
                "42501",
                "server settings (datafusion.*) cannot be changed over this connection",
            )),
            Statement::Set(_)
            | Statement::ExplainTable { .. }
            | Statement::ShowVariable { .. }
            | Statement::ShowVariables { .. }
            | Statement::ShowStatus { .. }
            | Statement::ShowTables { .. }
            | Statement::ShowColumns { .. }
            | Statement::ShowFunctions { .. }
            | Statement::ShowSchemas { .. }
            | Statement::ShowDatabases { .. }
            | Statement::ShowCatalogs { .. }
            | Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Declare { .. }
            | Statement::Fetch { .. }
            | Statement::Close { .. }
            | Statement::Discard { .. } => None,
            other => {
                let text = other.to_string();
                let verb: String = text.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
                refused(&verb.to_uppercase())
            }
        }
    }
}

#[async_trait]
impl QueryHook for ReadOnly {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        Self::check(statement).map(Err)
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        Self::check(statement).map(Err)
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        Self::check(statement).map(Err)
    }
}

/// The tables of `customer_tags` version `version`, in a sandbox with the query limits.
async fn catalog(state: &AppState, version: u64) -> Result<SessionContext, ApiError> {
    let unavailable = |e: datafusion::error::DataFusionError| ApiError::Unavailable(e.to_string());
    let warehouse = &state.warehouse;
    let ctx = sandbox(&state.settings.query, true)?;
    let tags = open_published(warehouse, TAGS_TABLE, Some(version)).await?;
    register(&ctx, &tags, TAGS_TABLE).await?;
    for table in [CHANGES_TABLE, HISTORY_TABLE, RUNS_TABLE, TASKS_TABLE] {
        match open_published(warehouse, table, None).await {
            Ok(delta) => register(&ctx, &delta, table).await?,
            Err(PublishError::NotFound { .. }) => continue,
            Err(other) => return Err(other.into()),
        }
    }
    if let Ok(feed) = ctx.table(CHANGES_TABLE).await {
        // The feed as the served version sees it: nothing published after it.
        let upto = feed
            .filter(col("to_version").lt_eq(lit(version as i64)))
            .map_err(unavailable)?;
        ctx.deregister_table(CHANGES_TABLE).map_err(unavailable)?;
        ctx.register_table(CHANGES_TABLE, upto.into_view())
            .map_err(unavailable)?;
    }
    let flows: Vec<SegmentFlow> = state
        .segment_flows()
        .await?
        .iter()
        .filter(|f| f.version <= version)
        .cloned()
        .collect();
    let segments = segments_batch(&flows);
    let segments = MemTable::try_new(segments.schema(), vec![vec![segments]]).map_err(unavailable)?;
    ctx.register_table("segments", Arc::new(segments))
        .map_err(unavailable)?;
    setup_pg_catalog(&ctx, "datafusion", EmptyContextProvider).map_err(|e| unavailable(*e))?;
    Ok(ctx)
}

/// `segments`: size, inflow and outflow per published version, tag and value.
fn segments_batch(flows: &[SegmentFlow]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("version", DataType::UInt64, false),
        Field::new(
            "as_of",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("tag", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, false),
        Field::new("size", DataType::UInt64, false),
        Field::new("inflow", DataType::UInt64, false),
        Field::new("outflow", DataType::UInt64, false),
    ]));
    let numbers = |f: fn(&SegmentFlow) -> u64| Arc::new(UInt64Array::from_iter_values(flows.iter().map(f))) as ArrayRef;
    let texts = |f: fn(&SegmentFlow) -> &str| Arc::new(StringArray::from_iter_values(flows.iter().map(f))) as ArrayRef;
    let as_of = TimestampMicrosecondArray::from_iter_values(flows.iter().map(|f| f.as_of.timestamp_micros()))
        .with_timezone("UTC");
    RecordBatch::try_new(
        schema,
        vec![
            numbers(|f| f.version),
            Arc::new(as_of),
            texts(|f| &f.tag),
            texts(|f| &f.value),
            numbers(|f| f.size),
            numbers(|f| f.inflow),
            numbers(|f| f.outflow),
        ],
    )
    .expect("columns match the schema")
}
