"""moto's S3 (and SQS, SageMaker) server on loopback for a benchmark, as the tests run it."""

from __future__ import annotations

import logging
import os
import socket

from moto.server import ThreadedMotoServer


def start_moto() -> ThreadedMotoServer:
    """Start the server on a free port; AWS_* in this process's environment (inherited by
    the runs it starts) point every client at it, with throwaway credentials."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                       "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"})
    return server
