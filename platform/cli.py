"""`rayrec`: one command, a subcommand per stage. Heavy imports happen inside each verb so
that `--help` is instant and a local Ray cluster can be told to bind loopback first."""
from __future__ import annotations

import argparse
import json
import os
import sys

from rayrec.cli_accel import add_kernels_parser
from rayrec.cli_triton import add_triton_parsers
from rayrec.cli_tune import add_tune_parser
from rayrec.raylocal import cli_env


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with sections etl:, workflow:, model:, train:, serve: "
                   "(flags override it)")


ROUTES = "POST /recommend, /recommend/batch; GET /healthz, /readyz, /metrics"


def options(a, job) -> dict:
    """The parsed flags a stage's job reads (the same names as a pipeline stage's keys)."""
    return {k: v for k, v in vars(a).items() if k in job.KEYS}


def cmd_synth(a) -> None:
    from rayrec.stages import SynthJob, report, synth

    job = SynthJob.from_options(options(a, SynthJob))
    print("\n".join(report("synth", job, synth(job))))


def cmd_etl(a) -> None:
    from rayrec.stages import EtlJob, etl, report

    job = EtlJob.from_options(options(a, EtlJob))
    print("\n".join(report("etl", job, etl(job, progress=lambda m: print(f"  {m}", flush=True)))))


def train_configs(a):
    """The model and train configs `rayrec train` would run with these flags."""
    from rayrec.stages import TrainJob

    job = TrainJob.from_options(options(a, TrainJob))
    return job.model, job.train


def own_wait(value) -> None:
    """This process's OpenMP threads wait as `value` asks (threads.wait_env). libgomp reads
    the variables once, when torch loads it, which no verb has done before it calls this."""
    from rayrec.threads import wait_env

    if "torch" not in sys.modules:
        os.environ.update(wait_env(value))


def cmd_train(a) -> int:
    from rayrec.stages import TrainJob, report, train

    job = TrainJob.from_options(options(a, TrainJob))
    own_wait(job.train.omp_wait)
    from rayrec.train.trainer import TrainingStopped      # loads torch
    try:
        result = train(job, owns_process=True)
    except TrainingStopped as e:
        print(f"rayrec train: {e}", file=sys.stderr)
        return 1
    print("\n".join(report("train", job, result)))
    return 0


def _threads(text: str):
    """A --threads value: auto or a number."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number of threads, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected auto or a number >= 1, got {value}")
    return value


def cmd_evaluate(a) -> None:
    from rayrec.stages import EvaluateJob, evaluate, report

    job = EvaluateJob.from_options(options(a, EvaluateJob))
    result = evaluate(job)
    print("\n".join(report("evaluate", job, result)))
    if a.json:
        print(json.dumps(result))


def cmd_serve(a) -> None:
    from rayrec.config_io import from_dict, override, read_section
    from rayrec.serve.app import ServeConfig, emit_config, remove, start

    if a.stop:
        remove(a.address)
        print("rayrec endpoint removed")
        return
    if not a.run:
        raise ValueError("rayrec serve: --run RUN is required (or --stop)")
    cfg = override(from_dict(ServeConfig, read_section(a.config, "serve"), f"{a.config}: serve"),
                   host=a.host, port=a.port, max_events=a.max_events, num_replicas=a.replicas, threads=a.threads,
                   max_batch_size=a.max_batch_size, batching=False if a.no_batching else None)
    if a.emit_config:
        emit_config(a.run, cfg, a.emit_config)
        print(f"Ray Serve config written to {a.emit_config} (serve deploy {a.emit_config}, or a RayService's "
              "serveConfigV2)")
        return
    routes = ROUTES + ", /docs"
    if a.address:
        start(a.run, cfg, address=a.address)
        print(f"serving {a.run} on the cluster at {a.address}: http://{cfg.host}:{cfg.port} ({routes}); "
              "`rayrec serve --stop --address ...` removes it")
        return
    print(f"serving {a.run} on http://{cfg.host}:{cfg.port} ({routes}), {cfg.replica_threads()} torch thread(s) "
          "per replica; Ctrl-C stops")
    start(a.run, cfg, blocking=True)


def cmd_run(a) -> int:
    from rayrec.pipeline import run_pipeline

    return run_pipeline(a.pipeline, say=lambda m: print(m, flush=True))


def submission(a):
    """The JobRequest for `rayrec submit`: a rayrec command, or a pipeline file (sent in a
    working_dir of its own when none is given)."""
    import shutil
    import tempfile

    from rayrec.jobs import JobError, JobRequest

    command = a.argv[1:] if a.argv[:1] == ["--"] else list(a.argv)
    if not command:
        raise JobError("nothing to submit: give a command after --, e.g. rayrec submit -- rayrec train ..., "
                       "or a PIPELINE.yaml")
    working_dir, cleanup = a.working_dir, None
    if len(command) == 1 and command[0].endswith((".yaml", ".yml")):
        if not os.path.isfile(command[0]):
            raise FileNotFoundError(f"{command[0]}: no such pipeline file")
        if working_dir is None:
            working_dir = cleanup = tempfile.mkdtemp(prefix="rayrec-submit-")
            shutil.copy(command[0], os.path.join(working_dir, "pipeline.yaml"))
            rel = "pipeline.yaml"
        else:
            rel = os.path.relpath(os.path.abspath(command[0]), os.path.abspath(working_dir))
            if rel.startswith(".."):
                raise JobError(f"{command[0]} is outside --working-dir {working_dir}: the job sees only that directory")
        command = ["run", rel]
    if working_dir is not None and not os.path.isdir(working_dir):
        raise FileNotFoundError(f"--working-dir {working_dir}: no such directory")
    return JobRequest(command, working_dir, a.pip or [], a.num_cpus, a.num_gpus), cleanup


def cmd_submit(a) -> int:
    import shutil
    import time

    from rayrec.jobs import JobError, cluster_address, detached_help, follow, submit

    request, cleanup = submission(a)
    address = cluster_address(a.address)
    started = time.perf_counter()
    try:
        c, job_id = submit(request, address, verbose=a.verbose)
    except RuntimeError as e:
        raise JobError(f"{address}: the job was not accepted: {str(e).splitlines()[0][:400]}") from None
    finally:
        if cleanup:
            shutil.rmtree(cleanup, ignore_errors=True)
    print(f"submitted job {job_id} to {address}: {request.entrypoint()}", flush=True)
    if a.no_wait:
        print(detached_help(job_id, address))
        return 0
    print("its log follows (Ctrl-C detaches; the job goes on)", flush=True)
    try:
        status = follow(c, job_id, verbose=a.verbose)
    except KeyboardInterrupt:
        print("\n" + detached_help(job_id, address))
        return 130
    print(f"job {job_id} {status} after {time.perf_counter() - started:.1f} s")
    return 0 if status == "SUCCEEDED" else 1


def cmd_jobs(a) -> int:
    from rayrec.jobs import client, follow, format_jobs, wait, without_ray_info

    c = client(a.address)
    if a.action == "list":
        print(format_jobs(c.list_jobs()))
        return 0
    if a.action == "status":
        info = c.get_job_info(a.id)
        print(f"{a.id}: {info.status.value}" + (f" ({info.message})" if info.message else ""))
        return 0
    if a.action == "logs":
        if a.follow:
            status = follow(c, a.id)
            print(f"job {a.id} {status}")
        else:
            print(without_ray_info(c.get_job_logs(a.id)), end="")
        return 0
    c.stop_job(a.id)
    print(f"stopping job {a.id} (SIGTERM: a training run keeps its last checkpoint and stopped.json)", flush=True)
    status = wait(c, a.id, timeout=90)
    print(f"job {a.id} {status}")
    return 0 if status in ("STOPPED", "SUCCEEDED", "FAILED") else 1


def cmd_quickstart(a) -> None:
    from rayrec.quickstart import quickstart

    quickstart(a.out, events=a.events, workers=a.workers, epochs=a.epochs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rayrec", description="Session-based recommendation with transformers on Ray: "
                                "synth -> etl -> train -> evaluate -> serve.")
    p.add_argument("--verbose", dest="verbose_libraries", action="store_true",
                   help="also show Ray's, Dask's and transformers' own INFO and WARNING lines (rayrec --verbose COMMAND)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("synth", help="synthetic REES46-style events with a known best achievable score")
    s.add_argument("--out", required=True, help="directory for events.<format> and ceiling.json")
    s.add_argument("--events", type=int, default=200_000)
    s.add_argument("--days", type=int, default=7)
    s.add_argument("--items", type=int, default=2_000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    s.add_argument("--no-ceiling", action="store_true", help="skip the Bayes ceiling (slow for many items)")
    s.set_defaults(func=cmd_synth)

    e = sub.add_parser("etl", help="raw events -> day-partitioned session parquet + schema + fitted workflow")
    e.add_argument("--input", nargs="+", required=True, metavar="PATH", help="files, globs or directories (parquet/csv/tsv)")
    e.add_argument("--out", required=True, help="output directory (written atomically)")
    _add_config(e)
    e.add_argument("--session-col", help="session key column (default user_session)")
    e.add_argument("--item-col", help="item id column (default product_id)")
    e.add_argument("--time-col", help="event time column (default event_time)")
    e.add_argument("--max-len", type=int, help="keep the last N events of each session (default 20)")
    e.add_argument("--workflow", metavar="DIR", help="apply this fitted workflow (a previous run's workflow/) "
                   "instead of fitting one")
    e.add_argument("--split", choices=["random", "time"], help="valid/test: random sessions (default) or each day's latest")
    e.add_argument("--seed", type=int, help="seed of the random split")
    e.add_argument("--scheduler", metavar="ADDRESS", help="run on this Dask scheduler (default: a local cluster)")
    e.add_argument("--device", choices=["cpu", "gpu"], help="gpu: dask-cuda workers with cuDF (the gpu extra)")
    e.add_argument("--workers", type=int, help="local cluster worker processes (default: one per core)")
    e.add_argument("--address", help="Ray cluster whose nodes run the Dask work (default RAY_ADDRESS, as inside "
                   "a Ray job; else a local Dask cluster)")
    e.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    e.set_defaults(func=cmd_etl)

    t = sub.add_parser("train", help="day-by-day training on Ray Train (train on day t, evaluate on t+1)",
                       description="Day-by-day training on Ray Train. Every model option (features, "
                       "embeddings, aggregation, masking, heads, sampled softmax...) is a key of the "
                       "config's model: section, listed with examples in docs/model-config.md.")
    t.add_argument("--data", help="output directory of rayrec etl (default with --resume: the run's)")
    t.add_argument("--out", required=True, help="run directory to write")
    _add_config(t)
    t.add_argument("--arch", help="body: xlnet gpt2 bert roberta albert electra longformer reformer llama "
                   "mistral gru lstm, or any transformers model_type (default gpt2)")
    t.add_argument("--masking", choices=["clm", "mlm", "plm", "rtd"], help="training objective (default clm)")
    t.add_argument("--d-model", type=int)
    t.add_argument("--n-layer", type=int)
    t.add_argument("--n-head", type=int)
    t.add_argument("--max-len", type=int)
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int, help="sessions per step per worker")
    t.add_argument("--lr", type=float)
    t.add_argument("--workers", type=int, help="Ray Train workers; 0 runs in-process")
    t.add_argument("--placement", choices=["pack", "spread"], help="pack workers onto few nodes (default) or "
                   "spread them one per node")
    t.add_argument("--train-days", help="A:B (inclusive); default every day that has a next day")
    t.add_argument("--window-days", type=int, help="days per training window (default 1: day by day)")
    t.add_argument("--seed", type=int)
    t.add_argument("--checkpoint-every", help="window, epoch or N (optimizer steps); inside a window a "
                   "checkpoint keeps optimizer, schedule and position")
    t.add_argument("--tensorboard", action="store_true", help="write TensorBoard event files to OUT/tensorboard")
    t.add_argument("--mlflow", metavar="DIR", help="log params and metrics to this MLflow file store")
    t.add_argument("--address", help="Ray cluster to join (default RAY_ADDRESS, else a local cluster)")
    t.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    t.add_argument("--resume", metavar="RUN", help="continue RUN, finished or stopped (its configs, data and "
                   "checkpoint), from where it stopped over the days it has not trained; --train-days may extend them")
    t.set_defaults(func=cmd_train)

    add_tune_parser(sub, _add_config)

    v = sub.add_parser("evaluate", help="Recall/NDCG@10,20 of a saved run next to most-popular")
    v.add_argument("--run", required=True)
    v.add_argument("--data", required=True)
    v.add_argument("--days", help="A:B or A (default: the day after the last training day)")
    v.add_argument("--split", default="test", choices=["train", "valid", "test"])
    v.add_argument("--json", action="store_true", help="also print the result as JSON")
    v.add_argument("--threads", type=_threads, default="auto", help="torch threads (default auto: every usable core)")
    v.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("serve", help=f"HTTP endpoint on Ray Serve: {ROUTES}")
    r.add_argument("--run", help="the run directory (or its URI) to serve")
    _add_config(r)
    r.add_argument("--host", help="bind address (default 127.0.0.1)")
    r.add_argument("--port", type=int, help="port (default 8000)")
    r.add_argument("--max-events", type=int, help="events per session before 413 (default 1000)")
    r.add_argument("--replicas", type=int, help="replicas (default 1; serve.max_replicas turns autoscaling on)")
    r.add_argument("--threads", type=_threads, help="torch threads per replica (default auto: the node's usable "
                   "cores split between the replicas)")
    r.add_argument("--max-batch-size", type=int, help="sessions scored together (default 32)")
    r.add_argument("--no-batching", action="store_true", help="score each request alone")
    r.add_argument("--address", help="deploy onto this running Ray cluster and return (detached)")
    r.add_argument("--stop", action="store_true", help="remove the endpoint from the cluster (--address or RAY_ADDRESS)")
    r.add_argument("--emit-config", metavar="FILE",
                   help="write Ray Serve's declarative config (serve deploy, KubeRay RayService) and exit")
    r.set_defaults(func=cmd_serve)

    pl = sub.add_parser("run", help="run a pipeline YAML's stages in this process (finished stages are skipped)")
    pl.add_argument("pipeline", metavar="PIPELINE.yaml")
    pl.set_defaults(func=cmd_run)

    sb = sub.add_parser("submit", help="run a rayrec command or a pipeline on a Ray cluster as a Ray Job",
                        description="Submit `rayrec VERB ...` (after --) or PIPELINE.yaml as a Ray Job, stream "
                        "its log and exit with its status. Ctrl-C detaches; the job goes on.")
    sb.add_argument("--address", help="the cluster's dashboard URL, e.g. http://HEAD:8265 (default RAY_ADDRESS)")
    sb.add_argument("--working-dir", help="directory uploaded as the job's working directory")
    sb.add_argument("--pip", nargs="+", metavar="PKG", help="pip packages installed for the job")
    sb.add_argument("--num-cpus", type=float, help="CPUs reserved for the entrypoint (default 0)")
    sb.add_argument("--num-gpus", type=float, help="GPUs reserved for the entrypoint (default 0)")
    sb.add_argument("--no-wait", action="store_true", help="print the job id and return")
    sb.add_argument("--verbose", action="store_true", help="also show Ray's own INFO lines")
    sb.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- rayrec VERB ... | PIPELINE.yaml")
    sb.set_defaults(func=cmd_submit)

    jb = sub.add_parser("jobs", help="list, inspect, follow or stop Ray Jobs")
    jsub = jb.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (("list", "every job on the cluster"), ("status", "one job's status"),
                       ("logs", "one job's log"), ("stop", "stop a job (SIGTERM; training keeps its checkpoint)")):
        j = jsub.add_parser(name, help=text)
        if name != "list":
            j.add_argument("id", help="the job's submission id")
        if name == "logs":
            j.add_argument("--follow", action="store_true", help="stream until the job ends")
        j.add_argument("--address", help="the cluster's dashboard URL (default RAY_ADDRESS)")
        j.set_defaults(func=cmd_jobs)

    add_triton_parsers(sub)
    add_kernels_parser(sub)
    q = sub.add_parser("quickstart", help="synth -> etl -> train (2 Ray workers) -> evaluate -> serve one request")
    q.add_argument("--out", default="quickstart-out", help="working directory (replaced)")
    q.add_argument("--events", type=int, default=200_000)
    q.add_argument("--workers", type=int, default=2)
    q.add_argument("--epochs", type=int, default=4)
    q.set_defaults(func=cmd_quickstart)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name, value in cli_env(getattr(args, "address", None)).items():   # this process is the CLI's own
        os.environ.setdefault(name, value)
    own_wait("auto")      # a verb whose job says otherwise (train.omp_wait) sets its own before torch loads
    if args.verbose_libraries:
        from rayrec.raylocal import show_library_logs

        show_library_logs()
    try:
        code = args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"rayrec {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
