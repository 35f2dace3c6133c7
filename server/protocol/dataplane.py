"""The protocol-agnostic core: encode, sample and decode on numpy arrays.

Every front end (the native gRPC API, the Open Inference Protocol, the REST APIs) converts its
messages to arrays and calls these methods, so validation, limits and metrics are written once.
A request resolves its model (by name, through the registry) and version and is admitted once,
with `admit`, and hands what it got to every call it makes: a version swapped in meanwhile never
mixes versions within a request. Each model served has its own versions, runners and limits from
its card.
"""

from __future__ import annotations

import numpy as np

from vae_serve.errors import InvalidInput, ModelLoadError, TooLarge
from vae_serve.server.drain import Activity
from vae_serve.server.lifecycle import ServerState
from vae_serve.server.models.graph import Graph
from vae_serve.server.models.model import LoadedModel
from vae_serve.server.models.versions import ServedModel, ServedVersions
from vae_serve.server.runners.batching import BatchingRunner
from vae_serve.server.runners.runner import InlineRunner, Runner, TimedGraph, trimmer
from vae_serve.server.runners.statistics import CountedRunner
from vae_serve.server.settings import BatchingSettings, LimitSettings, RepositorySettings
from vae_serve.server.telemetry.metrics import Metrics
from vae_serve.server.telemetry.observe import note

from .prior import draw_prior
from .registry import ModelEntry, ModelRegistry
from .scope import hold_model, note_model
from .validation import check_finite, check_matrix, check_unit_interval

__all__ = ["DataPlane", "ServedModel", "message_floor"]


# Protobuf framing of one Tensor beyond its float bytes: tags, length prefixes, shape varints.
_TENSOR_OVERHEAD = 64
# A reply's fields beyond its tensors and card: names, versions, server id, limits; and the OIP
# framing (tensor names, datatypes, shapes). Generous: the floor must never be under the truth.
_REPLY_OVERHEAD = 2048


class DataPlane:
    """Takes its settings as the groups `Settings` hands out (`settings.batching`, ...): their
    defaults and bounds are stated there, once."""

    def __init__(
        self,
        batching: BatchingSettings,
        limits: LimitSettings,
        repository: RepositorySettings,
        metrics: Metrics,
        state: ServerState | None = None,
    ) -> None:
        """`state`: the server's lifecycle, which readiness and admission read (a bare one if none)."""
        self.batching = batching
        self.limits = limits
        self.repository = repository
        self.metrics = metrics
        self.models = ModelRegistry(repository.default_model, repository.model_control_mode == "explicit")
        self.state = state if state is not None else ServerState()
        self.activity = Activity(limits.max_concurrent_rpcs, self.state)

    @property
    def served(self) -> ServedVersions:
        """The default model's versions, for tools and tests (requests resolve through `admit`);
        empty while it is not served."""
        name = self.models.default
        entry = None if name is None else self.models.get(name)
        return entry.versions if entry is not None else ServedVersions(self.repository)

    def _runner(self, graph: Graph, label: str, model: LoadedModel) -> CountedRunner:
        timed = TimedGraph(graph, label, self.metrics, model.version, model.name)
        if self.batching.max_batch_size == 1:
            runner: Runner = InlineRunner(timed, self.metrics, self.batching)
        else:
            runner = BatchingRunner(timed, self.metrics, self.batching)
        return CountedRunner(runner, self.metrics, label, model.version, model.name)

    def serve(self, model: LoadedModel) -> None:
        """Serve `model` too, as a version of the model of its name (a new entry in the registry
        for a model not served yet); its highest version answers requests that pin none. Requests
        in flight keep the version they started on. A model whose own replies would not fit
        `max_message_bytes` is refused (ModelLoadError), at start and on reload alike."""
        floor = message_floor(model)
        if self.limits.max_message_bytes < floor:
            raise ModelLoadError(
                f"{model.files.path}: --max-message-bytes {self.limits.max_message_bytes} is under the "
                f"{floor} bytes this model needs (its GetModelInfo reply with the card, and one row of "
                f"its largest request or response)"
            )
        entry = self.models.get(model.name)
        if entry is None:
            entry = ModelEntry(model.name, ServedVersions(self.repository))
            self.models.add(entry)
        encoder = self._runner(model.encoder, "encoder", model)
        entry.versions.add(ServedModel(model, encoder, self._runner(model.decoder, "decoder", model)))
        latest = entry.versions.get().model
        self.metrics.set_model(latest.name, latest.version, latest.execution_provider)

    @property
    def loaded(self) -> bool:
        """At least one model served (none is enough with explicit model control, where models
        come through the API), and a version of each."""
        entries = self.models.entries
        some = bool(entries) or self.repository.model_control_mode == "explicit"
        return some and all(entry.versions.latest is not None for entry in entries)

    @property
    def ready(self) -> bool:
        """Loaded and SERVING: what readiness reports (health follows the same state)."""
        return self.loaded and self.state.ready

    def admit(self, model: str | None = None, version: str | None = None) -> ServedModel:
        """Resolve and admit a request starting now, once: the version of `model` (by its name in
        the repository; None: the default model) that it pins, or the latest. Raises ModelNotFound
        for an unknown model or version, InvalidInput for none when there is no default, NotReady
        before a model is loaded, Draining while the server refuses calls."""
        entry = self.models.entry(model)
        note_model(entry.name)
        self.state.admit()
        served = entry.versions.get(version)
        if hold_model(entry.release):  # an unload of the model waits for this call
            entry.acquire()
        return served

    def current(self, version: str | None = None) -> ServedModel:
        """The version pinned, or the latest; admits nothing (for tools and tests)."""
        return self.served.get(version)

    def _check_response_size(self, rows: int, width: int, tensors: int = 1) -> None:
        size = 4 * rows * width + _TENSOR_OVERHEAD * tensors
        if size > self.limits.max_message_bytes:
            raise TooLarge(
                f"response would be {size} bytes, over the {self.limits.max_message_bytes}-byte "
                f"message limit; send fewer rows per request"
            )

    def close(self) -> None:
        for entry in self.models.entries:
            entry.close()

    async def encode(
        self, x: np.ndarray, deadline: float | None = None, served: ServedModel | None = None
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """(mean, logvar, the version that computed them). `deadline` (time.monotonic() seconds):
        past it, queued work is dropped, not computed. `served`: what the request's `admit` gave,
        else the latest is admitted here."""
        served = served or self.admit()
        model = served.model
        try:
            check_matrix(x, "x", model.input_dim, self.limits.max_request_rows)
            note(model.name, served.version, len(x))
            check_unit_interval(x, "x")
            self._check_response_size(len(x), 2 * model.latent_dim, tensors=2)
            mean, logvar = await served.encoder.run(x, deadline)
            return mean, logvar, served.version
        finally:
            trimmer.after(x.nbytes)  # the response is smaller

    async def decode(
        self, z: np.ndarray, deadline: float | None = None, served: ServedModel | None = None
    ) -> tuple[np.ndarray, str]:
        served = served or self.admit()
        model = served.model
        try:
            check_matrix(z, "z", model.latent_dim, self.limits.max_request_rows)
            note(model.name, served.version, len(z))
            check_finite(z, "z")
            self._check_response_size(len(z), model.input_dim)
            (x,) = await served.decoder.run(z, deadline)
            _check_decoded(x, "z")
            return x, served.version
        finally:
            trimmer.after(z.nbytes + z.nbytes // model.latent_dim * model.input_dim)

    async def sample(
        self,
        num_samples: int,
        *,
        seed: int | None = None,
        mean: np.ndarray | None = None,
        logvar: np.ndarray | None = None,
        decode: bool = False,
        deadline: float | None = None,
        served: ServedModel | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, str]:
        """Prior draws z [K, L] (x [K, D]) or posterior draws z [N, K, L] (x [N, K, D])."""
        served = served or self.admit()
        model = served.model
        k, latent = num_samples, model.latent_dim
        if not 1 <= k <= self.limits.max_samples:
            raise InvalidInput(f"num_samples: must be between 1 and {self.limits.max_samples}, got {k}")
        rows_limit = self.limits.max_request_rows
        if mean is None and k > rows_limit:  # prior draws: K rows, decoded or not
            raise InvalidInput(f"num_samples: {k} samples exceed the limit of {rows_limit} rows per request")
        moved = sum(a.nbytes for a in (mean, logvar) if a is not None)  # bytes in, then out too
        try:
            rng = np.random.default_rng(seed)  # seed None: fresh OS entropy
            if mean is None:
                if logvar is not None:
                    raise InvalidInput("logvar given without mean: posterior sampling needs both")
                z = draw_prior(model.card, k, latent, rng)
            else:
                z = self._posterior(mean, logvar, k, latent, rng)
            rows = z.size // latent
            note(model.name, served.version, rows)
            self._check_response_size(rows, latent + (model.input_dim if decode else 0), tensors=2)
            moved += z.nbytes
            if not decode:
                return z, None, served.version
            moved += 4 * rows * model.input_dim
            (x,) = await served.decoder.run(z.reshape(rows, latent), deadline)
            _check_decoded(x, "mean" if mean is not None else "z")
            return z, x.reshape(*z.shape[:-1], model.input_dim), served.version
        finally:
            trimmer.after(moved)

    def _posterior(
        self, mean: np.ndarray, logvar: np.ndarray | None, k: int, latent: int, rng: np.random.Generator
    ) -> np.ndarray:
        if logvar is None:
            raise InvalidInput("mean given without logvar: posterior sampling needs both")
        check_matrix(mean, "mean", latent, self.limits.max_request_rows)
        if logvar.shape != mean.shape:
            raise InvalidInput(f"logvar: shape {list(logvar.shape)} must equal mean's {list(mean.shape)}")
        check_finite(mean, "mean")
        check_finite(logvar, "logvar")
        if len(mean) * k > self.limits.max_request_rows:
            raise InvalidInput(
                f"mean: {len(mean)} rows x {k} samples = {len(mean) * k} draws exceed the limit of "
                f"{self.limits.max_request_rows} per request"
            )
        eps = rng.standard_normal((len(mean), k, latent), dtype=np.float32)
        with np.errstate(over="ignore"):
            z = mean[:, None, :] + np.exp(logvar[:, None, :] / 2) * eps  # z = mean + exp(logvar/2) * eps
        if not np.isfinite(z).all():
            raise InvalidInput("logvar: too large, exp(logvar / 2) overflows float32")
        return z


def message_floor(model: LoadedModel) -> int:
    """Bytes the API itself needs per message for `model`: its GetModelInfo reply (the card
    dominates, sent twice while the string map lasts) and one row of its largest request or
    response (a decoded Sample: z and x)."""
    card = sum(len(k.encode()) + len(v.encode()) + 16 for k, v in model.card_strings.items())
    card += model.card_struct.ByteSize() + 16
    row = 4 * (model.input_dim + 2 * model.latent_dim) + 3 * _TENSOR_OVERHEAD
    return _REPLY_OVERHEAD + max(card, row)


def _check_decoded(x: np.ndarray, field: str) -> None:
    """Finite latents far outside the prior can still overflow inside the decoder: refuse them."""
    if not np.isfinite(x).all():
        raise InvalidInput(f"{field}: values too large; the decoder's output overflowed (keep |z| moderate)")
