//! Geography: which jurisdictions may read which records, and which
//! records may enter which studies' research views.
//!
//! ```text
//! record ──► its jurisdiction (the ingesting organisation's; else the deployment default)
//! reader ──► its credential's jurisdiction (attested on chain by the credential's issuer;
//!            none attested: the deployment default)
//! chain check allows ─► decide(policy, reader, record, patient's on-chain restriction,
//!                              emergency) ─► refused (audited, nothing traced or decrypted)
//!                                         └► allowed (audited; cross-border reads say so)
//! ```
//!
//! * **Jurisdictions** are ISO 3166-1 alpha-2 codes (`DE`), optionally with
//!   an ISO 3166-2 subdivision (`US-CA`). The country part is checked
//!   against the ISO list; a subdivision only for its shape (1-3 letters
//!   or digits). Two jurisdictions of one country are *domestic*: a read
//!   between them is never cross-border.
//! * **The deployment's policy** is a TOML document stored in the data
//!   directory's database (`cohort geo set FILE`; [`EXAMPLE`] shows every
//!   key). It is public: nothing in it depends on a patient. Without one,
//!   geography is off and every read is decided by the chain alone.
//! * **A patient's restriction** is their own transaction on chain
//!   (`CohortAccess.setGeoRestriction`), bits that only refuse: readers
//!   outside their record's jurisdiction, research studies outside it. It
//!   can narrow the deployment's policy and never widen it: the patient's
//!   bits are consulted only once the deployment has allowed.
//! * **The engine decides**, after the chain's `check` has allowed the
//!   read and before the read is traced on chain or anything decrypted:
//!   the chain holds the inputs (credential jurisdiction, restriction), the
//!   public policy and the records' jurisdictions are here.
//! * **Emergencies**: a read the chain allows under an emergency override
//!   is allowed across borders unless the policy says `emergency =
//!   "refuse"`, and is then audited with `review: true` (it is also in the
//!   emergency review queue, as every override is). This also overrides the
//!   patient's restriction: an override exists for the patient's life.

use cohort_ledger_bridge::alloy::primitives::Address;
use cohort_ledger_bridge::contracts::CohortAccess;
use cohort_ledger_bridge::{Client, Target};
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::{Error, Result, audit};

/// Every ISO 3166-1 alpha-2 code officially assigned.
const ISO_3166_1: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

/// The patient refuses readers outside their record's jurisdiction
/// (`CohortAccess.GEO_DOMESTIC_READS_ONLY`).
pub const DOMESTIC_READS_ONLY: u8 = 1;
/// The patient refuses research views of studies of another jurisdiction
/// (`CohortAccess.GEO_NO_CROSS_BORDER_RESEARCH`).
pub const NO_CROSS_BORDER_RESEARCH: u8 = 2;

/// A deployment policy showing every key.
pub const EXAMPLE: &str = r#"# The jurisdiction of records ingested without an organisation (and of
# every record stored before geography existed), and of readers whose
# credential has no jurisdiction attested.
default = "US"
# A read between two countries no [[allow]] rule covers: "refuse" or "allow".
cross_border = "refuse"
# A cross-border read under an emergency override: "allow" (flagged for
# review) or "refuse".
emergency = "allow"
# Records of one country in a study of another no [[research]] rule covers.
research_cross_border = "refuse"

[groups]
EU = ["AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE",
      "IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE"]

[organisations]
charite = "DE"
mayo = "US-MN"

[[allow]]
reader = "EU"
record = "EU"

[[research]]
record = "EU"
study = "EU"
"#;

/// A jurisdiction: an ISO 3166-1 alpha-2 country, optionally with an
/// ISO 3166-2 subdivision (`US-CA`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Jurisdiction(String);

impl Jurisdiction {
    /// Parses `code` (case-insensitive), naming what is wrong with it.
    pub fn parse(code: &str) -> Result<Jurisdiction> {
        let upper = code.trim().to_ascii_uppercase();
        let (country, sub) = match upper.split_once('-') {
            Some((c, s)) => (c, Some(s)),
            None => (upper.as_str(), None),
        };
        let bad = |why: &str| {
            Error::Invalid(format!(
                "`{code}` is not a jurisdiction: {why} (an ISO 3166-1 alpha-2 country such as \
                 `DE`, optionally with an ISO 3166-2 subdivision such as `US-CA`)"
            ))
        };
        if country.len() != 2 || !ISO_3166_1.split(' ').any(|c| c == country) {
            return Err(bad(&format!("`{country}` is no ISO 3166-1 country code")));
        }
        if let Some(s) = sub
            && (s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_alphanumeric()))
        {
            return Err(bad(&format!("`{s}` is no subdivision code")));
        }
        Ok(Jurisdiction(upper))
    }

    /// The code, as `DE` or `US-CA`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The country part.
    pub fn country(&self) -> &str {
        &self.0[..2]
    }

    /// Whether `other` is of the same country.
    pub fn domestic(&self, other: &Jurisdiction) -> bool {
        self.country() == other.country()
    }

    /// As the chain stores it: ASCII, zero-padded to 8 bytes.
    pub fn to_bytes8(&self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out[..self.0.len()].copy_from_slice(self.0.as_bytes());
        out
    }

    /// From the chain's 8 bytes; `None` when none was attested.
    pub fn from_bytes8(bytes: &[u8; 8]) -> Result<Option<Jurisdiction>> {
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(8);
        if end == 0 {
            return Ok(None);
        }
        let text = std::str::from_utf8(&bytes[..end])
            .map_err(|_| Error::Invalid("an attested jurisdiction is not ASCII".into()))?;
        Jurisdiction::parse(text).map(Some)
    }
}

impl std::fmt::Display for Jurisdiction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Allow or refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rule {
    /// Allowed.
    Allow,
    /// Refused.
    Refuse,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowSpec {
    reader: String,
    record: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResearchSpec {
    record: String,
    study: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicySpec {
    default: String,
    #[serde(default = "refuse")]
    cross_border: Rule,
    #[serde(default = "allow")]
    emergency: Rule,
    #[serde(default = "refuse")]
    research_cross_border: Rule,
    #[serde(default)]
    groups: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    organisations: BTreeMap<String, String>,
    #[serde(default)]
    allow: Vec<AllowSpec>,
    #[serde(default)]
    research: Vec<ResearchSpec>,
}

fn refuse() -> Rule {
    Rule::Refuse
}
fn allow() -> Rule {
    Rule::Allow
}

/// What a rule names: a jurisdiction (a country covers its subdivisions)
/// or a group of them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    /// As written.
    name: String,
    members: Vec<Jurisdiction>,
}

impl Pattern {
    fn matches(&self, j: &Jurisdiction) -> bool {
        self.members
            .iter()
            .any(|m| m == j || (m.as_str().len() == 2 && m.as_str() == j.country()))
    }
}

/// The deployment's geographic policy. Public: it names no patient.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The jurisdiction of records without one and of readers without one.
    pub default: Jurisdiction,
    /// Cross-border reads no `[[allow]]` rule covers.
    pub cross_border: Rule,
    /// Cross-border reads under an emergency override.
    pub emergency: Rule,
    /// Records in a study of another country no `[[research]]` rule covers.
    pub research_cross_border: Rule,
    organisations: BTreeMap<String, Jurisdiction>,
    allow: Vec<(Pattern, Pattern)>,
    research: Vec<(Pattern, Pattern)>,
    /// The policy's text, as set.
    pub text: String,
}

/// A decision on one read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Whether the read may go on.
    pub allowed: bool,
    /// Whether the reader and the record are of different countries.
    pub cross_border: bool,
    /// The reader's jurisdiction.
    pub reader: Jurisdiction,
    /// The record's jurisdiction.
    pub record: Jurisdiction,
    /// The rule that allowed or refused it.
    pub rule: String,
    /// Whether it is flagged for review (an emergency cross-border read).
    pub review: bool,
}

impl Policy {
    /// Parses and checks a policy, naming a bad code or an unknown group.
    pub fn parse(text: &str) -> Result<Policy> {
        let invalid = |e: &dyn std::fmt::Display| Error::Invalid(format!("geography policy: {e}"));
        let spec: PolicySpec = toml::from_str(text).map_err(|e| invalid(&e))?;
        let mut groups: BTreeMap<String, Vec<Jurisdiction>> = BTreeMap::new();
        for (name, codes) in &spec.groups {
            if Jurisdiction::parse(name).is_ok() {
                return Err(invalid(&format_args!(
                    "group `{name}` has the name of a jurisdiction; name groups apart from codes"
                )));
            }
            let members = codes
                .iter()
                .map(|c| Jurisdiction::parse(c))
                .collect::<Result<Vec<_>>>()
                .map_err(|e| invalid(&format_args!("group `{name}`: {e}")))?;
            groups.insert(name.clone(), members);
        }
        let pattern = |name: &str, at: &str| -> Result<Pattern> {
            if let Some(members) = groups.get(name) {
                return Ok(Pattern {
                    name: name.to_string(),
                    members: members.clone(),
                });
            }
            match Jurisdiction::parse(name) {
                Ok(j) => Ok(Pattern {
                    name: j.to_string(),
                    members: vec![j],
                }),
                Err(e) => Err(invalid(&format_args!(
                    "{at}: `{name}` is neither a group of [groups] ({}) nor a jurisdiction: {e}",
                    if groups.is_empty() {
                        "none defined".to_string()
                    } else {
                        groups.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                ))),
            }
        };
        let allow = spec
            .allow
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let at = format!("[[allow]] #{}", i + 1);
                Ok((pattern(&a.reader, &at)?, pattern(&a.record, &at)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let research = spec
            .research
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let at = format!("[[research]] #{}", i + 1);
                Ok((pattern(&r.record, &at)?, pattern(&r.study, &at)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let organisations = spec
            .organisations
            .iter()
            .map(|(name, code)| {
                Jurisdiction::parse(code)
                    .map(|j| (name.clone(), j))
                    .map_err(|e| invalid(&format_args!("organisation `{name}`: {e}")))
            })
            .collect::<Result<BTreeMap<_, _>>>()?;
        Ok(Policy {
            default: Jurisdiction::parse(&spec.default)
                .map_err(|e| invalid(&format_args!("`default`: {e}")))?,
            cross_border: spec.cross_border,
            emergency: spec.emergency,
            research_cross_border: spec.research_cross_border,
            organisations,
            allow,
            research,
            text: text.to_string(),
        })
    }

    /// The jurisdiction of organisation `name`, naming the known ones if
    /// it is not in `[organisations]`.
    pub fn organisation(&self, name: &str) -> Result<Jurisdiction> {
        self.organisations.get(name).cloned().ok_or_else(|| {
            Error::NotFound(format!(
                "no organisation `{name}` in the geography policy's [organisations] ({})",
                self.organisations
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// Decides a read of a `record` record by a `reader`, given the
    /// patient's on-chain `restriction` bits and whether an emergency
    /// override allowed it on chain. The deployment decides first; the
    /// patient's restriction can only refuse what it allowed.
    pub fn decide_read(
        &self,
        reader: &Jurisdiction,
        record: &Jurisdiction,
        restriction: u8,
        emergency: bool,
    ) -> Decision {
        let decision = |allowed: bool, rule: String, review: bool| Decision {
            allowed,
            cross_border: !reader.domestic(record),
            reader: reader.clone(),
            record: record.clone(),
            rule,
            review,
        };
        if reader.domestic(record) {
            return decision(true, "domestic".into(), false);
        }
        let deployment = match self
            .allow
            .iter()
            .position(|(r, d)| r.matches(reader) && d.matches(record))
        {
            Some(i) => Ok(format!(
                "[[allow]] #{} (reader = \"{}\", record = \"{}\")",
                i + 1,
                self.allow[i].0.name,
                self.allow[i].1.name
            )),
            None if self.cross_border == Rule::Allow => Ok("cross_border = \"allow\"".to_string()),
            None => Err(format!(
                "cross_border = \"refuse\" and no [[allow]] rule lets {reader} read {record}"
            )),
        };
        let outcome = match deployment {
            Ok(rule) if restriction & DOMESTIC_READS_ONLY != 0 => Err(format!(
                "the patient's restriction (readers in the record's jurisdiction only), within {rule}"
            )),
            other => other,
        };
        match outcome {
            Ok(rule) => decision(true, rule, emergency),
            Err(rule) if emergency && self.emergency == Rule::Allow => decision(
                true,
                format!("emergency = \"allow\" (flagged for review) over {rule}"),
                true,
            ),
            Err(rule) => decision(false, rule, false),
        }
    }

    /// Whether records of `record` may enter the view of a study of
    /// `study`, given the patient's restriction bits.
    pub fn research_allows(
        &self,
        record: &Jurisdiction,
        study: &Jurisdiction,
        restriction: u8,
    ) -> bool {
        if record.domestic(study) {
            return true;
        }
        if restriction & NO_CROSS_BORDER_RESEARCH != 0 {
            return false;
        }
        self.research
            .iter()
            .any(|(r, s)| r.matches(record) && s.matches(study))
            || self.research_cross_border == Rule::Allow
    }
}

impl Decision {
    /// The refusal's message, naming both jurisdictions and the rule.
    pub fn refusal(&self, reader: &str, what: &str) -> String {
        format!(
            "cross-border access refused: {reader} (jurisdiction {}) {what} (jurisdiction {}): \
             refused by {}",
            self.reader, self.record, self.rule
        )
    }

    /// The audit detail's fields.
    pub fn detail(&self) -> serde_json::Value {
        serde_json::json!({
            "cross_border": self.cross_border,
            "reader_jurisdiction": self.reader,
            "record_jurisdiction": self.record,
            "geo_rule": self.rule,
            "review": self.review,
        })
    }
}

/// The names of restriction bits, for display and audit.
pub fn restriction_names(bits: u8) -> Vec<&'static str> {
    let mut out = Vec::new();
    if bits & DOMESTIC_READS_ONLY != 0 {
        out.push("domestic-reads-only");
    }
    if bits & NO_CROSS_BORDER_RESEARCH != 0 {
        out.push("no-cross-border-research");
    }
    out
}

/// Restriction bits from their names (`domestic-reads-only`,
/// `no-cross-border-research`; `none` for no restriction).
pub fn restriction_bits(names: &[String]) -> Result<u8> {
    names.iter().try_fold(0u8, |bits, n| match n.as_str() {
        "domestic-reads-only" => Ok(bits | DOMESTIC_READS_ONLY),
        "no-cross-border-research" => Ok(bits | NO_CROSS_BORDER_RESEARCH),
        "none" => Ok(bits),
        other => Err(Error::Invalid(format!(
            "`{other}` is not a geographic restriction (domestic-reads-only, \
             no-cross-border-research, none)"
        ))),
    })
}

/// A patient's restriction bits, as their own transaction set them.
pub async fn restriction_of(client: &Client, patient: Address) -> Result<u8> {
    Ok(client
        .view(
            Target::Access,
            CohortAccess::geoRestrictionOfCall { patient },
        )
        .await?)
}

/// The jurisdiction attested for `provider` on chain, if any.
pub async fn attested(client: &Client, provider: Address) -> Result<Option<Jurisdiction>> {
    let bytes = client
        .view(
            Target::Access,
            CohortAccess::jurisdictionOfCall { provider },
        )
        .await?;
    Jurisdiction::from_bytes8(&bytes.0)
}

/// What the deployment's policy and a patient's restriction say, for
/// `cohort geo show` and the gRPC and web views.
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    /// Whether a deployment policy is set (else geography is off).
    pub enabled: bool,
    /// The policy's text.
    pub policy: Option<String>,
    /// The patient's restrictions, when a patient asked.
    pub restrictions: Option<Vec<&'static str>>,
}

/// The deployment's policy and, for a registered patient `who`, their
/// own restriction: what `cohort geo show`, gRPC and the web page show.
pub async fn shown(
    conn: &Connection,
    client: Option<&Client>,
    who: Option<Address>,
) -> Result<Shown> {
    let policy = policy(conn)?;
    let restrictions = match (client, who) {
        (Some(client), Some(who))
            if client
                .has_role(cohort_ledger_bridge::Role::Patient, who)
                .await? =>
        {
            Some(restriction_names(restriction_of(client, who).await?))
        }
        _ => None,
    };
    Ok(Shown {
        enabled: policy.is_some(),
        policy: policy.map(|p| p.text),
        restrictions,
    })
}

/// The deployment's policy, if one is set (else geography is off).
pub fn policy(conn: &Connection) -> Result<Option<Policy>> {
    let text: Option<String> = conn
        .query_row("SELECT text FROM geo_policy WHERE id = 1", [], |r| r.get(0))
        .optional()?;
    text.map(|t| Policy::parse(&t)).transpose()
}

/// Sets the deployment's policy (checked first), audited as `actor`'s.
pub fn set_policy(conn: &Connection, actor: &str, text: &str) -> Result<Policy> {
    let policy = Policy::parse(text)?;
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT INTO geo_policy(id, text) VALUES (1, ?1) ON CONFLICT(id) DO UPDATE SET text = ?1",
        [text],
    )?;
    let digest = {
        use sha2::Digest;
        data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(text.as_bytes()))
    };
    audit::append(
        &tx,
        &audit::Event {
            actor,
            action: "geo.policy.set",
            target: "geo_policy",
            purpose: "operations",
            detail: serde_json::json!({ "sha256": digest, "default": policy.default }),
        },
    )?;
    tx.commit()?;
    Ok(policy)
}

/// The jurisdiction a record carries: the one stored with it, else the
/// deployment default (every record stored before geography existed).
pub fn record_jurisdiction(
    conn: &Connection,
    policy: &Policy,
    record_id: &str,
) -> Result<Jurisdiction> {
    let stored: Option<String> = conn
        .query_row(
            "SELECT jurisdiction FROM record_jurisdictions WHERE record_id = ?1",
            [record_id],
            |r| r.get(0),
        )
        .optional()?;
    match stored {
        Some(s) => Jurisdiction::parse(&s),
        None => Ok(policy.default.clone()),
    }
}

/// Every jurisdiction `patient_id`'s records carry (the default for those
/// stored without one).
pub fn patient_jurisdictions(
    conn: &Connection,
    policy: &Policy,
    patient_id: &str,
) -> Result<Vec<Jurisdiction>> {
    let mut q = conn.prepare(
        "SELECT DISTINCT COALESCE(j.jurisdiction, '') FROM records r
         LEFT JOIN record_jurisdictions j ON j.record_id = r.record_id
         WHERE r.patient_id = ?1",
    )?;
    let mut out = q
        .query_map([patient_id], |r| r.get::<_, String>(0))?
        .map(|s| {
            let s = s?;
            if s.is_empty() {
                Ok(policy.default.clone())
            } else {
                Jurisdiction::parse(&s)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

/// Records that `record_id` carries `jurisdiction` (the first one stored
/// stays: a record keeps its organisation's jurisdiction across versions).
pub(crate) fn remember(conn: &Connection, record_id: &str, jurisdiction: &str) -> Result<()> {
    conn.execute(
        "INSERT OR IGNORE INTO record_jurisdictions(record_id, jurisdiction) VALUES (?1, ?2)",
        [record_id, jurisdiction],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(s: &str) -> Jurisdiction {
        Jurisdiction::parse(s).unwrap()
    }

    #[test]
    fn codes_are_checked_and_named() {
        assert_eq!(j("de").as_str(), "DE");
        assert_eq!(j("US-CA").country(), "US");
        for bad in ["XX", "DEU", "", "US-", "US-CALI", "U$"] {
            let e = Jurisdiction::parse(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}` is not a jurisdiction")), "{e}");
        }
        let b = j("US-CA").to_bytes8();
        assert_eq!(Jurisdiction::from_bytes8(&b).unwrap(), Some(j("US-CA")));
        assert_eq!(Jurisdiction::from_bytes8(&[0; 8]).unwrap(), None);
    }

    #[test]
    fn the_example_parses_and_bad_policies_are_named() {
        let p = Policy::parse(EXAMPLE).unwrap();
        assert_eq!(p.default, j("US"));
        assert_eq!(p.organisation("charite").unwrap(), j("DE"));
        assert!(
            p.organisation("nowhere")
                .unwrap_err()
                .to_string()
                .contains("charite, mayo")
        );
        for (text, named) in [
            ("default = \"ZZ\"", "`ZZ` is no ISO 3166-1 country code"),
            (
                "default = \"US\"\n[[allow]]\nreader = \"EEA\"\nrecord = \"DE\"",
                "[[allow]] #1: `EEA` is neither a group of [groups] (none defined)",
            ),
            (
                "default = \"US\"\n[groups]\nEU = [\"DE\", \"QQ\"]",
                "group `EU`: `QQ` is not a jurisdiction",
            ),
            (
                "default = \"US\"\n[groups]\nDE = [\"DE\"]",
                "group `DE` has the name of a jurisdiction",
            ),
            (
                "default = \"US\"\ncross_border = \"maybe\"",
                "unknown variant",
            ),
            ("default = \"US\"\ncolour = 1", "unknown field"),
        ] {
            let e = Policy::parse(text).unwrap_err().to_string();
            assert!(e.contains(named), "{text}: {e}");
        }
    }

    #[test]
    fn reads_are_decided_by_the_deployment_then_narrowed_by_the_patient() {
        let p = Policy::parse(EXAMPLE).unwrap();
        // Domestic, subdivisions included.
        let d = p.decide_read(&j("US-CA"), &j("US-MN"), DOMESTIC_READS_ONLY, false);
        assert!(d.allowed && !d.cross_border && d.rule == "domestic");
        // No rule: refused, naming both and the rule.
        let d = p.decide_read(&j("US"), &j("DE"), 0, false);
        assert!(!d.allowed && d.cross_border);
        let msg = d.refusal("dr-x", "reading Observation/1");
        assert!(msg.contains("(jurisdiction US)") && msg.contains("(jurisdiction DE)"));
        assert!(msg.contains("no [[allow]] rule lets US read DE"), "{msg}");
        // An explicit rule allows, and says which.
        let d = p.decide_read(&j("FR"), &j("DE"), 0, false);
        assert!(d.allowed && d.cross_border);
        assert!(d.rule.contains("[[allow]] #1"), "{}", d.rule);
        // The patient narrows what the deployment allows...
        let d = p.decide_read(&j("FR"), &j("DE"), DOMESTIC_READS_ONLY, false);
        assert!(!d.allowed && d.rule.contains("the patient's restriction"));
        // ...and no bit of theirs widens what it refuses.
        for bits in 0..=3u8 {
            assert!(!p.decide_read(&j("US"), &j("DE"), bits, false).allowed);
        }
        // An emergency crosses, flagged; unless the deployment refuses it.
        let d = p.decide_read(&j("US"), &j("DE"), DOMESTIC_READS_ONLY, true);
        assert!(d.allowed && d.review && d.rule.starts_with("emergency"));
        let strict = Policy::parse("default = \"US\"\nemergency = \"refuse\"").unwrap();
        assert!(!strict.decide_read(&j("US"), &j("DE"), 0, true).allowed);
        let open = Policy::parse("default = \"US\"\ncross_border = \"allow\"").unwrap();
        assert!(open.decide_read(&j("US"), &j("DE"), 0, false).allowed);
        assert!(
            !open
                .decide_read(&j("US"), &j("DE"), DOMESTIC_READS_ONLY, false)
                .allowed
        );
    }

    #[test]
    fn research_views_take_records_by_rule_and_the_patients_choice() {
        let p = Policy::parse(EXAMPLE).unwrap();
        assert!(p.research_allows(&j("US-CA"), &j("US"), NO_CROSS_BORDER_RESEARCH));
        assert!(p.research_allows(&j("DE"), &j("FR"), 0));
        assert!(!p.research_allows(&j("DE"), &j("FR"), NO_CROSS_BORDER_RESEARCH));
        assert!(!p.research_allows(&j("DE"), &j("US"), 0));
    }
}
