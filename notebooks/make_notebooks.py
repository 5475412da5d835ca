"""Writes the notebooks from their cells (run once when editing them:
`target/pyclient/bin/python notebooks/make_notebooks.py`). Keeping the cells
here keeps the committed .ipynb files free of outputs and easy to review."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

CONNECT = '''import os
import cohort_client

# `cohort serve` prints its address; `cohort login --as <researcher> --server <address>` prints the token.
c = cohort_client.connect(
    os.environ["COHORT_SERVER"],
    os.environ["COHORT_TOKEN"],
    ca_cert=os.environ.get("COHORT_CA_CERT"),  # <data dir>/server/tls/cert.pem for a local server
)'''

walkthrough = new_notebook(cells=[
    new_markdown_cell("# A researcher's walk-through\n\n"
                      "Connect to `cohort serve`, read the private plan of a question, ask it, "
                      "and plot the noisy answer with its 95% error. Every answer is differentially "
                      "private, computed only over consenting patients, and debited from the study's "
                      "budget on the ledger."),
    new_code_cell(CONNECT + '''
study = int(os.environ["COHORT_STUDY"])
s = c.study(study)
print(f"study {s.study_id}: {s.title} ({s.status}); {s.consenting} consenting; budget left {s.remaining}")'''),
    new_markdown_cell("## The plan first\n\n`EXPLAIN PRIVACY` shows the bounds, the mechanism, the cost and the "
                      "expected error, and spends nothing."),
    new_code_cell('''question = "SELECT gender, COUNT(*) AS n FROM patients GROUP BY gender"
before = c.study(study).remaining
print(c.explain(study, question))
assert c.study(study).remaining == before, "EXPLAIN spent budget"'''),
    new_markdown_cell("## The answer\n\nThe answer arrives as Arrow and is read as a DataFrame; each noisy value "
                      "comes with its 95% error."),
    new_code_cell('''answer = c.query(study, question)
print("cost", answer.cost, "| left", answer.remaining)
frame = answer.frame.assign(error_95=answer.error_95("n"))
assert c.study(study).remaining != before, "the answer was not debited"
frame'''),
    new_markdown_cell("## When it came, and who is paid\n\nThe answer was released at a deadline fixed before "
                      "the query ran, from the plan and the public number of consenting patients, so how "
                      "long you waited says nothing about the data. Its fee is priced by the ε it charged "
                      "and shared equally by every consenting patient, whether or not their records "
                      "matched the question: everyone in the data bears a query's privacy loss. No answer "
                      "says how many patients matched; ask `COUNT(DISTINCT patient_id)`, and pay for it, "
                      "to know."),
    new_code_cell('''s = c.study(study)
print(f"released at its deadline, {answer.deadline_ms} ms after the request")
print(f"fee {answer.fee_wei / 1e18:g} ether, {answer.share_wei / 1e18:g} ether to each of the {answer.members} consenting patients")
assert answer.deadline_ms is not None and answer.members == s.consenting'''),
    new_code_cell('''import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(5, 3))
ax.bar(frame["gender"], frame["n"], yerr=frame["error_95"], capsize=6, color="#4c72b0")
ax.set_ylabel("patients (noisy count, 95% error)")
ax.set_title("Patients by gender")
fig.tight_layout()
fig.savefig(os.environ.get("COHORT_PLOT", "histogram.png"))'''),
    new_markdown_cell("## What is refused\n\nA question that would release rows is refused by the planner with its "
                      "reason, and spends nothing."),
    new_code_cell('''left = c.study(study).remaining
try:
    c.query(study, "SELECT patient_id, birth_date FROM patients")
    raise AssertionError("a row-level question was answered")
except cohort_client.CohortError as e:
    print(e.code, "-", e.message)
assert c.study(study).remaining == left'''),
    new_markdown_cell("## A k-anonymous extract\n\nRow-level data leaves only as a k-anonymous extract, "
                      "and only if the study's stewards allowed microdata: every combination of "
                      "quasi-identifiers is shared by at least k patients, checked by the server before "
                      "release and committed on chain by its hash."),
    new_code_cell('''extract, info = c.release(study, k=5)
print(f"{len(extract)} rows; asked k = {info.k}, measured k = {info.measured_k}; hash {info.extract_hash[:18]}...")
assert info.measured_k >= 5 and len(extract) > 0
extract.head()'''),
])

exhaustion = new_notebook(cells=[
    new_markdown_cell("# When the budget runs out\n\nEach answer spends part of the study's privacy budget. "
                      "When too little is left for the next question, the server refuses it, before "
                      "anything runs, and says why."),
    new_code_cell(CONNECT + '''
study = int(os.environ["COHORT_SMALL_STUDY"])
print("budget left:", c.study(study).remaining)'''),
    new_code_cell('''answered = 0
while True:
    try:
        a = c.query(study, "SELECT COUNT(*) AS n FROM patients")
        answered += 1
        print(f"answer {answered}: n = {a.frame['n'][0]} ± {a.error_95('n')[0]:.1f}; left {a.remaining}")
    except cohort_client.CohortError as e:
        print("refused:", e.code, "-", e.message)
        refusal = e
        break
    assert answered < 100, "the budget never ran out"'''),
    new_code_cell('''assert answered == int(os.environ.get("COHORT_EXPECT_ANSWERS", answered))
assert "budget" in refusal.message.lower(), refusal.message
print(f"{answered} answers, then refused; left: {c.study(study).remaining}")'''),
])

omop = new_notebook(cells=[
    new_markdown_cell("# An Achilles-style characterization of an OMOP study\n\n"
                      "A study with `data_model = \"omop\"` sees its consenting patients as OMOP CDM 5.4 "
                      "tables (`person`, `condition_occurrence`, ...), with the OMOP vocabulary beside them "
                      "as public tables: reading `concept` or `concept_ancestor` costs nothing, and joining "
                      "them to the study's tables is bounded per person like any query. Three questions, "
                      "over Flight SQL, each with its 95% error: persons by gender, the age pyramid, and "
                      "conditions rolled up to their ICD-10-CM chapters."),
    new_code_cell(CONNECT + '''
study = int(os.environ["COHORT_OMOP_STUDY"])
s = c.study(study)
print(f"study {s.study_id}: {s.title}; {s.consenting} consenting; budget left {s.remaining}")'''),
    new_markdown_cell("## The vocabulary is public\n\nConcept names for the ids the answers carry: no privacy "
                      "cost, exact."),
    new_code_cell('''left = c.study(study).remaining
concepts = c.query(study, "SELECT concept_id, concept_name, domain_id, concept_class_id FROM concept").frame
names = dict(zip(concepts["concept_id"], concepts["concept_name"]))
assert c.study(study).remaining == left, "reading the vocabulary spent budget"
concepts[concepts["domain_id"].isin(["Gender", "Visit"])]'''),
    new_markdown_cell("## Persons by gender\n\nThe gender concepts are the public domain of the key: every "
                      "one is released, from zero if nobody has it. The study's small-cell rule (OHDSI: below "
                      "5 withheld) applies to the noisy counts."),
    new_code_cell('''gender = c.query(study, "SELECT gender_concept_id, COUNT(DISTINCT person_id) AS persons "
                         "FROM person GROUP BY gender_concept_id")
frame = gender.frame.assign(gender=lambda f: f["gender_concept_id"].map(names),
                            error_95=gender.error_95("persons"))
print("cost", gender.cost, "| left", gender.remaining)
assert set(frame["gender"]) == {"MALE", "FEMALE"}
frame'''),
    new_markdown_cell("## The age pyramid\n\nTen-year bands of age from `year_of_birth` (Safe Harbor keeps the "
                      "year only), by gender: one query, every band and gender released."),
    new_code_cell('''import datetime
year = datetime.date.today().year
pyramid = c.query(study, f"SELECT gender_concept_id, FLOOR(({year} - year_of_birth) / 10) * 10 AS age_band, "
                         f"COUNT(*) AS persons FROM person GROUP BY gender_concept_id, FLOOR(({year} - year_of_birth) / 10) * 10")
bands = pyramid.frame.assign(gender=lambda f: f["gender_concept_id"].map(names),
                             error_95=pyramid.error_95("persons"))
bands = bands[(bands["age_band"] >= 0) & (bands["age_band"] <= 100)]
bands.pivot_table(index="age_band", columns="gender", values="persons")'''),
    new_code_cell('''import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(6, 4))
for sign, (label, colour) in zip((-1, 1), (("MALE", "#4c72b0"), ("FEMALE", "#dd8452"))):
    part = bands[bands["gender"] == label].fillna({"persons": 0})
    ax.barh(part["age_band"], sign * part["persons"], xerr=part["error_95"], height=8,
            color=colour, label=label.lower(), capsize=2)
ax.set_xlabel("persons (noisy count, 95% error)")
ax.set_ylabel("age band")
ax.legend()
fig.tight_layout()
fig.savefig(os.environ.get("COHORT_OMOP_PLOT", "pyramid.png"))'''),
    new_markdown_cell("## Conditions by ICD-10-CM chapter\n\n`condition_occurrence` joined to the public "
                      "`concept_ancestor`: each condition counts towards its chapter. A person with several "
                      "conditions in one chapter counts once (`COUNT(DISTINCT person_id)`), and no person adds "
                      "to more chapters than the study's `max_groups`. The condition on the public `concept` "
                      "narrows the released groups to the chapters."),
    new_code_cell('''chapters = c.query(study, """
    SELECT ch.concept_id AS chapter_id, COUNT(DISTINCT co.person_id) AS persons
    FROM condition_occurrence co
    JOIN concept_ancestor ca ON ca.descendant_concept_id = co.condition_concept_id
    JOIN concept ch ON ch.concept_id = ca.ancestor_concept_id
    WHERE ch.concept_class_id = 'ICD10 Chapter'
    GROUP BY ch.concept_id""")
is_chapter = set(concepts.loc[concepts["concept_class_id"] == "ICD10 Chapter", "concept_id"])
top = (chapters.frame.assign(error_95=chapters.error_95("persons"))
       .loc[lambda f: f["chapter_id"].isin(is_chapter)]
       .assign(chapter=lambda f: f["chapter_id"].map(names))
       .sort_values("persons", ascending=False))
print("cost", chapters.cost, "| left", chapters.remaining)
assert len(top) == len(is_chapter), "every chapter is released"
top[["chapter", "persons", "error_95"]]'''),
])

for name, nb in [("researcher_walkthrough", walkthrough), ("budget_exhaustion", exhaustion),
                 ("omop_characterization", omop)]:
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, HERE / f"{name}.ipynb")
    print("wrote", name)
