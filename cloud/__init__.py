"""The cloud service: the full-precision model over HTTP (KServe v2), with dynamic batching."""
