"""``/api/trials`` and ``/api/metadata``: the dataset's trials and stream metadata (read-only)."""
from __future__ import annotations

from flask import Blueprint

from control import shapes
from control.bodies import path_id
from control.extensions import call

bp = Blueprint("trials", __name__)


@bp.get("/api/trials")
def all_trials():
    return shapes.trial_list(call("trials")["trials"])


@bp.get("/api/trials/by-target/<int:target_id>")
def by_target(target_id: int):
    trials = call("trials", target_id=path_id(target_id, "target"))["trials"]
    return shapes.trial_list(trials, target_id=target_id, target_index=target_id)


@bp.get("/api/trials/<int:trial_id>")
def one_trial(trial_id: int):
    return call("trial", trial_id=path_id(trial_id, "trial"))


@bp.get("/api/metadata")
def metadata():
    """The dataset and stream configuration (the original's ``GET /api/metadata``)."""
    return call("dataset")
