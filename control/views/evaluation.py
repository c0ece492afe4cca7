"""``/api/sessions/{code}/evaluation``: the session's closed-loop decoder evaluation, and its reset
(docs/evaluation.md explains every figure)."""
from __future__ import annotations

from control.extensions import call
from control.inputs import EvaluationQuery, SessionPath
from control.responses import BROKER, Evaluation, EvaluationReset, errors
from control.views import blueprint

bp = blueprint("evaluation", __name__, url_prefix="/api/sessions")


@bp.get("/<code>/evaluation", summary="The session's decoder evaluation",
        description="Per decoder: predictions, missing, invalid, latency (bin publication -> "
                    "prediction arrival), deadline misses, normalized latency, velocity R² "
                    "(variance-weighted) and per-axis r, pseudo-closed-loop reaches, and a "
                    "per-trial table.",
        responses={200: Evaluation, **errors(400, 404, 422), **BROKER})
def evaluation(path: SessionPath, query: EvaluationQuery):
    return call("evaluation", code=path.code, **query.model_dump(exclude_none=True))


@bp.delete("/<code>/evaluation", summary="Forget the session's predictions and score afresh",
           responses={200: EvaluationReset, **errors(404), **BROKER})
def reset(path: SessionPath):
    return call("evaluation_reset", code=path.code)
