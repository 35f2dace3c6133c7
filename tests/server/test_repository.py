"""Finding and verifying model versions on disk; each failure names the file and the reason."""

import hashlib
import json
import logging
import os
import re
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from support import GOOD_DECODER, GOOD_ENCODER, REPOSITORY, write_version_files

from vae_serve.errors import ModelLoadError, ModelNotFound
from vae_serve.server.app import VaeServer
from vae_serve.server.models.repository import list_versions, resolve
from vae_serve.server.settings import Settings
from vae_serve.server.telemetry.metrics import Metrics


@pytest.fixture
def repo(tmp_path):
    for version in ("1", "2", "10"):
        shutil.copytree(REPOSITORY / "fashion-vae" / "1", tmp_path / "fashion-vae" / version)
    (tmp_path / "fashion-vae" / ".11.staging").mkdir()
    return tmp_path


def test_latest_is_the_highest_number(repo):
    assert list_versions(repo, "fashion-vae") == ["1", "2", "10"]
    assert resolve(repo, "fashion-vae").version == "10"
    assert resolve(repo, "fashion-vae", "2").path == repo / "fashion-vae" / "2"


def test_missing_repository(tmp_path):
    with pytest.raises(ModelLoadError, match=r"model repository .*absent not found"):
        resolve(tmp_path / "absent", "fashion-vae")


def test_missing_model_lists_what_is_there(repo):
    with pytest.raises(
        ModelNotFound, match=r"no versions of model 'other' .* \(models there: \['fashion-vae'\]\)"
    ):
        resolve(repo, "other")


def test_missing_version_lists_versions(repo):
    with pytest.raises(ModelNotFound, match=r"has no version '3' \(versions: 1, 2, 10\)"):
        resolve(repo, "fashion-vae", "3")


def test_corrupt_graph_fails_its_checksum(repo):
    path = repo / "fashion-vae" / "10" / "decoder.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"decoder.onnx: sha256 .* does not match the card's"):
        resolve(repo, "fashion-vae")


def test_missing_graph(repo):
    (repo / "fashion-vae" / "10" / "encoder.onnx").unlink()
    with pytest.raises(ModelLoadError, match=r"encoder.onnx: missing"):
        resolve(repo, "fashion-vae")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "model.json: missing"),
        ("{not json", "unreadable model card"),
        ("[1, 2]", "must be a JSON object"),
        ('{"input_dim": 784}', "field 'latent_dim' missing"),
    ],
)
def test_bad_card(repo, content, message):
    card = repo / "fashion-vae" / "10" / "model.json"
    if content is None:
        card.unlink()
    else:
        card.write_text(content)
    with pytest.raises(ModelLoadError, match=message):
        resolve(repo, "fashion-vae")


def test_card_without_checksum(repo):
    card_path = repo / "fashion-vae" / "10" / "model.json"
    card = json.loads(card_path.read_text())
    del card["files"]["encoder.onnx"]
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match=r"no sha256 for encoder\.onnx"):
        resolve(repo, "fashion-vae")


def test_card_principal_directions_must_fit_the_latent_width(repo):
    card_path = repo / "fashion-vae" / "10" / "model.json"
    card = json.loads(card_path.read_text())
    latent = card["latent_dim"]
    card["principal_directions"] = {"mean": [0.0] * latent, "std": [1.0], "vectors": [[1.0] * (latent - 1)]}
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="principal_directions: mean and vectors need latent_dim values"):
        resolve(repo, "fashion-vae")
    card["principal_directions"]["vectors"] = [[1.0] + [0.0] * (latent - 1)]
    card_path.write_text(json.dumps(card))
    assert resolve(repo, "fashion-vae").spec.principal_directions.std == [1.0]


# Hostile repositories: every entry, card and graph is bounded and typed before any work is done.


def test_version_names_are_ascii_digits_and_one_bad_entry_never_stops_a_scan(repo, caplog):
    model_dir = repo / "fashion-vae"
    for name in ("²", "٣", "1" * 19, "01"):  # str.isdigit() says yes to the first two
        shutil.copytree(model_dir / "1", model_dir / name)
    (model_dir / "5").write_text("a file, not a version")
    caplog.set_level(logging.INFO, logger="vae_serve.server.models.repository")
    assert list_versions(repo, "fashion-vae") == ["1", "2", "10"]
    assert list_versions(repo, "fashion-vae") == ["1", "2", "10"]
    assert resolve(repo, "fashion-vae").version == "10"
    skipped = [r.getMessage() for r in caplog.records if "not a model version" in r.getMessage()]
    assert len(skipped) == 5, skipped  # each bad entry once, however often the directory is listed
    assert all("\n" not in line for line in skipped)
    with pytest.raises(ModelNotFound, match=r"has no version '٣'"):
        resolve(repo, "fashion-vae", "٣")


def test_a_model_with_only_bad_entries_has_no_versions(tmp_path):
    shutil.copytree(REPOSITORY / "fashion-vae" / "1", tmp_path / "m" / "²")
    with pytest.raises(ModelNotFound, match=r"no versions of model 'm'"):
        resolve(tmp_path, "m")


def one_line(exc_info: pytest.ExceptionInfo) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


BAD_CARDS = [
    ({"image_shape": ["a"]}, r"field 'image_shape\[0\]': Input should be a valid integer"),
    ({"image_shape": [2, True]}, r"field 'image_shape\[1\]': Input should be a valid integer"),
    ({"image_shape": "28x28"}, r"field 'image_shape': Input should be a valid list"),
    ({"image_shape": []}, r"field 'image_shape': List should have at least 1 item"),
    (
        {"files": {"encoder.onnx": "abc"}},
        r"""field 'files\["encoder.onnx"\]': Input should be .*(object|dict)""",
    ),
    ({"files": "abc"}, r"field 'files': Input should be .*(object|dict)"),
    (
        {"files": {"encoder.onnx": {"sha256": 7}}},
        r"""field 'files\["encoder.onnx"\].sha256': Input should be a valid string""",
    ),
    (
        {"files": {"encoder.onnx": {"sha256": "ab"}}},
        r"""field 'files\["encoder.onnx"\].sha256': String should match""",
    ),
    ({"input_dim": True}, r"field 'input_dim': Input should be a valid integer"),
    ({"input_dim": -784}, r"field 'input_dim': Input should be greater than or equal to 1"),
    ({"input_dim": 10**12}, r"field 'input_dim': Input should be less than or equal to"),
    ({"input_dim": 784.0}, r"field 'input_dim': Input should be a valid integer"),
    ({"latent_dim": "32"}, r"field 'latent_dim': Input should be a valid integer"),
    ({"latent_dim": None}, r"field 'latent_dim': Input should be a valid integer"),
]


@pytest.mark.parametrize(("change", "message"), BAD_CARDS)
def test_a_card_with_wrong_types_is_one_line_naming_the_field(repo, change, message):
    card_path = repo / "fashion-vae" / "10" / "model.json"
    card = json.loads(card_path.read_text())
    if "files" in change and isinstance(change["files"], dict):
        card["files"].update(change["files"])
    else:
        card.update(change)
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelLoadError) as caught:
        resolve(repo, "fashion-vae")
    assert re.search(message, one_line(caught)), str(caught.value)
    assert str(caught.value).startswith(f"{card_path}: ")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (" " * (1 << 20) + "{}", r"model.json: 1048578 bytes, more than the 1 MiB a model card may be"),
        ("[" * 100_000, "unreadable model card"),  # json nests past the recursion limit
        ('{"input_dim": ' + "7" * 5000 + "}", "unreadable model card"),  # past int()'s digit limit
        ('{"input_dim": 784, "input_dim": 784', "unreadable model card"),
        (b"\xff\xfe{}", "unreadable model card"),
    ],
)
def test_cards_are_bounded_and_unreadable_ones_are_one_line(repo, content, message):
    card = repo / "fashion-vae" / "10" / "model.json"
    card.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ModelLoadError, match=message) as caught:
        resolve(repo, "fashion-vae")
    one_line(caught)


@pytest.mark.timeout(20)  # before the fix, opening the FIFO blocked forever
@pytest.mark.parametrize("filename", ["model.json", "encoder.onnx"])
@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_cards_and_graphs_must_be_regular_files(repo, filename, kind):
    path = repo / "fashion-vae" / "10" / filename
    path.unlink()
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    with pytest.raises(ModelLoadError, match=rf"{filename}: not a regular file") as caught:
        resolve(repo, "fashion-vae")
    one_line(caught)


def test_a_graph_of_another_size_than_the_card_records_is_refused_unread(repo):
    graph = repo / "fashion-vae" / "10" / "encoder.onnx"
    recorded = graph.stat().st_size
    os.truncate(graph, 1 << 40)  # sparse: 1 TiB that costs no disk, and would take minutes to hash
    with pytest.raises(ModelLoadError, match=rf"encoder.onnx: {1 << 40} bytes, the card says {recorded}"):
        resolve(repo, "fashion-vae")


def test_without_a_recorded_size_a_graph_is_bounded_by_the_protobuf_limit(repo):
    card_path = repo / "fashion-vae" / "10" / "model.json"
    card = json.loads(card_path.read_text())
    del card["files"]["encoder.onnx"]["bytes"]
    card_path.write_text(json.dumps(card))
    os.truncate(repo / "fashion-vae" / "10" / "encoder.onnx", 3 << 30)
    with pytest.raises(ModelLoadError, match=r"encoder.onnx: 3221225472 bytes, more than the 2 GiB"):
        resolve(repo, "fashion-vae")


def test_a_graph_with_its_weights_in_external_data_is_refused(tmp_path):
    """The card's sha256 covers the .onnx file only, so weights outside it would go unchecked (and
    ORT would look for them relative to the working directory)."""
    external = {**GOOD_ENCODER, "external_data": "encoder.weights"}
    path = write_version_files(tmp_path, external, GOOD_DECODER)
    with pytest.raises(ModelLoadError, match=r"encoder.onnx: external data is not supported") as caught:
        resolve(tmp_path, "m")
    one_line(caught)
    assert (path / "encoder.weights").exists()


def test_external_data_in_a_node_attribute_is_refused_too(tmp_path):
    path = write_version_files(tmp_path, GOOD_ENCODER, GOOD_DECODER)
    weights = numpy_helper.from_array(np.ones((2, 6), np.float32), "W")
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["W"], value=weights),
            helper.make_node("MatMul", ["z", "W"], ["x"]),
        ],
        "g",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(
        model,
        path / "decoder.onnx",
        save_as_external_data=True,
        location="w.bin",
        size_threshold=0,
        convert_attribute=True,
    )
    card = json.loads((path / "model.json").read_text())
    card["files"]["decoder.onnx"]["sha256"] = hashlib.sha256((path / "decoder.onnx").read_bytes()).hexdigest()
    (path / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match=r"decoder.onnx: external data is not supported"):
        resolve(tmp_path, "m")


@pytest.mark.parametrize("where", ["inside", "outside"])
@pytest.mark.parametrize("link", ["version", "encoder.onnx", "model.json"])
def test_no_symbolic_links_below_the_model_directory(repo, tmp_path_factory, link, where):
    """Links are refused wherever they point: one inside the repository today can be pointed
    outside tomorrow, and checking where a link leads and then opening it is a race."""
    outside = tmp_path_factory.mktemp("outside")
    shutil.copytree(repo / "fashion-vae" / "1", outside / "1")
    source = (repo / "fashion-vae" / "1") if where == "inside" else (outside / "1")
    if link == "version":
        shutil.rmtree(repo / "fashion-vae" / "10")
        (repo / "fashion-vae" / "10").symlink_to(source, target_is_directory=True)
    else:
        (repo / "fashion-vae" / "10" / link).unlink()
        (repo / "fashion-vae" / "10" / link).symlink_to(source / link)
    with pytest.raises(ModelLoadError, match=r"is a symbolic link") as caught:
        resolve(repo, "fashion-vae")
    one_line(caught)
    assert resolve(repo, "fashion-vae", "2").version == "2"  # the real versions still serve


def test_start_up_with_bad_entries_serves_the_best_version_and_a_bad_card_is_one_line(repo, caplog):
    model_dir = repo / "fashion-vae"
    shutil.copytree(model_dir / "1", model_dir / "²")
    settings = Settings(model_repository=repo, port=0, metrics_port=0)
    server = VaeServer(settings, Metrics())
    server.load()
    assert server.dataplane.served.latest.version == "10"
    assert "²" in caplog.text

    card_path = model_dir / "10" / "model.json"
    card = json.loads(card_path.read_text())
    card["image_shape"] = ["a"]
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelLoadError) as caught:
        VaeServer(settings, Metrics()).load()
    assert "field 'image_shape[0]'" in one_line(caught)
