//! What is particular to the JSON-RPC backend.

use cohort_ledger_bridge::{Error, Ledger, RpcLedger};

#[test]
fn urls_it_cannot_use_are_refused_with_the_reason() {
    let err = RpcLedger::connect("not a url").err().unwrap();
    assert!(err.to_string().contains("is not a URL"), "{err}");
    let err = RpcLedger::connect("https://node.example:8545")
        .err()
        .unwrap();
    assert!(err.to_string().contains("only http://"), "{err}");
}

#[tokio::test]
async fn an_unreachable_node_is_an_rpc_error() {
    // Port 9 (discard) on loopback: nothing listens there.
    let ledger = RpcLedger::connect("http://127.0.0.1:9").unwrap();
    let err = ledger.chain_id().await.unwrap_err();
    assert!(matches!(err, Error::Rpc(_)), "{err:?}");
}
