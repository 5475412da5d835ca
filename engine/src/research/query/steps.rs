//! The small steps every query takes: crash points for the tests, costs
//! in ledger units, ids, salts and shares.

use super::*;

/// Test hook: with `COHORT_TEST_PAUSE_AT` naming a step, the process says
/// so on stderr and stops there for good, so that a test can SIGKILL it at
/// exactly that point and show what the crash leaves. Steps: `reserved`
/// (before execution starts), `executing` (while the plan runs),
/// `answered` (outcome stored, before the commit), `committed` (before the
/// outcome is delivered).
pub(super) fn crash_point(step: &str) {
    if paused_at(step) {
        loop {
            std::thread::park();
        }
    }
}

/// [`crash_point`] inside the query's work: it waits without holding its
/// thread, so that a cancellation (Ctrl-C) can still end the work.
pub(super) async fn pause_point(step: &str) {
    if paused_at(step) {
        futures::future::pending::<()>().await;
    }
}

pub(super) fn paused_at(step: &str) -> bool {
    let pause = std::env::var("COHORT_TEST_PAUSE_AT").is_ok_and(|v| v == step);
    if pause {
        use std::io::Write;
        let mut err = std::io::stderr();
        let _ = writeln!(err, "paused at {step}");
        let _ = err.flush();
    }
    pause
}

pub(crate) fn to_cost(charge: &Charge) -> Cost {
    match *charge {
        Charge::Pure { epsilon } => Cost {
            primary: epsilon.units(),
            delta: 0,
        },
        Charge::Approx { epsilon, delta } => Cost {
            primary: epsilon.units(),
            delta: delta.units(),
        },
        Charge::Zcdp { rho } => Cost {
            primary: rho.units(),
            delta: 0,
        },
    }
}

pub(super) fn remaining_charge(kind: u8, left: Cost) -> Charge {
    match kind {
        0 => Charge::Pure {
            epsilon: Amount::from_units(left.primary),
        },
        1 => Charge::Approx {
            epsilon: Amount::from_units(left.primary),
            delta: Amount::from_units(left.delta),
        },
        _ => Charge::Zcdp {
            rho: Amount::from_units(left.primary),
        },
    }
}

pub(super) fn check_query_id(id: &str) -> Result<()> {
    let ok = !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "query id `{id}`: use 1 to 128 printable ASCII characters without spaces"
        )))
    }
}

pub(super) fn parse_b256(text: Option<&str>, what: &str) -> Result<B256> {
    text.and_then(|t| t.parse().ok())
        .ok_or_else(|| Error::Invalid(format!("the journal's {what} is missing or malformed")))
}

pub(super) fn fresh_salt() -> Result<[u8; 32]> {
    let mut salt = [0u8; 32];
    getrandom::fill(&mut salt)
        .map_err(|e| Error::Invalid(format!("the system's randomness failed: {e}")))?;
    Ok(salt)
}

pub(super) fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

/// What each of `members` is paid of `fee` (the contract's `fee / members`).
pub(super) fn share_of(fee: U256, members: usize) -> U256 {
    if members == 0 {
        U256::ZERO
    } else {
        fee / U256::from(members)
    }
}
