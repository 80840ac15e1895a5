"""Local Triton in one command.

python -m localtriton serve          # until Ctrl-C or SIGTERM
python -m localtriton run -- CMD...  # start, run CMD with DH_TRITON_* set, stop
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

from localtriton.launcher import AlreadyRunning, Running, local_triton
from localtriton.server import Endpoints
from modelkit.errors import ModelBuildError


def _print_urls(running: Running) -> None:
    e = running.endpoints
    print(f"local Triton ready (pid {running.pid}): {', '.join(running.models)}")
    print(f"  gRPC     {e.grpc_url}")
    print(f"  HTTP     {e.http_url}")
    print(f"  metrics  {e.metrics_url}")
    print(f"  export DH_TRITON_URL={e.grpc_url} DH_TRITON_METRICS_URL={e.metrics_url}", flush=True)


def _wait_for_signal_or_exit(pid: int) -> str:
    """Blocks until SIGINT/SIGTERM arrives or the server exits; no polling."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    signal.set_wakeup_fd(write_fd)
    server_fd = os.pidfd_open(pid)
    ready, _, _ = select.select([read_fd, server_fd], [], [])
    return "server exited" if server_fd in ready else "signal"


def _serve(args: argparse.Namespace) -> int:
    endpoints = None
    if args.grpc_port:
        endpoints = Endpoints(args.http_port, args.grpc_port, args.metrics_port)
    with local_triton(
        args.repository,
        args.workdir,
        args.venv,
        endpoints=endpoints,
        cpu_instances=args.cpu_instances,
    ) as running:
        _print_urls(running)
        why = _wait_for_signal_or_exit(running.pid)
        print(f"local Triton: stopping ({why})", flush=True)
    return 0 if why == "signal" else 1


def _run(args: argparse.Namespace) -> int:
    if not args.command:
        print("localtriton run: give a command after --", file=sys.stderr)
        return 2
    with local_triton(
        args.repository, args.workdir, args.venv, cpu_instances=args.cpu_instances
    ) as running:
        env = dict(os.environ)
        env["DH_TRITON_URL"] = running.endpoints.grpc_url
        env["DH_TRITON_METRICS_URL"] = running.endpoints.metrics_url
        # The command's Ctrl-C reaches it directly (same terminal); we only wait for it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return subprocess.run(args.command, env=env, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="triton-local", description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--workdir", type=Path, default=Path("build/triton-local"))
    parser.add_argument("--venv", type=Path, default=Path(".venv-triton"))
    parser.add_argument("--cpu-instances", type=int, help="instances per model (default: config)")
    sub = parser.add_subparsers(dest="verb", required=True)
    serve = sub.add_parser("serve", help="run until Ctrl-C or SIGTERM")
    serve.add_argument("--grpc-port", type=int, default=0, help="fixed ports (default: free ones)")
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--metrics-port", type=int, default=8002)
    run = sub.add_parser("run", help="start, run a command against it, stop")
    run.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.verb == "run" and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    try:
        return _serve(args) if args.verb == "serve" else _run(args)
    except AlreadyRunning as exc:
        print(f"triton-local: {exc}", file=sys.stderr)
        return 1
    except ModelBuildError as exc:
        print(f"triton-local: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
