//! What a grant covers, in the contract's terms: an access level, purposes
//! of use and record kinds; and the words a refusal uses for each of the
//! contract's `DENY_*` codes.

use crate::{Error, Result};

/// The record kinds, in bit order: the FHIR resource types cohort stores
/// (`records::fhir::KINDS`, in the same order; a test holds them
/// equal), as the contract numbers them.
pub const KINDS: [&str; 5] = [
    "Patient",
    "Observation",
    "Condition",
    "Encounter",
    "MedicationRequest",
];

/// An access level, ordered: each includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// The record kinds of a patient summary (Patient, Condition,
    /// MedicationRequest): `CohortAccess.SUMMARY_KINDS`.
    Summary = 1,
    /// Every kind of record.
    Read = 2,
    /// Read every kind and add versions.
    Write = 3,
}

impl Level {
    /// The contract's number for it.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The level with the contract's number `code`.
    pub fn from_code(code: u8) -> Option<Level> {
        [Level::Summary, Level::Read, Level::Write]
            .into_iter()
            .find(|l| l.code() == code)
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Level::Summary => "summary",
            Level::Read => "read",
            Level::Write => "write",
        }
    }
}

impl std::str::FromStr for Level {
    type Err = Error;
    fn from_str(s: &str) -> Result<Level> {
        match s.to_ascii_lowercase().as_str() {
            "summary" => Ok(Level::Summary),
            "read" | "read-all" => Ok(Level::Read),
            "write" => Ok(Level::Write),
            _ => Err(Error::Invalid(format!(
                "`{s}` is not an access level: use summary (the patient summary's kinds: {}), read (every kind) or write (read and add versions)",
                summary_types().join(", ")
            ))),
        }
    }
}

/// A purpose of use a grant may allow (HIPAA's treatment, payment and
/// health-care operations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    /// Care of the patient.
    Treatment = 1,
    /// Billing and claims.
    Payment = 2,
    /// Health-care operations (quality, audit, administration).
    Operations = 4,
}

impl Purpose {
    /// Every purpose.
    pub const ALL: [Purpose; 3] = [Purpose::Treatment, Purpose::Payment, Purpose::Operations];

    /// The contract's bit for it.
    pub fn bit(self) -> u8 {
        self as u8
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Purpose::Treatment => "treatment",
            Purpose::Payment => "payment",
            Purpose::Operations => "operations",
        }
    }

    /// The purposes whose bits are set in `mask`.
    pub fn names(mask: u8) -> Vec<&'static str> {
        Purpose::ALL
            .into_iter()
            .filter(|p| mask & p.bit() != 0)
            .map(Purpose::name)
            .collect()
    }

    /// The bits of a comma-separated list of purposes.
    pub fn mask(list: &str) -> Result<u8> {
        let mut mask = 0;
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            mask |= part.parse::<Purpose>()?.bit();
        }
        if mask == 0 {
            return Err(Error::Invalid(
                "name at least one purpose: treatment, payment or operations".into(),
            ));
        }
        Ok(mask)
    }
}

impl std::str::FromStr for Purpose {
    type Err = Error;
    fn from_str(s: &str) -> Result<Purpose> {
        Purpose::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "`{s}` is not a purpose of use for clinical records: use treatment, payment or operations"
                ))
            })
    }
}

/// Every kind (the contract's `ALL_KINDS`).
pub const ALL_KINDS: u32 = u32::MAX;

/// The kind bit of a FHIR resource type: its place in [`KINDS`].
pub fn kind_of(resource_type: &str) -> Result<u32> {
    KINDS
        .iter()
        .position(|t| *t == resource_type)
        .map(|i| 1u32 << i)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "`{resource_type}` is not a record type cohort stores: {}",
                KINDS.join(", ")
            ))
        })
}

/// The kind bits of a comma-separated list of resource types (`all`: every kind).
pub fn kinds(list: &str) -> Result<u32> {
    if list.trim().eq_ignore_ascii_case("all") {
        return Ok(ALL_KINDS);
    }
    let mut mask = 0;
    for t in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        mask |= kind_of(t)?;
    }
    if mask == 0 {
        return Err(Error::Invalid(
            "name at least one record type, or `all`".into(),
        ));
    }
    Ok(mask)
}

/// The resource types whose bits are set in `mask`.
pub fn kind_names(mask: u32) -> Vec<&'static str> {
    if mask == ALL_KINDS {
        return vec!["all"];
    }
    KINDS
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, t)| *t)
        .collect()
}

/// The kinds a summary grant covers.
pub const SUMMARY_KINDS: u32 = 1 | 4 | 16;

fn summary_types() -> Vec<&'static str> {
    kind_names(SUMMARY_KINDS)
}

/// What a refusal says for the contract's `DENY_*` code: the missing
/// authorization, by name.
pub fn refusal(code: u8, actor: &str, patient: &str, wanted: &str) -> String {
    match code {
        1 => format!(
            "patient {patient} is not registered on chain, so no one holds a grant to their records"
        ),
        2 => format!(
            "`{actor}` holds no grant from patient {patient} (the patient grants one with `cohort access grant`)"
        ),
        3 => format!("`{actor}`'s grant from patient {patient} has expired"),
        4 => format!("`{actor}`'s grant from patient {patient} was revoked"),
        5 => format!("`{actor}` has no provider credential attested by an issuer"),
        6 => format!("`{actor}`'s provider credential has expired"),
        7 => format!("`{actor}`'s provider credential was revoked"),
        8 => format!(
            "`{actor}`'s grant from patient {patient} does not reach the level {wanted} needs"
        ),
        9 => format!(
            "`{actor}`'s grant from patient {patient} does not cover the purpose of {wanted}"
        ),
        10 => format!(
            "`{actor}`'s grant from patient {patient} does not cover the record types of {wanted}"
        ),
        11 => format!(
            "`{actor}`'s emergency access to patient {patient} has ended and no grant covers {wanted}"
        ),
        12 => {
            format!("`{actor}` is neither patient {patient}, a delegate of theirs, nor a provider")
        }
        13 => format!(
            "`{actor}` no longer controls patient {patient}'s records (their control was recovered to another key)"
        ),
        14 => format!(
            "an auditor found the recovery of patient {patient}'s key unjustified: `{actor}` acts for no one until a new recovery completes"
        ),
        other => format!(
            "the chain refused `{actor}` access to patient {patient}'s records (reason {other})"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_supported_types_and_the_contract() {
        assert_eq!(kind_of("Patient").unwrap(), 1);
        assert_eq!(kind_of("Observation").unwrap(), 2);
        assert_eq!(kind_of("Condition").unwrap(), 4);
        assert_eq!(kind_of("Encounter").unwrap(), 8);
        assert_eq!(kind_of("MedicationRequest").unwrap(), 16);
        assert!(kind_of("Claim").unwrap_err().to_string().contains("Claim"));
        assert_eq!(kinds("Condition, Observation").unwrap(), 6);
        assert_eq!(kinds("all").unwrap(), ALL_KINDS);
        assert_eq!(
            kind_names(SUMMARY_KINDS),
            ["Patient", "Condition", "MedicationRequest"]
        );
        assert_eq!(Purpose::mask("treatment,payment").unwrap(), 3);
        assert!(Purpose::mask("research").is_err());
        assert!(Purpose::mask("").is_err());
        assert_eq!("read".parse::<Level>().unwrap(), Level::Read);
        assert!(
            "admin"
                .parse::<Level>()
                .unwrap_err()
                .to_string()
                .contains("summary")
        );
        for code in 2..=14 {
            assert!(refusal(code, "dr-x", "p1", "this read").contains("dr-x"));
        }
    }
}
