"""tritonclient.http against a server, in its own process (gevent patches the process it runs in).

Usage: tritonclient_http_calls.py HOST:PORT SCENARIO JSON-ARGS; prints a JSON result.
"""

import asyncio
import json
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def health(client: httpclient.InferenceServerClient, args: dict) -> dict:
    """Liveness, readiness, both graphs' metadata, and the decoder's asked for at args["version"]."""
    return {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "encoder_ready": client.is_model_ready("vae_encoder"),
        "server": client.get_server_metadata(),
        "vae_encoder": client.get_model_metadata("vae_encoder"),
        "vae_decoder": client.get_model_metadata("vae_decoder"),
        "pinned": client.get_model_metadata("vae_decoder", model_version=args["version"])["name"],
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


def _status(call) -> str:
    try:
        call()
    except InferenceServerException as exc:
        return f"{exc.status()} {exc.message()}"
    return "OK"


def extensions(client: httpclient.InferenceServerClient, args: dict) -> dict:
    """Triton's configuration and repository extensions, and their refusals, as tools call them;
    `pinned`: the decoder's configuration asked for at args["version"]."""
    models = ("vae_encoder", "vae_decoder")
    return {
        "config": {m: client.get_model_config(m) for m in models},
        "pinned": client.get_model_config("vae_decoder", args["version"])["name"],
        "index": client.get_model_repository_index(),
        "errors": {
            "config_unknown_model": _status(lambda: client.get_model_config("vae_other")),
            "stats_unknown_version": _status(lambda: client.get_inference_statistics("vae_decoder", "9")),
            "load": _status(lambda: client.load_model("vae_encoder")),
            "unload": _status(lambda: client.unload_model("vae_encoder")),
        },
    }


def statistics(client: httpclient.InferenceServerClient, args: dict) -> dict:
    """Statistics before and after `n` requests of `rows` rows each, one after the other."""
    model, rows, width = args["model"], args["rows"], args["width"]
    before = client.get_inference_statistics(model)
    array = np.full((rows, width), 0.5, dtype=np.float32)
    for _ in range(args["n"]):
        tensor = httpclient.InferInput(args["name"], [rows, width], "FP32")
        tensor.set_data_from_numpy(array)
        client.infer(model, [tensor])
    return {
        "before": before,
        "after": client.get_inference_statistics(model),
        "all": client.get_inference_statistics(),
    }


async def aio(url: str, args: dict) -> dict:
    """tritonclient.http.aio (aiohttp, which labels every body application/octet-stream): an
    inference with its inputs binary or JSON, and the repository index."""
    import tritonclient.http.aio as aioclient

    async with aioclient.InferenceServerClient(url) as client:
        data = np.asarray(args["rows"], dtype=np.float32)
        tensor = aioclient.InferInput(args["name"], list(data.shape), "FP32")
        tensor.set_data_from_numpy(data, binary_data=args["binary_in"])
        result = await client.infer(args["model"], [tensor])
        name = result.get_response()["outputs"][0]["name"]
        index = await client.get_model_repository_index()
    return {"outputs": {name: result.as_numpy(name).tolist()}, "index": index}


if __name__ == "__main__":
    url, scenario, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    if scenario == "aio":
        print(json.dumps(asyncio.run(aio(url, args))))
        sys.exit()
    with httpclient.InferenceServerClient(url) as client:
        scenarios = {"health": health, "infer": infer, "extensions": extensions, "statistics": statistics}
        print(json.dumps(scenarios[scenario](client, args)))
