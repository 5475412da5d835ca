"""Executes every notebook here headless (nbclient), against the server the
environment names (COHORT_SERVER, COHORT_TOKEN, COHORT_CA_CERT and the
studies each notebook reads). Exits non-zero on the first cell error,
printing the cell and its traceback. Usage: python notebooks/run.py [OUT_DIR]"""

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).parent
out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "out"
out.mkdir(parents=True, exist_ok=True)
failed = 0
for path in sorted(HERE.glob("*.ipynb")):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(out)}})
    try:
        client.execute()
        print(f"ok      {path.name}")
    except CellExecutionError as e:
        failed += 1
        print(f"FAILED  {path.name}\n{e}")
    nbformat.write(nb, out / path.name)
sys.exit(1 if failed else 0)
