"""tritonclient.http against a server, in its own process (gevent patches the process it runs in).

Usage: tritonclient_http_calls.py HOST:PORT SCENARIO JSON-ARGS; prints a JSON result.
"""

import json
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def health(client: httpclient.InferenceServerClient, _args: dict) -> dict:
    return {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "encoder_ready": client.is_model_ready("vae_encoder"),
        "server": client.get_server_metadata(),
        "vae_encoder": client.get_model_metadata("vae_encoder"),
        "vae_decoder": client.get_model_metadata("vae_decoder"),
        "pinned": client.get_model_metadata("vae_decoder", model_version="1")["name"],
    }


def infer(client: httpclient.InferenceServerClient, args: dict) -> dict:
    """One request: inputs binary or JSON, the outputs asked (each binary or not) or all."""
    data = np.asarray(args["rows"], dtype=np.float32)
    tensor = httpclient.InferInput(args["name"], list(data.shape), "FP32")
    tensor.set_data_from_numpy(data, binary_data=args["binary_in"])
    outputs = [
        httpclient.InferRequestedOutput(name, binary_data=binary) for name, binary in args.get("outputs", [])
    ]
    try:
        result = client.infer(
            args["model"],
            [tensor],
            outputs=outputs or None,
            request_id="req-7",
            model_version=args.get("version", ""),
        )
    except InferenceServerException as exc:
        return {"error": exc.message(), "status": exc.status()}
    response = result.get_response()
    names = [output["name"] for output in response["outputs"]]
    return {
        "id": response.get("id"),
        "model_version": response["model_version"],
        "binary": {o["name"]: "binary_data_size" in o.get("parameters", {}) for o in response["outputs"]},
        "outputs": {name: result.as_numpy(name).tolist() for name in names},
    }


if __name__ == "__main__":
    url, scenario, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    with httpclient.InferenceServerClient(url) as client:
        print(json.dumps({"health": health, "infer": infer}[scenario](client, args)))
