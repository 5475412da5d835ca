//! `cohort generate`: a synthetic population as FHIR R4 bundles.
//!
//! The population is shaped like a US one: an age pyramid that includes the
//! over-89s, OMB race and ethnicity categories, real ZIP codes (some in the
//! 3-digit prefixes Safe Harbor must blank), and the direct identifiers that
//! de-identification must later remove (names, addresses, phones, e-mails,
//! SSNs in the never-issued 999 range, MRNs). Conditions carry real ICD-10-CM
//! codes at age- and sex-dependent prevalences; observations carry LOINC codes
//! with values that follow the conditions (HbA1c with diabetes, blood pressure
//! with hypertension, glucose from HbA1c by the ADAG relation); medications
//! carry RxNorm codes.
//!
//! Output is deterministic for a seed: patient `i` draws from its own ChaCha
//! stream, so bundles can be generated in parallel and streamed to disk one
//! window at a time (constant memory for any N).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{Duration, NaiveDate, NaiveDateTime};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::{Value, json};

use crate::records::fhir::{ICD10CM, LOINC, RXNORM, SSN, US_CORE_ETHNICITY, US_CORE_RACE};
use crate::{Error, Result};

/// What to generate.
#[derive(Debug, Clone)]
pub struct Options {
    /// Number of patients.
    pub patients: u64,
    /// Seed: the same seed gives byte-identical output.
    pub seed: u64,
    /// Directory the bundles are written to.
    pub out: PathBuf,
    /// Patients per bundle file.
    pub per_bundle: u64,
    /// The "today" of the population (ages and dates are relative to it).
    pub as_of: NaiveDate,
    /// Show a progress bar.
    pub progress: bool,
}

impl Options {
    /// `patients` patients from `seed` into `out`, with the defaults
    /// (100 patients per bundle, as of 2026-01-01, no progress bar).
    pub fn new(patients: u64, seed: u64, out: impl Into<PathBuf>) -> Self {
        Options {
            patients,
            seed,
            out: out.into(),
            per_bundle: 100,
            as_of: NaiveDate::from_ymd_opt(2026, 1, 1).expect("valid date"),
            progress: false,
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Patients written.
    pub patients: u64,
    /// Bundle files written.
    pub bundles: u64,
    /// Resources written.
    pub resources: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Patients per second.
    pub patients_per_second: f64,
    /// Peak resident memory of this process so far, in bytes (Linux only):
    /// stays flat as N grows, because bundles are streamed.
    pub peak_rss_bytes: Option<u64>,
}

/// The process's peak resident set size (`VmHWM`), where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Generates the population and writes `bundle-NNNNNNN.json` files.
pub fn generate(opts: &Options) -> Result<Report> {
    if opts.per_bundle == 0 {
        return Err(Error::Invalid("--per-bundle must be at least 1".into()));
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io("creating", &opts.out, e))?;
    let started = Instant::now();
    let bundles = opts.patients.div_ceil(opts.per_bundle);
    let bar = if opts.progress {
        indicatif::ProgressBar::new(opts.patients)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "generate {bar:40} {pos}/{len} patients {per_sec} eta {eta}",
        )
        .expect("valid template"),
    );
    let window = (rayon::current_num_threads() as u64 * 2).max(2);
    let (mut resources, mut bytes) = (0u64, 0u64);
    let mut start = 0;
    while start < bundles {
        let end = (start + window).min(bundles);
        let made: Vec<(u64, Vec<u8>, u64)> = (start..end)
            .into_par_iter()
            .map(|b| {
                let first = b * opts.per_bundle;
                let last = (first + opts.per_bundle).min(opts.patients);
                let (bundle, n) = bundle(opts, b, first..last);
                (b, serde_json::to_vec(&bundle).expect("serializable"), n)
            })
            .collect();
        for (b, body, n) in made {
            write_bundle(&opts.out, b, &body)?;
            resources += n;
            bytes += body.len() as u64;
            let first = b * opts.per_bundle;
            bar.inc((first + opts.per_bundle).min(opts.patients) - first);
        }
        start = end;
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    Ok(Report {
        patients: opts.patients,
        bundles,
        resources,
        bytes,
        seconds,
        patients_per_second: opts.patients as f64 / seconds.max(1e-9),
        peak_rss_bytes: peak_rss_bytes(),
    })
}

fn write_bundle(dir: &Path, index: u64, body: &[u8]) -> Result<()> {
    let path = dir.join(format!("bundle-{:07}.json", index + 1));
    let mut f = std::fs::File::create(&path).map_err(|e| Error::io("creating", &path, e))?;
    f.write_all(body)
        .map_err(|e| Error::io("writing", &path, e))
}

fn bundle(opts: &Options, index: u64, patients: std::ops::Range<u64>) -> (Value, u64) {
    let mut entries = Vec::new();
    for i in patients {
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        rng.set_stream(i);
        entries.extend(patient_resources(&mut rng, opts.as_of));
    }
    let n = entries.len() as u64;
    let entry: Vec<Value> = entries
        .into_iter()
        .map(|r| json!({ "fullUrl": format!("urn:uuid:{}", r["id"].as_str().expect("id")), "resource": r }))
        .collect();
    let id = format!("cohort-synthetic-{}-{}", opts.seed, index + 1);
    (
        json!({ "resourceType": "Bundle", "id": id, "type": "collection", "entry": entry }),
        n,
    )
}

// ---------------------------------------------------------------- tables --

/// Age bands (years, inclusive) and their share of the US population.
const AGE_BANDS: &[((u32, u32), f64)] = &[
    ((0, 4), 0.057),
    ((5, 17), 0.163),
    ((18, 24), 0.092),
    ((25, 34), 0.135),
    ((35, 44), 0.130),
    ((45, 54), 0.121),
    ((55, 64), 0.127),
    ((65, 74), 0.100),
    ((75, 84), 0.050),
    ((85, 89), 0.015),
    ((90, 104), 0.010),
];

/// OMB race categories (CDC race codes) and approximate shares.
const RACES: &[((&str, &str), f64)] = &[
    (("2106-3", "White"), 0.60),
    (("2054-5", "Black or African American"), 0.13),
    (("2028-9", "Asian"), 0.06),
    (("1002-5", "American Indian or Alaska Native"), 0.011),
    (
        ("2076-8", "Native Hawaiian or Other Pacific Islander"),
        0.002,
    ),
    (("2131-1", "Other Race"), 0.197),
];

/// ZIP code, city, state, area code, weight. Includes 3-digit prefixes whose
/// population is 20,000 or fewer (036, 059, 692, 821, 879, 893), which Safe
/// Harbor requires to be replaced by 000.
/// ZIP code, city, state, telephone area code.
type Place = (&'static str, &'static str, &'static str, &'static str);

const PLACES: &[(Place, f64)] = &[
    (("10027", "New York", "NY", "212"), 8.0),
    (("90011", "Los Angeles", "CA", "323"), 6.0),
    (("60614", "Chicago", "IL", "312"), 5.0),
    (("77004", "Houston", "TX", "713"), 4.5),
    (("85004", "Phoenix", "AZ", "602"), 3.5),
    (("19104", "Philadelphia", "PA", "215"), 3.0),
    (("78205", "San Antonio", "TX", "210"), 3.0),
    (("92101", "San Diego", "CA", "619"), 3.0),
    (("75201", "Dallas", "TX", "214"), 3.0),
    (("94110", "San Francisco", "CA", "415"), 2.5),
    (("98101", "Seattle", "WA", "206"), 2.5),
    (("80202", "Denver", "CO", "303"), 2.5),
    (("02139", "Cambridge", "MA", "617"), 2.0),
    (("30303", "Atlanta", "GA", "404"), 2.0),
    (("33130", "Miami", "FL", "305"), 2.0),
    (("48201", "Detroit", "MI", "313"), 2.0),
    (("55401", "Minneapolis", "MN", "612"), 1.5),
    (("97201", "Portland", "OR", "503"), 1.5),
    (("37203", "Nashville", "TN", "615"), 1.5),
    (("21201", "Baltimore", "MD", "410"), 1.5),
    (("43215", "Columbus", "OH", "614"), 1.5),
    (("46204", "Indianapolis", "IN", "317"), 1.5),
    (("28202", "Charlotte", "NC", "704"), 1.5),
    (("53202", "Milwaukee", "WI", "414"), 1.0),
    (("87102", "Albuquerque", "NM", "505"), 1.0),
    (("73102", "Oklahoma City", "OK", "405"), 1.0),
    (("64106", "Kansas City", "MO", "816"), 1.0),
    (("84101", "Salt Lake City", "UT", "801"), 1.0),
    (("96813", "Honolulu", "HI", "808"), 0.6),
    (("99501", "Anchorage", "AK", "907"), 0.5),
    (("03601", "Acworth", "NH", "603"), 0.1),
    (("05901", "Averill", "VT", "802"), 0.1),
    (("69201", "Valentine", "NE", "402"), 0.1),
    (("82190", "Yellowstone National Park", "WY", "307"), 0.05),
    (("87901", "Truth or Consequences", "NM", "575"), 0.1),
    (("89301", "Ely", "NV", "775"), 0.1),
];

const FEMALE_NAMES: &[&str] = &[
    "Mary",
    "Patricia",
    "Jennifer",
    "Linda",
    "Elizabeth",
    "Barbara",
    "Susan",
    "Jessica",
    "Sarah",
    "Karen",
    "Lisa",
    "Nancy",
    "Betty",
    "Sandra",
    "Margaret",
    "Ashley",
    "Kimberly",
    "Emily",
    "Donna",
    "Michelle",
    "Carol",
    "Amanda",
    "Melissa",
    "Deborah",
    "Stephanie",
    "Maria",
    "Sofia",
    "Mei",
    "Aaliyah",
    "Priya",
];
const MALE_NAMES: &[&str] = &[
    "James",
    "Robert",
    "John",
    "Michael",
    "David",
    "William",
    "Richard",
    "Joseph",
    "Thomas",
    "Christopher",
    "Charles",
    "Daniel",
    "Matthew",
    "Anthony",
    "Mark",
    "Donald",
    "Steven",
    "Andrew",
    "Paul",
    "Joshua",
    "Kenneth",
    "Kevin",
    "Brian",
    "George",
    "Timothy",
    "Jose",
    "Luis",
    "Wei",
    "Malik",
    "Arjun",
];
const SURNAMES: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Nguyen",
    "Chen",
    "Patel",
    "Kim",
    "Okafor",
];
const STREETS: &[&str] = &[
    "Main St",
    "Oak Ave",
    "Maple Dr",
    "Cedar Ln",
    "Pine St",
    "Elm St",
    "Washington Ave",
    "Lake Rd",
    "Hill St",
    "Park Ave",
    "Sunset Blvd",
    "River Rd",
    "Church St",
    "Highland Ave",
    "Spring St",
    "Mill Rd",
];

/// Conditions: ICD-10-CM code and display.
const DIABETES: (&str, &str) = ("E11.9", "Type 2 diabetes mellitus without complications");
const HYPERTENSION: (&str, &str) = ("I10", "Essential (primary) hypertension");
const ASTHMA: (&str, &str) = ("J45.909", "Unspecified asthma, uncomplicated");
const HYPERLIPIDEMIA: (&str, &str) = ("E78.5", "Hyperlipidemia, unspecified");
const OBESITY: (&str, &str) = ("E66.9", "Obesity, unspecified");
const DEPRESSION: (&str, &str) = (
    "F32.9",
    "Major depressive disorder, single episode, unspecified",
);
const COPD: (&str, &str) = (
    "J44.9",
    "Chronic obstructive pulmonary disease, unspecified",
);
const CKD3: (&str, &str) = ("N18.30", "Chronic kidney disease, stage 3 unspecified");
const CAD: (&str, &str) = (
    "I25.10",
    "Atherosclerotic heart disease of native coronary artery without angina pectoris",
);
const HYPOTHYROIDISM: (&str, &str) = ("E03.9", "Hypothyroidism, unspecified");
const HIV: (&str, &str) = ("B20", "Human immunodeficiency virus [HIV] disease");

/// Medications: RxNorm code and display.
const METFORMIN: (&str, &str) = ("861007", "metformin hydrochloride 500 MG Oral Tablet");
const LISINOPRIL: (&str, &str) = ("314076", "lisinopril 10 MG Oral Tablet");
const AMLODIPINE: (&str, &str) = ("197361", "amlodipine 5 MG Oral Tablet");
const HCTZ: (&str, &str) = ("310798", "hydrochlorothiazide 25 MG Oral Tablet");
const ATORVASTATIN: (&str, &str) = ("617310", "atorvastatin 20 MG Oral Tablet");
const ALBUTEROL: (&str, &str) = (
    "745679",
    "200 ACTUAT albuterol 0.09 MG/ACTUAT Metered Dose Inhaler",
);
const SERTRALINE: (&str, &str) = ("312940", "sertraline 50 MG Oral Tablet");

// ------------------------------------------------------------- sampling --

fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [(T, f64)]) -> &'a T {
    let total: f64 = items.iter().map(|(_, w)| w).sum();
    let mut x = rng.random_range(0.0..total);
    for (item, w) in items {
        if x < *w {
            return item;
        }
        x -= w;
    }
    &items[items.len() - 1].0
}

fn one<'a>(rng: &mut ChaCha8Rng, items: &[&'a str]) -> &'a str {
    items[rng.random_range(0..items.len())]
}

fn normal(rng: &mut ChaCha8Rng, mean: f64, sd: f64, lo: f64, hi: f64) -> f64 {
    let x = Normal::new(mean, sd)
        .expect("finite parameters")
        .sample(rng);
    (x.clamp(lo, hi) * 10.0).round() / 10.0
}

fn uuid(rng: &mut ChaCha8Rng) -> String {
    let mut b: [u8; 16] = rng.random();
    b[6] = (b[6] & 0x0f) | 0x40; // version 4 layout
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = data_encoding::HEXLOWER.encode(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Health state drawn for one patient; the resources are rendered from it.
struct Person {
    id: String,
    female: bool,
    age: u32,
    birth: NaiveDate,
    obese: bool,
    conditions: Vec<((&'static str, &'static str), NaiveDate)>,
}

impl Person {
    fn has(&self, c: (&str, &str)) -> bool {
        self.conditions.iter().any(|(x, _)| x.0 == c.0)
    }
}

fn patient_resources(rng: &mut ChaCha8Rng, as_of: NaiveDate) -> Vec<Value> {
    let id = uuid(rng);
    let female = rng.random_bool(0.505);
    let &(lo, hi) = pick(rng, AGE_BANDS);
    let age = rng.random_range(lo..=hi);
    let birth = as_of - Duration::days(i64::from(age) * 365 + rng.random_range(0..365));
    let adult = age >= 18;
    let obese = rng.random_bool(if adult { 0.40 } else { 0.19 });
    let mut p = Person {
        id,
        female,
        age,
        birth,
        obese,
        conditions: Vec::new(),
    };
    draw_conditions(rng, &mut p, as_of);

    let mut out = vec![patient_resource(rng, &p)];
    out.extend(p.conditions.iter().map(|&(code, onset)| {
        let id = uuid(rng);
        json!({
            "resourceType": "Condition", "id": id,
            "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active" }] },
            "verificationStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed" }] },
            "code": { "coding": [{ "system": ICD10CM, "code": code.0, "display": code.1 }], "text": code.1 },
            "subject": { "reference": format!("urn:uuid:{}", p.id) },
            "onsetDateTime": onset.format("%Y-%m-%d").to_string(),
        })
    }));

    // Encounters over the last three years; sicker and older people come more often.
    let visits = 1 + p.conditions.len() / 2 + rng.random_range(0..3) + usize::from(age >= 65);
    let mut first_labs_done = false;
    for _ in 0..visits.min(8) {
        let day = as_of - Duration::days(rng.random_range(1..3 * 365));
        let start = day
            .and_hms_opt(rng.random_range(8..17), 15 * rng.random_range(0..4), 0)
            .expect("valid time");
        let roll = rng.random_range(0.0..1.0);
        let (class, class_display, snomed, snomed_display, minutes) = if roll < 0.85 {
            (
                "AMB",
                "ambulatory",
                "185349003",
                "Encounter for check up (procedure)",
                30,
            )
        } else if roll < 0.95 {
            (
                "EMER",
                "emergency",
                "50849002",
                "Emergency room admission (procedure)",
                240,
            )
        } else {
            (
                "IMP",
                "inpatient encounter",
                "32485007",
                "Hospital admission (procedure)",
                3 * 24 * 60,
            )
        };
        let enc_id = uuid(rng);
        out.push(json!({
            "resourceType": "Encounter", "id": enc_id, "status": "finished",
            "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": class, "display": class_display },
            "type": [{ "coding": [{ "system": "http://snomed.info/sct", "code": snomed, "display": snomed_display }] }],
            "subject": { "reference": format!("urn:uuid:{}", p.id) },
            "period": { "start": iso(start), "end": iso(start + Duration::minutes(minutes)) },
        }));
        out.extend(vitals(rng, &p, &enc_id, start));
        if adult {
            out.extend(labs(rng, &p, &enc_id, start, !first_labs_done));
            first_labs_done = true;
        }
    }
    out.extend(medications(rng, &p));
    out
}

fn draw_conditions(rng: &mut ChaCha8Rng, p: &mut Person, as_of: NaiveDate) {
    let a = p.age;
    let adult = a >= 18;
    let band = |young: f64, mid: f64, old: f64| {
        if a < 45 {
            young
        } else if a < 65 {
            mid
        } else {
            old
        }
    };
    let add = |rng: &mut ChaCha8Rng, p: &mut Person, c, prob| add_condition(rng, p, as_of, c, prob);
    if p.obese && adult {
        add(rng, p, OBESITY, 1.0);
    }
    let obese_factor = if p.obese { 2.0 } else { 1.0 };
    if adult {
        add(rng, p, DIABETES, band(0.035, 0.12, 0.20) * obese_factor);
        add(
            rng,
            p,
            HYPERTENSION,
            band(0.10, 0.35, 0.55) * if p.obese { 1.4 } else { 1.0 },
        );
        add(rng, p, HYPERLIPIDEMIA, band(0.06, 0.28, 0.38));
        add(rng, p, DEPRESSION, if p.female { 0.10 } else { 0.06 });
        add(rng, p, HYPOTHYROIDISM, if p.female { 0.07 } else { 0.02 });
        add(rng, p, HIV, 0.004);
    }
    add(rng, p, ASTHMA, 0.08);
    if a >= 45 {
        add(rng, p, COPD, band(0.0, 0.05, 0.09));
    }
    if a >= 55 {
        add(rng, p, CAD, if p.female { 0.05 } else { 0.10 });
    }
    if a >= 60 {
        let diabetic = p.has(DIABETES);
        add(rng, p, CKD3, 0.08 + if diabetic { 0.15 } else { 0.0 });
    }
}

/// Adds `c` with probability `prob`, with an onset after the 18th birthday
/// (or the first for children) and within the last 15 years.
fn add_condition(
    rng: &mut ChaCha8Rng,
    p: &mut Person,
    as_of: NaiveDate,
    c: (&'static str, &'static str),
    prob: f64,
) {
    if prob <= 0.0 || !rng.random_bool(prob.min(0.95)) {
        return;
    }
    let years = if p.age >= 18 { 18 } else { 1 };
    let earliest = (p.birth + Duration::days(years * 365)).max(as_of - Duration::days(15 * 365));
    let latest = as_of - Duration::days(30);
    let span = (latest - earliest).num_days().max(1);
    p.conditions
        .push((c, earliest + Duration::days(rng.random_range(0..span))));
}

fn patient_resource(rng: &mut ChaCha8Rng, p: &Person) -> Value {
    let given = one(rng, if p.female { FEMALE_NAMES } else { MALE_NAMES });
    let middle = one(rng, if p.female { FEMALE_NAMES } else { MALE_NAMES });
    let family = one(rng, SURNAMES);
    let &(zip, city, state, area) = pick(rng, PLACES);
    let &(race_code, race) = pick(rng, RACES);
    let hispanic = rng.random_bool(0.19);
    let (eth_code, eth) = if hispanic {
        ("2135-2", "Hispanic or Latino")
    } else {
        ("2186-5", "Not Hispanic or Latino")
    };
    let phone = format!("({area}) 555-01{:02}", rng.random_range(0..100));
    let ssn = format!(
        "999-{:02}-{:04}",
        rng.random_range(10..100),
        rng.random_range(1..10000)
    );
    let mrn = format!("MRN{:08}", rng.random_range(0..100_000_000u32));
    let line = format!("{} {}", rng.random_range(1..9999), one(rng, STREETS));
    let email = format!(
        "{}.{}{}@example.com",
        given.to_lowercase(),
        family.to_lowercase(),
        rng.random_range(1..999)
    );
    let omb = |url: &str, code: &str, display: &str| {
        json!({ "url": url, "extension": [
            { "url": "ombCategory", "valueCoding": { "system": "urn:oid:2.16.840.1.113883.6.238", "code": code, "display": display } },
            { "url": "text", "valueString": display },
        ]})
    };
    json!({
        "resourceType": "Patient", "id": p.id,
        "extension": [omb(US_CORE_RACE, race_code, race), omb(US_CORE_ETHNICITY, eth_code, eth)],
        "identifier": [
            { "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR", "display": "Medical Record Number" }] },
              "system": "urn:cohort:mrn", "value": mrn },
            { "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "SS", "display": "Social Security Number" }] },
              "system": SSN, "value": ssn },
        ],
        "name": [{ "use": "official", "family": family, "given": [given, &middle[..1]],
                   "prefix": [if p.female { "Ms." } else { "Mr." }] }],
        "telecom": [
            { "system": "phone", "value": phone, "use": "home" },
            { "system": "email", "value": email },
        ],
        "gender": if p.female { "female" } else { "male" },
        "birthDate": p.birth.format("%Y-%m-%d").to_string(),
        "address": [{ "line": [line], "city": city, "state": state, "postalCode": zip, "country": "US" }],
        "maritalStatus": { "text": if p.age >= 25 && rng.random_bool(0.5) { "Married" } else { "Never Married" } },
    })
}

fn iso(t: NaiveDateTime) -> String {
    t.and_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Where and when a measurement was taken.
struct Visit<'a> {
    patient: &'a Person,
    encounter: &'a str,
    at: NaiveDateTime,
}

fn observation(
    rng: &mut ChaCha8Rng,
    visit: &Visit<'_>,
    loinc: (&str, &str),
    category: &str,
    value: f64,
    unit: &str,
) -> Value {
    json!({
        "resourceType": "Observation", "id": uuid(rng), "status": "final",
        "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category }] }],
        "code": { "coding": [{ "system": LOINC, "code": loinc.0, "display": loinc.1 }], "text": loinc.1 },
        "subject": { "reference": format!("urn:uuid:{}", visit.patient.id) },
        "encounter": { "reference": format!("urn:uuid:{}", visit.encounter) },
        "effectiveDateTime": iso(visit.at),
        "valueQuantity": { "value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit },
    })
}

fn vitals(rng: &mut ChaCha8Rng, p: &Person, enc: &str, at: NaiveDateTime) -> Vec<Value> {
    let visit = Visit {
        patient: p,
        encounter: enc,
        at,
    };
    let age = f64::from(p.age);
    let height = if p.age >= 18 {
        if p.female {
            normal(rng, 161.8, 7.0, 140.0, 190.0)
        } else {
            normal(rng, 175.5, 7.5, 150.0, 205.0)
        }
    } else {
        normal(rng, 75.0 + 6.0 * age.min(17.0), 6.0, 45.0, 195.0)
    };
    let bmi = match (p.age >= 18, p.obese) {
        (true, true) => normal(rng, 34.5, 4.0, 30.0, 60.0),
        (true, false) => normal(rng, 25.0, 2.7, 17.0, 29.9),
        (false, true) => normal(rng, 27.0, 3.0, 22.0, 40.0),
        (false, false) => normal(rng, 17.5, 2.0, 12.0, 24.0),
    };
    let weight = ((bmi * (height / 100.0).powi(2)) * 10.0).round() / 10.0;
    let (sys, dia) = if p.age < 18 {
        (
            normal(rng, 105.0, 8.0, 80.0, 140.0),
            normal(rng, 65.0, 7.0, 40.0, 90.0),
        )
    } else if p.has(HYPERTENSION) {
        (
            normal(rng, 142.0, 14.0, 110.0, 210.0),
            normal(rng, 89.0, 9.0, 60.0, 130.0),
        )
    } else {
        (
            normal(rng, 117.0, 11.0, 85.0, 160.0),
            normal(rng, 75.0, 8.0, 50.0, 100.0),
        )
    };
    let hr = normal(rng, if p.age < 12 { 90.0 } else { 74.0 }, 10.0, 45.0, 150.0);
    let v = "vital-signs";
    vec![
        observation(rng, &visit, ("8302-2", "Body height"), v, height, "cm"),
        observation(rng, &visit, ("29463-7", "Body weight"), v, weight, "kg"),
        observation(
            rng,
            &visit,
            ("39156-5", "Body mass index (BMI) [Ratio]"),
            v,
            bmi,
            "kg/m2",
        ),
        observation(
            rng,
            &visit,
            ("8480-6", "Systolic blood pressure"),
            v,
            sys,
            "mm[Hg]",
        ),
        observation(
            rng,
            &visit,
            ("8462-4", "Diastolic blood pressure"),
            v,
            dia,
            "mm[Hg]",
        ),
        observation(rng, &visit, ("8867-4", "Heart rate"), v, hr, "/min"),
    ]
}

fn labs(rng: &mut ChaCha8Rng, p: &Person, enc: &str, at: NaiveDateTime, first: bool) -> Vec<Value> {
    let visit = Visit {
        patient: p,
        encounter: enc,
        at,
    };
    let mut out = Vec::new();
    let l = "laboratory";
    let diabetic = p.has(DIABETES);
    if diabetic || (first && rng.random_bool(0.4)) {
        let a1c = if diabetic {
            normal(rng, 7.6, 1.3, 5.8, 14.0)
        } else {
            normal(rng, 5.35, 0.35, 4.2, 6.4)
        };
        // ADAG: estimated average glucose (mg/dL) = 28.7 * HbA1c - 46.7.
        let glucose = normal(rng, 28.7 * a1c - 46.7, 15.0, 55.0, 450.0);
        out.push(observation(
            rng,
            &visit,
            ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood"),
            l,
            a1c,
            "%",
        ));
        out.push(observation(
            rng,
            &visit,
            ("2339-0", "Glucose [Mass/volume] in Blood"),
            l,
            glucose,
            "mg/dL",
        ));
    }
    if first && p.age >= 35 {
        let chol = if p.has(HYPERLIPIDEMIA) {
            normal(rng, 238.0, 30.0, 160.0, 400.0)
        } else {
            normal(rng, 186.0, 30.0, 110.0, 280.0)
        };
        out.push(observation(
            rng,
            &visit,
            ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma"),
            l,
            chol,
            "mg/dL",
        ));
    }
    if p.has(CKD3) || (first && p.age >= 65 && rng.random_bool(0.5)) {
        let cr = if p.has(CKD3) {
            normal(rng, 1.7, 0.35, 1.1, 4.0)
        } else if p.female {
            normal(rng, 0.78, 0.15, 0.4, 1.3)
        } else {
            normal(rng, 0.98, 0.18, 0.5, 1.5)
        };
        out.push(observation(
            rng,
            &visit,
            ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma"),
            l,
            cr,
            "mg/dL",
        ));
    }
    out
}

fn medications(rng: &mut ChaCha8Rng, p: &Person) -> Vec<Value> {
    let mut out = Vec::new();
    let mut prescribe = |rng: &mut ChaCha8Rng, cond: (&str, &str), med: (&str, &str), prob: f64| {
        let Some(&(_, onset)) = p.conditions.iter().find(|(c, _)| c.0 == cond.0) else {
            return;
        };
        if rng.random_bool(prob) {
            let authored = onset + Duration::days(rng.random_range(0..60));
            out.push(json!({
                "resourceType": "MedicationRequest", "id": uuid(rng), "status": "active", "intent": "order",
                "medicationCodeableConcept": { "coding": [{ "system": RXNORM, "code": med.0, "display": med.1 }], "text": med.1 },
                "subject": { "reference": format!("urn:uuid:{}", p.id) },
                "authoredOn": authored.format("%Y-%m-%d").to_string(),
            }));
        }
    };
    prescribe(rng, DIABETES, METFORMIN, 0.85);
    prescribe(rng, HYPERTENSION, LISINOPRIL, 0.55);
    prescribe(rng, HYPERTENSION, AMLODIPINE, 0.30);
    prescribe(rng, HYPERTENSION, HCTZ, 0.20);
    prescribe(rng, HYPERLIPIDEMIA, ATORVASTATIN, 0.70);
    prescribe(rng, CAD, ATORVASTATIN, 0.50);
    prescribe(rng, ASTHMA, ALBUTEROL, 0.80);
    prescribe(rng, DEPRESSION, SERTRALINE, 0.60);
    out
}
