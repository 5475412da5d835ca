//! The client's side of the sign-in ([`super::auth`]): ask a challenge,
//! sign it with the account's key, trade it for a token. `cohort login`,
//! the tests and the bench all sign in through here.

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{Action, HandshakeRequest};
use cohort_ledger_bridge::Account;
use tonic::transport::Channel;

use super::flight::CHALLENGE_ACTION;
use cohort_engine::{Error, Result};

fn refused(what: &str, s: tonic::Status) -> Error {
    Error::Invalid(format!("{what}: {}", s.message()))
}

/// The EIP-4361 message the server wants `account` to sign.
pub async fn challenge(
    client: &mut FlightServiceClient<Channel>,
    account: &Account,
) -> Result<String> {
    let action = Action {
        r#type: CHALLENGE_ACTION.into(),
        body: format!("{:#x}", account.address()).into_bytes().into(),
    };
    let mut results = client
        .do_action(action)
        .await
        .map_err(|s| refused("the challenge was refused", s))?
        .into_inner();
    let challenge = results
        .message()
        .await
        .map_err(|s| refused("the challenge was refused", s))?
        .ok_or_else(|| Error::Invalid("the server sent no challenge".into()))?;
    String::from_utf8(challenge.body.to_vec())
        .map_err(|_| Error::Invalid("the challenge is not text".into()))
}

/// The handshake payload answering `message`: the message, `account`'s
/// signature over it and the TOTP code (every account, while the server
/// asks for a second factor).
pub fn handshake_payload(account: &Account, message: &str, totp: Option<&str>) -> Result<Vec<u8>> {
    let signature = account
        .sign_message(message)
        .map_err(|e| Error::Invalid(format!("signing the challenge: {e}")))?;
    let mut payload = serde_json::json!({
        "message": message,
        "signature": format!("0x{}", data_encoding::HEXLOWER.encode(&signature)),
    });
    if let Some(code) = totp {
        payload["totp"] = code.into();
    }
    Ok(serde_json::to_vec(&payload).expect("JSON serializes"))
}

/// Signs in as `account` over `channel`; the bearer token.
pub async fn sign_in(channel: Channel, account: &Account, totp: Option<&str>) -> Result<String> {
    let mut client = FlightServiceClient::new(channel);
    let message = challenge(&mut client, account).await?;
    let request = HandshakeRequest {
        protocol_version: 0,
        payload: handshake_payload(account, &message, totp)?.into(),
    };
    let reply = client
        .handshake(futures::stream::iter([request]))
        .await
        .map_err(|s| refused("the sign-in was refused", s))?
        .into_inner()
        .message()
        .await
        .map_err(|s| refused("the sign-in was refused", s))?
        .ok_or_else(|| Error::Invalid("the server sent no token".into()))?;
    String::from_utf8(reply.payload.to_vec())
        .map_err(|_| Error::Invalid("the token is not text".into()))
}
