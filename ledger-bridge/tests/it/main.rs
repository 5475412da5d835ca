//! The contracts' test suite, run unchanged on both backends: the embedded
//! revm chain and a real anvil node; then what is particular to each
//! backend, the follower, the artifacts' freshness and the gas report.

mod access;
mod appointments;
mod artifacts;
mod compensation;
mod embedded;
mod fixture;
mod follower;
mod gas;
mod records;
mod rpc;
mod study;

/// For each suite function, one test on a fresh embedded chain and one on
/// a fresh anvil.
macro_rules! on_both_backends {
    ($($module:ident :: $name:ident),* $(,)?) => {
        mod on_embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::$module::$name(&crate::fixture::Fixture::embedded().await).await
                }
            )*
        }
        mod on_anvil {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::$module::$name(&crate::fixture::Fixture::anvil().await).await
                }
            )*
        }
        /// The suite as a list, for the gas report.
        mod suite {
            use futures::future::LocalBoxFuture;
            use crate::fixture::Fixture;
            $(
                fn $name(f: &Fixture) -> LocalBoxFuture<'_, ()> {
                    Box::pin(crate::$module::$name(f))
                }
            )*
            pub const ALL: &[(&str, for<'a> fn(&'a Fixture) -> LocalBoxFuture<'a, ()>)] =
                &[$((stringify!($name), $name)),*];
        }
    };
}

on_both_backends!(
    access::only_the_admin_grants_roles,
    access::credentials_are_attested_expire_and_are_revoked,
    access::jurisdictions_are_attested_by_the_issuer_and_restrictions_set_by_the_patient,
    access::grants_have_levels_expire_and_are_revoked,
    access::delegates_grant_within_the_patients_rights,
    access::emergency_access_expires_and_is_reviewed,
    access::the_admin_sets_the_emergency_duration_within_a_week,
    access::check_names_the_missing_authorization,
    access::emergencies_end_early_and_an_unjustified_one_suspends,
    records::records_keep_every_version_and_gate_access,
    records::a_guardian_recovery_moves_control_and_grants_follow_the_patient,
    records::the_patient_lists_and_removes_viewers,
    records::anchored_batches_batched_reads_and_updates,
    records::the_custodian_anchors_its_logs_keyed_heads_which_only_grow,
    study::a_study_is_approved_by_m_of_n_stewards,
    study::consent_covers_purposes_until_withdrawn_or_expired,
    study::the_budget_is_reserved_committed_and_released_exactly,
    study::the_budget_invariant_holds_over_random_operations,
    study::microdata_releases_are_recorded_only_when_allowed,
    study::patients_declare_encrypted_shares_of_a_running_study,
    study::closing_refunds_the_unallocated_escrow,
    study::concurrent_reservations_never_overspend,
    study::transactions_sent_together_each_get_their_own_outcome,
    study::the_admin_sets_the_threshold_and_the_researcher_adds_escrow,
    compensation::the_fee_is_priced_by_the_cost_held_then_paid_or_returned,
    compensation::a_reservation_the_escrow_cannot_pay_is_refused_and_moves_nothing,
    compensation::members_claim_equal_shares_once_with_a_proof,
    compensation::claims_never_exceed_the_fee_over_random_sets_and_fees,
    compensation::a_paying_commit_needs_a_root_and_an_empty_set_returns_the_fee,
    compensation::budget_events_carry_nothing_that_depends_on_the_rows,
    appointments::hours_fees_and_policy_decide_what_can_be_booked,
    appointments::one_slot_booked_in_one_block_has_one_winner,
    appointments::declined_and_unconfirmed_bookings_are_refunded_in_full,
    appointments::cancellations_refund_by_the_notice_tiers,
    appointments::a_deposit_and_the_balance_paid_later,
    appointments::insurance_splits_the_fee_and_pays_its_share_on_completion,
    appointments::no_shows_forfeit_the_deposit_and_can_be_disputed,
);
