//! `cohort ledger` and `cohort account`: deploying the contracts to the
//! embedded chain or a real node, status, the follower, and accounts whose
//! keys the keystore holds.

use cohort_ledger_bridge::alloy::primitives::{Address, U256};
use cohort_ledger_bridge::anvil::Anvil;
use cohort_ledger_bridge::{Ledger, RpcLedger};

use crate::{cohort, cohort_json, stderr};

#[test]
fn accounts_are_created_once_and_listed_without_the_passphrase() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    assert_eq!(
        cohort_json(dir, &["account", "list"]),
        serde_json::json!([])
    );
    let created = cohort_json(dir, &["account", "new", "alice"]);
    let address = created["address"].as_str().unwrap().to_string();
    assert!(address.parse::<Address>().is_ok(), "{address}");
    let again = cohort(dir, &["account", "new", "alice"]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    let bad = cohort(dir, &["account", "new", "no spaces"]);
    assert!(
        stderr(&bad).contains("not an account name"),
        "{}",
        stderr(&bad)
    );

    // Listing needs no passphrase.
    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args([
            "--data-dir",
            dir.to_str().unwrap(),
            "account",
            "list",
            "--json",
        ])
        .env_remove("COHORT_PASSPHRASE")
        .output()
        .unwrap();
    assert!(listed.status.success(), "{}", stderr(&listed));
    let list: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(list[0]["name"], "alice");
    assert_eq!(list[0]["address"], address.as_str());
    // Using a key needs the keystore's passphrase.
    let wrong = std::process::Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args([
            "--data-dir",
            dir.to_str().unwrap(),
            "--as",
            "alice",
            "ledger",
            "deploy",
        ])
        .env("COHORT_PASSPHRASE", "not the passphrase")
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(!dir.join("ledger.json").exists());
}

#[test]
fn deploy_to_the_embedded_chain_then_status_and_sync_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let before = cohort_json(dir, &["ledger", "status"]);
    assert_eq!(before["backend"]["kind"], "embedded");
    assert!(before["contracts"].is_null());

    let deployed = cohort_json(
        dir,
        &["--as", "admin", "ledger", "deploy", "--approvals", "2"],
    );
    assert_eq!(deployed["required_approvals"], 2);
    assert_eq!(deployed["admin"], "admin");
    let access = deployed["contracts"]["access"]
        .as_str()
        .unwrap()
        .to_string();

    let refused = cohort(dir, &["--as", "admin", "ledger", "deploy"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("--redeploy"),
        "{}",
        stderr(&refused)
    );

    let status = cohort_json(dir, &["ledger", "status"]);
    assert_eq!(status["contracts"]["access"], access.as_str());
    assert_eq!(status["chain_id"], cohort_ledger_bridge::DEFAULT_CHAIN_ID);
    let block = status["block"].as_u64().unwrap();
    assert!(block >= 5, "four deployments and a role grant: {block}");
    assert!(status["follower"].is_null());

    let synced = cohort_json(dir, &["ledger", "sync"]);
    assert_eq!(synced["to_block"].as_u64(), Some(block));
    assert!(
        synced["events"].as_u64().unwrap() >= 2,
        "admin and engine role grants"
    );
    // A new process sees the same chain and the follower's position.
    let after = cohort_json(dir, &["ledger", "status"]);
    assert_eq!(after["block"].as_u64(), Some(block));
    assert_eq!(after["follower"]["block"].as_u64(), Some(block));
    assert_eq!(after["follower_behind"].as_u64(), Some(0));
    assert_eq!(cohort_json(dir, &["ledger", "sync"])["events"], 0);
    // The chain file checks end to end: genesis and every later block.
    let verified = cohort_json(dir, &["ledger", "verify"]);
    assert_eq!(verified["blocks"].as_u64(), Some(block + 1));
    assert!(
        verified["transactions"].as_u64().unwrap() >= 5,
        "{verified}"
    );

    let text = cohort(dir, &["ledger", "status"]);
    let shown = String::from_utf8_lossy(&text.stdout);
    assert!(
        shown.contains("ResearchStudy") && shown.contains(&access),
        "{shown}"
    );

    // The engine's account holds the ENGINE role on chain (mirrored).
    let accounts = cohort_json(dir, &["account", "list"]);
    let names: Vec<&str> = accounts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "engine", "operator"]);
    let conn = rusqlite::Connection::open(dir.join("cohort.db")).unwrap();
    let engine_role: i64 = conn
        .query_row(
            "SELECT count(*) FROM ledger_roles WHERE role = 'engine' AND account = ?1 AND active = 1",
            [accounts[1]["address"].as_str().unwrap()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(engine_role, 1);

    let redeployed = cohort_json(dir, &["--as", "admin", "ledger", "deploy", "--redeploy"]);
    assert_ne!(redeployed["contracts"]["access"], access.as_str());
    assert!(
        cohort_json(dir, &["ledger", "status"])["follower"].is_null(),
        "the mirror restarts"
    );
}

#[test]
fn deploy_to_a_real_node_over_json_rpc() {
    let anvil = Anvil::spawn(&[]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let url = anvil.url().to_string();
    // The operator's account is made with the keystore (first unlocked here).
    cohort_json(dir, &["account", "new", "someone"]);
    let accounts = cohort_json(dir, &["account", "list"]);
    let operator = accounts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "operator")
        .expect("the operator's account")
        .clone();
    let address: Address = operator["address"].as_str().unwrap().parse().unwrap();

    let unfunded = cohort(dir, &["ledger", "deploy", "--rpc-url", &url]);
    assert!(!unfunded.status.success());
    let message = stderr(&unfunded);
    assert!(
        message.contains("has no ether") && message.contains(&format!("{address:#x}")),
        "{message}"
    );
    assert!(
        !dir.join("ledger.json").exists(),
        "nothing recorded for a failed deploy"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(
        RpcLedger::connect(&url)
            .unwrap()
            .set_balance(address, U256::from(10u64).pow(U256::from(19))),
    )
    .unwrap();
    let deployed = cohort_json(
        dir,
        &[
            "ledger",
            "deploy",
            "--rpc-url",
            &url,
            "--confirmations",
            "1",
        ],
    );
    assert_eq!(deployed["chain_id"], 31337);
    assert_eq!(deployed["backend"]["kind"], "rpc");

    let status = cohort_json(dir, &["ledger", "status"]);
    assert_eq!(status["backend"]["url"], url.as_str());
    assert_eq!(status["chain_id"], 31337);
    assert_eq!(status["contracts"], deployed["contracts"]);
    let synced = cohort_json(dir, &["ledger", "sync"]);
    assert_eq!(synced["to_block"], status["block"]);

    drop(anvil);
    let down = cohort(dir, &["ledger", "status"]);
    assert!(!down.status.success());
    assert!(stderr(&down).contains("JSON-RPC node"), "{}", stderr(&down));
}
