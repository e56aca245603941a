"""Command line of the local runtime.

python -m infra.local run                 # the whole pipeline, in the foreground
                                          # (SMTP_RELAY_URL=smtp://user:pass@host:587: your relay, no stand-in)
python -m infra.local token --tenant acme # a bearer token for the local API
python -m infra.local demo --n 1000       # a campaign through the HTTP API, with progress
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from chalicelib.auth import ALL_SCOPES, READ, WRITE, mint_token
from chalicelib.settings import Settings
from infra.local.relay import ignored_smtp_variables
from infra.local.runtime import LOCAL_JWT_SECRET, LocalRuntime, RuntimeConfig, StartupError


def _token(tenant: str, scopes: list[str], ttl_s: int = 86_400) -> str:
    settings = Settings(jwt_secret=os.environ.get("JWT_SECRET") or LOCAL_JWT_SECRET)
    return mint_token(settings, tenant, tuple(scopes), ttl_s)


def cmd_token(args: argparse.Namespace) -> int:
    print(_token(args.tenant, args.scopes, args.ttl))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    try:
        config = RuntimeConfig.from_env(standin_in_process=False)
        ignored = ignored_smtp_variables(os.environ, relay_set=bool(config.relay_url))
        if ignored:
            print(
                f"note: `run` ignores {', '.join(ignored)}: SMTP_RELAY_URL names your own relay"
                " and SMTP_STANDIN_PORT moves the stand-in",
                file=sys.stderr,
                flush=True,
            )
        runtime = LocalRuntime(config)
        runtime.start()
    except StartupError as exc:
        print(f"mailpipe: {exc}", file=sys.stderr, flush=True)
        return 2
    print(f"API: {runtime.api_url}", flush=True)
    if runtime.ws_url:
        print(f"WebSocket: {runtime.ws_url}", flush=True)
        print(f"Dashboard: {runtime.api_url}/dashboard", flush=True)
    for line in runtime.describe_mail():
        print(line, flush=True)
    print(f"AWS emulator: {runtime.emulator.describe() if runtime.emulator else ''}", flush=True)
    print(runtime.describe_functions(), flush=True)
    print(f"Token (tenant 'demo', read+write+admin): {_token('demo', list(ALL_SCOPES))}", flush=True)
    print("Ctrl-C stops everything.", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping…", flush=True)
        runtime.stop()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from infra.local.demo import run_demo

    return run_demo(n=args.n, api_url=args.api, token=_token("demo", [READ, WRITE]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the whole pipeline locally")
    run.set_defaults(func=cmd_run)
    token = sub.add_parser("token", help="print a bearer token for the local API")
    token.add_argument("--tenant", required=True)
    token.add_argument("--scopes", nargs="+", default=[READ, WRITE], choices=list(ALL_SCOPES))
    token.add_argument("--ttl", type=int, default=86_400, help="seconds the token is valid")
    token.set_defaults(func=cmd_token)
    demo = sub.add_parser("demo", help="create a campaign over HTTP and show its progress")
    demo.add_argument("--n", type=int, default=1000)
    demo.add_argument("--api", default=os.environ.get("API_URL", ""), help="a running API (default: start one)")
    demo.set_defaults(func=cmd_demo)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        args = parser.parse_args(["run"])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
