#!/usr/bin/env python3
"""Stand-in for `cohort --json anonymize`, to test verify.py without cohort.

It speaks the command line and output contract verify.py expects:

    fake_cohort.py --json anonymize --input IN.csv --quasi-identifiers a,b,...
        --sensitive S --k K [--l L] [--hierarchies H.toml] --out OUT.csv

partitions with anonypy's Mondrian, then writes one row per record: numeric
QIs as `lo-hi` (or the single value), string QIs as the values joined by ','
or, with --hierarchies, as the lowest tree node covering them (numeric QIs as
the narrowest interval band covering them, `*` past the widest). It prints
{rows_in, rows_out, suppressed, classes, ncp, seconds} computed on its own,
not with verify.py's code. FAKE_COHORT_BREAK=exit|nojson|k|l|ncp|rows makes
it misbehave in that way, to test verify.py's failure paths.
"""

import argparse
import json
import os
import sys
import time
import tomllib

import pandas as pd
from anonypy import mondrian


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("command", choices=["anonymize"])
    ap.add_argument("--input", required=True)
    ap.add_argument("--quasi-identifiers", required=True)
    ap.add_argument("--sensitive", required=True)
    ap.add_argument("--k", type=int, required=True)
    ap.add_argument("--l", type=int, default=0)
    ap.add_argument("--hierarchies")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    brk = os.environ.get("FAKE_COHORT_BREAK", "")
    if brk == "exit":
        print("error: anonymize: simulated failure", file=sys.stderr)
        return 3

    t0 = time.perf_counter()
    qis = a.quasi_identifiers.split(",")
    raw = pd.read_csv(a.input, dtype=str, keep_default_na=False)
    df = raw.copy()
    numeric = [c for c in qis if pd.to_numeric(df[c], errors="coerce").notna().all()]
    for c in qis + [a.sensitive]:
        df[c] = pd.to_numeric(df[c]) if c in numeric else df[c].astype("category")
    hier = tomllib.load(open(a.hierarchies, "rb")) if a.hierarchies else {}
    parts = mondrian.Mondrian(df, qis, a.sensitive).partition(a.k, a.l)

    def leaves(tree, node):
        kids = tree.get(node)
        return {node} if not kids else set().union(*(leaves(tree, c) for c in kids))

    def generalize(col, values):
        """(released string, penalty) for one partition's values of col."""
        if col in numeric:
            lo, hi = min(values), max(values)
            glo, ghi = df[col].min(), df[col].max()
            spec = hier.get(col)
            if spec and lo != hi:  # narrowest band origin + i*w holding [lo, hi]
                o = spec.get("origin", 0)
                for w in spec["widths"]:
                    blo = o + (lo - o) // w * w
                    if blo + w - 1 >= hi:
                        lo, hi = blo, blo + w - 1
                        break
                else:
                    return "*", 1.0
            pen = (min(hi, ghi) - max(lo, glo)) / (ghi - glo)
            return (str(lo) if lo == hi else f"{lo}-{hi}"), pen
        n = df[col].nunique()
        spec = hier.get(col)
        if spec:
            tree = spec["tree"]
            cands = [node for node in tree if set(values) <= leaves(tree, node)]
            if len(set(values)) == 1:
                node = next(iter(values))
            else:
                node = min(cands, key=lambda nd: len(leaves(tree, nd)))
            cover = leaves(tree, node) if node in tree else {node}
            return node, (len(cover) - 1) / (n - 1)
        vals = sorted(set(values))
        return ",".join(vals), (len(vals) - 1) / (n - 1)

    out = raw[qis + [a.sensitive]].copy()
    total_pen = 0.0
    for p in parts:
        for col in qis:
            s, pen = generalize(col, list(df.loc[p, col]))
            out.loc[p, col] = s
            total_pen += pen * len(p)
    ncp = total_pen / (len(out) * len(qis))
    if brk == "k":  # give one record its original QIs back
        out.iloc[0, :] = raw[qis + [a.sensitive]].iloc[0]
    if brk == "l":  # same values, handed out sorted: classes become uniform
        order = [i for p in parts for i in p]
        out.loc[order, a.sensitive] = sorted(raw[a.sensitive])
    if brk == "ncp":
        ncp += 0.05
    out.to_csv(a.out, index=False)
    report = {"command": "anonymize", "rows_in": len(raw),
              "rows_out": len(out) + (1 if brk == "rows" else 0), "suppressed": 0,
              "classes": len(parts), "k": a.k, "l": a.l or None, "ncp": ncp,
              "seconds": time.perf_counter() - t0}
    print("not json" if brk == "nojson" else json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
