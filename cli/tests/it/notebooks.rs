//! The notebooks in `notebooks/`, executed headless (nbclient) by the
//! Python client against a live `cohort serve`; any cell error fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::research::{setup, study_text};
use crate::server::{Server, login};

/// The venv `scripts/test` prepares (clients/python/setup-venv.sh).
fn python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join("target/pyclient/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run clients/python/setup-venv.sh (scripts/test does) to install the client and nbclient",
        python.display()
    );
    python
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_python_stubs_match_the_proto() {
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(repo().join("clients/python/generate.sh"))
        .arg(out.path())
        .env("PYTHON", python())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for file in ["cohort_pb2.py", "cohort_pb2_grpc.py"] {
        let fresh = std::fs::read_to_string(out.path().join(file)).unwrap();
        let committed =
            std::fs::read_to_string(repo().join("clients/python/cohort_client").join(file))
                .unwrap();
        assert!(
            fresh == committed,
            "clients/python/cohort_client/{file} is out of date with the .proto: run clients/python/generate.sh"
        );
    }
}

#[test]
fn every_notebook_runs_against_a_live_server() {
    let s = setup(30);
    // Microdata allowed: the walk-through asks for a k-anonymous extract.
    // The walk-through's study releases at a deadline, as studies do by default.
    let walk_text = study_text("3", "0.5", true).replace(
        "release = \"immediate\"",
        "deadline_ms = 300\nper_patient_us = 100",
    );
    let (walk, _) = s.approved_study(&walk_text, 20);
    // ε 1 at 0.5 a query: two answers, then the budget is spent.
    let (small, _) = s.approved_study(&study_text("1", "0.5", false), 20);
    // The OMOP characterization's study: the example OMOP study file.
    let omop_text = cohort_engine::research::omop::EXAMPLE_STUDY.replace(
        "deadline_ms = 3000\nper_patient_us = 40",
        "release = \"immediate\"",
    );
    let (omop, _) = s.approved_study(&omop_text, 20);
    let server = Server::start(&s.data);
    let token = login(&s.data, &server, "researcher");
    let out = tempfile::tempdir().unwrap();
    let plot = out.path().join("histogram.png");
    let o = Command::new(python())
        .arg(repo().join("notebooks/run.py"))
        .arg(out.path())
        .env("COHORT_SERVER", &server.url)
        .env("COHORT_TOKEN", &token)
        .env("COHORT_CA_CERT", s.data.join("server/tls/cert.pem"))
        .env("COHORT_STUDY", walk.to_string())
        .env("COHORT_SMALL_STUDY", small.to_string())
        .env("COHORT_EXPECT_ANSWERS", "2")
        .env("COHORT_PLOT", &plot)
        .env("COHORT_OMOP_STUDY", omop.to_string())
        .env("COHORT_OMOP_PLOT", out.path().join("pyramid.png"))
        .env("MPLBACKEND", "Agg")
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "a notebook failed:\n{said}");
    assert!(
        said.contains("ok      researcher_walkthrough.ipynb"),
        "{said}"
    );
    assert!(said.contains("ok      budget_exhaustion.ipynb"), "{said}");
    assert!(
        said.contains("ok      omop_characterization.ipynb"),
        "{said}"
    );
    let pyramid = std::fs::read(out.path().join("pyramid.png")).expect("the age pyramid");
    assert_eq!(&pyramid[1..4], b"PNG");
    let png = std::fs::read(&plot).expect("the walk-through drew its histogram");
    assert_eq!(&png[1..4], b"PNG");
    assert!(server.stop().success());
}
