//! The follower mirrors events into SQLite, resumes after a restart
//! without skipping or repeating, waits for confirmations, and notices a
//! reorganisation of what it applied.

use cohort_ledger_bridge::alloy::primitives::{U256, keccak256};
use cohort_ledger_bridge::alloy::providers::{Provider, ProviderBuilder};
use cohort_ledger_bridge::contracts::CohortAccess;
use cohort_ledger_bridge::merkle::MemberTree;
use cohort_ledger_bridge::{Error, Follower, Target};
use rusqlite::Connection;

use crate::fixture::{Fixture, addr, eps, ether, query_id, units};

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_mirrored_and_a_restart_resumes_exactly() {
    let f = Fixture::embedded().await;
    let c = &f.client;
    let db = f.dir.as_ref().unwrap().path().join("mirror.db");
    // 0.1 ether per ε: an ε 0.25 query holds 0.025 ether.
    let id = f
        .paid_study(units(1), units(1) / 2, ether(1) / U256::from(10), ether(1))
        .await;
    let until = f.now().await + 86_400;
    for p in &f.patients {
        c.consent(p, id, U256::from(3), until).await.unwrap();
    }
    c.withdraw(&f.patients[2], id).await.unwrap();
    c.reserve(&f.engine, id, query_id("a"), eps(units(1) / 4))
        .await
        .unwrap();
    c.reserve(&f.engine, id, query_id("b"), eps(units(1) / 4))
        .await
        .unwrap();
    // The consenting set: the two patients who did not withdraw.
    let members = MemberTree::new([addr(&f.patients[0]), addr(&f.patients[1])]).unwrap();
    c.commit(
        &f.engine,
        id,
        query_id("a"),
        query_id("answer"),
        members.root(),
        2,
    )
    .await
    .unwrap();
    c.release(&f.engine, id, query_id("b")).await.unwrap();
    // Encrypted shares: the later share of a column replaces the earlier.
    let column = keccak256("hiv_status");
    c.share_encrypted(&f.patients[0], id, column, keccak256("ct 1"))
        .await
        .unwrap();
    let other = c
        .share_encrypted(&f.patients[1], id, column, keccak256("ct b"))
        .await
        .unwrap();
    let replaced = c
        .share_encrypted(&f.patients[0], id, column, keccak256("ct 2"))
        .await
        .unwrap();

    let mut conn = Connection::open(&db).unwrap();
    let follower = Follower::new(c.clone(), 1).unwrap();
    let report = follower.sync(&mut conn).await.unwrap();
    assert_eq!(
        report.to_block,
        Some(f.ledger.block_number().await.unwrap())
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM ledger_consents WHERE study_id = 1 AND active = 1"
        ),
        2
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM ledger_consents WHERE active = 0"
        ),
        1
    );
    assert_eq!(
        count(
            &conn,
            "SELECT approvals FROM ledger_studies WHERE study_id = 1"
        ),
        2
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM ledger_studies WHERE status = 'approved'"
        ),
        1
    );
    assert_eq!(count(&conn, "SELECT count(*) FROM ledger_approvals"), 2);
    let kinds: Vec<String> = conn
        .prepare("SELECT kind FROM ledger_budget_events ORDER BY block, log_index")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(kinds, ["reserved", "reserved", "committed", "released"]);
    type Row = (
        String,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<String>,
    );
    let rows: Vec<Row> = conn
        .prepare(
            "SELECT kind, fee, members_root, members, result_hash FROM ledger_budget_events
             ORDER BY block, log_index",
        )
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let fee = Some("25000000000000000".to_string());
    let root = Some(format!("{:#x}", members.root()));
    let answer = Some(format!("{:#x}", query_id("answer")));
    assert_eq!(
        rows,
        [
            ("reserved".into(), fee.clone(), None, None, None),
            ("reserved".into(), fee.clone(), None, None, None),
            ("committed".into(), fee, root, Some(2), answer),
            ("released".into(), None, None, None, None),
        ]
    );
    let shared: Vec<(i64, String, String, String, i64)> = conn
        .prepare(
            "SELECT study_id, column_hash, patient, value_hash, block FROM ledger_shared_values
             ORDER BY patient",
        )
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut expected = vec![
        (
            id as i64,
            format!("{column:#x}"),
            format!("{:#x}", addr(&f.patients[0])),
            format!("{:#x}", keccak256("ct 2")),
            replaced.block_number as i64,
        ),
        (
            id as i64,
            format!("{column:#x}"),
            format!("{:#x}", addr(&f.patients[1])),
            format!("{:#x}", keccak256("ct b")),
            other.block_number as i64,
        ),
    ];
    expected.sort_by(|a, b| a.2.cmp(&b.2));
    assert_eq!(shared, expected);
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM ledger_roles WHERE role = 'steward' AND active = 1"
        ),
        3
    );
    let applied = report.events;
    drop(conn);

    // Nothing new: nothing applied again.
    let mut conn = Connection::open(&db).unwrap();
    assert_eq!(follower.sync(&mut conn).await.unwrap().events, 0);

    // New events after a "restart" (a new connection and follower).
    f.credential_providers().await;
    c.send(
        &f.patients[0],
        Target::Access,
        CohortAccess::grantAccessCall {
            provider: addr(&f.providers[0]),
            duration: 3_600,
            level: 1,
        },
    )
    .await
    .unwrap();
    drop(conn);
    let mut conn = Connection::open(&db).unwrap();
    let again = Follower::new(c.clone(), 1)
        .unwrap()
        .sync(&mut conn)
        .await
        .unwrap();
    assert_eq!(again.from_block, Some(report.to_block.unwrap() + 1));
    assert_eq!(
        count(&conn, "SELECT count(*) FROM ledger_grants WHERE active = 1"),
        1
    );
    assert_eq!(
        count(&conn, "SELECT count(*) FROM ledger_budget_events"),
        4,
        "no event twice"
    );
    assert!(again.events >= 1 && applied > again.events);
    let position = Follower::position(&conn).unwrap().unwrap();
    assert_eq!(position.block, f.ledger.block_number().await.unwrap());
    assert_eq!(
        position.block_hash,
        f.ledger.block_hash(position.block).await.unwrap().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_wait_for_their_confirmations() {
    let f = Fixture::anvil().await;
    let c = &f.client;
    let id = f.approved_study(units(1), units(1), U256::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let mut conn = Connection::open(dir.path().join("mirror.db")).unwrap();
    let follower = Follower::new(c.clone(), 3).unwrap();
    follower.sync(&mut conn).await.unwrap();
    let consent = c
        .consent(&f.patients[0], id, U256::from(3), f.now().await + 86_400)
        .await
        .unwrap();
    let report = follower.sync(&mut conn).await.unwrap();
    assert_eq!(report.unconfirmed, 2);
    assert_eq!(
        count(&conn, "SELECT count(*) FROM ledger_consents"),
        0,
        "one confirmation of three"
    );
    f.ledger.mine().await.unwrap();
    follower.sync(&mut conn).await.unwrap();
    assert_eq!(
        count(&conn, "SELECT count(*) FROM ledger_consents"),
        0,
        "two of three"
    );
    f.ledger.mine().await.unwrap();
    let report = follower.sync(&mut conn).await.unwrap();
    assert_eq!(report.to_block, Some(consent.block_number));
    assert_eq!(count(&conn, "SELECT count(*) FROM ledger_consents"), 1);
    assert!(Follower::new(c.clone(), 0).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reorganised_block_is_reported_not_mirrored_twice() {
    let f = Fixture::anvil().await;
    let c = &f.client;
    let node =
        ProviderBuilder::new().connect_http(f.anvil.as_ref().unwrap().url().parse().unwrap());
    let snapshot: U256 = node.raw_request("evm_snapshot".into(), ()).await.unwrap();
    let id = f.approved_study(units(1), units(1), U256::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let mut conn = Connection::open(dir.path().join("mirror.db")).unwrap();
    let follower = Follower::new(c.clone(), 1).unwrap();
    follower.sync(&mut conn).await.unwrap();
    let head = f.ledger.block_number().await.unwrap();
    assert_eq!(id, 1);

    // Replace the chain after the snapshot with a different one of the same height.
    let reverted: bool = node
        .raw_request("evm_revert".into(), (snapshot,))
        .await
        .unwrap();
    assert!(reverted);
    f.ledger.increase_time(1).await.unwrap();
    while f.ledger.block_number().await.unwrap() < head {
        f.ledger.mine().await.unwrap();
    }
    let err = follower.sync(&mut conn).await.unwrap_err();
    assert!(
        matches!(err, Error::Reorg { number, .. } if number == head),
        "{err}"
    );
    assert_eq!(
        count(&conn, "SELECT count(*) FROM ledger_studies"),
        1,
        "the mirror was left as it was"
    );
}

/// A mirror written before the compensation rule changed has
/// `contributors_root` and no `members` in `ledger_budget_events`: opening
/// it migrates the table in place, keeps its rows, and the follower goes
/// on writing the new columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_with_the_old_budget_columns_is_migrated() {
    let f = Fixture::embedded().await;
    let c = &f.client;
    let mut conn = Connection::open(f.dir.as_ref().unwrap().path().join("old.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE ledger_budget_events (
            block INTEGER NOT NULL, log_index INTEGER NOT NULL, tx_hash TEXT NOT NULL, study_id INTEGER NOT NULL,
            query_id TEXT NOT NULL, kind TEXT NOT NULL, cost TEXT NOT NULL, delta_cost TEXT NOT NULL,
            result_hash TEXT, contributors_root TEXT, fee TEXT,
            PRIMARY KEY (block, log_index)
        );
        INSERT INTO ledger_budget_events VALUES
            (0, 0, '0x01', 7, '0x02', 'committed', '5', '0', '0x03', '0x04', '1000');",
    )
    .unwrap();
    Follower::install(&conn).unwrap();
    Follower::install(&conn).unwrap();
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('ledger_budget_events')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(columns.contains(&"members_root".to_string()), "{columns:?}");
    assert!(columns.contains(&"members".to_string()), "{columns:?}");
    assert!(!columns.contains(&"contributors_root".to_string()));
    let old: (String, Option<i64>, String) = conn
        .query_row(
            "SELECT members_root, members, fee FROM ledger_budget_events WHERE study_id = 7",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(old, ("0x04".to_string(), None, "1000".to_string()));

    let id = f.approved_study(units(1), units(1), U256::ZERO).await;
    c.reserve(&f.engine, id, query_id("q"), eps(units(1) / 2))
        .await
        .unwrap();
    let members = MemberTree::new([addr(&f.patients[0])]).unwrap();
    c.commit(
        &f.engine,
        id,
        query_id("q"),
        query_id("answer"),
        members.root(),
        1,
    )
    .await
    .unwrap();
    Follower::new(c.clone(), 1)
        .unwrap()
        .sync(&mut conn)
        .await
        .unwrap();
    let members_committed = count(
        &conn,
        "SELECT members FROM ledger_budget_events WHERE kind = 'committed' AND study_id = 1",
    );
    assert_eq!(members_committed, 1);
    assert_eq!(count(&conn, "SELECT count(*) FROM ledger_shared_values"), 0);
}
