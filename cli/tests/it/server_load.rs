//! `cohort serve` under load and bad input: 1,000 requests from 50
//! concurrent clients, each on its own TLS connection over loopback, most
//! of them wrong on purpose. Every request gets its expected answer or a
//! clear error, the server stays up, and no budget moves.

use std::collections::BTreeMap;

use arrow_flight::HandshakeRequest;
use arrow_flight::flight_service_client::FlightServiceClient;
use cohort_engine::keys::accounts;
use cohort_server::api::pb::{self, studies_client::StudiesClient};
use cohort_server::sign_in;
use prost::bytes::{Buf, BufMut, Bytes};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

use crate::PASSPHRASE;
use crate::research::{setup, study_text};
use crate::server::{Server, ask, authed, channel, client, login, remaining};

const CLIENTS: usize = 50;
const REQUESTS: usize = 1_000;

/// Sends bytes as they are: a request body no protobuf decoder accepts.
#[derive(Clone, Default)]
struct Raw;

impl Encoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

/// `bytes` to the gRPC method at `path`, as a unary call.
async fn raw_call(ch: &Channel, token: &str, path: &'static str, bytes: &'static [u8]) -> Code {
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.unwrap();
    match grpc
        .unary(
            authed(token, Bytes::from_static(bytes)),
            PathAndQuery::from_static(path),
            Raw,
        )
        .await
    {
        Ok(_) => Code::Ok,
        Err(s) => {
            assert!(!s.message().is_empty(), "an error without a message: {s:?}");
            s.code()
        }
    }
}

/// A wire-format field 1 of length 0x7f with 3 bytes behind it, then junk:
/// truncated, and invalid UTF-8 where a string is due.
const GARBAGE: &[u8] = &[0x0a, 0x7f, 0xff, 0xfe, 0xfd, 0x08, 0x96];

#[test]
fn a_thousand_requests_from_fifty_clients_mostly_bad() {
    let s = setup(10);
    let (id, _) = s.approved_study(&study_text("3", "0.5", false), 8);
    // A token from an earlier run of the server: a restart revokes it.
    let stale = {
        let first = Server::start(&s.data);
        let t = login(&s.data, &first, "researcher");
        assert!(first.stop().success());
        t
    };
    let server = Server::start(&s.data);
    let token = login(&s.data, &server, "researcher");
    let before = remaining(&s.data, id);
    let vault = s.dir.unlock(PASSPHRASE).unwrap();
    // The replayed sign-in is another account's (the researcher has used
    // its TOTP codes of this step), with its own code.
    let signer = accounts::get(vault.conn(), vault.keys(), "steward-1").unwrap();
    let code = crate::server::totp_code(&s.data, "steward-1");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let study = id.to_string();
    let tally: BTreeMap<&'static str, BTreeMap<String, usize>> = rt.block_on(async {
        // One signed sign-in, answered once: every later copy is a replay.
        let ch = channel(&s.data, &server.url).await;
        let mut flight = FlightServiceClient::new(ch);
        let message = sign_in::challenge(&mut flight, &signer).await.unwrap();
        let payload = sign_in::handshake_payload(&signer, &message, Some(&code)).unwrap();
        let handshake = |payload: Vec<u8>| HandshakeRequest {
            protocol_version: 0,
            payload: payload.into(),
        };
        let first = flight
            .handshake(futures::stream::iter([handshake(payload.clone())]))
            .await;
        assert!(first.is_ok(), "the signed sign-in: {first:?}");

        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let (data, url) = (s.data.clone(), server.url.clone());
            let (token, stale, study, payload) =
                (token.clone(), stale.clone(), study.clone(), payload.clone());
            tasks.push(tokio::spawn(async move {
                // Each client its own connection.
                let ch = channel(&data, &url).await;
                let mut sql = client(&data, &url, Some(&token), Some(&study)).await;
                let mut anonymous = client(&data, &url, None, Some(&study)).await;
                let mut studies = StudiesClient::new(ch.clone());
                let mut flight = FlightServiceClient::new(ch.clone());
                let mut seen: Vec<(&'static str, Code)> = Vec::new();
                for i in 0..REQUESTS / CLIENTS {
                    let kind = (c + i) % 10;
                    let (name, code) = match kind {
                        0 => (
                            "explain (valid)",
                            ask(
                                &mut sql,
                                "EXPLAIN PRIVACY SELECT COUNT(*) AS n FROM patients",
                            )
                            .await
                            .map_or_else(|e| e.code(), |_| Code::Ok),
                        ),
                        1 => (
                            "study show (valid)",
                            studies
                                .show(authed(&token, pb::StudyRef { study_id: id }))
                                .await
                                .map_or_else(|e| e.code(), |_| Code::Ok),
                        ),
                        2 => (
                            "malformed protobuf (study API)",
                            raw_call(&ch, &token, "/cohort.v1.Studies/Propose", GARBAGE).await,
                        ),
                        3 => (
                            "malformed protobuf (Flight)",
                            raw_call(
                                &ch,
                                &token,
                                "/arrow.flight.protocol.FlightService/GetFlightInfo",
                                GARBAGE,
                            )
                            .await,
                        ),
                        4 => (
                            "forged token",
                            studies
                                .list(authed(&"ab".repeat(32), pb::ListStudiesRequest {}))
                                .await
                                .map_or_else(|e| e.code(), |_| Code::Ok),
                        ),
                        5 => (
                            "revoked token",
                            studies
                                .list(authed(&stale, pb::ListStudiesRequest {}))
                                .await
                                .map_or_else(|e| e.code(), |_| Code::Ok),
                        ),
                        6 => (
                            "replayed signature",
                            flight
                                .handshake(futures::stream::iter([handshake(payload.clone())]))
                                .await
                                .map_or_else(|e| e.code(), |_| Code::Ok),
                        ),
                        7 => (
                            "refused SQL",
                            ask(&mut sql, "SELECT patient_id, birth_date FROM patients")
                                .await
                                .map_or_else(|e| e.code(), |_| Code::Ok),
                        ),
                        8 => (
                            "oversized message",
                            studies
                                .propose(authed(
                                    &token,
                                    pb::ProposeRequest {
                                        study_toml: "#".repeat(1 << 20) + "\n",
                                    },
                                ))
                                .await
                                .map_or_else(|e| e.code(), |_| Code::Ok),
                        ),
                        _ => (
                            "no token",
                            ask(&mut anonymous, "SELECT COUNT(*) AS n FROM patients")
                                .await
                                .map_or_else(|e| e.code(), |_| Code::Ok),
                        ),
                    };
                    seen.push((name, code));
                }
                seen
            }));
        }
        let mut tally: BTreeMap<&'static str, BTreeMap<String, usize>> = BTreeMap::new();
        for t in tasks {
            for (name, code) in t.await.unwrap() {
                *tally
                    .entry(name)
                    .or_default()
                    .entry(format!("{code:?}"))
                    .or_default() += 1;
            }
        }
        tally
    });
    let total: usize = tally.values().flat_map(|c| c.values()).sum();
    assert_eq!(total, REQUESTS);
    let expect = |name: &str, code: Code| {
        let got = &tally[name];
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            [&format!("{code:?}")],
            "{name}: {got:?} (all: {tally:#?})"
        );
        assert_eq!(got.values().sum::<usize>(), REQUESTS / 10, "{name}");
    };
    expect("explain (valid)", Code::Ok);
    expect("study show (valid)", Code::Ok);
    expect("malformed protobuf (study API)", Code::Internal);
    expect("malformed protobuf (Flight)", Code::Internal);
    expect("forged token", Code::Unauthenticated);
    expect("revoked token", Code::Unauthenticated);
    expect("replayed signature", Code::Unauthenticated);
    expect("refused SQL", Code::InvalidArgument);
    expect("oversized message", Code::OutOfRange);
    expect("no token", Code::Unauthenticated);

    // The server is still up and answering, and not one ε moved.
    let health = crate::cohort_json(&s.data, &["health", "--server", &server.url]);
    assert_eq!(health["status"], "SERVING");
    assert_eq!(
        remaining(&s.data, id),
        before,
        "a refused request moved the budget"
    );
    rt.block_on(async {
        let mut c = client(&s.data, &server.url, Some(&token), Some(&study)).await;
        ask(&mut c, "SELECT COUNT(*) AS n FROM patients")
            .await
            .unwrap();
    });
    assert_ne!(remaining(&s.data, id), before, "a real query still spends");
    assert!(server.stop().success());
}
