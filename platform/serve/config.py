"""Serving options (YAML section `serve:`; `rayrec serve` flags override).

One typed config crosses into every replica (as JSON), and the same fields become Ray
Serve's declarative config (`--emit-config`), so a KubeRay RayService runs what
`rayrec serve` runs.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"            # bind address of Ray Serve's HTTP proxy
    port: int = 8000
    max_events: int = 1000             # events per session; more -> 413
    max_body_bytes: int = 1 << 20      # request body; larger -> 413
    max_k: int = 1000                  # largest k a request may ask for
    max_sessions: int = 256            # sessions in one POST /recommend/batch; more -> 413
    threads: int | str = "auto"        # torch threads in each replica (auto: its num_cpus if reserved, else
                                       # the node's usable cores split between the replicas)
    omp_wait: int | str = "auto"       # how a replica's idle torch threads wait (train.omp_wait's values)
    num_replicas: int = 1              # fixed replicas (unless max_replicas turns autoscaling on)
    min_replicas: int = 1              # autoscaling: the fewest replicas
    max_replicas: int | None = None    # autoscaling: the most replicas (None: no autoscaling)
    target_ongoing_requests: float = 2.0   # autoscaling: requests in flight per replica it aims at
    max_ongoing_requests: int = 1024   # requests one replica holds at once: it takes what it is sent and
                                       # sheds the excess itself (max_waiting_sessions), which is cheaper
                                       # than the proxy holding requests back (BENCHMARKS.md, overload)
    max_queued_requests: int = 100     # requests waiting for a replica; beyond it 503 with Retry-After
    max_waiting_sessions: int | None = 64  # sessions waiting for one replica's scorer; beyond it the
                                       # replica answers 503 with Retry-After at once (None: no limit)
    request_timeout_s: float = 10.0    # an answer not ready by then is a 503
    batching: bool = True              # sessions from concurrent requests are scored as one batch
    max_batch_size: int = 32           # sessions per batch
    batch_wait_timeout_s: float = 0.0  # a free scorer waits this long for more sessions (0: the next
                                       # batch fills while one scores; > 0 pays off on a GPU)
    num_gpus: float = 0.0              # GPUs per replica (the model runs on cuda when > 0)
    num_cpus: float = 0.0              # CPUs reserved per replica (0: replicas share the node)
    retry_after_s: int = 1             # the Retry-After of a 503
    access_log: bool = False           # Ray Serve's line per request in the replicas' logs
    watch: str | None = None           # a directory of published runs: each replica takes the newest one
    watch_interval_s: float = 5.0      # how often `watch` is looked at

    def __post_init__(self):
        positive = {"port": self.port, "max_events": self.max_events, "max_body_bytes": self.max_body_bytes,
                    "max_k": self.max_k, "max_sessions": self.max_sessions,
                    "num_replicas": self.num_replicas, "min_replicas": self.min_replicas,
                    "max_ongoing_requests": self.max_ongoing_requests, "max_batch_size": self.max_batch_size,
                    "retry_after_s": self.retry_after_s}
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"serve.{name} must be an integer >= 1; got {value!r}")
        from rayrec.threads import check_threads, check_wait

        check_threads(self.threads, "serve.threads")
        check_wait(self.omp_wait, "serve.omp_wait")
        if not 0 < self.port < 65536:
            raise ValueError(f"serve.port must lie in 1..65535; got {self.port}")
        if self.max_waiting_sessions is not None and (isinstance(self.max_waiting_sessions, bool) or not isinstance(
                self.max_waiting_sessions, int) or self.max_waiting_sessions < 1):
            raise ValueError(f"serve.max_waiting_sessions must be an integer >= 1 or null; got "
                             f"{self.max_waiting_sessions!r}")
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError(f"serve.max_replicas ({self.max_replicas}) must be >= serve.min_replicas "
                             f"({self.min_replicas})")
        if self.max_queued_requests < -1 or self.max_queued_requests == 0:
            raise ValueError("serve.max_queued_requests must be >= 1 (or -1: no limit)")
        for name in ("request_timeout_s", "target_ongoing_requests", "watch_interval_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"serve.{name} must be > 0")
        if self.batch_wait_timeout_s < 0 or self.num_gpus < 0 or self.num_cpus < 0:
            raise ValueError("serve.batch_wait_timeout_s, serve.num_gpus and serve.num_cpus must be >= 0")

    def replica_threads(self) -> int:
        from rayrec.threads import threads_for

        if self.threads == "auto" and self.num_cpus >= 1:
            return int(self.num_cpus)
        return threads_for(self.threads, self.max_replicas or self.num_replicas)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServeConfig":
        return cls(**json.loads(text))

    def deployment_options(self) -> dict:
        """Ray Serve's deployment options for these settings."""
        from rayrec.threads import wait_env

        options = {"max_ongoing_requests": self.max_ongoing_requests, "max_queued_requests": self.max_queued_requests,
                   "backpressure_config": {"status_code": 503, "retry_after_s": self.retry_after_s},
                   # the wait policy must be in a replica's environment before torch loads
                   "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus,
                                         "runtime_env": {"env_vars": wait_env(self.omp_wait)}},
                   "logging_config": {"enable_access_log": self.access_log,
                                      "log_level": "INFO" if self.access_log else "WARNING"}}
        if self.max_replicas is not None:
            options["autoscaling_config"] = {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                                             "target_ongoing_requests": self.target_ongoing_requests}
        else:
            options["num_replicas"] = self.num_replicas
        return options
