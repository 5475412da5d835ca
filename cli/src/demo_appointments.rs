//! The demo's appointments step: a provider publishes hours, a fee and a
//! policy; an insurer covers one patient; two patients book and pay into
//! escrow; the provider confirms; the scheduler reminds; the embedded
//! chain's development clock moves past the visits; one is completed and
//! paid, the other marked a no-show with its refund outcome.

use cohort_engine::DataDir;
use cohort_engine::access::{Actor, notifications};
use cohort_engine::appointments::desk::{self, BookRequest, Publish, Step, when};
use cohort_engine::appointments::terms::{Hours, Policy};
use cohort_engine::appointments::{insurance, mirror, reminders};
use cohort_engine::keys::accounts;
use cohort_engine::records::vault::Vault;
use cohort_engine::research::study::format_wei;
use cohort_ledger_bridge::alloy::primitives::U256;
use cohort_ledger_bridge::{Account, Client, Role};

fn ether_milli(m: u64) -> U256 {
    U256::from(m) * U256::from(10u64).pow(U256::from(15))
}

/// Runs the step; `say` prints a line.
pub(crate) fn appointments(
    rt: &tokio::runtime::Runtime,
    dir: &DataDir,
    vault: &Vault,
    client: &Client,
    admin: &Account,
    patients: &[Account],
    say: &dyn Fn(&str),
) -> anyhow::Result<serde_json::Value> {
    let began = std::time::Instant::now();
    let conn = vault.conn();
    let get =
        |name: &str| accounts::get_or_create(conn, vault.keys(), name).map(Actor::from_account);
    // The provider and issuer exist from the clinical step.
    let (provider, insurer) = (get("dr-demo")?, get("acme-health")?);
    rt.block_on(client.grant_role(admin, Role::Insurer, insurer.address()))?;
    let (first, second) = (
        Actor::from_account(patients[0].clone()),
        Actor::from_account(patients[1].clone()),
    );
    for who in [&first, &second, &insurer] {
        rt.block_on(
            client
                .ledger()
                .set_balance(who.address(), ether_milli(5_000)),
        )?;
    }
    let policy = Policy {
        deposit_bps: 5_000,
        ..Policy::default()
    };
    rt.block_on(desk::publish(
        conn,
        client,
        &provider,
        &Publish {
            hours: Some(Hours::parse("mon-sun=07:00-22:00", "30m", "+00:00")?),
            fees: vec![("checkup".into(), ether_milli(50))],
            policy: Some(policy.clone()),
            ..Publish::default()
        },
    ))?;
    say(&format!(
        "   {} publishes mon-sun 07:00-22:00 UTC, 30-minute check-ups at 0.05 ether; {}",
        provider.name(),
        policy.describe()
    ));
    let now = rt.block_on(client.ledger().now())?;
    let coverage = insurance::Coverage {
        patient: first.name().into(),
        provider: provider.name().into(),
        visit_type: "checkup".into(),
        share_bps: 8_000,
        expires_at: now + 365 * 86_400,
        policy: "ACME-0001".into(),
    };
    rt.block_on(insurance::verify(conn, client, &insurer, &coverage))?;
    rt.block_on(insurance::fund(conn, client, &insurer, ether_milli(1_000)))?;
    let sync = || -> anyhow::Result<()> {
        let mut c = dir.connect()?;
        rt.block_on(cohort_engine::chain::sync(dir, &mut c))?;
        Ok(())
    };
    sync()?;
    let free = mirror::slots(
        conn,
        provider.address(),
        now,
        now + 2 * 3_600,
        now + 3 * 86_400,
    )?;
    let (a, b) = match free.as_slice() {
        [a, b, ..] => (*a, *b),
        _ => anyhow::bail!(
            "{} has fewer than two free slots in three days",
            provider.name()
        ),
    };
    let mut ids = Vec::new();
    for (who, start, reason) in [
        (&first, a, "annual check-up; knee pain when climbing stairs"),
        (&second, b, "follow-up of blood pressure"),
    ] {
        let quote = rt.block_on(desk::quote(
            conn,
            client,
            who.address(),
            provider.name(),
            "checkup",
            start,
        ))?;
        let booked = rt.block_on(desk::book(
            vault,
            client,
            who,
            &BookRequest {
                provider: provider.name().into(),
                start,
                visit_type: "checkup".into(),
                reason: reason.into(),
                pay: None,
            },
        ))?;
        say(&format!(
            "   {} books #{} at {} (reason sealed, only its hash on chain): {}",
            who.name(),
            booked.id,
            when(start),
            quote.says
        ));
        ids.push(booked.id);
    }
    let taken = rt
        .block_on(desk::book(
            vault,
            client,
            &second,
            &BookRequest {
                provider: provider.name().into(),
                start: a,
                visit_type: "checkup".into(),
                reason: "x".into(),
                pay: None,
            },
        ))
        .expect_err("the slot is taken");
    say(&format!(
        "   {} tries the same slot as #{}: refused: {taken}",
        second.name(),
        ids[0]
    ));
    for id in &ids {
        rt.block_on(desk::act(conn, client, &provider, *id, Step::Confirm))?;
    }
    sync()?;
    let tick = reminders::remind(&mut dir.connect()?, now)?;
    say(&format!(
        "   {} confirms both; the scheduler sends {} reminder(s) (24 h ahead) through the notification outbox; {} has: {}",
        provider.name(),
        tick.reminded,
        first.name(),
        notifications::list(conn, first.address(), true, 10)?
            .iter()
            .map(|n| n.kind.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let ahead = b.saturating_sub(now) + 3_600;
    rt.block_on(client.ledger().increase_time(ahead))?;
    say(&format!(
        "   (the embedded chain's development clock moves {:.1} h forward, past both visits)",
        ahead as f64 / 3_600.0
    ));
    let done = rt.block_on(desk::act(conn, client, &provider, ids[0], Step::Complete))?;
    let absent = rt.block_on(desk::act(conn, client, &provider, ids[1], Step::NoShow))?;
    sync()?;
    let held = mirror::get(conn, ids[1])?.held;
    say(&format!("   {}", done.describe()));
    say(&format!(
        "   {}; the deposit, {}, is held for the dispute window (7 days), then paid to the provider",
        absent.describe(),
        format_wei(held.parse().unwrap_or_default())
    ));
    let money = mirror::money(conn, provider.address())?;
    say(&format!(
        "   {} has received {} from escrow ({:.1} s for this step)",
        provider.name(),
        format_wei(money.received.parse().unwrap_or_default()),
        began.elapsed().as_secs_f64()
    ));
    Ok(serde_json::json!({
        "appointments": ids,
        "completed": done,
        "no_show": absent,
        "reminders": tick.reminded,
    }))
}
