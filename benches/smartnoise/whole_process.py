#!/usr/bin/env python3
"""The issue-30 case: the whole `cohort query FILE` process against SmartNoise SQL in-process.

One row per patient, 1,000,000 rows by default, and
`SELECT sex, COUNT(*) AS n, AVG(hba1c) AS a FROM t GROUP BY sex` at a total ε
of 1. cohort is timed as a whole process (start, policy and budget files,
Parquet scan, bounding, aggregate, noise, budget debit, output) with
`release = "immediate"`, and again with its default fixed-time release (the
answer waits for the deadline, 1 s); SmartNoise is timed as `reader.execute`
in a warm process whose table is already loaded, given ε divided by its
number of noisy aggregates so that its own odometer totals 1.

    benches/smartnoise/setup-venv.sh
    cargo build --release --bin cohort
    target/pyenv-bench/bin/python benches/smartnoise/whole_process.py [--rows N] [--runs R]

Errors are per released column, mean |noisy - exact| over runs and groups,
where exact is pandas on the whole table (one row per patient: no
truncation, so every error is noise).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from snsql import Privacy
from snsql.metadata import Metadata
from snsql.sql.private_reader import PrivateReader
from snsql.sql.reader.pandas import PandasReader

REPO = Path(__file__).resolve().parents[2]
SQL = "SELECT sex, COUNT(*) AS n, AVG(hba1c) AS a FROM t GROUP BY sex"

POLICY = """\
privacy_unit = "patient_id"
[query]
epsilon = "1"
max_epsilon = "1"
[execution]
release = "{release}"
[contribution]
max_rows = 1
max_groups = 1
[tables.t]
source = "t.parquet"
[tables.t.columns]
patient_id = {{}}
sex = {{ domain = ["F", "M"] }}
hba1c = {{ lower = 4, upper = 14 }}
"""


def make_table(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "patient_id": [f"p{i:07d}" for i in range(rows)],
        "sex": rng.choice(np.array(["F", "M"]), size=rows),
        "hba1c": np.clip(rng.normal(6.5, 1.2, rows), 4.0, 14.0).round(1),
    })


def errors(exact: pd.DataFrame, answers: list[dict[str, tuple[float, float]]]) -> dict:
    out = {}
    for column, index in (("n", 0), ("a", 1)):
        cells = [abs(answer[sex][index] - exact.loc[sex, column])
                 for answer in answers for sex in exact.index if sex in answer]
        out[column] = float(np.mean(cells))
    return out


def run_cohort(args, work: Path, policy: str) -> dict:
    command = [str(args.cohort_bin), "--json", "--data-dir", str(work / "data"), "query",
               str(work / policy), "--budget", str(work / "budget.json"), SQL]
    times, answers = [], []
    subprocess.run(command, check=True, capture_output=True)  # untimed: warms the page cache
    for _ in range(args.runs):
        start = time.perf_counter()
        proc = subprocess.run(command, check=True, capture_output=True, text=True)
        times.append((time.perf_counter() - start) * 1000.0)
        out = json.loads(proc.stdout)
        answers.append({row[0]: (float(row[1]), float(row[2])) for row in out["rows"]})
    return {"median_ms": statistics.median(times), "times_ms": times, "answers": answers}


def run_smartnoise(args, df: pd.DataFrame) -> dict:
    metadata = Metadata.from_dict({"bench": {"public": {"t": {
        "row_privacy": False, "max_ids": 1, "sample_max_ids": True, "censor_dims": False,
        "clamp_columns": True, "clamp_counts": False, "use_dpsu": False,
        "patient_id": {"type": "string", "private_id": True},
        "sex": {"type": "string"},
        "hba1c": {"type": "float", "lower": 4.0, "upper": 14.0},
    }}}})
    load = time.perf_counter()
    base = PandasReader(df, metadata)
    load_ms = (time.perf_counter() - load) * 1000.0
    sql = SQL.replace("FROM t", "FROM public.t")
    probe = PrivateReader(base, metadata, privacy=Privacy(epsilon=1.0, delta=0.0))
    aggregates = sum(1 for cost in probe._get_mechanism_costs(sql) if cost)
    reader = PrivateReader(base, metadata, privacy=Privacy(epsilon=1.0 / aggregates, delta=1e-6))
    spent = reader.get_privacy_cost(sql)
    reader.execute(sql)  # untimed warm-up
    times, answers = [], []
    for _ in range(args.runs):
        start = time.perf_counter()
        result = reader.execute(sql)
        times.append((time.perf_counter() - start) * 1000.0)
        columns = list(result[0])
        answers.append({row[columns.index("sex")]: (float(row[columns.index("n")]),
                                                    float(row[columns.index("a")]))
                        for row in result[1:]})
    return {"median_ms": statistics.median(times), "times_ms": times, "answers": answers,
            "load_ms": load_ms, "noisy_aggregates": aggregates, "spent_epsilon": float(spent[0])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work", type=Path, default=REPO / "target" / "smartnoise-whole")
    parser.add_argument("--cohort-bin", type=Path, default=REPO / "target" / "release" / "cohort")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    df = make_table(args.rows, args.seed)
    df.to_parquet(work / "t.parquet", index=False)
    for release in ("immediate", "deadline"):
        (work / f"study-{release}.toml").write_text(POLICY.format(release=release))
    # A fresh budget each run: a budget file is never overwritten.
    for stale in ("budget.json", "budget.json.lock"):
        (work / stale).unlink(missing_ok=True)
    subprocess.run([str(args.cohort_bin), "--data-dir", str(work / "data"), "budget", "init",
                    "--file", str(work / "budget.json"), "--epsilon", "1000000"],
                   check=True, capture_output=True)
    exact = df.groupby("sex").agg(n=("hba1c", "size"), a=("hba1c", "mean"))

    results = {
        "cohort (immediate)": run_cohort(args, work, "study-immediate.toml"),
        "cohort (1 s deadline)": run_cohort(args, work, "study-deadline.toml"),
        "SmartNoise": run_smartnoise(args, df),
    }
    print(f"{args.rows:,} rows, one per patient, ε = 1 in total, {args.runs} runs each\n")
    print("| system | median ms | MAE of n | MAE of a |")
    print("|---|---:|---:|---:|")
    for name, r in results.items():
        e = errors(exact, r["answers"])
        r["errors"] = e
        print(f"| {name} | {r['median_ms']:.0f} | {e['n']:.2f} | {e['a']:.5f} |")
    sn = results["SmartNoise"]
    print(f"\nSmartNoise: {sn['noisy_aggregates']} noisy aggregates at ε = {1 / sn['noisy_aggregates']:.4g} "
          f"each (its odometer: {sn['spent_epsilon']:.4g}); loading its table took {sn['load_ms']:.0f} ms, untimed")
    ratio = sn["median_ms"] / results["cohort (immediate)"]["median_ms"]
    print(f"speed-up, whole cohort process (immediate) against SmartNoise's execute: {ratio:.1f}x")
    with open(work / "results.json", "w") as out:
        json.dump({name: {k: v for k, v in r.items() if k != "answers"} for name, r in results.items()},
                  out, indent=2)


if __name__ == "__main__":
    main()
