"""A real S3-compatible server for the tests: moto's standalone server (moto[server]) in a thread of the test
process, listening on 127.0.0.1 only, on a free port. Its state (buckets, objects) lives in the test process, so
`stop()` / `start()` on the same port is an outage of the endpoint that loses nothing, and a second server
(`inspector()`) shows what the first one holds even while that one is down."""

from __future__ import annotations

import socket

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    def __init__(self, port: int | None = None):
        self.port = port or _free_port()
        self._server = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        if self._server is not None:
            return self
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket: a client then gets 'connection refused'."""
        if self._server is not None:
            self._server.stop()
            self._server._server.server_close()
            self._server = None

    def create_bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket=name)

    def fs(self):
        """An s3fs file system for this server (no instance cache: a stopped server's connections are not reused)."""
        import s3fs

        return s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=self.endpoint,
                                 skip_instance_cache=True, client_kwargs={"region_name": "us-east-1"})


def serving(bucket: str):
    """A module fixture's body (`yield from serving(BUCKET)`): a started server holding `bucket`, stopped after."""
    server = S3Server().start()
    try:
        server.create_bucket(bucket)
        yield server
    finally:
        server.stop()
