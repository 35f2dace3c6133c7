"""A model trained with a mixture prior is sampled from that prior by the server, as its card
records it; a model without one still gets exactly the N(0, I) draws it always got."""

import grpc
import numpy as np
import pytest
import torch
from support import RunningServer
from torch import nn

from vae_serve._proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vae_serve.errors import ModelLoadError
from vae_serve.server.protocol.prior import draw_prior, read_prior
from vae_serve.tensor import from_tensor
from vae_serve.training import export_vae

L = 2
# Two narrow components far apart, weighted 1:3: a draw's side says which one it came from.
MIXTURE = {
    "type": "mixture_of_gaussians",
    "components": 2,
    "weights": [0.25, 0.75],
    "means": [[-10.0, 0.0], [10.0, 5.0]],
    "logvars": [[-4.0, -4.0], [0.0, -2.0]],
}


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 2 * L)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.layer(x).chunk(2, dim=-1)
        return mean, logvar


class Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(L, 4)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.layer(z))


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    repository = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    for name, card in (("mixed", {"prior": MIXTURE}), ("plain", {})):
        export_vae(
            Encoder(), Decoder(), image_shape=[2, 2], model_repository=repository, name=name, card=card
        )
    server = RunningServer(model_repository=repository)
    with grpc.insecure_channel(server.target) as channel:
        yield vae_pb2_grpc.VAEServiceStub(channel)
    server.stop()


def prior_draws(stub, model: str, k: int, seed: int) -> np.ndarray:
    reply = stub.Sample(vae_pb2.SampleRequest(num_samples=k, seed=seed, model=model), timeout=30)
    return from_tensor(reply.z, "z")


def test_sample_draws_from_the_cards_mixture(stub):
    k = 4096  # the server's limit per request
    z = prior_draws(stub, "mixed", k, seed=1)
    assert z.shape == (k, L) and z.dtype == np.float32
    right = z[:, 0] > 0
    # the share of the 0.75 component: sd sqrt(0.75 * 0.25 / k) = 0.007
    assert abs(right.mean() - 0.75) < 0.035
    for chosen, component in ((~right, 0), (right, 1)):
        draws = z[chosen]
        want_mean = np.array(MIXTURE["means"][component])
        want_sd = np.exp(np.array(MIXTURE["logvars"][component]) / 2)
        assert np.all(np.abs(draws.mean(0) - want_mean) < 5 * want_sd / np.sqrt(len(draws)))
        assert np.all(np.abs(draws.std(0) / want_sd - 1) < 0.1)
    again = prior_draws(stub, "mixed", 16, seed=3)
    assert prior_draws(stub, "mixed", 16, seed=3).tobytes() == again.tobytes()


def test_a_model_without_a_prior_gets_the_standard_normal_draws_it_always_got(stub):
    z = prior_draws(stub, "plain", 64, seed=5)
    want = np.random.default_rng(5).standard_normal((64, L), dtype=np.float32)
    assert z.tobytes() == want.tobytes()
    standard = {"prior": {"type": "standard_normal"}}
    again = draw_prior(standard, 64, L, np.random.default_rng(5))
    assert again.tobytes() == want.tobytes()


@pytest.mark.parametrize(
    ("prior", "expected"),
    [
        ({"type": "flow"}, "prior type 'flow' unknown"),
        ({**MIXTURE, "weights": [0.5, -0.5]}, "prior.weights must be K >= 1 non-negative numbers"),
        ({**MIXTURE, "weights": [0.0, 0.0]}, "prior.weights sum to 0"),
        ({**MIXTURE, "means": [[0.0, 0.0]]}, "prior.means must be [2, 2] finite numbers"),
        ({**MIXTURE, "logvars": [[0.0, "x"], [0.0, 0.0]]}, "prior.logvars missing or not numbers"),
        ({**MIXTURE, "logvars": [[0.0, 1e4], [0.0, 0.0]]}, "prior.logvars too large"),
    ],
)
def test_a_prior_the_server_cannot_draw_from_is_refused(prior, expected):
    with pytest.raises(ModelLoadError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        read_prior({"prior": prior}, L)


def test_mixture_weights_are_normalised():
    prior = read_prior({"prior": {**MIXTURE, "weights": [1.0, 3.0]}}, L)
    assert prior is not None and prior.weights.tolist() == [0.25, 0.75]
