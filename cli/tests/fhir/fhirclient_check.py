"""A third-party FHIR client against a live `cohort serve`.

The SMART on FHIR client (`fhirclient`, R4 models, strict parsing) reads a
patient and searches their observations through the server's /fhir API
with a bearer token; every JSON document the server serves on the way (the
CapabilityStatement, the resources, the search and $everything Bundles, an
OperationOutcome) is then validated with `fhir.resources`' R4B models.
cli/tests/it/fhir.rs starts the server, signs in and runs this.

Usage: fhirclient_check.py BASE_URL TOKEN PATIENT_ID
Prints one JSON line of what it saw; exits non-zero on any failure.
"""

import json
import sys

import requests
from fhir.resources.R4B.bundle import Bundle as R4BBundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.observation import Observation as R4BObservation
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient as R4BPatient
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient
from fhirclient.server import FHIRServer

MODELS = {
    "Bundle": R4BBundle,
    "CapabilityStatement": CapabilityStatement,
    "Condition": Condition,
    "Encounter": Encounter,
    "MedicationRequest": MedicationRequest,
    "Observation": R4BObservation,
    "OperationOutcome": OperationOutcome,
    "Patient": R4BPatient,
}


def validate(doc):
    """Validates one served document with its R4B model; returns its type."""
    kind = doc["resourceType"]
    MODELS[kind].model_validate(doc)
    if kind == "Bundle":
        for entry in doc.get("entry", []):
            validate(entry["resource"])
    return kind


def main():
    base, token, patient_id = sys.argv[1:4]
    server = FHIRServer(None, base_uri=base)
    server.session.headers["Authorization"] = "Bearer " + token

    # The client's own calls: a read and a search, parsed by its R4 models.
    patient = Patient.read(patient_id, server)
    assert patient.id == patient_id, patient.id
    search = Observation.where(struct={"patient": patient_id})
    bundle = search._read_bundle(server)
    assert bundle.type == "searchset", bundle.type
    observations = [e.resource for e in bundle.entry or []]
    assert observations, "the search found no observation"
    assert all(isinstance(o, Observation) for o in observations)
    assert all(o.subject is not None for o in observations)
    code = observations[0].code.coding[0]
    by_code = Observation.where(
        struct={"patient": patient_id, "code": f"{code.system}|{code.code}"}
    )._read_bundle(server)
    assert by_code.entry, "the search by code found nothing"
    for e in by_code.entry:
        assert any(c.code == code.code for c in e.resource.code.coding)

    # Every document served, as JSON, validated with fhir.resources (R4B).
    session = requests.Session()
    session.headers["Authorization"] = "Bearer " + token
    root = base.rstrip("/")
    served = {
        "metadata": requests.get(root + "/metadata"),
        "read": session.get(f"{root}/Patient/{patient_id}"),
        "search": session.get(f"{root}/Observation", params={"patient": patient_id}),
        "search by code": session.get(
            f"{root}/Observation",
            params={"patient": patient_id, "code": f"{code.system}|{code.code}"},
        ),
        "everything": session.get(f"{root}/Patient/{patient_id}/$everything"),
        "not found": session.get(f"{root}/Observation/no-such-record"),
        "no token": requests.get(f"{root}/Patient/{patient_id}"),
        "bad request": session.get(f"{root}/Observation"),
    }
    kinds = {}
    for name, r in served.items():
        assert r.headers["content-type"].startswith("application/fhir+json"), (
            name,
            r.headers["content-type"],
        )
        kinds[name] = [r.status_code, validate(r.json())]
    everything = served["everything"].json()
    types = sorted({e["resource"]["resourceType"] for e in everything["entry"]})
    print(
        json.dumps(
            {
                "patient": patient.id,
                "observations": len(observations),
                "by_code": len(by_code.entry),
                "served": kinds,
                "everything_types": types,
            }
        )
    )


if __name__ == "__main__":
    main()
