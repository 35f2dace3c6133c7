"""Model control (`--model-control-mode explicit`): load and unload over gRPC and REST, loads
shared, a broken load changing nothing, the model limit, an unload during a burst, hostile names."""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.error
import urllib.parse
import urllib.request

import grpc
import numpy as np
import pytest
from support import RunningServer
from two_models import GREY, RGB, SHAPES, two_models, write_model

from vae_serve._proto.inference import grpc_predict_v2_pb2 as oip
from vae_serve._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from vae_serve._proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vae_serve.tensor import to_tensor


def explicit(root, **settings):
    return RunningServer(
        model_repository=root,
        model_control_mode="explicit",
        http_host="127.0.0.1",
        http_port=0,
        drain_grace_s=10,
        **settings,
    )


def oip_stub(server):
    return oip_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.target))


def load(stub, name):
    stub.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name=name), timeout=60)


def unload(stub, name):
    stub.RepositoryModelUnload(oip.RepositoryModelUnloadRequest(model_name=name), timeout=60)


def code_of(call):
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def rest(server, path):
    url = f"http://127.0.0.1:{server.server.http_port}{path}"
    request = urllib.request.Request(url, data=b"{}", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def index(stub):
    reply = stub.RepositoryIndex(oip.RepositoryIndexRequest(), timeout=30)
    return {(m.name, m.version): (m.state, m.reason) for m in reply.models}


def decode(target, model):
    z = to_tensor(np.ones((1, SHAPES[model][1]), np.float32))
    with grpc.insecure_channel(target) as channel:
        return vae_pb2_grpc.VAEServiceStub(channel).Decode(
            vae_pb2.DecodeRequest(z=z, model=model), timeout=30
        )


def test_load_and_unload_over_grpc_and_rest(tmp_path):
    server = explicit(two_models(tmp_path))
    try:
        stub = oip_stub(server)
        assert server.server.dataplane.models.names == []  # nothing until loaded
        assert stub.ServerReady(oip.ServerReadyRequest(), timeout=10).ready
        assert index(stub)[(f"{GREY}_encoder", "")][0] == "UNAVAILABLE"

        load(stub, GREY)
        assert decode(server.target, GREY).model_version == "1"
        assert index(stub)[(f"{GREY}_decoder", "1")] == ("READY", "")
        assert rest(server, f"/v2/repository/models/{RGB}/load")[0] == 200
        assert decode(server.target, RGB).model_version == "1"

        unload(stub, GREY)
        assert code_of(lambda: decode(server.target, GREY))[0] is grpc.StatusCode.NOT_FOUND
        assert index(stub)[(f"{GREY}_encoder", "")] == (
            "UNAVAILABLE",
            index(stub)[(f"{GREY}_encoder", "")][1],
        )
        assert "unloaded" in index(stub)[(f"{GREY}_encoder", "")][1]
        assert rest(server, f"/v2/repository/models/{RGB}/unload")[0] == 200
        assert server.server.dataplane.models.names == []
    finally:
        server.stop()


def test_poll_mode_keeps_refusing(tmp_path):
    server = RunningServer(model_repository=two_models(tmp_path), http_host="127.0.0.1", http_port=0)
    try:
        code, details = code_of(lambda: load(oip_stub(server), GREY))
        assert code is grpc.StatusCode.UNIMPLEMENTED and "--model-control-mode explicit" in details
        assert rest(server, f"/v2/repository/models/{GREY}/unload")[0] == 501
    finally:
        server.stop()


def test_concurrent_loads_of_one_model_make_one_load(tmp_path):
    server = explicit(two_models(tmp_path))
    try:

        async def hundred():
            async with grpc.aio.insecure_channel(server.target) as channel:
                stub = oip_grpc.GRPCInferenceServiceStub(channel)
                request = oip.RepositoryModelLoadRequest(model_name=GREY)
                await asyncio.gather(*(stub.RepositoryModelLoad(request, timeout=60) for _ in range(100)))

        asyncio.run(hundred())
        assert server.server.control.loads == 1
        assert server.server.dataplane.models.versions(GREY).loaded == ["1"]
    finally:
        server.stop()


def test_a_broken_load_leaves_what_is_served(tmp_path):
    root = two_models(tmp_path)
    broken = write_model(root / "spare", GREY)  # a copy to break, moved in as model "bad"
    shutil.move(broken.parent, root / "bad")
    (root / "bad" / "1" / "decoder.onnx").write_bytes(b"not the graph the card hashes")
    server = explicit(root, model=[GREY])
    try:
        stub = oip_stub(server)
        code, details = code_of(lambda: load(stub, "bad"))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert "what was served still is" in details and "\n" not in details
        assert server.server.dataplane.models.names == [GREY]
        assert decode(server.target, GREY).model_version == "1"
        assert code_of(lambda: load(stub, "absent"))[0] is grpc.StatusCode.NOT_FOUND
    finally:
        server.stop()


def test_a_load_beyond_the_limit_is_refused(tmp_path):
    server = explicit(two_models(tmp_path), max_loaded_models=1)
    try:
        stub = oip_stub(server)
        load(stub, GREY)
        load(stub, GREY)  # a reload of a model served is no new model
        code, details = code_of(lambda: load(stub, RGB))
        assert code is grpc.StatusCode.FAILED_PRECONDITION and "unload one first" in details
        assert rest(server, f"/v2/repository/models/{RGB}/load")[0] == 409
        unload(stub, GREY)
        load(stub, RGB)
    finally:
        server.stop()


@pytest.mark.parametrize("name", ["../grey", "grey/1", "a\0b", "gréy", "..", ".", "", "x" * 300])
def test_hostile_names_are_refused_never_paths(tmp_path, name):
    server = explicit(two_models(tmp_path))
    try:
        for call in (load, unload):
            code, _ = code_of(lambda call=call: call(oip_stub(server), name))
            assert code is grpc.StatusCode.INVALID_ARGUMENT
        status, _ = rest(server, f"/v2/repository/models/{urllib.parse.quote(name, safe='')}/load")
        assert status in (400, 404)
        assert server.server.dataplane.models.names == []
    finally:
        server.stop()


def test_an_unload_during_a_burst_loses_nothing_admitted(tmp_path):
    server = explicit(two_models(tmp_path), model=[GREY])
    try:
        z = to_tensor(np.ones((1, SHAPES[GREY][1]), np.float32))

        async def burst():
            async with grpc.aio.insecure_channel(server.target) as channel:
                stub = vae_pb2_grpc.VAEServiceStub(channel)

                async def one():
                    try:
                        await stub.Decode(vae_pb2.DecodeRequest(z=z, model=GREY), timeout=60)
                        return grpc.StatusCode.OK
                    except grpc.aio.AioRpcError as exc:
                        return exc.code()

                calls = [asyncio.create_task(one()) for _ in range(300)]
                await asyncio.sleep(0.05)
                control = oip_grpc.GRPCInferenceServiceStub(channel)
                await control.RepositoryModelUnload(oip.RepositoryModelUnloadRequest(model_name=GREY))
                return await asyncio.gather(*calls)

        codes = asyncio.run(burst())
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND}, set(codes)
        assert codes.count(grpc.StatusCode.OK) > 0
    finally:
        server.stop()


def test_explicit_mode_serves_one_process():
    from vae_serve.server.settings import Settings, ValidationError

    with pytest.raises(ValidationError, match="one process"):
        Settings(model_control_mode="explicit", workers=2, port=1, http_port=2, metrics_port=3)
    with pytest.raises(ValidationError, match="more than --max-loaded-models 1"):
        Settings(model_control_mode="explicit", model=["a", "b"], max_loaded_models=1)
    assert json.dumps(Settings().model_control_mode) == '"poll"'
