"""A GRPO run's vLLM server (``trl vllm-serve``): waiting for it before its trainer starts, and clearing its encoder
cache after every weight sync.

The composed job command starts the server in the background and runs ``python -m spatialreasoner.train.vllm_server
--port P --pid PID --log LOG``: it returns once ``/health`` answers 200, and fails at once, naming the server's log,
if the server process exits first (bad arguments, out of memory), instead of the trainer waiting out its timeout.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request

#: Seconds to wait for a server (loading a 7B model and capturing CUDA graphs takes minutes on a slow file system).
DEFAULT_TIMEOUT = 1800


class ServerNotReady(RuntimeError):
    pass


def reset_encoder_cache(client) -> None:
    """POST the server's ``/reset_encoder_cache`` (vLLM's development endpoint, on under ``trl vllm-serve``).

    The encoder cache holds the vision tower's embeddings of images already seen, keyed by the image alone; the
    training updates the vision tower too, so after a weight sync those embeddings are stale (vLLM's own
    ``reset_encoder_cache`` says to call it when weights change). The multimodal cache holds preprocessed pixels,
    which no weight changes, and is kept. TRL 1.16 resets only the prefix cache after a server sync."""
    response = client.session.post(f"{client.base_url}/reset_encoder_cache")
    if response.status_code != 200:
        raise RuntimeError(
            f"vLLM server {client.base_url}: /reset_encoder_cache answered {response.status_code} {response.text[:200]}"
        )


def clear_encoder_cache_after_sync(trainer) -> None:
    """Make ``trainer`` (a TRL GRPOTrainer in server mode) clear the server's encoder cache after each weight sync."""
    generation = getattr(trainer, "vllm_generation", None)
    if generation is None or generation.mode != "server":
        return
    sync = generation.sync_weights

    def sync_weights() -> None:
        sync()
        if generation.accelerator.is_main_process:
            reset_encoder_cache(generation.vllm_client)

    generation.sync_weights = sync_weights


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # our child: reap it if it exited
        return waited == 0
    except ChildProcessError:  # not our child: probe it
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        # A zombie still answers kill(0); /proc tells (Linux).
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(") ")[-1][:1] != "Z"
        except OSError:
            return True


def wait_until_ready(
    port: int, pid: int | None = None, host: str = "127.0.0.1", timeout: float = DEFAULT_TIMEOUT, log: str = ""
) -> float:
    """Poll ``http://host:port/health`` until it answers 200; return the seconds waited. Raise ServerNotReady when
    process ``pid`` exits first or ``timeout`` passes."""
    url = f"http://{host}:{port}/health"
    where = f" (see {log})" if log else ""
    start = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if pid is not None and not _alive(pid):
            raise ServerNotReady(f"the vLLM server (pid {pid}) exited before it answered on {url}{where}")
        if time.monotonic() - start > timeout:
            raise ServerNotReady(f"the vLLM server did not answer on {url} within {timeout:.0f} s{where}")
        time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--pid", type=int, default=None, help="the server's process id (fail when it exits)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    parser.add_argument("--log", default="", help="the server's log, named in the error")
    args = parser.parse_args(argv)
    try:
        seconds = wait_until_ready(args.port, args.pid, args.host, args.timeout, args.log)
    except ServerNotReady as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"vLLM server ready on port {args.port} after {seconds:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
