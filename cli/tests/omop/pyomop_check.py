"""Checks cohort's OMOP CDM 5.4 tables against an independent definition:
pyomop's CDM 5.4 SQLAlchemy models (PyPI `pyomop`, installed without its
dependencies by clients/python/setup-venv.sh: only `cdm54_tables.py`,
which needs SQLAlchemy alone, is loaded).

    python pyomop_check.py SPEC.json PARQUET...

SPEC.json is `cohort --json omop tables`: every table cohort defines, each a
list of [column, type, nullable]. It must equal pyomop's, column for column
and in order. Each PARQUET file (a study view's table or a vocabulary table,
named <table>.parquet) must hold only columns of its table, with Arrow types
of the same category. Prints one line per check; exits 1 on a mismatch.
"""
import importlib.util
import json
import os
import sys

import pyarrow.parquet as pq
from sqlalchemy import types as T
from sqlalchemy.sql.sqltypes import NullType


def pyomop_tables():
    spec = importlib.util.find_spec("pyomop")
    path = os.path.join(spec.submodule_search_locations[0], "cdm54", "cdm54_tables.py")
    module_spec = importlib.util.spec_from_file_location("pyomop_cdm54_tables", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.Base.metadata.tables


def category(column):
    t = column.type
    if isinstance(t, NullType) and column.foreign_keys:
        t = next(iter(column.foreign_keys)).column.type
    for kind, name in ((T.Integer, "integer"), (T.Numeric, "numeric"), (T.DateTime, "datetime"),
                       (T.Date, "date"), (T.String, "text")):
        if isinstance(t, kind):
            return name
    raise TypeError(f"{column.table.name}.{column.name}: unmapped type {t!r}")


def arrow_category(arrow_type):
    text = str(arrow_type)
    if text.startswith("int"):
        return "integer"
    if text.startswith(("double", "float", "decimal")):
        return "numeric"
    if text.startswith("timestamp"):
        return "datetime"
    if text.startswith("date"):
        return "date"
    if text in ("string", "large_string", "string_view"):
        return "text"
    return text


def main():
    spec_file, *parquets = sys.argv[1:]
    ours = json.load(open(spec_file))
    theirs = pyomop_tables()
    failures = 0
    for table, columns in ours.items():
        expected = [[c.name, category(c), bool(c.nullable)] for c in theirs[table].columns]
        if columns == expected:
            print(f"ok   {table}: {len(columns)} columns match pyomop")
        else:
            failures += 1
            print(f"FAIL {table}: ours {columns} pyomop {expected}")
    for path in parquets:
        table = os.path.basename(path).removesuffix(".parquet")
        declared = {name: kind for name, kind, _ in ours[table]}
        for field in pq.read_schema(path):
            kind = arrow_category(field.type)
            if declared.get(field.name) != kind:
                failures += 1
                print(f"FAIL {path}: {field.name} is {field.type} ({kind}), "
                      f"CDM 5.4 says {declared.get(field.name)}")
        print(f"ok   {path}: {len(pq.read_schema(path))} columns of {table}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
