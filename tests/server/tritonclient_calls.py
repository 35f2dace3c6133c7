"""Calls made with the real tritonclient, run as a separate process by test_oip_tritonclient.py.

tritonclient registers its own `inference.*` protobuf messages; our server's stubs register the
same names, and protobuf refuses two definitions in one process. So the client lives here and
answers the test in JSON on stdout:  python tritonclient_calls.py TARGET SCENARIO [JSON-ARGS]
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException


def health(client: triton.InferenceServerClient) -> dict:
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
        "decoder_ready": client.is_model_ready("vae_decoder", "1"),
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


def descriptor(_client: object) -> dict:
    """Field numbers, names and types of the messages vae-serve implements, as tritonclient has them."""
    from tritonclient.grpc import service_pb2

    def describe(d) -> dict:
        return {
            "fields": sorted(
                (f.number, f.name, f.type, f.message_type.name if f.message_type else "") for f in d.fields
            ),
            "nested": {n.name: describe(n) for n in d.nested_types},
        }

    names = [
        "ServerLiveResponse",
        "ServerReadyResponse",
        "ModelReadyRequest",
        "ModelReadyResponse",
        "ServerMetadataResponse",
        "ModelMetadataRequest",
        "ModelMetadataResponse",
        "ModelInferRequest",
        "ModelInferResponse",
        "InferParameter",
        "InferTensorContents",
    ]
    return {n: describe(service_pb2.DESCRIPTOR.message_types_by_name[n]) for n in names}


if __name__ == "__main__":
    target, scenario = sys.argv[1], sys.argv[2]
    kwargs = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    scenarios = {"health": health, "infer": infer, "errors": errors, "descriptor": descriptor}
    with triton.InferenceServerClient(target) as client:
        print(json.dumps(scenarios[scenario](client, **kwargs)))
