#!/usr/bin/env python3
"""Where `cohort anonymize` spends its time on UCI Adult, whole process.

UCI Adult as the pycanon check reads it (30,162 rows, the 8
quasi-identifiers and occupation), k = 10, l = 2 (distinct), strict
Mondrian, CSV in and out. Each run is a fresh `cohort --json anonymize`
process; the script prints the median of its wall time and of the phases
the command reports (`read_seconds`, `anonymize_seconds`, `write_seconds`;
writing includes the fsync and the rename). Given two binaries, the runs
alternate between them (in an order that flips every round), so both meet
the same machine.

    anonymizer/tests/adult/setup-venv.sh
    cargo build --release --bin cohort
    target/pyenv/bin/python benches/mondrian/phases.py [--runs 20] [--cohort BIN ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "anonymizer" / "tests" / "adult"))
from verify import QIS, SENSITIVE, load_adult, write_input_csv  # noqa: E402

PHASES = ("read_seconds", "anonymize_seconds", "write_seconds")


def run(binary: Path, table: Path, out: Path) -> dict[str, float]:
    command = [str(binary), "--json", "anonymize", "--input", str(table),
               "--quasi-identifiers", ",".join(QIS), "--sensitive", SENSITIVE,
               "--k", "10", "--l", "2", "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(command, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    report = json.loads(proc.stdout)
    # Binaries before 2026-12-07 report only `anonymize_seconds`.
    return {"process_seconds": wall, **{p: report.get(p, float("nan")) for p in PHASES},
            "ncp": report["ncp"], "classes": report["classes"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--cohort", type=Path, action="append",
                        help="a cohort binary (twice to compare two); default target/release/cohort")
    parser.add_argument("--work", type=Path, default=REPO / "target" / "mondrian-phases")
    args = parser.parse_args()
    binaries = args.cohort or [REPO / "target" / "release" / "cohort"]
    args.work.mkdir(parents=True, exist_ok=True)
    table = args.work / "adult.csv"
    write_input_csv(load_adult(), table)
    for b in binaries:  # untimed: the page cache holds the binary and the table
        run(b, table, args.work / "out.csv")
    results: dict[Path, list[dict[str, float]]] = {b: [] for b in binaries}
    # The order flips every round: a run right after another one is slower
    # (its output replaces a file still being written back).
    for i in range(args.runs):
        for b in binaries if i % 2 == 0 else binaries[::-1]:
            results[b].append(run(b, table, args.work / "out.csv"))
    print(f"UCI Adult ({len(QIS)} quasi-identifiers, k = 10, l = 2), "
          f"median of {args.runs} runs, ms\n")
    print("| binary | whole process | read | anonymize | write | NCP | classes |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for b, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) * 1000
               for k in ("process_seconds", *PHASES)}
        print(f"| {b} | {med['process_seconds']:.0f} | {med['read_seconds']:.0f} | "
              f"{med['anonymize_seconds']:.0f} | {med['write_seconds']:.0f} | "
              f"{runs[0]['ncp']:.4f} | {runs[0]['classes']} |")


if __name__ == "__main__":
    main()
