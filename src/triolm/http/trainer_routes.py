"""Routes an RL trainer drives between training steps (SGLang's names, vLLM's as aliases).

    POST /update_weights_from_disk     {"model_path", "weight_version"?, "policy"?}
    POST /pause_generation  (/pause)   {"mode"?: "queue" | "reject" | "abort" | "wait" | "retract"}
    POST /continue_generation (/resume)
    POST /release_memory_occupation (/sleep)   {"tags"?: ["kv_cache", "weights"]}  /sleep?level=1|2
    POST /resume_memory_occupation (/wake_up)  {"tags"?}                           /wake_up?tags=…
    GET  /is_paused, /is_sleeping

All behind --api-key (the "trainer" blueprint). Contract: contracts/rl-serving.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict
from quart import Blueprint, jsonify, request

from triolm.errors import ModelLoadError
from triolm.http.body import read_json_object
from triolm.http.errors import error_response
from triolm.http.state import AppState
from triolm.loading.weight_update import WeightMismatch
from triolm.protocol.errors import APIError, bad_request
from triolm.protocol.schemas import parse_body
from triolm.runtime.engine_driver import GenerationCut
from triolm.runtime.generation_control import MEMORY_TAGS, PAUSE_MODE_ALIASES, PAUSE_MODES
from triolm.runtime.trainer_control import DEFAULT_IN_FLIGHT_POLICY, IN_FLIGHT_POLICIES, TrainerControl

BLUEPRINT_NAME = "trainer"
#: vLLM's sleep levels: 1 discards the KV cache (weights stay), 2 discards both.
_SLEEP_LEVELS = {1: frozenset({"kv_cache"}), 2: frozenset(MEMORY_TAGS)}


class UpdateWeightsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an ignored field would be a silent lie
    model_path: str
    weight_version: str | None = None
    policy: str | None = None
    abort_all_requests: bool = False  # SGLang's flag: the same as policy "abort"
    load_format: Literal["auto"] | None = None  # SGLang's; the format is read from the file
    flush_cache: Literal[True] = True  # SGLang's; the prefix cache is always flushed


def make_trainer_blueprint(state: AppState) -> Blueprint:
    bp = Blueprint(BLUEPRINT_NAME, __name__)

    @bp.errorhandler(GenerationCut)
    async def shutting_down(exc: GenerationCut):
        return error_response(APIError(503, str(exc), code="shutting_down"))

    def trainer() -> TrainerControl:
        return state.serving().trainer

    @bp.post("/update_weights_from_disk")
    async def update_weights_from_disk():
        body = parse_body(UpdateWeightsRequest, await _json(allow_empty=False))
        control = trainer()
        policy = body.policy or ("abort" if body.abort_all_requests else DEFAULT_IN_FLIGHT_POLICY)
        if policy not in IN_FLIGHT_POLICIES:
            raise bad_request(f"policy must be one of {', '.join(IN_FLIGHT_POLICIES)}, not {policy!r}",
                              param="policy")
        if not body.model_path:
            raise bad_request("model_path must not be empty", param="model_path")
        version = body.weight_version if body.weight_version is not None else body.model_path
        if not version:
            raise bad_request("weight_version must not be empty", param="weight_version")

        try:
            update = await control.update_weights(Path(body.model_path), version, policy)
        except WeightMismatch as exc:
            raise bad_request(str(exc), param="model_path", code="weights_mismatch") from None
        except (ModelLoadError, OSError) as exc:
            raise bad_request(f"cannot load {body.model_path}: {exc}", param="model_path",
                              code="weights_load_failed") from None
        return jsonify({"success": True, "message": f"serving weights {version!r}",
                        "weight_version": update.weight_version, "policy": policy,
                        "num_requests_affected": update.requests_affected})

    async def pause():
        data = await _json(allow_empty=True)
        mode = data.get("mode", request.args.get("mode", "queue"))  # vLLM: /pause?mode=keep
        if not isinstance(mode, str):
            raise bad_request("mode must be a string", param="mode")
        mode = PAUSE_MODE_ALIASES.get(mode, mode)
        if mode not in PAUSE_MODES:
            raise bad_request(f"mode must be one of {', '.join(PAUSE_MODES)}, not {mode!r}", param="mode")
        return _state_json(await trainer().pause(mode))

    async def continue_generation():
        await _json(allow_empty=True)
        return _state_json(await trainer().continue_generation())

    async def release_memory():
        tags = _tags(await _json(allow_empty=True), default=frozenset({"kv_cache"}))
        return _state_json(await trainer().release_memory(tags))

    async def resume_memory():
        tags = _tags(await _json(allow_empty=True), default=frozenset(MEMORY_TAGS))
        control = trainer()
        try:
            return _state_json(await control.resume_memory(tags))
        except (WeightMismatch, ModelLoadError, OSError) as exc:
            raise APIError(500, f"cannot reload the released weights: {exc}",
                           code="weights_reload_failed") from None

    async def is_paused():
        return jsonify({"is_paused": trainer().state.paused})

    async def is_sleeping():
        return jsonify({"is_sleeping": bool(trainer().state.released)})

    for paths, view in ((("/pause_generation", "/pause"), pause),
                        (("/continue_generation", "/resume"), continue_generation),
                        (("/release_memory_occupation", "/sleep"), release_memory),
                        (("/resume_memory_occupation", "/wake_up"), resume_memory)):
        for path in paths:
            bp.add_url_rule(path, f"{view.__name__}{path.replace('/', '_')}", view, methods=["POST"])
    bp.add_url_rule("/is_paused", "is_paused", is_paused, methods=["GET"])
    bp.add_url_rule("/is_sleeping", "is_sleeping", is_sleeping, methods=["GET"])
    return bp


async def _json(allow_empty: bool) -> dict:
    return await read_json_object(await request.get_data(cache=False), allow_empty)


def _tags(data: dict, default: frozenset[str]) -> frozenset[str]:
    """Tags from the body ("tags"), vLLM's query (?tags=…, ?level=1|2), else `default`."""
    tags = data.get("tags")
    if tags is None and request.args.getlist("tags"):
        tags = request.args.getlist("tags")
    level = data.get("level", request.args.get("level"))
    if tags is None and level is not None:
        try:
            return _SLEEP_LEVELS[int(level)]
        except (KeyError, ValueError, TypeError):
            raise bad_request(f"level must be 1 or 2, not {level!r}", param="level") from None
    if tags is None:
        return default
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise bad_request("tags must be a list of strings", param="tags")
    unknown = sorted(set(tags) - set(MEMORY_TAGS))
    if unknown:
        raise bad_request(f"unknown tag {unknown[0]!r} (known: {', '.join(MEMORY_TAGS)})", param="tags")
    return frozenset(tags)


def _state_json(control) -> object:
    return jsonify({"success": True, **control.to_json()})
