//! Appointments and insurance over gRPC (`service Appointments` and
//! `service Insurance` in `proto/cohort/v1/cohort.proto`): each call the
//! engine operation the CLI calls (`cohort_engine::appointments`), acting
//! as the signed-in account; the contract decides whether it may. Listings
//! read the follower's mirror, brought up to date first.

use cohort_engine::Error;
use cohort_engine::appointments::desk::{self, BookRequest, Publish, Step};
use cohort_engine::appointments::terms::{Hours, Policy, day_text, parse_duration};
use cohort_engine::appointments::{insurance, mirror};
use cohort_engine::research::study::parse_wei;
use cohort_ledger_bridge::alloy::primitives::Address;
use tonic::{Request, Response, Status};

use super::api::{StudyApi, pb};

/// The engine's step named `text`.
pub fn step(text: &str) -> Result<Step, Status> {
    Ok(match text.trim() {
        "confirm" => Step::Confirm,
        "decline" => Step::Decline,
        "cancel" => Step::Cancel,
        "complete" => Step::Complete,
        "no-show" => Step::NoShow,
        "dispute" => Step::Dispute,
        "expire" => Step::Expire,
        "release" => Step::Release,
        other => {
            return Err(Status::invalid_argument(format!(
                "`step` `{other}`: one of confirm, decline, cancel, complete, no-show, dispute, expire, release"
            )));
        }
    })
}

/// Bad input refused before any transaction, audited.
fn refused(
    vault: &cohort_engine::records::vault::Vault,
    me: &cohort_engine::access::Actor,
    action: &str,
    e: Error,
) -> Error {
    desk::refuse(vault.conn(), me, action, &format!("{:#x}", me.address()), e)
}

/// The publication a request asks for, parsed before anything is sent.
pub fn publication(r: &pb::PublishAvailabilityRequest) -> Result<Publish, Error> {
    let mut p = Publish::default();
    if !r.hours.trim().is_empty() {
        let slot = if r.slot.is_empty() { "30m" } else { &r.slot };
        let offset = if r.utc_offset.is_empty() {
            "0"
        } else {
            &r.utc_offset
        };
        p.hours = Some(Hours::parse(&r.hours, slot, offset)?);
    }
    for entry in &r.fees {
        let (name, fee) = entry.split_once('=').ok_or_else(|| {
            Error::Invalid(format!(
                "fee `{entry}`: write VISIT=AMOUNT, e.g. checkup=0.05 ether"
            ))
        })?;
        p.fees
            .push((name.trim().to_string(), parse_wei("fee", fee.trim())?));
    }
    let policy_asked = !r.deposit.is_empty()
        || !r.refunds.is_empty()
        || !r.confirm_within.is_empty()
        || !r.no_show_grace.is_empty()
        || r.no_show_threshold > 0
        || !r.threshold_deposit.is_empty();
    if policy_asked {
        let mut policy = Policy::default();
        if !r.deposit.is_empty() {
            policy.deposit_bps = Policy::parse_percent("deposit", &r.deposit)?;
        }
        if !r.refunds.is_empty() {
            policy.refunds = Policy::parse_refunds(&r.refunds)?;
        }
        if !r.confirm_within.is_empty() {
            policy.confirm_window_secs =
                u32::try_from(parse_duration("confirm within", &r.confirm_within)?)
                    .map_err(|_| Error::Invalid("confirm within: too long".into()))?;
        }
        if !r.no_show_grace.is_empty() {
            policy.no_show_grace_secs =
                u32::try_from(parse_duration("no-show grace", &r.no_show_grace)?)
                    .map_err(|_| Error::Invalid("no-show grace: too long".into()))?;
        }
        if r.no_show_threshold > 0 {
            policy.no_show_threshold = u16::try_from(r.no_show_threshold)
                .map_err(|_| Error::Invalid("no-show threshold: too large".into()))?;
        }
        if !r.threshold_deposit.is_empty() {
            policy.threshold_deposit_bps =
                Policy::parse_percent("threshold deposit", &r.threshold_deposit)?;
        }
        p.policy = Some(policy);
    }
    for (days, into) in [(&r.close, &mut p.close), (&r.reopen, &mut p.reopen)] {
        for d in days {
            into.push(Hours::local_day(d)?);
        }
    }
    Ok(p)
}

/// The answer to a publication.
pub fn published(items: Vec<desk::Published>) -> pb::PublishedList {
    pb::PublishedList {
        items: items
            .into_iter()
            .map(|p| pb::PublishedItem {
                what: p.what,
                tx_hash: p.tx_hash,
            })
            .collect(),
    }
}

/// A quote as the API answers it.
pub fn quote(q: desk::Quote) -> pb::BookingQuote {
    pb::BookingQuote {
        fee: q.fee,
        insurer_share: q.insurer_share,
        copay: q.copay,
        deposit: q.deposit,
        insurer: q.insurer,
        coverage_expires_at: q.coverage_expires_at,
        says: q.says,
    }
}

/// A step's outcome as the API answers it.
pub fn settlement(s: desk::Settled) -> pb::Settlement {
    pb::Settlement {
        says: s.describe(),
        id: s.id,
        status: s.status,
        to_patient: s.to_patient,
        to_provider: s.to_provider,
        to_insurer: s.to_insurer,
        tx_hash: s.tx_hash,
    }
}

/// An appointment as the API lists it.
pub fn entry(a: mirror::AppointmentInfo) -> pb::AppointmentEntry {
    pb::AppointmentEntry {
        says: a.describe(),
        owed: a.owed().to_string(),
        id: a.id,
        patient: a.patient,
        provider: a.provider,
        insurer: a.insurer,
        visit_type: a.visit_type,
        start: a.start,
        confirm_by: a.confirm_by,
        status: a.status,
        fee: a.fee,
        insurer_share: a.insurer_share,
        copay: a.copay,
        deposit: a.deposit,
        paid: a.paid,
        held: a.held,
        refunded: a.refunded,
        to_provider: a.to_provider,
    }
}

/// `who`'s money and no-shows across their appointments, from the mirror.
pub fn money(conn: &rusqlite::Connection, who: Address) -> cohort_engine::Result<pb::MoneySummary> {
    let m = mirror::money(conn, who)?;
    Ok(pb::MoneySummary {
        paid: m.paid,
        held: m.held,
        refunded: m.refunded,
        owed: m.owed,
        received: m.received,
        insurer_paid: m.insurer_paid,
        no_shows: mirror::no_shows(conn, who)?,
    })
}

/// A coverage as the API lists it.
pub fn coverage(c: insurance::CoverageInfo) -> pb::CoverageEntry {
    pb::CoverageEntry {
        patient: c.patient,
        provider: c.provider,
        visit_type: c.visit_type,
        insurer: c.insurer,
        share_bps: u32::from(c.share_bps),
        expires_at: c.expires_at,
        active: c.active,
    }
}

/// A provider's terms as the API answers them.
pub fn terms(t: mirror::Terms) -> pb::ProviderTerms {
    pb::ProviderTerms {
        hours: t.hours.as_ref().map(Hours::describe).unwrap_or_default(),
        policy: t.policy.as_ref().map(Policy::describe).unwrap_or_default(),
        fees: t
            .fees
            .iter()
            .map(|(visit_type, fee)| pb::VisitFee {
                visit_type: visit_type.clone(),
                fee: fee.clone(),
            })
            .collect(),
        closed_days: t.closed_days.iter().map(|d| day_text(*d)).collect(),
        provider: t.provider,
    }
}

fn provider_address(conn: &rusqlite::Connection, name: &str) -> cohort_engine::Result<Address> {
    desk::address_of(conn, name, "the provider")
}

#[tonic::async_trait]
impl pb::appointments_server::Appointments for StudyApi {
    async fn publish(
        &self,
        request: Request<pb::PublishAvailabilityRequest>,
    ) -> Result<Response<pb::PublishedList>, Status> {
        let r = request.get_ref().clone();
        self.as_actor(
            &request,
            "appointment.publish",
            async move |s, vault, me| {
                let p =
                    publication(&r).map_err(|e| refused(vault, me, "appointment.publish", e))?;
                Ok(published(
                    desk::publish(vault.conn(), s.client(), me, &p).await?,
                ))
            },
        )
        .await
    }

    async fn terms(
        &self,
        request: Request<pb::ProviderRef>,
    ) -> Result<Response<pb::ProviderTerms>, Status> {
        let provider = request.get_ref().provider.clone();
        self.as_actor(&request, "appointment.terms", async move |s, vault, _| {
            s.sync().await?;
            let address = provider_address(vault.conn(), &provider)?;
            Ok(terms(mirror::terms(vault.conn(), address)?))
        })
        .await
    }

    async fn providers(
        &self,
        request: Request<pb::ProvidersRequest>,
    ) -> Result<Response<pb::ProviderList>, Status> {
        self.as_actor(
            &request,
            "appointment.providers",
            async move |s, vault, _| {
                s.sync().await?;
                let providers = mirror::providers(vault.conn())?
                    .into_iter()
                    .map(|a| mirror::terms(vault.conn(), a).map(terms))
                    .collect::<cohort_engine::Result<_>>()?;
                Ok(pb::ProviderList { providers })
            },
        )
        .await
    }

    async fn slots(
        &self,
        request: Request<pb::SlotsRequest>,
    ) -> Result<Response<pb::SlotList>, Status> {
        let r = request.get_ref().clone();
        self.as_actor(&request, "appointment.slots", async move |s, vault, _| {
            s.sync().await?;
            let now = s.client().ledger().now().await?;
            let from = if r.from == 0 { now } else { r.from };
            let to = if r.to == 0 { from + 7 * 86_400 } else { r.to };
            let address = provider_address(vault.conn(), &r.provider)?;
            Ok(pb::SlotList {
                starts: mirror::slots(vault.conn(), address, now, from, to)?,
            })
        })
        .await
    }

    async fn quote(
        &self,
        request: Request<pb::QuoteRequest>,
    ) -> Result<Response<pb::BookingQuote>, Status> {
        let r = request.get_ref().clone();
        self.as_actor(&request, "appointment.quote", async move |s, vault, me| {
            Ok(quote(
                desk::quote(
                    vault.conn(),
                    s.client(),
                    me.address(),
                    &r.provider,
                    &r.visit_type,
                    r.start,
                )
                .await?,
            ))
        })
        .await
    }

    async fn book(
        &self,
        request: Request<pb::BookAppointmentRequest>,
    ) -> Result<Response<pb::Booking>, Status> {
        let r = request.get_ref().clone();
        let dir = self.dir().clone();
        let done = self
            .as_actor(&request, "appointment.book", async move |s, vault, me| {
                let pay = if r.pay.trim().is_empty() {
                    None
                } else {
                    Some(
                        parse_wei("pay", &r.pay)
                            .map_err(|e| refused(vault, me, "appointment.book", e))?,
                    )
                };
                let req = BookRequest {
                    provider: r.provider,
                    start: r.start,
                    visit_type: if r.visit_type.is_empty() {
                        "checkup".into()
                    } else {
                        r.visit_type
                    },
                    reason: r.reason,
                    pay,
                };
                let b = desk::book(vault, s.client(), me, &req).await?;
                Ok(pb::Booking {
                    id: b.id,
                    quote: Some(quote(b.quote)),
                    paid: b.paid,
                    tx_hash: b.tx_hash,
                })
            })
            .await;
        crate::clinical_api::deliver_later(dir);
        done
    }

    async fn act(
        &self,
        request: Request<pb::AppointmentStep>,
    ) -> Result<Response<pb::Settlement>, Status> {
        let id = request.get_ref().id;
        let named = request.get_ref().step.clone();
        let dir = self.dir().clone();
        let done = self
            .as_actor(&request, "appointment.act", async move |s, vault, me| {
                let step = step(&named).map_err(|e| {
                    refused(
                        vault,
                        me,
                        "appointment.act",
                        Error::Invalid(e.message().into()),
                    )
                })?;
                Ok(settlement(
                    desk::act(vault.conn(), s.client(), me, id, step).await?,
                ))
            })
            .await;
        crate::clinical_api::deliver_later(dir);
        done
    }

    async fn pay(
        &self,
        request: Request<pb::PayRequest>,
    ) -> Result<Response<pb::Settlement>, Status> {
        let id = request.get_ref().id;
        let text = request.get_ref().amount.clone();
        self.as_actor(&request, "appointment.pay", async move |s, vault, me| {
            let amount =
                parse_wei("amount", &text).map_err(|e| refused(vault, me, "appointment.pay", e))?;
            Ok(settlement(
                desk::pay(vault.conn(), s.client(), me, id, amount).await?,
            ))
        })
        .await
    }

    async fn resolve(
        &self,
        request: Request<pb::ResolveRequest>,
    ) -> Result<Response<pb::Settlement>, Status> {
        let r = *request.get_ref();
        self.as_actor(
            &request,
            "appointment.resolve",
            async move |s, vault, me| {
                Ok(settlement(
                    desk::resolve(vault.conn(), s.client(), me, r.id, r.no_show_stands).await?,
                ))
            },
        )
        .await
    }

    async fn list(
        &self,
        request: Request<pb::ListAppointmentsRequest>,
    ) -> Result<Response<pb::AppointmentList>, Status> {
        let r = request.get_ref().clone();
        self.as_actor(&request, "appointment.list", async move |s, vault, me| {
            if r.everyone
                && !s
                    .has_role(cohort_ledger_bridge::Role::Admin, me.address())
                    .await?
                && !s
                    .has_role(cohort_ledger_bridge::Role::Auditor, me.address())
                    .await?
            {
                return Err(Error::Forbidden(format!(
                    "`{}` may list only its own appointments (every appointment: admins and auditors)",
                    me.name()
                )));
            }
            s.sync().await?;
            let filter = mirror::Filter {
                statuses: r.statuses,
                from: (r.from > 0).then_some(r.from),
                to: (r.to > 0).then_some(r.to),
                limit: 0,
            };
            let list = mirror::list(vault.conn(), me.address(), r.everyone, &filter)?;
            Ok(pb::AppointmentList {
                appointments: list.into_iter().map(entry).collect(),
                money: Some(money(vault.conn(), me.address())?),
            })
        })
        .await
    }

    async fn reason(
        &self,
        request: Request<pb::AppointmentRef>,
    ) -> Result<Response<pb::AppointmentReason>, Status> {
        let id = request.get_ref().id;
        self.as_actor(&request, "appointment.reason", async move |s, vault, me| {
            Ok(pb::AppointmentReason {
                id,
                reason: desk::reason(vault, s.client(), me, id).await?,
            })
        })
        .await
    }
}

#[tonic::async_trait]
impl pb::insurance_server::Insurance for StudyApi {
    async fn verify(
        &self,
        request: Request<pb::VerifyCoverageRequest>,
    ) -> Result<Response<pb::PublishedList>, Status> {
        let r = request.get_ref().clone();
        self.as_actor(&request, "insurance.verify", async move |s, vault, me| {
            let share = Policy::parse_percent("share", &r.share)
                .and_then(|share| match r.days {
                    0 => Err(Error::Invalid(
                        "`days`: a coverage lasts at least one day".into(),
                    )),
                    _ => Ok(share),
                })
                .map_err(|e| refused(vault, me, "insurance.verify", e))?;
            let now = s.client().ledger().now().await?;
            let c = insurance::Coverage {
                patient: r.patient,
                provider: r.provider,
                visit_type: r.visit_type,
                share_bps: share,
                expires_at: now + u64::from(r.days) * 86_400,
                policy: r.policy,
            };
            Ok(published(vec![
                insurance::verify(vault.conn(), s.client(), me, &c).await?,
            ]))
        })
        .await
    }

    async fn fund(
        &self,
        request: Request<pb::FundCoverageRequest>,
    ) -> Result<Response<pb::PublishedList>, Status> {
        let text = request.get_ref().amount.clone();
        self.as_actor(&request, "insurance.fund", async move |s, vault, me| {
            let amount =
                parse_wei("amount", &text).map_err(|e| refused(vault, me, "insurance.fund", e))?;
            Ok(published(vec![
                insurance::fund(vault.conn(), s.client(), me, amount).await?,
            ]))
        })
        .await
    }

    async fn show(
        &self,
        request: Request<pb::ShowCoverageRequest>,
    ) -> Result<Response<pb::CoverageList>, Status> {
        self.as_actor(&request, "insurance.show", async move |s, vault, me| {
            s.sync().await?;
            let now = s.client().ledger().now().await?;
            let coverages = insurance::show(vault.conn(), me.address(), now)?
                .into_iter()
                .map(coverage)
                .collect();
            Ok(pb::CoverageList {
                coverages,
                funds: insurance::funds(s.client(), me.address()).await?,
            })
        })
        .await
    }
}
