#!/usr/bin/env bash
# The issue-30 Ballista case: one query over ROWS rows (one per patient) on
# the local engine, then on a Ballista cluster of 1 and of 2 executors
# (`cohort ballista standalone`, one task slot each), as whole
# `cohort query FILE` processes; RUNS runs each, the median printed.
#
#   cargo build --release --bin cohort
#   benches/ballista/compare.sh [ROWS] [RUNS]
set -euo pipefail
ROWS=${1:-10000000}
RUNS=${2:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
COHORT="$REPO/target/release/cohort"
WORK="$REPO/target/ballista-compare"
PY="$REPO/target/pyclient/bin/python"
mkdir -p "$WORK"
cd "$WORK"
if [ ! -f "t-$ROWS.parquet" ]; then
  "$PY" - "$ROWS" <<'PYEOF'
import sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq
n = int(sys.argv[1]); rng = np.random.default_rng(7)
ids = pa.array(np.char.add("p", np.char.zfill(np.arange(n).astype(str), 9)))
t = pa.table({"patient_id": ids, "sex": rng.choice(np.array(["F", "M"]), size=n),
              "hba1c": np.clip(rng.normal(6.5, 1.2, n), 4.0, 14.0).round(1)})
pq.write_table(t, f"t-{n}.parquet", row_group_size=1 << 20)
PYEOF
fi
cat > study.toml <<TOML
privacy_unit = "patient_id"
[query]
epsilon = "1"
max_epsilon = "1"
[execution]
release = "immediate"
memory_mb = 8192
[contribution]
max_rows = 1
max_groups = 1
[tables.t]
source = "t-$ROWS.parquet"
[tables.t.columns]
patient_id = {}
sex = { domain = ["F", "M"] }
hba1c = { lower = 4, upper = 14 }
TOML
rm -f budget.json
"$COHORT" --data-dir data budget init --file budget.json --epsilon 1000000 >/dev/null
SQL="SELECT sex, COUNT(*) AS n, AVG(hba1c) AS a FROM t GROUP BY sex"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
time_query() {  # extra args for cohort query
  for _ in $(seq "$RUNS"); do
    start=$(date +%s%N)
    "$COHORT" --data-dir data query study.toml --budget budget.json "$@" "$SQL" >/dev/null
    echo $(( ($(date +%s%N) - start) / 1000000 ))
  done | median
}

echo "| engine | median ms ($ROWS rows, $RUNS runs) |"
echo "|---|---:|"
echo "| local DataFusion | $(time_query) |"
for executors in 1 2; do
  "$COHORT" ballista standalone --executors "$executors" --vcores 1 > url.txt 2> cluster.log &
  cluster=$!
  for _ in $(seq 100); do [ -s url.txt ] && break; sleep 0.1; done
  url=$(head -1 url.txt)
  echo "| Ballista, $executors executor(s) | $(time_query --engine-scheduler "$url" --engine-partitions "$executors") |"
  kill "$cluster"; wait "$cluster" 2>/dev/null || true
  rm -f url.txt
done
