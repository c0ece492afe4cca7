"""``/api/control/{code}/perturbations`` (set, read, clear a session's perturbation schedule) and
``/api/perturbations/kinds`` (every kind with its parameters and presets)."""
from __future__ import annotations

from control.extensions import call
from control.inputs import PerturbationsBody, SessionPath
from control.responses import BROKER, PerturbationKinds, Perturbations, errors
from control.views import blueprint

bp = blueprint("perturbations", __name__)


@bp.post("/api/control/<code>/perturbations", summary="Replace the session's perturbation schedule",
         description="Every kind, parameter and preset is in docs/perturbations.md and at "
                     "/api/perturbations/kinds. Takes effect at the next packet.",
         responses={200: Perturbations, **errors(400, 404, 413, 422), **BROKER})
def set_perturbations(path: SessionPath, body: PerturbationsBody):
    return call("set_perturbations", code=path.code,
                perturbations=body.model_dump(exclude_none=True))


@bp.get("/api/control/<code>/perturbations",
        summary="The session's perturbation schedule and the ids active now",
        responses={200: Perturbations, **errors(404), **BROKER})
def get_perturbations(path: SessionPath):
    return call("perturbations", code=path.code)


@bp.delete("/api/control/<code>/perturbations",
           summary="Remove every perturbation (the noise settings stay)",
           responses={200: Perturbations, **errors(404), **BROKER})
def clear_perturbations(path: SessionPath):
    return call("clear_perturbations", code=path.code)


@bp.get("/api/perturbations/kinds",
        summary="Every perturbation kind, its parameters and presets with their sources",
        responses={200: PerturbationKinds, **BROKER})
def kinds():
    return call("perturbation_kinds")
