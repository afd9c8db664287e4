"""A real S3 API on localhost: moto's standalone server (the one s3fs's own tests use), started in a
subprocess on a free port, with a bucket. For the tests and the benchmark; nothing is assumed running."""

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager


@contextmanager
def local_s3(bucket, log_path, secret="edgebuild-test-secret"):
    """Yield the AWS environment (the standard variables) a runner needs to reach the server, with
    `bucket` created; the server stops on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(log_path, "w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    env = {"AWS_ACCESS_KEY_ID": "edgebuild-test-key", "AWS_SECRET_ACCESS_KEY": secret,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"the moto S3 server did not start; see {log_path}") from None
                time.sleep(0.2)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            import s3fs

            s3fs.S3FileSystem(skip_instance_cache=True).mkdir(bucket)
            yield env
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
