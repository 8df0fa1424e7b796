"""``pipeserve`` with fake_service.py in place of the real services: the CLI tested as a user runs it."""

import sys
from pathlib import Path

import pipeserve.cli.stack
from pipeserve.cli import main

FAKE_SERVICE = Path(__file__).resolve().with_name("fake_service.py")

pipeserve.cli.stack.service_argv = lambda command, args: [sys.executable, str(FAKE_SERVICE), command, *args]
sys.exit(main())
