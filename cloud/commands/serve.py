"""`hybrid-vision serve`: the full-precision model over HTTP (KServe v2), with dynamic batching."""

from __future__ import annotations

import sys
from pathlib import Path

HELP = "serve bundles' full-precision models over HTTP (KServe v2 + /v1/classify), with dynamic batching"


def add_arguments(p) -> None:
    p.add_argument("bundles", nargs="+", metavar="BUNDLE",
                   help="bundle directory, or NAME=DIR to serve it under another model name")
    p.add_argument("--host", help="address to listen on [127.0.0.1; env HV_HOST]")
    p.add_argument("--port", type=int, help="port; 0 picks a free one [8000; env HV_PORT]")
    p.add_argument("--port-file", help="write the bound port here once ready (for scripts using --port 0)")
    p.add_argument("--backend", choices=["tensorflow", "jax", "torch"],
                   help="Keras backend [env KERAS_BACKEND, else tensorflow]")
    p.add_argument("--max-batch-size", type=int, help="most images per model call [32]")
    p.add_argument("--max-delay-ms", type=float, help="longest wait to fill a batch [5]")
    p.add_argument("--queue-size", type=int, help="requests that may wait per model before 503 [256]")
    p.add_argument("--model-instances", type=int,
                   help="model worker threads per model, each running a batch [auto: 2 on a CPU, 1 with JAX]")
    p.add_argument("--model-threads", type=int,
                   help="the backend's threads within one op [auto: CPUs / instances]")
    p.add_argument("--decode-threads", type=int, help="threads that decode and preprocess images [CPUs, 2..8]")
    p.add_argument("--max-body-bytes", type=int, help="largest request body [32 MiB]")
    p.add_argument("--max-pixels", type=int, help="largest image, in pixels [40,000,000]")
    p.add_argument("--max-header-bytes", type=int, help="largest request line + headers; more gets a 431 [16384]")
    p.add_argument("--header-timeout-s", type=float,
                   help="time to receive a request's headers; slower gets a 408 and a close [10]")
    p.add_argument("--api-key-file", help="file with one API key a line (or env HV_API_KEYS=k1,k2)")
    p.add_argument("--rate-limit", type=float, dest="rate_limit_rps", help="requests/s per key; 0 = off [0]")
    p.add_argument("--rate-burst", type=int, dest="rate_limit_burst", help="burst per key [2 x rate]")
    p.add_argument("--ssl-certfile", help="TLS certificate (PEM); serve HTTPS")
    p.add_argument("--ssl-keyfile", help="TLS private key (PEM)")
    p.add_argument("--forwarded-allow-ips",
                   help="proxies trusted for X-Forwarded-For/-Proto, comma-separated or '*' [none: headers ignored]")
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", default=None, help="log every request")
    p.add_argument("--bench-endpoints", action="store_true", default=None,
                   help="add POST /v1/noop (HTTP path without model work) for benchmarks")


def parse_bundle_args(items: list[str]) -> dict[str, str] | list[str]:
    """``DIR`` or ``NAME=DIR``; a mapping if any name is given (the others keep their manifest's name)."""
    named: dict[str | None, str] = {}
    plain: list[str] = []
    for item in items:
        name, sep, path = item.partition("=")
        if sep and name and not Path(item).exists():
            named[name] = path
        else:
            plain.append(item)
    if not named:
        return plain
    if plain:
        from edge_sdk.bundle import load_bundle

        for p in plain:
            named[load_bundle(p, verify=False).manifest.name] = p
    return named  # type: ignore[return-value]


def run(args) -> int:
    from cloud.model import select_backend
    from cloud.settings import load_settings, read_api_key_file

    keys = read_api_key_file(args.api_key_file) if args.api_key_file else None
    settings = load_settings(
        host=args.host, port=args.port, backend=args.backend, max_batch_size=args.max_batch_size,
        max_delay_ms=args.max_delay_ms, queue_size=args.queue_size, decode_threads=args.decode_threads,
        model_instances=args.model_instances, model_threads=args.model_threads,
        max_body_bytes=args.max_body_bytes, max_pixels=args.max_pixels, api_keys=keys,
        max_header_bytes=args.max_header_bytes, header_timeout_s=args.header_timeout_s,
        rate_limit_rps=args.rate_limit_rps, rate_limit_burst=args.rate_limit_burst,
        ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile, log_level=args.log_level,
        forwarded_allow_ips=args.forwarded_allow_ips,
        access_log=args.access_log, bench_endpoints=args.bench_endpoints,
    )
    # KERAS_BACKEND must be set before anything imports keras (settings.backend comes from --backend or HV_BACKEND).
    backend = select_backend(settings.backend)
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_keys:
        print("warning: listening beyond loopback without API keys; anyone who can reach the port can use it",
              file=sys.stderr)

    from cloud.app import create_app
    from cloud.server import run_server, write_port_file

    app = create_app(parse_bundle_args(args.bundles), settings)

    def on_ready(url: str) -> None:
        names = ", ".join(app.state.hv.models)
        print(f"serving {names} on {backend}; {len(settings.api_keys)} API key(s)"
              f"{'; TLS' if settings.ssl_certfile else ''}", flush=True)
        print(f"listening on {url}", flush=True)
        if args.port_file:
            write_port_file(args.port_file, int(url.rsplit(":", 1)[1]))

    return run_server(app, settings, on_ready)
