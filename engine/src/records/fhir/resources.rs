//! The five resource types' FHIR R4 shapes (only the fields the projection
//! reads) and how each becomes its patient's projection row, checked as it
//! goes (references, codes, dates) through the bundle's context.

use super::*;

#[derive(Deserialize)]
struct HumanName {
    #[serde(rename = "use")]
    use_: Option<String>,
    family: Option<String>,
    #[serde(default)]
    given: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Address {
    #[serde(default)]
    line: Vec<String>,
    city: Option<String>,
    state: Option<String>,
    postal_code: Option<String>,
}

#[derive(Deserialize)]
struct ContactPoint {
    system: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize)]
struct Identifier {
    system: Option<String>,
    value: Option<String>,
    #[serde(rename = "type")]
    type_: Option<CodeableConcept>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Extension {
    url: String,
    #[serde(default)]
    extension: Vec<Extension>,
    value_coding: Option<Coding>,
    value_string: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PatientR {
    #[serde(default)]
    name: Vec<HumanName>,
    gender: Option<String>,
    birth_date: Option<String>,
    #[serde(default)]
    address: Vec<Address>,
    #[serde(default)]
    telecom: Vec<ContactPoint>,
    #[serde(default)]
    identifier: Vec<Identifier>,
    #[serde(default)]
    extension: Vec<Extension>,
}

pub(super) fn patient(ctx: &Ctx<'_>, id: &str, v: Value) -> Result<(String, Row)> {
    let p: PatientR = ctx.typed(v)?;
    if let Some(g) = &p.gender
        && !["male", "female", "other", "unknown"].contains(&g.as_str())
    {
        return Err(ctx.err(
            Some("gender"),
            format!("`{g}` is not one of male, female, other, unknown"),
        ));
    }
    let name = p
        .name
        .iter()
        .find(|n| n.use_.as_deref() == Some("official"))
        .or(p.name.first());
    let address = p.address.first();
    let telecom = |system: &str| {
        p.telecom
            .iter()
            .find(|t| t.system.as_deref() == Some(system))
            .and_then(|t| t.value.clone())
    };
    let ssn = p
        .identifier
        .iter()
        .find(|i| i.system.as_deref() == Some(SSN))
        .and_then(|i| i.value.clone());
    let mrn = p
        .identifier
        .iter()
        .find(|i| {
            i.type_
                .as_ref()
                .is_some_and(|t| t.coding.iter().any(|c| c.code.as_deref() == Some("MR")))
        })
        .and_then(|i| i.value.clone());
    let omb = |url: &str| {
        p.extension.iter().find(|e| e.url == url).and_then(|e| {
            e.extension
                .iter()
                .find(|x| x.url == "ombCategory")
                .and_then(|x| x.value_coding.as_ref())
                .and_then(|c| c.display.clone().or(c.code.clone()))
                .or_else(|| {
                    e.extension
                        .iter()
                        .find(|x| x.url == "text")
                        .and_then(|x| x.value_string.clone())
                })
        })
    };
    let row = PatientRow {
        patient_id: id.to_owned(),
        family_name: name.and_then(|n| n.family.clone()),
        given_name: name.and_then(|n| (!n.given.is_empty()).then(|| n.given.join(" "))),
        birth_date: ctx.date("birthDate", p.birth_date.as_deref())?,
        gender: p.gender,
        race: omb(US_CORE_RACE),
        ethnicity: omb(US_CORE_ETHNICITY),
        address_line: address.and_then(|a| (!a.line.is_empty()).then(|| a.line.join(", "))),
        city: address.and_then(|a| a.city.clone()),
        state: address.and_then(|a| a.state.clone()),
        zip: address.and_then(|a| a.postal_code.clone()),
        phone: telecom("phone"),
        email: telecom("email"),
        ssn,
        mrn,
    };
    Ok((id.to_owned(), Row::Patient(row)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Quantity {
    value: Option<f64>,
    unit: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObservationR {
    /// Required by FHIR; checked for presence, not projected.
    #[allow(dead_code)]
    status: String,
    code: CodeableConcept,
    subject: Reference,
    encounter: Option<Reference>,
    effective_date_time: Option<String>,
    value_quantity: Option<Quantity>,
}

pub(super) fn observation(ctx: &Ctx<'_>, id: &str, v: Value) -> Result<(String, Row)> {
    let o: ObservationR = ctx.typed(v)?;
    let coding = ctx.coding("code.coding", &o.code, LOINC, "LOINC")?;
    let patient_id = ctx.patient_ref("subject", &o.subject)?;
    let row = ObservationRow {
        id: id.to_owned(),
        patient_id: patient_id.clone(),
        encounter_id: ctx.encounter_ref("encounter", o.encounter.as_ref())?,
        loinc: coding.code.clone().unwrap_or_default(),
        display: coding.display.clone().or(o.code.text.clone()),
        value: o.value_quantity.as_ref().and_then(|q| q.value),
        unit: o.value_quantity.and_then(|q| q.unit),
        effective: ctx.datetime("effectiveDateTime", o.effective_date_time.as_deref())?,
    };
    Ok((patient_id, Row::Observation(row)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConditionR {
    code: CodeableConcept,
    subject: Reference,
    encounter: Option<Reference>,
    clinical_status: Option<CodeableConcept>,
    onset_date_time: Option<String>,
}

pub(super) fn condition(ctx: &Ctx<'_>, id: &str, v: Value) -> Result<(String, Row)> {
    let c: ConditionR = ctx.typed(v)?;
    let coding = ctx.coding("code.coding", &c.code, ICD10CM, "ICD-10-CM")?;
    let patient_id = ctx.patient_ref("subject", &c.subject)?;
    let onset = c.onset_date_time.as_deref().map(|t| &t[..t.len().min(10)]);
    let row = ConditionRow {
        id: id.to_owned(),
        patient_id: patient_id.clone(),
        encounter_id: ctx.encounter_ref("encounter", c.encounter.as_ref())?,
        icd10: coding.code.clone().unwrap_or_default(),
        display: coding.display.clone().or(c.code.text.clone()),
        clinical_status: c
            .clinical_status
            .and_then(|s| s.coding.into_iter().find_map(|c| c.code)),
        onset: ctx.date("onsetDateTime", onset)?,
    };
    Ok((patient_id, Row::Condition(row)))
}

#[derive(Deserialize)]
struct Period {
    start: Option<String>,
    end: Option<String>,
}

#[derive(Deserialize)]
struct EncounterR {
    status: String,
    class: Coding,
    #[serde(rename = "type", default)]
    type_: Vec<CodeableConcept>,
    subject: Reference,
    period: Option<Period>,
}

pub(super) fn encounter(ctx: &Ctx<'_>, id: &str, v: Value) -> Result<(String, Row)> {
    let e: EncounterR = ctx.typed(v)?;
    let Some(class) = e.class.code.clone().filter(|c| !c.is_empty()) else {
        return Err(ctx.err(Some("class.code"), "is missing".into()));
    };
    let patient_id = ctx.patient_ref("subject", &e.subject)?;
    let ty = e.type_.first().and_then(|t| t.coding.first());
    let row = EncounterRow {
        id: id.to_owned(),
        patient_id: patient_id.clone(),
        class,
        type_code: ty.and_then(|c| c.code.clone()),
        type_display: ty.and_then(|c| c.display.clone()),
        status: e.status,
        start: ctx.datetime(
            "period.start",
            e.period.as_ref().and_then(|p| p.start.as_deref()),
        )?,
        end: ctx.datetime(
            "period.end",
            e.period.as_ref().and_then(|p| p.end.as_deref()),
        )?,
    };
    Ok((patient_id, Row::Encounter(row)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MedicationRequestR {
    status: String,
    /// Required by FHIR; checked for presence, not projected.
    #[allow(dead_code)]
    intent: String,
    medication_codeable_concept: Option<CodeableConcept>,
    subject: Reference,
    encounter: Option<Reference>,
    authored_on: Option<String>,
}

pub(super) fn medication_request(ctx: &Ctx<'_>, id: &str, v: Value) -> Result<(String, Row)> {
    let m: MedicationRequestR = ctx.typed(v)?;
    let Some(med) = &m.medication_codeable_concept else {
        return Err(ctx.err(
            Some("medicationCodeableConcept"),
            "is missing (medicationReference is not supported)".into(),
        ));
    };
    let coding = ctx.coding("medicationCodeableConcept.coding", med, RXNORM, "RxNorm")?;
    let patient_id = ctx.patient_ref("subject", &m.subject)?;
    let authored = m.authored_on.as_deref().map(|t| &t[..t.len().min(10)]);
    let row = MedicationRow {
        id: id.to_owned(),
        patient_id: patient_id.clone(),
        encounter_id: ctx.encounter_ref("encounter", m.encounter.as_ref())?,
        rxnorm: coding.code.clone().unwrap_or_default(),
        display: coding.display.clone().or(med.text.clone()),
        status: m.status,
        authored_on: ctx.date("authoredOn", authored)?,
    };
    Ok((patient_id, Row::Medication(row)))
}
