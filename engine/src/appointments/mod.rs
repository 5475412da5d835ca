//! Appointments: a credentialed provider publishes hours, visit-type fees
//! and a policy; a patient books a free slot, paying the copay (or the
//! deposit the policy asks) into the `Appointments` contract's escrow, an
//! insurer's verified coverage paying its share; the provider confirms or
//! declines, completes or marks a no-show; either side cancels under the
//! policy's notice tiers; a patient disputes a no-show and an admin
//! resolves it; the scheduler sends reminders and settles what is due.
//!
//! The contract decides every rule that moves ether (double booking is
//! impossible there, whatever the order of transactions); this module
//! acts as the authenticated account, keeps the visit's reason sealed in
//! `cohort.db` under the patient's data key with only the hash of the
//! sealed blob on chain, audits every step (never the reason), notifies
//! the other party, and reads listings from the follower's mirror.
//!
//! - [`terms`]: hours, policies and free slots (pure);
//! - [`desk`]: the transactions: publish, quote, book, confirm, ...;
//! - [`insurance`]: coverage by insurers;
//! - [`mirror`]: listings, slots and money from the follower's tables;
//! - [`reminders`]: the scheduler's reminders and settlements.

pub mod desk;
pub mod insurance;
pub mod mirror;
pub mod reminders;
pub mod terms;

use crate::Error;

/// A contract's refusal of an appointment operation in words (the
/// contract's error kept in brackets).
pub(crate) fn explain(who: &str, e: Error) -> Error {
    let Error::Ledger(cohort_ledger_bridge::Error::Reverted(revert)) = &e else {
        return e;
    };
    let said = match revert.name.as_str() {
        "NotCredentialed" => Error::Forbidden(
            "that provider has no unexpired credential (an issuer attests one: `cohort credential attest NAME`)"
                .into(),
        ),
        "MissingRole" => Error::Forbidden(format!(
            "`{who}` does not hold the role this needs on chain (a patient books, an insurer verifies coverage, an admin resolves disputes)"
        )),
        "InvalidHours" => Error::Invalid(
            "the hours are not valid (slots of 5 minutes to a day, each day's hours within the day)".into(),
        ),
        "InvalidPolicy" => Error::Invalid(
            "the policy is not valid (shares up to 100%, tiers from the longest notice down)".into(),
        ),
        "InvalidFee" => Error::Invalid("a visit type needs a name".into()),
        "InvalidCoverage" => Error::Invalid(
            "a coverage's share is above 0% and at most 100%, and it ends in the future".into(),
        ),
        "NoHours" => Error::Invalid(
            "that provider has not published hours (`cohort appointment availability`)".into(),
        ),
        "NoPolicy" => Error::Invalid(
            "that provider has not published a policy (`cohort appointment availability`)".into(),
        ),
        "NotOffered" => Error::Invalid("that provider does not offer this visit type".into()),
        "InPast" => Error::Invalid("that slot has already begun".into()),
        "OutsideHours" => Error::Invalid(
            "that time is not a slot of the provider's hours (or the day is closed): see `cohort appointment slots`"
                .into(),
        ),
        "SlotTaken" => Error::Invalid("that slot is already booked".into()),
        "PaymentBelow" => Error::Invalid(
            "the payment is below what the booking needs (the deposit, or any amount at all)".into(),
        ),
        "PaymentAbove" => Error::Invalid("the payment is above what is owed (the copay)".into()),
        "InsurerUnderfunded" => Error::Invalid(
            "the insurer's funds cannot cover its share now; ask the insurer, or book without coverage"
                .into(),
        ),
        "NoSuchAppointment" => Error::NotFound("there is no such appointment".into()),
        "WrongStatus" => Error::Invalid("the appointment is not in a state that allows this".into()),
        "NotParty" => Error::Forbidden(format!(
            "`{who}` is not the party of this appointment who may do this"
        )),
        "TooEarly" => Error::Invalid("it is too early for this".into()),
        "TooLate" => Error::Invalid("it is too late for this".into()),
        "NoCoverage" => Error::NotFound("there is no such coverage".into()),
        "InsufficientFunds" => Error::Invalid("that is more than the insurer's free funds".into()),
        _ => return e,
    };
    crate::access::grants::with_contract_error(said, &revert.message)
}
