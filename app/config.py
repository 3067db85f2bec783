"""All settings of the service, read from the environment (prefix ``EBM_``) in one place."""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class BackendChoice(StrEnum):
    ONNX = "onnx"
    TORCH = "torch"
    AUTO = "auto"


class Admission(StrEnum):
    SEARCH = "search"
    STEP = "step"


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class Settings(BaseSettings):
    """Every field is settable as ``EBM_<FIELD>``; the README's configuration table lists them."""

    model_config = SettingsConfigDict(env_prefix="EBM_", extra="ignore")

    models_dir: Path = Field(Path("models"), description="Root of the model repository.")
    backend: BackendChoice = Field(
        BackendChoice.AUTO,
        description="Inference backend: onnx, torch, or auto (onnx when onnxruntime is "
        "installed and the artifact exists, else torch).",
    )
    host: str = Field("127.0.0.1", description="Bind address of `ebm serve`.")
    port: int = Field(8000, ge=0, le=65535, description="Port of `ebm serve`.")
    redis_url: str | None = Field(
        None, description="Redis URL; unset means embedded mode (in-process batcher)."
    )
    queue_prefix: str = Field(
        "ebm", pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="Prefix of every Redis key."
    )
    max_backlog: int = Field(
        1024,
        ge=1,
        description="Jobs outstanding (queued or computing) per model stream before the API "
        "refuses new ones with 429.",
    )
    visibility_timeout_ms: float = Field(
        15_000,
        gt=0,
        description="A job a worker has held this long without a heartbeat is reclaimed by "
        "another worker.",
    )
    max_deliveries: int = Field(
        3, ge=1, description="Deliveries of one job before it goes to the dead-letter stream."
    )
    heartbeat_ms: float = Field(
        1_000, gt=0, description="How often workers and API instances heartbeat in Redis."
    )
    redis_timeout_ms: float = Field(
        2_000, gt=0, description="Socket timeout of Redis commands (blocking reads stay below)."
    )
    worker_prefetch: int = Field(
        64, ge=1, description="Jobs one worker holds at once (computing or waiting to batch)."
    )
    worker_models: str | None = Field(
        None, description="Comma-separated models a worker serves; unset means all."
    )
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="Worker device: auto, cpu, cuda or cuda:N.",
    )
    max_batch_size: int | None = Field(
        None,
        ge=1,
        description="Max rows per backend call, overriding every manifest; 1 turns batching off.",
    )
    max_delay_ms: float | None = Field(
        None,
        ge=0,
        description="Max time a job waits for more jobs to join its batch once other jobs "
        "are queued behind a running batch; overrides every manifest.",
    )
    admission: Admission = Field(
        Admission.STEP,
        description="When /predict searches join a batch: step (at every step boundary, "
        "steps interleaved fairly across models) or search (only between whole searches).",
    )
    max_queue: int = Field(
        256, ge=1, description="Jobs waiting per model and operation before new ones get 429."
    )
    request_timeout_ms: float = Field(
        30_000, gt=0, description="Default deadline of a request; 504 when it passes."
    )
    max_body_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 beyond)."
    )
    parse_offload_bytes: int = Field(
        1024 * 1024,
        ge=1,
        description="Bodies at least this large are parsed in a helper process, so the "
        "event loop keeps serving other requests meanwhile.",
    )
    max_search_cost: int = Field(
        5_000_000,
        ge=1,
        description="Largest N x starts x steps one /predict, /sample or free-energy request "
        "may ask for (413 beyond).",
    )
    max_search_seconds: float = Field(
        10.0,
        gt=0,
        description="Longest compute one /predict, /sample or free-energy request may need, "
        "estimated from its evaluations and the model's cost per row measured at load "
        "(413 beyond).",
    )
    max_response_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        description="Largest response a request may ask for, estimated before computing it "
        "(413 beyond); also bounds the trajectories a search keeps meanwhile.",
    )
    inline_below_ms: float = Field(
        0.5,
        ge=0,
        description="Batches expected to compute faster than this run on the event loop, "
        "skipping the thread hand-off; 0 sends every batch to the compute threads.",
    )
    compute_threads: int = Field(
        1, ge=1, description="Threads that run backend calls (batches run one at a time each)."
    )
    intra_op_threads: int = Field(
        1, ge=0, description="Threads inside one backend call (onnxruntime/torch); 0 = library."
    )
    cross_check: bool = Field(
        False,
        description="Also load each model on the other installed backend at start and "
        "require both to agree (imports torch when serving on onnxruntime: ~400 MB).",
    )
    parity_rtol: float = Field(
        1e-4, gt=0, description="Relative tolerance of the load-time parity probe."
    )
    admin_key: str | None = Field(
        None,
        description="Bearer key of the admin endpoints (POST /v1/admin/reload); unset "
        "disables them (SIGHUP still reloads).",
    )
    shutdown_grace_s: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM: how long in-flight requests may take to finish while new "
        "ones get 503, before the process exits.",
    )
    api_keys: str | None = Field(
        None, description="Comma-separated accepted API keys; unset disables authentication."
    )
    otel: bool = Field(
        False,
        description="FastAPI's OpenTelemetry instrumentation (spans, metrics and logs to the "
        "globally configured providers).",
    )
    log_format: LogFormat = Field(LogFormat.TEXT, description="Log format: text or json.")
    log_level: str = Field("info", description="Log level of the service.")

    def api_key_set(self) -> frozenset[str]:
        if not self.api_keys:
            return frozenset()
        return frozenset(k.strip() for k in self.api_keys.split(",") if k.strip())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
