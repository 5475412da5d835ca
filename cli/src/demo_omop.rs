//! The demo's OMOP step: a second study over the same patients, in the
//! OMOP CDM 5.4 data model, asked what OHDSI's tools ask: an Achilles
//! analysis in OHDSI's SQL dialect, and conditions rolled up to their
//! ICD-10-CM chapters through the public vocabulary.

use std::time::Instant;

use cohort_engine::records::vault::Vault;
use cohort_engine::research::query::QueryRequest;
use cohort_engine::research::{Session, StudyFile, omop};
use cohort_ledger_bridge::Account;

use crate::research_cli::outcome_text;

/// How many of the consenting patients also consent to the OMOP study.
const CONSENTING: usize = 2_000;

/// Achilles analysis 2 (persons by gender) as OHDSI ships it.
const ACHILLES_2: &str = "select 2 as analysis_id,
  CAST(gender_concept_id AS VARCHAR(255)) as stratum_1,
  COUNT_BIG(distinct person_id) as count_value
into @scratchDatabaseSchema@schemaDelim@tempAchillesPrefix_2
from @cdmDatabaseSchema.person
group by GENDER_CONCEPT_ID;";

/// Conditions by ICD-10-CM chapter: a private ⋈ public join.
const BY_CHAPTER: &str = "SELECT c.concept_name AS chapter, COUNT(DISTINCT co.person_id) AS persons \
FROM condition_occurrence co \
JOIN concept_ancestor ca ON ca.descendant_concept_id = co.condition_concept_id \
JOIN concept c ON c.concept_id = ca.ancestor_concept_id \
WHERE c.concept_class_id = 'ICD10 Chapter' GROUP BY c.concept_name";

#[allow(clippy::too_many_arguments)]
pub(crate) fn omop_study(
    rt: &tokio::runtime::Runtime,
    vault: &Vault,
    session: &Session,
    researcher: &Account,
    stewards: &[Account],
    linked: &[Account],
    say: &dyn Fn(&str),
) -> anyhow::Result<serde_json::Value> {
    // The view's first build reads every projection table: the demo's
    // deadline leaves it room on a slow disk.
    let text = omop::EXAMPLE_STUDY.replace("deadline_ms = 3000", "deadline_ms = 5000");
    let file = StudyFile::parse(&text)?;
    let proposed = rt.block_on(session.propose(vault.conn(), researcher, &file))?;
    let id = proposed.study_id;
    for s in stewards.iter().take(2) {
        rt.block_on(session.approve(vault.conn(), s, id))?;
    }
    let consenting = &linked[..CONSENTING.min(linked.len())];
    let t = Instant::now();
    let results = rt.block_on(session.consent_all(vault.conn(), consenting, id, None, 365))?;
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        anyhow::bail!("an OMOP study consent failed: {e}");
    }
    say(&format!(
        "   study {id} \"{}\" (data_model = \"omop\"), approved 2 of 3; {} patients consent in {:.1} s",
        file.terms.title,
        results.len(),
        t.elapsed().as_secs_f64()
    ));
    let ask = |sql: String, query_id: &str, explain: bool| {
        rt.block_on(session.query(
            researcher.name(),
            id,
            &QueryRequest {
                sql,
                query_id: Some(format!("demo-omop-{query_id}")),
                explain,
                ..Default::default()
            },
        ))
    };
    let translated = cohort_query_planner::dialect::ohdsi(ACHILLES_2, &Default::default())?;
    // The two questions are asked at once (each released at its own
    // deadline); the plan is explained meanwhile.
    let asked = [
        (translated.as_str(), "achilles-2", false),
        (BY_CHAPTER, "chapters-plan", true),
        (BY_CHAPTER, "chapters", false),
    ];
    let mut answers = crate::cli_common::at_once(&asked, |(sql, id, explain)| {
        ask(sql.to_string(), id, *explain)
    })
    .into_iter();
    let mut next = || answers.next().expect("an outcome for each question");
    let (gender, plan, chapters) = (next()?, next()?, next()?);
    say("\n   Achilles analysis 2 (persons by gender), as OHDSI ships it, with --dialect ohdsi:");
    say(&format!("   {translated}"));
    say(&format!(
        "   {}",
        outcome_text(&gender).replace('\n', "\n   ")
    ));

    say("\n   Conditions by ICD-10-CM chapter, through the public concept_ancestor:");
    say(&format!("   {BY_CHAPTER}"));
    if let Some(line) = plan
        .explain
        .as_deref()
        .and_then(|e| e.lines().find(|l| l.starts_with("small cells")))
    {
        say(&format!("   {line}"));
    }
    say(&format!(
        "   {}",
        outcome_text(&chapters).replace('\n', "\n   ")
    ));
    Ok(serde_json::json!({
        "study": id,
        "consenting": results.len(),
        "achilles_2": gender,
        "chapters": chapters,
    }))
}
