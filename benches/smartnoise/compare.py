#!/usr/bin/env python3
"""Compare cohort's differentially private SQL with SmartNoise SQL at equal ε.

Generates a synthetic `visits` table (several rows per patient), runs the same
aggregate queries through SmartNoise SQL (pandas reader) and through cohort's
`dp-sql-compare` binary, and reports per query the median wall time of one
private execution and the mean absolute error against the exact answer.

Run `compare.py --help` for the options; README.md beside this file explains
the settings that matter for a fair comparison.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import yaml
from snsql import Privacy
from snsql.metadata import Metadata
from snsql.sql.private_reader import PrivateReader
from snsql.sql.reader.pandas import PandasReader

REPO = Path(__file__).resolve().parents[2]
TABLE = "visits"
# SmartNoise resolves tables as <schema>.<table> from its metadata, so its SQL
# names `public.visits`; cohort's names the bare table.
SN_SCHEMA = "public"


@dataclass(frozen=True)
class Query:
    name: str
    sql: str  # written against the bare table name `visits`
    keys: tuple[str, ...]  # GROUP BY columns; they come first in every output row
    exact: Callable[[pd.DataFrame], pd.DataFrame]  # key columns, then the value columns


def _scalar(column: str, value) -> pd.DataFrame:
    return pd.DataFrame({column: [value]})


QUERIES = [
    Query("count", "SELECT COUNT(*) AS n FROM visits", (),
          lambda d: _scalar("n", len(d))),
    Query("count_by_sex", "SELECT sex, COUNT(*) AS n FROM visits GROUP BY sex", ("sex",),
          lambda d: d.groupby("sex").size().rename("n").reset_index()),
    Query("sum_systolic", "SELECT SUM(systolic) AS s FROM visits", (),
          lambda d: _scalar("s", d["systolic"].sum())),
    Query("avg_hba1c", "SELECT AVG(hba1c) AS m FROM visits", (),
          lambda d: _scalar("m", d["hba1c"].mean())),
    Query("avg_by_sex", "SELECT sex, AVG(systolic) AS m FROM visits GROUP BY sex", ("sex",),
          lambda d: d.groupby("sex")["systolic"].mean().rename("m").reset_index()),
    # SQL's VARIANCE is the sample variance; SmartNoise releases the population
    # variance. At tens of thousands of rows the two differ by ~1e-5 relative.
    Query("var_hba1c", "SELECT VARIANCE(hba1c) AS v FROM visits", (),
          lambda d: _scalar("v", d["hba1c"].var(ddof=1))),
    Query("count_patients", "SELECT COUNT(DISTINCT patient_id) AS n FROM visits", (),
          lambda d: _scalar("n", d["patient_id"].nunique())),
]

COHORT_POLICY = """\
privacy_unit = "patient_id"
[contribution]
max_rows = {max_rows}
max_groups = 1
[tables.visits.columns]
patient_id = {{ identifier = true }}
sex = {{ domain = ["F", "M"] }}
age = {{ lower = 18, upper = 90 }}
hba1c = {{ lower = 4.0, upper = 14.0 }}
systolic = {{ lower = 90, upper = 200 }}
"""


def make_visits(patients: int, seed: int) -> pd.DataFrame:
    """1 to 5 visits per patient; sex and age are fixed per patient, the measurements per visit."""
    rng = np.random.default_rng(seed)
    visits_per_patient = rng.integers(1, 6, size=patients)
    sex = rng.choice(np.array(["F", "M"]), size=patients)
    age = rng.integers(18, 91, size=patients)
    ids = np.array([f"p{i:07d}" for i in range(patients)])
    owner = np.repeat(np.arange(patients), visits_per_patient)
    rows = len(owner)
    return pd.DataFrame({
        "patient_id": ids[owner],
        "sex": sex[owner],
        "age": age[owner],
        "hba1c": np.clip(rng.normal(6.5, 1.2, rows), 4.0, 14.0).round(1),
        "systolic": np.clip(rng.normal(130.0, 18.0, rows).round(), 90, 200).astype(np.int64),
    })


def smartnoise_metadata(max_rows: int) -> dict:
    return {"cohort_bench": {SN_SCHEMA: {TABLE: {
        # Person-level privacy: patient_id is the unit, and each patient keeps at
        # most max_ids rows, chosen at random (ROW_NUMBER() OVER (PARTITION BY
        # patient_id ORDER BY RANDOM()) <= max_ids) when sample_max_ids is true.
        "row_privacy": False,
        "max_ids": max_rows,
        "sample_max_ids": True,
        # No τ-thresholding of groups: cohort treats `sex` as the public domain
        # {F, M}. (SmartNoise's default is censor_dims: true.)
        "censor_dims": False,
        # Spelled out at SmartNoise's defaults: clamp values into [lower, upper];
        # release negative noisy counts as they are; no DP set union for groups.
        "clamp_columns": True,
        "clamp_counts": False,
        "use_dpsu": False,
        "patient_id": {"type": "string", "private_id": True},
        "sex": {"type": "string"},
        "age": {"type": "int", "lower": 18, "upper": 90},
        "hba1c": {"type": "float", "lower": 4.0, "upper": 14.0},
        "systolic": {"type": "int", "lower": 90, "upper": 200},
    }}}}


def smartnoise_sql(sql: str) -> str:
    return re.sub(rf"\bFROM\s+{TABLE}\b", f"FROM {SN_SCHEMA}.{TABLE}", sql, flags=re.IGNORECASE)


def noisy_aggregates(base: PandasReader, metadata: Metadata, sql: str) -> int:
    """How many noisy SUM/COUNT releases SmartNoise draws for `sql`.

    SmartNoise charges its Privacy.epsilon to each of these (AVG is a noisy SUM
    over a noisy COUNT, VARIANCE adds a noisy SUM of squares), so a query's ε is
    this count times Privacy.epsilon. `_get_mechanism_costs` is private API of
    the pinned smartnoise-sql version: it lists one (ε, δ) per noisy column.
    """
    probe = PrivateReader(base, metadata, privacy=Privacy(epsilon=1.0, delta=0.0))
    return sum(1 for cost in probe._get_mechanism_costs(sql) if cost)


def score(exact: pd.DataFrame, keys: tuple[str, ...], columns: list[str], answers: list[list]) -> dict:
    """Errors of every released numeric cell against the exact answer, matched by group key."""
    values = [c for c in exact.columns if c not in keys]
    truth = {tuple(str(row[k]) for k in keys): row for _, row in exact.iterrows()}
    errors: dict[str, list[float]] = {c: [] for c in values}
    missing = 0
    for rows in answers:
        released = {tuple(str(row[columns.index(k)]) for k in keys): row for row in rows}
        for key, true_row in truth.items():
            row = released.get(key)
            if row is None:
                missing += len(values)
                continue
            for c in values:
                errors[c].append(float(row[columns.index(c)]) - float(true_row[c]))
    cells = [e for c in values for e in errors[c]]
    return {
        "mae": float(np.mean(np.abs(cells))) if cells else None,
        "bias": float(np.mean(cells)) if cells else None,
        "per_column": {
            c: {"mae": float(np.mean(np.abs(errors[c]))), "bias": float(np.mean(errors[c]))}
            for c in values if errors[c]
        },
        "missing_cells": missing,
    }


def run_smartnoise(base: PandasReader, metadata: Metadata, query: Query, exact: pd.DataFrame, args) -> dict:
    sql = smartnoise_sql(query.sql)
    try:
        aggregates = noisy_aggregates(base, metadata, sql)
        epsilon_per_aggregate = args.epsilon / aggregates if args.epsilon_scope == "query" else args.epsilon
        reader = PrivateReader(base, metadata, privacy=Privacy(epsilon=epsilon_per_aggregate, delta=args.delta))
        spent_epsilon, spent_delta = reader.get_privacy_cost(sql)
        reader.execute(sql)  # untimed warm-up
        times_ms, answers = [], []
        for _ in range(args.runs):
            start = time.perf_counter()
            result = reader.execute(sql)
            times_ms.append((time.perf_counter() - start) * 1000.0)
            columns, rows = list(result[0]), result[1:]
            answers.append(rows)
    except Exception as err:  # a refusal is a result to report, not a crash
        return {"sql": sql, "error": f"{type(err).__name__}: {err}"}
    return {
        "sql": sql,
        "noisy_aggregates": aggregates,
        "epsilon_per_aggregate": epsilon_per_aggregate,
        "spent": {"epsilon": float(spent_epsilon), "delta": float(spent_delta)},
        "median_ms": statistics.median(times_ms),
        "times_ms": times_ms,
        "columns": columns,
        "first_answer": answers[0],
        **score(exact, query.keys, columns, answers),
    }


def run_cohort(query: Query, exact: pd.DataFrame, epsilon: float, args) -> dict:
    work = args.work
    command = [
        str(args.cohort_bin),
        "--data", str(work / "visits.parquet"),
        "--table", TABLE,
        "--policy", str(work / "cohort-policy.toml"),
        "--epsilon", repr(epsilon),
        "--delta", repr(args.delta),
        "--runs", str(args.runs),
        "--query", query.sql,
    ]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        reason = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        return {"epsilon": epsilon, "error": reason[0]}
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError as err:
        return {"epsilon": epsilon, "error": f"output is not JSON: {err}"}
    absent = [c for c in exact.columns if c not in out["columns"]]
    if absent:
        return {"epsilon": epsilon, "error": f"output columns {out['columns']} lack {absent}"}
    return {
        "epsilon": epsilon,
        "plan_ms": out["plan_ms"],
        "median_ms": statistics.median(out["times_ms"]),
        "times_ms": out["times_ms"],
        "columns": out["columns"],
        "first_answer": out["answers"][0],
        **score(exact, query.keys, out["columns"], out["answers"]),
    }


def fmt_number(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"


def cell(side: dict | None, field: str) -> str:
    if side is None:
        return "n/a"
    if "error" in side:
        return "error"
    return fmt_number(side[field])


def markdown_table(results: list[dict]) -> str:
    lines = [
        "| query | SmartNoise median ms | cohort median ms | speed-up | SmartNoise MAE | cohort MAE |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        sn, co = r["smartnoise"], r["cohort"]
        both_timed = co is not None and "error" not in sn and "error" not in co
        speedup = f"{sn['median_ms'] / co['median_ms']:.1f}×" if both_timed else "n/a"
        lines.append(f"| {r['query']} | {cell(sn, 'median_ms')} | {cell(co, 'median_ms')} | {speedup} "
                     f"| {cell(sn, 'mae')} | {cell(co, 'mae')} |")
    return "\n".join(lines)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=20_000, help="number of patients (default 20000)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic data (default 7)")
    parser.add_argument("--max-rows", type=int, default=3, help="rows kept per patient (default 3)")
    parser.add_argument("--runs", type=int, default=50, help="private executions per query (default 50)")
    parser.add_argument("--epsilon", type=float, default=1.0, help="ε (default 1.0); see --epsilon-scope")
    parser.add_argument("--delta", type=float, default=1e-6, help="δ per query (default 1e-6)")
    parser.add_argument(
        "--epsilon-scope", choices=["query", "aggregate"], default="query",
        help="query (default): --epsilon is each query's total; SmartNoise gets it divided by its number "
             "of noisy aggregates. aggregate: SmartNoise's own meaning, --epsilon per noisy aggregate; "
             "cohort gets that times the number of aggregates. Either way both spend the same ε per query.")
    parser.add_argument("--queries", nargs="+", choices=[q.name for q in QUERIES],
                        help="run only these queries (default: all)")
    parser.add_argument("--work", type=Path, default=REPO / "target" / "smartnoise-compare",
                        help="output directory (default target/smartnoise-compare)")
    parser.add_argument("--cohort-bin", type=Path, default=REPO / "target" / "release" / "dp-sql-compare",
                        help="cohort's comparison binary (default target/release/dp-sql-compare)")
    parser.add_argument("--skip-cohort", action="store_true", help="run the SmartNoise side only")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main():
    args = parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    queries = [q for q in QUERIES if args.queries is None or q.name in args.queries]

    df = make_visits(args.patients, args.seed)
    df.to_csv(args.work / "visits.csv", index=False)
    df.to_parquet(args.work / "visits.parquet", index=False)
    metadata_path = args.work / "smartnoise-metadata.yaml"
    metadata_path.write_text(yaml.safe_dump(smartnoise_metadata(args.max_rows), sort_keys=False))
    (args.work / "cohort-policy.toml").write_text(COHORT_POLICY.format(max_rows=args.max_rows))

    run_cohort_side = not args.skip_cohort and args.cohort_bin.exists()
    notes = []
    if args.skip_cohort:
        notes.append("cohort skipped (--skip-cohort): its columns are n/a.")
    elif not run_cohort_side:
        notes.append(f"cohort binary {args.cohort_bin} not found: its columns are n/a "
                     "(build it, or pass --cohort-bin).")

    metadata = Metadata.from_file(str(metadata_path))
    # Loading the DataFrame into SmartNoise's in-memory SQLite happens once, untimed.
    base = PandasReader(df, metadata)

    results = []
    for query in queries:
        print(f"running {query.name} ...", flush=True)
        exact = query.exact(df)
        smartnoise = run_smartnoise(base, metadata, query, exact, args)
        cohort_epsilon = args.epsilon
        if args.epsilon_scope == "aggregate" and "error" not in smartnoise:
            cohort_epsilon *= smartnoise["noisy_aggregates"]
        results.append({
            "query": query.name,
            "sql": query.sql,
            "exact": exact.values.tolist(),
            "smartnoise": smartnoise,
            "cohort": run_cohort(query, exact, cohort_epsilon, args) if run_cohort_side else None,
        })

    parameters = {
        "patients": args.patients,
        "rows": len(df),
        "seed": args.seed,
        "epsilon": args.epsilon,
        "epsilon_scope": args.epsilon_scope,
        "delta": args.delta,
        "runs": args.runs,
        "max_rows": args.max_rows,
        "smartnoise_sql": version("smartnoise-sql"),
        "opendp": version("opendp"),
        "python": platform.python_version(),
    }
    method = [
        "Exact answer: pandas on the full generated table (every row of every patient, no contribution "
        f"bound). Both systems keep at most {args.max_rows} rows per patient, so COUNT and SUM errors "
        "include that truncation (the signed mean error is `bias` in results.json).",
        "MAE: mean |noisy - exact| over all runs and all released numeric cells; grouped rows are matched "
        "by group key, and a group missing from a run counts in `missing_cells`, not in the MAE.",
        "SmartNoise time: wall time (time.perf_counter) of reader.execute(sql) alone: parse, rewrite, "
        "noise calibration, the SQL in SQLite (reservoir sampling included) and the noise. The pandas "
        "reader (DataFrame loaded into in-memory SQLite) and the PrivateReader are built outside the "
        "timing, and one untimed warm-up execution precedes the timed runs.",
        "cohort time: the per-run times_ms that dp-sql-compare reports; its one-off plan_ms is in "
        "results.json, not in the median.",
        "ε: " + ("--epsilon is each query's total. SmartNoise charges Privacy.epsilon to every noisy "
                 "SUM/COUNT it draws, so it gets ε / (its noisy aggregates) and cohort gets ε."
                 if args.epsilon_scope == "query" else
                 "--epsilon is per noisy SmartNoise aggregate (Privacy.epsilon as is); cohort gets "
                 "ε × SmartNoise's noisy aggregates as the query's total."),
        "Timings share the machine's cores with whatever else runs; compare medians, not single runs.",
    ]

    print()
    print(markdown_table(results))
    print()
    print(f"N patients = {args.patients}, rows = {len(df)}, ε = {args.epsilon:g} per {args.epsilon_scope}, "
          f"δ = {args.delta:g}, runs = {args.runs}, max rows = {args.max_rows}, seed = {args.seed}, "
          f"smartnoise-sql {parameters['smartnoise_sql']}, Python {parameters['python']}")
    print()
    print("ε per query (SmartNoise aggregates × ε each → SmartNoise's own odometer | cohort):")
    for r in results:
        sn, co = r["smartnoise"], r["cohort"]
        sn_part = (f"{sn['noisy_aggregates']} × {sn['epsilon_per_aggregate']:.4g} → "
                   f"{sn['spent']['epsilon']:.4g}" if "error" not in sn else f"error: {sn['error']}")
        co_part = "n/a" if co is None else (f"{co['epsilon']:.4g}" if "error" not in co
                                            else f"{co['epsilon']:.4g}, error: {co['error']}")
        print(f"- {r['query']}: {sn_part} | {co_part}")
    print()
    print("How it was measured:")
    for line in method + notes:
        print(f"- {line}")

    with open(args.work / "results.json", "w") as out:
        json.dump({"parameters": parameters, "method": method, "notes": notes, "queries": results},
                  out, indent=2, default=lambda v: v.item() if isinstance(v, np.generic) else str(v))
    print(f"\nwrote {args.work / 'results.json'}")


if __name__ == "__main__":
    main()
