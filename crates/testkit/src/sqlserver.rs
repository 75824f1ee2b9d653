//! SQL Server at the wire level for tests and benchmarks: `mssql-mock-tds` (a TDS server that
//! logs clients in and answers registered statements) behind a small proxy on its own loopback
//! port, which gives it what a source's tests need and the mock lacks:
//!
//! - **tables that honour parameters**: the mock answers a statement with the same rows
//!   whatever its parameters. A [`Table`] is answered by the proxy itself: the rows whose
//!   watermark columns are above the request's `@P2` (and `@P3`), in that order, at most `@P1`
//!   of them, so a client paging by watermark sees what a real server would show it;
//! - **results of any size**: the mock writes a result into one packet with a 16-bit length;
//!   the proxy cuts its answers into packets of the negotiated size;
//! - **scripted failures**: an error token for the next requests of a statement (a deadlock,
//!   a permission denied), a refused login (error 18456, as a server sends in place of its
//!   LoginAck), and silence (requests are read and never answered);
//! - **what was asked**: every request of a table with its parameters.
//!
//! Only the framing is read by hand (an 8-byte header per packet) and the parameters of
//! `sp_executesql` that are `bigint` (`@P<n>`, type INTN of length 8): the mock's own builders
//! write every token.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::{BufMut, BytesMut};
use mssql_mock_tds::{
    ColumnDefinition, ColumnValue, MockTdsServer, QueryResponse, Row, TerminalError,
    protocol::{build_query_result, build_terminal_error_tokens},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::oneshot,
    task::JoinSet,
};

const HEADER: usize = 8;
const LOGIN7: u8 = 0x10;
const RPC: u8 = 0x03;
const TABULAR_RESULT: u8 = 0x04;
const END_OF_MESSAGE: u8 = 0x01;
/// The packet size tiberius asks for; answers are cut to it.
const PACKET: usize = 4096;

/// A result set answered by watermark: `SELECT TOP (@P1) … WHERE (w1[, w2]) > (@P2[, @P3])
/// ORDER BY w1[, w2]`, as the proxy reads it.
#[derive(Debug, Clone)]
pub struct Table {
    /// The statement as the client sends it, upper-case (the mock's registry matches
    /// upper-cased text).
    pub statement: String,
    pub columns: Vec<ColumnDefinition>,
    pub rows: Vec<Vec<ColumnValue>>,
    /// The watermark columns (indexes into `columns`), each a bigint, compared in order.
    pub watermark: Vec<usize>,
}

/// One request of a table: its parameters `@P1`, `@P2`, … in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub statement: String,
    pub params: Vec<i64>,
}

#[derive(Default)]
struct State {
    tables: Vec<Table>,
    /// Errors answered, in turn, to the next requests of a statement.
    failures: VecDeque<(String, TerminalError)>,
    refused_login: Option<TerminalError>,
    silent: bool,
    requests: Vec<Request>,
    logins_refused: usize,
}

pub struct SqlServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _tasks: JoinSet<()>,
    _mock_stop: oneshot::Sender<()>,
}

impl std::fmt::Debug for SqlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl SqlServer {
    pub async fn start() -> anyhow::Result<Self> {
        let mock = MockTdsServer::new("127.0.0.1:0").await?;
        let mock_addr = mock.local_addr();
        let (mock_stop, stopped) = oneshot::channel();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let _ = mock.run_with_shutdown(stopped).await;
        });
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                connections.spawn(async move {
                    let _ = proxy(client, mock_addr, state).await;
                });
            }
        });
        Ok(Self {
            addr,
            state,
            _tasks: tasks,
            _mock_stop: mock_stop,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Serves `table`, replacing one with the same statement.
    pub fn serve(&self, mut table: Table) {
        table.order_by_watermark();
        let mut state = self.lock();
        state.tables.retain(|t| t.statement != table.statement);
        state.tables.push(table);
    }

    /// Adds rows to the table of `statement`.
    pub fn insert(&self, statement: &str, rows: impl IntoIterator<Item = Vec<ColumnValue>>) {
        let mut state = self.lock();
        let table = state
            .tables
            .iter_mut()
            .find(|t| t.statement == statement)
            .expect("insert into a served table");
        table.rows.extend(rows);
        table.order_by_watermark();
    }

    /// Replaces the row of `statement` whose column `key` equals `row`'s.
    pub fn update(&self, statement: &str, key: usize, row: Vec<ColumnValue>) {
        let mut state = self.lock();
        let table = state
            .tables
            .iter_mut()
            .find(|t| t.statement == statement)
            .expect("update a served table");
        let same = |r: &Vec<ColumnValue>| format!("{:?}", r[key]) == format!("{:?}", row[key]);
        table.rows.retain(|r| !same(r));
        table.rows.push(row);
        table.order_by_watermark();
    }

    /// Answers the next request of `statement` with `error` (in turn, when called again).
    pub fn fail_next(&self, statement: &str, number: u32, message: &str) {
        self.lock().failures.push_back((
            statement.to_owned(),
            TerminalError::new(number, 16, message),
        ));
    }

    /// Refuses every login with `number` (18456 for a wrong password) until `None`.
    pub fn refuse_logins(&self, error: Option<(u32, &str)>) {
        self.lock().refused_login = error.map(|(n, m)| TerminalError::new(n, 14, m));
    }

    /// While `true`, requests are read and never answered.
    pub fn silence(&self, silent: bool) {
        self.lock().silent = silent;
    }

    /// How many logins were refused so far.
    pub fn logins_refused(&self) -> usize {
        self.lock().logins_refused
    }

    /// Every request of a served table so far.
    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("not poisoned")
    }
}

/// One message (one or more packets up to end-of-message) from the client.
struct Message {
    kind: u8,
    raw: Vec<u8>,
    body: Vec<u8>,
}

async fn read_message(from: &mut OwnedReadHalf) -> std::io::Result<Option<Message>> {
    let mut message = Message {
        kind: 0,
        raw: Vec::new(),
        body: Vec::new(),
    };
    loop {
        let mut header = [0u8; HEADER];
        if let Err(e) = from.read_exact(&mut header).await {
            return match e.kind() {
                std::io::ErrorKind::UnexpectedEof if message.raw.is_empty() => Ok(None),
                _ => Err(e),
            };
        }
        let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let mut body = vec![0u8; length.saturating_sub(HEADER)];
        from.read_exact(&mut body).await?;
        message.kind = header[0];
        message.raw.extend_from_slice(&header);
        message.raw.extend_from_slice(&body);
        message.body.extend_from_slice(&body);
        if header[1] & END_OF_MESSAGE != 0 {
            return Ok(Some(message));
        }
    }
}

async fn proxy(
    client: TcpStream,
    mock: SocketAddr,
    state: Arc<Mutex<State>>,
) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let server = TcpStream::connect(mock).await?;
    server.set_nodelay(true)?;
    let (mut from_client, to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let to_client = Arc::new(tokio::sync::Mutex::new(to_client));
    let answers = to_client.clone();
    let mut relay = JoinSet::new();
    relay.spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from_server.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            answers.lock().await.write_all(&buf[..n]).await?;
        }
    });
    while let Some(message) = read_message(&mut from_client).await? {
        match decide(&state, &message) {
            Decision::Forward => to_server.write_all(&message.raw).await?,
            Decision::Answer(tokens) => write_answer(&to_client, &tokens).await?,
            Decision::RefuseLogin(tokens) => {
                write_answer(&to_client, &tokens).await?;
                return Ok(());
            }
            Decision::Ignore => {}
        }
    }
    Ok(())
}

enum Decision {
    Forward,
    Answer(BytesMut),
    RefuseLogin(BytesMut),
    Ignore,
}

fn decide(state: &Mutex<State>, message: &Message) -> Decision {
    let mut state = state.lock().expect("not poisoned");
    if message.kind == LOGIN7 {
        let Some(error) = &state.refused_login else {
            return Decision::Forward;
        };
        let tokens = build_terminal_error_tokens(error);
        state.logins_refused += 1;
        return Decision::RefuseLogin(tokens);
    }
    if message.kind != RPC {
        return Decision::Forward;
    }
    // The table is read where it is, under the lock: a table of a benchmark holds tens of
    // thousands of rows, and a copy of it per request was most of what serving cost.
    let Some(at) = state
        .tables
        .iter()
        .position(|t| contains_utf16(&message.body, &t.statement))
    else {
        return Decision::Forward;
    };
    let params = bigint_params(&message.body);
    let statement = state.tables[at].statement.clone();
    state.requests.push(Request {
        statement: statement.clone(),
        params: params.clone(),
    });
    if state.silent {
        return Decision::Ignore;
    }
    if let Some(failure) = state.failures.iter().position(|(s, _)| *s == statement) {
        let (_, error) = state.failures.remove(failure).expect("found");
        return Decision::Answer(build_terminal_error_tokens(&error));
    }
    Decision::Answer(select(&state.tables[at], &params))
}

/// A row's watermark: its watermark columns' values, in order.
fn watermark_of(watermark: &[usize], row: &[ColumnValue]) -> Vec<i64> {
    watermark
        .iter()
        .map(|i| match row[*i] {
            ColumnValue::BigInt(v) => v,
            ColumnValue::Int(v) => i64::from(v),
            ref other => panic!("watermark column holds {other:?}, not a bigint"),
        })
        .collect()
}

impl Table {
    /// Keeps the rows in watermark order, as the statement's `ORDER BY` reads them (an index
    /// would): a request then seeks to its watermark.
    fn order_by_watermark(&mut self) {
        let watermark = &self.watermark;
        self.rows
            .sort_by_cached_key(|row| watermark_of(watermark, row));
    }
}

/// The rows a real server would return for these parameters: those above the watermark
/// (`@P2`, …), at most `@P1`.
fn select(table: &Table, params: &[i64]) -> BytesMut {
    let limit = params
        .first()
        .map_or(usize::MAX, |n| usize::try_from(*n).unwrap_or(0));
    let after = params.get(1..).unwrap_or_default();
    let first = if after.len() < table.watermark.len() {
        0
    } else {
        table
            .rows
            .partition_point(|row| watermark_of(&table.watermark, row).as_slice() <= after)
    };
    let response = QueryResponse::new(
        table.columns.clone(),
        table.rows[first..]
            .iter()
            .take(limit)
            .map(|r| Row::new(r.clone()))
            .collect(),
    );
    // The mock frames its result as one packet whose 16-bit length may overflow: keep the
    // tokens, frame them again.
    let packet = build_query_result(&response);
    BytesMut::from(&packet[HEADER..])
}

async fn write_answer(
    to: &tokio::sync::Mutex<OwnedWriteHalf>,
    tokens: &[u8],
) -> std::io::Result<()> {
    let mut framed = BytesMut::new();
    let chunks: Vec<&[u8]> = tokens.chunks(PACKET - HEADER).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        framed.put_u8(TABULAR_RESULT);
        framed.put_u8(if last { END_OF_MESSAGE } else { 0 });
        framed.put_u16(u16::try_from(chunk.len() + HEADER).expect("a packet fits"));
        framed.put_u16(0);
        framed.put_u8(u8::try_from((i + 1) % 256).expect("below 256"));
        framed.put_u8(0);
        framed.put_slice(chunk);
    }
    to.lock().await.write_all(&framed).await
}

fn utf16(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn contains_utf16(haystack: &[u8], text: &str) -> bool {
    let needle = utf16(text);
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `@P1`, `@P2`, … of an `sp_executesql` call, as long as each is a bigint: a parameter is
/// its name (a length byte and UTF-16), a status byte, then INTN (0x26) of length 8.
fn bigint_params(body: &[u8]) -> Vec<i64> {
    let mut params = Vec::new();
    for n in 1.. {
        let name = format!("@P{n}");
        let mut pattern = vec![u8::try_from(name.len()).expect("short")];
        pattern.extend(utf16(&name));
        let Some(at) = body.windows(pattern.len()).position(|w| w == pattern) else {
            break;
        };
        let value = at + pattern.len() + 1;
        match body.get(value..value + 11) {
            Some([0x26, 8, 8, v @ ..]) => {
                params.push(i64::from_le_bytes(v.try_into().expect("8 bytes")))
            }
            _ => break,
        }
    }
    params
}
