"""The admission gate the node reads before sending a call into the actors."""

from __future__ import annotations

from spear_actors.actors.admission import AdmissionGate
from spear_actors.errors import ErrorCode
from spear_actors.model import InvokeRequest


def request(**fields: object) -> InvokeRequest:
    return InvokeRequest.from_dict({"function_name": "f", **fields})


def test_a_full_task_is_refused_by_name_and_by_id_until_it_has_room() -> None:
    gate = AdmissionGate()
    by_name = request(task_name="calc")
    by_id = request(invocation_type="EXISTING_TASK", task_id="t1")
    assert gate.refusal(by_name) is None and gate.refusal(by_id) is None
    gate.mark("t1", "calc", True)
    for req in (by_name, by_id):
        refusal = gate.refusal(req)
        assert refusal is not None and refusal.code is ErrorCode.RESOURCE_EXHAUSTED
        assert refusal.details["retry_after_ms"] > 0
    assert gate.refusal(request(task_name="other")) is None
    # A repeated execution id is answered from its record, never refused here.
    assert gate.refusal(request(task_name="calc", context={"execution_id": "e1"})) is None
    gate.mark("t1", "calc", False)
    assert gate.refusal(by_name) is None and gate.refusal(by_id) is None


def test_a_new_task_under_the_name_is_not_refused_for_the_old_one() -> None:
    gate = AdmissionGate()
    gate.mark("old", "calc", True)
    gate.mark("new", "calc", True)
    gate.mark("old", "calc", False)  # the old one's room must not clear the new one
    assert gate.refusal(request(task_name="calc")) is not None
