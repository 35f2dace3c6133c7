"""Calls made with the real tritonclient, run as a separate process by test_oip_tritonclient.py.

tritonclient registers its own `inference.*` protobuf messages; our server's stubs register the
same names, and protobuf refuses two definitions in one process. So the client lives here and
answers the test in JSON on stdout:  python tritonclient_calls.py TARGET SCENARIO [JSON-ARGS]
"""

from __future__ import annotations

import json
import sys
import threading

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException


def health(client: triton.InferenceServerClient, version: str) -> dict:
    """Liveness, readiness (the decoder's at `version`, pinned) and both graphs' metadata."""

    def meta(model: str) -> dict:
        m = client.get_model_metadata(model, as_json=True)
        return {
            "versions": m["versions"],
            "platform": m["platform"],
            "inputs": m["inputs"],
            "outputs": m["outputs"],
        }

    return {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "encoder_ready": client.is_model_ready("vae_encoder"),
        "decoder_ready": client.is_model_ready("vae_decoder", version),
        "server": client.get_server_metadata(as_json=True),
        "vae_encoder": meta("vae_encoder"),
        "vae_decoder": meta("vae_decoder"),
    }


def infer(
    client: triton.InferenceServerClient,
    model: str,
    name: str,
    rows: list,
    datatype: str = "FP32",
    outputs: list[str] | None = None,
    version: str = "",
) -> dict:
    """tritonclient's gRPC client always sends raw_input_contents."""
    array = np.asarray(rows, dtype=np.float32 if datatype == "FP32" else np.float64)
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    requested = [triton.InferRequestedOutput(o) for o in outputs] if outputs else None
    try:
        result = client.infer(model, [tensor], model_version=version, outputs=requested, request_id="req-7")
    except InferenceServerException as exc:
        return {"error": exc.status(), "message": exc.message()}
    response = result.get_response(as_json=True)
    return {
        "id": response.get("id"),
        "model_version": response["model_version"],
        "outputs": {o["name"]: result.as_numpy(o["name"]).tolist() for o in response["outputs"]},
    }


def errors(client: triton.InferenceServerClient) -> dict:
    def status(call) -> str:
        try:
            call()
        except InferenceServerException as exc:
            return f"{exc.status()} {exc.message()}"
        return "OK"

    return {
        "unknown_model": status(lambda: client.get_model_metadata("vae_other")),
        "unknown_version": status(lambda: client.is_model_ready("vae_encoder", "9")),
    }


def _status(call) -> str:
    try:
        call()
    except InferenceServerException as exc:
        return f"{exc.status()} {exc.message()}"
    return "OK"


def extensions(client: triton.InferenceServerClient, version: str) -> dict:
    """Triton's configuration and repository extensions, and their refusals, as tools call them;
    `pinned`: the decoder's configuration asked for at `version`."""
    models = ("vae_encoder", "vae_decoder")
    return {
        "server": client.get_server_metadata(as_json=True),
        "config": {m: client.get_model_config(m, as_json=True)["config"] for m in models},
        "pinned": client.get_model_config("vae_decoder", version, as_json=True)["config"]["name"],
        "index": client.get_model_repository_index(as_json=True).get("models", []),
        "errors": {
            "config_unknown_model": _status(lambda: client.get_model_config("vae_other")),
            "config_unknown_version": _status(lambda: client.get_model_config("vae_encoder", "9")),
            "stats_unknown_model": _status(lambda: client.get_inference_statistics("vae_other")),
            "stats_unknown_version": _status(lambda: client.get_inference_statistics("vae_decoder", "9")),
            "load": _status(lambda: client.load_model("vae_encoder")),
            "unload": _status(lambda: client.unload_model("vae_encoder")),
        },
    }


def statistics(
    client: triton.InferenceServerClient,
    model: str,
    name: str,
    width: int,
    rows: int,
    n: int,
    fresh: bool = False,
) -> dict:
    """Statistics before and after `n` requests of `rows` rows each, one after the other. `fresh`:
    each request and each of several readings on a new connection (with workers, spread over them)."""

    def connect() -> triton.InferenceServerClient:
        if not fresh:
            return client
        own_pool = [("grpc.use_local_subchannel_pool", 1)]  # else channels share one connection
        return triton.InferenceServerClient(sys.argv[1], channel_args=own_pool)

    before = client.get_inference_statistics(model, as_json=True)
    array = np.full((rows, width), 0.5, dtype=np.float32)
    for _ in range(n):
        tensor = triton.InferInput(name, [rows, width], "FP32")
        tensor.set_data_from_numpy(array)
        connect().infer(model, [tensor])
    readings = [connect().get_inference_statistics(model, as_json=True) for _ in range(8 if fresh else 1)]
    return {"before": before, "after": readings[-1], "readings": readings}


def stream(client: triton.InferenceServerClient, count: int, width: int, seed: int, bad: list[int]) -> dict:
    """`count` latent rows (standard normal, from `seed`), each decoded as a request of its own on
    one stream (id: its index); those whose index is in `bad` name an input the decoder lacks."""
    latents = np.random.default_rng(seed).standard_normal((count, width), dtype=np.float32)
    answers: dict[str, dict] = {}
    done = threading.Condition()

    def received(result: triton.InferResult | None, error: InferenceServerException | None) -> None:
        with done:
            if error is not None:
                answers[f"error-{len(answers)}"] = {"error": error.message()}
            else:
                response = result.get_response(as_json=True)
                answers[response["id"]] = {"x": result.as_numpy("x").tolist()}
            done.notify_all()

    client.start_stream(callback=received)
    for i, row in enumerate(latents):
        tensor = triton.InferInput("zz" if i in bad else "z", [1, len(row)], "FP32")
        tensor.set_data_from_numpy(row[None, :])
        client.async_stream_infer("vae_decoder", [tensor], request_id=str(i))
    with done:
        done.wait_for(lambda: len(answers) == len(latents), timeout=60)
    client.stop_stream()
    return answers


def descriptor(_client: object) -> dict:
    """Field numbers, names and types of every message tritonclient has (Triton's service and
    model configuration), and its enums' values: what vae-serve's messages must agree with."""
    from tritonclient.grpc import model_config_pb2, service_pb2

    def describe(d) -> dict:
        return {
            "fields": sorted(
                (f.number, f.name, f.type, (f.message_type or f.enum_type).name if f.type in (11, 14) else "")
                for f in d.fields
            ),
            "nested": {n.name: describe(n) for n in d.nested_types},
            "enums": {e.name: sorted((v.number, v.name) for v in e.values) for e in d.enum_types},
        }

    files = (service_pb2.DESCRIPTOR, model_config_pb2.DESCRIPTOR)
    return {
        "messages": {n: describe(d) for f in files for n, d in f.message_types_by_name.items()},
        "enums": {
            n: sorted((v.number, v.name) for v in e.values)
            for f in files
            for n, e in f.enum_types_by_name.items()
        },
    }


if __name__ == "__main__":
    target, scenario = sys.argv[1], sys.argv[2]
    kwargs = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    scenarios = {
        "health": health,
        "infer": infer,
        "errors": errors,
        "descriptor": descriptor,
        "extensions": extensions,
        "statistics": statistics,
        "stream": stream,
    }
    with triton.InferenceServerClient(target) as client:
        print(json.dumps(scenarios[scenario](client, **kwargs)))
