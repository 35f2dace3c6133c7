"""Finding and verifying model versions on disk; each failure names the file and the reason."""

import json
import shutil

import pytest
from support import REPOSITORY

from vae_serve.errors import ModelLoadError, ModelNotFound
from vae_serve.server.repository import list_versions, resolve


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
    with pytest.raises(ModelLoadError, match=r"encoder.onnx: cannot read"):
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
