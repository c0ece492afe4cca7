"""``/api/trials`` and ``/api/metadata``: the dataset's trials and stream metadata (read-only)."""
from __future__ import annotations

from control import shapes
from control.extensions import call
from control.inputs import TargetPath, TrialPath
from control.responses import BROKER, Metadata, Trial, TrialList, errors
from control.views import blueprint

bp = blueprint("trials", __name__)


@bp.get("/api/trials", summary="Every trial of the dataset", responses={200: TrialList, **BROKER})
def all_trials():
    return shapes.trial_list(call("trials")["trials"])


@bp.get("/api/trials/by-target/<int:target_id>", summary="The trials reaching for one target",
        responses={200: TrialList, **errors(404), **BROKER})
def by_target(path: TargetPath):
    trials = call("trials", target_id=path.target_id)["trials"]
    return shapes.trial_list(trials, target_id=path.target_id, target_index=path.target_id)


@bp.get("/api/trials/<int:trial_id>", summary="One trial",
        responses={200: Trial, **errors(404), **BROKER})
def one_trial(path: TrialPath):
    return shapes.trial(call("trial", trial_id=path.trial_id))


@bp.get("/api/metadata", summary="The dataset's stream metadata (the original's)",
        responses={200: Metadata, **BROKER})
def metadata():
    return call("dataset")
