//! Appointments on the embedded chain: a clinic's Monday morning (many
//! patients booking at once, each booking the whole engine path: the
//! quote, the sealed reason, the paid `book` transaction, the audit entry
//! and the provider's notification), the contract's own ceiling (paid
//! `book` transactions sent in batches), the follower's mirroring of the
//! bookings, and the slot search of a provider with a year of hours.
//!
//! `cargo run --release -p cohort-benches --bin appointments-bench -- --bookings 2000 --clients 16`

use std::time::Instant;

use clap::Parser;
use cohort_benches::FAST_KDF;
use cohort_engine::access::{Actor, grants};
use cohort_engine::appointments::desk::{self, BookRequest, Publish};
use cohort_engine::appointments::mirror;
use cohort_engine::appointments::terms::{Hours, Policy, visit_type};
use cohort_engine::chain::{self, DeployRequest};
use cohort_engine::keys::accounts;
use cohort_ledger_bridge::alloy::primitives::{B256, U256};
use cohort_ledger_bridge::contracts::Appointments;
use cohort_ledger_bridge::{Role, Target};

#[derive(Parser)]
struct Args {
    /// Bookings through the engine, all at once.
    #[arg(long, default_value_t = 2_000)]
    bookings: usize,
    /// Concurrent clients (threads, each with its own connection).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Providers booked.
    #[arg(long, default_value_t = 10)]
    providers: usize,
    /// Patients booking.
    #[arg(long, default_value_t = 100)]
    patients: u64,
    /// Raw `book` transactions for the contract's ceiling.
    #[arg(long, default_value_t = 2_000)]
    raw: usize,
    /// Slot searches timed.
    #[arg(long, default_value_t = 200)]
    searches: usize,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let (dir, vault) = cohort_benches::ingested(tmp.path(), args.patients, 3)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(chain::deploy(
        &dir,
        vault.conn(),
        vault.keys(),
        &DeployRequest {
            rpc_url: None,
            approvals: 1,
            confirmations: None,
            admin: "operator".into(),
            redeploy: false,
        },
    ))?;
    let (_, client) = rt.block_on(chain::client(&dir))?;
    let conn = vault.conn();
    let admin = accounts::get(conn, vault.keys(), "operator")?;
    let issuer = Actor::from_account(accounts::get_or_create(conn, vault.keys(), "issuer")?);
    rt.block_on(client.grant_role(&admin, Role::Issuer, issuer.address()))?;
    let now = rt.block_on(client.ledger().now())?;
    let wei = U256::from(10u64).pow(U256::from(16)); // 0.01 ether
    let mut providers = Vec::new();
    for i in 0..args.providers {
        let name = format!("dr-{i}");
        let p = Actor::from_account(accounts::get_or_create(conn, vault.keys(), &name)?);
        rt.block_on(client.grant_role(&admin, Role::Provider, p.address()))?;
        rt.block_on(grants::attest_credential(
            conn,
            &client,
            &issuer,
            &name,
            "MD",
            now + 400 * 86_400,
        ))?;
        // A year of weekday hours for the slot search; every slot bookable.
        let hours = if i == 0 {
            "mon-fri=08:00-18:00"
        } else {
            "mon-sun=00:00-24:00"
        };
        rt.block_on(desk::publish(
            conn,
            &client,
            &p,
            &Publish {
                hours: Some(Hours::parse(hours, "15m", "+00:00")?),
                fees: vec![("checkup".into(), wei)],
                policy: Some(Policy::default()),
                ..Publish::default()
            },
        ))?;
        providers.push(p);
    }
    let ids: Vec<String> = conn
        .prepare("SELECT patient_id FROM patients ORDER BY patient_id")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut patients = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let a = Actor::from_account(cohort_engine::research::link_patient(
            conn,
            &vault,
            &format!("pat-{i}"),
            id,
        )?);
        rt.block_on(grants::ensure_patient(&client, &a))?;
        rt.block_on(
            client
                .ledger()
                .set_balance(a.address(), wei * U256::from(1_000_000)),
        )?;
        patients.push(a);
    }
    // Distinct free slots, round-robin over the providers other than dr-0
    // (booked through the engine) and dr-0 (a few hundred, so its year is
    // not empty for the search).
    let start_at = (now / 900 + 8) * 900;
    let slot_of = |k: usize| -> (usize, u64) {
        let p = 1 + k % (args.providers - 1);
        (p, start_at + (k / (args.providers - 1)) as u64 * 900)
    };

    // A clinic's Monday morning: every client books at once.
    let per_client = args.bookings.div_ceil(args.clients);
    let t = Instant::now();
    let outcomes: Vec<anyhow::Result<usize>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.clients)
            .map(|c| {
                let (dir, client, providers, patients) = (&dir, &client, &providers, &patients);
                s.spawn(move || -> anyhow::Result<usize> {
                    let vault = dir.unlock_with("pw", FAST_KDF)?;
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    let mut done = 0;
                    for k in (c * per_client)..((c + 1) * per_client).min(args.bookings) {
                        let (p, start) = slot_of(k);
                        let who = &patients[k % patients.len()];
                        rt.block_on(desk::book(
                            &vault,
                            client,
                            who,
                            &BookRequest {
                                provider: providers[p].name().into(),
                                start,
                                visit_type: "checkup".into(),
                                reason: "routine check-up and blood pressure".into(),
                                pay: None,
                            },
                        ))?;
                        done += 1;
                    }
                    Ok(done)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a client thread"))
            .collect()
    });
    let engine_secs = t.elapsed().as_secs_f64();
    let booked: usize = outcomes
        .into_iter()
        .map(|o| o.map_err(|e| anyhow::anyhow!("{e}")))
        .sum::<anyhow::Result<usize>>()?;

    // The contract's ceiling: paid `book` transactions in batches of 200,
    // for dr-0's weekday slots over the next year.
    let hours0 = Hours::parse("mon-fri=08:00-18:00", "15m", "+00:00")?;
    let weekday = cohort_engine::appointments::terms::free_slots(
        &hours0,
        &Default::default(),
        &Default::default(),
        now,
        now + 3_600,
        now + 366 * 86_400,
    );
    let raw = args.raw.min(weekday.len());
    let txs: Vec<_> = (0..raw)
        .map(|k| {
            let tx = client
                .tx(
                    Target::Appointments,
                    Appointments::bookCall {
                        provider: providers[0].address(),
                        start: weekday[k * (weekday.len() / raw)],
                        visitType: visit_type("checkup").expect("a name"),
                        reasonHash: B256::repeat_byte(7),
                    },
                )
                .with_value(wei);
            (patients[k % patients.len()].account().clone(), tx)
        })
        .collect();
    let t = Instant::now();
    let mut raw_ok = 0;
    for batch in txs.chunks(200) {
        raw_ok += rt
            .block_on(client.ledger().send_all(batch.to_vec()))
            .iter()
            .filter(|o| o.is_ok())
            .count();
    }
    let raw_secs = t.elapsed().as_secs_f64();

    // The follower mirrors every booking.
    let t = Instant::now();
    let mut mirror_conn = dir.connect()?;
    let synced = rt.block_on(chain::sync(&dir, &mut mirror_conn))?;
    let sync_secs = t.elapsed().as_secs_f64();

    // Slot search: dr-0's year of weekday hours, with its bookings taken out.
    let now = rt.block_on(client.ledger().now())?;
    let mut latencies = Vec::with_capacity(args.searches);
    let mut free = 0;
    for _ in 0..args.searches {
        let t = Instant::now();
        free = mirror::slots(conn, providers[0].address(), now, now, now + 365 * 86_400)?.len();
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
    }
    latencies.sort_by(f64::total_cmp);

    let report = serde_json::json!({
        "engine_bookings": booked,
        "clients": args.clients,
        "engine_bookings_per_s": booked as f64 / engine_secs,
        "raw_book_transactions": raw_ok,
        "raw_book_transactions_per_s": raw_ok as f64 / raw_secs,
        "follower": { "events": synced.events, "ms": sync_secs * 1e3 },
        "slot_search_year": {
            "free_slots": free,
            "booked": raw_ok,
            "ms_p50": percentile(&latencies, 0.5),
            "ms_p95": percentile(&latencies, 0.95),
        },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
