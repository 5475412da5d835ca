//! One synthetic patient: their person, conditions at age- and
//! sex-dependent prevalences, encounters with vitals and labs that follow
//! the conditions, and medications, as FHIR resources.

use super::population::{
    AGE_BANDS, ALBUTEROL, AMLODIPINE, ASTHMA, ATORVASTATIN, BMI, CAD, CHOLESTEROL, CKD3, COPD,
    CREATININE, DEPRESSION, DIABETES, DIASTOLIC, FEMALE_NAMES, GLUCOSE, HBA1C, HCTZ, HEART_RATE,
    HEIGHT, HIV, HYPERLIPIDEMIA, HYPERTENSION, HYPOTHYROIDISM, LISINOPRIL, MALE_NAMES, METFORMIN,
    OBESITY, PLACES, RACES, SERTRALINE, STREETS, SURNAMES, SYSTOLIC, WEIGHT,
};
use super::*;

pub(super) fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [(T, f64)]) -> &'a T {
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

pub(super) fn one<'a>(rng: &mut ChaCha8Rng, items: &[&'a str]) -> &'a str {
    items[rng.random_range(0..items.len())]
}

pub(super) fn normal(rng: &mut ChaCha8Rng, mean: f64, sd: f64, lo: f64, hi: f64) -> f64 {
    let x = Normal::new(mean, sd)
        .expect("finite parameters")
        .sample(rng);
    (x.clamp(lo, hi) * 10.0).round() / 10.0
}

pub(super) fn uuid(rng: &mut ChaCha8Rng) -> String {
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
pub(super) struct Person {
    pub(super) id: String,
    pub(super) female: bool,
    pub(super) age: u32,
    pub(super) birth: NaiveDate,
    pub(super) obese: bool,
    pub(super) conditions: Vec<((&'static str, &'static str), NaiveDate)>,
}

impl Person {
    pub(super) fn has(&self, c: (&str, &str)) -> bool {
        self.conditions.iter().any(|(x, _)| x.0 == c.0)
    }
}

pub(super) fn patient_resources(rng: &mut ChaCha8Rng, as_of: NaiveDate) -> Vec<Value> {
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

pub(super) fn draw_conditions(rng: &mut ChaCha8Rng, p: &mut Person, as_of: NaiveDate) {
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
pub(super) fn add_condition(
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

pub(super) fn patient_resource(rng: &mut ChaCha8Rng, p: &Person) -> Value {
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

pub(super) fn iso(t: NaiveDateTime) -> String {
    t.and_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Where and when a measurement was taken.
pub(super) struct Visit<'a> {
    pub(super) patient: &'a Person,
    pub(super) encounter: &'a str,
    pub(super) at: NaiveDateTime,
}

pub(super) fn observation(
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

pub(super) fn vitals(rng: &mut ChaCha8Rng, p: &Person, enc: &str, at: NaiveDateTime) -> Vec<Value> {
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
        observation(rng, &visit, HEIGHT, v, height, "cm"),
        observation(rng, &visit, WEIGHT, v, weight, "kg"),
        observation(rng, &visit, BMI, v, bmi, "kg/m2"),
        observation(rng, &visit, SYSTOLIC, v, sys, "mm[Hg]"),
        observation(rng, &visit, DIASTOLIC, v, dia, "mm[Hg]"),
        observation(rng, &visit, HEART_RATE, v, hr, "/min"),
    ]
}

pub(super) fn labs(
    rng: &mut ChaCha8Rng,
    p: &Person,
    enc: &str,
    at: NaiveDateTime,
    first: bool,
) -> Vec<Value> {
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
        out.push(observation(rng, &visit, HBA1C, l, a1c, "%"));
        out.push(observation(rng, &visit, GLUCOSE, l, glucose, "mg/dL"));
    }
    if first && p.age >= 35 {
        let chol = if p.has(HYPERLIPIDEMIA) {
            normal(rng, 238.0, 30.0, 160.0, 400.0)
        } else {
            normal(rng, 186.0, 30.0, 110.0, 280.0)
        };
        out.push(observation(rng, &visit, CHOLESTEROL, l, chol, "mg/dL"));
    }
    if p.has(CKD3) || (first && p.age >= 65 && rng.random_bool(0.5)) {
        let cr = if p.has(CKD3) {
            normal(rng, 1.7, 0.35, 1.1, 4.0)
        } else if p.female {
            normal(rng, 0.78, 0.15, 0.4, 1.3)
        } else {
            normal(rng, 0.98, 0.18, 0.5, 1.5)
        };
        out.push(observation(rng, &visit, CREATININE, l, cr, "mg/dL"));
    }
    out
}

pub(super) fn medications(rng: &mut ChaCha8Rng, p: &Person) -> Vec<Value> {
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
