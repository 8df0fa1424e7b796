"""The pipeline's preprocess and postprocess box for the gateway (pipeserve.internal.v1.TokenizerService).

Preprocess: chat template, tokenization, context check, generation options
resolved against each model's generation_config. Postprocess (StreamText):
reads a request's reply stream from Redis, detokenizes incrementally,
applies stop strings and raises the cancel flag on a hit. Tokenizers and
configs only; never model weights.
"""
