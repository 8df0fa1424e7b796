"""Defaults shared by the command line and the Python API (Stack), kept here so --help stays import-light."""

GATEWAY_LISTEN = "127.0.0.1:50051"
TOKENIZER_LISTEN = "127.0.0.1:50052"
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 15.0
