//! The research path as an Arrow Flight SQL service.
//!
//! A statement is planned, costed, debited and answered by
//! [`Session::query`] when its `FlightInfo` is asked for, exactly as
//! `cohort query` does; the ticket then fetches that one stored answer,
//! once, by the account that asked. Running at `GetFlightInfo` rather than
//! at `DoGet` means a client that fetches twice cannot spend twice.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{CommandStatementQuery, ProstMessageExt, SqlInfo, TicketStatementQuery};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse,
    Ticket,
};
use cohort_ledger_bridge::Role;
use cohort_ledger_bridge::alloy::primitives::Address;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{AuthError, Factors, authorization};
use super::gate::Gate;
use super::status;
use cohort_engine::DataDir;
use cohort_engine::research::Session;
use cohort_engine::research::query::{QueryOutcome, QueryRequest};

/// The action that asks for a sign-in challenge; its body is the address.
pub const CHALLENGE_ACTION: &str = "cohort.challenge";
/// The action that ends the token it is sent with (signing out).
pub const LOGOUT_ACTION: &str = "cohort.logout";
/// The action by which an administrator ends every token of the account
/// whose address is its body.
pub const REVOKE_ACTION: &str = "cohort.revoke";
/// The header naming the study a statement is asked of.
pub const STUDY_HEADER: &str = "cohort-study";
/// The optional header carrying the query's id: a retry with the same id
/// is answered from the journal, never run or charged again.
pub const QUERY_ID_HEADER: &str = "cohort-query-id";

/// Answers not fetched within this long are dropped.
const ANSWER_TTL: Duration = Duration::from_secs(600);

struct Stored {
    owner: Address,
    batch: RecordBatch,
    at: Instant,
}

/// The Flight SQL service of one data directory.
pub struct Research {
    session: Arc<Session>,
    dir: DataDir,
    gate: Arc<Gate>,
    answers: Mutex<HashMap<String, Stored>>,
}

impl Research {
    pub(crate) fn new(session: Arc<Session>, dir: DataDir, gate: Arc<Gate>) -> Research {
        Research {
            session,
            dir,
            gate,
            answers: Mutex::new(HashMap::new()),
        }
    }

    fn account_name(&self, address: Address) -> Result<String, Status> {
        super::account_name(&self.dir, address)
    }

    /// `cohort.logout`: ends the token the request carries.
    fn logout(&self, request: &Request<Action>) -> Result<String, Status> {
        let address = self
            .gate
            .auth()
            .revoke(authorization(request))
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        self.gate
            .audit(address, "auth.logout", address, serde_json::json!({}))?;
        tracing::info!(account = %address, "signed out");
        Ok("signed out".into())
    }

    /// `cohort.revoke`: an administrator (checked now, on chain) ends
    /// every token of the account whose address is the body.
    async fn revoke(&self, request: &Request<Action>) -> Result<String, Status> {
        let caller = self.gate.caller(request).await?;
        let target = parse_address(&request.get_ref().body)?;
        if !self.gate.has_role(Role::Admin, caller).await? {
            self.gate.audit(
                caller,
                "auth.revoke",
                target,
                serde_json::json!({"refused": "the caller is not an admin"}),
            )?;
            return Err(Status::permission_denied(
                "ending another account's sign-ins needs the admin role",
            ));
        }
        let ended = self.gate.auth().revoke_account(target);
        self.gate.audit(
            caller,
            "auth.revoke",
            target,
            serde_json::json!({"tokens": ended}),
        )?;
        tracing::info!(account = %caller, target = %target, ended, "tokens revoked");
        Ok(ended.to_string())
    }
}

fn parse_address(body: &[u8]) -> Result<Address, Status> {
    let text = std::str::from_utf8(body)
        .map_err(|_| Status::invalid_argument("the address is not text"))?;
    text.trim().parse().map_err(|_| {
        Status::invalid_argument(format!("`{}` is not an Ethereum address", text.trim()))
    })
}

fn header<'a, T>(request: &'a Request<T>, name: &str) -> Option<&'a str> {
    request.metadata().get(name).and_then(|v| v.to_str().ok())
}

/// The delivered answer as one Arrow batch: the `EXPLAIN PRIVACY` text as
/// a `plan` column, or the answer's table with each column typed by its
/// values (integers, reals, booleans, else text).
pub fn outcome_batch(outcome: &QueryOutcome) -> Result<RecordBatch, Status> {
    if let Some(text) = &outcome.explain {
        let lines: Vec<&str> = text.lines().collect();
        let schema = Schema::new(vec![Field::new("plan", DataType::Utf8, false)]);
        return RecordBatch::try_new(Arc::new(schema), vec![Arc::new(StringArray::from(lines))])
            .map_err(|e| Status::internal(e.to_string()));
    }
    let answer = outcome
        .answer
        .as_ref()
        .ok_or_else(|| Status::internal("the query returned no answer"))?;
    let mut fields = Vec::with_capacity(answer.columns.len());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(answer.columns.len());
    for (i, name) in answer.columns.iter().enumerate() {
        let cells: Vec<&serde_json::Value> = answer.rows.iter().map(|r| &r[i]).collect();
        let present = || cells.iter().filter(|v| !v.is_null());
        let array: ArrayRef = if present().all(|v| v.is_i64()) && present().next().is_some() {
            Arc::new(cells.iter().map(|v| v.as_i64()).collect::<Int64Array>())
        } else if present().all(|v| v.is_number()) && present().next().is_some() {
            Arc::new(cells.iter().map(|v| v.as_f64()).collect::<Float64Array>())
        } else if present().all(|v| v.is_boolean()) && present().next().is_some() {
            Arc::new(cells.iter().map(|v| v.as_bool()).collect::<BooleanArray>())
        } else {
            Arc::new(
                cells
                    .iter()
                    .map(|v| match v {
                        serde_json::Value::Null => None,
                        serde_json::Value::String(s) => Some(s.clone()),
                        other => Some(other.to_string()),
                    })
                    .collect::<StringArray>(),
            )
        };
        fields.push(Field::new(name, array.data_type().clone(), true));
        arrays.push(array);
    }
    // What a notebook needs to draw error bars and watch the budget, in the
    // schema's metadata: each release's 95% error, the cost and what is left,
    // the fee the consenting set shares, the deadline the answer was released
    // at, and the on-chain commitment with its salt. Nothing exact about the
    // data: there is no count of contributing patients to give.
    let mut metadata = HashMap::from([
        ("cohort.releases".to_string(), answer.releases.to_string()),
        ("cohort.cost".to_string(), outcome.cost.clone()),
        ("cohort.remaining".to_string(), outcome.remaining.clone()),
        ("cohort.fee_wei".to_string(), answer.fee.clone()),
        ("cohort.share_wei".to_string(), answer.share.clone()),
        ("cohort.members".to_string(), answer.members.to_string()),
    ]);
    if let Some(ms) = outcome.deadline_ms {
        metadata.insert("cohort.deadline_ms".into(), ms.to_string());
    }
    if let (Some(hash), Some(salt)) = (&outcome.result_hash, &outcome.salt) {
        metadata.insert("cohort.result_hash".into(), hash.clone());
        metadata.insert("cohort.salt".into(), salt.clone());
    }
    RecordBatch::try_new(
        Arc::new(Schema::new(fields).with_metadata(metadata)),
        arrays,
    )
    .map_err(|e| Status::internal(e.to_string()))
}

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl FlightSqlService for Research {
    type FlightService = Research;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Stream_<HandshakeResponse>>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("an empty handshake"))?;
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct SignIn {
            message: String,
            signature: String,
            /// The TOTP code (every account, while `[auth] second_factor` is on).
            #[serde(default)]
            totp: Option<String>,
        }
        let sign_in: SignIn = serde_json::from_slice(&first.payload).map_err(|e| {
            Status::invalid_argument(format!(
                "the handshake payload must be JSON {{\"message\", \"signature\", \"totp\"?}}: {e}"
            ))
        })?;
        let signature = data_encoding::HEXLOWER_PERMISSIVE
            .decode(sign_in.signature.trim_start_matches("0x").as_bytes())
            .map_err(|e| Status::invalid_argument(format!("the signature is not hex: {e}")))?;
        let address = self
            .gate
            .auth()
            .verify_signature(&sign_in.message, &signature)
            .map_err(|e| match e {
                AuthError::Busy => Status::resource_exhausted(e.to_string()),
                _ => Status::unauthenticated(e.to_string()),
            })?;
        // A refused code is audited by the check.
        let totp = self
            .gate
            .check_second_factor(address, sign_in.totp.as_deref())
            .await?;
        let factors = Factors {
            passkey: None,
            totp,
        };
        let detail = serde_json::json!({
            "second_factor": factors.totp.is_some(),
            "factors": factors.names(),
        });
        let token = self.gate.auth().issue_token(address, factors);
        self.gate.audit(address, "auth.sign_in", address, detail)?;
        tracing::info!(account = %address, "signed in");
        let reply = HandshakeResponse {
            protocol_version: first.protocol_version,
            payload: token.clone().into(),
        };
        let mut response: Response<Stream_<HandshakeResponse>> =
            Response::new(Box::pin(futures::stream::iter([Ok(reply)])));
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::internal("a token that is not a header value"))?;
        response.metadata_mut().insert("authorization", value);
        Ok(response)
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        let body = match request.get_ref().r#type.as_str() {
            CHALLENGE_ACTION => {
                let address = parse_address(&request.get_ref().body)?;
                self.gate
                    .auth()
                    .challenge(address)
                    .map_err(|e| Status::resource_exhausted(e.to_string()))?
            }
            LOGOUT_ACTION => self.logout(&request)?,
            REVOKE_ACTION => self.revoke(&request).await?,
            other => {
                return Err(Status::unimplemented(format!(
                    "unknown action `{other}`; this server has `{CHALLENGE_ACTION}`, \
                     `{LOGOUT_ACTION}` and `{REVOKE_ACTION}`"
                )));
            }
        };
        let result = arrow_flight::Result {
            body: body.into_bytes().into(),
        };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(result)]))))
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let started = Instant::now();
        let caller = self.gate.caller(&request).await?;
        let study = header(&request, STUDY_HEADER)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "name the study: send the header `{STUDY_HEADER}: <id>`"
                ))
            })?
            .trim();
        let study: u64 = study.parse().map_err(|_| {
            Status::invalid_argument(format!("`{STUDY_HEADER}: {study}` is not a study id"))
        })?;
        let query_id = header(&request, QUERY_ID_HEADER).map(str::to_string);
        let name = self.account_name(caller)?;
        let session = Arc::clone(&self.session);
        let sql = query.query;
        let handle = tokio::runtime::Handle::current();
        // The research path holds its SQLite connection across awaits (not
        // `Send`): it runs on a blocking thread of its own.
        let outcome = tokio::task::spawn_blocking(move || {
            handle.block_on(session.query(
                &name,
                study,
                &QueryRequest {
                    sql,
                    query_id,
                    ..Default::default()
                },
            ))
        })
        .await
        .map_err(|e| Status::internal(format!("the query's task failed: {e}")))?
        .map_err(status);
        // Who asked of which study, and how it ended: never the SQL or the
        // answer (both may carry what the research path protects).
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let outcome = match outcome {
            Ok(o) => {
                tracing::info!(account = %caller, study, elapsed_ms, explain = o.explain.is_some(), "answered");
                o
            }
            Err(e) => {
                tracing::info!(account = %caller, study, elapsed_ms, code = ?e.code(), "refused");
                return Err(e);
            }
        };
        let batch = outcome_batch(&outcome)?;
        let schema = batch.schema();
        let handle = super::auth::random_hex(16);
        {
            let mut answers = self.answers.lock().expect("answers lock");
            answers.retain(|_, a| a.at.elapsed() < ANSWER_TTL);
            answers.insert(
                handle.clone(),
                Stored {
                    owner: caller,
                    batch,
                    at: Instant::now(),
                },
            );
        }
        let ticket = TicketStatementQuery {
            statement_handle: handle.into_bytes().into(),
        };
        let endpoint =
            FlightEndpoint::new().with_ticket(Ticket::new(ticket.as_any().encode_to_vec()));
        let info = FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| Status::internal(e.to_string()))?
            .with_endpoint(endpoint)
            .with_descriptor(request.into_inner());
        Ok(Response::new(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let caller = self.gate.caller(&request).await?;
        let handle = String::from_utf8_lossy(&ticket.statement_handle).to_string();
        let stored = {
            let mut answers = self.answers.lock().expect("answers lock");
            match answers.get(&handle) {
                Some(a) if a.owner == caller => answers.remove(&handle),
                _ => None,
            }
        }
        .ok_or_else(|| {
            Status::not_found(
                "no answer under this ticket for this account (each answer is fetched once)",
            )
        })?;
        let stream = FlightDataEncoderBuilder::new()
            .build(futures::stream::iter([Ok(stored.batch)]))
            .map_err(|e| Status::internal(e.to_string()));
        Ok(Response::new(Box::pin(stream.boxed())))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
